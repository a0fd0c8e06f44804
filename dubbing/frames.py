"""Template frames for pass 2: streamed from the decoder, or read back from a raw spool when the template loops."""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from data.video import FPS, VideoReader
from dubbing.template import Template


class FrameSpool:
    """Raw RGB frames in an unnamed temporary file, read back in any order (a looping template)."""

    def __init__(self, directory: str | Path | None = None):
        self._file = tempfile.TemporaryFile(dir=directory)
        self.shape: tuple[int, ...] | None = None

    def append(self, frame: np.ndarray) -> None:
        if self.shape is None:
            self.shape = frame.shape
        elif frame.shape != self.shape:
            frame = cv2.resize(frame, (self.shape[1], self.shape[0]))  # a mid-stream size change
        self._file.write(np.ascontiguousarray(frame, np.uint8).tobytes())

    def __getitem__(self, index: int) -> np.ndarray:
        size = int(np.prod(self.shape))
        self._file.seek(int(index) * size)
        return np.frombuffer(self._file.read(size), np.uint8).reshape(self.shape).copy()

    def close(self) -> None:
        self._file.close()


def spool_template(template: Template, directory: Path) -> FrameSpool:
    """Every frame of the template, at its dubbing rate, in a spool in `directory`."""
    spool = FrameSpool(directory)
    try:
        for frame in template_frames(template, np.arange(len(template)), None):
            spool.append(frame)
    except BaseException:
        spool.close()
        raise
    return spool


def template_frames(template: Template, order: np.ndarray, spool: FrameSpool | None) -> Iterator[np.ndarray]:
    """Template frames in `order` (output order): from the spool, or streamed when `order` never goes back."""
    if spool is not None:
        for index in order:
            yield spool[index]
        return
    with VideoReader(template.path, template.fps) as reader:
        stream, position, frame = iter(reader), -1, None
        for index in order:
            while position < index:
                frame, position = next(stream), position + 1
            yield frame


def read_selected(path: Path, indices: np.ndarray, fps: float = FPS) -> dict[int, np.ndarray]:
    """The frames at `indices` of the video decoded at `fps` (decoding up to the last one)."""
    wanted = set(int(i) for i in indices)
    found = {}
    with VideoReader(path, fps) as reader:
        for index, frame in enumerate(reader):
            if index in wanted:
                found[index] = frame
            if len(found) == len(wanted):
                break
    return found
