"""The paste-back's face mask in torch, on any device: OpenCV's filled convex polygon (cv2.fillConvexPoly) and its
Gaussian blur (cv2.GaussianBlur, default border), to float precision.

fillConvexPoly draws the polygon's outline as 8-connected lines (each clipped to the image first), then fills
every row between the two edges' x, stepped in 16.16 fixed point and rounded. Both give one run of pixels per row
here: a row's first and last pixel, from integer arithmetic on the polygon's corners, the same on every device.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from data.tensors import upload

FIXED_ONE = 1 << 16  # OpenCV's XY_ONE: fill edges step in 16.16 fixed point
NONE = 1 << 40  # "no pixel" for a row's first (as +NONE) or last (as -NONE)


def hull_points(outline: np.ndarray) -> np.ndarray:
    """(V, 2) int64 corners of the convex hull of (P, 2) points in pixels, rounded first (as `face_mask`)."""
    return cv2.convexHull(np.round(outline).astype(np.int32))[:, 0].astype(np.int64)


def clip_segment(start: np.ndarray, end: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """A segment's part inside a (width, height) image, as cv2.clipLine cuts it (whole pixels, truncated
    towards zero); None when none of it is inside."""
    (x1, y1), (x2, y2) = (int(v) for v in start), (int(v) for v in end)
    right, bottom = width - 1, height - 1

    def code(x: int, y: int) -> int:
        return (x < 0) + (x > right) * 2 + (y < 0) * 4 + (y > bottom) * 8

    c1, c2 = code(x1, y1), code(x2, y2)
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            edge = 0 if c1 < 8 else bottom
            x1 += int((edge - y1) * (x2 - x1) / (y2 - y1))
            y1, c1 = edge, (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            edge = 0 if c2 < 8 else bottom
            x2 += int((edge - y2) * (x2 - x1) / (y2 - y1))
            y2, c2 = edge, (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                edge = 0 if c1 == 1 else right
                y1 += int((edge - x1) * (y2 - y1) / (x2 - x1))
                x1, c1 = edge, 0
            if c2:
                edge = 0 if c2 == 1 else right
                y2 += int((edge - x2) * (y2 - y1) / (x2 - x1))
                x2, c2 = edge, 0
    return np.array([x1, y1, x2, y2], np.int64) if (c1 | c2) == 0 else None


def polygon_segments(points: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The polygon's edges (V, 4) x0, y0, x1, y1 for the fill, and its outline's segments (S, 4) clipped to the
    image and ordered left to right, for the lines (OpenCV draws each from its left end)."""
    edges = np.concatenate([np.roll(points, 1, axis=0), points], axis=1)  # corner i-1 -> corner i, as OpenCV
    clipped = [clip_segment(edge[:2], edge[2:], width, height) for edge in edges]
    lines = np.array([c if c[0] <= c[2] else c[[2, 3, 0, 1]] for c in clipped if c is not None], np.int64)
    return (edges if len(points) >= 3 else edges[:0]), lines.reshape(-1, 4)


def _no_rows(height: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.full((height,), NONE, device=device, dtype=torch.int64),
            torch.full((height,), -NONE, device=device, dtype=torch.int64))


