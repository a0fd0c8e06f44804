"""What both trainers share: YAML config with dotted overrides, distributed set-up, sampling, checkpoints, logging.

A run is one folder (config `run_dir`) holding config.yaml (the resolved config), step_*.pt checkpoints and the
TensorBoard events. Single process on CPU or one GPU, or many with `torchrun` (DDP; NCCL on CUDA, gloo on CPU).
"""
from __future__ import annotations

import copy
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from config import load_config, pick_device
from data.errors import InputError, one_line

PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after writing a checkpoint; requeue with --resume auto
DIVERGED = 3
EXIT_STATUS = ("exit status: 0 when the run reached its last step; 2 for a user error (bad config or override, "
               "missing or damaged data or checkpoint), reported in one line; 3 when a loss became NaN or inf "
               "(nothing of that step saved; --resume auto restarts from the last good checkpoint); 75 when "
               "SIGTERM or SIGUSR1 (a scheduler's preemption notice) stopped the run after it wrote a checkpoint at "
               "the step reached (requeue it with --resume auto); 130 when interrupted (Ctrl-C)")

# ---------------------------------------------------------------- config
def save_config(config: dict, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


# ---------------------------------------------------------------- distributed set-up
@dataclass
class Distributed:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Distributed:
    """Device and process group: torchrun's environment when present, else a single process. On CUDA each
    process takes the GPU of its LOCAL_RANK."""
    target = pick_device(device)
    wants_cuda = target.type == "cuda"
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if wants_cuda:
        target = torch.device("cuda", local_rank if target.index is None else target.index)
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if wants_cuda else "gloo")
    return Distributed(rank, world, local_rank, target)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the global RNG that library code draws from)
    torch.manual_seed(seed)


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation of range(n) per epoch, this rank's share of it, from an offset (for resuming).

    Every rank sees an equal number of indices (the permutation is padded by wrapping around), so DDP ranks
    step together; each rank gets a disjoint stride of it.
    """

    def __init__(self, size: int, rank: int = 0, world: int = 1, seed: int = 0):
        self.size, self.rank, self.world, self.seed = size, rank, world, seed
        self.epoch, self.offset = 0, 0
        self.per_rank = -(-size // world)

    def set_epoch(self, epoch: int, offset: int = 0) -> None:
        self.epoch, self.offset = epoch, offset

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        order = torch.cat([order, order[: self.per_rank * self.world - self.size]])
        return iter(order[self.rank::self.world][self.offset:].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.offset


# ---------------------------------------------------------------- checkpoints
CHECKPOINT = re.compile(r"step_(\d+)\.pt$")


def rng_state() -> dict:
    """Every RNG's state in types torch.load(weights_only=True) accepts."""
    name, keys, position, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position,
                                                    has_gauss, gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write step_<step>.pt atomically (temporary name, then rename) and keep only the newest `keep`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"step_{step:09d}.pt"
    temp = path.with_suffix(".pt.tmp")
    torch.save(state, temp)
    os.replace(temp, path)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """step_*.pt files in run_dir, oldest first."""
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.iterdir() if CHECKPOINT.search(p.name)),
                  key=lambda p: int(CHECKPOINT.search(p.name).group(1)))


RESUME_KEYS = ("model", "step", "optimisers", "rng")


