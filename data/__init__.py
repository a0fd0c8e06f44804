"""Data layer: landmark conventions, the crop rule, sketches, audio, video, FaceMesh and preprocessed records.

Nothing is imported here: `import data.errors` must not pull in OpenCV or PyAV (bench/gpu.py runs without them).
`from data import load_clip` works all the same: the name is looked up in data.records on first use.
"""
from __future__ import annotations

_LAZY = {"load_clip": "data.records"}  # names offered here, and the module that defines each


def __getattr__(name: str):
    """`data.load_clip` and the like, imported from their module when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
