"""pix2pixHD multiscale PatchGAN discriminator (training only): 2 scales x 3 strided layers, ndf 64,
InstanceNorm, LSGAN outputs; every layer's output is returned for the feature-matching loss."""
from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """conv4x4/2 -> LReLU, then (layers - 1) x [conv4x4/2, IN, LReLU], conv4x4/1, IN, LReLU, conv4x4/1 -> 1."""

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        blocks = [nn.Sequential(nn.Conv2d(in_channels, width, 4, 2, 2), nn.LeakyReLU(0.2))]
        channels = width
        for index in range(1, layers + 1):
            wider = min(channels * 2, 512)
            stride = 2 if index < layers else 1
            blocks.append(nn.Sequential(nn.Conv2d(channels, wider, 4, stride, 2), nn.InstanceNorm2d(wider),
                                        nn.LeakyReLU(0.2)))
            channels = wider
        blocks.append(nn.Sequential(nn.Conv2d(channels, 1, 4, 1, 2)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features  # the last entry is the patch score map


class MultiscaleDiscriminator(nn.Module):
    """The same PatchGAN at full and at successively half resolution (3x3 average pooling, stride 2)."""

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3, scales: int = 2):
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(in_channels, width, layers) for _ in range(scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        for module in self.modules():  # pix2pixHD's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per scale (full resolution first), the list of layer outputs; [-1] is the score map."""
        outputs = []
        for index, discriminator in enumerate(self.scales):
            if index:
                x = self.downsample(x)
            outputs.append(discriminator(x))
        return outputs
