"""Packed splits: the per-frame arrays of a split's usable records, concatenated once into uncompressed files that
every data-loader worker memory-maps (the operating system shares the pages), so a sample reads no .npz.

A pack is a folder `<pack_dir>/<key>/` holding one raw little-endian file per array and `meta.json` (the arrays'
dtypes and shapes, the usable stems and their records' face sizes, the skipped and missing ones). The key hashes the
pack version, the window length, the face-frame threshold and every record's path and its files' sizes and
modification times, so a changed, added or removed record gives a new pack (old packs stay until deleted). A pack
is written under a temporary name and renamed into place, so a reader sees a whole pack or none; concurrent writers
(DDP ranks) each write their own and the first rename wins.

Per frame, over all usable videos in order: landmarks (F, 131, 2) float32, and the same split as the landmark
generator takes them, pose (F, 2, 74) and content (F, 2, 57) float32 (so a sample is one gather, not three);
boxes (F, 4) int32, has_face (F,) bool, face_bytes (F, 2) int64 (start, end of the frame's face in its .faces
file). Per mel frame: mel (M, 80) float32.
Per video v, as offsets into those (V + 1,) int64: frames, mels; and window starts / face frames, local to the
video: starts (S,) int64 with start_offsets (V + 1,), face_frames (G,) int64 with face_frame_offsets (V + 1,).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.audio import MEL_STEPS, N_MELS, window_start
from data.crop import upscaled
from data.errors import InputError
from data.face_size import FACE_SIZE
from data.landmarks import CONTENT_POSITIONS, NUM_LANDMARKS, POSE_POSITIONS, content_of, pose_of
from data.records import record_paths, record_version, verify_record

PACK_VERSION = 1
PACK_FOLDER = ".packs"  # under the records' common folder when no pack_dir is given
PER_FRAME = ("landmarks", "pose", "content", "boxes", "has_face", "face_bytes")


def valid_starts(has_face: np.ndarray, mel_length: int, steps: int) -> np.ndarray:
    """Window starts t whose frames t..t+steps-1 all have a face and whose audio windows lie inside the mel."""
    count = len(has_face) - steps + 1
    if count <= 0:
        return np.zeros(0, np.int64)
    starts = np.arange(count)
    faces = np.lib.stride_tricks.sliding_window_view(has_face, steps).all(axis=1)
    audio = (window_start(starts) >= 0) & (window_start(starts + steps - 1) + MEL_STEPS <= mel_length)
    return starts[faces & audio].astype(np.int64)


@dataclass
class Video:
    """One usable video of a pack: its arrays as read-only views into the pack's memory maps."""

    faces_path: Path
    face_size: int  # S: the record's faces are (S, S)
    landmarks: np.ndarray  # (T, 131, 2) float32
    pose: np.ndarray  # (T, 2, 74) float32
    content: np.ndarray  # (T, 2, 57) float32
    boxes: np.ndarray  # (T, 4) int32
    face_bytes: np.ndarray  # (T, 2) int64
    mel: np.ndarray  # (M, 80) float32
    mel_windows: np.ndarray  # (M - 15, 80, 16) view: mel_windows[m] is mel[m:m + 16].T
    mel_starts: np.ndarray  # (T,) int64: window_start of each frame, where its audio window begins
    starts: np.ndarray  # valid window starts, sorted
    face_frames: np.ndarray  # frames with a face, sorted


