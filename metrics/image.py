"""PSNR and SSIM on RGB images in 0..1, as the `piq` implementations define them (ViCo protocol).

psnr: 10 * log10(1 / (MSE + eps)) per image, MSE over all pixels and channels. eps=0 (the default) gives +inf
for identical images; evaluate.py and the renderer's eval use piq's eps=1e-8 (PSNR_EPS), which caps identical
frames at 80 dB so that one copied frame does not make a video's mean infinite,
and moves PSNR by less than 5e-4 dB below 40 dB.
ssim: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1,
computed per channel over the valid region (no padding) and averaged over channels and positions; the Gaussian
is applied as two 1-D passes (float64 grouped 2-D convolution is slow on CPU). downsample=True first
average-pools by piq's factor max(1, round(min(H, W) / 256)) as piq's ssim(downsample=True) does (1 for LRS2's
160x160 frames and 128x128 faces, 3 for 844x844). The result equals scikit-image's
structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
channel_axis=2) on the (pooled) images.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

PSNR_EPS = 1e-8  # piq's EPS: identical frames give 80 dB


def psnr(x: torch.Tensor, y: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) images in 0..1: (B,) float64 (inf where identical and eps=0)."""
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(dim=1)
    return -10 * torch.log10(mse + eps)


def piq_downsample(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) average-pooled by piq's factor max(1, round(min(H, W) / 256))."""
    factor = max(1, round(min(x.shape[-2:]) / 256))
    return F.avg_pool2d(x, kernel_size=factor) if factor > 1 else x


@functools.lru_cache(maxsize=1)
def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> tuple[float, ...]:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return tuple((kernel / kernel.sum()).tolist())


def _blur(t: torch.Tensor) -> torch.Tensor:
    """Valid 11x11 Gaussian filtering of (B, C, H, W) as a vertical then a horizontal 1-D pass."""
    taps = _gaussian_taps()
    rows = t.shape[-2] - len(taps) + 1
    t = sum(w * t[..., k:k + rows, :] for k, w in enumerate(taps))
    cols = t.shape[-1] - len(taps) + 1
    return sum(w * t[..., k:k + cols] for k, w in enumerate(taps))


def ssim(x: torch.Tensor, y: torch.Tensor, downsample: bool = False) -> torch.Tensor:
    """Per-image SSIM of (B, C, H, W) images in 0..1: (B,) float64."""
    x, y = x.double(), y.double()
    if downsample:
        x, y = piq_downsample(x), piq_downsample(y)
    mu_x, mu_y = _blur(x), _blur(y)
    var_x = _blur(x * x) - mu_x**2
    var_y = _blur(y * y) - mu_y**2
    cov = _blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(dim=1)
