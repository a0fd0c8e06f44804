"""The mixed-precision path without a GPU: `bf16: always` runs the networks under CPU bf16 autocast, the path that
`bf16: true` takes on CUDA. Forward passes agree with float32 to bf16's precision; one training step of each
trainer and a short dub complete with finite results."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import config as settings
from conftest import REPO
from data.errors import InputError
from models.landmark_generator import LandmarkGenerator
from models.renderer import Renderer

CPU = torch.device("cpu")


def test_the_bf16_setting_picks_the_autocast_context():
    assert isinstance(settings.autocast(CPU, True), contextlib.nullcontext)  # the default stays float32 on CPU
    assert isinstance(settings.autocast(CPU, False), contextlib.nullcontext)
    context = settings.autocast(CPU, "always")
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    with pytest.raises(InputError, match="bf16 takes"):
        settings.autocast(CPU, "yes")


def test_landmark_generator_forward_under_cpu_bf16():
    torch.manual_seed(0)
    model = LandmarkGenerator().eval()
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(2, 5, 1, 80, 16, generator=g), torch.rand(2, 5, 2, 74, generator=g),
              torch.rand(2, 15, 2, 74, generator=g), torch.rand(2, 15, 2, 57, generator=g))
    with torch.no_grad():
        full = model(*inputs)
        with settings.autocast(CPU, "always"):
            half = model(*inputs)
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert torch.isfinite(half).all()
    error = (half.float() - full).abs().max().item()
    assert error < 0.05 * full.abs().max().item(), error  # bf16 keeps 8 bits of mantissa


def test_renderer_forward_under_cpu_bf16():
    torch.manual_seed(0)
    model = Renderer().eval()
    g = torch.Generator().manual_seed(2)
    face, sketches = torch.rand(1, 3, 128, 128, generator=g), torch.rand(1, 5, 3, 128, 128, generator=g)
    refs, ref_sketches = torch.rand(1, 1, 3, 128, 128, generator=g), torch.rand(1, 1, 3, 128, 128, generator=g)
    mels = torch.randn(1, 1, 80, 16, generator=g)
    with torch.no_grad():
        full, _ = model(face, sketches, refs, ref_sketches, mels)
        with settings.autocast(CPU, "always"):
            half, warped = model(face, sketches, refs, ref_sketches, mels)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half.float()).all() and torch.isfinite(warped).all()
    assert (half.float() - full).abs().max().item() < 0.05  # outputs are images in 0..1


def _spy_autocast(monkeypatch, module) -> list:
    """Record every autocast context that `module` makes (proof that the path under test ran in bf16)."""
    made = []

    def spy(device, bf16):
        context = settings.autocast(device, bf16)
        made.append(context)
        return context

    monkeypatch.setattr(module, "autocast", spy)
    return made


def _bf16_contexts(made: list) -> int:
    return sum(isinstance(c, torch.autocast) and c.fast_dtype == torch.bfloat16 for c in made)


def test_a_landmark_training_step_in_bf16(records, tmp_path, monkeypatch):
    import train_landmark

    made = _spy_autocast(monkeypatch, train_landmark)
    args = ["--config", str(REPO / "configs" / "landmark_smoke.yaml"), f"data.records={records}",
            f"run_dir={tmp_path}", "data.val_list=null", "bf16=always", "model.layers=1", "model.feed_forward=64",
            "optim.batch_size=4", "sample.epoch_repeats=4", "schedule.max_steps=2", "schedule.save_every=2"]
    assert train_landmark.main(args) == 0
    assert _bf16_contexts(made) == 2
    state = torch.load(tmp_path / "step_000000002.pt", weights_only=True)["model"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_a_renderer_training_step_in_bf16(records, tmp_path, monkeypatch):
    import train_render

    made = _spy_autocast(monkeypatch, train_render)
    args = ["--config", str(REPO / "configs" / "render_smoke.yaml"), f"data.records={records}", f"run_dir={tmp_path}",
            "data.val_list=null", "bf16=always", "optim.batch_size=2", "sample.refs=1", "sample.epoch_repeats=2",
            "schedule.warmup_epochs=0", "schedule.max_steps=1", "schedule.save_every=1"]
    assert train_render.main(args) == 0
    assert _bf16_contexts(made) == 1
    checkpoint = torch.load(tmp_path / "step_000000001.pt", weights_only=True)
    for state in (checkpoint["model"], checkpoint["others"]["discriminator"]):
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_a_short_dub_in_bf16(samples, random_checkpoints, tmp_path, monkeypatch):
    import cv2

    import dubbing
    from data.audio import SAMPLE_RATE, frames_covered, load_audio
    from data.video import VideoReader, VideoWriter, read_frames

    with VideoReader(samples / "talk_a.mp4") as reader:
        frames = [cv2.resize(next(iter(reader)), (256, 256), interpolation=cv2.INTER_AREA)]
    template = tmp_path / "face.mp4"
    with VideoWriter(template) as writer:
        writer.write(frames[0])
    speech = load_audio(samples / "talk_b.mp4")[: int(0.2 * SAMPLE_RATE)]
    with VideoWriter(tmp_path / "carrier.mp4", audio=speech) as writer:  # any file with an audio track will do
        writer.write(np.zeros((64, 64, 3), np.uint8))
    audio = tmp_path / "carrier.mp4"
    made = _spy_autocast(monkeypatch, dubbing)
    config = dubbing.default_config()
    config.update(refs=1, bf16="always")
    models = dubbing.load_models(*random_checkpoints, "cpu")
    result = dubbing.dub(template, audio, tmp_path / "out.mp4", models, config, progress=False)
    assert result.frames == frames_covered(len(load_audio(audio))) and result.rendered == result.frames
    assert _bf16_contexts(made) >= 3  # references, landmarks, renderer
    out = read_frames(tmp_path / "out.mp4")
    assert len(out) == result.frames and out[0].shape == (256, 256, 3)
