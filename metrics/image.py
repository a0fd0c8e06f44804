"""PSNR and SSIM on RGB images in 0..1, as the `piq` implementations define them (ViCo protocol).

psnr: 10 * log10(1 / MSE) per image, MSE over all pixels and channels; identical images give +inf.
ssim: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1,
computed per channel over the valid region (no padding) and averaged over channels and positions. For 128x128
faces piq does not downsample first, so this equals piq's ssim; it also equals scikit-image's
structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) images in 0..1: (B,) (inf where identical)."""
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse)


@functools.lru_cache(maxsize=4)
def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return (kernel[:, None] * kernel[None, :])[None, None]


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of (B, C, H, W) images in 0..1: (B,)."""
    x, y = x.double(), y.double()
    channels = x.shape[1]
    window = _gaussian().to(x.device).expand(channels, 1, -1, -1)

    def blur(t):
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(dim=1)
