"""The mixed-precision path without a GPU: `bf16: always` runs the networks under CPU bf16 autocast, the path that
`bf16: true` takes on CUDA. Forward passes agree with float32 to bf16's precision; one training step of each
trainer and a short dub complete with finite results."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import config as settings
from conftest import REPO
from data.errors import InputError
from metrics.image import psnr
from models.landmark_generator import LandmarkGenerator
from models.renderer import Renderer, flow_to_grid, warp, warp_in_float32

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


def _textured(size: int, generator: torch.Generator) -> torch.Tensor:
    """(1, 3, size, size) smooth random texture in 0..1: bicubic noise, detail at every scale down to 4 px."""
    noise = torch.rand(1, 3, size // 4, size // 4, generator=generator)
    return F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def test_the_warp_is_float32_under_autocast_and_equals_the_float32_warp():
    g = torch.Generator().manual_seed(3)
    image = _textured(128, g)
    # A smooth sub-pixel motion field, rounded to bf16 as the flow convolution would give it under autocast.
    flow = (F.interpolate(torch.rand(1, 2, 8, 8, generator=g) * 2 - 1, size=(128, 128), mode="bilinear"))
    exact = warp(image, flow_to_grid(flow))
    with settings.autocast(CPU, "always"):
        (warped,) = warp_in_float32(flow.bfloat16(), (image,))
        quantised = warp(image, flow_to_grid(flow.bfloat16()))  # the grid in the flow's dtype
    assert warped.dtype == torch.float32
    assert (warped - exact).abs().max().item() <= 1 / 255
    assert (quantised.float() - exact).abs().max().item() > 4 / 255  # what the float32 region prevents


def test_renderer_forward_under_cpu_bf16(tmp_path, monkeypatch):
    # Official-layout weights (random, with BatchNorm statistics), loaded as a user loads the official file. The
    # networks are fully convolutional: 32x32 inputs keep CPU bf16 (emulated without AVX-512 BF16) affordable.
    from test_renderer import _official_file

    from model_files import load_renderer

    torch.manual_seed(0)
    official = Renderer()
    with torch.no_grad():
        for name, buffer in official.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    model = load_renderer(_official_file(official.state_dict(), tmp_path / "official.pth"))
    g = torch.Generator().manual_seed(2)
    face = _textured(32, g)
    sketch = lambda *s: (torch.rand(*s, generator=g) > 0.92).float().expand(*s[:-3], 3, *s[-2:]) * 0.88  # noqa: E731
    refs = torch.roll(face, 1, dims=-1)[:, None]
    inputs = (face, sketch(1, 5, 1, 32, 32), refs, sketch(1, 1, 1, 32, 32), torch.randn(1, 1, 80, 16, generator=g))
    sampled = []
    grid_sample = F.grid_sample

    def spy(source, grid, *args, **kwargs):
        sampled.append((source.dtype, grid.dtype, torch.is_autocast_enabled("cpu")))
        return grid_sample(source, grid, *args, **kwargs)

    with torch.no_grad():
        full, full_warped = model(*inputs)
        monkeypatch.setattr(F, "grid_sample", spy)
        with settings.autocast(CPU, "always"):
            half, warped = model(*inputs)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half.float()).all() and torch.isfinite(warped).all()
    assert (half.float() - full).abs().max().item() < 0.05  # outputs are images in 0..1
    # Every warp sampled float32 sources at a float32 grid with autocast off, the same rule on CPU and CUDA.
    assert sampled and set(sampled) == {(torch.float32, torch.float32, False)}
    # Measured at these inputs: 59.9 dB with the float32 region, 42.7 dB with the grid in bf16.
    assert psnr(warped.float(), full_warped, 1e-10).item() >= 55


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

    import data.datasets

    class SmallFrames(data.datasets.RenderFrames):
        """The records' 128x128 images at 32x32 on the device: the same step (the networks are fully
        convolutional), affordable under CPU bf16, which is emulated without AVX-512 BF16 (a 256-channel 3x3
        convolution at 64x64 costs about 300 times its float32 time here)."""

        def to_device(self, batch, device):
            return {k: F.interpolate(v.flatten(0, -4), size=(32, 32), mode="area").unflatten(0, v.shape[:-3])
                    if v.shape[-2:] == (128, 128) else v for k, v in super().to_device(batch, device).items()}

    monkeypatch.setattr(data.datasets, "RenderFrames", SmallFrames)
    args = ["--config", str(REPO / "configs" / "render_smoke.yaml"), f"data.records={records}", f"run_dir={tmp_path}",
            "data.val_list=null", "bf16=always", "optim.batch_size=2", "sample.refs=1", "sample.epoch_repeats=2",
            "schedule.warmup_epochs=0", "schedule.max_steps=1", "schedule.save_every=1"]
    assert train_render.main(args) == 0
    assert _bf16_contexts(made) == 1
    checkpoint = torch.load(tmp_path / "step_000000001.pt", weights_only=True)
    for state in (checkpoint["model"], checkpoint["others"]["discriminator"]):
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.slow  # five 128x128 renders in CPU bf16, emulated without AVX-512 BF16 (measured on a 2-core AVX2
# machine: one 256-channel 3x3 convolution at 64x64 took 50 s in bf16 against 0.16 s in float32)
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
