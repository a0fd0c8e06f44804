"""OpenCV's resize rules (cv2.resize, INTER_AREA and INTER_LINEAR) as one weight matrix per axis, so that a resize
runs in torch on any device as two matmuls: out = rows @ image @ columns.T, channels carried along.

- INTER_LINEAR: half-pixel centres, source x = (x' + 0.5) * scale - 0.5, two taps, clamped at the borders.
- INTER_AREA shrinking on both axes: exact fractional coverage, each output pixel the mean of the source area it
  covers.
- INTER_AREA enlarging on either axis: OpenCV's two-tap variant of it, on both axes (`area_enlarging`).

The weights are OpenCV's to float precision. The arithmetic is float: OpenCV rounds uint8 INTER_LINEAR in fixed
point, so uint8 results differ from its by at most 1 grey level (tests/test_device_frames.py gives the measured
tolerance).
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch

from data.tensors import upload

AREA, LINEAR = cv2.INTER_AREA, cv2.INTER_LINEAR


def _two_taps(source: int, position: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """(target, source) weights 1 - fraction on `position` and fraction on the next pixel, clamped as OpenCV
    clamps: a tap before the first pixel or from the last on is the edge pixel alone."""
    fraction = np.where((position < 0) | (position >= source - 1), 0.0, fraction)
    position = np.clip(position, 0, source - 1)
    weights = np.zeros((len(position), source))
    rows = np.arange(len(position))
    np.add.at(weights, (rows, position), 1 - fraction)
    np.add.at(weights, (rows, np.minimum(position + 1, source - 1)), fraction)
    return weights


def linear(source: int, target: int) -> np.ndarray:
    """INTER_LINEAR weights (target, source) float64."""
    centre = (np.arange(target) + 0.5) * (source / target) - 0.5
    position = np.floor(centre).astype(np.int64)
    return _two_taps(source, position, centre - position)


def area(source: int, target: int) -> np.ndarray:
    """INTER_AREA weights (target, source) float64 for source >= target: the overlap of output pixel d's span
    [d, d + 1) * scale with each source pixel, over the span's length."""
    scale = source / target
    start = np.arange(target)[:, None] * scale
    pixel = np.arange(source)[None, :]
    return np.clip(np.minimum(start + scale, pixel + 1) - np.maximum(start, pixel), 0, None) / scale


def area_enlarging(source: int, target: int) -> np.ndarray:
    """INTER_AREA weights (target, source) float64 where either axis enlarges: OpenCV then blends two pixels by how
    far output pixel d's right edge reaches past source pixel floor(d * scale)'s."""
    scale = source / target
    output = np.arange(target)
    position = np.floor(output * scale).astype(np.int64)
    reach = (output + 1) - (position + 1) / scale
    return _two_taps(source, position, np.where(reach <= 0, 0.0, reach - np.floor(reach)))


@lru_cache(maxsize=128)
def _axis(source: int, target: int, rule: str, device: torch.device) -> torch.Tensor:
    """One axis's weights as float32 on `device`, kept: boxes repeat from frame to frame."""
    weights = {"linear": linear, "area": area, "area_enlarging": area_enlarging}[rule](source, target)
    return upload(weights.astype(np.float32), device)


def resize_weights(source: tuple[int, int], target: tuple[int, int], interpolation: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The row weights (target height, source height) and column weights (target width, source width), float32 on
    `device`, of cv2.resize from (height, width) `source` to `target` with `interpolation` (AREA or LINEAR)."""
    if interpolation == LINEAR:
        rule = "linear"
    elif interpolation == AREA:
        rule = "area" if source[0] >= target[0] and source[1] >= target[1] else "area_enlarging"
    else:
        raise ValueError(f"interpolation {interpolation}: only INTER_AREA and INTER_LINEAR have weights here")
    return (_axis(source[0], target[0], rule, device), _axis(source[1], target[1], rule, device))


def resize_image(image: torch.Tensor, size: tuple[int, int], interpolation: int) -> torch.Tensor:
    """(h, w, C) image -> (height, width, C) float32 on its device, as cv2.resize(image, (width, height),
    interpolation=interpolation) computes it in float (not rounded)."""
    height, width, channels = image.shape
    rows, columns = resize_weights((height, width), size, interpolation, image.device)
    planes = image.float().permute(2, 0, 1).reshape(channels * height, width)  # channels first: large matmuls
    across = (planes @ columns.T).view(channels, height, size[1])
    return (rows @ across).permute(1, 2, 0)  # (C, size[0], size[1]) -> (size[0], size[1], C)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Float grey levels -> uint8, rounded half to even and clipped (as OpenCV's saturate_cast)."""
    return image.round().clamp_(0, 255).to(torch.uint8)
