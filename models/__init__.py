"""Networks: the landmark generator (stage 1), the renderer (stage 2), and checkpoint loading.

The names below are imported on first use, so that `python -m models.hub` (a download, no network) starts
without loading torch.
"""
from __future__ import annotations

import importlib

_HOMES = {"LandmarkGenerator": "models.landmark_generator", "Renderer": "models.renderer",
          "load_landmark_generator": "models.checkpoints", "load_renderer": "models.checkpoints"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
