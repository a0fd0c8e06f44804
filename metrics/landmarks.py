"""LipLMD: mean distance between the lip landmarks of generated and real frames, normalised by the face crop.

Definition: MediaPipe FaceMesh runs on the generated and the real frame; the 40 lip points of IP_LAP's 131
landmarks (data/landmarks.py: 20 outer, 20 inner) are taken from both and expressed relative to the crop box of the
REAL frame's 131 landmarks (data/crop.py: landmark box widened by 5% of its longer side), x divided by the box
width and y by its height, so both sets live in the real face's 0..1 crop coordinates. The frame's value is the
mean Euclidean distance over the 40 point pairs; the video's value is the mean over frames where both faces are
found.
Relation to the paper: these are the coordinates IP_LAP's landmark generator predicts in (landmarks normalised to
the face crop), which is where the paper's ~0.013 (LRS2) comes from: 0.013 of a crop is about 1.7 pixels on a
128x128 face. The official crop margin differs slightly from this project's (about 5% either way), so values are
comparable in scale but not to the third digit. Multiply by the crop size in pixels for a pixel distance.
"""
from __future__ import annotations

import numpy as np

from data.crop import normalise_to_box
from data.facemesh import FaceTrack
from data.landmarks import LIP_POSITIONS


def lips_in_box(generated: np.ndarray, real: np.ndarray, box: np.ndarray) -> float:
    """The definition: mean distance of the 40 lip points, (131, 2) landmarks of each frame in source pixels,
    both expressed in the real face's crop box `box`."""
    real_lips = normalise_to_box(real[LIP_POSITIONS], box).astype(np.float64)
    generated_lips = normalise_to_box(generated[LIP_POSITIONS], box).astype(np.float64)
    return float(np.linalg.norm(generated_lips - real_lips, axis=1).mean())


def track_lip_distances(generated: FaceTrack, real: FaceTrack) -> np.ndarray:
    """Per-frame LipLMD (T,) float64 of two face tracks (data/facemesh.py) of equal length, NaN where either frame
    has no face; the real frame's crop box is the track's (the one crop rule)."""
    generated_pixels, real_pixels = generated.pixels(), real.pixels()
    return np.array([lips_in_box(generated_pixels[t], real_pixels[t], real.boxes[t])
                     if generated.has_face[t] and real.has_face[t] else np.nan for t in range(len(real))],
                    dtype=np.float64)

