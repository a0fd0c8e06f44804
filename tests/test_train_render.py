import copy
import subprocess
import sys

import pytest
import torch

import train_render
from conftest import REPO
from data.datasets import RenderFrames, records_under
from losses.perceptual import PerceptualLoss, load_vgg19_features
from models.discriminator import MultiscaleDiscriminator
from models.renderer import Renderer

WEIGHTS = {"warp": 2.5, "reconstruction": 4.0, "style": 1000.0, "gan": 0.25, "feature_matching": 2.5}
SMALL = ["data.val_list=null", "optim.batch_size=2", "sample.refs=1", "sample.epoch_repeats=2",
         "schedule.warmup_epochs=1", "schedule.save_every=1", "schedule.keep_last=5", "schedule.log_every=1",
         "schedule.eval_every=1000"]


def _batch(records, size=2, refs=1, seed=0):
    dataset = RenderFrames(records_under(records), refs=refs, seed=seed)
    samples = [dataset[i] for i in range(size)]
    return dataset.to_device({k: torch.stack([s[k] for s in samples]) for k in samples[0]}, torch.device("cpu"))


def _nets(seed=0):
    torch.manual_seed(seed)
    return (Renderer(), MultiscaleDiscriminator(), PerceptualLoss(load_vgg19_features(allow_random=True)))


def test_discriminator_gets_no_gradient_from_the_generator_loss(records):
    generator, discriminator, perceptual = _nets()
    batch = _batch(records, size=2)
    g_opt = torch.optim.Adam(generator.parameters(), 1e-4)
    d_opt = torch.optim.Adam(discriminator.parameters(), 1e-4, betas=(0.5, 0.999))
    generator_before, discriminator_before = copy.deepcopy(generator), copy.deepcopy(discriminator)
    torch.manual_seed(1)
    parts = train_render.gan_step(generator, discriminator, g_opt, d_opt, perceptual, batch, WEIGHTS, False,
                                  lambda: torch.autocast("cpu", enabled=False))
    assert {"warp", "reconstruction", "style", "gan", "feature_matching", "discriminator"} <= set(parts)
    # The discriminator's gradient must be exactly that of its own loss on the (pre-update) generated face.
    torch.manual_seed(1)
    generated, _ = generator_before(batch["face"], batch["sketches"], batch["ref_images"], batch["ref_sketches"],
                                    batch["mels"])
    train_render.discriminator_loss(discriminator_before, batch["face"], generated).backward()
    for (name, p), q in zip(discriminator.named_parameters(), discriminator_before.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow  # 60 s on a 2-core CPU: keeps the default suite under 15 minutes; run with -m slow
def test_warm_up_steps_train_the_alignment_only_and_lower_the_warp_loss(records):
    generator, discriminator, perceptual = _nets()
    batch = _batch(records, size=2)
    g_opt = torch.optim.Adam(generator.parameters(), 5e-4)
    d_opt = torch.optim.Adam(discriminator.parameters(), 1e-4)
    translation_before = copy.deepcopy(generator.translation.state_dict())
    discriminator_before = copy.deepcopy(discriminator.state_dict())
    losses = [train_render.gan_step(generator, discriminator, g_opt, d_opt, perceptual, batch, WEIGHTS, True,
                                    lambda: torch.autocast("cpu", enabled=False))["warp"] for _ in range(6)]
    assert losses[-1] < 0.9 * losses[0], losses
    for name, value in generator.translation.state_dict().items():
        if "running" not in name and "num_batches" not in name:  # BatchNorm statistics still move
            torch.testing.assert_close(value, translation_before[name], rtol=0, atol=0, msg=name)
    for name, value in discriminator.state_dict().items():
        torch.testing.assert_close(value, discriminator_before[name], rtol=0, atol=0, msg=name)


def _run(records, run_dir, steps, *extra):
    return train_render.main(["--config", "configs/render_smoke.yaml", *extra, f"data.records={records}",
                              f"run_dir={run_dir}", f"schedule.max_steps={steps}", *SMALL])


@pytest.mark.slow  # 93 s on a 2-core CPU: keeps the default suite under 15 minutes; run with -m slow
def test_warm_up_switch_and_resume(records, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert _run(records, tmp_path / "a", 3) == 0  # 2 batches an epoch: steps 1-2 warm up, step 3 is full
    states = {s: torch.load(tmp_path / "a" / f"step_00000000{s}.pt", weights_only=True) for s in (1, 2, 3)}
    disc = {s: states[s]["others"]["discriminator"] for s in states}
    assert all(torch.equal(disc[1][k], disc[2][k]) for k in disc[1])
    assert not all(torch.equal(disc[2][k], disc[3][k]) for k in disc[2])
    weight = "translation.conv_last.weight"
    assert torch.equal(states[1]["model"][weight], states[2]["model"][weight])
    assert not torch.equal(states[2]["model"][weight], states[3]["model"][weight])
    # Interrupted after step 2 and resumed: the same parameters as the uninterrupted run.
    assert _run(records, tmp_path / "b", 2) == 0
    assert _run(records, tmp_path / "b", 3, "--resume", "auto") == 0
    resumed = torch.load(tmp_path / "b" / "step_000000003.pt", weights_only=True)
    for name, value in states[3]["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=name)
    for name, value in disc[3].items():
        torch.testing.assert_close(resumed["others"]["discriminator"][name], value, rtol=0, atol=0, msg=name)


@pytest.mark.slow  # 113 s on a 2-core CPU: keeps the default suite under 15 minutes; run with -m slow
def test_torchrun_two_cpu_processes_keep_identical_parameters(records, tmp_path):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29531", "train_render.py", "--config", "configs/render_smoke.yaml",
                             f"data.records={records}", f"run_dir={tmp_path / 'ddp'}", "schedule.max_steps=2",
                             *SMALL, "optim.batch_size=4", "schedule.warmup_epochs=0"],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters identical on all 2 ranks: True" in result.stderr
