"""The training samples drawn straight from the records (each sample opens its record): the reference that the
packed datasets in data/datasets.py must equal, sample for sample, and the "before" column of bench/loaders.py.
Slow on purpose (two .npz reads a sample, float32 images); not for training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.audio import mel_windows
from data.crop import box_size
from data.face_size import FACE_SIZE
from data.landmarks import SKETCH_WINDOW, content_of, pose_of
from data.packs import valid_starts
from data.records import load_clip
from data.sketch import draw_sketch
from data.tensors import as_images, unit_range


def sketch_tensor(landmarks: np.ndarray, box_size: tuple[int, int], size: int = FACE_SIZE) -> np.ndarray:
    """Sketch as the renderer takes it: (3, size, size) float32 in 0..1 (the three channels are equal)."""
    plane = unit_range(torch.from_numpy(draw_sketch(landmarks, box_size, size))).numpy()
    return np.broadcast_to(plane, (3, size, size)).copy()


def draw(stems: list[Path], seed: int, epoch: int, index: int, steps: int):
    """(rng, clip, window, others) of item `index` of usable `stems` in `epoch`, from its record."""
    rng = np.random.default_rng([seed, epoch, index])
    clip = load_clip(stems[index % len(stems)])
    start = rng.choice(valid_starts(clip.has_face, len(clip.mel), steps))
    window = np.arange(start, start + steps)
    others = np.setdiff1d(clip.face_frames, window)
    return rng, clip, window, others


def landmark_sample(stems: list[Path], seed: int, epoch: int, index: int, steps: int = SKETCH_WINDOW, refs: int = 15
                    ) -> dict[str, torch.Tensor]:
    """LandmarkWindows' sample (same keys, shapes and values), read from the record."""
    rng, clip, window, others = draw(stems, seed, epoch, index, steps)
    chosen = rng.choice(others, refs, replace=len(others) < refs)
    landmarks = clip.landmarks
    return {"mels": torch.from_numpy(mel_windows(clip.mel, window))[:, None],
            "pose": torch.from_numpy(pose_of(landmarks[window])),
            "content": torch.from_numpy(content_of(landmarks[window])),
            "ref_pose": torch.from_numpy(pose_of(landmarks[chosen])),
            "ref_content": torch.from_numpy(content_of(landmarks[chosen]))}


def _float_images(images: np.ndarray) -> torch.Tensor:
    return as_images(torch.from_numpy(np.ascontiguousarray(images)))


def _float_sketches(clip, frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([sketch_tensor(clip.landmarks[t], box_size(clip.boxes[t]), clip.face_size)
                                      for t in frames]))


def render_sample(stems: list[Path], seed: int, epoch: int, index: int, refs: int = 3) -> dict[str, torch.Tensor]:
    """RenderFrames' sample as the renderer takes it (float32 RGB and 3-channel sketches in 0..1), from the record."""
    rng, clip, window, others = draw(stems, seed, epoch, index, SKETCH_WINDOW)
    chosen = rng.choice(others, refs, replace=len(others) < refs)
    target = window[SKETCH_WINDOW // 2]
    faces = clip.faces[np.concatenate([[target], chosen])]
    return {"face": _float_images(faces[:1])[0], "sketches": _float_sketches(clip, window),
            "ref_images": _float_images(faces[1:]), "ref_sketches": _float_sketches(clip, chosen),
            "mels": torch.from_numpy(mel_windows(clip.mel, [target]))[0][None]}