class Pack:
    """A packed split opened read-only: `stems`, `face_sizes` (one per stem), `skipped`, `missing`, and `video(v)`
    for usable video v."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        self.stems = [Path(stem) for stem in meta["stems"]]
        self.skipped = [Path(stem) for stem in meta["skipped"]]
        self.missing = [Path(stem) for stem in meta["missing"]]
        # Packs without the field were made before records came in other sizes than the first.
        self.face_sizes = meta.get("face_sizes", [FACE_SIZE] * len(self.stems))
        # Plain ndarray views of the maps: torch.from_numpy and fancy indexing then give plain arrays.
        self.arrays = {name: np.asarray(_map(folder / f"{name}.bin", np.dtype(dtype), tuple(shape)))
                       for name, (dtype, shape) in meta["arrays"].items()}
        # The small per-video offsets are read into memory: every sample indexes them.
        for name in ("frames", "mels", "start_offsets", "face_frame_offsets"):
            self.arrays[name] = np.array(self.arrays[name])
        self._faces_paths = [record_paths(stem)[1] for stem in self.stems]
        self._videos: dict[int, Video] = {}
        longest = int(np.diff(self.arrays["frames"]).max(initial=0))
        self._mel_starts = window_start(np.arange(longest))  # the same for every video: computed once

    def __getstate__(self) -> dict:
        # A worker started by spawn maps the files again instead of receiving a copy of every array.
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"])

    def __len__(self) -> int:
        return len(self.stems)

    def upscaled_share(self) -> float:
        """data.records.upscaled_share over the pack's usable records, from the mapped boxes (no record is opened):
        the share (0..1) of face frames whose source face box is under the record's face size on its shorter side."""
        a = self.arrays
        sizes = np.repeat(np.asarray(self.face_sizes, np.int64), np.diff(a["frames"]))  # one per frame
        faces = np.asarray(a["has_face"], bool)
        return float(upscaled(a["boxes"][faces], sizes[faces]).mean()) if faces.any() else 0.0

    def video(self, v: int) -> Video:
        """Usable video v's arrays (views, nothing is read until used; made once per process)."""
        if v not in self._videos:
            a = self.arrays
            frames = slice(a["frames"][v], a["frames"][v + 1])
            mel = a["mel"][a["mels"][v]:a["mels"][v + 1]]
            self._videos[v] = Video(
                self._faces_paths[v], self.face_sizes[v],
                *(a[name][frames] for name in ("landmarks", "pose", "content", "boxes", "face_bytes")),
                mel, np.lib.stride_tricks.sliding_window_view(mel, MEL_STEPS, axis=0),
                self._mel_starts[:frames.stop - frames.start],
                a["starts"][a["start_offsets"][v]:a["start_offsets"][v + 1]],
                a["face_frames"][a["face_frame_offsets"][v]:a["face_frame_offsets"][v + 1]])
        return self._videos[v]


