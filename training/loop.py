"""The training loop both trainers share, the sampler that feeds it, its data helpers and its logging.

A run is one folder (config `run_dir`) holding config.yaml (the resolved config), step_*.pt checkpoints and the
TensorBoard events. Single process on CPU or one GPU, or many with `torchrun` (DDP; NCCL on CUDA, gloo on CPU).
"""
from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from data.errors import BadRecord, InputError, disk_problem
from training.distributed import Distributed, check_replicas, teardown
from training.stopping import Diverged, LossGuard, Preempted, RecordStop, StopSignals


class EpochSampler(torch.utils.data.Sampler):
    """(epoch, index) pairs: a seeded permutation of range(n) per epoch, this rank's share of it, from an offset
    (for resuming). The epoch travels with each index, so loader workers that persist across epochs still draw
    each epoch's samples (a dataset's own epoch attribute would stay frozen in them).

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
        return iter([(self.epoch, index) for index in order[self.rank::self.world][self.offset:].tolist()])

    def __len__(self) -> int:
        return self.per_rank - self.offset


# ---------------------------------------------------------------- data
def record_list(data: dict, split: str) -> list[Path] | None:
    """Stems of a split: a file list (paths under data.records) or a folder of records; for train, every record
    under data.records when the list is null."""
    from data.datasets import read_filelist, records_under

    listed = data.get(f"{split}_list")
    if listed:
        return records_under(listed) if Path(listed).is_dir() else read_filelist(listed, data["records"])
    return records_under(data["records"]) if split == "train" else None


def report_data(env: Distributed, train_set, val_set, min_face_frames: int) -> None:
    """One line on the main rank: how many videos each split holds and how many were left out."""
    if env.main:
        print(f"train: {len(train_set.stems)} videos ({len(train_set.skipped)} skipped with fewer than "
              f"{min_face_frames} face frames or no full window, {len(train_set.missing)} missing)"
              + (f"; val: {len(val_set.stems)} videos" if val_set else "; no val split"), file=sys.stderr)


def batch_per_rank(config: dict, env: Distributed) -> int:
    """optim.batch_size (the global batch) over the processes; a one-line error when it does not divide."""
    batch = config["optim"]["batch_size"]
    if batch % env.world:
        raise InputError("optim.batch_size", f"{batch} does not divide over {env.world} processes")
    return batch // env.world


def eval_loader(val_set, config: dict, env: Distributed):
    """Batches of the val split, in order, this process's share of the global batch size."""
    return torch.utils.data.DataLoader(val_set, batch_per_rank(config, env), shuffle=False,
                                       num_workers=config["data"]["num_workers"])


def eval_batches(loader, device: torch.device, batches: int):
    """The first `batches` batches of an eval loader, each made ready on `device` (the trainers' evaluate loops)."""
    for index, batch in enumerate(loader):
        if index >= batches:
            break
        yield loader.dataset.to_device(batch, device)


# ---------------------------------------------------------------- logging
class Logger:
    """TensorBoard on the main rank only; other ranks get a logger that does nothing.

    A disk that cannot take the event file (full, over quota, read-only, failing) ends the logging with one warning
    and the run goes on: the checkpoints are what must be written, and a failing one stops the run by its own rule.
    """

    def __init__(self, run_dir: Path, enabled: bool):
        self.writer, self.run_dir = None, run_dir
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_disk_errors_in_threads()
            self._guarded(lambda: setattr(self, "writer", SummaryWriter(str(run_dir))))

    def _guarded(self, write) -> None:
        """Run a write to the event file; on a disk problem, warn once and write nothing more."""
        try:
            write()
        except Exception as error:
            problem = disk_problem(error)
            if problem is None:
                raise
            writer, self.writer = self.writer, None
            tqdm.write(f"warning: {self.run_dir}: {problem}; TensorBoard logging stopped here, training goes on "
                       "(checkpoints are still written)", file=sys.stderr)
            if writer is not None:
                with contextlib.suppress(Exception):  # its last flush meets the same disk
                    writer.close()

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        if self.writer:
            def write():
                for name, value in values.items():
                    self.writer.add_scalar(prefix + name, float(value), step)

            self._guarded(write)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        """(H, W, 3) uint8 or float in 0..1."""
        if self.writer:
            self._guarded(lambda: self.writer.add_image(name, image, step, dataformats="HWC"))

    def close(self) -> None:
        if self.writer:
            self._guarded(self.writer.close)
            self.writer = None


