"""Loading checkpoints: this project's files, the official IP_LAP release's, and exports, told apart automatically.

Official files (github.com/Weizhi-Zhong/IP_LAP, README "Test": landmarkgenerator_checkpoint.pth and
renderer_checkpoint.pth) are torch.save'd dicts {'state_dict', 'optimizer', 'global_step', 'global_epoch'} from
CUDA models, keys possibly prefixed 'module.' (DataParallel). This project's files are dicts with 'kind',
'model' (state dict) and 'model_args' (constructor keywords). An export (model_files/export.py) is a safetensors file
of the network's state dict under this project's names, with 'kind' and 'model_args' in its metadata; its folder
may stand for it. Any of them may be named by a hub reference (model_files/hub.py). Every load checks each tensor's
name and shape and prints the sha256 of the file it read.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from data.errors import InputError, one_line
from model_files import hub
from model_files.model_args import checked_model_args
from model_files.weights import load_exactly, read_file, strip_module_prefix
from models.landmark_generator import LandmarkGenerator
from models.layers import sinusoidal_encoding
from models.renderer import Renderer

OFFICIAL_SOURCE = ("docs/models.md (the official release's download links are dead; a re-hosted copy loads by "
                   "hf:// reference)")
NETWORKS = {"landmark_generator": "landmark generator", "renderer": "renderer"}  # kind -> its name in messages
EXPORT_FILES = {kind: f"{kind}.safetensors" for kind in NETWORKS}  # an export folder's weights file
EXPORT_FORMAT = "iplap-export-1"  # the safetensors metadata's 'format': what this loader reads

# Official landmark-generator names that differ from ours (prefix renames).
LANDMARK_RENAMES = {"mouse_keypoint_map.": "lip_head.", "jaw_keypoint_map.": "jaw_head.", "Norm.": "norm."}
# Official buffers we compute instead of storing: each must equal our table.
LANDMARK_FIXED = ("fusion_transformer.position_v.pe", "fusion_transformer.position_a.pe")


@dataclass
class Checkpoint:
    """A checkpoint file as read: where it is, the sha256 of its bytes, its layout ('official', 'project' or
    'export'), and its contents, an official dict ({'state_dict', ...}) or this project's ({'kind', 'model',
    'model_args', ...}; an export's are given that shape)."""

    path: Path
    sha256: str
    layout: str
    contents: dict


def is_safetensors(data: bytes) -> bool:
    """Whether bytes look like a safetensors file: an 8-byte header length, then the JSON header."""
    return len(data) > 9 and data[8:9] == b"{" and 2 <= struct.unpack("<Q", data[:8])[0] <= len(data) - 8


def export_contents(data: bytes, path: Path) -> dict:
    """An export's bytes -> {'kind', 'model', 'model_args'}, as this project's checkpoints hold them."""
    from safetensors.torch import load

    try:
        length = struct.unpack("<Q", data[:8])[0]
        metadata = json.loads(data[8:8 + length]).get("__metadata__") or {}
        state = load(data)
    except Exception as error:  # a cut or foreign file: safetensors and json errors mean the same to a user
        raise InputError(path, f"not a readable safetensors file ({one_line(error)[:160]})") from None
    if (not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT
            or metadata.get("kind") not in NETWORKS):
        raise InputError(path, "a safetensors file without this project's export metadata (kind, model_args); "
                               "export checkpoints with python -m model_files.export")
    try:
        args = json.loads(metadata.get("model_args", "{}"))
    except (TypeError, ValueError) as error:
        raise InputError(path, f"model_args in the metadata is not JSON ({one_line(error)[:120]})") from None
    return {"kind": metadata["kind"], "model": state, "model_args": args}


def export_folder_kind(reference: str | Path) -> str | None:
    """The network an export folder holds (its config.json says; a local folder may show it by its one weights
    file); None when the reference does not name a folder."""
    ref = hub.parse(reference)
    if not ref.names_folder():
        return None
    if not ref.on_hub and not (ref.local / "config.json").is_file():
        present = [kind for kind, name in EXPORT_FILES.items() if (ref.local / name).is_file()]
        if len(present) == 1:
            return present[0]
    config = hub.resolve(dataclasses.replace(ref.inside("config.json"), sha256=None), "export folder's config.json")
    try:
        kind = json.loads(config.read_text()).get("kind")
    except (OSError, ValueError, AttributeError) as error:
        raise InputError(config, f"not an export's config.json ({one_line(error)[:120]})") from None
    if kind not in NETWORKS:
        raise InputError(config, "names neither network under 'kind'")
    return kind


