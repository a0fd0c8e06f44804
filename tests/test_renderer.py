import platform

import pytest
import torch
import torch.nn.functional as F

from allocator import keep_freed_memory
from data.errors import InputError
from losses.gan import feature_matching_loss, lsgan_loss
from losses.perceptual import PerceptualLoss, gram, load_vgg19_features
from model_files import load_renderer
from model_files.checkpoints import official_renderer_name, renamed_renderer_state
from models import Renderer
from models.discriminator import MultiscaleDiscriminator
from models.renderer import ALIGNMENT_BUDGET, PAIR_BYTES, flow_to_grid, reference_chunk
from testing.checkpoints import official_state, official_tensors, save_official
from testing.memory import LiveTensorBytes
from testing.reference_renderer import per_reference_forward


def _inputs(batch=2, refs=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    sketch = lambda *s: (torch.rand(*s, generator=g) > 0.92).float().expand(*s[:-3], 3, *s[-2:]) * 0.88  # noqa: E731
    return (torch.rand(batch, 3, 128, 128, generator=g), sketch(batch, 5, 1, 128, 128),
            torch.rand(batch, refs, 3, 128, 128, generator=g), sketch(batch, refs, 1, 128, 128),
            torch.randn(batch, 1, 80, 16, generator=g))


@pytest.fixture(scope="module")
def renderer():
    torch.manual_seed(0)
    model = Renderer().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is really exercised
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("batch,refs", [(2, 1), (2, 3), (1, 7)])  # on CPU: 1, 3 and 3 passes (3 + 3 + 1 refs)
def test_shared_modulation_equals_the_per_reference_formulation(renderer, batch, refs):
    inputs = _inputs(batch=batch, refs=refs)
    with torch.no_grad():
        generated, warped = renderer(*inputs)
        expected_generated, expected_warped = per_reference_forward(renderer, *inputs)
    assert generated.shape == (batch, 3, 128, 128) and warped.shape == (batch, 3, 128, 128)
    assert 0 <= generated.min() and generated.max() <= 1
    assert (warped - expected_warped).abs().max() < 1e-5
    assert (generated - expected_generated).abs().max() < 1e-5


def test_reference_chunks_bound_every_pass():
    """On CPU a few (frame, reference) pairs a pass (cache-sized); on CUDA as many as the memory budget holds."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [reference_chunk(1, 25, cpu), reference_chunk(1, 2, cpu), reference_chunk(4, 3, cpu)] == [3, 2, 1]
    pairs = ALIGNMENT_BUDGET // PAIR_BYTES
    assert reference_chunk(1, 25, cuda) == 25 and reference_chunk(16, 600, cuda) == pairs // 16
    assert reference_chunk(pairs * 2, 25, cuda) == 1  # never less than one reference a pass


def test_pair_bytes_bounds_the_alignments_memory_per_pair_and_chunks_bound_a_pass(renderer, monkeypatch):
    """Measured, not derived from the constants: the bytes of tensors alive at once in one alignment pass, at 64x64
    (every map scales with the pixels, so a 128x128 pair needs 4x), for 6 references in chunks of 2 and of 6."""
    import models.renderer

    g = torch.Generator().manual_seed(5)

    def peak(count: int, chunk: int) -> int:
        images, sketches = torch.rand(1, count, 3, 64, 64, generator=g), torch.rand(1, count, 3, 64, 64, generator=g)
        target = torch.rand(1, 5, 3, 64, 64, generator=g)
        monkeypatch.setattr(models.renderer, "reference_chunk", lambda batch, count, device: chunk)
        with torch.inference_mode():
            refs = renderer.alignment.encode_references(images, sketches)
            with LiveTensorBytes() as live:
                renderer.alignment(refs, target)
        return live.peak

    chunked, whole = peak(6, 2), peak(6, 6)
    per_pair = (whole - chunked) / 4 * (128 * 128) / (64 * 64)  # the 4 more pairs of the whole pass, at 128x128
    assert PAIR_BYTES / 4 < per_pair <= PAIR_BYTES  # the GPU's chunks, sized by PAIR_BYTES, keep to the budget
    assert chunked + 2 * per_pair / 4 < whole  # a pass holds its chunk's pairs, not every reference's


def test_allocator_setting_takes_on_glibc():
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is on_glibc


def test_twenty_five_references(renderer):
    """The official script's N=25, over several reference chunks: 25 copies of one reference blend to what that
    reference gives alone (the aggregation is a weighted mean, sum_i w_i x_i / (sum_i w_i + 1e-5))."""
    face, sketches, ref_images, ref_sketches, mels = _inputs(batch=1, refs=1)
    with torch.no_grad():
        alone = renderer(face, sketches, ref_images, ref_sketches, mels)
        copies = renderer(face, sketches, ref_images.repeat(1, 25, 1, 1, 1), ref_sketches.repeat(1, 25, 1, 1, 1), mels)
    assert copies[0].shape == copies[1].shape == (1, 3, 128, 128)
    for got, expected in zip(copies, alone):
        assert (got - expected).abs().max() < 1e-3


def test_references_encoded_once_serve_every_frame(renderer):
    face, sketches, ref_images, ref_sketches, mels = _inputs(batch=3, refs=2)
    ref_images, ref_sketches = ref_images[:1], ref_sketches[:1]
    with torch.no_grad():
        refs = renderer.encode_references(ref_images, ref_sketches)  # one video's references
        shared, _ = renderer.render(face, sketches, refs, mels)
        each, _ = renderer(face, sketches, ref_images.expand(3, -1, -1, -1, -1),
                           ref_sketches.expand(3, -1, -1, -1, -1), mels)
    torch.testing.assert_close(shared, each, atol=1e-6, rtol=1e-5)


def test_the_lower_half_of_the_target_face_is_not_seen(renderer):
    face, sketches, ref_images, ref_sketches, mels = _inputs(batch=1, refs=1)
    other = face.clone()
    other[:, :, 64:] = torch.rand_like(other[:, :, 64:])
    with torch.no_grad():
        torch.testing.assert_close(renderer(face, sketches, ref_images, ref_sketches, mels)[0],
                                   renderer(other, sketches, ref_images, ref_sketches, mels)[0])


def test_zero_flow_is_the_identity_grid():
    grid = flow_to_grid(torch.zeros(1, 2, 4, 5))
    torch.testing.assert_close(grid[0, 0, :, 0], torch.linspace(-1, 1, 5))
    torch.testing.assert_close(grid[0, :, 0, 1], torch.linspace(-1, 1, 4))
    shifted = flow_to_grid(torch.ones(1, 2, 4, 5))  # one pixel right and down
    torch.testing.assert_close(shifted[0, 0, 0], torch.tensor([-0.5, -1 + 2 / 3]))


def _official_file(state, path, prefix="module."):
    """`state` saved as the official release saves a renderer (official tensor names, under 'module.')."""
    return save_official({prefix + official_renderer_name(k): v for k, v in state.items()}, path)


def test_official_names_round_trip_through_the_rename_table():
    official = [e["name"] for e in official_tensors("renderer") if not e["name"].startswith("perceptual.")]
    ours = renamed_renderer_state(dict.fromkeys(official))
    assert sorted(ours) == sorted(Renderer().state_dict())  # every official tensor has a place here
    assert [official_renderer_name(name) for name in ours] == official


def test_a_checkpoint_with_the_old_submodule_names_still_loads(renderer, tmp_path):
    old = {official_renderer_name(k): v for k, v in renderer.state_dict().items()}
    torch.save({"kind": "renderer", "model": old, "model_args": {}}, tmp_path / "old.pt")
    loaded = load_renderer(tmp_path / "old.pt")
    for name, tensor in renderer.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_schema_state_loads_completely_vgg_is_routed(tmp_path):
    state = official_state("renderer", seed=2, scale=0.02)
    path = _official_file(state, tmp_path / "renderer_checkpoint.pth")
    model = load_renderer(path)
    assert not model.training
    with torch.no_grad():
        out, _ = model(*_inputs(batch=1, refs=2))
    assert torch.isfinite(out).all()
    vgg = load_vgg19_features(path)  # the perceptual weights the file carries
    torch.testing.assert_close(vgg[0].weight, state["perceptual.model.network.0.weight"])
    del state["translation.spade_2.spade_layer_1.beta.bias"]
    with pytest.raises(InputError, match="'translation.spade_2.spade_layer_1.beta.bias' is missing"):
        load_renderer(_official_file(state, tmp_path / "broken.pth"))


def test_official_bgr_weights_work_on_rgb_inputs(renderer, tmp_path):
    # Treat `renderer` as an official (BGR) network; loaded, it must give the same face on RGB inputs.
    rgb = load_renderer(_official_file(renderer.state_dict(), tmp_path / "official.pth"))
    face, sketches, ref_images, ref_sketches, mels = _inputs(batch=1, refs=2)
    flip = lambda x: x.flip(-3)  # noqa: E731  (channel axis of (..., 3, H, W))
    with torch.no_grad():
        bgr_out, bgr_warped = renderer(flip(face), sketches, flip(ref_images), ref_sketches, mels)
        rgb_out, rgb_warped = rgb(face, sketches, ref_images, ref_sketches, mels)
    torch.testing.assert_close(rgb_out, flip(bgr_out), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rgb_warped, flip(bgr_warped), atol=1e-5, rtol=1e-4)


def test_project_checkpoint_round_trip(renderer, tmp_path):
    torch.save({"kind": "renderer", "model": renderer.state_dict(), "model_args": {}}, tmp_path / "ours.pt")
    loaded = load_renderer(tmp_path / "ours.pt")
    inputs = _inputs(batch=1, refs=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs)[0], renderer(*inputs)[0])


def test_discriminator_outputs_and_gan_losses():
    disc = MultiscaleDiscriminator()
    outputs = disc(torch.rand(2, 3, 128, 128))
    assert len(outputs) == 2 and len(outputs[0]) == 5
    assert outputs[0][-1].shape[:2] == (2, 1) and outputs[1][0].shape[-1] < outputs[0][0].shape[-1]
    ones = [[torch.zeros(1), torch.ones(4)], [torch.zeros(1), torch.ones(2)]]
    assert lsgan_loss(ones, real=True).item() == 0.0 and lsgan_loss(ones, real=False).item() == 2.0
    fake = [[torch.full((3,), 2.0), torch.zeros(1)]]
    real = [[torch.zeros(3), torch.zeros(1)]]
    assert feature_matching_loss(fake, real).item() == pytest.approx(4.0 / 1 * 2.0)


def test_perceptual_and_style_losses():
    torch.manual_seed(0)
    loss = PerceptualLoss(load_vgg19_features(allow_random=True))
    x = torch.rand(2, 3, 64, 64)
    perceptual, style = loss(x, x.clone(), style=True)
    assert perceptual.item() == 0.0 and style.item() == 0.0
    blurred = F.avg_pool2d(x, 5, 1, 2)
    assert loss(blurred, x)[0] > 0 and loss(x, x)[1] is None
    features = torch.arange(8.0).view(1, 2, 2, 2)
    expected = torch.tensor([[[0 + 1 + 4 + 9, 0 + 5 + 12 + 21], [0 + 5 + 12 + 21, 16 + 25 + 36 + 49]]]) / 8
    torch.testing.assert_close(gram(features), expected)
    assert not any(p.requires_grad for p in loss.parameters())


def test_missing_vgg_weights_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="missing.pth: VGG19 ImageNet weights not found"):
        load_vgg19_features(tmp_path / "missing.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(InputError, match="vgg19-dcbb9e9d.pth: VGG19 ImageNet weights not found"):
        load_vgg19_features()


def test_warp_only_gives_the_same_warped_reference(renderer):
    inputs = _inputs(batch=1, refs=2)
    with torch.no_grad():
        nothing, warped = renderer(*inputs, warp_only=True)
        torch.testing.assert_close(warped, renderer(*inputs)[1])
    assert nothing is None


def test_shared_target_features_give_the_same_losses():
    torch.manual_seed(0)
    loss = PerceptualLoss(load_vgg19_features(allow_random=True))
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    direct = loss(x, y, style=True)
    shared = loss(x, style=True, targets=loss.targets(y))
    torch.testing.assert_close(direct[0], shared[0])
    torch.testing.assert_close(direct[1], shared[1])
