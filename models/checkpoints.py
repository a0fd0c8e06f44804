"""Loading checkpoints: this project's files and the official IP_LAP release's, told apart automatically.

Official files (github.com/Weizhi-Zhong/IP_LAP, README "Test": landmarkgenerator_checkpoint.pth and
renderer_checkpoint.pth) are torch.save'd dicts {'state_dict', 'optimizer', 'global_step', 'global_epoch'} from
CUDA models, keys possibly prefixed 'module.' (DataParallel). This project's files are dicts with 'kind',
'model' (state dict) and 'model_args' (constructor keywords).
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import torch

from data.errors import InputError
from models.landmark_generator import LandmarkGenerator
from models.layers import sinusoidal_encoding
from models.renderer import Renderer
from models.weights import load_exactly, read_file, strip_module_prefix

OFFICIAL_SOURCE = ("the official IP_LAP release (github.com/Weizhi-Zhong/IP_LAP, README section 'Test'); "
                   "put it under checkpoints/ or pass its path")

# Official landmark-generator names that differ from ours (prefix renames).
LANDMARK_RENAMES = {"mouse_keypoint_map.": "lip_head.", "jaw_keypoint_map.": "jaw_head.", "Norm.": "norm."}
# Official buffers we compute instead of storing: each must equal our table.
LANDMARK_FIXED = ("fusion_transformer.position_v.pe", "fusion_transformer.position_a.pe")


def read_checkpoint(path: str | Path, what: str) -> dict:
    """A checkpoint dict on the CPU, with one-line errors for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} checkpoint not found; get it from {OFFICIAL_SOURCE}, "
                               "or train one with this project")
    checkpoint = read_file(path, f"{what} checkpoint")
    if not isinstance(checkpoint, dict) or not ({"state_dict", "model"} & set(checkpoint)):
        raise InputError(path, f"not a {what} checkpoint (no 'state_dict' or 'model' entry)")
    return checkpoint


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


def load_landmark_generator(path: str | Path, device: str | torch.device = "cpu") -> LandmarkGenerator:
    """The landmark generator of an official IP_LAP checkpoint or one of this project's, in eval mode."""
    path = Path(path)
    checkpoint = read_checkpoint(path, "landmark generator")
    if "model" in checkpoint:
        if checkpoint.get("kind", "landmark_generator") != "landmark_generator":
            raise InputError(path, f"holds a {checkpoint.get('kind')}, not a landmark generator")
        model = LandmarkGenerator(**checkpoint.get("model_args", {}))
        load_exactly(model, strip_module_prefix(checkpoint["model"]), path)
    else:
        model = LandmarkGenerator()
        load_exactly(model, official_landmark_state(checkpoint["state_dict"], path), path)
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


def load_renderer(path: str | Path, device: str | torch.device = "cpu") -> Renderer:
    """The renderer of an official IP_LAP checkpoint or one of this project's, in eval mode, taking RGB images.

    An official file also carries the VGG19 weights of its perceptual loss (under 'perceptual.'); they are checked
    against VGG19's layout and left out here (`official_vgg19_features` hands them to the perceptual loss).
    On CPU, the renderer runs faster after allocator.keep_freed_memory(), which entry points apply.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, "renderer")
    model = Renderer()
    if "model" in checkpoint:
        if checkpoint.get("kind", "renderer") != "renderer":
            raise InputError(path, f"holds a {checkpoint.get('kind')}, not a renderer")
        load_exactly(model, renamed_renderer_state(strip_module_prefix(checkpoint["model"])), path)
    else:
        _check_official_names(checkpoint["state_dict"], model, path)
        state, vgg = official_renderer_state(checkpoint["state_dict"], path)
        _check_vgg19_features(vgg, path)
        load_exactly(model, state, path)
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
    path = Path(path)
    _, vgg = official_renderer_state(read_checkpoint(path, "renderer")["state_dict"], path)
    if not vgg:
        raise InputError(path, "holds no VGG19 weights under 'perceptual.'")
    _check_vgg19_features(vgg, path)
    return vgg
