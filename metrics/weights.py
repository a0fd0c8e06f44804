"""Where the metric networks' weight files come from, and how one is found on this machine.

A weight file is looked up in this order: the path given on the command line or in the config; the torch hub
cache (`torch.hub.get_dir()/checkpoints/<file>`, where torchvision and pytorch-fid put their downloads); a
download into that cache when the file has a public URL and the machine is online. When all fail, the error
names the file and where to get it. No metric ever falls back to random weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from data.errors import InputError, one_line


@dataclass(frozen=True)
class WeightFile:
    """One metric network's weights: the metric it serves, the file name, its public URL (if any), its source."""

    metric: str
    file: str
    url: str | None
    source: str
    option: str  # the evaluate.py option (and config key) that points at it


LPIPS_ALEXNET = WeightFile(
    "LPIPS", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "torchvision's AlexNet ImageNet weights (the LPIPS lin layers ship inside the lpips package)", "lpips_weights")
FID_INCEPTION = WeightFile(
    "FID", "pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "the pytorch-fid release (the TensorFlow FID Inception ported to PyTorch)", "fid_weights")
ARCFACE_R100 = WeightFile(
    "CSIM", "ms1mv3_arcface_r100.pth", None,
    "backbone.pth of ms1mv3_arcface_r100_fp16 in the insightface arcface_torch model zoo "
    "(github.com/deepinsight/insightface/tree/master/recognition/arcface_torch), saved under this name",
    "arcface_weights")
SYNCNET_V2 = WeightFile(
    "SyncScore", "syncnet_v2.model", "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
    "the syncnet_python release (github.com/joonson/syncnet_python, download_model.sh)", "syncnet_weights")

ALL = (LPIPS_ALEXNET, FID_INCEPTION, ARCFACE_R100, SYNCNET_V2)


def cache_path(weight: WeightFile) -> Path:
    """The file's place in the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weight.file


def _where(weight: WeightFile) -> str:
    get = weight.url or weight.source
    flag = "--" + weight.option.replace("_", "-")
    return f"get {weight.file} from {get} and put it in {cache_path(weight).parent}, or pass {flag}"


def resolve(weight: WeightFile, path: str | Path | None = None, download: bool = True) -> Path:
    """Path of an existing weight file: `path` if given, else the hub cache, else downloaded there (when online)."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise InputError(path, f"{weight.metric} weights not found ({_where(weight)})")
        return path
    cached = cache_path(weight)
    if cached.is_file():
        return cached
    if download and weight.url is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weight.url, str(cached), progress=False)
            return cached
        except Exception as error:  # offline or blocked: fall through to the one-line error
            cached.unlink(missing_ok=True)
            raise InputError(cached, f"{weight.metric} weights not found and not downloadable "
                                     f"({one_line(error)[:80]}); {_where(weight)}") from None
    raise InputError(cached, f"{weight.metric} weights not found; {_where(weight)}")


def load_state(path: Path, weight: WeightFile) -> dict[str, torch.Tensor]:
    """A state dict from a weight file (unwrapping a {'state_dict': ...} checkpoint and a DataParallel prefix)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(path, f"not a readable {weight.metric} weight file ({one_line(error)[:120]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, f"not a {weight.metric} state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_exactly(network: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, weight: WeightFile) -> None:
    """Load `state` into `network`: every tensor with its shape, or a one-line InputError naming the first miss."""
    own = network.state_dict()
    # Files saved before PyTorch 0.4.1 (syncnet_v2.model) have no BatchNorm batch counters; eval never uses them.
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}" if unexpected
                  else f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}")
        raise InputError(path, f"not {weight.metric} weights for this network ({detail})")
    network.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def frozen(network: torch.nn.Module) -> torch.nn.Module:
    """The network in eval mode with gradients off."""
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.eval()
