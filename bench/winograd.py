"""Winograd F(4x4, 3x3) against oneDNN's direct convolution, one 3x3 convolution at a time (models/winograd.py).

  python -m bench.winograd [--repeats 8]

For the renderer's 3x3 shapes (input channels, output channels, plane) at batch 1 and at batch 3 (a CPU chunk of
references), in float32 on the CPU (glibc set as a dub sets it, allocator.py): the direct convolution's time,
Winograd's (models.winograd.conv3x3, whatever `applies` says), their ratio, and each one's largest error against
the float64 sum relative to the output's largest value. The rule in models/winograd.py (at least MIN_CHANNELS
input channels, planes up to MAX_PIXELS) takes the shapes where the ratio is below 1.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from allocator import keep_freed_memory
from models import winograd

# (input channels, output channels, plane side): the renderer's 3x3 convolutions at stride 1
SHAPES = [(256, 256, 64), (256, 512, 64), (128, 128, 64), (256, 128, 128), (256, 256, 128), (64, 64, 128),
          (32, 32, 128)]


def seconds(call, x: torch.Tensor, conv: nn.Conv2d, repeats: int) -> float:
    call(x, conv)
    started = time.perf_counter()
    for _ in range(repeats):
        call(x, conv)
    return (time.perf_counter() - started) / repeats


def direct(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, 1, 1)


def fast(x: torch.Tensor, conv: winograd.WinogradConv2d) -> torch.Tensor:
    return winograd.conv3x3(x, [conv])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    keep_freed_memory()  # as a CPU dub runs
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| in | out | plane | batch | direct ms | Winograd ms | ratio | direct error | Winograd error | applies |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cin, cout, side in SHAPES:
        conv = nn.Conv2d(cin, cout, 3, 1, 1)
        conv.__class__ = winograd.WinogradConv2d  # timed below whatever the rule says
        for batch in (1, 3):
            x = torch.randn(batch, cin, side, side)
            with torch.inference_mode():
                exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), 1, 1)
                times = [seconds(call, x, conv, args.repeats) for call in (direct, fast)]
                scale = exact.abs().max().item()
                errors = [(call(x, conv).double() - exact).abs().max().item() / scale for call in (direct, fast)]
                rule = winograd.applies(x)
            print(f"| {cin} | {cout} | {side}x{side} | {batch} | {times[0] * 1e3:.1f} | {times[1] * 1e3:.1f} | "
                  f"{times[1] / times[0]:.2f}x | {errors[0]:.1e} | {errors[1]:.1e} | {'yes' if rule else 'no'} |")


if __name__ == "__main__":
    main()
