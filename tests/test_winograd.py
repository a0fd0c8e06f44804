"""models/winograd.py: F(4x4, 3x3) convolutions equal the direct sum (against float64), fall back where they do not
apply, follow a changed weight, keep a network's state dict, and a whole dub's faces stay within the runtime bounds
of oneDNN's direct convolution, at 128 and 256."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dubbing
from models import winograd
from models.layers import SPADELayer
from models.renderer import Renderer
from testing.checkpoints import renderer_checkpoint
from testing.runtimes import check_bounds, faces_of_both, short_media


def winograd_conv(cin: int, cout: int, bias: bool = True, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)
    assert winograd.use_winograd(conv) == 1 and isinstance(conv, winograd.WinogradConv2d)
    return conv


def direct64(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    bias = None if conv.bias is None else conv.bias.double()
    return F.conv2d(x.double(), conv.weight.double(), bias, 1, 1)


@pytest.mark.parametrize("shape,cout,bias", [((2, 128, 8, 12), 64, True), ((1, 256, 64, 64), 256, True),
                                             ((3, 160, 20, 4), 512, False)])
def test_equals_the_direct_sum(shape, cout, bias):
    conv = winograd_conv(shape[1], cout, bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        assert winograd.applies(x)
        got = conv(x)
    expected = direct64(x, conv)
    scale = expected.abs().max().item()
    error = (got.double() - expected).abs().max().item()
    direct_error = (F.conv2d(x, conv.weight, conv.bias, 1, 1).double() - expected).abs().max().item()
    assert got.shape == expected.shape and got.dtype == torch.float32
    # float32 rounding of the transforms: a few hundred times one float32 step of the output's scale at most,
    # and of the order of the direct convolution's own (a wrong matrix or offset is off by the scale itself)
    assert error < 2e-5 * scale and error < 100 * direct_error, (error, direct_error, scale)


def test_known_value():
    """A one-channel-pair kernel with a single 1 at its centre copies the input; a 1 at its top-left shifts it
    down-right by one pixel with zeros coming in (padding 1)."""
    conv = winograd_conv(128, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 5, 1, 1] = 1
        conv.weight[1, 7, 0, 0] = 1
    x = torch.randn(1, 128, 8, 8)
    with torch.inference_mode():
        out = conv(x)
    torch.testing.assert_close(out[0, 0], x[0, 5], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, 1, 1:, 1:], x[0, 7, :-1, :-1], atol=1e-5, rtol=0)
    assert out[0, 1, 0].abs().max() < 1e-5 and out[0, 1, :, 0].abs().max() < 1e-5


def test_falls_back_to_the_direct_convolution_where_it_does_not_apply():
    conv = winograd_conv(128, 32)
    conv64 = winograd_conv(128, 32).double()
    cases = {"not divisible by 4": (conv, torch.randn(1, 128, 10, 8)),
             "a plane over 64x64": (conv, torch.randn(1, 128, 64, 68)),
             "float64": (conv64, torch.randn(1, 128, 8, 8, dtype=torch.float64))}
    for name, (network, x) in cases.items():
        with torch.inference_mode():
            assert not winograd.applies(x), name
            assert torch.equal(network(x), F.conv2d(x, network.weight, network.bias, 1, 1)), name
    x = torch.randn(1, 128, 8, 8)
    out = conv(x)  # gradients on: training never runs by Winograd
    assert out.requires_grad and torch.equal(out, F.conv2d(x, conv.weight, conv.bias, 1, 1))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd.applies(x) and conv(x).dtype == torch.bfloat16
    assert not winograd.applies(torch.randn(1, 64, 8, 8))  # too few channels


def test_follows_a_changed_weight():
    conv = winograd_conv(128, 16)
    x = torch.randn(1, 128, 8, 8)
    with torch.inference_mode():
        before = conv(x)
    with torch.no_grad():
        conv.weight.mul_(-2)
    with torch.inference_mode():
        after = conv(x)
    torch.testing.assert_close(after, direct64(x, conv).float(), atol=1e-4, rtol=0)
    assert not torch.allclose(after, before, atol=1e-2)


def test_fused_modulation_shares_the_input_transform():
    torch.manual_seed(0)
    layer = SPADELayer(256, 15)
    condition = torch.randn(2, 15, 16, 16)
    with torch.inference_mode():
        expected = layer.modulation_of(condition)
        assert winograd.use_winograd(layer) == 2  # gamma and beta (256 hidden channels); conv1 has 15
        got = layer.modulation_of(condition)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_renderer_keeps_its_state_dict_and_converts_the_wide_convolutions():
    renderer = Renderer().eval()
    state = {k: v.clone() for k, v in renderer.state_dict().items()}
    count = winograd.use_winograd(renderer)
    converted = {name for name, m in renderer.named_modules() if isinstance(m, winograd.WinogradConv2d)}
    # the alignment's two 256-channel SPADE blocks: 2 convolutions and 2 modulations (gamma, beta) of 2 layers
    assert {f"alignment.spade_{b}.conv_{i}" for b in (1, 2) for i in (1, 2)} <= converted
    assert "alignment.spade_3.conv_1" not in converted  # 64 channels
    assert count == len(converted) == 37
    after = renderer.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())


def test_load_models_uses_it_on_the_cpu_when_asked(random_checkpoints):
    def converted(models):
        return sum(isinstance(m, winograd.WinogradConv2d) for m in models.renderer.modules())

    assert converted(dubbing.load_models(*random_checkpoints, "cpu")) == 0
    assert converted(dubbing.load_models(*random_checkpoints, "cpu", winograd=True)) == 37
    assert dubbing.default_config()["winograd"] is True


@pytest.fixture(scope="module")
def media(samples, tmp_path_factory) -> tuple[Path, Path]:
    return short_media(samples, tmp_path_factory.mktemp("winograd"))


def winograd_step(landmark: Path, renderer: Path):
    models = dubbing.load_models(landmark, renderer, "cpu", winograd=True)
    return lambda network, refs, faces, sketches, mels: dubbing.render_faces(models.renderer, refs, faces, sketches,
                                                                             mels)


@pytest.mark.parametrize("face_size", [128, 256])
def test_a_dubs_faces_stay_within_the_bounds_of_the_direct_convolution(face_size, media, random_checkpoints,
                                                                       tmp_path):
    renderer = random_checkpoints[1] if face_size == 128 else renderer_checkpoint(tmp_path / "r.pt", face_size)
    step = winograd_step(random_checkpoints[0], renderer)
    expected, got = faces_of_both(media, random_checkpoints[0], renderer, step, tmp_path)
    check_bounds(expected, got, face_size)
    assert (expected != got).any()  # it did run: the rounding differs somewhere
