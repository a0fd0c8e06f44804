"""The renderer's cost at face sizes 256 and 512 against the paper's 128, in one process.

  python -m bench.face_sizes [--sizes 128 256 512] [--refs 3 25] [--repeats 2] [--skip-training]

Per-frame forward at batch 1 (Renderer.render, references encoded once as a dub does), eval mode, CPU threads as
torch sets them, after allocator.keep_freed_memory() as inference.py applies on CPU; multiply-accumulates from
torch.utils.flop_counter (FLOPs / 2), and parameter counts. Then one training step (train_render.gan_step, full
loss, batch 2, N=3, random VGG19, float32) per size: its time and the peak bytes of the tensors it creates
(testing/memory.py), the activations a GPU must hold beside the weights and optimiser state. Each row's ratios are
against the 128 row.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import train_render
from allocator import keep_freed_memory
from config import read_yaml
from losses.perceptual import PerceptualLoss, load_vgg19_features
from models.discriminator import MultiscaleDiscriminator
from models.renderer import BASE_SIZE, FACE_SIZES, Renderer
from testing.memory import LiveTensorBytes


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


def training_step(size: int, perceptual: PerceptualLoss, batch: int = 2, refs: int = 3) -> tuple[float, int, int]:
    """(seconds, peak bytes of the tensors it creates, bytes of weights + Adam state) of one full-loss step at
    `size`, with a discriminator of one more scale per doubling (configs/render_256.yaml, render_512.yaml)."""
    torch.manual_seed(0)
    scales = 2 + (size // BASE_SIZE).bit_length() - 1
    generator, discriminator = Renderer(size), MultiscaleDiscriminator(scales=scales)
    g_opt = torch.optim.Adam(generator.parameters(), 1e-4)
    d_opt = torch.optim.Adam(discriminator.parameters(), 1e-4, betas=(0.5, 0.999))
    face, sketches, ref_images, ref_sketches, mels = inputs(size, refs, batch)
    data = {"face": face, "sketches": sketches, "ref_images": ref_images, "ref_sketches": ref_sketches, "mels": mels}
    weights = read_yaml(train_render.BASE_CONFIG)["loss"]  # the paper's weights

    def step():
        return train_render.gan_step(generator, discriminator, g_opt, d_opt, perceptual, data, weights, False,
                                     lambda: torch.autocast("cpu", enabled=False))

    step()  # the optimisers' state exists from here on
    start = time.perf_counter()
    with LiveTensorBytes() as live:
        step()
    seconds = time.perf_counter() - start
    parameters = sum(p.numel() for p in [*generator.parameters(), *discriminator.parameters()])
    return seconds, live.peak, 4 * 4 * parameters  # float32 weights, gradients and Adam's two moments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(FACE_SIZES), choices=FACE_SIZES)
    parser.add_argument("--refs", type=int, nargs="+", default=[25])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-training", action="store_true")
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
    if args.skip_training:
        return
    perceptual = PerceptualLoss(load_vgg19_features(allow_random=True))
    print("training step, full loss, batch 2, N=3, float32 (testing/memory.py counts the step's own tensors):")
    print(f"{'size':>5} {'s/step':>7} {'GB per sample':>14} {'GB weights+Adam':>16} {'time vs 128':>12}")
    base = None
    for size in sorted(args.sizes):
        seconds, peak, state = training_step(size, perceptual)
        base = base or seconds
        print(f"{size:>5} {seconds:7.1f} {peak / 2 / 1e9:14.2f} {state / 1e9:16.2f} {seconds / base:11.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
