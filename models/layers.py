"""Small building blocks shared by the networks."""
from __future__ import annotations

import math

import torch
from torch import nn


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
