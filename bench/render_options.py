"""The render step on the CPU under run options that leave its output in bounds: which one is fastest.

  python -m bench.render_options [--refs 25] [--rounds 2] [--template template_129.mp4]

The render step at batch 1 with N encoded references (a CPU dub's call, configs/inference.yaml), random
official-layout weights, on the inputs of a real call: the first frame of a short dub of the template. Variants,
run in turn in one process (each round forward then backward, so drift is shared), after one untimed call each:
  torch                 dubbing.network.render_faces with oneDNN's direct convolutions (`winograd: false`)
  torch Winograd        the same with the wide 3x3 convolutions by Winograd F(4x4, 3x3) (models/winograd.py;
                        `winograd: true`, a CPU dub's default)
  torch channels-last   the renderer's weights and the face in channels-last memory format
  torch bf16            bf16 autocast on the CPU (`bf16: always`), for the record: lower precision, not an option
  ort                   dubbing.graphs.session: the render graph, intra-op threads = torch's, one inter-op thread
  ort no-spin           the same with session.intra_op.allow_spinning = 0 (threads sleep instead of spinning)
  ort parallel          execution_mode ORT_PARALLEL (two inter-op threads)
  ort extended          graph_optimization_level ORT_ENABLE_EXTENDED instead of ALL (no layout transforms)
Printed per variant: fastest and all seconds per call, the ratio to torch, and the output's distance from torch's
in grey levels (99.9th percentile of |difference| x 255) and PSNR; in bounds means <= 2 grey levels and >= 45 dB.

Then the float32 bound: the call's multiply-accumulates (torch.utils.flop_counter), this CPU's float32 rate on a
2048x2048 matrix product and on a 3x3 convolution of 256 channels at 64x64 (batch 8), the rate torch's call
reaches, and the fastest the call could be at the matrix product's rate.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from allocator import keep_freed_memory

GREY_LEVELS, PSNR_DB = 2.0, 45.0  # the bounds a faster option must keep against torch's output


def distance(output: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(99.9th percentile of |output - reference| in grey levels, PSNR in dB) of images in 0..1."""
    difference = (output.float() - reference.float()).abs().numpy() * 255
    mse = float((difference ** 2).mean())
    return float(np.percentile(difference, 99.9)), math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def ort_step(path: Path, **config):
    """A render step on the graph at `path` with dubbing.graphs.session's options changed by `config`."""
    import onnxruntime

    from dubbing.graphs import onnx_render_step

    def session(graph: Path):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = config.get("inter_op", 1)
        if "mode" in config:
            options.execution_mode = config["mode"]
        if "level" in config:
            options.graph_optimization_level = config["level"]
        if "spinning" in config:
            options.add_session_config_entry("session.intra_op.allow_spinning", config["spinning"])
        return onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    return onnx_render_step(path, session)


def gmacs_per_second(call, macs: float, repeats: int = 5) -> float:
    call()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return macs * repeats / (time.perf_counter() - started) / 1e9


def fp32_bound(call, seconds: float) -> None:
    """Print the call's MACs, the CPU's float32 MAC rates and the call's floor at the matrix product's rate."""
    from bench.renderer import macs

    work = macs(call)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    conv, x = torch.nn.Conv2d(256, 256, 3, padding=1), torch.randn(8, 256, 64, 64)
    with torch.inference_mode():
        matmul = gmacs_per_second(lambda: a @ b, 2048 ** 3)
        convolution = gmacs_per_second(lambda: conv(x), 8 * 256 * 256 * 9 * 64 * 64)
    print(f"float32 bound: the call is {work / 1e9:.0f} GMAC; this CPU does {matmul:.0f} GMAC/s on a matrix "
          f"product and {convolution:.0f} on a 3x3 convolution; torch's call runs at {work / seconds / 1e9:.0f} "
          f"GMAC/s, so at the matrix product's rate it would take {work / matmul / 1e9:.2f} s "
          f"({work / matmul / 1e9 / seconds:.2f}x torch's fastest)")


def main() -> None:
    import copy

    import onnxruntime

    import dubbing
    from bench.onnx_gap import recorded_inputs
    from config import autocast
    from data.samples import sample
    from dubbing.graphs import onnx_render_step, render_graph
    from dubbing.network import render_faces
    from models.winograd import use_winograd
    from testing.checkpoints import official_checkpoints

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refs", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--template", default="template_129.mp4", help="a sample file name")
    args = parser.parse_args()
    keep_freed_memory()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        models = dubbing.load_models(*official_checkpoints(folder / "official", seed=0), "cpu")
        renderer = models.renderer
        # a real call's inputs: the first frame of a short dub of the template (the shortest it takes, 0.2 s)
        refs, faces, sketches, mels = recorded_inputs(models, sample(args.template), args.refs, 0.2, folder)[0]
        graph = render_graph(renderer, "bench", folder)
        channels_last = torch.channels_last

        def torch_channels_last(network, references, faces_, sketches_, mels_):
            return render_faces(network, references, faces_.contiguous(memory_format=channels_last), sketches_,
                                mels_)

        def torch_bf16(network, references, faces_, sketches_, mels_):
            with autocast(torch.device("cpu"), "always"):
                return render_faces(network, references, faces_, sketches_, mels_).float()

        last = copy.deepcopy(renderer).to(memory_format=channels_last)
        fast = copy.deepcopy(renderer)
        use_winograd(fast)
        variants = {
            "torch": (renderer, render_faces),
            "torch Winograd (winograd: true)": (fast, render_faces),
            "torch channels-last": (last, torch_channels_last),
            "torch bf16 (bf16: always)": (renderer, torch_bf16),
            "ort": (renderer, onnx_render_step(graph)),
            "ort no-spin": (renderer, ort_step(graph, spinning="0")),
            "ort parallel": (renderer, ort_step(graph, mode=onnxruntime.ExecutionMode.ORT_PARALLEL, inter_op=2)),
            "ort extended": (renderer, ort_step(graph, level=onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)),
        }
        outputs, times = {}, {name: [] for name in variants}
        with torch.inference_mode():
            for name, (network, step) in variants.items():
                outputs[name] = step(network, refs, faces, sketches, mels)
            for round_ in range(args.rounds):
                for name in (list(variants) if round_ % 2 == 0 else list(reversed(variants))):
                    network, step = variants[name]
                    started = time.perf_counter()
                    step(network, refs, faces, sketches, mels)
                    times[name].append(time.perf_counter() - started)
            base = min(times["torch"])
            fp32_bound(lambda: render_faces(renderer, refs, faces, sketches, mels), base)
    print(f"render step, batch {len(faces)}, N={args.refs}, torch {torch.get_num_threads()} threads, "
          f"onnxruntime {onnxruntime.__version__}")
    print("| variant | fastest s/call | runs | / torch | grey levels (99.9%) | PSNR dB | in bounds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in times.items():
        grey, psnr = distance(outputs[name], outputs["torch"])
        print(f"| {name} | {min(runs):.3f} | {', '.join(f'{t:.3f}' for t in runs)} | {min(runs) / base:.2f}x | "
              f"{grey:.2f} | {psnr:.1f} | {'yes' if grey <= GREY_LEVELS and psnr >= PSNR_DB else 'no'} |")


if __name__ == "__main__":
    main()
