"""ONNX models of the two networks, as a dub calls them, each checked against torch with onnxruntime on the CPU.

    landmark_generator.onnx          (mels, pose, ref_pose, ref_content) -> content      LandmarkGenerator.forward
    renderer_encode_references.onnx  (ref_images, ref_sketches) -> (h1, h2)              Renderer.encode_references
    renderer_render.onnx             (face, target_sketches, ref_images, h1, h2, mels) -> face     Renderer.render

Shapes as the networks document them (models/landmark_generator.py, models/renderer.py); the batch axis is dynamic
in every input and output, and so are the number of frames T, of reference landmark sets Nl and of reference
images N (the graph takes all N references in one pass). Images are RGB in 0..1 at the renderer's face size (128,
256 or 512 pixels square), which the graph is traced and checked at. Exported with the TorchScript-based exporter
(torch.onnx.export(dynamo=False)), which needs no package beyond onnx.
The check uses smooth random images. On a real dub's inputs (one-pixel sketch lines) two operators needed a
formulation of their own to stay as close to torch float32 as torch float32 is to float64 (docs/models.md, "Where
the render graph's gap came from"): the sigmoid, as 1 / (1 + exp(-x)) (onnxruntime's Sigmoid is accurate to 1e-7
absolute but not relative, and the alignment's blend weights divide by sums of near-zero weights), and the
instance norm's mean, corrected by a second pass (features whose variance is far below the 1e-5 epsilon have their
deviation from the mean multiplied by up to 316, and onnxruntime's float32 mean is rounded more than torch's).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.audio import MEL_STEPS, N_MELS
from data.face_size import BASE_SIZE
from data.landmarks import NUM_CONTENT, NUM_POSE, SKETCH_WINDOW
from models.renderer import References, Renderer

OPSET = 17  # GridSample (16) and LayerNormalization (17) as single operators
TOLERANCE = 1e-4  # the largest absolute difference from torch an export may have
MEL = (1, N_MELS, MEL_STEPS)  # one mel window per frame


class EncodeReferences(nn.Module):
    """Renderer.encode_references with its reusable features as outputs."""

    def __init__(self, renderer: Renderer):
        super().__init__()
        self.renderer = renderer

    def forward(self, ref_images: torch.Tensor, ref_sketches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        refs = self.renderer.encode_references(ref_images, ref_sketches)
        return refs.h1, refs.h2


class Render(nn.Module):
    """Renderer.render from encoded references (their sketches are not used by the render step)."""

    def __init__(self, renderer: Renderer):
        super().__init__()
        self.renderer = renderer

    def forward(self, face: torch.Tensor, target_sketches: torch.Tensor, ref_images: torch.Tensor, h1: torch.Tensor,
                h2: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        return self.renderer.render(face, target_sketches, References(ref_images, h1, h2, ref_images), mels)[0]


def example_inputs(kind: str, batch: int = 2, refs: int = 3, size: int = BASE_SIZE, seed: int = 0
                   ) -> dict[str, dict[str, torch.Tensor]]:
    """Random inputs of each graph of `kind`, by graph name then input name, with `refs` reference images or
    landmark sets (the renderer's h1 and h2 come from encoding the references with the network, at export)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(shape, generator=g)

    def image(*shape):
        """Smooth random images, as faces are: white noise would turn the warps' float32 rounding of the motion
        field (in pixels) into differences far larger than any real frame shows."""
        coarse = rand(*shape[:-2], max(2, shape[-2] // 8), max(2, shape[-1] // 8))
        flat = coarse.flatten(0, -3)[:, None]
        return F.interpolate(flat, size=shape[-2:], mode="bilinear", align_corners=False).view(shape)

    if kind == "landmark_generator":
        frames = SKETCH_WINDOW
        return {"landmark_generator": {"mels": rand(batch, frames, *MEL) * 2 - 1,
                                       "pose": rand(batch, frames, 2, NUM_POSE),
                                       "ref_pose": rand(batch, refs, 2, NUM_POSE),
                                       "ref_content": rand(batch, refs, 2, NUM_CONTENT)}}
    images = {"ref_images": image(batch, refs, 3, size, size), "ref_sketches": image(batch, refs, 3, size, size)}
    return {"renderer_encode_references": images,
            "renderer_render": {"face": image(batch, 3, size, size),
                                "target_sketches": image(batch, SKETCH_WINDOW, 3, size, size),
                                "ref_images": images["ref_images"], "mels": rand(batch, *MEL) * 2 - 1}}


def graphs(kind: str, network: nn.Module) -> dict[str, tuple[nn.Module, tuple[str, ...], dict]]:
    """Graph name -> (module, output names, dynamic axes of every input and output) for a network of `kind`."""
    batch = {0: "batch"}
    if kind == "landmark_generator":
        frames = {0: "batch", 1: "frames"}
        return {"landmark_generator": (network, ("content",), {
            "mels": frames, "pose": frames, "ref_pose": {0: "batch", 1: "landmark_refs"},
            "ref_content": {0: "batch", 1: "landmark_refs"}, "content": frames})}
    refs = {0: "batch", 1: "refs"}
    # Wrappers in eval mode: the exporter restores the mode of the module it is given, children included.
    return {"renderer_encode_references": (EncodeReferences(network).eval(), ("h1", "h2"), {
                "ref_images": refs, "ref_sketches": refs, "h1": refs, "h2": refs}),
            "renderer_render": (Render(network).eval(), ("generated",), {
                "face": batch, "target_sketches": batch, "ref_images": refs, "h1": refs, "h2": refs, "mels": batch,
                "generated": batch})}


def _instance_norm(g, x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, cudnn):
    """aten::instance_norm without affine parameters as ONNX ops that need no static channel count (the
    exporter's own InstanceNormalization does, and the references' flattened (B*N) axis hides it)."""
    from torch.onnx.symbolic_helper import _is_none, _maybe_get_const

    if not (_is_none(weight) and _is_none(bias)):
        raise ValueError("only instance norm without affine parameters is exported")
    centred = g.op("Sub", x, g.op("ReduceMean", x, axes_i=[2, 3], keepdims_i=1))
    # A second pass removes what the float32 mean's rounding left (the corrected two-pass algorithm): where a
    # channel's variance is far below epsilon, the division multiplies that remainder by up to 1/sqrt(epsilon).
    centred = g.op("Sub", centred, g.op("ReduceMean", centred, axes_i=[2, 3], keepdims_i=1))
    variance = g.op("ReduceMean", g.op("Mul", centred, centred), axes_i=[2, 3], keepdims_i=1)
    epsilon = g.op("Constant", value_t=torch.tensor(_maybe_get_const(eps, "f"), dtype=torch.float32))
    return g.op("Div", centred, g.op("Sqrt", g.op("Add", variance, epsilon)))


def _sigmoid(g, x):
    """aten::sigmoid as 1 / (1 + exp(-x)), accurate relative to its value where onnxruntime's Sigmoid is accurate
    to about 1e-7 absolute: the alignment's blend sum_i w_i x_i / (sum_i w_i + 1e-5) reads the relative size of
    weights that are all near zero."""
    one = g.op("Constant", value_t=torch.tensor(1.0, dtype=torch.float32))
    return g.op("Div", one, g.op("Add", one, g.op("Exp", g.op("Neg", x))))


def run_session(path: Path, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """The ONNX model's outputs on the CPU (onnxruntime)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})


def export_onnx(kind: str, network: nn.Module, folder: Path, size: int | None = None, only: str | None = None
                ) -> dict[str, float]:
    """Write the ONNX graphs of `network` into `folder` (`only`: that graph alone), traced at the renderer's face
    size (`size`: another size its fully convolutional graph also takes, for quick checks); each is run by
    onnxruntime on other batch and reference counts than it was traced with and compared with torch. Returns graph
    name -> largest absolute difference (printed); a difference above TOLERANCE is a RuntimeError."""
    size = size or getattr(network, "face_size", BASE_SIZE)  # the landmark generator has no face size
    differences = {}
    torch.onnx.register_custom_op_symbolic("aten::instance_norm", _instance_norm, OPSET)
    torch.onnx.register_custom_op_symbolic("aten::sigmoid", _sigmoid, OPSET)
    # Traced with gradients on (and inputs made here, outside any inference mode of the caller): under no_grad the
    # Transformer layers take a fused fast path that ONNX lacks.
    with torch.inference_mode(False), torch.enable_grad():
        traced = example_inputs(kind, batch=2, refs=3, size=size, seed=0)
        checked = example_inputs(kind, batch=3, refs=4, size=size, seed=1)
        for name, (module, outputs, axes) in graphs(kind, network.cpu().eval()).items():
            if only not in (None, name):
                continue
            inputs, other = dict(traced[name]), dict(checked[name])
            if name == "renderer_render":  # the references' features, as encode_references gives them
                for values, source in ((inputs, traced), (other, checked)):
                    with torch.no_grad():
                        encoded = network.encode_references(**source["renderer_encode_references"])
                    values["h1"], values["h2"] = encoded.h1, encoded.h2
                inputs = {key: inputs[key] for key in ("face", "target_sketches", "ref_images", "h1", "h2", "mels")}
                other = {key: other[key] for key in inputs}
            path = folder / f"{name}.onnx"
            with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice and tracer remarks
                warnings.simplefilter("ignore")
                torch.onnx.export(module, tuple(inputs.values()), str(path), dynamo=False, opset_version=OPSET,
                                  input_names=list(inputs), output_names=list(outputs), dynamic_axes=axes)
            with torch.no_grad():
                expected = module(*other.values())
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = run_session(path, other)
            differences[name] = max(float(np.abs(a.numpy() - b).max()) for a, b in zip(expected, got))
            print(f"{path.name}: onnxruntime vs torch, largest absolute difference {differences[name]:.2e}",
                  file=sys.stderr)
            if not differences[name] <= TOLERANCE:
                raise RuntimeError(f"{path.name} differs from torch by {differences[name]:.2e} (> {TOLERANCE})")
    return differences
