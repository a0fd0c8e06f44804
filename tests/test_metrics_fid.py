import numpy as np
import pytest
import torch

from data.errors import InputError
from metrics.fid import FEATURES, fid, frechet_distance, load_fid_features, statistics


def test_frechet_distance_equals_the_closed_form_for_two_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.2, 3, 6), rng.uniform(0.2, 3, 6)
    sigma1, sigma2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T  # commuting
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == \
        pytest.approx(9 + 1)
    # general (non-commuting) covariances against an eigen-decomposition formula
    m1, m2 = rng.normal(size=(2, 5, 5))
    s1, s2 = m1 @ m1.T, m2 @ m2.T
    root = np.linalg.cholesky(s1)
    middle = np.linalg.eigvalsh(root.T @ s2 @ root)
    expected = np.sum((mu1[:5] - mu2[:5]) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(middle))
    assert frechet_distance(mu1[:5], s1, mu2[:5], s2) == pytest.approx(expected, rel=1e-9)


def test_fid_of_singular_covariances_is_about_zero_for_identical_sets_and_grows_with_a_shift():
    features = np.random.default_rng(1).normal(size=(10, 64))  # 10 samples in 64-d: rank-9 covariance
    same = fid(features, features)
    assert abs(same) < 1e-2
    assert fid(features, features + 0.5) == pytest.approx(same + 64 * 0.25, abs=1e-2)
    mu, sigma = statistics(features)
    assert mu.dtype == np.float64 and sigma.shape == (64, 64)


def test_fid_network_loads_pytorch_fid_layout_and_gives_pool3_features(tmp_path):
    from metrics.fid import fid_inception_network

    state = fid_inception_network().state_dict()
    assert "fc.weight" in state and state["fc.weight"].shape == (1008, 2048) and "AuxLogits.fc.weight" not in state
    torch.save(state, tmp_path / "pt_inception.pth")
    network = load_fid_features(tmp_path / "pt_inception.pth")
    with torch.no_grad():
        assert network(torch.rand(2, 3, 64, 80)).shape == (2, FEATURES)
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(InputError, match="Mixed_7c.branch_pool.conv.weight"):
        load_fid_features(tmp_path / "broken.pth")
