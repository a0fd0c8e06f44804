import pytest
import torch

from data.errors import InputError, one_line
from metrics import weights
from metrics.lpips_alex import load_lpips
from model_files.weights import cache_path, resolve


def test_missing_weight_file_is_a_one_line_error_naming_the_file_and_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    for weight in weights.ALL:
        with pytest.raises(InputError) as error:
            resolve(weight, download=False)
        message = one_line(error.value)
        assert "\n" not in str(error.value) and weight.file in message
        assert (weight.url or "insightface") in message and weight.option in message
    with pytest.raises(InputError, match="syncnet_v2.model"):
        resolve(weights.SYNCNET_V2, tmp_path / "nowhere" / "syncnet_v2.model")


def test_weights_are_found_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    cached = cache_path(weights.LPIPS_ALEXNET)
    assert cached.parent == tmp_path / "hub" / "hub" / "checkpoints"
    cached.parent.mkdir(parents=True)
    from torchvision.models import alexnet

    trunk = alexnet(weights=None)
    torch.save(trunk.state_dict(), cached)
    # Random weights under the published name: the cached copy is held to the name's sha256 prefix.
    with pytest.raises(InputError, match="weights in the cache have sha256 .*not the published 7be5be79"):
        resolve(weights.LPIPS_ALEXNET, download=False)
    model = load_lpips(cached, download=False)
    assert torch.equal(model.net.slice5._modules["10"].weight, trunk.features[10].weight)
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(model(x, x, normalize=True).flatten(), torch.zeros(2))
    assert (model(x, x.flip(-1), normalize=True).flatten() > 0).all()


def test_a_file_of_other_weights_is_a_one_line_error(tmp_path):
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not LPIPS weights"):
        load_lpips(tmp_path / "other.pth")
