"""The template cache: pass 1's result (every face of every frame, dubbing/faces.FaceScan) kept on disk, keyed by
the template's content and the settings that change it, so that a later run on the same template skips the
FaceMesh pass.

A cache is a convenience: an entry that cannot be read is recomputed, and one that cannot be written (a full or
read-only disk) is skipped with one warning while the dub goes on.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path

import numpy as np

from data.crop import crop_rule
from data.errors import disk_problem, one_line
from data.facemesh import FaceTrack
from data.landmarks import NUM_LANDMARKS
from data.video import FPS
from dubbing.faces import FaceScan, scan_of_track
from dubbing.identity import DESCRIPTOR_SIZE

FORMAT = 3  # raise when what the cache holds, or how FaceMesh is run, changes
SCAN_ARRAYS = ("frame", "landmarks", "boxes", "track", "descriptors", "cuts")  # FaceScan's, in order
DIR_ENV = "IPLAP_TEMPLATES"  # where prepared templates are cached when the config does not say


def cache_dir(config: dict) -> Path | None:
    """Where prepared templates are kept: the config's cache.dir, else $IPLAP_TEMPLATES, else the per-user cache;
    None when the cache is off."""
    if not config["cache"]["enabled"]:
        return None
    if config["cache"]["dir"]:
        return Path(config["cache"]["dir"]).expanduser()
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV]).expanduser()
    from data.samples import user_cache

    return user_cache("templates")


def cache_entry(path: Path, detect_every_frame: bool, directory: str | Path, fps: float = FPS, max_faces: int = 1
                ) -> tuple[Path, dict]:
    """The entry's file, named by the template's content and the settings that change pass 1 (the rate it was
    decoded at, the crop rule and the most faces FaceMesh looks for among them; the face chosen is not: every
    choice reads the same scan of every face), and the facts stored with it (the file's size and modification time;
    a read checks the size only: the name holds the content's hash, so any file with that content, a copy or a
    re-upload, may use the entry)."""
    from data.samples import sha256

    stat = path.stat()
    settings = (f"format={FORMAT};detect_every_frame={bool(detect_every_frame)};fps={float(fps)!r};"
                f"mediapipe={_mediapipe()};crop={crop_rule()};faces={int(max_faces)}")  # crop: any face size's
    key = hashlib.sha256(f"{sha256(path)};{settings}".encode()).hexdigest()[:32]
    return Path(directory) / f"{key}.npz", {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _mediapipe() -> str:
    from importlib import metadata

    try:
        return metadata.version("mediapipe")
    except metadata.PackageNotFoundError:
        return "none"


def read_cached_scan(entry: Path, facts: dict) -> FaceScan | None:
    """The pass-1 result in a cache entry (`cache_entry`), for any file with the content it was made from; None when
    there is none or it does not read back whole (a damaged entry is recomputed, never trusted)."""
    arrays = _read_entry(entry, facts)
    try:
        scan = FaceScan(*(arrays[name] for name in SCAN_ARRAYS), size=tuple(int(v) for v in arrays["size"]))
    except (KeyError, TypeError, ValueError):  # none, stale, or a foreign file: analyse again
        return None
    faces = len(scan.frame)
    if scan.landmarks.shape != (faces, NUM_LANDMARKS, 2) or scan.boxes.shape != (faces, 4) or \
            scan.descriptors.shape != (faces, DESCRIPTOR_SIZE) or scan.track.shape != (faces,) or \
            (faces and (scan.frame.max() >= len(scan.cuts) or (np.diff(scan.frame) < 0).any())):
        return None
    return scan


def _read_entry(entry: Path, facts: dict) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry; None when there is none, it is stale (another size than the file it is read
    for), or it does not read back whole (a damaged entry is recomputed, never trusted)."""
    if not entry.is_file():
        return None
    try:
        with np.load(entry, allow_pickle=False) as arrays:
            if int(arrays["bytes"]) != facts["bytes"]:
                return None
            return {name: arrays[name] for name in arrays.files if name not in ("bytes", "mtime_ns")}
    except Exception:  # a cut-short or foreign file
        return None


def write_cached_scan(entry: Path, facts: dict, scan: FaceScan) -> bool:
    """Store a pass-1 result atomically (a temporary file renamed into place). A cache that cannot be written is
    skipped with one warning on stderr, not an error; returns whether the entry was written."""
    return _write_entry(entry, {**{name: getattr(scan, name) for name in SCAN_ARRAYS},
                                "size": np.asarray(scan.size, np.int64)}, facts)


def _write_entry(entry: Path, arrays: dict[str, np.ndarray], facts: dict) -> bool:
    # The archive is built in memory and written in one call: numpy's zip writer on a file that fails mid-way
    # leaves a ZipFile whose finaliser prints a traceback.
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, bytes=np.int64(facts["bytes"]), mtime_ns=np.int64(facts["mtime_ns"]))
    temp = entry.with_name(f"{entry.stem}.tmp-{os.getpid()}.npz")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as handle:
            handle.write(buffer.getbuffer())
        os.replace(temp, entry)
        return True
    except OSError as error:
        try:
            temp.unlink(missing_ok=True)
        except OSError:
            pass
        problem = disk_problem(error) or one_line(error)
        print(f"warning: {entry.parent}: {problem} (template not cached; the dub goes on)", file=sys.stderr)
        return False


def write_cached_track(entry: Path, facts: dict, track: FaceTrack) -> bool:
    """write_cached_scan for a one-face track (a template whose FaceMesh pass ran elsewhere: bench/gpu_dub.py)."""
    return write_cached_scan(entry, facts, scan_of_track(track))


# ---------------------------------------------------------------- what a template's live sessions share
def _arrays_entry(path: Path, config: dict, fps: float, directory: str | Path, settings: str) -> tuple[Path, dict]:
    """An entry beside the template's pass-1 entry, for arrays that also depend on `settings` (one line)."""
    entry, facts = cache_entry(path, config["detect_every_frame"], directory, fps, config["faces"]["max"])
    suffix = hashlib.sha256(settings.encode()).hexdigest()[:16]
    return entry.with_name(f"{entry.stem}-{suffix}.npz"), facts


def read_cached_arrays(path: Path, config: dict, fps: float, directory: str | Path, settings: str
                       ) -> dict[str, np.ndarray] | None:
    """Arrays kept with the template at `path` under `settings` (a live session's idle loop, dubbing/idle.py);
    None when there are none, they are stale, or they do not read back whole."""
    return _read_entry(*_arrays_entry(Path(path), config, fps, directory, settings))


def write_cached_arrays(path: Path, config: dict, fps: float, directory: str | Path, settings: str,
                        arrays: dict[str, np.ndarray]) -> bool:
    """Keep `arrays` with the template at `path` under `settings`, as write_cached_scan keeps pass 1."""
    entry, facts = _arrays_entry(Path(path), config, fps, directory, settings)
    return _write_entry(entry, arrays, facts)
