"""--init (training/initialise.py): a new run from the official files, a run's checkpoint, an export (with its
discriminator, model_files.export --with-discriminator) and a hub reference; 128 -> 256 growth; one-line errors."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_landmark
from data.errors import InputError
from model_files.checkpoints import landmark_generator_of, read_checkpoint, renderer_of
from model_files.export import export
from models.discriminator import MultiscaleDiscriminator
from models.landmark_generator import LandmarkGenerator
from models.renderer import Renderer
from testing.checkpoints import official_checkpoints
from testing.hub_server import Hub
from training import checkpoints
from training.distributed import Distributed
from training.initialise import growth_tensors

ROOT = Path(__file__).resolve().parents[1]
ENV = Distributed(0, 1, 0, torch.device("cpu"))
DISCRIMINATOR = {"in_channels": 3, "width": 8, "layers": 2, "scales": 2}  # small: the test's own config


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_checkpoint(path: Path, seed: int, face_size: int = 128) -> Path:
    """A renderer run's step_*.pt as train_render writes it: network, discriminator, optimisers, step, config."""
    torch.manual_seed(seed)
    renderer, discriminator = Renderer(face_size=face_size), MultiscaleDiscriminator(**DISCRIMINATOR)
    optimiser = torch.optim.Adam(renderer.parameters())
    state = checkpoints.training_state(renderer, {"generator": optimiser}, 500, {"discriminator": DISCRIMINATOR},
                                       "renderer", {"face_size": face_size}, {"discriminator": discriminator}, [])
    torch.save(state, path)
    return path


def start(reference, network: torch.nn.Module, discriminator: torch.nn.Module | None = None, sha: str | None = None
          ) -> tuple[int, dict, torch.optim.Optimizer]:
    """What a trainer does at its start with init.source set and nothing to resume: (step, config, optimiser)."""
    config = {"run_dir": "/nonexistent", "init": {"source": str(reference), "sha256": sha}}
    optimiser = torch.optim.Adam(network.parameters())
    others = {"discriminator": discriminator} if discriminator is not None else None
    step = checkpoints.resume(None, config, ENV, network, {"model": optimiser}, others)
    return step, config, optimiser


def assert_equal_states(got: dict, expected: dict, names=None) -> None:
    for name in names if names is not None else expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("init_sources")
    landmark, renderer = official_checkpoints(folder / "official", seed=5)
    run = run_checkpoint(folder / "step_000000500.pt", seed=6)
    exported = export(run, folder / "export", with_discriminator=True)
    return {"official_landmark": landmark, "official_renderer": renderer, "run": run, "export": exported}


def test_init_from_official_files_starts_at_step_0_with_their_weights(sources, capsys):
    for kind, network, loader in (("landmark", LandmarkGenerator(), landmark_generator_of),
                                  ("renderer", Renderer(), renderer_of)):
        path = sources[f"official_{kind}"]
        discriminator = MultiscaleDiscriminator(**DISCRIMINATOR) if kind == "renderer" else None
        before = discriminator.state_dict() if discriminator else None
        before = {k: v.clone() for k, v in before.items()} if before else None
        step, config, optimiser = start(path, network, discriminator)
        assert step == 0 and optimiser.state_dict()["state"] == {}
        assert config["init"] == {"source": str(path), "sha256": sha256(path)}
        assert_equal_states(network.state_dict(), loader(read_checkpoint(path, None)).state_dict())
        if discriminator is not None:  # the official release has none: it keeps its fresh weights
            assert_equal_states(discriminator.state_dict(), before)
    printed = capsys.readouterr().out
    assert "discriminator starts fresh (the source has none)" in printed
    assert f"official layout, sha256 {sha256(sources['official_renderer'])}: " in printed


