"""The network step: both networks loaded once, the references encoded once per template, and per batch the
landmark generator's prediction and the renderer's faces. Inputs arrive as host arrays (uint8 for images) and
become float on the networks' device; on CUDA the copies come from pinned memory without blocking, every call is
padded to a fixed number of rows, and a batch's faces come back through one synchronisation."""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from config import autocast, pick_device
from data.crop import box_size, crop_face
from data.errors import InputError
from data.landmarks import content_of, pose_of
from data.sketch import draw_sketch
from data.tensors import as_images, unit_range, upload
from dubbing.prepare import LandmarkInputs, RenderInputs
from dubbing.template import Template
from model_files.checkpoints import load_landmark_generator, load_renderer
from models.landmark_generator import LandmarkGenerator
from models.renderer import References, Renderer
from models.winograd import use_winograd


def render_faces(renderer: Renderer, refs: References, faces: torch.Tensor, sketches: torch.Tensor,
                 mels: torch.Tensor) -> torch.Tensor:
    """The render step: faces (B, 3, S, S), sketches (B, 5, 3, S, S) and mels (B, 1, 80, 16) -> generated
    faces (B, 3, S, S), the references encoded once per template."""
    return renderer.render(faces, sketches, refs, mels)[0]


RenderStep = Callable[[Renderer, References, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


RUNTIMES = ("torch", "onnxruntime")  # what runs the render step (configs/inference.yaml's `runtime`)


@dataclass
class Models:
    """Both networks on their device. `render_step` is what a batch is rendered with: `render_faces`, the render
    graph in onnxruntime (`runtime` says which), or a stand-in of the same signature (benches and tests put one in
    with dataclasses.replace)."""

    landmark: LandmarkGenerator
    renderer: Renderer
    device: torch.device
    render_step: RenderStep = render_faces
    runtime: str = "torch"

    @property
    def face_size(self) -> int:
        """The renderer's face size: crops, sketches and the faces pasted back are this many pixels square."""
        return self.renderer.face_size


def load_models(landmark_ckpt: str | Path, renderer_ckpt: str | Path, device: str | torch.device | None = None,
                *, require_sha256: bool = False, runtime: str = "torch", graphs: str | Path | None = None,
                winograd: bool = False) -> Models:
    """Both networks from this project's checkpoints or the official files (told apart by their contents).
    require_sha256: refuse a reference without #sha256=HEX (checkpoints.require_sha256). runtime 'onnxruntime'
    (CPU only) renders every batch with the renderer's ONNX graph, exported on first use into `graphs` (the
    template cache's folder; None: a temporary one) by dubbing/graphs.py. winograd: on the CPU under torch, the
    renderer's wide 3x3 convolutions run by Winograd (models/winograd.py; the config's `winograd`)."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    if runtime not in RUNTIMES:
        raise InputError(f"runtime={runtime}", f"runtime takes one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime" and device.type != "cpu":
        raise InputError("runtime=onnxruntime", f"onnxruntime renders on the CPU here, not on {device}; use "
                                                "runtime=torch")
    models = Models(load_landmark_generator(landmark_ckpt, device, require_sha256),
                    load_renderer(renderer_ckpt, device, require_sha256), device)
    if runtime == "torch":
        if winograd and device.type == "cpu":
            use_winograd(models.renderer)
        return models
    import tempfile

    from data.samples import sha256
    from dubbing.graphs import onnx_render_step, render_graph
    from model_files.checkpoints import checkpoint_file

    folder = Path(graphs) if graphs is not None else Path(tempfile.mkdtemp(prefix="iplap-graphs-"))
    path = render_graph(models.renderer, sha256(checkpoint_file(renderer_ckpt, "renderer")), folder)
    return dataclasses.replace(models, render_step=onnx_render_step(path), runtime=runtime)


@functools.cache
def _compiled_step(step: RenderStep) -> RenderStep:
    # "reduce-overhead" records CUDA graphs on CUDA; the padded, fixed-shape batches make one graph per template.
    return torch.compile(step, mode="reduce-overhead", dynamic=False)


def compiled(models: Models) -> Models:
    """`models` with its render step compiled by torch.compile (the config's `compile: true`), once per process;
    a render step in onnxruntime stays as it is."""
    if models.runtime != "torch":
        return models
    return dataclasses.replace(models, render_step=_compiled_step(models.render_step))


def padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """`tensor` with its first axis filled up to `rows` by repeating its last row (real values: a padded row
    costs what a real one costs, and its output is dropped)."""
    if len(tensor) >= rows:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(rows - len(tensor), *tensor.shape[1:])])


def fixed_rows(count: int, step: int) -> int:
    """`count` rounded up to a multiple of `step` (at least one step): the rows a padded call has."""
    return max(1, -(-count // step)) * step


@dataclass
class Encoded:
    """A template's references encoded for every audio: Nl landmark tokens and N renderer references."""

    tokens: torch.Tensor
    refs: References


def encode_references(models: Models, template: Template, frames: dict[int, np.ndarray], landmark_refs: np.ndarray,
                      image_refs: np.ndarray, bf16: bool | str) -> Encoded:
    """The landmark generator's reference tokens from the template's landmarks at `landmark_refs`, and the
    renderer's references from its frames (`frames`, by index) at `image_refs`."""
    device = models.device
    ref_pose = upload(pose_of(template.landmarks[landmark_refs])[None], device)  # (1, Nl, 2, 74)
    ref_content = upload(content_of(template.landmarks[landmark_refs])[None], device)
    size = models.face_size
    faces = np.stack([crop_face(frames[i], template.boxes[i], size) for i in image_refs])[None]
    sketches = np.stack([draw_sketch(template.landmarks[i], box_size(template.boxes[i]), size) for i in image_refs])
    with torch.inference_mode(), autocast(device, bf16):
        tokens = models.landmark.encode_references(ref_pose, ref_content)
        refs = models.renderer.encode_references(as_images(upload(faces, device)),
                                                 _three_channels(upload(sketches[None], device)))
    return Encoded(tokens, refs)


def _three_channels(sketches: torch.Tensor) -> torch.Tensor:
    """uint8 sketches (..., H, W) -> float (..., 3, H, W) in 0..1, the three channels equal."""
    planes = unit_range(sketches).unsqueeze(-3)
    return planes.expand(*planes.shape[:-3], 3, *planes.shape[-2:])


def predict_content(models: Models, tokens: torch.Tensor, inputs: LandmarkInputs, bf16: bool | str,
                    rows: int = 0) -> np.ndarray:
    """Content landmarks (C, SKETCH_WINDOW, 2, 57) of the batch's windows, on the host (the one read of this step).
    With `rows`, both calls are padded to multiples of it (fixed shapes)."""
    device, windows = models.device, len(inputs.gather)
    mels, pose = upload(inputs.mels, device), upload(inputs.pose, device)
    gather = upload(inputs.gather, device)
    if rows:
        frames = fixed_rows(len(mels), rows)
        mels, pose, gather = padded(mels, frames), padded(pose, frames), padded(gather, fixed_rows(windows, rows))
    with torch.inference_mode(), autocast(device, bf16):
        audio, posed = models.landmark.encode_frames(mels, pose)
        content = models.landmark.fuse(tokens, audio[gather], posed[gather])
    return content[:windows].float().cpu().numpy()


class HostCopy:
    """uint8 images (..., H, W, 3) on their way from the device to the host: one pinned buffer and one CUDA event
    (the copy does not block the host); `ready()` waits for this copy alone and returns them as an array."""

    def __init__(self, images: torch.Tensor):
        if images.device.type == "cuda":
            self._host = torch.empty(images.shape, dtype=torch.uint8, pin_memory=True)
            self._host.copy_(images, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record()
        else:
            self._host, self._done = images.contiguous(), None

    def ready(self) -> np.ndarray:
        if self._done is not None:
            self._done.synchronize()
        return self._host.numpy()


def upload_frames(frames: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """A batch of (H, W, 3) uint8 frames as one (B, H, W, 3) tensor on `device`, a copy of its own (paste-back
    writes into it): on CUDA gathered into pinned memory and sent without blocking the host."""
    if device.type != "cuda":
        return torch.from_numpy(np.stack(frames)).to(device)
    host = torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8, pin_memory=True)
    np.stack(frames, out=host.numpy())
    return host.to(device, non_blocking=True)


def generate(models: Models, refs: References, inputs: RenderInputs, bf16: bool | str, rows: int = 0,
             faces: torch.Tensor | None = None) -> torch.Tensor:
    """Generated faces (k, S, S, 3) uint8 on the networks' device for a render batch, from its face crops:
    `faces` (k, S, S, 3) uint8 when already on the device, else the batch's own, uploaded. With `rows`, the
    call is padded to that many rows."""
    device, count = models.device, len(inputs.boxes)
    faces = as_images(upload(inputs.faces, device) if faces is None else faces)
    sketches = _three_channels(upload(inputs.sketches, device))  # (k, 5, 3, S, S)
    mels = upload(inputs.mels, device)
    if rows:
        faces, sketches, mels = (padded(t, fixed_rows(count, rows)) for t in (faces, sketches, mels))
    with torch.inference_mode(), autocast(device, bf16):
        generated = models.render_step(models.renderer, refs, faces, sketches, mels)
    return (generated[:count].float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1)


def render(models: Models, refs: References, inputs: RenderInputs, bf16: bool | str, rows: int = 0) -> HostCopy:
    """Generated faces (k, S, S, 3) uint8 for a render batch, on their way to the host (the copies to the
    device and back do not block the host). With `rows`, the call is padded to that many rows."""
    return HostCopy(generate(models, refs, inputs, bf16, rows))
