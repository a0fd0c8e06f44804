"""Sketches: the landmark line drawings the renderer is conditioned on (docs/method.md, section 1). Drawn on the fly.

Edges (FaceMesh ids): MediaPipe's lips (40), left and right eye (16 each), left and right eyebrow (8 each), the
face oval without its 12 forehead edges (24), and a 13-edge nose: 125 straight 1-pixel lines of value 224 on
black. Only edges, no points. The canvas has a short side of S px, S the face size (128, the paper's, by default),
and the crop box's aspect ratio; it is then resized to S x S (bilinear), as the official code does at 128.
"""
from __future__ import annotations

import cv2
import numpy as np

from data.face_size import FACE_SIZE
from data.landmarks import POSITION_OF_ID

LIPS = ((61, 146), (146, 91), (91, 181), (181, 84), (84, 17), (17, 314), (314, 405), (405, 321), (321, 375),
        (375, 291), (61, 185), (185, 40), (40, 39), (39, 37), (37, 0), (0, 267), (267, 269), (269, 270),
        (270, 409), (409, 291), (78, 95), (95, 88), (88, 178), (178, 87), (87, 14), (14, 317), (317, 402),
        (402, 318), (318, 324), (324, 308), (78, 191), (191, 80), (80, 81), (81, 82), (82, 13), (13, 312),
        (312, 311), (311, 310), (310, 415), (415, 308))
LEFT_EYE = ((263, 249), (249, 390), (390, 373), (373, 374), (374, 380), (380, 381), (381, 382), (382, 362),
            (263, 466), (466, 388), (388, 387), (387, 386), (386, 385), (385, 384), (384, 398), (398, 362))
RIGHT_EYE = ((33, 7), (7, 163), (163, 144), (144, 145), (145, 153), (153, 154), (154, 155), (155, 133),
             (33, 246), (246, 161), (161, 160), (160, 159), (159, 158), (158, 157), (157, 173), (173, 133))
LEFT_EYEBROW = ((276, 283), (283, 282), (282, 295), (295, 285), (300, 293), (293, 334), (334, 296), (296, 336))
RIGHT_EYEBROW = ((46, 53), (53, 52), (52, 65), (65, 55), (70, 63), (63, 105), (105, 66), (66, 107))
FACE_OVAL_NO_FOREHEAD = ((389, 356), (356, 454), (454, 323), (323, 361), (361, 288), (288, 397), (397, 365),
                         (365, 379), (379, 378), (378, 400), (400, 377), (377, 152), (152, 148), (148, 176),
                         (176, 149), (149, 150), (150, 136), (136, 172), (172, 58), (58, 132), (132, 93),
                         (93, 234), (234, 127), (127, 162))
NOSE = ((168, 6), (6, 197), (197, 195), (195, 5), (5, 4), (4, 45), (45, 220), (220, 115), (115, 48), (4, 275),
        (275, 440), (440, 344), (344, 278))
EDGES_FACEMESH = LIPS + LEFT_EYE + RIGHT_EYE + LEFT_EYEBROW + RIGHT_EYEBROW + FACE_OVAL_NO_FOREHEAD + NOSE
# (125, 2) positions into the canonical 131-point order.
EDGES = np.array([(POSITION_OF_ID[a], POSITION_OF_ID[b]) for a, b in EDGES_FACEMESH], dtype=np.int64)


def _chains(edges: np.ndarray) -> list[np.ndarray]:
    """The edges as runs of consecutive ones that share an end (a->b, b->c, ...): point positions per run."""
    chains = [[int(edges[0, 0]), int(edges[0, 1])]]
    for a, b in edges[1:].tolist():
        if a == chains[-1][-1]:
            chains[-1].append(b)
        else:
            chains.append([a, b])
    return [np.array(chain, np.int64) for chain in chains]


# One polyline per run draws each segment in its own direction with the same 1-pixel line as a two-point
# polyline would (the same pixels), at a fraction of OpenCV's per-contour cost: 125 edges in 15 runs.
CHAINS = _chains(EDGES)
CHAIN_POINTS = np.concatenate(CHAINS)  # the runs' points back to back, cut again at CHAIN_SLICES
_ENDS = np.cumsum([len(chain) for chain in CHAINS]).tolist()
CHAIN_SLICES = [slice(start, end) for start, end in zip([0] + _ENDS[:-1], _ENDS)]

SKETCH_VALUE = 224


def canvas_size(box_size: tuple[int, int], short_side: int = FACE_SIZE) -> tuple[int, int]:
    """(width, height) of the drawing canvas: short side `short_side`, the crop box's aspect ratio."""
    width, height = box_size
    scale = short_side / min(width, height)
    return int(width * scale), int(height * scale)


def draw_edges(canvas: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Draw the 125 sketch edges of (131, 2) box-normalised landmarks onto a uint8 (H, W) or (H, W, 3) canvas.

    A point maps to pixel min(floor(x * W), W - 1) as MediaPipe's drawing does; points outside the box are
    clamped to its border (the official drawing silently drops their edges instead).
    """
    height, width = canvas.shape[:2]
    pixels = np.floor(landmarks[CHAIN_POINTS] * (width, height)).astype(np.int64)
    pixels = np.clip(pixels, 0, (width - 1, height - 1)).astype(np.int32)
    colour = (SKETCH_VALUE,) * (canvas.shape[2] if canvas.ndim == 3 else 1)
    cv2.polylines(canvas, [pixels[run] for run in CHAIN_SLICES], isClosed=False, color=colour, thickness=1,
                  lineType=cv2.LINE_8)
    return canvas


def draw_sketch(landmarks: np.ndarray, box_size: tuple[int, int], size: int = FACE_SIZE) -> np.ndarray:
    """Sketch of (131, 2) box-normalised landmarks for a crop box of box_size (w, h): (size, size) uint8."""
    width, height = canvas_size(box_size, size)
    canvas = draw_edges(np.zeros((height, width), np.uint8), landmarks)
    if (width, height) != (size, size):
        canvas = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_LINEAR)
    return canvas
