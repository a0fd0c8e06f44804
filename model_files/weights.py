"""Weight files: where one is found, how it is downloaded, and how its tensors are loaded into a network.

A pretrained file (VGG19 for the perceptual loss, the metric networks) is looked up in this order: the path or hub
reference (model_files/hub.py) from the command line or config; the torch hub cache
(`torch.hub.get_dir()/checkpoints/<file>`, where torchvision and pytorch-fid keep their downloads); a download into
that cache when the file has a public URL and the machine is online. Downloads go over https, show a progress bar,
are written under a temporary name and renamed into place when complete, and are checked against the sha256 prefix
that the file's publisher puts in its name (torchvision's and pytorch-fid's convention) or, for a file whose
publisher states none, the full sha256 this project pins. A file found in the cache is held to the same digest,
hashed once per process. When everything fails, the one-line error names the file and where to get it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from data.errors import InputError, one_line
from data.samples import sha256
from model_files import hub


@dataclass(frozen=True)
class WeightFile:
    """A pretrained file: what it serves, its name, its public URL and hash prefix (if any), where it comes from."""

    what: str           # e.g. 'VGG19', 'LPIPS': names the file in errors
    file: str
    url: str | None
    sha256_prefix: str | None  # the leading hex digits of its sha256 that the publisher states
    source: str
    option: str         # the option (and config key) that points at a local copy
    sha256: str | None = None  # the whole digest, pinned here where the publisher states none

    @property
    def digest(self) -> str | None:
        """What a download and a cached copy are checked against: the pinned sha256, else the published prefix."""
        return self.sha256 or self.sha256_prefix


def cache_path(weight: WeightFile) -> Path:
    """The file's place in the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weight.file


def where_to_get(weight: WeightFile) -> str:
    get = weight.url or weight.source
    return f"get {weight.file} from {get} and put it in {cache_path(weight).parent}, or set {weight.option}"


def fetch_url(url: str, destination: Path, sha256_prefix: str | None, progress: bool = True) -> None:
    """Fetch `url` to `destination` atomically, checking the sha256 prefix; nothing is left behind on failure."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    # torch.hub writes to a temporary file beside the destination, checks the hash, then moves it into place.
    torch.hub.download_url_to_file(url, str(destination), hash_prefix=sha256_prefix, progress=progress)


def resolve(weight: WeightFile, path: str | Path | None = None, download: bool = True,
            progress: bool = True) -> Path:
    """Path of an existing weight file: `path` if given (a path or hub reference, model_files/hub.py), else the
    torch hub cache, else downloaded there (when online)."""
    if path is not None:
        return hub.resolve(path, f"{weight.what} weights", hint=where_to_get(weight))
    cached = cache_path(weight)
    if cached.is_file():
        check_cached(weight, cached)
        return cached
    if download and weight.url is not None:
        try:
            fetch_url(weight.url, cached, weight.digest, progress)
        except Exception as error:  # offline, blocked, or not the published file
            if "invalid hash value" in str(error):
                raise InputError(weight.url, f"the download of {weight.file} does not match its published sha256 "
                                             f"prefix {weight.digest}; it was not kept") from None
            raise InputError(cached, f"{weight.what} weights not found and not downloadable "
                                     f"({one_line(error)[:80]}); {where_to_get(weight)}") from None
        return cached
    raise InputError(cached, f"{weight.what} weights not found; {where_to_get(weight)}")


_checked: set[tuple[str, int, int]] = set()  # cached files (path, size, mtime) already hashed in this process


def check_cached(weight: WeightFile, path: Path) -> None:
    """A one-line InputError unless the cached file has the digest its download would have been checked against;
    each version of a file is hashed once per process (a metric run resolves its weights many times)."""
    if weight.digest is None:
        return
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _checked:
        return
    found = sha256(path)
    if not found.startswith(weight.digest):
        raise InputError(path, f"{weight.what} weights in the cache have sha256 {found}, not the published "
                               f"{weight.digest}; delete the file to download it again, or set {weight.option}")
    _checked.add(key)


def read_file(path: str | Path, what: str, data: bytes | None = None) -> object:
    """torch.load onto the CPU (tensors only), with a one-line error for a missing or unreadable file; `data`: the
    file's bytes, already read."""
    path = Path(path)
    if data is None and not path.is_file():
        raise InputError(path, f"{what} file not found")
    try:
        return torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean the same to a user
        raise InputError(path, f"not a readable {what} file ({one_line(error)[:160]})") from None


def strip_module_prefix(state: dict) -> dict:
    """Drop one leading 'module.' (DataParallel/DDP) from every key that has it."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def read_state(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a weight file ({'state_dict': ...} unwrapped, 'module.' prefixes dropped)."""
    state = read_file(path, what)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, f"not a {what} state dict")
    return strip_module_prefix(state)


def load_exactly(network: nn.Module, state: dict, path: str | Path, what: str = "") -> None:
    """Load a state dict that holds every tensor of the network with the network's shape, and nothing else.

    BatchNorm batch counters may be absent (files saved before PyTorch 0.4.1, such as syncnet_v2.model, have
    none; evaluation never reads them). Anything else is a one-line InputError naming the first tensor at fault.
    """
    prefix = f"not {what} weights for this network: " if what else ""
    expected = network.state_dict()
    for name, tensor in state.items():
        if name not in expected:
            raise InputError(path, f"{prefix}unexpected tensor '{name}' {tuple(tensor.shape)}")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise InputError(path, f"{prefix}tensor '{name}' has shape {tuple(tensor.shape)}, "
                                   f"expected {tuple(expected[name].shape)}")
    missing = [name for name in expected if name not in state and not name.endswith("num_batches_tracked")]
    if missing:
        raise InputError(path, f"{prefix}tensor '{missing[0]}' is missing ({len(missing)} missing in all)")
    network.load_state_dict(state, strict=False)


def frozen(network: nn.Module) -> nn.Module:
    """The network in eval mode with gradients off."""
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.eval()
