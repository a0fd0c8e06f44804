"""Renderer cost per frame and per training step: this project's formulation against the official one.

  python -m bench.renderer [--repeats 3] [--refs 3 25] [--skip-training]

Per-frame forward at batch 1 for N = 3 and 25 references, eval mode, CPU threads as torch sets them:
  reference  the official formulation (testing/reference_renderer.py): the alignment network once per reference,
             SPADE gamma/beta recomputed for every reference; plus, as the official forward does, the VGG19
             perceptual and style losses it computes and discards (column 'official').
  ours       Renderer.render with the references encoded once (encode_references) and reused for every frame.
All columns run after allocator.keep_freed_memory(), which inference.py applies on CPU.
Multiply-accumulates per frame come from torch.utils.flop_counter (FLOPs / 2). The training step is timed at
batch 4, N=3, full loss (random VGG19 weights: speed does not depend on them), against bench/README.md's official
figure (49.0-53.3 s on this kind of machine).
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import train_render
from allocator import keep_freed_memory
from losses.perceptual import PerceptualLoss, load_vgg19_features
from models.discriminator import MultiscaleDiscriminator
from models.renderer import Renderer
from testing.reference_renderer import per_reference_forward

OFFICIAL_STEP_SECONDS = (49.0, 53.3)  # bench/README.md, warp-only and full loss, batch 4, N=3


def inputs(batch: int, refs: int):
    g = torch.Generator().manual_seed(0)
    sketches = (torch.rand(batch, 5, 1, 128, 128, generator=g) > 0.92).float().expand(-1, -1, 3, -1, -1) * 0.88
    ref_sketches = (torch.rand(batch, refs, 1, 128, 128, generator=g) > 0.92).float().expand(-1, -1, 3, -1, -1)
    return (torch.rand(batch, 3, 128, 128, generator=g), sketches.contiguous(),
            torch.rand(batch, refs, 3, 128, 128, generator=g), (ref_sketches * 0.88).contiguous(),
            torch.randn(batch, 1, 80, 16, generator=g))


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def macs(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def per_frame(model: Renderer, perceptual: PerceptualLoss, refs: int, repeats: int) -> None:
    """Print one row: per-frame seconds and MACs of the reference, the official forward and ours."""
    face, sketches, ref_images, ref_sketches, mels = inputs(1, refs)
    encoded = model.encode_references(ref_images, ref_sketches)

    def reference():
        return per_reference_forward(model, face, sketches, ref_images, ref_sketches, mels)

    def official():
        generated, warped = reference()
        perceptual(generated, face, style=True)  # the official forward's discarded losses
        perceptual(warped, face)

    def ours():
        return model.render(face, sketches, encoded, mels)

    t_ref, t_off, t_ours = (median_seconds(f, repeats) for f in (reference, official, ours))
    m_ref, m_ours = macs(reference), macs(ours)
    print(f"{refs:>3} {t_ref:12.2f} {t_off:11.2f} {t_ours:8.2f} {t_ours / t_off:10.2f}x "
          f"{m_ref / 1e9:9.0f} {m_ours / 1e9:10.0f} {m_ours / m_ref:9.2f}x")


def training_step(perceptual: PerceptualLoss, repeats: int) -> None:
    """Print the median training step at batch 4, N=3, warp-only and full loss, against the official figures."""
    generator, discriminator = Renderer(), MultiscaleDiscriminator()
    g_opt = torch.optim.Adam(generator.parameters(), 1e-4)
    d_opt = torch.optim.Adam(discriminator.parameters(), 1e-4, betas=(0.5, 0.999))
    face, sketches, ref_images, ref_sketches, mels = inputs(4, 3)
    batch = {"face": face, "sketches": sketches, "ref_images": ref_images, "ref_sketches": ref_sketches,
             "mels": mels}
    weights = {"warp": 2.5, "reconstruction": 4.0, "style": 1000.0, "gan": 0.25, "feature_matching": 2.5}
    ours = macs(functools.partial(train_render.gan_step, generator, discriminator, g_opt, d_opt, perceptual, batch,
                                  weights, False, lambda: torch.autocast("cpu", enabled=False)))

    def official_step():
        """The official step's arithmetic: per-reference renderer, the target's VGG features once per loss,
        three discriminator calls (fake for D, real, fake for G)."""
        generated, warped = per_reference_forward(generator, face, sketches, ref_images, ref_sketches, mels)
        reconstruction, style = perceptual(generated, face, style=True)
        warp, _ = perceptual(warped, face)
        fake, real, fake_for_g = (discriminator(x) for x in (generated.detach(), face, generated))
        d_loss = sum(s[-1].mean() for s in fake) + sum(s[-1].mean() for s in real)
        (warp + reconstruction + style + sum(s[-1].mean() for s in fake_for_g)).backward()
        d_loss.backward()

    official = macs(official_step)
    print(f"training step multiply-accumulates, batch 4, N=3, full loss: ours {ours / 1e9:.0f} G, official "
          f"formulation {official / 1e9:.0f} G ({ours / official:.2f}x)")
    for warm_up, official in zip((True, False), OFFICIAL_STEP_SECONDS):
        step = functools.partial(train_render.gan_step, generator, discriminator, g_opt, d_opt, perceptual, batch,
                                 weights, warm_up, lambda: torch.autocast("cpu", enabled=False))
        seconds = median_seconds(step, repeats)
        print(f"training step, batch 4, N=3, {'warp loss only' if warm_up else 'full loss':>14}: {seconds:6.1f} s "
              f"(official {official} s in bench/README.md: {seconds / official:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--refs", type=int, nargs="*", default=[3, 25],
                        help="reference counts for the per-frame rows (none: skip them)")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    keep_freed_memory()  # as inference.py does on CPU; the same for every column
    torch.manual_seed(0)
    model = Renderer().eval()
    perceptual = PerceptualLoss(load_vgg19_features(allow_random=True))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'N':>3} {'reference s':>12} {'official s':>11} {'ours s':>8} {'time ratio':>11} "
          f"{'ref GMAC':>9} {'ours GMAC':>10} {'MAC ratio':>10}")
    with torch.no_grad():
        for refs in args.refs:
            per_frame(model, perceptual, refs, args.repeats)
    print("time ratio = ours / official (the official forward includes its VGG losses); "
          "MAC ratio = ours / per-reference formulation")
    if not args.skip_training:
        training_step(perceptual, max(1, args.repeats - 1))


if __name__ == "__main__":
    main()
