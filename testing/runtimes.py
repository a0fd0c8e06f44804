"""A render step against torch's on a real dub's inputs, and the bounds a faster way of rendering must keep.

The bounds are what a viewer and the metrics cannot tell apart: at most 2 grey levels at the 99.9th percentile of
|difference| and at least 45 dB PSNR (onnxruntime and Winograd convolutions both answer to them).
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import dubbing
from data.audio import SAMPLE_RATE, load_audio
from data.video import VideoReader, VideoWriter
from dubbing.network import RenderStep
from testing.audio import write_wav

GREY_LEVELS, MIN_PSNR = 2.0, 45.0


def short_media(samples: Path, folder: Path) -> tuple[Path, Path]:
    """The demo template's first 8 frames and the demo speech's first 0.2 s, written into `folder`."""
    template = folder / "template.mp4"
    with VideoReader(samples / "template_129.mp4") as reader, VideoWriter(template) as writer:
        for frame in itertools.islice(reader, 8):
            writer.write(frame)
    audio = write_wav(folder / "speech.wav", load_audio(samples / "speech_audio2.wav")[:int(0.2 * SAMPLE_RATE)])
    return template, audio


def as_grey(faces: torch.Tensor) -> np.ndarray:
    """Generated faces in 0..1 as the dub writes them: uint8 grey levels (dubbing.network.generate)."""
    return (faces.float().clamp(0, 1) * 255).round().byte().numpy().astype(np.float64)


def faces_of_both(media: tuple[Path, Path], landmark: Path, renderer: Path, other: RenderStep, folder: Path
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The generated faces of a short dub (N=3, 2 frames at 10 fps) under torch (direct convolutions), and
    under the render step `other` on the same inputs, in grey levels."""
    models = dubbing.load_models(landmark, renderer, "cpu")
    assert models.runtime == "torch"
    torch_faces, other_faces = [], []

    def both(network, refs, faces, sketches, mels):
        expected = dubbing.render_faces(network, refs, faces, sketches, mels)
        torch_faces.append(as_grey(expected))
        other_faces.append(as_grey(other(network, refs, faces, sketches, mels)))
        return expected

    config = dubbing.default_config()
    config.update(refs=3)
    config["output"]["fps"] = 10
    dubbing.dub(*media, folder / "out.mp4", replace(models, render_step=both), config, progress=False)
    return np.concatenate(torch_faces), np.concatenate(other_faces)


def check_bounds(expected: np.ndarray, got: np.ndarray, face_size: int) -> None:
    """Two frames' faces within GREY_LEVELS and MIN_PSNR of torch's (printed with -s), and faces at all."""
    assert expected.shape == (2, 3, face_size, face_size)
    difference = np.abs(got - expected)
    psnr = 10 * np.log10(255**2 / np.mean(difference**2)) if difference.any() else np.inf
    print(f"{face_size}: 99.9th percentile {np.percentile(difference, 99.9):.2f} grey levels, largest "
          f"{difference.max():.0f}, PSNR {psnr:.1f} dB")
    assert np.percentile(difference, 99.9) <= GREY_LEVELS and psnr >= MIN_PSNR
    assert expected.std() > 3  # faces, not a constant that a broken step could match too
