"""Checkpoint files with random weights, in the official release's layout or this project's.

The official layout comes from `official_tensors.tsv` beside this file: every tensor of the official IP_LAP
checkpoints (github.com/Weizhi-Zhong/IP_LAP at 9b9dc03f) in state_dict order, as the official classes build them
(docs/method.md, section 8). Random values are small and BatchNorm variances positive, so the networks give finite,
non-trivial outputs; the sinusoidal tables the landmark generator stores are the real ones, since loading checks them.
"""
from __future__ import annotations

from pathlib import Path

import torch

from models.layers import sinusoidal_encoding

TENSOR_TABLE = Path(__file__).with_name("official_tensors.tsv")
OFFICIAL_FILES = {"landmark_generator": "landmarkgenerator_checkpoint.pth", "renderer": "renderer_checkpoint.pth"}


def official_tensors(network: str) -> list[dict]:
    """Every tensor of an official checkpoint ('landmark_generator' or 'renderer'): name, shape, dtype, in order."""
    entries = []
    for line in TENSOR_TABLE.read_text().splitlines():
        if line.startswith("#"):
            continue
        net, name, shape, dtype, _ = line.split("\t")
        if net == network:
            entries.append({"name": name, "shape": [] if shape == "-" else [int(n) for n in shape.split("x")],
                            "dtype": dtype})
    return entries


def official_state(network: str, seed: int = 0, prefix: str = "", scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A random state dict with every tensor of the official `network`, under its official names (+ `prefix`)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for entry in official_tensors(network):
        name, shape = entry["name"], entry["shape"]
        if name.endswith(("position_v.pe", "position_a.pe")):
            tensor = sinusoidal_encoding(shape[1], shape[2])[None]
        elif entry["dtype"] == "int64":
            tensor = torch.tensor(7)
        elif name.endswith("running_var"):
            tensor = torch.rand(shape, generator=g) + 0.5
        else:
            tensor = scale * torch.randn(shape, generator=g)
        state[prefix + name] = tensor
    return state


def save_official(state: dict, path: str | Path, step: int = 0) -> Path:
    """`state` saved as the official release saves its checkpoints (state_dict, optimizer, step, epoch)."""
    torch.save({"state_dict": state, "optimizer": None, "global_step": step, "global_epoch": 0}, path)
    return Path(path)


def official_checkpoints(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Random official-layout landmark generator and renderer files (names as released) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return tuple(save_official(official_state(network, seed + i, prefix="module."), folder / file)
                 for i, (network, file) in enumerate(OFFICIAL_FILES.items()))


def renderer_checkpoint(path: str | Path, face_size: int, seed: int = 0) -> Path:
    """A random renderer at `face_size` saved in this project's checkpoint format at `path`."""
    from models.renderer import Renderer

    torch.manual_seed(seed)
    state = Renderer(face_size=face_size).state_dict()
    torch.save({"kind": "renderer", "model": state, "model_args": {"face_size": face_size}}, path)
    return Path(path)


def project_checkpoints(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """A random landmark generator and renderer saved in this project's checkpoint format in `folder`."""
    from models.landmark_generator import LandmarkGenerator
    from models.renderer import Renderer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    paths = folder / "landmark.pt", folder / "renderer.pt"
    for path, kind, network in zip(paths, ("landmark_generator", "renderer"), (LandmarkGenerator(), Renderer())):
        torch.save({"kind": kind, "model": network.state_dict(), "model_args": {}}, path)
    return paths
