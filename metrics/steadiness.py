"""Steadiness: how much the mouth shakes from frame to frame (lip jitter), from the FaceMesh track LipLMD runs.

Definition (docs/evaluation.md): the 40 lip points x_p(t) of IP_LAP's 131 landmarks (data/landmarks.py), in source
pixels, and the frame's crop box (data/crop.py) of size s(t) = (width + height) / 2 pixels. For every frame t whose
neighbours t-1 and t+1 also have a face,

    J(t) = 1/40 * sum_p || x_p(t+1) - 2 x_p(t) + x_p(t-1) || / s(t),

the mean Euclidean length of the lip points' second difference over time, as a fraction of the face box. A still
face and a face moving at constant velocity score 0; a lip point that alternates by +a and -a pixels around its
place scores 4a / s. A video's value is the mean of J(t) over its usable frames; a dataset's, the mean over all
usable frames. Reported for the generated and the real video, and their ratio (generated / real: 1 is as steady as
the real mouth, above 1 shakier). Values depend on the frame rate they are measured at (evaluation decodes at
25 fps).
"""
from __future__ import annotations

import numpy as np

from data.facemesh import FaceTrack
from data.landmarks import LIP_POSITIONS


def lip_jitter(lips: np.ndarray, box_sizes: np.ndarray, has_face: np.ndarray) -> np.ndarray:
    """The definition: per-frame J(t) (T,) float64 from lip points (T, P, 2) in pixels, box sizes (T,) in pixels
    and face flags (T,); NaN at the first and last frame and wherever t-1, t or t+1 has no face."""
    lips = np.asarray(lips, np.float64)
    values = np.full(len(lips), np.nan)
    if len(lips) < 3:
        return values
    second = lips[2:] - 2 * lips[1:-1] + lips[:-2]  # (T-2, P, 2)
    jitter = np.linalg.norm(second, axis=2).mean(axis=1) / np.asarray(box_sizes, np.float64)[1:-1]
    faces = np.asarray(has_face, bool)
    usable = faces[2:] & faces[1:-1] & faces[:-2]
    values[1:-1] = np.where(usable, jitter, np.nan)
    return values


def track_lip_jitter(track: FaceTrack) -> np.ndarray:
    """Per-frame lip jitter (T,) float64 of a face track (data/facemesh.track_faces), NaN where not defined."""
    boxes = track.boxes.astype(np.float64)
    sizes = ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / 2
    sizes = np.where(track.has_face, sizes, 1.0)  # frames without a face are left out anyway; no zero division
    return lip_jitter(track.pixels()[:, LIP_POSITIONS], sizes, track.has_face)


def jitter_ratio(generated: float | None, real: float | None) -> float | None:
    """Generated over real lip jitter; None when either is missing, inf when the real mouth is perfectly still."""
    if generated is None or real is None:
        return None
    if real == 0:
        return 0.0 if generated == 0 else float("inf")
    return generated / real