def _map(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    # mmap refuses an empty file (a pack with no usable video).
    return np.zeros(shape, dtype) if 0 in shape else np.memmap(path, dtype, "r", shape=shape)


def pack_key(stems: list[Path], steps: int, min_face_frames: int) -> str:
    """The hash naming a split's pack: its version and the records' (the crop rule's among them), settings, and
    each record's path and its two files' sizes and modification times (None for an absent file)."""
    entries = []
    for stem in stems:
        entry = [os.path.abspath(stem)]
        for path in record_paths(stem):  # the .faces too: a face file cut short after packing is noticed
            try:
                stat = path.stat()
                entry += [stat.st_size, stat.st_mtime_ns]
            except FileNotFoundError:
                entry += [None, None]
        entries.append(entry)
    text = json.dumps([PACK_VERSION, record_version(), steps, min_face_frames, entries])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def default_pack_dir(stems: list[Path]) -> Path:
    """`.packs` in the deepest folder holding every record of the list."""
    parents = [os.path.abspath(Path(stem).parent) for stem in stems]
    return Path(os.path.commonpath(parents)) / PACK_FOLDER


def open_pack(stems: list[Path], steps: int, min_face_frames: int, pack_dir: str | Path | None = None,
              progress: bool = False) -> Pack:
    """The pack of these records (packed now when absent: every record is verified once, a damaged one is a
    one-line InputError naming it); usable videos have >= min_face_frames face frames and a valid window."""
    if not stems:
        raise InputError("records", "no usable records among 0 (0 with too few face frames, 0 missing)")
    folder = Path(pack_dir) if pack_dir is not None else default_pack_dir(stems)
    final = folder / pack_key(stems, steps, min_face_frames)
    if not (final / "meta.json").is_file():
        _write_pack(stems, steps, min_face_frames, folder, final, progress)
    pack = Pack(final)
    if not pack.stems:
        raise InputError(stems[0].parent, f"no usable records among {len(stems)} ({len(pack.skipped)} with too "
                                          f"few face frames, {len(pack.missing)} missing)")
    return pack


def _write_pack(stems: list[Path], steps: int, min_face_frames: int, folder: Path, final: Path,
                progress: bool) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temp = folder / f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temp.mkdir()
    except OSError as error:
        raise InputError(folder, f"cannot write the records' pack here ({error.strerror}); name a writable "
                                 "folder in data.pack_dir") from None
    try:
        meta = _fill(temp, stems, steps, min_face_frames, progress)
        _write_synced(temp / "meta.json", json.dumps(meta).encode())
        try:
            os.rename(temp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not another writer's pack that got there first
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fill(temp: Path, stems: list[Path], steps: int, min_face_frames: int, progress: bool) -> dict:
    """Stream every usable record's arrays into temp/<name>.bin (one pass, little memory); returns meta.json."""
    names = PER_FRAME + ("mel", "starts", "face_frames")
    files = {name: open(temp / f"{name}.bin", "wb") for name in names}
    rows = dict.fromkeys(names, 0)
    offsets = {"frames": [0], "mels": [0], "start_offsets": [0], "face_frame_offsets": [0]}
    usable, skipped, missing, face_sizes = [], [], [], []
    try:
        for stem in tqdm(stems, desc="packing records", unit="record", disable=not progress):
            if not record_paths(stem)[0].is_file():
                missing.append(stem)
                continue
            clip = verify_record(stem)  # a damaged record stops the run here, before training, naming the file
            starts = valid_starts(clip.has_face, len(clip.mel), steps)
            if clip.has_face.sum() < min_face_frames or len(starts) == 0:
                skipped.append(stem)
                continue
            usable.append(stem)
            face_sizes.append(clip.face_size)
            offsets_bytes = clip.faces.offsets.astype(np.int64)
            parts = {"landmarks": clip.landmarks.astype("<f4"), "pose": pose_of(clip.landmarks).astype("<f4"),
                     "content": content_of(clip.landmarks).astype("<f4"), "boxes": clip.boxes.astype("<i4"),
                     "has_face": clip.has_face.astype(bool),
                     "face_bytes": np.stack([offsets_bytes[:-1], offsets_bytes[1:]], axis=1).astype("<i8"),
                     "mel": clip.mel.astype("<f4"), "starts": starts.astype("<i8"),
                     "face_frames": clip.face_frames.astype("<i8")}
            for name, array in parts.items():
                files[name].write(np.ascontiguousarray(array).tobytes())
                rows[name] += len(array)
            for name, source in (("frames", "landmarks"), ("mels", "mel"), ("start_offsets", "starts"),
                                 ("face_frame_offsets", "face_frames")):
                offsets[name].append(rows[source])
        for handle in files.values():  # on disk before the rename, so that a crash leaves no pack of zeros
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        for handle in files.values():
            handle.close()
    shapes = {"landmarks": ("<f4", (rows["landmarks"], NUM_LANDMARKS, 2)),
              "pose": ("<f4", (rows["pose"], 2, len(POSE_POSITIONS))),
              "content": ("<f4", (rows["content"], 2, len(CONTENT_POSITIONS))), "boxes": ("<i4", (rows["boxes"], 4)),
              "has_face": ("|b1", (rows["has_face"],)), "face_bytes": ("<i8", (rows["face_bytes"], 2)),
              "mel": ("<f4", (rows["mel"], N_MELS)), "starts": ("<i8", (rows["starts"],)),
              "face_frames": ("<i8", (rows["face_frames"],))}
    for name, values in offsets.items():
        _write_synced(temp / f"{name}.bin", np.asarray(values, "<i8").tobytes())
        shapes[name] = ("<i8", (len(values),))
    return {"version": PACK_VERSION, "arrays": {name: [dtype, list(shape)] for name, (dtype, shape) in shapes.items()},
            "stems": [str(stem) for stem in usable], "face_sizes": face_sizes,
            "skipped": [str(stem) for stem in skipped], "missing": [str(stem) for stem in missing]}