@pytest.mark.parametrize("layout", ["run", "export"])
def test_init_from_a_run_or_an_export_loads_the_discriminator_too(sources, layout):
    saved = torch.load(sources["run"], weights_only=True)
    network, discriminator = Renderer(), MultiscaleDiscriminator(**DISCRIMINATOR)
    reference = sources[layout].parent if layout == "export" else sources[layout]  # an export folder stands for it
    step, config, _ = start(reference, network, discriminator)
    assert step == 0 and config["init"]["sha256"] == sha256(sources[layout])
    assert_equal_states(network.state_dict(), saved["model"])
    assert_equal_states(discriminator.state_dict(), saved["others"]["discriminator"])


def test_export_with_discriminator_card_and_refusals(sources, tmp_path):
    folder = sources["export"].parent
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "discriminator.safetensors",
                                                        "renderer.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["discriminator"] == {"file": "discriminator.safetensors",
                                       "sha256": sha256(folder / "discriminator.safetensors"),
                                       "model_args": DISCRIMINATOR}
    assert "holds the discriminator trained with it" in (folder / "README.md").read_text()
    again = export(sources["export"], tmp_path / "again", with_discriminator=True)  # an export of an export
    assert_equal_states(load_file(again.parent / "discriminator.safetensors"),
                        load_file(folder / "discriminator.safetensors"))
    plain = export(sources["run"], tmp_path / "plain")
    assert "The discriminator is not included" in (plain.parent / "README.md").read_text()
    assert "discriminator" not in json.loads((plain.parent / "config.json").read_text())
    with pytest.raises(InputError, match="holds no discriminator"):
        export(sources["official_renderer"], tmp_path / "official", with_discriminator=True)
    assert not (tmp_path / "official").exists()
    # The renderer file pins its discriminator's sha256: a swapped file is refused in one line.
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "renderer.safetensors").write_bytes(sources["export"].read_bytes())
    (swapped / "discriminator.safetensors").write_bytes((plain.parent / "renderer.safetensors").read_bytes()[:64])
    with pytest.raises(InputError, match="discriminator file has sha256"):
        start(swapped, Renderer(), MultiscaleDiscriminator(**DISCRIMINATOR))


