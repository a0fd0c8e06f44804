"""Train the landmark generator (stage 1).

  python train_landmark.py --config configs/landmark.yaml [--resume auto|PATH] [dotted.key=value ...]
  torchrun --nproc_per_node 4 train_landmark.py --config configs/landmark.yaml

Every hyper-parameter lives in the YAML (the paper's values in configs/landmark.yaml); `key=value` arguments
override it (an unknown key is an error). The resolved config, checkpoints and TensorBoard events go to run_dir.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import training
from data.datasets import LandmarkWindows, read_filelist, records_under
from data.errors import InputError
from data.landmarks import merge_pose_content
from data.sketch import draw_sketch
from losses.landmark import landmark_loss
from models.landmark_generator import LandmarkGenerator

BATCH_KEYS = ("mels", "pose", "content", "ref_pose", "ref_content")


def record_list(data: dict, split: str) -> list[Path] | None:
    """Stems of a split: a file list (paths under data.records) or a folder of records; for train, every record
    under data.records when the list is null."""
    listed = data.get(f"{split}_list")
    if listed:
        return records_under(listed) if Path(listed).is_dir() else read_filelist(listed, data["records"])
    return records_under(data["records"]) if split == "train" else None


def sketch_grid(pose: torch.Tensor, true: torch.Tensor, pred: torch.Tensor, count: int = 4) -> np.ndarray:
    """Rows of [true | predicted] sketches of the centre frame of the first samples: (rows*128, 256, 3) uint8."""
    rows = []
    centre = pose.shape[1] // 2
    for i in range(min(count, pose.shape[0])):
        pair = [draw_sketch(merge_pose_content(pose[i, centre].numpy(), c[i, centre].numpy()), (128, 128))
                for c in (true, pred)]
        rows.append(np.concatenate(pair, axis=1))
    return np.repeat(np.concatenate(rows, axis=0)[..., None], 3, axis=2)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device, batches: int, velocity_weight: float):
    """Mean eval L1 and velocity loss over `batches` batches, and a sketch grid of the first batch."""
    model.eval()
    totals, count, grid = {"l1": 0.0, "velocity": 0.0}, 0, None
    for index, batch in enumerate(loader):
        if index >= batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        pred = model(batch["mels"], batch["pose"], batch["ref_pose"], batch["ref_content"]).float()
        _, parts = landmark_loss(pred, batch["content"], velocity_weight)
        for name in totals:
            totals[name] += parts[name].item()
        count += 1
        if grid is None:
            grid = sketch_grid(batch["pose"].cpu(), batch["content"].cpu(), pred.cpu())
    model.train()
    return {name: value / max(count, 1) for name, value in totals.items()}, grid


def check_replicas(model: torch.nn.Module, env: training.Distributed) -> bool:
    """True when every rank holds the same parameters (compared through a float64 fingerprint)."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    fingerprint = torch.stack([flat.sum(), (flat * torch.arange(1, len(flat) + 1, dtype=torch.float64,
                                                                  device=flat.device).sin()).sum()])
    gathered = [torch.zeros_like(fingerprint) for _ in range(env.world)]
    dist.all_gather(gathered, fingerprint)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def train(config: dict, resume: str | None) -> int:
    env = training.setup(config["device"])
    run_dir = Path(config["run_dir"])
    training.seed_everything(config["seed"])  # same initial weights on every rank (DDP also broadcasts them)
    data, sample, optim, schedule = config["data"], config["sample"], config["optim"], config["schedule"]
    if optim["batch_size"] % env.world:
        raise InputError("optim.batch_size", f"{optim['batch_size']} does not divide over {env.world} processes")
    per_rank = optim["batch_size"] // env.world

    train_set = LandmarkWindows(record_list(data, "train"), sample["steps"], sample["refs"],
                                sample["min_face_frames"], seed=config["seed"], repeats=sample["epoch_repeats"],
                                progress=env.main)
    val_stems = record_list(data, "val")
    val_set = (LandmarkWindows(val_stems, sample["steps"], sample["refs"], sample["min_face_frames"],
                               seed=config["seed"] + 1) if val_stems else None)
    if env.main:
        print(f"train: {len(train_set.stems)} videos ({len(train_set.skipped)} skipped with fewer than "
              f"{sample['min_face_frames']} face frames, {len(train_set.missing)} missing)"
              + (f"; val: {len(val_set.stems)} videos" if val_set else "; no val split"), file=sys.stderr)
    sampler = training.EpochSampler(len(train_set), env.rank, env.world, config["seed"])
    loader = torch.utils.data.DataLoader(train_set, per_rank, sampler=sampler, num_workers=data["num_workers"],
                                         drop_last=True, pin_memory=env.device.type == "cuda",
                                         generator=torch.Generator())  # keeps the global RNG for the model
    batches_per_epoch = sampler.per_rank // per_rank
    if batches_per_epoch == 0:
        raise InputError("optim.batch_size", f"{per_rank} per process is more than the {sampler.per_rank} "
                                             "samples of an epoch (raise sample.epoch_repeats)")

    model_args = dict(config["model"])
    model = LandmarkGenerator(**model_args).to(env.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=optim["lr"])
    step = 0
    checkpoint = training.resolve_resume(resume, run_dir)
    if checkpoint is not None:
        step = training.restore(checkpoint, model, {"model": optimiser})
        if env.main:
            print(f"resumed from {checkpoint} at step {step}", file=sys.stderr)
    ddp = DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None) \
        if env.world > 1 else model
    if env.main:
        training.save_config(config, run_dir)
    logger = training.Logger(run_dir, env.main)

    def save():
        if env.main:
            state = training.training_state(model, {"model": optimiser}, step, config, "landmark_generator",
                                            model_args)
            training.save_checkpoint(run_dir, step, state, schedule["keep_last"])

    bar = tqdm(total=schedule["max_steps"], initial=step, disable=not env.main, unit="step")
    running = {"l1": 0.0, "velocity": 0.0}
    epoch = step // batches_per_epoch
    offset = (step % batches_per_epoch) * per_rank
    model.train()
    while step < schedule["max_steps"]:
        sampler.set_epoch(epoch, offset)
        train_set.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
            with training.autocast(env.device, config["bf16"]):
                pred = ddp(batch["mels"], batch["pose"], batch["ref_pose"], batch["ref_content"])
            loss, parts = landmark_loss(pred.float(), batch["content"], config["loss"]["velocity_weight"])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            for name in running:
                running[name] += parts[name].item()
            bar.update(1)
            if step % schedule["log_every"] == 0:
                means = {name: value / schedule["log_every"] for name, value in running.items()}
                logger.scalars({**means, "lr": optimiser.param_groups[0]["lr"]}, step, "train/")
                bar.set_postfix(l1=f"{means['l1']:.4f}", velocity=f"{means['velocity']:.4f}")
                running = dict.fromkeys(running, 0.0)
            if val_set is not None and step % schedule["eval_every"] == 0:
                if env.main:
                    val_loader = torch.utils.data.DataLoader(val_set, per_rank, shuffle=False,
                                                             num_workers=data["num_workers"])
                    scores, grid = evaluate(model, val_loader, env.device, schedule["eval_batches"],
                                            config["loss"]["velocity_weight"])
                    logger.scalars(scores, step, "eval/")
                    if grid is not None:
                        logger.image("eval/sketches_true_vs_predicted", grid, step)
                    tqdm.write(f"step {step}: eval L1 {scores['l1']:.5f}, velocity {scores['velocity']:.5f}",
                               file=sys.stderr)
                if env.world > 1:
                    dist.barrier()
            if step % schedule["save_every"] == 0 or step == schedule["max_steps"]:
                save()
            if step >= schedule["max_steps"]:
                break
        epoch, offset = epoch + 1, 0
    bar.close()
    logger.close()
    if env.world > 1:
        same = check_replicas(model, env)
        if env.main:
            print(f"parameters identical on all {env.world} ranks: {same}", file=sys.stderr)
    training.teardown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/landmark.yaml")
    parser.add_argument("--resume", help="'auto' (newest checkpoint in run_dir, if any) or a checkpoint path")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. optim.lr=5e-5 run_dir=runs/x")
    args = parser.parse_args(argv)
    try:
        return train(training.load_config(args.config, args.overrides), args.resume)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
