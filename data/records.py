"""Preprocessed records: one per video, two files, written atomically; `load_clip` reads them lazily.

A record for `<stem>` (the video's relative path without its extension) is:
  <stem>.npz    arrays, no pickle: landmarks (T, 131, 2) float32 normalised to the crop box, boxes (T, 4) int32
                (x0, y0, x1, y1 in source pixels, x1/y1 exclusive), has_face (T,) bool, mel (M, 80) float32,
                face_offsets (T + 1,) int64, and the scalars version, crop_rule, fps, source_fps, source_size,
                face_format, has_audio.
  <stem>.faces  the T face crops (S x S RGB, S the record's face size) encoded as PNG or JPEG, back to back;
                frame t is the bytes face_offsets[t]:face_offsets[t + 1] (empty where no face was found).
Frames without a face keep their place (zero landmarks and box, has_face False), so frames and audio stay
aligned. The .npz is renamed into place last: a record whose .npz exists is complete.

A record's version is VERSION and the crop rule it was cut with (data/crop.crop_rule), which names its face size S
(data/face_size.FACE_SIZES; Clip.face_size): a record of another version is refused in one line (and made again by
preprocess.py), so a changed crop rule is never read with faces and landmarks of the old one. A reader that asks for
a face size refuses a record of another size in one line naming the file and both sizes.
"""
from __future__ import annotations

import functools
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from data.audio import N_MELS
from data.crop import crop_rule, upscaled
from data.errors import InputError, one_line
from data.face_size import FACE_SIZE, FACE_SIZES
from data.landmarks import NUM_LANDMARKS
from data.video import FPS

VERSION = 1
FIRST_CROP_RULE = "margin=0.05;size=128"  # the rule of version-1 records that carry no crop_rule
AGAIN = "; preprocess its video again (preprocess.py redoes damaged records)"
# What a damaged .npz raises inside numpy/zipfile/zlib: a cut-short archive, a member that does not inflate, ...
DAMAGED = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)
FACE_FORMATS = ("png", "jpg")


def record_paths(stem: str | Path) -> tuple[Path, Path]:
    """(.npz path, .faces path) of the record for a stem, a .npz path or a .faces path."""
    stem = Path(stem)
    if stem.suffix in (".npz", ".faces"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".faces")


def is_complete(stem: str | Path, face_size: int | None = None) -> bool:
    """True when the record exists and reads back whole (see `verify_record`), at `face_size` when given; a damaged
    one, or one of another size, counts as unfinished."""
    try:
        verify_record(stem, face_size)
    except InputError:
        return False
    return True


def verify_record(stem: str | Path, face_size: int | None = None) -> Clip:
    """Open a record and read every array, checking keys, shapes and the .faces size; returns the Clip.

    Anything damaged (a truncated or foreign file, a missing key, inconsistent shapes), or a face size other than
    `face_size` when given, is a one-line InputError naming the file. Face images are not decoded (that would cost a
    JPEG decode per frame).
    """
    clip = Clip(stem, face_size)
    frames = len(clip.has_face)
    landmarks, mel = clip.landmarks, clip.mel
    expected = {"landmarks": (landmarks.shape, (frames, NUM_LANDMARKS, 2)), "boxes": (clip.boxes.shape, (frames, 4)),
                "has_face": (clip.has_face.shape, (frames,)), "mel": (mel.shape[1:], (N_MELS,))}
    for name, (shape, wanted) in expected.items():
        if tuple(shape) != wanted:
            raise InputError(clip.npz_path, f"damaged record: {name} has shape {tuple(shape)}, expected {wanted}"
                                            f"{AGAIN}")
    if len(clip.faces) != frames or np.any(np.diff(clip.faces.offsets) < 0):
        raise InputError(clip.npz_path, f"damaged record: face_offsets do not fit {frames} frames{AGAIN}")
    return clip


def encode_face(face: np.ndarray, face_format: str = "png", jpeg_quality: int = 95) -> bytes:
    """Encode an RGB uint8 face crop as PNG (lossless) or JPEG."""
    bgr = cv2.cvtColor(face, cv2.COLOR_RGB2BGR)
    if face_format == "png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    elif face_format == "jpg":
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise ValueError(f"face format must be one of {FACE_FORMATS}, got {face_format!r}")
    if not ok:
        raise RuntimeError(f"could not encode a face crop as {face_format}")
    return data.tobytes()


