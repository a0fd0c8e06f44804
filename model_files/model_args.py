"""The constructor arguments a checkpoint may give each network ('model_args'), checked before anything is built.

A checkpoint's model_args are read from a file that may come from anywhere, so each is held to a schema (its known
keys, their types and bounds) and, where a size shows in the tensors, to the tensors the file holds: a file cannot
ask for a network larger than the weights it carries.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

from data.errors import InputError
from data.face_size import FACE_SIZES
from models.landmark_generator import LandmarkGenerator

# kind -> key -> (type, smallest, largest); a float's bounds are inclusive below and exclusive above.
SCHEMA: dict[str, dict[str, tuple[type, float, float]]] = {
    "landmark_generator": {"d_model": (int, 512, 512), "layers": (int, 1, 64), "heads": (int, 1, 512),
                           "feed_forward": (int, 1, 65536), "dropout": (float, 0.0, 1.0)},
    "renderer": {"face_size": (int, min(FACE_SIZES), max(FACE_SIZES))},
}
TRANSFORMER_LAYER = re.compile(r"^fusion_transformer\.transformer_encoder\.layers\.(\d+)\.")
FEED_FORWARD_WEIGHT = "fusion_transformer.transformer_encoder.layers.0.linear1.weight"


def _value_problem(key: str, value: object, rule: tuple[type, float, float]) -> str | None:
    kind, low, high = rule
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int and not (numeric and float(value).is_integer()):
        return f"{key} must be a whole number, not {value!r}"
    if kind is float and not numeric:
        return f"{key} must be a number, not {value!r}"
    if kind is int and not low <= value <= high:
        return f"{key}={value!r} is out of range ({low}..{high})"
    if kind is float and not low <= value < high:
        return f"{key}={value!r} is out of range ({low} to below {high})"
    return None


def checked_model_args(kind: str, args: object, path: str | Path, state: dict | None = None) -> dict:
    """The model_args of a `kind` network, held to its schema and, given the file's state dict, to the sizes its
    tensors show; a one-line InputError names the first problem."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InputError(path, f"model_args must be a mapping of constructor arguments, not {type(args).__name__}")
    schema = SCHEMA[kind]
    for key, value in args.items():
        if key not in schema:
            known = ", ".join(schema)
            raise InputError(path, f"model_args: unknown key {str(key)[:40]!r} (known: {known})")
        problem = _value_problem(key, value, schema[key])
        if problem:
            raise InputError(path, f"model_args: {problem[:160]}")
    args = {key: int(value) if schema[key][0] is int else float(value) for key, value in args.items()}
    if kind == "renderer" and args.get("face_size", min(FACE_SIZES)) not in FACE_SIZES:
        raise InputError(path, f"model_args: face_size={args['face_size']} is not one of {FACE_SIZES}")
    if kind == "landmark_generator":
        _check_landmark_sizes(args, path, state)
    return args


def _check_landmark_sizes(args: dict, path: str | Path, state: dict | None) -> None:
    """Heads divide the width; the number of layers and the feed-forward width are the tensors' own."""
    defaults = {name: p.default for name, p in inspect.signature(LandmarkGenerator).parameters.items()}
    wanted = {**defaults, **args}
    if wanted["d_model"] % wanted["heads"]:
        raise InputError(path, f"model_args: heads={wanted['heads']} does not divide d_model={wanted['d_model']}")
    if state is None:
        return
    layers = {int(match.group(1)) for name in state if (match := TRANSFORMER_LAYER.match(name))}
    if layers and len(layers) != wanted["layers"]:
        raise InputError(path, f"model_args: layers={wanted['layers']}, but the file holds {len(layers)} "
                               "transformer layers")
    weight = state.get(FEED_FORWARD_WEIGHT)
    if weight is not None and getattr(weight, "dim", lambda: 0)() == 2 and weight.shape[0] != wanted["feed_forward"]:
        raise InputError(path, f"model_args: feed_forward={wanted['feed_forward']}, but the file's layers are "
                               f"{weight.shape[0]} wide")
