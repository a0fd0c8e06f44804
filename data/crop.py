"""The face-crop rule, shared by preprocessing, training, inference and evaluation.

Rule: take the bounding box of the 131 landmarks in source pixels, widen it on every side by MARGIN times the
box's longer side, round to whole pixels, clip to the frame, and resize that region to S x S without keeping
the aspect ratio, S the face size (128, the paper's, or 256 or 512). Landmarks are then normalised to the rounded
box, so pixel content and landmarks agree exactly.

Why a relative margin: the official release widens by a fixed 5 px at preprocessing and 25 px at inference, so
the same face gets two different normalisations, and on high-resolution video a fixed pixel count means almost
nothing. On LRS2's 160x160 frames the 131-point box is typically 80-100 px on its longer side, so the official
5 px is 5-6% of it; MARGIN = 0.05 reproduces the training-time crop of the official checkpoints on LRS2 to
within about one pixel, and gives the same normalised landmarks for the same face at any resolution.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from data.face_size import FACE_SIZE
from data.resize import resize_image, to_uint8

MARGIN = 0.05


def crop_rule(size: int = FACE_SIZE) -> str:
    """The rule's parameters at face size `size` as text ('margin=0.05;size=128'). Records carry it in their version
    and the template cache keys on it, so that a changed rule makes both be made again rather than reused with the
    old crop."""
    return f"margin={MARGIN!r};size={size}"


def upscaled(boxes: np.ndarray, size: int | np.ndarray) -> np.ndarray:
    """Which crop boxes (..., 4) are enlarged to reach (size, size): their shorter side in source pixels is under
    `size` (a scalar or one per box), so the crop has less detail than its pixels suggest. (...) bool."""
    boxes = np.asarray(boxes, np.int64)
    shorter = np.minimum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
    return shorter < size


def crop_box(points: np.ndarray, frame_size: tuple[int, int], margin: float | None = None) -> np.ndarray:
    """Crop box (x0, y0, x1, y1) int32 in source pixels (x1, y1 exclusive) for (131, 2) landmarks in pixels,
    widened by `margin` (default MARGIN)."""
    margin = MARGIN if margin is None else margin
    width, height = frame_size
    low, high = points.min(axis=0), points.max(axis=0)
    pad = margin * float((high - low).max())
    x0, y0 = np.round(low - pad).astype(np.int64)
    x1, y1 = np.round(high + pad).astype(np.int64)
    x0, y0 = max(int(x0), 0), max(int(y0), 0)
    x1, y1 = min(int(x1), width), min(int(y1), height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"face box {low.tolist()}-{high.tolist()} leaves no area inside a {width}x{height} frame")
    return np.array([x0, y0, x1, y1], dtype=np.int32)


def box_size(box: np.ndarray) -> tuple[int, int]:
    """(width, height) of a crop box in source pixels."""
    return int(box[2] - box[0]), int(box[3] - box[1])


def normalise_to_box(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Source-pixel points (..., P, 2) -> coordinates relative to the box (..., 4) (0..1 inside it), float32."""
    box = np.asarray(box, dtype=np.float64)
    origin, size = box[..., None, :2], box[..., None, 2:] - box[..., None, :2]  # a point axis for broadcasting
    return ((points - origin) / size).astype(np.float32)


def denormalise_from_box(landmarks: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Inverse of normalise_to_box: box-relative (..., P, 2) and boxes (..., 4) -> source pixels, float32."""
    box = np.asarray(box, dtype=np.float64)
    origin, size = box[..., None, :2], box[..., None, 2:] - box[..., None, :2]  # a point axis for broadcasting
    return (landmarks * size + origin).astype(np.float32)


def crop_interpolation(height: int, width: int, size: int = FACE_SIZE) -> int:
    """How a (height, width) crop is resized to (size, size): area filter when shrinking, else bilinear."""
    return cv2.INTER_AREA if height > size or width > size else cv2.INTER_LINEAR


def crop_face(frame: np.ndarray, box: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """Cut the box out of an (H, W, 3) frame and resize it to (size, size, 3) uint8 (`crop_interpolation`)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    region = frame[y0:y1, x0:x1]
    return cv2.resize(region, (size, size), interpolation=crop_interpolation(*region.shape[:2], size))


def crop_face_tensor(frame: torch.Tensor, box: np.ndarray, size: int = FACE_SIZE) -> torch.Tensor:
    """crop_face in torch on the frame's device: an (H, W, 3) uint8 tensor -> (size, size, 3) uint8, the same
    resampling rule (data/resize.py) to within 1 grey level."""
    x0, y0, x1, y1 = (int(v) for v in box)
    region = frame[y0:y1, x0:x1]
    return to_uint8(resize_image(region, (size, size), crop_interpolation(*region.shape[:2], size)))


def smooth_boxes(boxes: np.ndarray, has_face: np.ndarray, window: int, frame_size: tuple[int, int]) -> np.ndarray:
    """Crop boxes (T, 4) averaged edge by edge over a centred window of `window` frames, face frames only (the
    window shrinks at the ends of the video and of every run of face frames), rounded and clipped to the frame.
    Frames without a face keep their box. window <= 1 returns the boxes unchanged. Inference uses this to steady
    the face (measured: bench/steady_faces.py); records keep the raw per-frame boxes."""
    boxes = np.asarray(boxes)
    if window <= 1 or len(boxes) == 0:
        return boxes.copy()
    half = window // 2
    out = boxes.astype(np.float64).copy()
    faces = np.asarray(has_face, bool)
    # Runs of consecutive face frames: a box is averaged only with boxes of its own run.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], faces.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        run = boxes[start:stop].astype(np.float64)
        sums = np.concatenate([np.zeros((1, 4)), np.cumsum(run, axis=0)])
        index = np.arange(len(run))
        low, high = np.clip(index - half, 0, len(run)), np.clip(index + half + 1, 0, len(run))
        out[start:stop] = (sums[high] - sums[low]) / (high - low)[:, None]
    width, height = frame_size
    out = np.round(out)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out.astype(boxes.dtype)
