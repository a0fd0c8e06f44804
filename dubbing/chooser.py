"""The face chooser's picture: a template's first frame with every face FaceMesh finds boxed and numbered left to
right (the numbers of `--face index:K`), for a page where the visitor clicks the face to dub (demo.py); a click
at (x, y) is the choice point:0,X,Y (dubbing/faces.py)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from data.facemesh import FaceMesh, find_faces
from data.video import FPS, VideoReader

COLOUR = (255, 208, 0)  # RGB, bright on skin and on dark backgrounds alike


def first_frame(path: str | Path) -> np.ndarray:
    """The template's first frame (RGB), as dubbing decodes it."""
    with VideoReader(path, FPS) as reader:
        return next(iter(reader))


def faces_left_to_right(frame: np.ndarray, max_faces: int) -> np.ndarray:
    """The crop boxes (F, 4) of the faces in one frame, left to right (FaceMesh on the still frame)."""
    with FaceMesh(video=False, max_faces=max_faces) as mesh:
        boxes = np.array([face[1] for face in find_faces(mesh, frame)], np.int64).reshape(-1, 4)
    return boxes[np.argsort(boxes[:, [0, 2]].sum(axis=1), kind="stable")]


def numbered(frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The frame with each box drawn and numbered from 0 at its top left corner."""
    out = np.ascontiguousarray(frame.copy())
    thickness = max(1, round(max(frame.shape[:2]) / 300))
    for number, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), COLOUR, thickness)
        scale = max(0.5, (x1 - x0) / 160)
        cv2.putText(out, str(number), (x0 + 3 * thickness, y0 + int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    COLOUR, 2 * thickness)
    return out


def chooser_picture(path: str | Path, max_faces: int) -> tuple[np.ndarray, int]:
    """(the first frame with its faces numbered, how many faces it shows)."""
    frame = first_frame(path)
    boxes = faces_left_to_right(frame, max_faces)
    return numbered(frame, boxes), len(boxes)
