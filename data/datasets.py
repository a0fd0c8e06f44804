"""Training datasets over preprocessed records, and the file lists that split them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.audio import window_start
from data.crop import FACE_SIZE, box_size
from data.errors import InputError
from data.packs import Video, open_pack
from data.records import decode_face
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


class RecordSamples(torch.utils.data.Dataset):
    """Base of the training datasets: item i comes from usable video i % V, an epoch visits every video
    `repeats` times, and item i's randomness comes from (seed, epoch, i), so a resumed run draws the same samples.

    A video is usable when it has at least `min_face_frames` face frames and some window of `steps` face
    frames whose audio windows lie inside the mel; the others are listed in `skipped` (and absent records in
    `missing`). Samples are drawn from the split's pack (data/packs.py: made once, memory-mapped by every
    worker), in `pack_dir` or, when None, in a `.packs` folder beside the records.
    """

    def __init__(self, stems: list[Path], steps: int = 5, min_face_frames: int = 25, seed: int = 0,
                 repeats: int = 1, progress: bool = False, pack_dir: str | Path | None = None):
        self.steps, self.seed, self.epoch, self.repeats = steps, seed, 0, repeats
        self.pack = open_pack(stems, steps, min_face_frames, pack_dir, progress)
        self.stems, self.skipped, self.missing = self.pack.stems, self.pack.skipped, self.pack.missing

    def set_epoch(self, epoch: int) -> None:
        """The epoch an int index draws from (eval loaders, workers started anew each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.stems) * self.repeats

    def _draw(self, key: int | tuple[int, int]) -> tuple[np.random.Generator, Video, np.ndarray, np.ndarray]:
        """(rng, video, window, others): a random valid window of the item's video and its other face frames.

        key is an index (drawn in self.epoch) or (epoch, index), as a sampler that carries the epoch yields it:
        persistent workers hold their own copy of the dataset, which set_epoch in the main process never reaches.
        """
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        video = self.pack.video(index % len(self.stems))
        # The draw rng.choice(video.starts) makes, from the same stream, without its argument checks.
        start = int(video.starts[rng.integers(0, len(video.starts))])
        window = np.arange(start, start + self.steps)
        # Every window frame has a face, so the window is `steps` consecutive entries of the sorted face frames:
        # cutting them out gives np.setdiff1d's result without its sort.
        faces = video.face_frames
        first = int(np.searchsorted(faces, start))
        others = np.concatenate([faces[:first], faces[first + self.steps:]])
        return rng, video, window, others

    def to_device(self, batch: dict, device: torch.device) -> dict:
        """The collated batch on `device`: every tensor moved with non_blocking=True."""
        return {name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                for name, value in batch.items()}


class LandmarkWindows(RecordSamples):
    """Samples for the landmark generator: a random window of `steps` consecutive face frames of the item's
    video and `refs` reference frames drawn from its other face frames. Only landmarks, face flags and the mel
    are read; face images are never decoded."""

    def __init__(self, stems: list[Path], steps: int = 5, refs: int = 15, min_face_frames: int = 25,
                 seed: int = 0, repeats: int = 1, progress: bool = False, pack_dir: str | Path | None = None):
        super().__init__(stems, steps, min_face_frames, seed, repeats, progress, pack_dir)
        self.refs = refs

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        rng, video, window, others = self._draw(key)
        refs = rng.choice(others, self.refs, replace=len(others) < self.refs)
        frames = np.concatenate([window, refs])  # one gather for the window and the references
        pose, content = video.pose[frames], video.content[frames]  # (T + Nl, 2, 74), (T + Nl, 2, 57)
        steps = len(window)
        return {
            "mels": torch.from_numpy(_mel_windows(video, window))[:, None],  # (T, 1, 80, 16)
            "pose": torch.from_numpy(pose[:steps]),  # (T, 2, 74)
            "content": torch.from_numpy(content[:steps]),  # (T, 2, 57)
            "ref_pose": torch.from_numpy(pose[steps:]),  # (Nl, 2, 74)
            "ref_content": torch.from_numpy(content[steps:]),  # (Nl, 2, 57)
        }


def _mel_windows(video: Video, frames: np.ndarray) -> np.ndarray:
    """(k, 80, 16) audio windows of frames whose windows lie inside the mel (valid windows): mel_windows' values,
    gathered from the pack's window view in one step (no clipping needed)."""
    return video.mel_windows[window_start(frames)]


def _sketches(video: Video, frames: np.ndarray) -> torch.Tensor:
    """(k, 3, 128, 128) float sketches of the given frames, drawn from their stored landmarks and box shapes."""
    return torch.from_numpy(np.stack([sketch_tensor(video.landmarks[t], box_size(video.boxes[t])) for t in frames]))


def _faces(video: Video, frames: np.ndarray) -> np.ndarray:
    """(k, 128, 128, 3) uint8 RGB faces of the given frames, decoded from the video's .faces file."""
    out = np.empty((len(frames), FACE_SIZE, FACE_SIZE, 3), np.uint8)
    with open(video.faces_path, "rb") as handle:
        for slot, t in enumerate(frames):
            start, end = video.face_bytes[t]
            handle.seek(int(start))
            out[slot] = decode_face(handle.read(int(end - start)))
    return out


def image_tensor(images: np.ndarray | list[np.ndarray], device: torch.device | str | None = None) -> torch.Tensor:
    """RGB uint8 images (k, H, W, 3) (an array or a list) -> (k, 3, H, W) float32 in 0..1, on `device`."""
    array = np.ascontiguousarray(np.stack(images) if isinstance(images, list) else images)
    return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).float().div_(255)


class RenderFrames(RecordSamples):
    """Samples for the renderer: the centre frame of a random window of 5 face frames (the target), the sketches
    of the window, `refs` reference faces and their sketches drawn from the video's other face frames, and the
    target's audio window. Images are RGB in 0..1."""

    def __init__(self, stems: list[Path], refs: int = 3, min_face_frames: int = 25, seed: int = 0,
                 repeats: int = 1, progress: bool = False, pack_dir: str | Path | None = None):
        super().__init__(stems, 5, min_face_frames, seed, repeats, progress, pack_dir)
        self.refs = refs

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        rng, video, window, others = self._draw(key)
        refs = rng.choice(others, self.refs, replace=len(others) < self.refs)
        target = window[2]
        faces = _faces(video, np.concatenate([[target], refs]))
        return {
            "face": image_tensor(faces[:1])[0],  # (3, 128, 128)
            "sketches": _sketches(video, window),  # (5, 3, 128, 128)
            "ref_images": image_tensor(faces[1:]),  # (N, 3, 128, 128)
            "ref_sketches": _sketches(video, refs),  # (N, 3, 128, 128)
            "mels": torch.from_numpy(_mel_windows(video, window[2:3])),  # (1, 80, 16)
        }
