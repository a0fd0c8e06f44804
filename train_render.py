"""Train the renderer (stage 2): alignment + translation, VGG perceptual/style and multiscale PatchGAN losses.

  python train_render.py --config configs/render.yaml [--resume auto|PATH] [dotted.key=value ...]
  torchrun --nproc_per_node 4 train_render.py --config configs/render.yaml

For the first schedule.warmup_epochs epochs only the warp loss trains (the alignment module); then the full
loss: warp + reconstruction perceptual + style + LSGAN + feature matching, weights from the config. The
discriminator's update uses only its own loss: the generator's adversarial gradients that reach it are cleared
first (the official trainer mixes the two).

Every hyper-parameter lives in configs/render.yaml (the paper's values). The --config file is laid over it, so it
may hold only the keys it changes (configs/render_smoke.yaml does); `key=value` arguments override both (an
unknown key is an error). The resolved config, checkpoints and TensorBoard events go to run_dir.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import numpy as np
import torch

from config import REPO, autocast
from data.errors import InputError
from data.landmarks import SKETCH_CENTRE
from losses.gan import feature_matching_loss, lsgan_loss
from losses.perceptual import PerceptualLoss, load_vgg19_features
from metrics.image import PSNR_EPS, psnr, ssim
from models.discriminator import MultiscaleDiscriminator
from models.renderer import Renderer
from training import checkpoints, cli, distributed, loop
from training.stopping import LossGuard

BASE_CONFIG = REPO / "configs" / "render.yaml"  # every key; a --config file is laid over it
UPSCALED_WARNING = 0.5  # warn when more than this share of the training faces was enlarged from a smaller box


def generator_loss(weights: dict[str, float], warm_up: bool, perceptual: PerceptualLoss,
                   discriminator: torch.nn.Module, face: torch.Tensor, generated: torch.Tensor | None,
                   warped: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generator's weighted loss and its parts (unweighted tensors); during warm-up the warp loss alone."""
    targets = perceptual.targets(face)  # VGG features of the real face, shared by the warp and reconstruction terms
    warp, _ = perceptual(warped, targets=targets)
    parts = {"warp": warp}
    total = weights["warp"] * warp
    if not warm_up:
        reconstruction, style = perceptual(generated, style=True, targets=targets)
        scores = discriminator(torch.cat([generated, face]))  # one call: fake and real features together
        fake = [[f[: len(face)] for f in scale] for scale in scores]
        real = [[f[len(face):] for f in scale] for scale in scores]
        parts.update(reconstruction=reconstruction, style=style, gan=lsgan_loss(fake, real=True),
                     feature_matching=feature_matching_loss(fake, real))
        total = total + sum(weights[name] * parts[name] for name in
                            ("reconstruction", "style", "gan", "feature_matching"))
    return total, parts


