"""The renderer at 256 and 512: the paper's network at its core, the size at its ends (docs/method.md, section 9)."""
import pytest
import torch

from models.renderer import BASE_SIZE, Renderer, mask_lower_half
from testing.checkpoints import official_tensors


def _inputs(size, batch=1, refs=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    sketch = lambda *s: (torch.rand(*s, generator=g) > 0.92).float().expand(*s[:-3], 3, *s[-2:]) * 0.88  # noqa: E731
    return (torch.rand(batch, 3, size, size, generator=g), sketch(batch, 5, 1, size, size),
            torch.rand(batch, refs, 3, size, size, generator=g), sketch(batch, refs, 1, size, size),
            torch.randn(batch, 1, 80, 16, generator=g))


def test_at_128_the_network_is_the_official_one():
    official = [e["name"] for e in official_tensors("renderer") if not e["name"].startswith("perceptual.")]
    assert len(Renderer(128).state_dict()) == len(official)  # no extra level, no extra tensor
    with pytest.raises(ValueError, match="face size 192"):
        Renderer(192)


@pytest.mark.parametrize("size", [256, 512])
def test_outputs_have_the_face_size_and_the_core_works_at_128(size):
    torch.manual_seed(0)
    model = Renderer(size).eval()
    seen = {}

    def size_of(name):
        def hook(module, args, out):
            seen[name] = tuple(out.shape[-2:])
        return hook

    modules = {"spade_1": model.alignment.spade_1, "flow": model.alignment.flow, "adain_2": model.translation.adain_2}
    hooks = [module.register_forward_hook(size_of(name)) for name, module in modules.items()]
    with torch.no_grad():
        face, warped = model(*_inputs(size))
    for hook in hooks:
        hook.remove()
    assert face.shape == warped.shape == (1, 3, size, size)
    assert torch.isfinite(face).all() and 0 <= face.min() and face.max() <= 1
    half = BASE_SIZE // 2
    assert seen == {"spade_1": (half, half), "flow": (BASE_SIZE, BASE_SIZE), "adain_2": (BASE_SIZE, BASE_SIZE)}


def test_references_are_blended_at_full_size():
    # A flat reference image: whatever the motion fields and weights, the blend of N copies of one value is that
    # value wherever the warp samples inside the image (the border meets grid_sample's zero padding).
    torch.manual_seed(1)
    model = Renderer(256).eval()
    face, sketches, _, ref_sketches, mels = _inputs(256, refs=2)
    flat = torch.full((1, 2, 3, 256, 256), 0.3)
    with torch.no_grad():
        _, warped = model(face, sketches, flat, ref_sketches, mels)
        model.alignment.flow.weight.zero_()
        model.alignment.flow.bias.zero_()
        _, still = model(face, sketches, torch.rand(1, 2, 3, 256, 256), ref_sketches, mels)
    torch.testing.assert_close(warped[..., 64:192, 64:192], torch.full((1, 3, 128, 128), 0.3), atol=1e-4, rtol=0)
    # With no motion every reference sits in place at 256: the blend of two random images has their mean's
    # fine detail, which a blend done at 128 and upsampled would have lost.
    detail = (still[..., 1:, :] - still[..., :-1, :]).abs().mean()
    assert detail > 0.05


def test_the_upper_face_reaches_the_output_at_full_size(size=256):
    # The encoder's skip carries the unmasked upper face into the last level at S: cutting the skip's weights
    # changes how an output pixel depends on the input pixel under it, and the masked lower half never counts.
    torch.manual_seed(2)
    model = Renderer(size).eval().requires_grad_(False)  # gradients for the face only
    face, sketches, refs, _, mels = _inputs(size, refs=1)
    g = torch.Generator().manual_seed(3)
    warped_h1, warped_h2 = torch.rand(1, 32, 128, 128, generator=g), torch.rand(1, 256, 64, 64, generator=g)
    y, x = size // 4, size // 2

    def gradient(render=False):
        grad_face = face.clone().requires_grad_(True)
        if render:  # the whole render step, which masks the face itself
            out = model.render(grad_face, sketches, model.encode_references(refs, refs), mels)[0]
        else:
            inputs = torch.cat([mask_lower_half(grad_face), sketches.flatten(1, 2)], dim=1)
            out = model.translation(inputs, refs[:, 0], warped_h1, warped_h2, mels)
        out[0, :, y, x].sum().backward()
        return grad_face.grad[0].abs().sum(0)

    rendered = gradient(render=True)
    assert rendered[size // 2:].sum() == 0 and rendered[: size // 2].sum() > 0  # render masks the lower half
    grad = gradient()
    last = model.translation.up[-1].conv
    with torch.no_grad():
        last.weight[:, last.in_channels - 3 - 15:].zero_()  # the skip's channels: the face and 5 sketches
    cut = gradient()
    assert grad[y, x] > 0 and (grad[y, x] - cut[y, x]).abs() > 0.1 * grad[y, x]


@pytest.mark.slow
def test_two_samples_at_256_overfit(samples):
    """On 2 real faces at 256 the reconstruction L1 falls at least 3x in 20 Adam steps (the full architecture, N=1)."""
    import numpy as np

    from data.video import read_frames

    frames = read_frames(samples / "talk_a.mp4")[:40:39]  # two frames a second and a half apart
    faces = []
    for frame in frames:
        h, w = frame.shape[:2]
        side = min(h, w)
        crop = np.ascontiguousarray(frame[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2])
        tensor = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
        faces.append(torch.nn.functional.interpolate(tensor, size=(256, 256), mode="area"))
    face = torch.cat(faces)
    torch.manual_seed(0)
    _, sketches, _, ref_sketches, mels = _inputs(256, batch=2, refs=1)
    refs = face.flip(0)[:, None]  # each sample's reference is the other face
    model = Renderer(256)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        out, _ = model(face, sketches, refs, ref_sketches, mels)
        loss = (out - face).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 3, losses[::10]


def test_a_dub_at_256_crops_renders_and_pastes_at_256(samples, tmp_path):
    import dubbing
    from data.video import VideoReader
    from models.landmark_generator import LandmarkGenerator

    torch.manual_seed(0)
    calls = []

    def recording(renderer, refs, faces, sketches, mels):
        calls.append((tuple(faces.shape[1:]), tuple(sketches.shape[2:])))
        return dubbing.network.render_faces(renderer, refs, faces, sketches, mels)

    models = dubbing.Models(LandmarkGenerator().eval(), Renderer(256).eval(), torch.device("cpu"), recording)
    config = dubbing.default_config()
    config.update(refs=1, batch_size=4, audio_seconds=0.2)
    template = samples / "template_129.mp4"
    result = dubbing.dub(template, samples / "speech_audio2.wav", tmp_path / "out.mp4", models, config, progress=False)
    assert calls and set(calls) == {((3, 256, 256), (3, 256, 256))}
    with VideoReader(template) as source:
        first = next(iter(source))
    with VideoReader(tmp_path / "out.mp4", source.source_fps) as output:  # the template's own rate
        frames = list(output)
    assert len(frames) == result.frames > 0 and frames[0].shape == first.shape


def test_a_256_checkpoint_and_its_export_load_as_the_256_network(tmp_path):
    import json

    from model_files import load_renderer
    from model_files.export import export

    torch.manual_seed(3)
    trained = Renderer(256)
    path = tmp_path / "step_000000001.pt"
    torch.save({"kind": "renderer", "model": trained.state_dict(), "model_args": {"face_size": 256}}, path)
    loaded = load_renderer(path)
    assert loaded.face_size == 256
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.state_dict().items())
    export(path, tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["model_args"]["face_size"] == 256
    card = (tmp_path / "export" / "README.md").read_text()
    assert "(RGB, 256x256)" in card and "128x128" not in card
    assert load_renderer(tmp_path / "export").face_size == 256


@pytest.mark.slow
def test_evaluate_generates_with_a_256_renderer(samples, tmp_path, monkeypatch, capsys):
    import evaluate
    from data.audio import SAMPLE_RATE, load_audio
    from data.video import VideoWriter, read_frames
    from testing.checkpoints import project_checkpoints, renderer_checkpoint

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    landmark, renderer = project_checkpoints(tmp_path / "checkpoints")
    renderer_checkpoint(renderer, 256)
    frames = read_frames(samples / "talk_a.mp4")[:10]
    video = tmp_path / "videos" / "set" / "talk_a.mp4"
    video.parent.mkdir(parents=True)
    with VideoWriter(video, audio=load_audio(samples / "talk_a.mp4")[:int(0.4 * SAMPLE_RATE)]) as writer:
        for frame in frames:
            writer.write(frame)
    (tmp_path / "test.txt").write_text("set/talk_a\n")
    (tmp_path / "dub.yaml").write_text("refs: 1\n")
    code = evaluate.main(["--setting", "reconstruction", "--filelist", str(tmp_path / "test.txt"), "--video-root",
                          str(tmp_path / "videos"), "--landmark-ckpt", str(landmark), "--renderer-ckpt", str(renderer),
                          "--num-videos", "1", "--out", str(tmp_path / "out"), "--inference-config",
                          str(tmp_path / "dub.yaml"), "--skip-missing", "--no-download", "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    generated = read_frames(tmp_path / "out" / "generated" / "set" / "talk_a.mp4")
    assert len(generated) >= 9 and generated[0].shape == frames[0].shape
    assert "| IP_LAP (reconstruction)" in capsys.readouterr().out
