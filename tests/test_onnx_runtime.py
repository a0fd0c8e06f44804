"""`runtime: onnxruntime`: on a real dub's inputs (a sample template's face crops and one-pixel sketch lines, the
demo speech, random weights) the render graph's faces are within 2 grey levels of torch's at the 99.9th percentile
and at least 45 dB PSNR, at 128 and 256; the graph cache reuses an intact graph, rebuilds a damaged or stale one,
and keys it by the renderer checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import dubbing
from data.errors import InputError
from dubbing.graphs import graph_path, intact, render_graph
from testing.checkpoints import renderer_checkpoint
from testing.runtimes import check_bounds, faces_of_both, short_media


@pytest.fixture(scope="module")
def media(samples, tmp_path_factory) -> tuple[Path, Path]:
    """The demo template's first 8 frames and the demo speech's first 0.2 s (5 output frames)."""
    return short_media(samples, tmp_path_factory.mktemp("onnx_runtime"))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> Path:
    """The template cache's folder that every graph of this module goes into."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def onnx_128(random_checkpoints, graphs) -> dubbing.Models:
    return dubbing.load_models(*random_checkpoints, "cpu", runtime="onnxruntime", graphs=graphs)


def faces_of_torch_and(onnx: dubbing.Models, media, landmark: Path, renderer: Path, folder: Path):
    assert onnx.runtime == "onnxruntime"
    return faces_of_both(media, landmark, renderer, onnx.render_step, folder)


def test_onnxruntime_faces_within_the_bounds_of_torch_on_a_real_dub(media, random_checkpoints, onnx_128, tmp_path):
    check_bounds(*faces_of_torch_and(onnx_128, media, *random_checkpoints, tmp_path), 128)


@pytest.mark.slow
@pytest.mark.parametrize("face_size", [256, 512])
def test_onnxruntime_faces_within_the_bounds_of_torch_at_larger_sizes(face_size, media, random_checkpoints,
                                                                     tmp_path):
    renderer = renderer_checkpoint(tmp_path / "renderer.pt", face_size)
    onnx = dubbing.load_models(random_checkpoints[0], renderer, "cpu", runtime="onnxruntime", graphs=tmp_path / "cache")
    check_bounds(*faces_of_torch_and(onnx, media, random_checkpoints[0], renderer, tmp_path), face_size)


def test_graph_cache_keys_by_checkpoint_reuses_and_rebuilds(random_checkpoints, onnx_128, graphs, tmp_path,
                                                            capsys):
    from data.samples import sha256
    from model_files.checkpoints import load_renderer

    path = graph_path(graphs, sha256(random_checkpoints[1]), 128)
    assert intact(path)
    good, stamp = path.read_bytes(), path.stat().st_mtime_ns
    capsys.readouterr()

    # Another checkpoint (here at 256): a graph of its own, exported with its check; the first one untouched.
    other = renderer_checkpoint(tmp_path / "other.pt", 256, seed=1)
    models = dubbing.load_models(random_checkpoints[0], other, "cpu", runtime="onnxruntime", graphs=graphs)
    assert "renderer_render.onnx: onnxruntime vs torch" in capsys.readouterr().err
    assert models.face_size == 256 and intact(graph_path(graphs, sha256(other), 256))
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, path.with_suffix(".json").name, f"render_{sha256(other)[:32]}_256.onnx",
         f"render_{sha256(other)[:32]}_256.json"])  # nothing else left behind
    assert path.read_bytes() == good and path.stat().st_mtime_ns == stamp

    renderer = load_renderer(random_checkpoints[1])
    assert render_graph(renderer, sha256(random_checkpoints[1]), graphs) == path  # intact: used as it is
    assert path.stat().st_mtime_ns == stamp and "onnxruntime vs torch" not in capsys.readouterr().err

    manifest = path.with_suffix(".json")
    facts = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**facts, "format": facts["format"] - 1}))  # stale: another export's format
    assert not intact(path)
    manifest.write_text(json.dumps(facts))
    path.write_bytes(good[: len(good) // 2])  # damaged (a half-written file): exported again
    assert not intact(path)
    assert render_graph(renderer, sha256(random_checkpoints[1]), graphs) == path
    assert intact(path) and path.read_bytes() == good and "onnxruntime vs torch" in capsys.readouterr().err


def test_runtime_choices_are_checked(random_checkpoints):
    with pytest.raises(InputError, match="runtime takes one of torch, onnxruntime"):
        dubbing.load_models(*random_checkpoints, "cpu", runtime="tensorrt")
    with pytest.raises(InputError, match="runtime=onnxruntime: onnxruntime renders on the CPU"):
        dubbing.load_models(*random_checkpoints, "meta", runtime="onnxruntime")
    from dubbing.pipeline import check_config

    config = dubbing.default_config()
    assert config["runtime"] == "torch"
    config["runtime"] = "onnx"
    with pytest.raises(InputError, match="runtime=onnx: runtime takes one of torch, onnxruntime"):
        check_config(config)


def test_demo_and_inference_pass_the_runtime_on(random_checkpoints):
    """--runtime reaches the loaded networks: the CPU-only check fires for a device other than the CPU."""
    import demo
    import inference

    landmark, renderer = (str(path) for path in random_checkpoints)
    args = demo.parse_args(["--runtime", "onnxruntime"])
    dubber = demo.Dubber(str(demo.INFERENCE_CONFIG), [f"runtime={args.runtime}"], "meta", Path("unused"))
    with pytest.raises(InputError, match="runtime=onnxruntime: onnxruntime renders on the CPU here, not on meta"):
        dubber.models(landmark, renderer)
    assert inference.parse_args(["--video", "v.mp4", "--audio", "a.wav", "--runtime", "onnxruntime"]).runtime == \
        "onnxruntime"
