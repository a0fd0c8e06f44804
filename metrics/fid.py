"""FID (Heusel et al., 2017) between all real and all generated frames, with the standard FID InceptionV3.

Features: the TensorFlow FID Inception (`pt_inception-2015-12-05-6726825d.pth`, the pytorch-fid port): RGB in
0..1, resized to 299x299 (bilinear, align_corners=False), mapped to [-1, 1], the 2048-d output of the final
average pool (pool3). The network differs from torchvision's InceptionV3 in its weights and in its pooling: the
average pools inside the A, C and first E blocks ignore the zero padding (TensorFlow's rule) and the last E
block max-pools.
Distance: mu and sigma (np.cov, N-1) of each set of features in float64; d = |mu1 - mu2|^2 + tr(s1 + s2 -
2 sqrtm(s1 s2)) with scipy.linalg.sqrtm; when the square root is not finite (singular covariances) 1e-6 is added
to both diagonals; a complex result keeps its real part when the diagonal's imaginary parts are below 1e-3 and is
an error otherwise (pytorch-fid's and the TensorFlow reference's rules).
The iplap protocol (metrics/protocols.py) takes the root as piq's FID does, the one the ViCo baseline's
compute_fid.py calls: sqrtm_newton_schulz below, in float64, with the same retry on a non-finite root and no
imaginary part to drop.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn
from torchvision.models import inception as tv_inception

from metrics.weights import FID_INCEPTION
from model_files.weights import frozen, load_exactly, read_state, resolve

FEATURES = 2048
SQUARE_ROOTS = ("scipy", "newton_schulz")
NEWTON_SCHULZ_ITERATIONS = 100  # piq's num_iters
NEWTON_SCHULZ_TOLERANCE = 1e-5  # piq stops when the relative error is within atol 1e-5 of 0


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3x3 average pool: zero padding is not counted in the average."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(tv_inception.InceptionA):
    def forward(self, x):
        branch5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5, branch3, self.branch_pool(_tf_avg_pool(x))], 1)


class _BlockC(tv_inception.InceptionC):
    def forward(self, x):
        branch7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), branch7, double, self.branch_pool(_tf_avg_pool(x))], 1)


class _BlockE(tv_inception.InceptionE):
    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool  # the second E block of the TF graph max-pools (a quirk kept for comparability)

    def forward(self, x):
        middle = self.branch3x3_1(x)
        branch3 = torch.cat([self.branch3x3_2a(middle), self.branch3x3_2b(middle)], 1)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        double = torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1)
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), branch3, double, self.branch_pool(pooled)], 1)


def fid_inception_network() -> nn.Module:
    """torchvision's InceptionV3 (1008 classes, no aux head) with the FID blocks, random weights."""
    net = tv_inception.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
    net.Mixed_6b, net.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
    net.Mixed_6d, net.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
    net.Mixed_7b, net.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)
    return net


class FIDFeatures(nn.Module):
    """(B, 3, H, W) RGB in 0..1 -> (B, 2048) pool3 features of the FID Inception."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.inception = inception

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.inception
        x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
        for layer in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1,
                      net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, net.maxpool2,
                      net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c,
                      net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c):
            x = layer(x)
        return x.mean(dim=(2, 3))  # adaptive average pool to 1x1


def load_fid_features(path: str | Path | None = None, download: bool = True) -> FIDFeatures:
    """The FID feature network with the pytorch-fid weights from `path` (or the hub cache), frozen."""
    file = resolve(FID_INCEPTION, path, download)
    inception = fid_inception_network()
    load_exactly(inception, read_state(file, FID_INCEPTION.what), file, FID_INCEPTION.what)
    return frozen(FIDFeatures(inception))


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D), float64, of (N, D) features (N >= 2)."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def sqrtm_newton_schulz(matrix: np.ndarray, iterations: int = NEWTON_SCHULZ_ITERATIONS,
                        tolerance: float = NEWTON_SCHULZ_TOLERANCE) -> tuple[np.ndarray, float]:
    """A square root of a (D, D) matrix with non-negative eigenvalues by the coupled Newton-Schulz iteration
    (piq's `_sqrtm_newton_schulz`): float64 root and its relative error ||A - R R||_F / ||A||_F.

    Y0 = A / ||A||_F, Z0 = I; T = (3 I - Z Y) / 2, Y <- Y T, Z <- T Z; R = Y sqrt(||A||_F). Stops once the error
    is at most `tolerance`, else after `iterations` steps (a singular A, as from fewer samples than features,
    converges slowly and is left at that step's root).
    """
    matrix = np.asarray(matrix, np.float64)
    scale = np.linalg.norm(matrix)
    identity = np.eye(len(matrix))
    y, z = matrix / scale, identity
    root, error = matrix, np.inf
    for _ in range(iterations):
        step = 0.5 * (3.0 * identity - z @ y)
        y, z = y @ step, step @ z
        root = y * np.sqrt(scale)
        error = float(np.linalg.norm(matrix - root @ root) / scale)
        if error <= tolerance:
            break
    return root, error


def _square_root(matrix: np.ndarray, root: str) -> np.ndarray:
    if root == "newton_schulz":
        return sqrtm_newton_schulz(matrix)[0]
    if root == "scipy":
        return linalg.sqrtm(matrix)
    raise ValueError(f"unknown square root {root!r}; choose from {SQUARE_ROOTS}")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, root: str = "scipy") -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64, with the matrix square root
    `root` (SQUARE_ROOTS: "scipy" as pytorch-fid, "newton_schulz" as piq)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    diff = mu1 - mu2
    with warnings.catch_warnings():  # ill-conditioned products are expected and handled below
        warnings.simplefilter("ignore")
        covmean = _square_root(sigma1 @ sigma2, root)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = _square_root((sigma1 + offset) @ (sigma2 + offset), root)
    if np.iscomplexobj(covmean):
        largest = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if largest > 1e-3:
            raise ValueError(f"FID: the covariance square root has an imaginary part of {largest:.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(real: np.ndarray, generated: np.ndarray, root: str = "scipy") -> float:
    """FID between (N, D) real and (M, D) generated features, with the matrix square root `root`."""
    return frechet_distance(*statistics(real), *statistics(generated), root=root)
