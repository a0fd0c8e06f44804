"""Small records of random content, written through data/records.py as preprocess.py writes them: for tests of
the record format and for the runnable examples in the docs (tests/test_snippets.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data import records
from data.face_size import FACE_SIZE

# The record that examples in README.md and docs/ may name: tests/test_snippets.py writes it (random content) in
# the folder their Python blocks run in.
EXAMPLE_STEM = "records/lrs2/5535415699068794046/00001"


def random_record(stem: str | Path, frames: int = 6, face_format: str = "png", seed: int = 0,
                  face_size: int = FACE_SIZE) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Write a record of `frames` random face_size x face_size faces (frame 2 without a face) at `stem`; returns the
    faces (frames, face_size, face_size, 3) uint8 and the arrays written (landmarks, boxes, has_face, mel)."""
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (frames, face_size, face_size, 3), dtype=np.uint8)
    has_face = np.ones(frames, bool)
    has_face[2] = False
    arrays = dict(landmarks=rng.random((frames, 131, 2)).astype(np.float32),
                  boxes=np.tile(np.array([10, 20, 110, 140], np.int32), (frames, 1)), has_face=has_face,
                  mel=rng.random((frames * 3 + 1, 80)).astype(np.float32))
    encoded = [records.encode_face(face, face_format) if found else b"" for face, found in zip(faces, has_face)]
    records.write_record(stem, faces=encoded, source_fps=29.97, source_size=(320, 240), face_format=face_format,
                         face_size=face_size, **arrays)
    return faces, arrays