def decode_face(data: bytes, size: int = FACE_SIZE) -> np.ndarray:
    """Decode one stored face to RGB uint8 (S, S, 3); empty bytes (no face) give zeros of (size, size, 3)."""
    if not data:
        return np.zeros((size, size, 3), np.uint8)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("corrupt face image in record")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_face_planes(data: bytes, out: np.ndarray) -> np.ndarray:
    """Decode one stored face into `out`: (3, S, S) uint8 RGB planes, channels first as the networks take
    them (decode_face's pixels, without an interleaved-to-planar copy); empty bytes (no face) give zeros."""
    if not data:
        out[...] = 0
        return out
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("corrupt face image in record")
    blue, green, red = cv2.split(bgr)  # OpenCV's planar split is far cheaper than a strided transpose
    out[0], out[1], out[2] = red, green, blue
    return out


def record_version(face_size: int = FACE_SIZE) -> str:
    """The version this code writes and reads at a face size: VERSION and the crop rule, '1 (margin=0.05;size=128)'."""
    return f"{VERSION} ({crop_rule(face_size)})"


def size_mismatch(path: str | Path, found: int, wanted: int) -> InputError:
    """The one-line error for a record of face size `found` where `wanted` was asked for."""
    return InputError(path, f"a record of {found}x{found} faces where {wanted}x{wanted} were asked for (preprocess.py "
                            f"--face-size {wanted} makes records of that size)")


def _replace_atomically(temp: Path, final: Path) -> None:
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, final)


def write_record(stem: str | Path, *, faces: Sequence[bytes], landmarks: np.ndarray, boxes: np.ndarray,
                 has_face: np.ndarray, mel: np.ndarray, source_fps: float, source_size: tuple[int, int],
                 face_format: str, fps: float = FPS, has_audio: bool = True, face_size: int = FACE_SIZE) -> Path:
    """Write a record of `face_size` faces (the caller crops them to that size) atomically (temporary files, then
    rename; .npz last); returns the .npz path."""
    npz_path, faces_path = record_paths(stem)
    count = len(faces)
    if not (len(landmarks) == len(boxes) == len(has_face) == count):
        raise ValueError("faces, landmarks, boxes and has_face must have one entry per frame")
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp-{os.getpid()}"
    temp_npz, temp_faces = Path(str(npz_path) + suffix), Path(str(faces_path) + suffix)
    try:
        with open(temp_faces, "wb") as handle:
            for data in faces:
                handle.write(data)
        offsets = np.concatenate([[0], np.cumsum([len(data) for data in faces], dtype=np.int64)])
        with open(temp_npz, "wb") as handle:
            np.savez_compressed(
                handle, version=np.int32(VERSION), crop_rule=np.array(crop_rule(face_size)), fps=np.float64(fps),
                source_fps=np.float64(source_fps), source_size=np.asarray(source_size, np.int32),
                face_format=np.array(face_format), has_audio=np.bool_(has_audio),
                landmarks=np.asarray(landmarks, np.float32),
                boxes=np.asarray(boxes, np.int32), has_face=np.asarray(has_face, bool),
                mel=np.asarray(mel, np.float32).reshape(-1, N_MELS), face_offsets=offsets.astype(np.int64))
        npz_path.unlink(missing_ok=True)  # an old record stops counting as complete before its faces change
        _replace_atomically(temp_faces, faces_path)
        _replace_atomically(temp_npz, npz_path)
    finally:
        temp_faces.unlink(missing_ok=True)
        temp_npz.unlink(missing_ok=True)
    return npz_path


class FaceFrames:
    """The face crops of a record, decoded on indexing: faces[t] -> (S, S, 3) uint8 RGB; faces[[1, 5]],
    faces[2:4] -> (k, S, S, 3). np.asarray(faces) decodes them all."""

    def __init__(self, path: Path, offsets: np.ndarray, size: int = FACE_SIZE):
        self.path, self.offsets, self.size = path, offsets, size
        self.shape = (len(offsets) - 1, size, size, 3)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices),) + self.shape[1:], np.uint8)
        with open(self.path, "rb") as handle:
            for slot, index in enumerate(indices):
                start, end = int(self.offsets[index]), int(self.offsets[index + 1])
                handle.seek(start)
                out[slot] = decode_face(handle.read(end - start), self.size)
        return out

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._read(np.arange(len(self))[[key]])[0]
        return self._read(np.arange(len(self))[key].reshape(-1))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self._read(np.arange(len(self)))
        return frames if dtype is None else frames.astype(dtype)