def read_training_checkpoint(path: Path) -> dict:
    """A training checkpoint's state, or a one-line InputError naming the file and what is wrong with it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated zip, a foreign pickle, an empty file: all mean "damaged"
        raise InputError(path, f"damaged checkpoint ({one_line(error)[:120]})") from None
    missing = [key for key in RESUME_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise InputError(path, f"not a training checkpoint of this project (no {', '.join(missing)})")
    return state


def resume_state(resume: str | None, run_dir: Path, warn: bool = True) -> tuple[Path, dict] | None:
    """What --resume names, loaded: 'auto' takes the newest step_*.pt of the run that loads, skipping (never
    deleting) damaged ones with a one-line warning, and None when the run has none; a path must load."""
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise InputError(path, "no such checkpoint to resume from")
        return path, read_training_checkpoint(path)
    found = list_checkpoints(run_dir)
    for path in reversed(found):
        try:
            return path, read_training_checkpoint(path)
        except InputError as error:
            if warn:
                import sys

                print(f"warning: {error}; skipped, trying an older checkpoint", file=sys.stderr)
    if found:
        raise InputError(run_dir, f"no checkpoint loads ({', '.join(p.name for p in found)} are all damaged); "
                                  "move them away to start afresh")
    return None


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def training_state(model: torch.nn.Module, optimisers: dict, step: int, config: dict, kind: str,
                   model_args: dict, others: dict | None = None) -> dict:
    """One dict holds everything a resume needs, and what load_* needs to rebuild the network ('model').
    `others` holds further networks that training needs (a discriminator) under their names."""
    return {"kind": kind, "model": _bare(model).state_dict(), "model_args": model_args, "step": step,
            "others": {name: _bare(net).state_dict() for name, net in (others or {}).items()},
            "optimisers": {name: opt.state_dict() for name, opt in optimisers.items()},
            "config": copy.deepcopy(config), "rng": rng_state()}


def restore(resumed: tuple[Path, dict], model: torch.nn.Module, optimisers: dict, others: dict | None = None) -> int:
    """Load a training checkpoint (from `resume_state`) into the networks and optimisers, restore RNG states;
    returns its step. A checkpoint of another network or configuration is a one-line InputError."""
    path, state = resumed
    weights = state["model"]
    if state.get("kind") == "renderer":  # a run saved before the renderer's submodules got their current names
        from models.checkpoints import renamed_renderer_state

        weights = renamed_renderer_state(weights)
    try:
        _bare(model).load_state_dict(weights)
        for name, net in (others or {}).items():
            _bare(net).load_state_dict(state["others"][name])
        for name, optimiser in optimisers.items():
            optimiser.load_state_dict(state["optimisers"][name])
    except (RuntimeError, KeyError, ValueError) as error:
        raise InputError(path, f"does not fit this network and config ({one_line(error)[:160]})") from None
    set_rng_state(state["rng"])
    return int(state["step"])


# ---------------------------------------------------------------- a run's set-up, shared by both trainers
def begin(config: dict) -> Distributed:
    """The process's device and group, and the seeds (the same initial weights on every rank; DDP also broadcasts
    them)."""
    env = setup(config["device"])
    seed_everything(config["seed"])
    return env


def report_data(env: Distributed, train_set, val_set, min_face_frames: int) -> None:
    """One line on the main rank: how many videos each split holds and how many were left out."""
    if env.main:
        import sys

        print(f"train: {len(train_set.stems)} videos ({len(train_set.skipped)} skipped with fewer than "
              f"{min_face_frames} face frames or no full window, {len(train_set.missing)} missing)"
              + (f"; val: {len(val_set.stems)} videos" if val_set else "; no val split"), file=sys.stderr)


def resume_run(resume: str | None, config: dict, env: Distributed, model: torch.nn.Module, optimisers: dict,
               others: dict | None = None) -> int:
    """The step to start from: 0, or that of the checkpoint --resume names, restored into the networks."""
    resumed = resume_state(resume, Path(config["run_dir"]), warn=env.main)
    if resumed is None:
        return 0
    step = restore(resumed, model, optimisers, others)
    if env.main:
        import sys

        print(f"resumed from {resumed[0]} at step {step}", file=sys.stderr)
    return step


def distribute(network: torch.nn.Module, env: Distributed, find_unused: bool = False) -> torch.nn.Module:
    """The network under DDP when there are several processes; itself otherwise."""
    if env.world == 1:
        return network
    from torch.nn.parallel import DistributedDataParallel

    ids = [env.local_rank] if env.device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids, find_unused_parameters=find_unused)


def open_run(config: dict, env: Distributed) -> tuple[Logger, LossGuard]:
    """Write the resolved config into run_dir (main rank); the run's logger and loss guard."""
    run_dir = Path(config["run_dir"])
    if env.main:
        save_config(config, run_dir)
    return Logger(run_dir, env.main), LossGuard(env, config["schedule"]["on_nonfinite"])


