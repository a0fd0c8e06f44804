"""Who a face is: dlib's ResNet face descriptor (128 numbers; two crops of one person lie within about 0.6 of each
other, dlib's own threshold), whose weights ship inside the `face-recognition-models` package, so it runs offline.

The descriptor's input is dlib's 5-point alignment of the face's box (the bounding box of its 131 landmarks), as
dlib computes it for its own detections. Used to follow the chosen face across cuts and occlusions
(dubbing/faces.py).
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from data.errors import InputError

DESCRIPTOR_SIZE = 128
WEIGHTS = ("dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat")


def weights_folder() -> Path:
    """face-recognition-models' folder of weights, found without importing the package (its __init__ needs
    pkg_resources, which recent setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("face-recognition-models", "not installed: pip install -r requirements.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@lru_cache(maxsize=1)
def _networks():
    import dlib

    folder = weights_folder()
    recogniser, predictor = (str(folder / name) for name in WEIGHTS)
    return dlib.face_recognition_model_v1(recogniser), dlib.shape_predictor(predictor)


def describe(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(128,) float32 descriptor of the face whose (131, 2) landmarks (frame pixels) are given, in an RGB uint8
    frame."""
    import dlib

    recogniser, predictor = _networks()
    height, width = frame.shape[:2]
    x0, y0 = np.clip(np.floor(landmarks.min(axis=0)), 0, [width - 1, height - 1]).astype(int)
    x1, y1 = np.clip(np.ceil(landmarks.max(axis=0)), 0, [width - 1, height - 1]).astype(int)
    frame = np.ascontiguousarray(frame)
    shape = predictor(frame, dlib.rectangle(int(x0), int(y0), int(x1), int(y1)))
    return np.asarray(recogniser.compute_face_descriptor(frame, shape), np.float32)


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance between descriptors (..., 128)."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)
