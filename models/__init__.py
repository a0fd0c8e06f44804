"""Networks: the landmark generator (stage 1) and the renderer (stage 2). Loading them from files is
`model_files/`'s work (`from model_files import load_renderer`).

The names below are imported on first use, so that importing a submodule does not load both networks.
"""
from __future__ import annotations

import importlib

_HOMES = {"LandmarkGenerator": "models.landmark_generator", "Renderer": "models.renderer"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
