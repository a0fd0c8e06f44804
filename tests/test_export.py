"""Exports (model_files/export.py): safetensors + config.json + model card, loaded back exactly; ONNX checked against
torch with onnxruntime; --push to a local Hub server and loading back by hub reference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from data.errors import InputError
from model_files.checkpoints import load_landmark_generator, load_renderer
from model_files.export import export, largest_difference, main
from testing.checkpoints import official_checkpoints, project_checkpoints
from testing.hub_server import Hub

ROOT = Path(__file__).resolve().parents[1]
LOADERS = {"landmark_generator": load_landmark_generator, "renderer": load_renderer}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("sources")
    official, project = official_checkpoints(folder / "official", seed=3), project_checkpoints(folder / "project", 4)
    return {"official": dict(zip(LOADERS, official)), "project": dict(zip(LOADERS, project))}


# Each stage and each layout in the default suite; the other two pairs (30 s more on a CPU) with -m slow.
@pytest.mark.parametrize("kind, layout", [
    ("landmark_generator", "official"), ("renderer", "project"),
    pytest.param("landmark_generator", "project", marks=pytest.mark.slow),
    pytest.param("renderer", "official", marks=pytest.mark.slow)])
def test_export_loads_as_its_source(sources, tmp_path, kind, layout, capsys):
    source = sources[layout][kind]
    weights = export(source, tmp_path / "export")
    assert weights.name == f"{kind}.safetensors"
    assert sorted(p.name for p in weights.parent.iterdir()) == ["README.md", "config.json", weights.name]
    expected = LOADERS[kind](source)
    reference = weights.parent if kind == "renderer" else weights  # the folder stands for its weights file
    assert largest_difference(expected, LOADERS[kind](reference)) == 0
    config = json.loads((weights.parent / "config.json").read_text())
    assert config["kind"] == kind and config["source"]["name"] == source.name and config["source"]["layout"] == layout
    assert str(source.parent) not in (weights.parent / "config.json").read_text()  # no local path is published
    if layout == "official":
        again = export(weights.parent, tmp_path / "again")  # an export folder is a SOURCE
        assert largest_difference(expected, LOADERS[kind](again)) == 0
    printed = capsys.readouterr().out  # each load's line: network, source, layout, sha256
    assert f"sha256 {config['source']['sha256']}" in printed and f"sha256 {config['sha256']}" in printed


def test_model_card_and_errors(sources, tmp_path):
    results = tmp_path / "results.json"
    from metrics.report import write_reports
    from metrics.scoring import Scores

    write_reports(tmp_path, "ours", Scores([], {"psnr": 31.5, "ssim": 0.93}, {}), (), {"setting": "reconstruction"},
                  {}, None, [])
    out = tmp_path / "landmark"
    assert main([str(sources["project"]["landmark_generator"]), str(out), "--results", str(results)]) == 0
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "apache-2.0" and front["datasets"] == ["lrs2"] and front["library_name"]
    assert "| ours | 31.50 | 0.9300 |" in card and "--landmark-ckpt hf://OWNER/REPO@REVISION/" in card
    assert main([str(sources["project"]["renderer"]), str(out)]) == 2  # not empty: refused, left as it was
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "landmark_generator.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    weights = out / "landmark_generator.safetensors"
    with pytest.raises(InputError, match="holds a landmark generator, not a renderer"):
        load_renderer(weights)
    with pytest.raises(InputError, match="renderer.safetensors: renderer checkpoint not found in the folder"):
        load_renderer(out)
    state = load_file(weights)
    metadata = {"format": "iplap-export-1", "kind": "landmark_generator", "model_args": "{}"}
    name = "lip_head.weight"
    for change, problem in ((lambda s: s.pop(name), f"tensor '{name}' is missing"),
                            (lambda s: s.__setitem__(name, s[name][:, :3].contiguous()), f"tensor '{name}' has shape")):
        broken = dict(state)
        change(broken)
        save_file(broken, str(tmp_path / "broken.safetensors"), metadata=metadata)
        with pytest.raises(InputError, match=problem):
            load_landmark_generator(tmp_path / "broken.safetensors")
    save_file(state, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(InputError, match="without this project's export metadata"):
        load_landmark_generator(tmp_path / "foreign.safetensors")


def test_push_then_load_by_reference(sources, tmp_path):
    """`--push` with the real client against the local Hub, then the pinned reference it prints loads the network."""
    source = sources["project"]["landmark_generator"]
    script = (f"from model_files.export import main; import sys; sys.exit(main([{str(source)!r}, "
              f"{str(tmp_path / 'out')!r}, '--push', 'lab/iplap-landmark', '--private']))")
    with Hub() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=server.endpoint, HF_HOME=str(tmp_path / "hf"), HF_TOKEN="test-token",
                   HF_HUB_DISABLE_TELEMETRY="1")
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        reference = done.stdout.split("load it with ")[1].split()[0]
        commit = server.repos["lab/iplap-landmark"].refs["main"]
        assert server.repos["lab/iplap-landmark"].private  # --private: created private
        assert reference == f"hf://lab/iplap-landmark@{commit}/landmark_generator.safetensors"
        pushed = server.repos["lab/iplap-landmark"].commits[commit]
        assert sorted(pushed) == ["README.md", "config.json", "landmark_generator.safetensors"]
        exported = tmp_path / "out" / "landmark_generator.safetensors"
        assert pushed["landmark_generator.safetensors"] == exported.read_bytes()
        check = (f"import torch; from model_files import load_landmark_generator as load; a = load({reference!r}); "
                 f"b = load({str(source)!r}); "
                 "assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())); "
                 # the pushed folder, by hub reference, as an export's SOURCE: config.json names that reference
                 f"from model_files.export import export; export('hf://lab/iplap-landmark@{commit}', "
                 f"__import__('pathlib').Path({str(tmp_path / 'again')!r}))")
        done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        again = json.loads((tmp_path / "again" / "config.json").read_text())
        assert again["source"]["reference"] == f"hf://lab/iplap-landmark@{commit}"
        assert again["source"]["sha256"] == json.loads((tmp_path / "out" / "config.json").read_text())["sha256"]
    assert main([str(source), str(tmp_path / "other"), "--private"]) == 2  # --private without --push: one line


def test_onnx_at_a_larger_face_size(tmp_path):
    """A 256 renderer's graphs (traced here at 32x32, where its fully convolutional graph runs the same) export and
    match torch: the sketches are pooled to the core's size by a graph the exporter takes."""
    from model_files.onnx_export import TOLERANCE, export_onnx
    from models.renderer import Renderer

    torch.manual_seed(5)
    differences = export_onnx("renderer", Renderer(256).eval(), tmp_path, size=32)
    assert all(0 <= value <= TOLERANCE for value in differences.values()), differences


