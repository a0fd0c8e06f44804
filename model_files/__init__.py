"""The files networks travel in: this project's checkpoints, the official release's files, exports (safetensors,
ONNX, model cards), hub references, and pretrained weight files. `models/` holds the networks themselves.

The loaders below are imported on first use, so that `python -m model_files.hub` (a download, no network) starts
without loading torch.
"""
from __future__ import annotations

import importlib

_HOMES = {"load_landmark_generator": "model_files.checkpoints", "load_renderer": "model_files.checkpoints"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'model_files' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
