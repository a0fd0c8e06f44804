"""Small building blocks shared by the networks."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models import winograd


class ConvBlock(nn.Module):
    """Conv + BatchNorm (+ input when residual) + activation; 1-D or 2-D. Wav2Lip's block, as IP_LAP uses it.

    The submodule names (conv_block.0 = conv, conv_block.1 = norm) are those of the official checkpoints.
    """

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0, residual: bool = False,
                 activation: str = "relu", dims: int = 2):
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.conv_block = nn.Sequential(conv(cin, cout, kernel_size, stride, padding), norm(cout))
        self.act = {"relu": nn.ReLU(), "tanh": nn.Tanh()}[activation]
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        return self.act(out + x if self.residual else out)


def audio_encoder(last_activation: str = "tanh") -> nn.Sequential:
    """Mel window (B, 1, 80, 16) -> (B, 512, 1, 1): Wav2Lip's audio encoder (strides 1, (3,1), 3, (3,2))."""
    def res(c):
        return ConvBlock(c, c, 3, 1, 1, residual=True)

    return nn.Sequential(
        ConvBlock(1, 32, 3, 1, 1), res(32), res(32),
        ConvBlock(32, 64, 3, (3, 1), 1), res(64), res(64),
        ConvBlock(64, 128, 3, 3, 1), res(128), res(128),
        ConvBlock(128, 256, 3, (3, 2), 1), res(256),
        ConvBlock(256, 512, 3, 1, 0),
        ConvBlock(512, 512, 1, 1, 0, activation=last_activation),
    )


def sinusoidal_encoding(length: int, dim: int) -> torch.Tensor:
    """(length, dim) float32: sin on even, cos on odd channels, wavelengths from 2*pi to 10000*2*pi."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


def _modulate(normalised: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Apply a modulation: normalised * (1 + gamma) + beta in one pass (addcmul), where normalised may hold k
    samples per gamma sample (k references of one frame, stored sample-major), in which case gamma and beta are
    shared by those k.
    (The official code writes normalised + normalised * gamma + beta: equal up to float rounding.)"""
    if normalised.shape[0] != gamma.shape[0]:
        groups = normalised.shape[0] // gamma.shape[0]
        shaped = normalised.view(gamma.shape[0], groups, *normalised.shape[1:])
        return torch.addcmul(beta[:, None], shaped, 1 + gamma[:, None]).flatten(0, 1)
    return torch.addcmul(beta, normalised, 1 + gamma)


def fused_conv(x: torch.Tensor, convs: list[nn.Conv2d]) -> tuple[torch.Tensor, ...]:
    """Several same-shaped convolutions of one input as a single convolution (their weights stacked), split
    back per convolution: the same sums in one pass over the input (its effect: bench/README.md). Winograd
    convolutions (models/winograd.py) share their input's transform instead."""
    if all(isinstance(c, winograd.WinogradConv2d) for c in convs) and winograd.applies(x):
        return winograd.conv3x3(x, convs)
    first = convs[0]
    out = F.conv2d(x, torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs]), first.stride,
                   first.padding, first.dilation)
    return out.split([c.out_channels for c in convs], dim=1)


class SPADELayer(nn.Module):
    """Spatially-adaptive normalisation, what the SPADE paper (Park et al. 2019) calls SPADE:
    InstanceNorm(x) * (1 + gamma) + beta, where the modulation (gamma, beta) is two 3x3 convolutions of a 3x3
    convolution of the condition map (no activation in between, as IP_LAP)."""

    def __init__(self, channels: int, condition_channels: int, hidden: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(condition_channels, hidden, 3, 1, 1)
        self.gamma = nn.Conv2d(hidden, channels, 3, 1, 1)
        self.beta = nn.Conv2d(hidden, channels, 3, 1, 1)

    def modulation_of(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The modulation (gamma, beta) for a condition map; depends on nothing else, so it can be computed once
        and shared."""
        return fused_conv(self.conv1(condition), [self.gamma, self.beta])

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None,
                modulation: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        gamma, beta = modulation if modulation is not None else self.modulation_of(condition)
        return _modulate(F.instance_norm(x, eps=1e-5), gamma, beta)


class AdaINLayer(nn.Module):
    """Adaptive instance normalisation: InstanceNorm(x) * (1 + gamma) + beta, the modulation (gamma, beta) from
    a condition vector through Linear -> ReLU -> Linear (one head each)."""

    def __init__(self, channels: int, condition_features: int, hidden: int = 128):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Linear(condition_features, hidden), nn.ReLU())
        self.mlp_gamma = nn.Linear(hidden, channels)
        self.mlp_beta = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        hidden = self.mlp_shared(condition.flatten(1))
        gamma = self.mlp_gamma(hidden)[:, :, None, None]
        beta = self.mlp_beta(hidden)[:, :, None, None]
        return _modulate(F.instance_norm(x, eps=1e-5), gamma, beta)


class SPADEBlock(nn.Module):
    """Residual-free SPADE block: [SPADE layer, LeakyReLU(0.2), conv3x3] twice."""

    def __init__(self, channels: int, condition_channels: int, hidden: int = 256):
        super().__init__()
        self.norm_1 = SPADELayer(channels, condition_channels, hidden)
        self.norm_2 = SPADELayer(channels, condition_channels, hidden)
        self.conv_1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv_2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2)

    def modulation_of(self, condition: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Both layers' modulation (gamma, beta) for a condition map."""
        return [self.norm_1.modulation_of(condition), self.norm_2.modulation_of(condition)]

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None,
                modulation: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        modulation = modulation if modulation is not None else self.modulation_of(condition)
        x = self.conv_1(self.act(self.norm_1(x, modulation=modulation[0])))
        return self.conv_2(self.act(self.norm_2(x, modulation=modulation[1])))


class AdaINBlock(nn.Module):
    """AdaIN block: [AdaIN layer, LeakyReLU(0.2), conv3x3] twice."""

    def __init__(self, channels: int, condition_features: int):
        super().__init__()
        self.norm_1 = AdaINLayer(channels, condition_features)
        self.norm_2 = AdaINLayer(channels, condition_features)
        self.conv_1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv_2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        x = self.conv_1(self.act(self.norm_1(x, condition)))
        return self.conv_2(self.act(self.norm_2(x, condition)))
