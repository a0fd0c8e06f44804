"""GAN losses: LSGAN (least squares) and pix2pixHD feature matching."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lsgan_loss(outputs: list[list[torch.Tensor]], real: bool) -> torch.Tensor:
    """Mean squared distance of every scale's score map to 1 (real) or 0 (fake), summed over scales."""
    target = 1.0 if real else 0.0
    return sum(F.mse_loss(scale[-1], torch.full_like(scale[-1], target)) for scale in outputs)


def feature_matching_loss(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]) -> torch.Tensor:
    """pix2pixHD feature matching: L1 between the discriminator's intermediate features on generated and real
    images (real ones detached), weighted 4 / (layers + 1) per layer and 1 / scales per scale."""
    scales = len(fake)
    layers = len(fake[0]) - 1  # the last output is the score map, not a feature
    weight = 4.0 / layers / scales
    return sum(weight * F.l1_loss(f, r.detach()) for fs, rs in zip(fake, real) for f, r in zip(fs[:-1], rs[:-1]))
