import numpy as np
import pytest
import torch

from metrics.identity import IResNet, face_batch, identity_similarity, load_arcface


def test_arcface_iresnet100_layout_loads_and_identical_faces_have_similarity_one(tmp_path, talk_a_frames):
    network = IResNet()
    state = network.state_dict()
    # arcface_torch's iresnet100: 3/13/30/3 units, 512 * 7 * 7 -> 512 fc, BatchNorm1d "features"; about 65.2M params
    assert "layer3.29.conv2.weight" in state and "layer4.3.bn1.weight" not in state
    assert state["fc.weight"].shape == (512, 25088) and "features.running_var" in state
    assert sum(p.numel() for p in network.parameters()) == pytest.approx(65.16e6, rel=1e-3)
    torch.save(state, tmp_path / "backbone.pth")
    loaded = load_arcface(tmp_path / "backbone.pth")
    boxes = [np.array([250, 200, 650, 700])] * 2
    real = face_batch(talk_a_frames[:2], boxes)
    assert real.shape == (2, 3, 112, 112) and real.min() >= -1 and real.max() <= 1
    assert torch.allclose(identity_similarity(loaded, real, real), torch.ones(2, dtype=torch.float64))
    other = face_batch([np.ascontiguousarray(f[::-1]) for f in talk_a_frames[:2]], boxes)  # upside down
    assert (identity_similarity(loaded, other, real) < 0.999).all()
