"""The renderer's cost at face sizes 256 and 512 against the paper's 128, in one process.

  python bench/face_sizes.py [--sizes 128 256 512] [--refs 25] [--repeats 2]

Per-frame forward at batch 1 (Renderer.render, references encoded once as a dub does), eval mode, CPU threads as
torch sets them, after allocator.keep_freed_memory() as inference.py applies on CPU; multiply-accumulates from
torch.utils.flop_counter (FLOPs / 2), and parameter counts. Each row's ratios are against the 128 row.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocator import keep_freed_memory  # noqa: E402
from models.renderer import FACE_SIZES, Renderer  # noqa: E402


def inputs(size: int, refs: int, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Random faces and sparse sketches at `size`: face, sketches, ref_images, ref_sketches, mels."""
    g = torch.Generator().manual_seed(0)
    sketch = lambda *s: ((torch.rand(*s, generator=g) > 0.92).float().expand(*s[:-3], 3, *s[-2:]) * 0.88).contiguous()  # noqa: E731
    return (torch.rand(batch, 3, size, size, generator=g), sketch(batch, 5, 1, size, size),
            torch.rand(batch, refs, 3, size, size, generator=g), sketch(batch, refs, 1, size, size),
            torch.randn(batch, 1, 80, 16, generator=g))


def per_frame(size: int, refs: int, repeats: int) -> tuple[float, float, int]:
    """(median seconds, MACs, parameters) of one frame's render at `size` with `refs` encoded references."""
    torch.manual_seed(0)
    model = Renderer(size).eval()
    face, sketches, ref_images, ref_sketches, mels = inputs(size, refs)
    with torch.no_grad():
        encoded = model.encode_references(ref_images, ref_sketches)
        model.render(face, sketches, encoded, mels)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.render(face, sketches, encoded, mels)
            times.append(time.perf_counter() - start)
        with FlopCounterMode(display=False) as counter:
            model.render(face, sketches, encoded, mels)
    return statistics.median(times), counter.get_total_flops() / 2, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(FACE_SIZES), choices=FACE_SIZES)
    parser.add_argument("--refs", type=int, nargs="+", default=[25])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'N':>3} {'size':>5} {'params M':>9} {'s/frame':>8} {'GMAC':>7} {'time vs 128':>12} {'MAC vs 128':>11}")
    for refs in args.refs:
        base = None
        for size in sorted(args.sizes):
            seconds, macs, params = per_frame(size, refs, args.repeats)
            base = base or (seconds, macs)
            print(f"{refs:>3} {size:>5} {params / 1e6:9.2f} {seconds:8.2f} {macs / 1e9:7.0f} "
                  f"{seconds / base[0]:11.2f}x {macs / base[1]:10.2f}x", flush=True)


if __name__ == "__main__":
    main()
