"""Training datasets over preprocessed records, and the file lists that split them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.audio import MEL_STEPS, mel_windows, window_start
from data.errors import InputError
from data.landmarks import content_of, pose_of
from data.records import load_clip, record_paths


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


class LandmarkWindows(torch.utils.data.Dataset):
    """Samples for the landmark generator: item i comes from video i % V (V usable videos); an epoch visits
    every video `repeats` times.

    A sample is a random window of `steps` consecutive frames that all have a face (with audio windows inside
    the mel) and `refs` reference frames drawn from the video's other face frames. Randomness comes from
    (seed, epoch, index), so a resumed run draws the same samples. Videos with fewer than `min_face_frames`
    face frames or no valid window are skipped and counted in `skipped`. Only landmarks, face flags and the
    mel are read from each record; face images are never decoded.
    """

    def __init__(self, stems: list[Path], steps: int = 5, refs: int = 15, min_face_frames: int = 25,
                 seed: int = 0, repeats: int = 1, progress: bool = False):
        self.steps, self.refs, self.seed, self.epoch, self.repeats = steps, refs, seed, 0, repeats
        self.stems, self.skipped, self.missing = [], [], []
        for stem in tqdm(stems, desc="scanning records", unit="record", disable=not progress):
            if not record_paths(stem)[0].is_file():
                self.missing.append(stem)
                continue
            clip = load_clip(stem)
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

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        clip = load_clip(self.stems[index % len(self.stems)])
        landmarks, has_face, mel = clip.landmarks, clip.has_face, clip.mel
        start = rng.choice(_valid_starts(has_face, len(mel), self.steps))
        window = np.arange(start, start + self.steps)
        others = np.setdiff1d(np.flatnonzero(has_face), window)
        refs = rng.choice(others, self.refs, replace=len(others) < self.refs)
        return {
            "mels": torch.from_numpy(mel_windows(mel, window))[:, None],  # (T, 1, 80, 16)
            "pose": torch.from_numpy(pose_of(landmarks[window])),  # (T, 2, 74)
            "content": torch.from_numpy(content_of(landmarks[window])),  # (T, 2, 57)
            "ref_pose": torch.from_numpy(pose_of(landmarks[refs])),  # (Nl, 2, 74)
            "ref_content": torch.from_numpy(content_of(landmarks[refs])),  # (Nl, 2, 57)
        }
