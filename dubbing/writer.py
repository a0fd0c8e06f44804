"""The writer: output frames encoded (H.264) and muxed with the driving audio, plus the optional side-by-side
sketch video. Files are written under temporary names and renamed into place when complete (data/video.py).

The encoder (`output.encoder`): libx264 on the CPU, or NVENC (h264_nvenc) on an NVIDIA GPU that has it (L4,
L40S, RTX cards; H100, H200 and A100 have none). `auto` takes NVENC on CUDA when it opens and libx264 otherwise.
"""
from __future__ import annotations

import functools
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from data.errors import InputError, one_line
from data.video import ENCODER_OPTIONS, FPS, VideoWriter

ENCODERS = ("auto", *ENCODER_OPTIONS)


@functools.cache
def _nvenc_problem() -> str | None:
    """Why NVENC cannot encode here (None when a small stream opens), found out once per process."""
    try:
        context = av.codec.CodecContext.create("h264_nvenc", "w")
        context.width, context.height, context.pix_fmt = 256, 256, "yuv420p"
        context.time_base = Fraction(1, FPS)
        context.open()
        context.close()
    except Exception as error:  # a wheel without it, no NVIDIA driver, or a GPU without NVENC
        return one_line(error)
    return None


@functools.cache
def _say_once(line: str) -> None:
    print(line, file=sys.stderr)


def check_encoder(setting: str) -> None:
    """A one-line InputError for an `output.encoder` this writer does not know."""
    if setting not in ENCODERS:
        raise InputError(f"output.encoder={setting}", f"output.encoder takes one of {', '.join(ENCODERS)}")


def choose_encoder(setting: str, device: torch.device) -> str:
    """The encoder for `output.encoder` = `setting` on a run whose networks are on `device`; `auto` falling back
    from NVENC on CUDA says so in one line, once per process."""
    check_encoder(setting)
    if setting == "libx264" or (setting == "auto" and device.type != "cuda"):
        return "libx264"
    problem = _nvenc_problem()
    if problem is None:
        return "h264_nvenc"
    if setting == "h264_nvenc":
        raise InputError(f"output.encoder={setting}", f"NVENC does not open here ({problem}); use auto or libx264")
    _say_once(f"output.encoder auto: NVENC does not open here ({problem}); encoding with libx264 on the CPU")
    return "libx264"


class Outputs:
    """The dub's video and, with `sketch_path`, its sketch | result video, both at `fps` with the same audio."""

    def __init__(self, path: Path, sketch_path: Path | None, fps: float, audio: np.ndarray, audio_rate: int,
                 crf: int, encoder: str = "libx264"):
        self.video = VideoWriter(path, fps, audio, audio_rate, crf, encoder)
        self.sketch = None
        try:
            self.sketch = VideoWriter(sketch_path, fps, audio, audio_rate, crf, encoder) if sketch_path else None
        except BaseException:
            self.video.abort()
            raise

    def write(self, frame: np.ndarray, sketch: np.ndarray | None = None) -> None:
        self.video.write(frame)
        if self.sketch is not None:
            self.sketch.write(np.concatenate([sketch, frame], axis=1))

    def close(self) -> None:
        self.video.close()
        if self.sketch is not None:
            self.sketch.close()

    def abort(self) -> None:
        self.video.abort()
        if self.sketch is not None:
            self.sketch.abort()
