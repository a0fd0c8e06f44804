"""Small template videos for tests: a sample talker's first frames, resized, one frame's face painted out."""
from __future__ import annotations

import itertools
from pathlib import Path

import cv2

from data.video import VideoReader, VideoWriter


def small_template(source: Path, path: Path, frames: int, size: int, painted: tuple[int, slice, slice] | None = None
                   ) -> Path:
    """The first `frames` frames of `source` at `size`x`size` written to `path`; `painted` (frame, rows, columns)
    fills that region of that frame with grey, so FaceMesh finds no face there."""
    with VideoReader(source) as reader:
        images = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in itertools.islice(reader, frames)]
    if painted is not None:
        index, rows, columns = painted
        images[index] = images[index].copy()
        images[index][rows, columns] = 128
    with VideoWriter(path) as writer:
        for image in images:
            writer.write(image)
    return Path(path)