def test_init_by_hub_reference(sources, tmp_path):
    folder = sources["export"].parent
    files = {name: (folder / name).read_bytes() for name in ("renderer.safetensors", "discriminator.safetensors")}
    out = tmp_path / "started.pt"
    with Hub() as server:
        commit = server.add("lab/speaker", files)
        reference = f"hf://lab/speaker@{commit}/renderer.safetensors#sha256={sha256(sources['export'])}"
        script = ("import sys, torch; from tests.test_finetune_init import start, DISCRIMINATOR; "
                  "from models.renderer import Renderer; from models.discriminator import MultiscaleDiscriminator; "
                  "n, d = Renderer(), MultiscaleDiscriminator(**DISCRIMINATOR); "
                  "step, config, _ = start(sys.argv[1], n, d); "
                  "torch.save({'step': step, 'config': config, 'model': n.state_dict(), 'd': d.state_dict()}, "
                  "sys.argv[2])")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=server.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        done = subprocess.run([sys.executable, "-c", script, reference, str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    started, saved = torch.load(out, weights_only=True), torch.load(sources["run"], weights_only=True)
    assert started["step"] == 0 and started["config"]["init"]["sha256"] == sha256(sources["export"])
    assert_equal_states(started["model"], saved["model"])
    assert_equal_states(started["d"], saved["others"]["discriminator"])


def test_a_256_renderer_grows_from_the_128_core(sources, capsys):
    torch.manual_seed(1)
    network = Renderer(face_size=256)
    discriminator = MultiscaleDiscriminator(**{**DISCRIMINATOR, "scales": 3})
    fresh_before = {k: v.clone() for k, v in network.state_dict().items()}
    disc_before = {k: v.clone() for k, v in discriminator.state_dict().items()}
    step, config, _ = start(sources["run"], network, discriminator)
    saved = torch.load(sources["run"], weights_only=True)
    grown = growth_tensors(256)
    shared = [name for name in network.state_dict() if name not in grown]
    assert {"alignment.stem.0.0.weight", "translation.up.0.conv.weight", "translation.conv1.weight",
            "alignment.conv1.weight", "translation.conv_last.weight"} <= grown
    assert len(shared) > 5 * len(grown) and "translation.spade_1.conv_1.weight" in shared
    assert_equal_states(network.state_dict(), saved["model"], shared)  # the core: the source's values
    assert_equal_states(network.state_dict(), fresh_before, grown)  # the new levels: their own initialisation
    disc = discriminator.state_dict()
    assert_equal_states(disc, saved["others"]["discriminator"], [n for n in disc if not n.startswith("scales.2.")])
    assert_equal_states(disc, disc_before, [n for n in disc if n.startswith("scales.2.")])
    printed = capsys.readouterr().out
    assert f"{len(shared)} tensors loaded, {len(grown)} started fresh (alignment.stem.0.0, " in printed
    assert {"alignment.stem.1.0.weight", "translation.up.1.conv.weight"} <= growth_tensors(512)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_references_and_mismatched_shapes_are_one_line(sources, tmp_path):
    with pytest.raises(InputError, match="renderer checkpoint not found") as error:
        start(tmp_path / "missing.pt", Renderer())
    one_line(error)
    with pytest.raises(InputError, match="holds a landmark generator, not a renderer"):
        start(sources["official_landmark"], Renderer())
    with pytest.raises(InputError, match=r"has shape \(.*\) in the source and \(.*\) in this network") as error:
        start(sources["official_landmark"], LandmarkGenerator(feed_forward=256))
    one_line(error)
    with pytest.raises(InputError, match="of this network is not in the source"):
        start(sources["official_landmark"], LandmarkGenerator(layers=5))
    with pytest.raises(InputError, match=r"tensor 'scales.0.blocks.0.0.weight' has shape \(8, 3, 4, 4\) in the "
                                         r"source and \(16, 3, 4, 4\) in this network"):
        start(sources["run"], Renderer(), MultiscaleDiscriminator(**{**DISCRIMINATOR, "width": 16}))
    big = run_checkpoint(tmp_path / "step_256.pt", seed=2, face_size=256)
    with pytest.raises(InputError, match="grows from a 128x128 one"):
        start(big, Renderer(face_size=512))
    with pytest.raises(InputError, match="not the 0000"):
        start(sources["run"], Renderer(), sha="0" * 64)


def test_train_landmark_init_runs_from_step_0_and_records_the_source(records, tmp_path, capsys):
    tiny = [f"data.records={records}", "data.val_list=null", "model.layers=1", "model.feed_forward=64",
            "optim.batch_size=4", "sample.epoch_repeats=4", "schedule.save_every=2", "schedule.eval_every=1000",
            "schedule.max_steps=2"]
    config = str(ROOT / "configs" / "landmark_smoke.yaml")
    assert train_landmark.main(["--config", config, f"run_dir={tmp_path / 'a'}", *tiny]) == 0
    source = tmp_path / "a" / "step_000000002.pt"
    assert train_landmark.main(["--config", config, f"run_dir={tmp_path / 'b'}", "--init", str(source), *tiny]) == 0
    started = torch.load(tmp_path / "b" / "step_000000002.pt", weights_only=True)
    assert started["step"] == 2 and started["config"]["init"]["sha256"] == sha256(source)
    adam = started["optimisers"]["model"]["state"][0]["step"]
    assert float(adam) == 2  # a fresh optimiser: two steps, not the source's two plus these
    capsys.readouterr()
    assert train_landmark.main(["--config", config, f"run_dir={tmp_path / 'c'}", "--init", "nowhere.pt", *tiny]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: nowhere.pt: landmark generator checkpoint not found; see docs/models.md (the " \
                      "official release's download links are dead; a re-hosted copy loads by hf:// reference), " \
                      "or train one with this project"
