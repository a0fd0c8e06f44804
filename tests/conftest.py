"""Shared fixtures: the sample media (found by data/samples.py), test data, and synthetic media made on the fly."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Equivalence tests compare float32 with float32: where the suite runs on a GPU, TF32 would shift them by ~1e-3.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# Prepared templates (dubbing's pass-1 cache) go to a folder of this session's, never the user's cache; set in
# the environment so that the scripts the tests start use it too.
os.environ["IPLAP_TEMPLATES"] = tempfile.mkdtemp(prefix="iplap-templates-")
atexit.register(shutil.rmtree, os.environ["IPLAP_TEMPLATES"], True)


@pytest.fixture(scope="session")
def samples() -> Path:
    """The folder of real sample media, found by data/samples.py (its docstring gives the lookup order)."""
    from data.samples import samples_folder

    return samples_folder()


@pytest.fixture(scope="session")
def talk_a_frames(samples) -> list[np.ndarray]:
    from data.video import read_frames

    return read_frames(samples / "talk_a.mp4")[:40]


@pytest.fixture(scope="session")
def face_mesh():
    from data.facemesh import FaceMesh

    with FaceMesh(video=False) as mesh:
        yield mesh


@pytest.fixture(scope="session")
def records(samples, tmp_path_factory) -> Path:
    """Records of talk_a and talk_b made once per session by preprocess.py (in-process)."""
    import preprocess

    root = tmp_path_factory.mktemp("records")
    inputs = tmp_path_factory.mktemp("inputs")
    for name in ("talk_a.mp4", "talk_b.mp4"):
        (inputs / name).symlink_to(samples / name)
    assert preprocess.main(["--input-root", str(inputs), "--output-root", str(root), "--workers", "0"]) == 0
    return root


@pytest.fixture(scope="session")
def random_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """A landmark generator and a renderer with random weights, saved in this project's checkpoint format."""
    from testing.checkpoints import project_checkpoints

    return project_checkpoints(tmp_path_factory.mktemp("checkpoints"))


def tone(seconds: float, sample_rate: int = 16000, frequency: float = 440.0) -> np.ndarray:
    """A float32 sine wave at amplitude 0.3."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def numbered_frames(count: int, size: tuple[int, int] = (64, 48)) -> list[np.ndarray]:
    """Flat grey frames whose brightness encodes their index (index * 8), to trace frame selection."""
    width, height = size
    return [np.full((height, width, 3), (8 * i) % 256, np.uint8) for i in range(count)]


def frame_index(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / 8))


@pytest.fixture
def facemesh_calls(monkeypatch) -> dict:
    """{'n': how many frames FaceMesh has been run on} since the test began (the template cache's tests)."""
    from data.facemesh import FaceMesh

    calls = {"n": 0}
    original = FaceMesh.faces  # every call of the detector goes through it

    def counted(self, frame):
        calls["n"] += 1
        return original(self, frame)

    monkeypatch.setattr(FaceMesh, "faces", counted)
    return calls