def fill_rows(edges: torch.Tensor, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's first and last filled pixel (height,) int64 from the polygon's edges (V, 4): the leftmost and
    rightmost of the edges crossing the row, each stepped from its upper corner in 16.16 fixed point, rounded."""
    if not len(edges):
        return _no_rows(height, edges.device)
    top_first = edges[:, 1] <= edges[:, 3]
    xt = torch.where(top_first, edges[:, 0], edges[:, 2])
    yt = torch.where(top_first, edges[:, 1], edges[:, 3])
    xb = torch.where(top_first, edges[:, 2], edges[:, 0])
    yb = torch.where(top_first, edges[:, 3], edges[:, 1])
    span = yb - yt  # a horizontal edge (0) crosses no row: the edges beside it give its ends
    safe = span.clamp(min=1)
    step = torch.div((xb - xt) * FIXED_ONE * 2 + safe, 2 * safe, rounding_mode="trunc")  # (V,) per row
    rows = torch.arange(height, device=edges.device)[None]
    x = xt[:, None] * FIXED_ONE + (rows - yt[:, None]) * step[:, None]  # (V, height)
    pixel = torch.div(x + FIXED_ONE // 2, FIXED_ONE, rounding_mode="floor")
    crossing = (span[:, None] > 0) & (rows >= yt[:, None]) & (rows <= yb[:, None])
    return torch.where(crossing, pixel, NONE).amin(0), torch.where(crossing, pixel, -NONE).amax(0)


def line_rows(lines: torch.Tensor, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's first and last pixel (height,) int64 of 8-connected lines (S, 4), left end first: Bresenham's
    steps along the longer axis, the shorter axis's offset rounded half towards the left end."""
    if not len(lines):
        return _no_rows(height, lines.device)
    x0, y0, x1, y1 = lines.unbind(1)
    dx, dy = (x1 - x0)[:, None], (y1 - y0).abs()[:, None]
    down = torch.where(y1 >= y0, 1, -1)[:, None]
    offset = (torch.arange(height, device=lines.device)[None] - y0[:, None]) * down  # rows from the left end
    on = (offset >= 0) & (offset <= dy)
    # Along x (dx >= dy): row offset k holds steps i with ceil((2 i dy - dx) / (2 dx)) = k, i.e. from
    # floor(dx (2k - 1) / (2 dy)) + 1 to the next row's first - 1.
    rise = dy.clamp(min=1)

    def first_step(k: torch.Tensor) -> torch.Tensor:
        return torch.div(dx * (2 * k - 1), 2 * rise, rounding_mode="floor").add(1).clamp(min=0)

    along_first = torch.where(dy > 0, first_step(offset), 0)
    along_last = torch.where(dy > 0, first_step(offset + 1) - 1, dx).clamp(max=dx)
    # Along y (dy > dx): one pixel per row, x offset ceil((2 k dx - dy) / (2 dy)).
    across = -torch.div(dy - 2 * offset * dx, 2 * rise, rounding_mode="floor")
    steep = dy > dx
    first = x0[:, None] + torch.where(steep, across, along_first)
    last = x0[:, None] + torch.where(steep, across, along_last)
    return torch.where(on, first, NONE).amin(0), torch.where(on, last, -NONE).amax(0)


def convex_mask(outline: np.ndarray, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(height, width) float32 mask on `device`: 1 on the convex hull of outline points (P, 2) pixels, filled as
    cv2.fillConvexPoly fills it in a mask of that size."""
    edges, lines = polygon_segments(hull_points(outline), width, height)
    corners = upload(np.concatenate([edges, lines]), device)  # one small copy to the device
    fill_first, fill_last = fill_rows(corners[:len(edges)], height)
    line_first, line_last = line_rows(corners[len(edges):], height)
    # The lines lie along the fill's ends: together one run per row.
    first = torch.minimum(fill_first, line_first).clamp(min=0)
    last = torch.maximum(fill_last, line_last).clamp(max=width - 1)
    columns = torch.arange(width, device=device)[None]
    return ((columns >= first[:, None]) & (columns <= last[:, None])).float()


@lru_cache(maxsize=8)
def _gaussian(kernel: int, sigma: float, device: torch.device) -> torch.Tensor:
    """cv2.getGaussianKernel(kernel, sigma) as float32 on `device`, kept."""
    return upload(cv2.getGaussianKernel(kernel, sigma).astype(np.float32)[:, 0], device)


def reflect_101(count: int, reach: int, device: torch.device) -> torch.Tensor:
    """Indices of `count` pixels padded by `reach` on both sides as OpenCV's default border (BORDER_REFLECT_101:
    ... 2 1 | 0 1 2 ... n-1 | n-2 ...), for any reach, even one past the image's size."""
    index = torch.arange(-reach, count + reach, device=device).abs()
    if count == 1:
        return torch.zeros_like(index)
    period = 2 * (count - 1)
    index = index % period
    return torch.where(index >= count, period - index, index)


def gaussian_blur(mask: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """cv2.GaussianBlur(mask, (kernel, kernel), sigma) of a (height, width) float32 mask: separable, OpenCV's
    kernel and default border."""
    height, width = mask.shape
    weights, reach = _gaussian(kernel, sigma, mask.device), kernel // 2
    padded = mask[reflect_101(height, reach, mask.device)][:, reflect_101(width, reach, mask.device)]
    blurred = F.conv2d(padded[None, None], weights.view(1, 1, 1, kernel))
    return F.conv2d(blurred, weights.view(1, 1, kernel, 1))[0, 0]
