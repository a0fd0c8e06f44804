"""Landmark conventions: the 131 FaceMesh points IP_LAP uses, their canonical order and the pose/content split.

A set of landmarks is stored as (..., 131, 2) float32, x then y, in canonical order, normalised to the face crop
box (0..1). The networks see (2, n) arrays instead (row 0 = x, row 1 = y); `pose_of` and `content_of` give those.
"""
from __future__ import annotations

import numpy as np

# FaceMesh (478-point, refine_landmarks=True) indices in canonical order, positions 0..130 (docs/method.md, section 1).
FACE_OVAL = (162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
             377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356, 389)
RIGHT_EYEBROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_EYEBROW = (336, 296, 334, 293, 300, 276, 283, 282, 295, 285)
NOSE_BRIDGE = (168, 6, 197, 195, 5)
NOSE_BOTTOM = (48, 115, 220, 45, 4, 275, 440, 344, 278)
RIGHT_EYE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE = (362, 398, 384, 385, 386, 387, 388, 466, 263, 249, 390, 373, 374, 380, 381, 382)
OUTER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)

FACEMESH_IDS: tuple[int, ...] = (FACE_OVAL + RIGHT_EYEBROW + LEFT_EYEBROW + NOSE_BRIDGE + NOSE_BOTTOM
                                 + RIGHT_EYE + LEFT_EYE + OUTER_LIP + INNER_LIP)
NUM_LANDMARKS = len(FACEMESH_IDS)  # 131
# Frames t-2..t+2: the landmark generator predicts this window at once, and the renderer takes its sketches.
SKETCH_WINDOW = 5
SKETCH_CENTRE = SKETCH_WINDOW // 2  # frame t's place in its window
NUM_FACEMESH_POINTS = 478

# Positions (into the canonical order) of the network's landmark groups.
POSE_POSITIONS = np.array([*range(0, 4), *range(21, 25), *range(25, 91)])  # 74: oval ends, brows, nose, eyes
JAW_POSITIONS = np.arange(4, 21)  # 17: lower face oval
LIP_POSITIONS = np.arange(91, 131)  # 40: outer then inner lip
CONTENT_POSITIONS = np.concatenate([JAW_POSITIONS, LIP_POSITIONS])  # 57: jaw then lip
# The networks' full face is pose then content; this maps it back to canonical positions.
POSE_CONTENT_POSITIONS = np.concatenate([POSE_POSITIONS, CONTENT_POSITIONS])
NUM_POSE, NUM_JAW, NUM_LIP = len(POSE_POSITIONS), len(JAW_POSITIONS), len(LIP_POSITIONS)
# Face oval and eyebrows: the outline of the paste-back mask at inference (the official jaw + brows polygon).
OUTLINE_POSITIONS = np.arange(0, 45)
NUM_CONTENT = NUM_JAW + NUM_LIP

# FaceMesh id -> canonical position, for drawing and for metrics that name FaceMesh points.
POSITION_OF_ID: dict[int, int] = {fid: pos for pos, fid in enumerate(FACEMESH_IDS)}
UPPER_LIP_MID, LOWER_LIP_MID = POSITION_OF_ID[0], POSITION_OF_ID[17]


def from_facemesh(points: np.ndarray) -> np.ndarray:
    """Pick the 131 canonical points from FaceMesh output: (..., 478, C) -> (..., 131, 2), same units."""
    if points.shape[-2] < NUM_FACEMESH_POINTS - 10:  # 468 without iris refinement still holds all 131
        raise ValueError(f"expected FaceMesh points (..., 468 or 478, 2+), got shape {points.shape}")
    return np.ascontiguousarray(points[..., FACEMESH_IDS, :2])


def pose_of(landmarks: np.ndarray) -> np.ndarray:
    """Pose landmarks as the networks take them: (..., 131, 2) -> (..., 2, 74)."""
    return np.swapaxes(landmarks[..., POSE_POSITIONS, :], -1, -2)


def content_of(landmarks: np.ndarray) -> np.ndarray:
    """Content landmarks (jaw 17 then lip 40) as the networks take them: (..., 131, 2) -> (..., 2, 57)."""
    return np.swapaxes(landmarks[..., CONTENT_POSITIONS, :], -1, -2)


def merge_pose_content(pose: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Inverse of pose_of/content_of: (..., 2, 74) and (..., 2, 57) -> (..., 131, 2) in canonical order."""
    both = np.concatenate([pose, content], axis=-1)  # (..., 2, 131) in pose-then-content order
    out = np.empty(both.shape[:-2] + (NUM_LANDMARKS, 2), dtype=both.dtype)
    out[..., POSE_CONTENT_POSITIONS, :] = np.swapaxes(both, -1, -2)
    return out


def lip_openness(landmarks: np.ndarray) -> np.ndarray:
    """Distance between the upper- and lower-lip midpoints (FaceMesh 0 and 17): (..., 131, 2) -> (...)."""
    return np.linalg.norm(landmarks[..., UPPER_LIP_MID, :] - landmarks[..., LOWER_LIP_MID, :], axis=-1)