def discriminator_loss(discriminator: torch.nn.Module, face: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """LSGAN loss of the discriminator: generated (detached) -> 0, real -> 1, halved."""
    scores = discriminator(torch.cat([generated.detach(), face]))
    fake = [[f[: len(face)] for f in scale] for scale in scores]
    real = [[f[len(face):] for f in scale] for scale in scores]
    return 0.5 * (lsgan_loss(fake, real=False) + lsgan_loss(real, real=True))


def gan_step(generator: torch.nn.Module, discriminator: torch.nn.Module, g_optimiser: torch.optim.Optimizer,
             d_optimiser: torch.optim.Optimizer, perceptual: PerceptualLoss, batch: dict[str, torch.Tensor],
             weights: dict[str, float], warm_up: bool, device_autocast: Callable[[], contextlib.AbstractContextManager],
             guard: LossGuard | None = None) -> dict[str, torch.Tensor]:
    """One training step: the generator's update, then (after warm-up) the discriminator's on its own loss.
    `generator` and `discriminator` may be DDP wrappers. `guard` checks each loss before its optimiser uses it (a
    skipped update leaves its parts out). The parts come back as detached tensors on the device: the run reads
    them at its sync steps."""
    if guard is not None:
        guard.begin(generator, discriminator)
    with device_autocast():
        generated, warped = generator(batch["face"], batch["sketches"], batch["ref_images"], batch["ref_sketches"],
                                      batch["mels"], warp_only=warm_up)
    generated = generated.float() if generated is not None else None
    warped = warped.float()
    # The generator's backward also fills the discriminator's gradients; skip their all-reduce under DDP.
    skip_sync = discriminator.no_sync() if hasattr(discriminator, "no_sync") and not warm_up \
        else contextlib.nullcontext()
    with skip_sync:
        loss, parts = generator_loss(weights, warm_up, perceptual, discriminator, batch["face"], generated, warped)
        if guard is not None and not guard.ok({"generator " + name: value for name, value in parts.items()},
                                          generator, discriminator):
            return {}
        g_optimiser.zero_grad(set_to_none=True)
        loss.backward()
    g_optimiser.step()
    parts = {name: value.detach() for name, value in parts.items()}
    if not warm_up:
        d_optimiser.zero_grad(set_to_none=True)  # drop what the generator's loss left in the discriminator
        d_loss = discriminator_loss(discriminator, batch["face"], generated)
        if guard is not None and not guard.ok({"discriminator": d_loss}, discriminator):
            return parts
        d_loss.backward()
        d_optimiser.step()
        parts["discriminator"] = d_loss.detach()
    return parts


def image_grid(batch: dict, generated: torch.Tensor, warped: torch.Tensor, count: int = 4) -> np.ndarray:
    """Rows of [target sketch | references | warped reference | generated | target], (rows*S, W, 3) uint8, S the
    face size."""
    rows = []
    for i in range(min(count, len(generated))):
        tiles = [batch["sketches"][i, SKETCH_CENTRE], *batch["ref_images"][i], warped[i], generated[i],
                 batch["face"][i]]
        rows.append(torch.cat([t.detach().float().cpu().clamp(0, 1) for t in tiles], dim=2))
    return (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, batches: int
             ) -> tuple[dict[str, float], np.ndarray | None]:
    """Mean PSNR and SSIM of generated vs target faces over `batches` batches, and an image grid."""
    model.eval()
    scores, count, grid = {"psnr": 0.0, "ssim": 0.0}, 0, None
    for batch in loop.eval_batches(loader, device, batches):
        generated, warped = model(batch["face"], batch["sketches"], batch["ref_images"], batch["ref_sketches"],
                                  batch["mels"])
        values = psnr(generated.float(), batch["face"], PSNR_EPS)  # evaluate.py's definition: 80 dB at most
        scores["psnr"] += values.sum().item()
        scores["ssim"] += ssim(generated.float(), batch["face"]).sum().item()
        count += len(values)
        if grid is None:
            grid = image_grid(batch, generated, warped)
    model.train()
    return {name: value / max(count, 1) for name, value in scores.items()}, grid


def render_data(config: dict, env: distributed.Distributed) -> tuple:
    """(the validation set, None without a val list; the training loader), with the run's report of both sets and
    a warning when most training faces were enlarged to the face size."""
    from data.datasets import RenderFrames  # here, so that the step above imports without OpenCV (bench/gpu.py)

    data, sample, schedule, size = config["data"], config["sample"], config["schedule"], config["face_size"]
    train_set = RenderFrames(loop.record_list(data, "train"), sample["refs"], sample["min_face_frames"],
                             seed=config["seed"], repeats=sample["epoch_repeats"], progress=env.main,
                             pack_dir=data["pack_dir"], on_bad_record=schedule["on_bad_record"], face_size=size)
    val_stems = loop.record_list(data, "val")
    val_set = RenderFrames(val_stems, sample["refs"], sample["min_face_frames"], seed=config["seed"] + 1,
                           pack_dir=data["pack_dir"], on_bad_record=schedule["on_bad_record"],
                           face_size=size) if val_stems else None
    loop.report_data(env, train_set, val_set, sample["min_face_frames"])
    upscaled = train_set.pack.upscaled_share()
    if upscaled > UPSCALED_WARNING and env.main:
        print(f"warning: {upscaled:.0%} of the training faces were enlarged to {size}x{size} from smaller face boxes "
              "(LRS2's 160x160 frames are); a higher-resolution set (HDTF, or your own footage) serves this size "
              "better (docs/preprocessing.md)", file=sys.stderr)
    loader = loop.train_loader(train_set, config, env)
    if loader.batch_size < 2:
        raise InputError("optim.batch_size", "needs at least 2 samples per process (the audio encoder's BatchNorm "
                                             "sees one value per channel)")
    return val_set, loader


def train(config: dict, resume: str | None) -> int:
    """Train the renderer and its discriminator to schedule.max_steps (from the checkpoint `resume` names, if any);
    returns 0."""
    env = distributed.begin(config)
    optim, schedule, size = config["optim"], config["schedule"], config["face_size"]
    val_set, loader = render_data(config, env)

    vgg = config["vgg19"]
    if vgg["allow_random"] and env.main:
        print("warning: VGG19 is randomly initialised (vgg19.allow_random): the perceptual loss is not the "
              "paper's; use only for smoke runs and tests", file=sys.stderr)
    perceptual = PerceptualLoss(load_vgg19_features(vgg["path"], allow_random=vgg["allow_random"])).to(env.device)
    generator = Renderer(face_size=size).to(env.device)
    discriminator = MultiscaleDiscriminator(**config["discriminator"]).to(env.device)
    g_optimiser = torch.optim.Adam(generator.parameters(), lr=optim["lr"])
    d_optimiser = torch.optim.Adam(discriminator.parameters(), lr=optim["disc_lr"], betas=tuple(optim["disc_betas"]))
    optimisers = {"generator": g_optimiser, "discriminator": d_optimiser}
    others = {"discriminator": discriminator}
    step = checkpoints.resume(resume, config, env, generator, optimisers, others)
    d_model = distributed.wrap(discriminator, env)

    def save(step: int, alone: bool = False) -> None:
        checkpoints.save(config, env, step, "renderer", generator, optimisers, {"face_size": size}, others, alone)

    def run_eval(step: int, logger: loop.Logger) -> None:
        if val_set is not None:
            scores, grid = evaluate(generator, loop.eval_loader(val_set, config, env), env.device,
                                    schedule["eval_batches"])
            loop.log_eval(logger, step, scores, "eval/sketch_refs_warped_generated_target", grid,
                          f"step {step} (epoch {step // run.batches_per_epoch}): eval PSNR {scores['psnr']:.2f} dB, "
                          f"SSIM {scores['ssim']:.4f}")

    generator.train()
    discriminator.train()
    g_model, wrapped_for = None, None  # the generator under DDP, and the phase (warm-up or not) it was wrapped for
    with loop.Run(config, env, loader, step, save, run_eval) as run:
        for epoch in run.epochs():
            warm_up = epoch < schedule["warmup_epochs"]
            if warm_up != wrapped_for:
                # During warm-up the translation module gets no gradient, so DDP must look for unused parameters;
                # after it, that search would cost a graph traversal every step: wrap again at the switch (and on
                # a resume, for the phase the run is in).
                g_model, wrapped_for = distributed.wrap(generator, env, find_unused=warm_up), warm_up
            for batch in loader:
                losses = gan_step(g_model, d_model, g_optimiser, d_optimiser, perceptual, run.to_device(batch),
                                  config["loss"], warm_up, lambda: autocast(env.device, config["bf16"]), run.guard)
                run.after_step(losses)
    loop.finish(env, [generator, discriminator])
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(__doc__, train, argv, base=BASE_CONFIG)


if __name__ == "__main__":
    sys.exit(main())