@pytest.mark.slow
@pytest.mark.parametrize("size", [256, 512])
def test_onnx_export_at_the_renderers_face_size(tmp_path, size, capsys):
    """`--onnx` on a 256 or 512 renderer: the graphs take and give faces at that size, checked against torch."""
    import onnx

    from testing.checkpoints import renderer_checkpoint

    path = renderer_checkpoint(tmp_path / "step_000000001.pt", size, seed=6)
    assert main([str(path), str(tmp_path / "export"), "--onnx"]) == 0
    graph = onnx.load(str(tmp_path / "export" / "renderer_render.onnx")).graph
    face = next(value for value in graph.input if value.name == "face")
    assert [d.dim_value for d in face.type.tensor_type.shape.dim][1:] == [3, size, size]
    assert f"(RGB, {size}x{size})" in (tmp_path / "export" / "README.md").read_text()


@pytest.mark.slow
def test_onnx_matches_torch(sources, tmp_path):
    """Both networks' ONNX graphs, traced at one batch and reference count and run at others, within 1e-4 of torch
    (official-layout random weights; the renderer at 32x32, where its fully convolutional graph runs the same)."""
    from model_files.onnx_export import TOLERANCE, export_onnx

    differences = export_onnx("landmark_generator", load_landmark_generator(sources["official"]["landmark_generator"]),
                              tmp_path)
    differences.update(export_onnx("renderer", load_renderer(sources["official"]["renderer"]), tmp_path, size=32))
    assert set(differences) == {"landmark_generator", "renderer_encode_references", "renderer_render"}
    assert all(0 <= value <= TOLERANCE for value in differences.values()), differences

