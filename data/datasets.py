"""Training datasets over preprocessed records, and the file lists that split them.

What a sample reads while training: the landmark generator's, nothing but the split's pack (data/packs.py, made
when the run starts); the renderer's, also its faces from the record's .faces file. A read that fails there (the
file deleted, cut short or undecodable, its file system failing) is a BadRecord naming the file, which the training
loop turns into a checkpoint and exit 75 (on_bad_record 'stop'); with on_bad_record 'skip' the dataset gives the
next item that reads instead, and the sample says how many it passed over (SKIPPED, SKIPPED_NOTE).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.crop import box_size
from data.errors import BadRecord, InputError, one_line
from data.face_size import FACE_SIZE, FACE_SIZES
from data.landmarks import SKETCH_CENTRE, SKETCH_WINDOW
from data.packs import Video, open_pack
from data.records import AGAIN, decode_face_planes, record_paths, size_mismatch
from data.sketch import draw_sketch
from data.tensors import unit_range
from data.video import FPS


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
BAD_RECORD_MODES = ("stop", "skip")
# Keys of a sample in skip mode: the bad items passed over to give it (an int64 tensor), and 'PATH: problem' of the
# first of them ('' when none); `skipped_in` reads them from a batch and `to_device` leaves them out.
SKIPPED, SKIPPED_NOTE = "skipped_records", "skipped_note"
MIN_FACE_FRAMES = FPS  # one second of face frames (sample.min_face_frames in configs/)


class RecordSamples(torch.utils.data.Dataset):
    """Base of the training datasets: item i comes from usable video i % V, an epoch visits every video
    `repeats` times, and item i's randomness comes from (seed, epoch, i), so a resumed run draws the same samples.

    A video is usable when it has at least `min_face_frames` face frames and some window of `steps` face
    frames whose audio windows lie inside the mel; the others are listed in `skipped` (and absent records in
    `missing`). Samples are drawn from the split's pack (data/packs.py: made once, memory-mapped by every
    worker), in `pack_dir` or, when None, in a `.packs` folder beside the records.

    on_bad_record (schedule.on_bad_record): a record that cannot be read for an item raises BadRecord ('stop'), or
    the item is replaced by the next one that reads, each video tried once ('skip'; deterministic, so the batch
    keeps its size and a resumed run draws the same).
    """

    def __init__(self, stems: list[Path], steps: int = SKETCH_WINDOW, min_face_frames: int = MIN_FACE_FRAMES,
                 seed: int = 0, repeats: int = 1, progress: bool = False, pack_dir: str | Path | None = None,
                 on_bad_record: str = "stop"):
        if on_bad_record not in BAD_RECORD_MODES:  # before the pack, which can take a while to make
            raise InputError("schedule.on_bad_record", f"must be 'stop' or 'skip', got {on_bad_record!r}")
        self.steps, self.seed, self.epoch, self.repeats = steps, seed, 0, repeats
        self.on_bad_record = on_bad_record
        self.pack = open_pack(stems, steps, min_face_frames, pack_dir, progress)
        self.stems, self.skipped, self.missing = self.pack.stems, self.pack.skipped, self.pack.missing

    def set_epoch(self, epoch: int) -> None:
        """The epoch an int index draws from (eval loaders, workers started anew each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.stems) * self.repeats

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Item `key`: an index (drawn in self.epoch) or (epoch, index), as a sampler that carries the epoch yields
        it (persistent workers hold their own copy of the dataset, which set_epoch in the main process never
        reaches). See on_bad_record for a record that cannot be read."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        first = None
        for attempt in range(len(self.stems)):  # the next items come from the next videos: each is tried once
            item = (index + attempt) % len(self)
            try:
                sample = self._sample(epoch, item)
            except (InputError, OSError) as error:
                bad = error if isinstance(error, BadRecord) else self._bad_record(error, item)
                if self.on_bad_record == "stop":
                    raise bad from None
                first = first or bad
                continue
            if self.on_bad_record == "skip":
                sample[SKIPPED], sample[SKIPPED_NOTE] = torch.tensor(attempt), str(first or "")
            return sample
        raise BadRecord(first.path, f"{first.problem}; and no other record of the split could be read either")

    def _bad_record(self, error: InputError | OSError, item: int) -> BadRecord:
        if isinstance(error, InputError):
            return BadRecord(error.path, error.problem)
        return BadRecord(error.filename or self.stems[item % len(self.stems)], one_line(error))

    def _sample(self, epoch: int, index: int) -> dict:
        raise NotImplementedError

    def _draw(self, epoch: int, index: int) -> tuple[np.random.Generator, Video, np.ndarray, np.ndarray]:
        """(rng, video, window, others): a random valid window of the item's video and its other face frames."""
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

    @staticmethod
    def skipped_in(batch: dict) -> tuple[int, str]:
        """Skip mode: how many bad items the samples of a collated batch passed over, and 'PATH: problem' of the
        first ('' when none); read from host tensors, before the batch goes to the device."""
        if SKIPPED not in batch:
            return 0, ""
        return int(batch[SKIPPED].sum()), next((note for note in batch[SKIPPED_NOTE] if note), "")

    def to_device(self, batch: dict, device: torch.device) -> dict:
        """The collated batch on `device`: every tensor moved with non_blocking=True; skip mode's notes left out."""
        return {name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                for name, value in batch.items() if name not in (SKIPPED, SKIPPED_NOTE)}