class Clip:
    """A preprocessed video. Arrays load on first use; faces decode per frame (see FaceFrames).

    faces (T, S, S, 3) uint8 RGB with S = face_size (from the record's crop rule); landmarks (T, 131, 2) float32,
    canonical order, normalised to the crop box; boxes (T, 4) int32 (x0, y0, x1, y1) source pixels; has_face (T,)
    bool; mel (M, 80) float32; fps (FPS); source_fps; source_size (width, height); has_audio. Given a `face_size`, a
    record of another size is refused (`size_mismatch`).
    """

    def __init__(self, path: str | Path, face_size: int | None = None):
        self.npz_path, self.faces_path = record_paths(path)
        if not self.npz_path.is_file():
            raise InputError(self.npz_path, "no such record (run preprocess.py first)")
        try:
            with np.load(self.npz_path, allow_pickle=False) as arrays:
                rule = str(arrays["crop_rule"]) if "crop_rule" in arrays.files else FIRST_CROP_RULE
                version = f"{int(arrays['version'])} ({rule})"
                sizes = {record_version(size): size for size in FACE_SIZES}
                if version not in sizes:
                    raise InputError(self.npz_path, f"record version {version}, this code reads "
                                                    f"{record_version()}: preprocess again with --overwrite")
                self.face_size = sizes[version]
                if face_size is not None and face_size != self.face_size:
                    raise size_mismatch(self.npz_path, self.face_size, face_size)
                self.fps = float(arrays["fps"])
                self.source_fps = float(arrays["source_fps"])
                self.source_size = tuple(int(v) for v in arrays["source_size"])
                self.face_format = str(arrays["face_format"])
                self.has_audio = bool(arrays["has_audio"])
                self.has_face = arrays["has_face"]
                self.boxes = arrays["boxes"]
                offsets = arrays["face_offsets"]
        except InputError:
            raise
        except DAMAGED as error:
            raise InputError(self.npz_path, f"damaged record ({_reason(error)}){AGAIN}") from None
        if offsets.ndim != 1 or len(offsets) == 0:
            raise InputError(self.npz_path, f"damaged record: face_offsets has shape {offsets.shape}{AGAIN}")
        size = self.faces_path.stat().st_size if self.faces_path.is_file() else -1
        if size != int(offsets[-1]):
            problem = "is missing" if size < 0 else \
                f"does not match its .npz ({size} bytes where the .npz says {int(offsets[-1])})"
            raise InputError(self.faces_path, f"damaged record: the face file {problem}{AGAIN}")
        self.faces = FaceFrames(self.faces_path, offsets, self.face_size)

    @functools.cached_property
    def _per_frame(self) -> dict[str, np.ndarray]:
        # Landmarks and mel are almost always used together: read both in one pass over the .npz.
        try:
            with np.load(self.npz_path, allow_pickle=False) as arrays:
                return {"landmarks": arrays["landmarks"], "mel": arrays["mel"]}
        except DAMAGED as error:
            raise InputError(self.npz_path, f"damaged record ({_reason(error)}){AGAIN}") from None

    @property
    def landmarks(self) -> np.ndarray:
        return self._per_frame["landmarks"]

    @property
    def mel(self) -> np.ndarray:
        return self._per_frame["mel"]

    def __len__(self) -> int:
        return len(self.has_face)

    @property
    def face_frames(self) -> np.ndarray:
        """Indices of the frames with a face."""
        return np.flatnonzero(self.has_face)


def _reason(error: Exception) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])  # numpy's "landmarks is not a file in the archive"
    return one_line(error)[:120] or type(error).__name__


def load_clip(path: str | Path, face_size: int | None = None) -> Clip:
    """Open the record at `path` (its stem, .npz or .faces path); given `face_size`, refuse a record of another."""
    return Clip(path, face_size)


def upscaled_share(stems: Sequence[str | Path]) -> float:
    """Share (0..1) of the face frames of these records whose source face box is smaller than the record's face size
    on its shorter side (data/crop.upscaled), so that their crops were enlarged; 0.0 when they have no face frame."""
    enlarged = faces = 0
    for stem in stems:
        clip = Clip(stem)
        enlarged += int(upscaled(clip.boxes[clip.has_face], clip.face_size).sum())
        faces += int(clip.has_face.sum())
    return enlarged / faces if faces else 0.0