def checkpoint_file(reference: str | Path, kind: str | None, require_sha256: bool = False) -> Path:
    """The local file a checkpoint reference names (a path, an export folder, or hf://..., downloaded into the
    Hugging Face cache), its sha256 checked when the reference gives one (and the reference refused without one
    when require_sha256). kind None: either network (an export folder's config.json says which)."""
    kind = kind or export_folder_kind(reference)
    what = f"{NETWORKS[kind]} checkpoint" if kind else "checkpoint"
    return hub.resolve(reference, what, inside=EXPORT_FILES[kind] if kind else None,
                       hint=f"see {OFFICIAL_SOURCE}, or train one with this project", require_sha256=require_sha256)


def read_checkpoint(reference: str | Path, kind: str | None, require_sha256: bool = False) -> Checkpoint:
    """The checkpoint a reference names, read once and hashed, with one-line errors for a missing, unreadable or
    foreign file. kind None: either network (`checkpoint_kind` tells which)."""
    what = NETWORKS[kind] if kind else "network"
    path = checkpoint_file(reference, kind, require_sha256)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(path, f"cannot read the {what} checkpoint ({one_line(error)[:120]})") from None
    sha256 = hashlib.sha256(data).hexdigest()
    if is_safetensors(data):
        return Checkpoint(path, sha256, "export", export_contents(data, path))
    contents = read_file(path, f"{what} checkpoint", data)
    if not isinstance(contents, dict) or not ({"state_dict", "model"} & set(contents)):
        raise InputError(path, f"not a {what} checkpoint (no 'state_dict' or 'model' entry)")
    entry = "model" if "model" in contents else "state_dict"
    if not isinstance(contents[entry], dict) or not all(isinstance(v, torch.Tensor) for v in contents[entry].values()):
        raise InputError(path, f"not a {what} checkpoint ('{entry}' is not a mapping of tensors)")
    return Checkpoint(path, sha256, "official" if "model" not in contents else "project", contents)


def checkpoint_kind(contents: dict) -> str | None:
    """'landmark_generator' or 'renderer' for a checkpoint's contents (an official file by its tensor names);
    None when neither."""
    if "model" in contents:
        kind = contents.get("kind")
        return None if kind is None else str(kind)  # a foreign value is no network's name
    names = strip_module_prefix(contents.get("state_dict") or {})
    if any(name.startswith(("flow_module.", "translation.")) for name in names):
        return "renderer"
    if any(name.startswith(("fusion_transformer.", "mel_encoder.")) for name in names):
        return "landmark_generator"
    return None


def _check_kind(checkpoint: Checkpoint, kind: str) -> None:
    found = checkpoint_kind(checkpoint.contents)
    if "model" in checkpoint.contents and found is None:
        return  # this project's earliest files said no kind; load_exactly still checks every tensor
    if found != kind:
        holds = f"a {NETWORKS[found]}" if found in NETWORKS else "neither network"
        raise InputError(checkpoint.path, f"holds {holds}, not a {NETWORKS[kind]}")


def report_loaded(checkpoint: Checkpoint, kind: str, reference: str | Path) -> None:
    """One line on stdout, with the run's other report lines (stderr keeps warnings and errors): which network was
    loaded from what, and the sha256 of the bytes that were read."""
    source = str(reference) if str(reference) == str(checkpoint.path) else f"{reference} ({checkpoint.path})"
    print(f"{NETWORKS[kind]}: {source}, {checkpoint.layout} layout, sha256 {checkpoint.sha256}")


def official_landmark_state(state: dict, path: Path) -> dict:
    """Official landmark-generator state dict -> this project's names; the fixed sinusoid tables are checked."""
    state = strip_module_prefix(state)
    converted = {}
    for name, tensor in state.items():
        if name in LANDMARK_FIXED:
            table = sinusoidal_encoding(tensor.shape[-2], tensor.shape[-1])
            if tensor.dim() != 3 or not torch.allclose(tensor[0].float(), table, atol=1e-5):
                raise InputError(path, f"tensor '{name}' is not the sinusoidal position table")
            continue
        for old, new in LANDMARK_RENAMES.items():
            if name.startswith(old):
                name = new + name[len(old):]
        converted[name] = tensor
    missing_fixed = [name for name in LANDMARK_FIXED if name not in state]
    if missing_fixed:
        raise InputError(path, f"tensor '{missing_fixed[0]}' is missing")
    return converted


