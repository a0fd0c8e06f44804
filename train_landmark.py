"""Train the landmark generator (stage 1).

  python train_landmark.py --config configs/landmark.yaml [--resume auto|PATH] [dotted.key=value ...]
  torchrun --nproc_per_node 4 train_landmark.py --config configs/landmark.yaml

Every hyper-parameter lives in configs/landmark.yaml (the paper's values). The --config file is laid over it, so
it may hold only the keys it changes (configs/landmark_smoke.yaml does); `key=value` arguments override both (an
unknown key is an error). The resolved config, checkpoints and TensorBoard events go to run_dir.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from config import REPO, autocast
from data.landmarks import merge_pose_content
from losses.landmark import landmark_loss
from models.landmark_generator import LandmarkGenerator
from training import checkpoints, cli, distributed, loop
from training.stopping import LossGuard

BASE_CONFIG = REPO / "configs" / "landmark.yaml"  # every key; a --config file is laid over it


def sketch_grid(pose: torch.Tensor, true: torch.Tensor, pred: torch.Tensor, count: int = 4) -> np.ndarray:
    """Rows of [true | predicted] sketches of the centre frame of the first samples: (rows*128, 256, 3) uint8."""
    from data.sketch import draw_sketch

    rows = []
    centre = pose.shape[1] // 2
    for i in range(min(count, pose.shape[0])):
        pair = [draw_sketch(merge_pose_content(pose[i, centre].numpy(), c[i, centre].numpy()), (128, 128))
                for c in (true, pred)]
        rows.append(np.concatenate(pair, axis=1))
    return np.repeat(np.concatenate(rows, axis=0)[..., None], 3, axis=2)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, batches: int, velocity_weight: float
             ) -> tuple[dict[str, float], np.ndarray | None]:
    """Mean eval L1 and velocity loss over `batches` batches, and a sketch grid of the first batch."""
    model.eval()
    totals, count, grid = {"l1": 0.0, "velocity": 0.0}, 0, None
    for batch in loop.eval_batches(loader, device, batches):
        pred = model(batch["mels"], batch["pose"], batch["ref_pose"], batch["ref_content"]).float()
        _, parts = landmark_loss(pred, batch["content"], velocity_weight)
        for name in totals:
            totals[name] += parts[name].item()
        count += 1
        if grid is None:
            grid = sketch_grid(batch["pose"].cpu(), batch["content"].cpu(), pred.cpu())
    model.train()
    return {name: value / max(count, 1) for name, value in totals.items()}, grid


def landmark_step(model: torch.nn.Module, optimiser: torch.optim.Optimizer, guard: LossGuard,
                  batch: dict[str, torch.Tensor], velocity_weight: float,
                  device_autocast: Callable[[], AbstractContextManager]) -> dict[str, torch.Tensor | float]:
    """One optimisation step; the loss parts come back as device tensors (the run reads them at sync steps), with
    the learning rate. `model` may be the DDP wrapper; `guard` checks the parts before the optimiser uses them."""
    guard.begin(model)
    with device_autocast():
        pred = model(batch["mels"], batch["pose"], batch["ref_pose"], batch["ref_content"])
    loss, parts = landmark_loss(pred.float(), batch["content"], velocity_weight)
    if not guard.ok(parts, model):
        return {}
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return {"l1": parts["l1"].detach(), "velocity": parts["velocity"].detach(), "lr": optimiser.param_groups[0]["lr"]}


def train(config: dict, resume: str | None) -> int:
    """Train the landmark generator to schedule.max_steps (from the checkpoint `resume` names, if any); returns 0."""
    from data.datasets import LandmarkWindows  # here, so that the step above imports without OpenCV (bench/gpu.py)

    env = distributed.begin(config)
    data, sample, schedule = config["data"], config["sample"], config["schedule"]
    velocity_weight = config["loss"]["velocity_weight"]
    train_set = LandmarkWindows(loop.record_list(data, "train"), sample["steps"], sample["refs"],
                                sample["min_face_frames"], seed=config["seed"], repeats=sample["epoch_repeats"],
                                progress=env.main, pack_dir=data["pack_dir"],
                                on_bad_record=schedule["on_bad_record"])
    val_stems = loop.record_list(data, "val")
    val_set = (LandmarkWindows(val_stems, sample["steps"], sample["refs"], sample["min_face_frames"],
                               seed=config["seed"] + 1, pack_dir=data["pack_dir"],
                               on_bad_record=schedule["on_bad_record"]) if val_stems else None)
    loop.report_data(env, train_set, val_set, sample["min_face_frames"])
    loader = loop.train_loader(train_set, config, env)

    model_args = dict(config["model"])
    model = LandmarkGenerator(**model_args).to(env.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config["optim"]["lr"])
    optimisers = {"model": optimiser}
    step = checkpoints.resume(resume, config, env, model, optimisers)
    ddp = distributed.wrap(model, env)

    def save(step: int, alone: bool = False) -> None:
        checkpoints.save(config, env, step, "landmark_generator", model, optimisers, model_args, alone=alone)

    def run_eval(step: int, logger: loop.Logger) -> None:
        if val_set is not None:
            scores, grid = evaluate(model, loop.eval_loader(val_set, config, env), env.device,
                                    schedule["eval_batches"], velocity_weight)
            loop.log_eval(logger, step, scores, "eval/sketches_true_vs_predicted", grid,
                          f"step {step}: eval L1 {scores['l1']:.5f}, velocity {scores['velocity']:.5f}")

    model.train()
    with loop.Run(config, env, loader, step, save, run_eval) as run:
        for _epoch in run.epochs():
            for batch in loader:
                losses = landmark_step(ddp, optimiser, run.guard, run.to_device(batch), velocity_weight,
                                       lambda: autocast(env.device, config["bf16"]))
                run.after_step(losses)
    loop.finish(env, [model])
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(__doc__, train, argv, base=BASE_CONFIG)


if __name__ == "__main__":
    sys.exit(main())
