"""Starting a new run from another model's weights (--init REF, config init.source): fine-tuning.

REF is anything the loaders take (model_files/checkpoints.py): an official IP_LAP file, a step_*.pt of this project, an
export (file or folder), each by path or hf:// reference with #sha256=. The network's weights are loaded, and the
discriminator's where the source has one (a run's checkpoint; an export made with --with-discriminator); the run
itself starts afresh: step 0, new optimisers, new RNG streams. The run's config records the source's sha256
(init.sha256); a sha256 already set there is checked instead, so a recorded config.yaml starts from the same bytes.

A renderer of a larger face size than a 128 source takes the 128 core (every tensor whose name and shape the two
share); the input and output levels that only the larger network has start from their fresh initialisation, and
the report says which tensors loaded and which started fresh. Any other difference of names or shapes is a one-line
error naming both shapes.
"""
from __future__ import annotations

import torch

from data.errors import InputError
from data.face_size import BASE_SIZE
from training.distributed import Distributed, bare


def growth_tensors(face_size: int) -> set[str]:
    """Names of a `face_size` renderer's tensors that the BASE_SIZE renderer has not with the same shape: the
    levels a larger face adds (its input stems, the upsampling levels, and the convolutions that meet them)."""
    from models.renderer import Renderer

    with torch.device("meta"):  # shapes only
        base = {name: tensor.shape for name, tensor in Renderer(face_size=BASE_SIZE).state_dict().items()}
        grown = Renderer(face_size=face_size).state_dict()
    return {name for name, tensor in grown.items() if base.get(name) != tensor.shape}


def transfer(source: dict[str, torch.Tensor], target: torch.nn.Module, path, fresh: set[str] = frozenset()
             ) -> tuple[list[str], list[str]]:
    """Copy `source` into `target` tensor by tensor; the names in `fresh` keep the target's own values. Returns
    (loaded names, fresh names). A tensor the two do not share, or share with another shape, is a one-line
    InputError naming `path` and both shapes."""
    expected = target.state_dict()
    loaded, kept = [], []
    for name, tensor in expected.items():
        if name in fresh:
            kept.append(name)
        elif name not in source:
            if not name.endswith("num_batches_tracked"):  # BatchNorm counters: older files lack them
                raise InputError(path, f"tensor '{name}' {tuple(tensor.shape)} of this network is not in the source "
                                       "(built with other model settings?)")
        elif source[name].shape != tensor.shape:
            raise InputError(path, f"tensor '{name}' has shape {tuple(source[name].shape)} in the source and "
                                   f"{tuple(tensor.shape)} in this network")
        else:
            loaded.append(name)
    unexpected = [name for name in source if name not in expected]
    if unexpected:
        raise InputError(path, f"tensor '{unexpected[0]}' {tuple(source[unexpected[0]].shape)} of the source has "
                               "no place in this network (built with other model settings?)")
    with torch.no_grad():
        for name in loaded:
            expected[name].copy_(source[name])
    return loaded, kept


def summary(names: list[str]) -> str:
    """Tensor names shortened to their modules, in order, without repeats ('translation.up.0.conv', ...)."""
    modules = dict.fromkeys(name.rpartition(".")[0] or name for name in names)
    return ", ".join(modules)


def initialise(config: dict, env: Distributed, model: torch.nn.Module, others: dict | None = None) -> None:
    """Load config init.source into `model` (a LandmarkGenerator or Renderer, possibly DDP-wrapped) and, for a
    renderer, into others['discriminator'] where the source has one; record the source's sha256 in the config.
    Nothing happens when init.source is null."""
    from model_files.checkpoints import NETWORKS, landmark_generator_of, read_checkpoint, renderer_of
    from models.renderer import Renderer

    init = config.get("init") or {}
    reference = init.get("source")
    if not reference:
        return
    network = bare(model)
    kind = "renderer" if isinstance(network, Renderer) else "landmark_generator"
    checkpoint = read_checkpoint(reference, kind)
    if init.get("sha256") and str(init["sha256"]).lower() != checkpoint.sha256:
        raise InputError(reference, f"has sha256 {checkpoint.sha256}, not the {init['sha256']} that init.sha256 "
                                    "gives")
    source = (renderer_of if kind == "renderer" else landmark_generator_of)(checkpoint)
    fresh: set[str] = set()
    if kind == "renderer" and source.face_size != network.face_size:
        if source.face_size != BASE_SIZE or network.face_size < BASE_SIZE:
            raise InputError(checkpoint.path, f"holds a renderer of {source.face_size}x{source.face_size} faces; a "
                                              f"{network.face_size}x{network.face_size} run starts from the same "
                                              f"size or grows from a {BASE_SIZE}x{BASE_SIZE} one")
        fresh = growth_tensors(network.face_size)
    loaded, kept = transfer(source.state_dict(), network, checkpoint.path, fresh)
    lines = [f"init: {NETWORKS[kind]} from {reference}, {checkpoint.layout} layout, sha256 {checkpoint.sha256}: "
             f"{len(loaded)} tensors loaded, {len(kept)} started fresh" + (f" ({summary(kept)})" if kept else "")]
    discriminator = (others or {}).get("discriminator")
    if discriminator is not None:
        lines.append(_initialise_discriminator(reference, checkpoint, bare(discriminator), bool(fresh)))
    if env.main:
        print("\n".join(lines), flush=True)
    config["init"] = {**init, "source": str(reference), "sha256": checkpoint.sha256}


def _initialise_discriminator(reference, checkpoint, discriminator: torch.nn.Module, growing: bool) -> str:
    """Load the source's discriminator, if it has one; a grown renderer's extra scales start fresh. The report
    line."""
    from model_files.discriminator_files import discriminator_of, discriminator_state

    found = discriminator_state(reference, checkpoint)
    if found is None:
        return "init: discriminator starts fresh (the source has none)"
    state, args = found
    source = discriminator_of(state, args, checkpoint.path).state_dict()
    extra = {name for name in discriminator.state_dict() if name not in source} if growing else set()
    loaded, kept = transfer(source, discriminator, checkpoint.path, extra)
    return (f"init: discriminator from the source: {len(loaded)} tensors loaded, {len(kept)} started fresh"
            + (f" ({summary(kept)})" if kept else ""))
