"""Train the renderer (stage 2): alignment + translation, VGG perceptual/style and multiscale PatchGAN losses.

  python train_render.py --config configs/render.yaml [--resume auto|PATH] [dotted.key=value ...]
  torchrun --nproc_per_node 4 train_render.py --config configs/render.yaml

For the first schedule.warmup_epochs epochs only the warp loss trains (the alignment module); then the full
loss: warp + reconstruction perceptual + style + LSGAN + feature matching, weights from the config. The
discriminator's update uses only its own loss: the generator's adversarial gradients that reach it are cleared
first (the official trainer mixes the two).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import training
from data.datasets import RenderFrames
from data.errors import InputError
from losses.gan import feature_matching_loss, lsgan_loss
from losses.perceptual import PerceptualLoss, load_vgg19_features
from metrics.image import psnr, ssim
from models.discriminator import MultiscaleDiscriminator
from models.renderer import Renderer


def generator_loss(weights: dict, warm_up: bool, perceptual: PerceptualLoss, discriminator, face, generated, warped
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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


def discriminator_loss(discriminator, face, generated) -> torch.Tensor:
    """LSGAN loss of the discriminator: generated (detached) -> 0, real -> 1, halved."""
    scores = discriminator(torch.cat([generated.detach(), face]))
    fake = [[f[: len(face)] for f in scale] for scale in scores]
    real = [[f[len(face):] for f in scale] for scale in scores]
    return 0.5 * (lsgan_loss(fake, real=False) + lsgan_loss(real, real=True))


def gan_step(generator, discriminator, g_optimiser, d_optimiser, perceptual, batch, weights, warm_up,
             device_autocast, guard: training.LossGuard | None = None) -> dict[str, float]:
    """One training step: the generator's update, then (after warm-up) the discriminator's on its own loss.
    `guard` checks each loss before its optimiser uses it (a skipped update leaves its parts out)."""
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
    parts = {name: value.item() for name, value in parts.items()}
    if not warm_up:
        d_optimiser.zero_grad(set_to_none=True)  # drop what the generator's loss left in the discriminator
        d_loss = discriminator_loss(discriminator, batch["face"], generated)
        if guard is not None and not guard.ok({"discriminator": d_loss}, discriminator):
            return parts
        d_loss.backward()
        d_optimiser.step()
        parts["discriminator"] = d_loss.item()
    return parts


def image_grid(batch: dict, generated: torch.Tensor, warped: torch.Tensor, count: int = 4) -> np.ndarray:
    """Rows of [target sketch | references | warped reference | generated | target], (rows*128, W, 3) uint8."""
    rows = []
    for i in range(min(count, len(generated))):
        tiles = [batch["sketches"][i, 2], *batch["ref_images"][i], warped[i], generated[i], batch["face"][i]]
        rows.append(torch.cat([t.detach().float().cpu().clamp(0, 1) for t in tiles], dim=2))
    return (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def evaluate(model, loader, device, batches: int) -> tuple[dict, np.ndarray | None]:
    """Mean PSNR and SSIM of generated vs target faces over `batches` batches, and an image grid."""
    model.eval()
    scores, count, grid = {"psnr": 0.0, "ssim": 0.0}, 0, None
    for batch in training.eval_batches(loader, device, batches):
        generated, warped = model(batch["face"], batch["sketches"], batch["ref_images"], batch["ref_sketches"],
                                  batch["mels"])
        values = psnr(generated.float(), batch["face"]).clamp(max=100)
        scores["psnr"] += values.sum().item()
        scores["ssim"] += ssim(generated.float(), batch["face"]).sum().item()
        count += len(values)
        if grid is None:
            grid = image_grid(batch, generated, warped)
    model.train()
    return {name: value / max(count, 1) for name, value in scores.items()}, grid


def train(config: dict, resume: str | None) -> int:
    env = training.setup(config["device"])
    run_dir = Path(config["run_dir"])
    training.seed_everything(config["seed"])
    data, sample, optim, schedule = config["data"], config["sample"], config["optim"], config["schedule"]
    if optim["batch_size"] // env.world < 2:
        raise InputError("optim.batch_size", "needs at least 2 samples per process (the audio encoder's BatchNorm "
                                             "sees one value per channel)")
    train_set = RenderFrames(training.record_list(data, "train"), sample["refs"], sample["min_face_frames"],
                             seed=config["seed"], repeats=sample["epoch_repeats"], progress=env.main)
    val_stems = training.record_list(data, "val")
    val_set = RenderFrames(val_stems, sample["refs"], sample["min_face_frames"], seed=config["seed"] + 1) \
        if val_stems else None
    if env.main:
        print(f"train: {len(train_set.stems)} videos ({len(train_set.skipped)} skipped, {len(train_set.missing)} "
              f"missing)" + (f"; val: {len(val_set.stems)} videos" if val_set else "; no val split"),
              file=sys.stderr)

    vgg = config["vgg19"]
    if vgg["allow_random"] and env.main:
        print("warning: VGG19 is randomly initialised (vgg19.allow_random): the perceptual loss is not the "
              "paper's; use only for smoke runs and tests", file=sys.stderr)
    perceptual = PerceptualLoss(load_vgg19_features(vgg["path"], allow_random=vgg["allow_random"])).to(env.device)
    generator = Renderer().to(env.device)
    discriminator = MultiscaleDiscriminator(**config["discriminator"]).to(env.device)
    g_optimiser = torch.optim.Adam(generator.parameters(), lr=optim["lr"])
    d_optimiser = torch.optim.Adam(discriminator.parameters(), lr=optim["disc_lr"], betas=tuple(optim["disc_betas"]))
    optimisers = {"generator": g_optimiser, "discriminator": d_optimiser}
    step = 0
    resumed = training.resume_state(resume, run_dir, warn=env.main)
    if resumed is not None:
        step = training.restore(resumed, generator, optimisers, {"discriminator": discriminator})
        if env.main:
            print(f"resumed from {resumed[0]} at step {step}", file=sys.stderr)
    if env.world > 1:
        ids = [env.local_rank] if env.device.type == "cuda" else None
        # During warm-up the translation module gets no gradient: let DDP expect unused parameters.
        g_model = DistributedDataParallel(generator, device_ids=ids, find_unused_parameters=True)
        d_model = DistributedDataParallel(discriminator, device_ids=ids)
    else:
        g_model, d_model = generator, discriminator
    if env.main:
        training.save_config(config, run_dir)
    logger = training.Logger(run_dir, env.main)
    batches_per_epoch = (-(-len(train_set) // env.world)) // (optim["batch_size"] // env.world)

    guard = training.LossGuard(env, schedule["on_nonfinite"])

    def train_step(batch: dict, epoch: int) -> dict:
        warm_up = epoch < schedule["warmup_epochs"]
        return gan_step(g_model, d_model, g_optimiser, d_optimiser, perceptual, batch, config["loss"], warm_up,
                        lambda: training.autocast(env.device, config["bf16"]), guard)

    def run_eval(step: int) -> None:
        if val_set is None:
            return
        loader = torch.utils.data.DataLoader(val_set, optim["batch_size"] // env.world, shuffle=False,
                                             num_workers=data["num_workers"])
        scores, grid = evaluate(generator, loader, env.device, schedule["eval_batches"])
        logger.scalars(scores, step, "eval/")
        if grid is not None:
            logger.image("eval/sketch_refs_warped_generated_target", grid, step)
        tqdm.write(f"step {step} (epoch {step // batches_per_epoch}): eval PSNR {scores['psnr']:.2f} dB, "
                   f"SSIM {scores['ssim']:.4f}", file=sys.stderr)

    def save(step: int) -> None:
        if env.main:
            training.check_finite_parameters({"renderer": generator, "discriminator": discriminator}, step)
            state = training.training_state(generator, optimisers, step, config, "renderer", {},
                                            {"discriminator": discriminator})
            training.save_checkpoint(run_dir, step, state, schedule["keep_last"])

    generator.train()
    discriminator.train()
    training.fit(config, env, train_set, step, train_step, run_eval, save, logger, guard)
    training.finish(env, logger, [generator, discriminator])
    return 0


def main(argv: list[str] | None = None) -> int:
    return training.main(__doc__, train, argv)


if __name__ == "__main__":
    sys.exit(main())