class LandmarkWindows(RecordSamples):
    """Samples for the landmark generator: a random window of `steps` consecutive face frames of the item's
    video and `refs` reference frames drawn from its other face frames. Only landmarks, face flags and the mel
    are read; face images are never decoded."""

    def __init__(self, stems: list[Path], steps: int = SKETCH_WINDOW, refs: int = 15,
                 min_face_frames: int = MIN_FACE_FRAMES, seed: int = 0, repeats: int = 1, progress: bool = False,
                 pack_dir: str | Path | None = None, on_bad_record: str = "stop"):
        super().__init__(stems, steps, min_face_frames, seed, repeats, progress, pack_dir, on_bad_record)
        self.refs = refs

    def _sample(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        rng, video, window, others = self._draw(epoch, index)
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
    """(k, 1, S, S) uint8 sketches of the given frames at the record's face size S, drawn from their stored
    landmarks and box shapes."""
    size = video.face_size
    return torch.from_numpy(np.stack([draw_sketch(video.landmarks[t], box_size(video.boxes[t]), size)
                                      for t in frames])[:, None])


def _faces(video: Video, frames: np.ndarray) -> np.ndarray:
    """(k, 3, S, S) uint8 RGB faces of the given frames at the record's face size S, decoded from the video's .faces
    file. The file is read while training, long after the pack checked it: a file deleted, cut short or undecodable
    since, or one that cannot be read, is an InputError naming it."""
    out = np.empty((len(frames), 3, video.face_size, video.face_size), np.uint8)
    path = video.faces_path
    try:
        with open(path, "rb") as handle:
            for slot, t in enumerate(frames):
                start, end = (int(offset) for offset in video.face_bytes[t])
                handle.seek(start)
                data = handle.read(end - start)
                if len(data) != end - start:
                    raise InputError(path, f"damaged record: the face file was cut short during training{AGAIN}")
                decode_face_planes(data, out[slot])
    except FileNotFoundError:
        raise InputError(path, "the face file vanished during training (deleted or moved)") from None
    except OSError as error:
        raise InputError(path, f"the face file cannot be read ({one_line(error)})") from None
    except ValueError:  # decode_face_planes: bytes that are no image
        raise InputError(path, f"damaged record: frame {t}'s face does not decode{AGAIN}") from None
    return out


class RenderFrames(RecordSamples):
    """Samples for the renderer: the centre frame of a random window of SKETCH_WINDOW face frames (the target), the
    sketches of the window, `refs` reference faces and their sketches drawn from the video's other face frames, and the
    target's audio window. Images are RGB uint8 (3, S, S) and sketches one uint8 channel (1, S, S), a seventh of the
    float bytes to collate and copy; `to_device` turns a batch into what the renderer takes. S is `face_size`: every
    usable record must have been preprocessed at it (a record of another size is an InputError naming it)."""

    def __init__(self, stems: list[Path], refs: int = 3, min_face_frames: int = MIN_FACE_FRAMES, seed: int = 0,
                 repeats: int = 1, progress: bool = False, pack_dir: str | Path | None = None,
                 on_bad_record: str = "stop", face_size: int = FACE_SIZE):
        if face_size not in FACE_SIZES:  # before the pack, which can take a while to make
            raise InputError("face_size", f"must be one of {', '.join(map(str, FACE_SIZES))}, got {face_size!r}")
        super().__init__(stems, SKETCH_WINDOW, min_face_frames, seed, repeats, progress, pack_dir, on_bad_record)
        self.refs, self.face_size = refs, face_size
        for stem, size in zip(self.stems, self.pack.face_sizes):
            if size != face_size:
                raise size_mismatch(record_paths(stem)[0], size, face_size)

    def _sample(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        rng, video, window, others = self._draw(epoch, index)
        refs = rng.choice(others, self.refs, replace=len(others) < self.refs)
        target = window[SKETCH_CENTRE]
        faces = torch.from_numpy(_faces(video, np.concatenate([[target], refs])))
        return {
            "face": faces[0],  # (3, S, S) uint8
            "sketches": _sketches(video, window),  # (5, 1, S, S) uint8
            "ref_images": faces[1:],  # (N, 3, S, S) uint8
            "ref_sketches": _sketches(video, refs),  # (N, 1, S, S) uint8
            "mels": torch.from_numpy(_mel_windows(video, window[[SKETCH_CENTRE]])),  # (1, 80, 16) float32
        }

    def to_device(self, batch: dict, device: torch.device) -> dict:
        """The batch on `device` as the renderer takes it: images and sketches float32 in 0..1, sketches with 3
        equal channels ((B, k, 3, S, S)); converted after the copy, on the device. A batch already converted
        is returned as it is."""
        batch = super().to_device(batch, device)
        for name in RENDER_IMAGES + RENDER_SKETCHES:
            value = batch[name]
            if value.dtype == torch.uint8:
                value = unit_range(value)
            if name in RENDER_SKETCHES and value.shape[-3] == 1:
                value = value.expand(*value.shape[:-3], 3, *value.shape[-2:]).contiguous()
            batch[name] = value
        return batch
