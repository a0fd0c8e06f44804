"""Training datasets over preprocessed records, and the file lists that split them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.audio import MEL_STEPS, mel_windows, window_start
from data.crop import box_size
from data.errors import InputError
from data.landmarks import content_of, pose_of
from data.records import load_clip, record_paths, verify_record
from data.sketch import sketch_tensor


def read_filelist(path: str | Path, root: str | Path) -> list[Path]:
    """Record stems from a list in LRS2's format: one relative path per line (extension and a trailing field
    such as LRS2's 'NF'/'MV' optional); blank lines and '#' comments are ignored."""
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise InputError(path, "no such file list")
    stems = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            relative = Path(line.split()[0])
            stems.append(root / (relative.with_suffix("") if relative.suffix else relative))
    return stems


def records_under(root: str | Path) -> list[Path]:
    """Stems of every record under a folder (recursive, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such records folder")
    return sorted(p.with_suffix("") for p in root.rglob("*.npz"))


def _valid_starts(has_face: np.ndarray, mel_length: int, steps: int) -> np.ndarray:
    """Window starts t whose frames t..t+steps-1 all have a face and whose audio windows lie inside the mel."""
    count = len(has_face) - steps + 1
    if count <= 0:
        return np.zeros(0, np.int64)
    starts = np.arange(count)
    faces = np.lib.stride_tricks.sliding_window_view(has_face, steps).all(axis=1)
    audio = (window_start(starts) >= 0) & (window_start(starts + steps - 1) + MEL_STEPS <= mel_length)
    return starts[faces & audio]


class RecordSamples(torch.utils.data.Dataset):
    """Base of the training datasets: item i comes from usable video i % V, an epoch visits every video
    `repeats` times, and item i's randomness comes from (seed, epoch, i), so a resumed run draws the same samples.

    A video is usable when it has at least `min_face_frames` face frames and some window of `steps` face
    frames whose audio windows lie inside the mel; the others are listed in `skipped` (and absent records in
    `missing`).
    """

    def __init__(self, stems: list[Path], steps: int = 5, min_face_frames: int = 25, seed: int = 0,
                 repeats: int = 1, progress: bool = False):
        self.steps, self.seed, self.epoch, self.repeats = steps, seed, 0, repeats
        self.stems, self.skipped, self.missing = [], [], []
        for stem in tqdm(stems, desc="scanning records", unit="record", disable=not progress):
            if not record_paths(stem)[0].is_file():
                self.missing.append(stem)
                continue
            clip = verify_record(stem)  # a damaged record stops the run here, before training, naming the file
            if clip.has_face.sum() < min_face_frames or len(_valid_starts(clip.has_face, len(clip.mel), steps)) == 0:
                self.skipped.append(stem)
            else:
                self.stems.append(stem)
        if not self.stems:
            raise InputError(stems[0].parent if stems else "records", f"no usable records among {len(stems)} "
                             f"({len(self.skipped)} with too few face frames, {len(self.missing)} missing)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.stems) * self.repeats

    def to_device(self, batch: dict, device: torch.device) -> dict:
        """A collated batch on `device` (copies that need not wait, from pinned memory on CUDA)."""
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def _draw(self, index: int | tuple[int, int]):
        """(rng, clip, window, others): a random valid window of the item's video and its other face frames.
        `index` is an item, or (epoch, item) as training's sampler gives it."""
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        rng = np.random.default_rng([self.seed, epoch, index])
        clip = load_clip(self.stems[index % len(self.stems)])
        start = rng.choice(_valid_starts(clip.has_face, len(clip.mel), self.steps))
        window = np.arange(start, start + self.steps)
        others = np.setdiff1d(clip.face_frames, window)
        return rng, clip, window, others


class LandmarkWindows(RecordSamples):
    """Samples for the landmark generator: a random window of `steps` consecutive face frames of the item's
    video and `refs` reference frames drawn from its other face frames. Only landmarks, face flags and the mel
    are read; face images are never decoded."""

    def __init__(self, stems: list[Path], steps: int = 5, refs: int = 15, min_face_frames: int = 25,
                 seed: int = 0, repeats: int = 1, progress: bool = False):
        super().__init__(stems, steps, min_face_frames, seed, repeats, progress)
        self.refs = refs

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng, clip, window, others = self._draw(index)
        refs = rng.choice(others, self.refs, replace=len(others) < self.refs)
        landmarks = clip.landmarks
        return {
            "mels": torch.from_numpy(mel_windows(clip.mel, window))[:, None],  # (T, 1, 80, 16)
            "pose": torch.from_numpy(pose_of(landmarks[window])),  # (T, 2, 74)
            "content": torch.from_numpy(content_of(landmarks[window])),  # (T, 2, 57)
            "ref_pose": torch.from_numpy(pose_of(landmarks[refs])),  # (Nl, 2, 74)
            "ref_content": torch.from_numpy(content_of(landmarks[refs])),  # (Nl, 2, 57)
        }


def _sketches(clip, frames: np.ndarray) -> torch.Tensor:
    """(k, 3, 128, 128) float sketches of the given frames, drawn from their stored landmarks and box shapes."""
    return torch.from_numpy(np.stack([sketch_tensor(clip.landmarks[t], box_size(clip.boxes[t])) for t in frames]))


def image_tensor(images: np.ndarray | list[np.ndarray], device: torch.device | str | None = None) -> torch.Tensor:
    """RGB uint8 images (k, H, W, 3) (an array or a list) -> (k, 3, H, W) float32 in 0..1, on `device`."""
    array = np.ascontiguousarray(np.stack(images) if isinstance(images, list) else images)
    return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).float().div_(255)


class RenderFrames(RecordSamples):
    """Samples for the renderer: the centre frame of a random window of 5 face frames (the target), the sketches
    of the window, `refs` reference faces and their sketches drawn from the video's other face frames, and the
    target's audio window. Images are RGB in 0..1."""

    def __init__(self, stems: list[Path], refs: int = 3, min_face_frames: int = 25, seed: int = 0,
                 repeats: int = 1, progress: bool = False):
        super().__init__(stems, 5, min_face_frames, seed, repeats, progress)
        self.refs = refs

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng, clip, window, others = self._draw(index)
        refs = rng.choice(others, self.refs, replace=len(others) < self.refs)
        target = window[2]
        faces = clip.faces[np.concatenate([[target], refs])]
        return {
            "face": image_tensor(faces[:1])[0],  # (3, 128, 128)
            "sketches": _sketches(clip, window),  # (5, 3, 128, 128)
            "ref_images": image_tensor(faces[1:]),  # (N, 3, 128, 128)
            "ref_sketches": _sketches(clip, refs),  # (N, 3, 128, 128)
            "mels": torch.from_numpy(mel_windows(clip.mel, [target]))[0][None],  # (1, 80, 16)
        }
