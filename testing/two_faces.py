"""Test media with two people, made from the sample talkers (talk_a, talk_b) side by side: shots in which they sit
left and right, swap sides at a cut, and leave the frame. Used by tests/test_faces.py and bench/faces.py."""
from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np

from data.video import VideoReader, VideoWriter

TILE = 160  # each talker's square, in pixels
EMPTY = 96  # the grey of a square nobody sits in
# The default clip's shots, 4 frames each: (left, right) with "a", "b" or None (nobody).
SHOTS = (("a", "b"), ("b", "a"), (None, "a"), ("b", None))


def talker_tiles(samples: Path, frames: int, start: int = 0, tile: int = TILE) -> dict[str, list[np.ndarray]]:
    """Frames start..start+frames-1 of talk_a and talk_b, each scaled to a tile x tile square."""
    tiles = {}
    for name in ("a", "b"):
        with VideoReader(samples / f"talk_{name}.mp4") as reader:
            tiles[name] = [cv2.resize(frame, (tile, tile), interpolation=cv2.INTER_AREA)
                           for frame in itertools.islice(reader, start, start + frames)]
    return tiles


def compose(tiles: dict[str, list[np.ndarray]], shots=SHOTS, per_shot: int = 4) -> tuple[list[np.ndarray], list]:
    """The frames of `shots` (per_shot frames each; the talkers' own frames run on through the shots) and, per
    frame, who sits left and right."""
    frames, seats = [], []
    tile = next(iter(tiles.values()))[0].shape[0]
    empty = np.full((tile, tile, 3), EMPTY, np.uint8)
    for t, (left, right) in enumerate(s for s in shots for _ in range(per_shot)):
        frames.append(np.concatenate([tiles[left][t] if left else empty, tiles[right][t] if right else empty], 1))
        seats.append((left, right))
    return frames, seats


def two_face_clip(samples: Path, path: Path, shots=SHOTS, per_shot: int = 4, start: int = 0) -> list:
    """Write the clip (25 fps, H.264) to `path`; returns who sits where in each frame."""
    tiles = talker_tiles(samples, len(shots) * per_shot, start)
    frames, seats = compose(tiles, shots, per_shot)
    with VideoWriter(path) as writer:
        for frame in frames:
            writer.write(frame)
    return seats