def _quiet_disk_errors_in_threads() -> None:
    """TensorBoard writes its events in a thread of its own, and a write that fails there prints the thread's
    traceback before the next add_* call raises the error again in the caller (who warns in one line). Leave out
    that traceback for disk problems only, once per process."""
    previous = threading.excepthook
    if getattr(previous, "quiet_disk_errors", False):
        return

    def hook(args) -> None:
        if disk_problem(args.exc_value) is None:
            previous(args)

    hook.quiet_disk_errors = True
    threading.excepthook = hook


def log_eval(logger: Logger, step: int, scores: dict, grid_name: str, grid: np.ndarray | None, line: str) -> None:
    """Eval scores and image grid to TensorBoard, and one line to the console."""
    logger.scalars(scores, step, "eval/")
    if grid is not None:
        logger.image(grid_name, grid, step)
    tqdm.write(line, file=sys.stderr)


class RunningMeans:
    """Per-part sums of a step's loss values since the last log, kept on the device (adding them costs no sync)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict) -> None:
        for name, value in values.items():  # a step the LossGuard skipped returns fewer parts (or none)
            value = value.detach().float() if isinstance(value, torch.Tensor) else value
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1

    def read(self) -> dict[str, float]:
        """The means, read from the device in one copy, and a fresh start."""
        tensors = [name for name, value in self.sums.items() if isinstance(value, torch.Tensor)]
        read = torch.stack([self.sums[name] for name in tensors]).tolist() if tensors else []
        sums = {**self.sums, **dict(zip(tensors, read))}
        means = {name: value / self.counts[name] for name, value in sums.items()}
        self.sums, self.counts = {}, {}
        return means


class SkippedSamples:
    """Skip mode (schedule.on_bad_record: skip): counts the samples a dataset replaced because their record could
    not be read, and warns about the first, naming its record."""

    def __init__(self):
        self.count = 0

    def add(self, count: int, note: str) -> None:
        """A batch's count and first note (`dataset.skipped_in(batch)`)."""
        if count and self.count == 0:
            tqdm.write(f"warning: {note}; the sample was replaced by another (schedule.on_bad_record: skip), and "
                       "such samples are counted in train/skipped_samples", file=sys.stderr)
        self.count += count

    def total(self, env: Distributed) -> int:
        """The count over all ranks (an all-reduce under DDP: call it where every rank does, at log steps)."""
        if env.world == 1:
            return self.count
        count = torch.tensor([self.count], device=env.device)
        dist.all_reduce(count)
        return int(count.item())


