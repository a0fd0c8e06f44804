"""Training datasets over preprocessed records, and the file lists that split them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.crop import FACE_SIZE, box_size
from data.errors import InputError
from data.packs import Video, open_pack
from data.records import decode_face_planes
from data.sketch import draw_sketch


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


RENDER_IMAGES = ("face", "ref_images")
RENDER_SKETCHES = ("sketches", "ref_sketches")


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
    return video.mel_windows[video.mel_starts[frames]]


def _sketches(video: Video, frames: np.ndarray) -> torch.Tensor:
    """(k, 1, 128, 128) uint8 sketches of the given frames, drawn from their stored landmarks and box shapes."""
    return torch.from_numpy(np.stack([draw_sketch(video.landmarks[t], box_size(video.boxes[t])) for t in frames]
                                     )[:, None])


def _faces(video: Video, frames: np.ndarray) -> np.ndarray:
    """(k, 3, 128, 128) uint8 RGB faces of the given frames, decoded from the video's .faces file."""
    out = np.empty((len(frames), 3, FACE_SIZE, FACE_SIZE), np.uint8)
    with open(video.faces_path, "rb") as handle:
        for slot, t in enumerate(frames):
            start, end = video.face_bytes[t]
            handle.seek(int(start))
            decode_face_planes(handle.read(int(end - start)), out[slot])
    return out


class RenderFrames(RecordSamples):
    """Samples for the renderer: the centre frame of a random window of 5 face frames (the target), the sketches
    of the window, `refs` reference faces and their sketches drawn from the video's other face frames, and the
    target's audio window. Images are RGB uint8 (3, 128, 128) and sketches one uint8 channel (1, 128, 128), a
    seventh of the float bytes to collate and copy; `to_device` turns a batch into what the renderer takes."""

    def __init__(self, stems: list[Path], refs: int = 3, min_face_frames: int = 25, seed: int = 0,
                 repeats: int = 1, progress: bool = False, pack_dir: str | Path | None = None):
        super().__init__(stems, 5, min_face_frames, seed, repeats, progress, pack_dir)
        self.refs = refs

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        rng, video, window, others = self._draw(key)
        refs = rng.choice(others, self.refs, replace=len(others) < self.refs)
        target = window[2]
        faces = torch.from_numpy(_faces(video, np.concatenate([[target], refs])))
        return {
            "face": faces[0],  # (3, 128, 128) uint8
            "sketches": _sketches(video, window),  # (5, 1, 128, 128) uint8
            "ref_images": faces[1:],  # (N, 3, 128, 128) uint8
            "ref_sketches": _sketches(video, refs),  # (N, 1, 128, 128) uint8
            "mels": torch.from_numpy(_mel_windows(video, window[2:3])),  # (1, 80, 16) float32
        }

    def to_device(self, batch: dict, device: torch.device) -> dict:
        """The batch on `device` as the renderer takes it: images and sketches float32 in 0..1, sketches with 3
        equal channels ((B, k, 3, 128, 128)); converted after the copy, on the device. A batch already converted
        is returned as it is."""
        batch = super().to_device(batch, device)
        for name in RENDER_IMAGES + RENDER_SKETCHES:
            value = batch[name]
            if value.dtype == torch.uint8:
                value = value.float().div_(255)  # the same float32 division as image_tensor and sketch_tensor
            if name in RENDER_SKETCHES and value.shape[-3] == 1:
                value = value.expand(*value.shape[:-3], 3, *value.shape[-2:]).contiguous()
            batch[name] = value
        return batch