def landmark_generator_of(checkpoint: Checkpoint) -> LandmarkGenerator:
    """The landmark generator a checkpoint holds, on the CPU, every tensor's name and shape checked."""
    _check_kind(checkpoint, "landmark_generator")
    contents, path = checkpoint.contents, checkpoint.path
    if "model" in contents:
        state = strip_module_prefix(contents["model"])
        model = LandmarkGenerator(**checked_model_args("landmark_generator", contents.get("model_args"), path, state))
        load_exactly(model, state, path)
    else:
        model = LandmarkGenerator()
        load_exactly(model, official_landmark_state(contents["state_dict"], path), path)
    return model


def load_landmark_generator(reference: str | Path, device: str | torch.device = "cpu",
                            require_sha256: bool = False) -> LandmarkGenerator:
    """The landmark generator of an official IP_LAP checkpoint, one of this project's or an export (a path, an
    export folder or a hub reference), in eval mode. require_sha256: refuse a reference without #sha256=HEX."""
    checkpoint = read_checkpoint(reference, "landmark_generator", require_sha256)
    model = landmark_generator_of(checkpoint)
    report_loaded(checkpoint, "landmark_generator", reference)
    return model.to(device).eval()


# Official renderer tensors whose first 3 input channels (dim 1) or 3 output channels (dim 0) are BGR images:
# flipped to RGB on load. Sketch channels are left alone (sketches are grey, the same in either order).
BGR_INPUTS = {"flow_module.conv1.weight": 6, "translation.conv1.weight": 18,  # official names
              "translation.spade_4.spade_layer_1.conv1.weight": 3, "translation.spade_4.spade_layer_2.conv1.weight": 3}
BGR_OUTPUTS = ("translation.conv_last.weight",)
VGG_PREFIX = "perceptual.model.network."
# This renderer's tensor names -> the official checkpoint's (which this project also used before it renamed the
# submodules), applied in order. The other direction is derived from it (`renamed_renderer_state`).
OFFICIAL_RENDERER_NAMES = (
    (r"^alignment\.flow\.", "flow_module.conv_4."),
    (r"^alignment\.weight_head\.", "flow_module.conv_5."),
    (r"^alignment\.spade_3\.", "flow_module.spade_layer_4."),
    (r"^alignment\.spade_([12])\.", r"flow_module.spade_layer_\1."),
    (r"^alignment\.", "flow_module."),
    (r"^translation\.spade_3\.", "translation.spade_4."),
    (r"^(translation\.adain_\d\.)norm_([12])\.", r"\1adain_layer_\2."),
    (r"\.norm_([12])\.", r".spade_layer_\1."),
)


def official_renderer_name(name: str) -> str:
    """The official checkpoint's name for one of this renderer's tensors."""
    for pattern, replacement in OFFICIAL_RENDERER_NAMES:
        name = re.sub(pattern, replacement, name)
    return name


@functools.lru_cache(maxsize=1)
def _current_renderer_names() -> dict[str, str]:
    """Official (or older) name -> this project's, for every tensor of the renderer."""
    with torch.device("meta"):  # names only: no memory for the weights
        names = list(Renderer().state_dict())
    return {official_renderer_name(name): name for name in names}


def renamed_renderer_state(state: dict) -> dict:
    """A renderer state dict under the official names -> this project's names (current names, and names this
    renderer does not have, are kept as they are)."""
    current = _current_renderer_names()
    return {current.get(name, name): tensor for name, tensor in state.items()}


