"""The face-crop rule, shared by preprocessing, training, inference and evaluation.

Rule: take the bounding box of the 131 landmarks in source pixels, widen it on every side by MARGIN times the
box's longer side, round to whole pixels, clip to the frame, and resize that region to 128x128 without keeping
the aspect ratio. Landmarks are then normalised to the rounded box, so pixel content and landmarks agree exactly.

Why a relative margin: the official release widens by a fixed 5 px at preprocessing and 25 px at inference, so
the same face gets two different normalisations, and on high-resolution video a fixed pixel count means almost
nothing. On LRS2's 160x160 frames the 131-point box is typically 80-100 px on its longer side, so the official
5 px is 5-6% of it; MARGIN = 0.05 reproduces the training-time crop of the official checkpoints on LRS2 to
within about one pixel, and gives the same normalised landmarks for the same face at any resolution.
"""
from __future__ import annotations

import cv2
import numpy as np

MARGIN = 0.05
FACE_SIZE = 128


def crop_box(points: np.ndarray, frame_size: tuple[int, int], margin: float = MARGIN) -> np.ndarray:
    """Crop box (x0, y0, x1, y1) int32 in source pixels (x1, y1 exclusive) for (131, 2) landmarks in pixels."""
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


def crop_face(frame: np.ndarray, box: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """Cut the box out of an (H, W, 3) frame and resize it to (size, size, 3); area filter when shrinking."""
    x0, y0, x1, y1 = (int(v) for v in box)
    region = frame[y0:y1, x0:x1]
    shrinking = region.shape[0] > size or region.shape[1] > size
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
