"""The sample media that the tests, scripts/smoke.sh and bench/ run on, found on any machine.

Four public files (two speaking faces with their audio, the official demo template and speech), looked up in
this order:
1. the folder named by IPLAP_SAMPLES;
2. `../shared/samples` beside the checkout, when present (this project's CI);
3. a per-user cache (`$IPLAP_CACHE/samples`, by default ~/.cache/iplap/samples on Linux), filled on first use
   from the files' public origins at pinned commits. IPLAP_SAMPLES_URL replaces the origins with one base URL
   (a mirror, an air-gapped cluster's file server): FILE is then fetched from BASE/FILE.
Every file is checked against its pinned sha256 wherever it comes from; a download that differs is not kept.

    python -m data.samples     # print the folder holding the four files (downloading them if needed)
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from data.errors import InputError, one_line

FOLDER_ENV = "IPLAP_SAMPLES"
URL_ENV = "IPLAP_SAMPLES_URL"
CACHE_ENV = "IPLAP_CACHE"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "samples"  # CI's copy, beside the checkout

_RETALKING = "https://raw.githubusercontent.com/OpenTalker/video-retalking/d32e8e58248255e2d243eeaf3cba545dbe505ca8/"
_IPLAP = "https://raw.githubusercontent.com/Weizhi-Zhong/IP_LAP/9b9dc03f0e90b10b92c904b202443c160afe7c45/"
ORIGINS = ("github.com/OpenTalker/video-retalking at d32e8e5 (examples/face/2.mp4, 3.mp4), "
           "github.com/Weizhi-Zhong/IP_LAP at 9b9dc03 (test/template_video/129.mp4, audio2.wav)")
# name -> (origin, sha256). Licences: both repositories are Apache-2.0.
FILES = {
    "talk_a.mp4": (_RETALKING + "examples/face/2.mp4",  # 844x844, 25 fps, 5 s, speech (AAC)
                   "f7d30499bc380f4d18c18b1837fc1f6eb280fa21d79a9f7c6dd66db94296c43c"),
    "talk_b.mp4": (_RETALKING + "examples/face/3.mp4",  # 590x590, 25 fps, 5 s, speech (AAC)
                   "707d58aa3511138bd69e51944a732e010cc6d9063d3d79c178b50fc33cdc0ecf"),
    "template_129.mp4": (_IPLAP + "test/template_video/129.mp4",  # 256x256, 30 fps, 9 s, no audio track
                         "d3c2d18fd4ea1952b15508e315362ccdf3c80671b064e74a24d72d4042710f57"),
    "speech_audio2.wav": (_IPLAP + "test/template_video/audio2.wav",  # 44.1 kHz stereo, 21.3 s of speech
                          "91721048438cf5b0618516e8f8cc6bb3be1fa1b95cdcffb07b8dfa0b454261fd"),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def user_cache(kind: str) -> Path:
    """This project's per-user cache folder for `kind` (samples, templates): $IPLAP_CACHE/<kind>, else the OS's
    cache folder (~/.cache/iplap/<kind> on Linux)."""
    import pooch

    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path(pooch.os_cache("iplap"))) / kind


def cache_folder() -> Path:
    """Where downloaded samples are kept."""
    return user_cache("samples")


def _checked(folder: Path, names: tuple[str, ...], origin: str) -> Path:
    for name in names:
        path = folder / name
        if not path.is_file():
            raise InputError(path, f"sample file missing (from {origin})")
        if sha256(path) != FILES[name][1]:
            raise InputError(path, f"not the pinned sample file: its sha256 differs (from {origin})")
    return folder


def _download(names: tuple[str, ...], folder: Path, progress: bool) -> None:
    import pooch

    base = os.environ.get(URL_ENV, "").rstrip("/")
    for name in names:
        url = f"{base}/{name}" if base else FILES[name][0]
        try:
            # pooch downloads to a temporary file beside the target, checks the hash, then renames it; a cached
            # file that matches its hash is used as it is, without the network.
            pooch.retrieve(url, f"sha256:{FILES[name][1]}", fname=name, path=folder, progressbar=progress)
        except ValueError as error:  # pooch's hash mismatch: the temporary file is already gone
            raise InputError(url, f"not the pinned {name} ({one_line(error)[:120]}); it was not kept") from None
        except Exception as error:  # offline, refused, not found
            raise InputError(url, f"cannot download the sample media ({one_line(error)[:100]}); set {FOLDER_ENV} "
                                  f"to a folder holding {', '.join(FILES)}, or {URL_ENV} to a mirror of their "
                                  f"origins ({ORIGINS})") from None


def samples_folder(names: tuple[str, ...] = tuple(FILES), progress: bool = True) -> Path:
    """The folder holding the named sample files, each checked against its sha256 (downloaded when needed)."""
    unknown = [name for name in names if name not in FILES]
    if unknown:
        raise ValueError(f"not a sample file: {unknown[0]} (known: {', '.join(FILES)})")
    if os.environ.get(FOLDER_ENV):
        return _checked(Path(os.environ[FOLDER_ENV]).expanduser().resolve(), names, f"the folder {FOLDER_ENV} names")
    if SHARED.is_dir():
        return _checked(SHARED, names, str(SHARED))
    folder = cache_folder()
    _download(names, folder, progress)  # pooch fetches only what is missing or differs from its hash
    return folder


def sample(name: str) -> Path:
    """The path of one sample file."""
    return samples_folder((name,)) / name


if __name__ == "__main__":
    try:
        print(samples_folder())
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
