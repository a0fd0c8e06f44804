"""Checkpoint references (model_files/hub.py): parsing, local files, and the real huggingface_hub client against a local
Hub server (testing/hub_server.py) through HF_ENDPOINT, in a subprocess so that the client reads HF_ENDPOINT,
HF_HOME and HF_HUB_OFFLINE from its environment as it does for a user."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.errors import InputError
from model_files import hub
from testing.hub_server import Hub

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = b"weights " * 4096  # 32 KiB, more than one read block of the client
OTHER = b"other file"
SIDE = b"checked and refused"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(references: list[str], home: Path, endpoint: str, offline: bool = False) -> tuple[list[str], list[str]]:
    """`python -m model_files.hub REFERENCES` with the client's environment; (stdout lines, stderr error lines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-m", "model_files.hub", *references], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == (2 if errors else 0), done.stderr
    return done.stdout.splitlines(), errors


def error_for(reference: str, errors: list[str]) -> str:
    found = [line for line in errors if line.startswith(f"error: {reference}: ")]
    assert len(found) == 1, (reference, errors)
    return found[0]


def cached_files(home: Path) -> list[Path]:
    return [path for path in home.rglob("*") if path.is_file() and ".locks" not in path.parts]


def test_hub_references_online_offline_and_failures(tmp_path):
    home = tmp_path / "hf"
    with Hub() as server:
        first = server.add("lab/iplap", {"renderer.safetensors": WEIGHTS, "side.bin": SIDE})
        head = server.add("lab/iplap", {"other.bin": OTHER})
        server.add("lab/gated", {"renderer.safetensors": WEIGHTS})
        server.repos["lab/gated"].gated = True
        pinned = f"hf://lab/iplap@{first}/renderer.safetensors"
        checked = f"{pinned}#sha256={sha(WEIGHTS)}"
        branch = "hf://lab/iplap/other.bin"
        wrong = f"hf://lab/iplap@{first}/side.bin#sha256={sha(b'not it')}"
        missing = f"hf://lab/iplap@{first}/no_such.safetensors"
        no_repo = "hf://lab/nothing/renderer.safetensors"
        no_revision = "hf://lab/iplap@v9/renderer.safetensors"
        gated = "hf://lab/gated/renderer.safetensors"
        lines, errors = fetch([checked, branch, wrong, missing, no_repo, no_revision, gated], home, server.endpoint)
        assert len(lines) == 2 and len(errors) == 5
        path, digest = lines[0].split("\tsha256 ")
        assert Path(path).read_bytes() == WEIGHTS and digest == sha(WEIGHTS)
        assert first in path  # the pinned commit's snapshot
        path, digest = lines[1].split("\tsha256 ")
        assert Path(path).read_bytes() == OTHER and head in path  # the branch resolved to its head
        refused = error_for(wrong, errors)
        assert "not the" in refused and "removed from the Hugging Face cache" in refused
        assert "has no file no_such.safetensors" in error_for(missing, errors)
        assert "no repository lab/nothing" in error_for(no_repo, errors)
        assert "has no revision v9" in error_for(no_revision, errors)
        assert "gated repository" in error_for(gated, errors) and "token" in error_for(gated, errors)
        # Nothing partial, and the refused file is nowhere in the cache where a later call could take it as good.
        files = cached_files(home)
        assert not [path for path in files if path.name.endswith(".incomplete")]
        assert not [path for path in files if path.read_bytes() == SIDE]
        assert ("GET", f"/lab/iplap/resolve/{first}/renderer.safetensors") in server.requests

    # The server is gone. Offline, the pinned file and the branch's file come from the cache; a file never fetched,
    # and the one refused above, are one line each.
    never = f"hf://lab/iplap@{first}/other.bin"
    lines, errors = fetch([checked, branch, never, wrong], home, server.endpoint, offline=True)
    assert [Path(line.split("\t")[0]).read_bytes() for line in lines] == [WEIGHTS, OTHER]
    assert "not in the Hugging Face cache" in error_for(never, errors)
    assert "HF_HUB_OFFLINE is set" in error_for(never, errors)
    assert "not in the Hugging Face cache" in error_for(wrong, errors)
    # Without HF_HUB_OFFLINE and without a server, a file pinned to a commit and cached is served without asking.
    lines, errors = fetch([pinned], home, server.endpoint)
    assert Path(lines[0].split("\t")[0]).read_bytes() == WEIGHTS and not errors


def test_parse_references():
    ref = hub.parse(f"hf://lab/iplap@refs%2Fpr%2F1/sub/renderer.safetensors#sha256={'A' * 64}")
    assert (ref.repo_id, ref.revision, ref.path, ref.repo_type, ref.sha256) == \
        ("lab/iplap", "refs/pr/1", "sub/renderer.safetensors", "model", "a" * 64)
    assert not ref.names_folder()
    folder = hub.parse("hf://datasets/lab/weights")
    assert (folder.repo_id, folder.repo_type, folder.revision, folder.path) == ("lab/weights", "dataset", None, "")
    assert folder.names_folder() and folder.inside("renderer.safetensors").path == "renderer.safetensors"
    assert hub.parse("hf://lab/iplap@abc/export").inside("x.safetensors").path == "export/x.safetensors"
    local = hub.parse("~/ckpt/step_1.pt")
    assert local.local == Path("~/ckpt/step_1.pt").expanduser() and local.sha256 is None
    for bad, problem in (("hf://lab", "hf://OWNER/REPO"), ("hf://lab/iplap@/x.pt", "nothing after '@'"),
                         ("x.pt#sha256=abc", "64 hexadecimal digits")):
        with pytest.raises(InputError, match=problem):
            hub.parse(bad)


def test_local_references(tmp_path):
    file = tmp_path / "renderer.safetensors"
    file.write_bytes(WEIGHTS)
    assert hub.resolve(f"{file}#sha256={sha(WEIGHTS)}", "renderer checkpoint") == file
    assert hub.resolve(tmp_path, "renderer checkpoint", inside="renderer.safetensors") == file
    with pytest.raises(InputError, match=r"renderer checkpoint has sha256 \w+, not the \w+ the reference gives"):
        hub.resolve(f"{file}#sha256={sha(b'x')}", "renderer checkpoint")
    assert file.read_bytes() == WEIGHTS  # a user's own file is never removed
    with pytest.raises(InputError, match="landmark_generator.safetensors: renderer checkpoint not found in the folder"):
        hub.resolve(tmp_path, "renderer checkpoint", inside="landmark_generator.safetensors")
    with pytest.raises(InputError, match="gone.pt: VGG19 weights not found; get it there"):
        hub.resolve(tmp_path / "gone.pt", "VGG19 weights", hint="get it there")
