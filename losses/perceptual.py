"""VGG19 perceptual and style (Gram) losses on RGB images in 0..1 (paper section 3.2; docs/method.md, section 4).

Perceptual: sum over relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of the L1 distance between VGG19 features of
the two images (ImageNet-normalised), at full and at half resolution (bilinear). Style: L1 between Gram matrices
(normalised by C*H*W) of the same layers, full resolution only. The official code maps its inputs with (x+1)/2
as if they were in [-1, 1] although it feeds [0, 1] BGR images; here inputs are normalised as what they are.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from model_files.weights import WeightFile, frozen, load_exactly, read_file, resolve

LAYERS = {1: "relu1_1", 6: "relu2_1", 11: "relu3_1", 20: "relu4_1", 29: "relu5_1"}  # vgg19.features indices
VGG19 = WeightFile("VGG19 ImageNet", "vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                   "dcbb9e9d", "torchvision's VGG19 ImageNet weights", "the config's vgg19.path")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_vgg19_features(path: str | Path | None = None, allow_random: bool = False) -> nn.Sequential:
    """VGG19 `features` with ImageNet weights, frozen, in eval mode.

    path: a torchvision VGG19 state dict (full or features only), or an official IP_LAP renderer checkpoint (it
    carries the weights). None: torchvision's file in the torch hub cache, downloaded there when online.
    allow_random: random weights (tests and smoke runs only; a perceptual loss from them means little).
    """
    from torchvision.models import vgg19

    features = vgg19(weights=None).features[:30]  # up to relu5_1
    if allow_random and path is None:
        return frozen(features)
    path = resolve(VGG19, path)
    state = read_file(path, "VGG19 weights")
    if isinstance(state, dict) and "state_dict" in state:  # an official renderer checkpoint
        from model_files.checkpoints import official_vgg19_features

        state = official_vgg19_features(path)
    state = {k[len("features."):] if k.startswith("features.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if _up_to_relu5_1(k)}
    load_exactly(features, state, path, "VGG19")
    return frozen(features)


def _up_to_relu5_1(name: str) -> bool:
    """Whether a VGG19 tensor name belongs to `features[:30]` (the classifier and pool5 are not used)."""
    head = name.split(".")[0]
    return head != "classifier" and not (head.isdigit() and int(head) >= 30)


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrix divided by C*H*W."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


class PerceptualLoss(nn.Module):
    """loss(x, y) -> (perceptual, style) for RGB images in 0..1; style is only computed when asked."""

    def __init__(self, features: nn.Sequential, scales: int = 2):
        super().__init__()
        self.features, self.scales = features, scales
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.features.eval()  # frozen: never in training mode
        return self

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in LAYERS:
                out.append(x)
        return out

    @torch.no_grad()
    def targets(self, y: torch.Tensor) -> list[list[torch.Tensor]]:
        """Features of the target images at every scale, without gradient; pass them to several losses of
        the same targets (warp and reconstruction) to compute them once."""
        features = []
        for scale in range(self.scales):
            features.append(self._activations(y))
            if scale < self.scales - 1:
                y = F.interpolate(y, scale_factor=0.5, mode="bilinear", align_corners=False)
        return features

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, style: bool = False,
                targets: list[list[torch.Tensor]] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(perceptual, style or None) of x against y, or against `targets` = self.targets(y)."""
        targets = targets if targets is not None else self.targets(y)
        perceptual, style_loss = x.new_zeros(()), x.new_zeros(()) if style else None
        for scale, target in enumerate(targets):
            for a, b in zip(self._activations(x), target):
                perceptual = perceptual + F.l1_loss(a, b)
                if style and scale == 0:
                    style_loss = style_loss + F.l1_loss(gram(a), gram(b))
            if scale < self.scales - 1:
                x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        return perceptual, style_loss