def _flip_first_three(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Reverse channels 0..2 along dim (BGR <-> RGB); the others keep their place."""
    order = torch.arange(weight.shape[dim])
    order[:3] = order[:3].flip(0)
    return weight.index_select(dim, order)


def official_renderer_state(state: dict, path: Path) -> tuple[dict, dict]:
    """Official renderer state dict -> (this project's RGB renderer state, the VGG19 `features` state it carries).

    The official networks take and return BGR images; flipping the channels of the first convolutions that see
    images (and of the output convolution) makes the same network take and return RGB, with identical results.
    """
    state = strip_module_prefix(state)
    renderer, vgg = {}, {}
    for name, tensor in state.items():
        if name.startswith(VGG_PREFIX):
            vgg[name[len(VGG_PREFIX):]] = tensor
            continue
        if name in BGR_INPUTS and tensor.dim() == 4 and tensor.shape[1] == BGR_INPUTS[name]:
            tensor = _flip_first_three(tensor, 1)
        elif name in BGR_OUTPUTS and tensor.dim() == 4 and tensor.shape[0] == 3:
            tensor = _flip_first_three(tensor, 0)
        renderer[name] = tensor
    return renamed_renderer_state(renderer), vgg


def renderer_of(checkpoint: Checkpoint) -> Renderer:
    """The renderer a checkpoint holds, on the CPU, taking RGB images, every tensor's name and shape checked.

    An official file also carries the VGG19 weights of its perceptual loss (under 'perceptual.'); they are checked
    against VGG19's layout and left out here (`official_vgg19_features` hands them to the perceptual loss)."""
    _check_kind(checkpoint, "renderer")
    contents, path = checkpoint.contents, checkpoint.path
    args = contents.get("model_args") if "model" in contents else {}  # official files: the 128 network
    model = Renderer(**checked_model_args("renderer", args, path))
    if "model" in contents:
        load_exactly(model, renamed_renderer_state(strip_module_prefix(contents["model"])), path)
    else:
        _check_official_names(contents["state_dict"], model, path)
        state, vgg = official_renderer_state(contents["state_dict"], path)
        _check_vgg19_features(vgg, path)
        load_exactly(model, state, path)
    return model


def load_renderer(reference: str | Path, device: str | torch.device = "cpu", require_sha256: bool = False
                  ) -> Renderer:
    """The renderer of an official IP_LAP checkpoint, one of this project's or an export (a path, an export folder
    or a hub reference), in eval mode, taking RGB images. require_sha256: refuse a reference without #sha256=HEX.

    On CPU, the renderer runs faster after allocator.keep_freed_memory(), which entry points apply.
    """
    checkpoint = read_checkpoint(reference, "renderer", require_sha256)
    model = renderer_of(checkpoint)
    report_loaded(checkpoint, "renderer", reference)
    return model.to(device).eval()


def _check_official_names(state: dict, model: Renderer, path: Path) -> None:
    """Missing or unexpected tensors of an official file, named as the file names them."""
    present = {name for name in strip_module_prefix(state) if not name.startswith(VGG_PREFIX)}
    expected = [official_renderer_name(name) for name in model.state_dict()]
    missing = [name for name in expected if name not in present]
    if missing:
        raise InputError(path, f"tensor '{missing[0]}' is missing ({len(missing)} missing in all)")
    unexpected = sorted(present - set(expected))
    if unexpected:
        raise InputError(path, f"unexpected tensor '{unexpected[0]}' for this network")


def _check_vgg19_features(vgg: dict, path: Path) -> None:
    from torchvision.models import vgg19

    expected = {f"{k}": v.shape for k, v in vgg19(weights=None).features.state_dict().items()}
    for name, tensor in vgg.items():
        if name not in expected or tuple(tensor.shape) != tuple(expected[name]):
            raise InputError(path, f"unexpected tensor '{VGG_PREFIX}{name}' {tuple(tensor.shape)}")
    if vgg and len(vgg) != len(expected):
        missing = sorted(set(expected) - set(vgg))[0]
        raise InputError(path, f"tensor '{VGG_PREFIX}{missing}' is missing")


def official_vgg19_features(path: str | Path) -> dict:
    """The VGG19 `features` state dict stored in an official renderer checkpoint (ImageNet weights)."""
    checkpoint = read_checkpoint(path, "renderer")
    if "state_dict" not in checkpoint.contents:
        raise InputError(checkpoint.path, "holds no VGG19 weights under 'perceptual.' (only an official renderer "
                                          "checkpoint does)")
    _, vgg = official_renderer_state(checkpoint.contents["state_dict"], checkpoint.path)
    if not vgg:
        raise InputError(checkpoint.path, "holds no VGG19 weights under 'perceptual.'")
    _check_vgg19_features(vgg, checkpoint.path)
    return vgg
