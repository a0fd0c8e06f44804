"""The renderer's render step under onnxruntime (`runtime: onnxruntime`): its ONNX graph exported on first use from
the loaded renderer into the template cache's folder, one file per renderer checkpoint (its sha256) and face size.

Each graph has a manifest beside it: the graph file's own sha256 and what it was exported with (the export's format,
torch, onnx opset). A graph whose bytes or manifest do not match (damaged, half written, or left by another version)
is exported again, never used. Every export is checked against torch by model_files/onnx_export.py.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from data.errors import disk_problem, one_line
from models.renderer import References, Renderer

FORMAT = 1  # raise when what model_files/onnx_export.py writes changes
RENDER_INPUTS = ("face", "target_sketches", "ref_images", "h1", "h2", "mels")


def graph_path(folder: Path, renderer_sha256: str, face_size: int) -> Path:
    """Where the render graph of a renderer checkpoint (by its sha256) at `face_size` is kept."""
    return Path(folder) / "graphs" / f"render_{renderer_sha256[:32]}_{face_size}.onnx"


def exported_with() -> dict:
    """What a graph's manifest must say for the graph to be used: the export's format and versions."""
    from model_files.onnx_export import OPSET

    return {"format": FORMAT, "torch": torch.__version__, "opset": OPSET}


def _file_sha256(path: Path) -> str:
    from data.samples import sha256

    return sha256(path)


def intact(path: Path) -> bool:
    """Whether the graph at `path` can be used: its manifest reads, names this export, and gives its bytes' sha256."""
    manifest = path.with_suffix(".json")
    try:
        facts = json.loads(manifest.read_text())
        return (isinstance(facts, dict) and {k: facts.get(k) for k in exported_with()} == exported_with()
                and facts.get("sha256") == _file_sha256(path))
    except (OSError, ValueError):
        return False


def render_graph(renderer: Renderer, renderer_sha256: str, folder: Path) -> Path:
    """The render graph of `renderer` (whose checkpoint has `renderer_sha256`) kept under `folder`: the cached one
    when intact, else exported now and checked against torch. A folder that cannot be written (a full or read-only
    disk) gets a one-line warning and the graph goes to a temporary folder for this process."""
    from model_files.onnx_export import export_onnx

    path = graph_path(folder, renderer_sha256, renderer.face_size)
    if intact(path):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=path.parent))
    except OSError as error:
        print(f"warning: {path.parent}: {disk_problem(error) or one_line(error)} (the render graph is exported for "
              "this run only)", file=sys.stderr)
        path = graph_path(Path(tempfile.mkdtemp(prefix="iplap-graphs-")), renderer_sha256, renderer.face_size)
        path.parent.mkdir(parents=True)
        work = Path(tempfile.mkdtemp(dir=path.parent))
    try:
        export_onnx("renderer", renderer, work, size=renderer.face_size, only="renderer_render")
        exported = work / "renderer_render.onnx"
        manifest = {**exported_with(), "sha256": _file_sha256(exported), "renderer_sha256": renderer_sha256,
                    "face_size": renderer.face_size}
        # The graph first, then the manifest that vouches for it: a run stopped in between leaves a graph that is
        # not used.
        os.replace(exported, path)
        path.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
    finally:
        for leftover in work.iterdir():
            leftover.unlink()
        work.rmdir()
    return path


def session(path: Path):
    """An onnxruntime session of the graph on the CPU, with as many intra-op threads as torch uses (so the two
    runtimes are compared on the same cores) and none between operators (the graph is one chain)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_render_step(path: Path, open_session: Callable = session
                     ) -> Callable[[Renderer, References, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A render step (dubbing.network.RenderStep) that runs the graph at `path` in onnxruntime, in float32, in a
    session from `open_session` (bench/render_options.py passes others)."""
    runner = open_session(path)

    def step(renderer: Renderer, refs: References, faces: torch.Tensor, sketches: torch.Tensor,
             mels: torch.Tensor) -> torch.Tensor:
        refs = refs.for_batch(len(faces))
        values = (faces, sketches, refs.images, refs.h1, refs.h2, mels)
        feed = {name: np.ascontiguousarray(value.float().numpy()) for name, value in zip(RENDER_INPUTS, values)}
        return torch.from_numpy(runner.run(None, feed)[0])

    return step