# ---------------------------------------------------------------- the loop
def fit(config: dict, env: Distributed, dataset, step: int, train_step, evaluate, save, logger: Logger,
        guard: LossGuard) -> int:
    """Train from `step` to schedule.max_steps; returns the final step.

    train_step(batch, epoch) -> {name: loss tensor or float} runs one optimisation step on a batch made ready on
    the device (`dataset.to_device`, after `dataset.skipped_in`); batches of optim.batch_size / world per rank
    come from an EpochSampler, resumed mid-epoch at `step`. Nothing in a step waits for the device: the host reads
    loss values, the guard's notes and (under DDP) the stop signals only at sync steps, which are every
    schedule.sync_every steps and every log, eval and save step, and the last. There the running means go to
    TensorBoard (log_every),
    evaluate(step) runs on the main rank (eval_every), save(step) runs (save_every and at the end), a non-finite
    loss raises Diverged (nothing after the previous sync is saved), and a SIGTERM/SIGUSR1 saves and raises
    Preempted. In one process a signal is seen at the step it arrives in (a host flag costs nothing to read).

    A record that cannot be read (a BadRecord from the loader or from evaluate; schedule.on_bad_record: stop) saves
    the step reached and raises RecordStop. Only the rank that met it knows, so it saves alone (no collective);
    under torchrun the other ranks then wait in their step's all-reduce until torchrun, seeing a worker exit, ends
    them (SIGTERM, then SIGKILL after 30 s). In skip mode the dataset replaces such samples and the loop counts
    them (train/skipped_samples).
    """
    schedule = config["schedule"]
    per_rank = batch_per_rank(config, env)
    sampler = EpochSampler(len(dataset), env.rank, env.world, config["seed"])
    workers = config["data"]["num_workers"]
    loader = torch.utils.data.DataLoader(dataset, per_rank, sampler=sampler, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0, pin_memory=env.device.type == "cuda",
                                         generator=torch.Generator())  # keeps the global RNG for the model
    batches_per_epoch = sampler.per_rank // per_rank
    if batches_per_epoch == 0:
        raise InputError("optim.batch_size", f"{per_rank} per process is more than the {sampler.per_rank} "
                                             "samples of an epoch (raise sample.epoch_repeats)")
    epoch, offset = step // batches_per_epoch, (step % batches_per_epoch) * per_rank
    every = {name: schedule[name] for name in ("sync_every", "log_every", "eval_every", "save_every")}
    guard.reset(step)
    running, skipped, checked, saved_at = RunningMeans(), guard.skipped, step, None
    skipped_samples = SkippedSamples()
    bar = tqdm(total=schedule["max_steps"], initial=step, disable=not env.main, unit="step")
    try:
        with StopSignals() as signals:
            while step < schedule["max_steps"]:
                sampler.set_epoch(epoch, offset)
                for batch in loader:
                    skipped_samples.add(*dataset.skipped_in(batch))  # host tensors: no device sync
                    running.add(train_step(dataset.to_device(batch, env.device), epoch))
                    step += 1
                    bar.update(1)
                    if guard.skipped > skipped:  # skip mode decides within the step, on the host
                        skipped = guard.skipped
                        if env.main:
                            tqdm.write(f"warning: step {step}: a loss part is not finite; step skipped "
                                       f"({skipped} so far)", file=sys.stderr)
                    signalled = env.world == 1 and signals.received is not None
                    last = step >= schedule["max_steps"]
                    if not (last or signalled or any(step % n == 0 for n in every.values())):
                        continue

                    # A sync step: the host reads what the steps since the last one left on the device.
                    try:
                        guard.check()
                    except Diverged as error:
                        raise Diverged(f"{error}; nothing after step {checked} was saved, and --resume auto "
                                       "restarts from the last good checkpoint") from None
                    checked = step
                    if step % every["log_every"] == 0:
                        means = {**running.read(), "skipped_steps": guard.skipped}
                        if schedule["on_bad_record"] == "skip":
                            means["skipped_samples"] = skipped_samples.total(env)
                        logger.scalars(means, step, "train/")
                        bar.set_postfix({name: f"{value:.4f}" for name, value in means.items() if name != "lr"
                                         and not (name in ("skipped_steps", "skipped_samples") and value == 0)})
                    if step % every["eval_every"] == 0:
                        if env.main:
                            evaluate(step)
                        if env.world > 1:
                            dist.barrier()
                    saved = step % every["save_every"] == 0 or last
                    if saved:
                        save(step)
                        saved_at = step
                    if signals.requested(env):
                        if not saved:
                            save(step)
                        if env.world > 1:
                            dist.barrier()  # the main rank's checkpoint is on disk before any rank exits
                        raise Preempted(step, signals.received or "a signal on another rank", env.main)
                    if last:
                        break
                epoch, offset = epoch + 1, 0
    except BadRecord as error:
        try:
            if saved_at != step:
                guard.check(alone=True)  # a step after a non-finite loss is never saved
                save(step, alone=True)
        finally:
            bar.close()
            logger.close()
        raise RecordStop(step, error, skip_hint=schedule["on_bad_record"] == "stop") from None
    except BaseException:
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
            print(f"parameters identical on all {env.world} ranks: {same}", file=sys.stderr)
    teardown()