def eval_loader(val_set, config: dict, env: Distributed):
    """Batches of the val split, in order, this process's share of the global batch size."""
    return torch.utils.data.DataLoader(val_set, config["optim"]["batch_size"] // env.world, shuffle=False,
                                       num_workers=config["data"]["num_workers"])


def log_eval(logger: Logger, step: int, scores: dict, grid_name: str, grid: np.ndarray | None, line: str) -> None:
    """Eval scores and image grid to TensorBoard, and one line to the console."""
    import sys

    from tqdm import tqdm

    logger.scalars(scores, step, "eval/")
    if grid is not None:
        logger.image(grid_name, grid, step)
    tqdm.write(line, file=sys.stderr)


def checkpoint_saver(config: dict, env: Distributed, kind: str, model: torch.nn.Module, optimisers: dict,
                     model_args: dict, others: dict | None = None):
    """save(step) for fit: on the main rank, refuse non-finite parameters, then write step_<step>.pt atomically
    and prune to schedule.keep_last."""
    run_dir, keep = Path(config["run_dir"]), config["schedule"]["keep_last"]

    def save(step: int) -> None:
        if env.main:
            check_finite_parameters({kind: model, **(others or {})}, step)
            state = training_state(model, optimisers, step, config, kind, model_args, others)
            save_checkpoint(run_dir, step, state, keep)

    return save


# ---------------------------------------------------------------- data
def record_list(data: dict, split: str) -> list[Path] | None:
    """Stems of a split: a file list (paths under data.records) or a folder of records; for train, every record
    under data.records when the list is null."""
    from data.datasets import read_filelist, records_under

    listed = data.get(f"{split}_list")
    if listed:
        return records_under(listed) if Path(listed).is_dir() else read_filelist(listed, data["records"])
    return records_under(data["records"]) if split == "train" else None


def eval_batches(loader, device: torch.device, batches: int):
    """The first `batches` batches of an eval loader, each moved to `device` (the trainers' evaluate loops)."""
    for index, batch in enumerate(loader):
        if index >= batches:
            break
        yield {k: v.to(device) for k, v in batch.items()}


