"""Where the render graph's output departed from torch's on a real dub's inputs, and what closed the gap.

  python -m bench.onnx_gap [--template template_129.mp4] [--refs 3] [--seconds 0.2]

A short dub of a sample template with the demo speech and random official-layout weights records the render
step's inputs (face crops, one-pixel sketch lines, mel windows, the encoded references). On those inputs the render
graph is exported (model_files/onnx_export.py) four ways and run by onnxruntime: as exported, with onnxruntime's own
Sigmoid operator in place of 1 / (1 + exp(-x)), with the instance norm's mean taken in one pass, and with both (the
earlier export). Each is compared with torch float32; torch float32 is compared with torch float64 (the same
weights, the references encoded in float64 too), the size of float32's own rounding on these inputs. Printed: the
largest absolute difference of the faces (0..1), and in grey levels (255 per unit) their 99.9th percentile and
largest difference. Then the two mechanisms: onnxruntime's Sigmoid against float64 on the alignment's weight
logits (absolute and relative error), and the largest variance of the references' features that the alignment's
first instance norm divides by sqrt(variance + 1e-5).
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import dubbing
import model_files.onnx_export as onnx_export
from data.audio import SAMPLE_RATE, load_audio
from data.samples import sample
from data.video import FPS
from model_files.checkpoints import load_renderer
from model_files.onnx_export import Render
from testing.audio import write_wav
from testing.checkpoints import official_checkpoints

INPUTS = ("face", "target_sketches", "ref_images", "h1", "h2", "mels")


def recorded_inputs(models: dubbing.Models, template: Path, refs: int, seconds: float, folder: Path) -> list:
    """(refs, faces, sketches, mels) of every render call of a short dub."""
    calls = []

    def recording(renderer, references, faces, sketches, mels):
        calls.append((references, faces.clone(), sketches.clone(), mels.clone()))
        return dubbing.render_faces(renderer, references, faces, sketches, mels)

    audio = write_wav(folder / "speech.wav", load_audio(sample("speech_audio2.wav"))[:int(seconds * SAMPLE_RATE)])
    config = dubbing.default_config()
    config.update(refs=refs, batch_size=1)
    config["output"]["fps"] = FPS
    dubbing.dub(template, audio, folder / "out.mp4", replace(models, render_step=recording), config, progress=False)
    return calls


def stock_sigmoid(g, x):
    return g.op("Sigmoid", x)


def one_pass_norm(g, x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, cudnn):
    """The instance norm as first exported: the mean in one float32 pass."""
    from torch.onnx.symbolic_helper import _maybe_get_const

    centred = g.op("Sub", x, g.op("ReduceMean", x, axes_i=[2, 3], keepdims_i=1))
    variance = g.op("ReduceMean", g.op("Mul", centred, centred), axes_i=[2, 3], keepdims_i=1)
    epsilon = g.op("Constant", value_t=torch.tensor(_maybe_get_const(eps, "f"), dtype=torch.float32))
    return g.op("Div", centred, g.op("Sqrt", g.op("Add", variance, epsilon)))


VARIANTS = {"as exported": {}, "stock Sigmoid": {"_sigmoid": stock_sigmoid},
            "one-pass mean": {"_instance_norm": one_pass_norm},
            "both (the earlier export)": {"_sigmoid": stock_sigmoid, "_instance_norm": one_pass_norm}}


def exported(renderer, folder: Path, changes: dict) -> Path:
    """The render graph exported with some of model_files/onnx_export.py's symbolics replaced."""
    saved = {name: getattr(onnx_export, name) for name in changes}
    folder.mkdir(parents=True)
    try:
        for name, function in changes.items():
            setattr(onnx_export, name, function)
        onnx_export.export_onnx("renderer", renderer, folder, only="renderer_render")
    finally:
        for name, function in saved.items():
            setattr(onnx_export, name, function)
    return folder / "renderer_render.onnx"


def row(label: str, got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    difference = np.abs(np.concatenate(got).astype(np.float64) - np.concatenate(expected))
    grey = difference * 255
    print(f"| {label} | {difference.max():.1e} | {np.percentile(grey, 99.9):.3f} | {grey.max():.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", default="template_129.mp4", help="a sample file name")
    parser.add_argument("--refs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.2, help="speech dubbed (0.2 s: 5 frames)")
    args = parser.parse_args()
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        landmark_file, renderer_file = official_checkpoints(folder / "official", seed=0)
        models = dubbing.load_models(landmark_file, renderer_file, "cpu")
        calls = recorded_inputs(models, sample(args.template), args.refs, args.seconds, folder)
        step, wide = Render(models.renderer).eval(), Render(load_renderer(renderer_file).double()).eval()
        feeds, float32, float64 = [], [], []
        for references, face, sketches, mels in calls:
            refs = references.for_batch(len(face))
            values = (face, sketches, refs.images, refs.h1, refs.h2, mels)
            feeds.append({name: value.contiguous().numpy() for name, value in zip(INPUTS, values)})
            with torch.no_grad():
                float32.append(step(*values).numpy())
                encoded = wide.renderer.encode_references(refs.images.double(), refs.sketches.double())
                float64.append(wide(face.double(), sketches.double(), encoded.images, encoded.h1, encoded.h2,
                                    mels.double()).numpy())
        print(f"\n{len(calls)} frames of {args.template}, N={args.refs}, random official-layout weights")
        print("| render step | largest difference from torch float32 | 99.9th percentile, grey levels | largest, "
              "grey levels |")
        print("| --- | --- | --- | --- |")
        row("torch float32 vs float64", float32, float64)
        for index, (label, changes) in enumerate(VARIANTS.items()):
            graph = exported(models.renderer, folder / f"variant{index}", changes)
            session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
            row(f"onnxruntime, {label}", [session.run(None, feed)[0] for feed in feeds], float32)
        mechanisms(models.renderer, calls)


def mechanisms(renderer, calls) -> None:
    """onnxruntime's Sigmoid on the alignment's weight logits, and the variance of the features it normalises."""
    import onnx
    import onnxruntime

    logits = []
    hook = renderer.alignment.weight_head[2].register_forward_hook(lambda m, i, out: logits.append(out))
    with torch.no_grad():
        for references, face, sketches, mels in calls:
            renderer.render(face, sketches, references, mels)
    hook.remove()
    logits = torch.cat([x.flatten() for x in logits])
    node = onnx.helper.make_node("Sigmoid", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "sigmoid", [onnx.helper.make_tensor_value_info("x", 1, [None])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [None])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", onnx_export.OPSET)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": logits.numpy()})[0].astype(np.float64)
    exact = torch.sigmoid(logits.double()).numpy()
    ours = torch.sigmoid(logits).double().numpy()
    tiny = exact < 1e-4
    print(f"\nweight logits {logits.min():.1f}..{logits.max():.1f}; {tiny.mean():.2%} of weights below 1e-4")
    for label, value in (("onnxruntime Sigmoid", got), ("torch float32 sigmoid", ours)):
        print(f"{label} vs float64: largest absolute error {np.abs(value - exact).max():.1e}, largest relative error "
              f"{(np.abs(value - exact) / exact).max():.1e}")
    h2 = calls[0][0].h2.flatten(0, 1).double()
    print(f"references' h2 features: largest channel variance {h2.var(dim=(2, 3), unbiased=False).max():.1e} "
          "(instance norm epsilon 1e-5)")


if __name__ == "__main__":
    main()
