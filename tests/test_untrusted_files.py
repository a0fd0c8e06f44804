"""Loaders that trust nothing they read (model_files/model_args.py, model_files/checkpoints.py, model_files/hub.py,
model_files/weights.py): model_args held to a schema and to the file's tensors before anything is built, malformed
headers as one line, references shown escaped, hashes required on request, metric weights pinned and their cached
copies checked."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import save_file

from data.errors import InputError
from metrics import weights as metric_weights
from model_files import checkpoints, weights
from model_files.checkpoints import load_landmark_generator, load_renderer
from model_files.model_args import checked_model_args
from models.landmark_generator import LandmarkGenerator


@pytest.fixture(scope="module")
def small_landmark_state() -> dict:
    torch.manual_seed(0)
    return LandmarkGenerator(layers=2, feed_forward=64).state_dict()


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "\r" not in message
    return message


@pytest.mark.parametrize("args, problem", [
    ({"layers": 2, "feed_forward": 64, "colour": 1}, "unknown key 'colour'"),
    ({"layers": None, "feed_forward": 64}, "layers must be a whole number, not None"),
    ([2, 64], "model_args must be a mapping"),
    ({"layers": 2, "feed_forward": 64, "heads": 3}, "heads=3 does not divide d_model=512"),
    ({"layers": 2, "feed_forward": 64, "dropout": "0.1"}, "dropout must be a number"),
    ({"layers": True, "feed_forward": 64}, "layers must be a whole number, not True"),
    # A file of two small layers that asks for a network of 48 large ones: refused before it is built.
    ({"layers": 48, "feed_forward": 4096}, "layers=48, but the file holds 2 transformer layers"),
    ({"layers": 2, "feed_forward": 4096}, "feed_forward=4096, but the file's layers are 64 wide"),
    ({"layers": 10 ** 9, "feed_forward": 64}, "out of range"),
])
def test_landmark_model_args_are_checked_before_building(small_landmark_state, tmp_path, monkeypatch, args, problem):
    path = tmp_path / "landmark.pt"
    torch.save({"kind": "landmark_generator", "model": small_landmark_state, "model_args": args}, path)
    built = []
    monkeypatch.setattr(checkpoints, "LandmarkGenerator", lambda **kwargs: built.append(kwargs))
    with pytest.raises(InputError, match=problem) as error:
        load_landmark_generator(path)
    assert _one_line(error).startswith(f"{path}: model_args")
    assert built == []  # refused before any network was built


def test_landmark_model_args_that_fit_load(small_landmark_state, tmp_path):
    path = tmp_path / "landmark.pt"
    torch.save({"kind": "landmark_generator", "model": small_landmark_state,
                "model_args": {"layers": 2, "feed_forward": 64.0}}, path)
    model = load_landmark_generator(path)
    assert len(model.fusion_transformer.transformer_encoder.layers) == 2


@pytest.mark.parametrize("args, problem", [
    ({"face_size": 1024}, "face_size=1024 is out of range"),
    ({"face_size": 200}, "face_size=200 is not one of"),
    ({"face_size": "256"}, "face_size must be a whole number"),
    ({"size": 256}, "unknown key 'size'"),
    ("256", "model_args must be a mapping"),
])
def test_renderer_model_args_are_checked(tmp_path, args, problem):
    path = tmp_path / "renderer.pt"
    torch.save({"kind": "renderer", "model": {}, "model_args": args}, path)
    with pytest.raises(InputError, match=problem) as error:
        load_renderer(path)
    _one_line(error)


def test_schema_takes_the_paper_settings():
    assert checked_model_args("landmark_generator", {"d_model": 512, "layers": 4, "heads": 4, "feed_forward": 1024,
                                                     "dropout": 0.1}, "x") == \
        {"d_model": 512, "layers": 4, "heads": 4, "feed_forward": 1024, "dropout": 0.1}
    assert checked_model_args("renderer", {"face_size": 512}, "x") == {"face_size": 512}
    assert checked_model_args("renderer", None, "x") == {}


@pytest.mark.parametrize("metadata, problem", [
    ({"format": "iplap-export-1", "kind": "landmark_generator", "model_args": "{layers: 2"}, "is not JSON"),
    ({"format": "iplap-export-1", "kind": "landmark_generator", "model_args": "[2, 64]"}, "must be a mapping"),
    ({"format": "iplap-export-1", "kind": "landmark_generator", "model_args": "null"}, "layers=4, but the file"),
])
def test_malformed_export_headers_are_one_line(small_landmark_state, tmp_path, metadata, problem):
    path = tmp_path / "landmark_generator.safetensors"
    save_file({k: v.contiguous() for k, v in small_landmark_state.items()}, str(path), metadata=metadata)
    with pytest.raises(InputError, match=problem) as error:
        load_landmark_generator(path)
    _one_line(error)


def test_malformed_project_files_are_one_line(tmp_path):
    for contents, problem in (({"kind": ["renderer"], "model": {}}, "holds neither network"),
                              ({"kind": "renderer", "model": [1, 2]}, "'model' is not a mapping of tensors"),
                              ({"state_dict": {"a": 1}}, "'state_dict' is not a mapping of tensors")):
        torch.save(contents, tmp_path / "bad.pt")
        with pytest.raises(InputError, match=problem) as error:
            load_renderer(tmp_path / "bad.pt")
        _one_line(error)


def test_references_are_shown_escaped(tmp_path):
    for reference in ("no\nsuch.pt", f"{tmp_path}/a\rb\x1b[2J.pt", "hf://lab/x\n@/renderer.safetensors"):
        with pytest.raises(InputError) as error:
            load_renderer(reference)
        message = _one_line(error)
        assert "\x1b" not in message and ("\\n" in message or "\\r" in message)


def test_require_sha256_refuses_a_reference_without_one(tmp_path):
    path = tmp_path / "renderer.pt"
    torch.save({"kind": "renderer", "model": {}}, path)
    with pytest.raises(InputError, match="has no #sha256=HEX, and hashes are required") as error:
        load_renderer(path, require_sha256=True)
    _one_line(error)
    with pytest.raises(InputError, match="hashes are required"):  # refused before any download is tried
        load_renderer("hf://lab/nowhere@0123/renderer.safetensors", require_sha256=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(InputError, match="tensor .* is missing"):  # the hash passes: the file is read
        load_renderer(f"{path}#sha256={digest}", require_sha256=True)


def test_inference_require_hash_option_and_config_key(tmp_path, capsys):
    import inference

    video, audio = tmp_path / "face.mp4", tmp_path / "speech.wav"
    video.write_bytes(b"x")
    audio.write_bytes(b"x")
    ckpt = tmp_path / "renderer.pt"
    ckpt.write_bytes(b"x")
    common = ["--video", str(video), "--audio", str(audio), "--output", str(tmp_path / "out.mp4"),
              "--landmark-ckpt", str(ckpt), "--renderer-ckpt", str(ckpt), "--device", "cpu"]
    for extra in (["--require-hash"], ["checkpoints.require_sha256=true"]):
        assert inference.main(common + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "hashes are required" in err[0], err


def test_evaluate_require_hash_option_and_config_key(samples, random_checkpoints, tmp_path, capsys):
    import evaluate

    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").symlink_to(samples / "talk_a.mp4")
    (tmp_path / "test.txt").write_text("a\n")
    (tmp_path / "hashes.yaml").write_text("checkpoints:\n  require_sha256: true\n")
    common = ["--setting", "reconstruction", "--filelist", str(tmp_path / "test.txt"), "--video-root",
              str(tmp_path / "videos"), "--landmark-ckpt", str(random_checkpoints[0]), "--renderer-ckpt",
              str(random_checkpoints[1]), "--skip-missing", "--device", "cpu", "--quiet"]
    for extra in (["--require-hash"], ["--inference-config", str(tmp_path / "hashes.yaml")]):
        assert evaluate.main(common + ["--out", str(tmp_path / extra[0].strip("-"))] + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "hashes are required" in err[0] and str(random_checkpoints[0]) in err[0], err
    assert not list((tmp_path / "require-hash").glob("generated/*.mp4"))  # refused before any dub


def test_cached_weights_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = weights.cache_path(metric_weights.SYNCNET_V2)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the release's file")
    with pytest.raises(InputError, match="weights in the cache have sha256") as error:
        weights.resolve(metric_weights.SYNCNET_V2, download=False)
    assert metric_weights.SYNCNET_V2.option in _one_line(error)
    data = b"tiny weights"
    good = weights.WeightFile("Test", "tiny.pth", None, None, "here", "--tiny",
                              sha256=hashlib.sha256(data).hexdigest())
    weights.cache_path(good).write_bytes(data)
    assert weights.resolve(good, download=False) == weights.cache_path(good)
    weights.cache_path(good).write_bytes(b"tiny weightz")  # another version of the file: hashed again
    os.utime(weights.cache_path(good), ns=(1, 1))
    with pytest.raises(InputError, match="weights in the cache have sha256"):
        weights.resolve(good, download=False)