def check_replicas(model: torch.nn.Module, env: Distributed) -> bool:
    """True when every rank holds the same parameters (compared through a float64 fingerprint)."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    weights = torch.arange(1, len(flat) + 1, dtype=torch.float64, device=flat.device).sin()
    fingerprint = torch.stack([flat.sum(), (flat * weights).sum()])
    gathered = [torch.zeros_like(fingerprint) for _ in range(env.world)]
    dist.all_gather(gathered, fingerprint)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


# ---------------------------------------------------------------- stopping: preemption, divergence
class Preempted(Exception):
    """Raised by fit after it saved a checkpoint on a stop signal."""

    def __init__(self, step: int, signal_name: str, main: bool):
        super().__init__(f"stopped by {signal_name} at step {step}")
        self.step, self.signal_name, self.main = step, signal_name, main


class Diverged(Exception):
    """A loss (or, at a save, a parameter) is not finite."""


class StopSignals:
    """Within `with`: SIGTERM and SIGUSR1 are noted instead of killing the process, so the loop can finish its
    step, save and exit. `requested(env)` is True on every rank once any rank has seen one (all ranks then save
    at the same step)."""

    NAMES = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread
            for name in self.NAMES:
                if hasattr(signal, name):
                    number = getattr(signal, name)
                    self._previous[number] = signal.signal(number, self._note)
        return self

    def _note(self, number, frame) -> None:
        import signal

        self.received = self.received or signal.Signals(number).name

    def __exit__(self, *exc) -> None:
        import signal

        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def requested(self, env: Distributed) -> bool:
        if env.world == 1:
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else 1], device=env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class LossGuard:
    """Checks a step's loss parts before the optimiser uses them. With `mode` 'stop' a non-finite part raises
    Diverged (nothing of the step is applied); with 'skip' the step is left out and counted, and the networks
    named to `ok` get back the buffers (BatchNorm statistics) that `begin` saw before the forward pass. Under DDP
    every rank takes the same decision."""

    def __init__(self, env: Distributed, mode: str):
        if mode not in ("stop", "skip"):
            raise InputError("schedule.on_nonfinite", f"must be 'stop' or 'skip', got {mode!r}")
        self.env, self.mode, self.skipped = env, mode, 0
        self._buffers: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def begin(self, *networks: torch.nn.Module) -> None:
        """Call before the step's forward pass: in skip mode, keep a copy of the networks' buffers."""
        if self.mode == "skip":
            self._buffers = {id(_bare(n)): [(b, b.detach().clone()) for b in _bare(n).buffers()] for n in networks}

    def ok(self, parts: dict[str, torch.Tensor], *networks: torch.nn.Module) -> bool:
        bad = [name for name, value in parts.items() if not torch.isfinite(value.detach()).all()]
        any_bad = bool(bad)
        if self.env.world > 1:
            flag = torch.tensor([int(any_bad)], device=self.env.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            any_bad = bool(flag.item())
        if not any_bad:
            return True
        if self.mode == "stop":
            where = (f"loss part '{bad[0]}' is {parts[bad[0]].detach().float().sum().item()}" if bad
                     else "a loss part is not finite on another rank")
            raise Diverged(where)
        self.skipped += 1
        with torch.no_grad():
            for network in networks:
                for buffer, kept in self._buffers.get(id(_bare(network)), []):
                    buffer.copy_(kept)
        return False


def check_finite_parameters(networks: dict[str, torch.nn.Module], step: int) -> None:
    """Refuse to save parameters that are NaN or inf (a checkpoint of them would replace good ones)."""
    for name, network in networks.items():
        for tensor_name, tensor in _bare(network).state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise Diverged(f"step {step}: {name} tensor '{tensor_name}' is not finite; no checkpoint written")


# ---------------------------------------------------------------- the loop
def fit(config: dict, env: Distributed, dataset, step: int, train_step, evaluate, save, logger,
        guard: LossGuard | None = None) -> int:
    """The training loop both trainers share; returns the final step.

    dataset: has set_epoch(); batches of optim.batch_size / world per rank come from an EpochSampler, resumed
    mid-epoch at `step`. train_step(batch, epoch) -> {name: float} runs one optimisation step; the running means
    go to TensorBoard every schedule.log_every steps. evaluate(step) runs on the main rank every
    schedule.eval_every steps; save(step) every schedule.save_every steps and at the end. On SIGTERM/SIGUSR1
    the step under way finishes, is saved, and Preempted is raised; a Diverged from train_step (its LossGuard)
    is raised again naming the step. Steps the guard skipped are counted in the logs (train/skipped_steps).
    """
    data, schedule = config["data"], config["schedule"]
    if config["optim"]["batch_size"] % env.world:
        raise InputError("optim.batch_size", f"{config['optim']['batch_size']} does not divide over {env.world} "
                                             "processes")
    per_rank = config["optim"]["batch_size"] // env.world
    sampler = EpochSampler(len(dataset), env.rank, env.world, config["seed"])
    loader = torch.utils.data.DataLoader(dataset, per_rank, sampler=sampler, num_workers=data["num_workers"],
                                         drop_last=True, pin_memory=env.device.type == "cuda",
                                         generator=torch.Generator())  # keeps the global RNG for the model
    batches_per_epoch = sampler.per_rank // per_rank
    if batches_per_epoch == 0:
        raise InputError("optim.batch_size", f"{per_rank} per process is more than the {sampler.per_rank} "
                                             "samples of an epoch (raise sample.epoch_repeats)")
    import sys

    from tqdm import tqdm

    bar = tqdm(total=schedule["max_steps"], initial=step, disable=not env.main, unit="step")
    running: dict[str, float] = {}
    counted: dict[str, int] = {}
    skipped = guard.skipped if guard is not None else 0
    epoch, offset = step // batches_per_epoch, (step % batches_per_epoch) * per_rank
    with StopSignals() as signals:
        try:
            while step < schedule["max_steps"]:
                sampler.set_epoch(epoch, offset)
                dataset.set_epoch(epoch)
                for batch in loader:
                    batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
                    try:
                        values = train_step(batch, epoch)
                    except Diverged as error:
                        raise Diverged(f"step {step + 1}: {error}; no checkpoint of it was written, and --resume auto "
                                       "restarts from the last good one") from None
                    for name, value in values.items():  # a step the LossGuard skipped returns fewer parts (or none)
                        running[name] = running.get(name, 0.0) + value
                        counted[name] = counted.get(name, 0) + 1
                    step += 1
                    bar.update(1)
                    if guard is not None and guard.skipped > skipped:
                        skipped = guard.skipped
                        if env.main:
                            tqdm.write(f"warning: step {step}: a loss part is not finite; step skipped "
                                       f"({skipped} so far)", file=sys.stderr)
                    if step % schedule["log_every"] == 0:
                        means = {name: value / counted[name] for name, value in running.items()}
                        if guard is not None:
                            means["skipped_steps"] = guard.skipped
                        logger.scalars(means, step, "train/")
                        bar.set_postfix({name: f"{value:.4f}" for name, value in means.items()
                                         if name != "lr" and not (name == "skipped_steps" and value == 0)})
                        running, counted = {}, {}
                    if step % schedule["eval_every"] == 0:
                        if env.main:
                            evaluate(step)
                        if env.world > 1:
                            dist.barrier()
                    saved = step % schedule["save_every"] == 0 or step == schedule["max_steps"]
                    if saved:
                        save(step)
                    if signals.requested(env):
                        if not saved:
                            save(step)
                        if env.world > 1:
                            dist.barrier()  # the main rank's checkpoint is on disk before any rank exits
                        raise Preempted(step, signals.received or "a signal on another rank", env.main)
                    if step >= schedule["max_steps"]:
                        break
                epoch, offset = epoch + 1, 0
        except (Diverged, Preempted):
            bar.close()  # before the caller's one-line message, which would otherwise share the bar's line
            logger.close()
            raise
    bar.close()
    return step


def finish(env: Distributed, logger: Logger, networks: list[torch.nn.Module]) -> None:
    """End of a run: close the logs, report whether all ranks hold the same parameters, leave the process group."""
    logger.close()
    if env.world > 1:
        same = all(check_replicas(network, env) for network in networks)
        if env.main:
            import sys

            print(f"parameters identical on all {env.world} ranks: {same}", file=sys.stderr)
    teardown()


def main(doc: str, train, argv: list[str] | None = None) -> int:
    """The trainers' command line: --config, --resume, dotted overrides; user errors as one line, exit 2."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=EXIT_STATUS)
    parser.add_argument("--config", required=True,
                        help="YAML settings (a relative path not found here is looked up in the repository)")
    parser.add_argument("--resume", help="'auto' (newest checkpoint in run_dir, if any) or a checkpoint path")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. optim.lr=5e-5 run_dir=runs/x")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        status = train(config, args.resume)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Preempted as stop:
        teardown()
        if stop.main:
            print(f"stopped by {stop.signal_name} at step {stop.step} after writing its checkpoint; rerun with "
                  "--resume auto to continue", file=sys.stderr)
        status = PREEMPTED
    except Diverged as error:
        teardown()
        print(f"error: {error}", file=sys.stderr)
        status = DIVERGED
    except KeyboardInterrupt:
        print("interrupted; the newest step_*.pt in run_dir is where --resume auto continues", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", 0)) == 0:
        _write_last_exit(Path(config["run_dir"]), status)
    return status


def _write_last_exit(run_dir: Path, status: int) -> None:
    """run_dir/last_exit: the main rank's exit status, for job scripts that see only torchrun's own status."""
    run_dir.mkdir(parents=True, exist_ok=True)
    temp = run_dir / "last_exit.tmp"
    temp.write_text(f"{status}\n")
    os.replace(temp, run_dir / "last_exit")


# ---------------------------------------------------------------- logging
class Logger:
    """TensorBoard on the main rank only; other ranks get a logger that does nothing."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir))

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        if self.writer:
            for name, value in values.items():
                self.writer.add_scalar(prefix + name, float(value), step)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        """(H, W, 3) uint8 or float in 0..1."""
        if self.writer:
            self.writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer:
            self.writer.close()
