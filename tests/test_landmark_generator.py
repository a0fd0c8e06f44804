
import numpy as np
import pytest
import torch

from data.errors import InputError
from losses.landmark import landmark_loss, velocity_loss
from model_files import load_landmark_generator
from models import LandmarkGenerator
from testing.checkpoints import official_state


def _inputs(batch=2, steps=5, refs=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, steps, 1, 80, 16, generator=g), torch.rand(batch, steps, 2, 74, generator=g),
            torch.rand(batch, refs, 2, 74, generator=g), torch.rand(batch, refs, 2, 57, generator=g))


def test_output_shape_and_dtype():
    model = LandmarkGenerator().eval()
    with torch.no_grad():
        out = model(*_inputs(batch=2, refs=7))
    assert out.shape == (2, 5, 2, 57) and out.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 13_724_394  # the official count


def test_sliding_windows_from_per_frame_tokens_equal_the_plain_forward():
    """Inference encodes each frame and the references once and gathers overlapping windows from the tokens."""
    torch.manual_seed(0)
    model = LandmarkGenerator().eval()
    mels, pose, ref_pose, ref_content = _inputs(batch=1, steps=9, refs=15)
    starts = [0, 1, 2, 4]
    windows = torch.tensor([[s + j for j in range(5)] for s in starts])  # (4, 5) overlapping
    with torch.no_grad():
        plain = model(mels[0][windows], pose[0][windows], ref_pose.expand(4, -1, -1, -1),
                      ref_content.expand(4, -1, -1, -1))
        audio, pose_tokens = model.encode_frames(mels[0], pose[0])  # each of the 9 frames once
        shared = model.fuse(model.encode_references(ref_pose, ref_content), audio[windows], pose_tokens[windows])
    assert shared.shape == (4, 5, 2, 57)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)


def test_heads_read_interleaved_pairs():
    model = LandmarkGenerator().eval()
    with torch.no_grad():
        model.jaw_head.weight.zero_()
        model.lip_head.weight.zero_()
        model.jaw_head.bias.copy_(torch.arange(34.0))
        model.lip_head.bias.copy_(100 + torch.arange(80.0))
        out = model(*_inputs(batch=1))
    # Jaw point j is (2j, 2j+1); lip point i is (100+2i, 101+2i): rows x then y.
    np.testing.assert_array_equal(out[0, 0, 0, :3].numpy(), [0, 2, 4])
    np.testing.assert_array_equal(out[0, 0, 1, :3].numpy(), [1, 3, 5])
    np.testing.assert_array_equal(out[0, 4, 0, 17:19].numpy(), [100, 102])


def _schema_state(prefix=""):
    return official_state("landmark_generator", seed=1, prefix=prefix)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_state_from_the_schema_loads_completely_and_runs(tmp_path, prefix):
    state = _schema_state(prefix)
    path = tmp_path / "landmarkgenerator_checkpoint.pth"
    torch.save({"state_dict": state, "optimizer": None, "global_step": 3, "global_epoch": 1}, path)
    model = load_landmark_generator(path)
    assert not model.training
    loaded = model.state_dict()
    torch.testing.assert_close(loaded["lip_head.weight"], state[prefix + "mouse_keypoint_map.weight"])
    torch.testing.assert_close(loaded["norm.bias"], state[prefix + "Norm.bias"])
    with torch.no_grad():
        assert torch.isfinite(model(*_inputs())).all()


def test_bad_official_files_name_the_tensor(tmp_path):
    state = _schema_state()
    state["mouse_keypoint_map.weight"] = torch.zeros(81, 512)
    torch.save({"state_dict": state}, tmp_path / "wrong.pth")
    with pytest.raises(InputError, match="'lip_head.weight' has shape"):
        load_landmark_generator(tmp_path / "wrong.pth")
    state = _schema_state()
    del state["ref_encoder.3.conv_block.1.running_mean"]
    torch.save({"state_dict": state}, tmp_path / "missing.pth")
    with pytest.raises(InputError, match="'ref_encoder.3.conv_block.1.running_mean' is missing"):
        load_landmark_generator(tmp_path / "missing.pth")
    with pytest.raises(InputError, match="checkpoint not found"):
        load_landmark_generator(tmp_path / "nowhere.pth")
    (tmp_path / "text.pth").write_text("nope")
    with pytest.raises(InputError, match="not a readable"):
        load_landmark_generator(tmp_path / "text.pth")


def test_project_checkpoint_round_trip(tmp_path):
    model = LandmarkGenerator(layers=2).eval()
    torch.save({"kind": "landmark_generator", "model": model.state_dict(), "model_args": {"layers": 2}},
               tmp_path / "ours.pt")
    loaded = load_landmark_generator(tmp_path / "ours.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(*_inputs()), model(*_inputs()))


def test_velocity_loss_equals_a_hand_computation():
    pred = torch.zeros(1, 3, 2, 57)
    true = torch.zeros(1, 3, 2, 57)
    pred[0, 1, 0, 0] = 3.0  # predicted steps: +3 then -3 on one coordinate
    true[0, 2, 1, 5] = 4.0  # true steps: 0 then +4 on another
    # Step 1 differs by (3, 0) -> 3; step 2 by (-3, -4) -> 5; mean 4 (plus the 1e-6 offset on 114 entries).
    expected = (np.sqrt(3.000001**2 + 113e-12) + np.sqrt(2.999999**2 + 3.999999**2 + 112e-12)) / 2
    assert velocity_loss(pred, true).item() == pytest.approx(expected, rel=1e-6)
    total, parts = landmark_loss(pred, true, velocity_weight=0.5)
    assert parts["l1"].item() == pytest.approx(7.0 / (3 * 114))
    assert total.item() == pytest.approx(parts["l1"].item() + 0.5 * expected, rel=1e-6)


def test_overfits_one_batch_of_real_landmarks(records):
    from data.audio import mel_windows
    from data.landmarks import content_of, pose_of
    from data.records import load_clip

    torch.manual_seed(0)
    clip = load_clip(records / "talk_a")
    frames = np.arange(40, 45)
    refs = np.arange(0, 125, 9)[:15]
    mels = torch.from_numpy(mel_windows(clip.mel, frames))[None, :, None]  # (1, 5, 1, 80, 16)
    pose = torch.from_numpy(pose_of(clip.landmarks[frames]))[None]
    content = torch.from_numpy(content_of(clip.landmarks[frames]))[None]
    ref_pose = torch.from_numpy(pose_of(clip.landmarks[refs]))[None]
    ref_content = torch.from_numpy(content_of(clip.landmarks[refs]))[None]
    model = LandmarkGenerator(dropout=0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(60):
        loss, parts = landmark_loss(model(mels, pose, ref_pose, ref_content), content)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(parts["l1"].item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]
