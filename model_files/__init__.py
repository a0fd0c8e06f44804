"""The files networks travel in: this project's checkpoints, the official release's files, exports (safetensors,
ONNX, model cards), hub references, and pretrained weight files. `models/` holds the networks themselves.
"""
from __future__ import annotations


# The loaders import torch and the networks on first call, so that `python -m model_files.hub` (a download) starts
# without them.
def load_landmark_generator(*args, **kwargs):
    """model_files.checkpoints.load_landmark_generator: the landmark generator from any file the project takes."""
    from model_files.checkpoints import load_landmark_generator as load

    return load(*args, **kwargs)


def load_renderer(*args, **kwargs):
    """model_files.checkpoints.load_renderer: the renderer from any file the project takes."""
    from model_files.checkpoints import load_renderer as load

    return load(*args, **kwargs)
