"""The two networks of a CPU dub under onnxruntime against torch, in one process, at equal output.

  python -m bench.onnx_runtime [--refs 3 25] [--calls 3]

Random official-layout weights (testing/checkpoints.py), exported by model_files/onnx_export.py at 128x128 (the export
checks each graph against torch). Per frame, batch 1, as a CPU dub calls them:
  landmark   the landmark generator on one 5-frame window with 15 reference landmark sets (torch: forward; a dub
             encodes the references once per template, the ONNX graph does it every call, so this favours torch)
  render     the renderer's render step with N references encoded once (torch: Renderer.render, after
             allocator.keep_freed_memory() as inference.py sets it; onnxruntime: renderer_render.onnx)
  encode     the renderer's encode_references, once per template
Printed: seconds per call for each runtime, the ratio onnxruntime / torch (below 1: onnxruntime is faster) and the
largest absolute difference between their outputs.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from allocator import keep_freed_memory
from bench.timing import seconds_per_call
from model_files.checkpoints import load_landmark_generator, load_renderer
from model_files.onnx_export import Render, example_inputs, export_onnx
from testing.checkpoints import official_checkpoints


def session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def compare(name: str, torch_call, onnx_session, inputs: dict[str, torch.Tensor], calls: int) -> None:
    """Time both runtimes on the same inputs and print one row."""
    feed = {key: value.numpy() for key, value in inputs.items()}
    with torch.inference_mode():
        expected = torch_call(*inputs.values())
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch_seconds = seconds_per_call(lambda: torch_call(*inputs.values()), calls, torch.device("cpu"))
    got = onnx_session.run(None, feed)[0]
    onnx_seconds = seconds_per_call(lambda: onnx_session.run(None, feed), calls, torch.device("cpu"))
    difference = float(np.abs(expected.numpy() - got).max())
    print(f"{name:<14} torch {torch_seconds:8.3f} s   onnxruntime {onnx_seconds:8.3f} s   "
          f"ratio {onnx_seconds / torch_seconds:5.2f}   max abs diff {difference:.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refs", type=int, nargs="+", default=[3, 25], help="reference counts N (default 3 25)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per row, after one warm-up")
    args = parser.parse_args()
    keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        landmark_file, renderer_file = official_checkpoints(folder / "official", seed=0)
        landmark, renderer = load_landmark_generator(landmark_file), load_renderer(renderer_file)
        export_onnx("landmark_generator", landmark, folder)
        export_onnx("renderer", renderer, folder)
        window = example_inputs("landmark_generator", batch=1)["landmark_generator"]
        compare("landmark", landmark, session(folder / "landmark_generator.onnx"), window, args.calls * 5)
        render_step, encoder = Render(renderer).eval(), session(folder / "renderer_encode_references.onnx")
        render_session = session(folder / "renderer_render.onnx")
        for count in args.refs:
            inputs = example_inputs("renderer", batch=1, refs=count)
            references = inputs["renderer_encode_references"]
            compare(f"encode N={count}", lambda *x: (lambda r: (r.h1, r.h2))(renderer.encode_references(*x)),
                    encoder, references, args.calls)
            with torch.inference_mode():
                encoded = renderer.encode_references(**references)
            frame = {**inputs["renderer_render"], "h1": encoded.h1, "h2": encoded.h2}
            frame = {key: frame[key] for key in ("face", "target_sketches", "ref_images", "h1", "h2", "mels")}
            compare(f"render N={count}", render_step, render_session, frame, args.calls)


if __name__ == "__main__":
    main()
