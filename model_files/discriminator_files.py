"""The renderer's discriminator in checkpoint files, so that a published renderer can be fine-tuned adversarially.

A project step_*.pt holds it under 'others' (its constructor arguments in the run's config, key 'discriminator').
An export made with `python -m model_files.export --with-discriminator` holds it as a second safetensors file beside the
renderer's, `discriminator.safetensors` (metadata: format, kind 'discriminator', model_args); the renderer file's
own metadata names that file and its sha256, so a loader fetches exactly the file exported with it (from a folder,
a path or a hub reference alike). The official release has no discriminator.
"""
from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import torch

from data.errors import InputError, one_line
from model_files import hub
from model_files.checkpoints import EXPORT_FORMAT, Checkpoint
from model_files.weights import load_exactly, strip_module_prefix
from models.discriminator import MultiscaleDiscriminator

DISCRIMINATOR_FILE = "discriminator.safetensors"
KIND = "discriminator"
# Keys of the renderer export's metadata that point at its discriminator.
FILE_KEY, SHA256_KEY = "discriminator", "discriminator_sha256"


def safetensors_metadata(path: Path) -> dict:
    """The '__metadata__' mapping of a safetensors file's header ({} when it has none)."""
    with open(path, "rb") as file:
        length = struct.unpack("<Q", file.read(8))[0]
        header = json.loads(file.read(length))
    return header.get("__metadata__") or {}


def write_discriminator(discriminator: torch.nn.Module, args: dict, path: Path) -> None:
    """The discriminator's state dict as safetensors, with its constructor arguments in the metadata."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in discriminator.state_dict().items()}
    save_file(state, str(path), metadata={"format": EXPORT_FORMAT, "kind": KIND, "model_args": json.dumps(args)})


def pointer_metadata(path: Path) -> dict:
    """What the renderer export's metadata says of a discriminator file written at `path`: its name and sha256."""
    from data.samples import sha256

    return {FILE_KEY: path.name, SHA256_KEY: sha256(path)}


def _sibling(reference: str | Path, name: str, digest: str) -> hub.Reference:
    """The reference of file `name` beside the file (or inside the folder) `reference` names, pinned to `digest`."""
    ref = hub.parse(reference)
    if ref.names_folder():
        return dataclasses.replace(ref.inside(name), sha256=digest)
    if not ref.on_hub:
        return dataclasses.replace(ref, local=ref.local.with_name(name), sha256=digest)
    folder = ref.path.rpartition("/")[0]
    return dataclasses.replace(ref, path=f"{folder}/{name}".lstrip("/"), sha256=digest)


def discriminator_state(reference: str | Path, checkpoint: Checkpoint) -> tuple[dict, dict] | None:
    """(state dict, constructor arguments) of the discriminator that comes with a renderer checkpoint; None when
    the source has none (an official file, a run's file without one, an export made without it)."""
    contents = checkpoint.contents
    if checkpoint.layout == "project":
        state = (contents.get("others") or {}).get(KIND)
        if state is None:
            return None
        args = (contents.get("config") or {}).get(KIND) or {}
        return strip_module_prefix(state), dict(args)
    if checkpoint.layout != "export":
        return None
    metadata = safetensors_metadata(checkpoint.path)
    if FILE_KEY not in metadata:
        return None
    path = hub.resolve(_sibling(reference, metadata[FILE_KEY], metadata[SHA256_KEY]), "discriminator file")
    return read_discriminator_file(path)


def read_discriminator_file(path: Path) -> tuple[dict, dict]:
    """(state dict, constructor arguments) of a discriminator.safetensors, with one-line errors."""
    from safetensors.torch import load_file

    try:
        metadata = safetensors_metadata(path)
        state = load_file(str(path))
    except Exception as error:  # cut, foreign or unreadable: the same to a user
        raise InputError(path, f"not a readable discriminator file ({one_line(error)[:160]})") from None
    if metadata.get("format") != EXPORT_FORMAT or metadata.get("kind") != KIND:
        raise InputError(path, "a safetensors file without this project's discriminator metadata")
    return state, json.loads(metadata.get("model_args", "{}"))


def discriminator_of(state: dict, args: dict, path: str | Path) -> MultiscaleDiscriminator:
    """The discriminator a (state dict, constructor arguments) pair describes, every tensor's name and shape
    checked (one-line errors naming `path`)."""
    try:
        discriminator = MultiscaleDiscriminator(**args)
    except TypeError as error:
        raise InputError(path, f"holds a discriminator this code cannot build ({error})") from None
    load_exactly(discriminator, state, path, "discriminator")
    return discriminator
