"""What both trainers' loops use: the train loader and its sampler, Run (the bookkeeping the loop calls once per
step), the data helpers and the logging. Each trainer script writes its own loop.

A run is one folder (config `run_dir`) holding config.yaml (the resolved config), step_*.pt checkpoints and the
TensorBoard events. Single process on CPU or one GPU, or many with `torchrun` (DDP; NCCL on CUDA, gloo on CPU).
"""
from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from data.errors import BadRecord, InputError, disk_problem
from training.checkpoints import save_config
from training.distributed import Distributed, check_replicas, teardown
from training.stopping import Diverged, LossGuard, Preempted, RecordStop, StopSignals


class EpochSampler(torch.utils.data.Sampler):
    """(epoch, index) pairs: a seeded permutation of range(n) per epoch, this rank's share of it, from an offset
    (for resuming) and up to a count (for the last step). The epoch travels with each index, so loader workers that
    persist across epochs still draw each epoch's samples (a dataset's own epoch attribute would stay frozen in
    them).

    Every rank sees an equal number of indices (the permutation is padded by wrapping around), so DDP ranks
    step together; each rank gets a disjoint stride of it.
    """

    def __init__(self, size: int, rank: int = 0, world: int = 1, seed: int = 0):
        self.size, self.rank, self.world, self.seed = size, rank, world, seed
        self.per_rank = -(-size // world)
        self.set_epoch(0)

    def set_epoch(self, epoch: int, offset: int = 0, count: int | None = None) -> None:
        """Yield epoch `epoch`'s share from index `offset` on, `count` indices at most (None: to its end)."""
        self.epoch, self.offset = epoch, offset
        self.end = self.per_rank if count is None else min(self.per_rank, offset + count)

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        order = torch.cat([order, order[: self.per_rank * self.world - self.size]])
        return iter([(self.epoch, index) for index in order[self.rank::self.world][self.offset:self.end].tolist()])

    def __len__(self) -> int:
        return self.end - self.offset


def train_loader(dataset: torch.utils.data.Dataset, config: dict, env: Distributed) -> torch.utils.data.DataLoader:
    """This process's batches of the train split, optim.batch_size / world samples each (`loader.batch_size`), in
    the order of an EpochSampler (`loader.sampler`, which Run.epochs sets); a one-line error when an epoch would
    hold no batch."""
    per_rank = batch_per_rank(config, env)
    sampler = EpochSampler(len(dataset), env.rank, env.world, config["seed"])
    if sampler.per_rank < per_rank:
        raise InputError("optim.batch_size", f"{per_rank} per process is more than the {sampler.per_rank} "
                                             "samples of an epoch (raise sample.epoch_repeats)")
    workers = config["data"]["num_workers"]
    return torch.utils.data.DataLoader(dataset, per_rank, sampler=sampler, num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0, pin_memory=env.device.type == "cuda",
                                       generator=torch.Generator())  # keeps the global RNG for the model


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


# ---------------------------------------------------------------- the run
class Run:
    """The bookkeeping of a trainer's loop, which calls it once per step; a run is one folder (config `run_dir`).

        with Run(config, env, loader, step, save, evaluate) as run:
            for epoch in run.epochs():
                for batch in loader:
                    losses = a_step(..., run.guard, run.to_device(batch), ...)
                    run.after_step(losses)

    `epochs` sets the loader's EpochSampler so that the loop starts mid-epoch at the step reached (a resume) and
    ends at schedule.max_steps. Nothing in a step waits for the device: the host reads the losses, the guard's
    notes and (under DDP) the stop signals only at sync steps, which are every schedule.sync_every steps, every
    log, eval and save step, and the last. There the running means go to TensorBoard (log_every), evaluate(step,
    logger) runs on the main rank (eval_every), save(step) runs on every rank (save_every and at the end), a
    non-finite loss raises Diverged (nothing after the previous sync is saved), and a SIGTERM/SIGUSR1 saves and
    raises Preempted. In one process a signal is seen at the step it arrives in (a host flag costs nothing to read).

    A record that cannot be read (a BadRecord from the loader or from evaluate; schedule.on_bad_record: stop) saves
    the step reached and raises RecordStop as the `with` ends. Only the rank that met it knows, so it saves alone
    (save(step, alone=True): no collective); under torchrun the other ranks then wait in their step's all-reduce
    until torchrun, seeing a worker exit, ends them (SIGTERM, then SIGKILL after 30 s). In skip mode the dataset
    replaces such samples and `to_device` counts them (train/skipped_samples).
    """

    def __init__(self, config: dict, env: Distributed, loader: torch.utils.data.DataLoader, step: int,
                 save: Callable[..., None], evaluate: Callable[[int, Logger], None]):
        self.config, self.env, self.loader, self.step = config, env, loader, step
        self.save, self.evaluate = save, evaluate
        self.schedule = config["schedule"]
        self.batches_per_epoch = loader.sampler.per_rank // loader.batch_size
        if env.main:
            save_config(config, Path(config["run_dir"]))
        self.logger = Logger(Path(config["run_dir"]), env.main)
        self.guard = LossGuard(env, self.schedule["on_nonfinite"], step)
        self.running, self.skipped_samples = RunningMeans(), SkippedSamples()
        self.skipped_steps, self.checked, self.saved_at = 0, step, None

    def __enter__(self) -> Run:
        self.signals = StopSignals().__enter__()
        self.bar = tqdm(total=self.schedule["max_steps"], initial=self.step, disable=not self.env.main, unit="step")
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.signals.__exit__(kind, error, traceback)
        try:
            if isinstance(error, BadRecord) and self.saved_at != self.step:
                self.guard.check(alone=True)  # a step after a non-finite loss is never saved
                self.save(self.step, alone=True)
        finally:
            self.bar.close()  # before the caller's one-line message, which would otherwise share the bar's line
            self.logger.close()
        if isinstance(error, BadRecord):
            raise RecordStop(self.step, error, skip_hint=self.schedule["on_bad_record"] == "stop") from None

    def epochs(self) -> Iterator[int]:
        """The epochs from the step reached to schedule.max_steps, each with the loader's sampler set to yield that
        epoch's batches from the step reached and none past the last step."""
        per_rank = self.loader.batch_size
        while self.step < self.schedule["max_steps"]:
            epoch, done = divmod(self.step, self.batches_per_epoch)
            left = min(self.batches_per_epoch - done, self.schedule["max_steps"] - self.step)
            self.loader.sampler.set_epoch(epoch, done * per_rank, left * per_rank)
            start = self.step
            yield epoch
            if self.step != start + left:  # else the loop would never end
                raise RuntimeError("a training loop calls run.after_step once per batch of the loader")

    def to_device(self, batch: dict) -> dict:
        """A batch from the loader on the device, after counting the samples skip mode replaced in it (host values,
        no device sync)."""
        self.skipped_samples.add(*self.loader.dataset.skipped_in(batch))
        return self.loader.dataset.to_device(batch, self.env.device)

    def after_step(self, losses: dict[str, torch.Tensor | float]) -> None:
        """Count the step that returned `losses` (device tensors; fewer parts, or none, for a step the guard
        skipped); at a sync step, act on what the steps since the last one left on the device."""
        self.running.add(losses)
        self.step += 1
        self.bar.update(1)
        if self.guard.skipped > self.skipped_steps:  # skip mode decides within the step, on the host
            self.skipped_steps = self.guard.skipped
            if self.env.main:
                tqdm.write(f"warning: step {self.step}: a loss part is not finite; step skipped "
                           f"({self.skipped_steps} so far)", file=sys.stderr)
        signalled = self.env.world == 1 and self.signals.received is not None
        every = ("sync_every", "log_every", "eval_every", "save_every")
        if (self.step >= self.schedule["max_steps"] or signalled
                or any(self.step % self.schedule[name] == 0 for name in every)):
            self.sync()

    def sync(self) -> None:
        """A sync step: check the losses, then log, evaluate, save and stop on a signal as the schedule says."""
        step, schedule = self.step, self.schedule
        try:
            self.guard.check()
        except Diverged as error:
            raise Diverged(f"{error}; nothing after step {self.checked} was saved, and --resume auto restarts "
                           "from the last good checkpoint") from None
        self.checked = step
        if step % schedule["log_every"] == 0:
            self.log()
        if step % schedule["eval_every"] == 0:
            if self.env.main:
                self.evaluate(step, self.logger)
            if self.env.world > 1:
                dist.barrier()
        saved = step % schedule["save_every"] == 0 or step >= schedule["max_steps"]
        if saved:
            self.save(step)
            self.saved_at = step
        if self.signals.requested(self.env):
            if not saved:
                self.save(step)
            if self.env.world > 1:
                dist.barrier()  # the main rank's checkpoint is on disk before any rank exits
            raise Preempted(step, self.signals.received or "a signal on another rank", self.env.main)

    def log(self) -> None:
        """The loss means since the last log and the skip counts to TensorBoard and the progress bar."""
        means = {**self.running.read(), "skipped_steps": self.guard.skipped}
        if self.schedule["on_bad_record"] == "skip":
            means["skipped_samples"] = self.skipped_samples.total(self.env)
        self.logger.scalars(means, self.step, "train/")
        self.bar.set_postfix({name: f"{value:.4f}" for name, value in means.items() if name != "lr"
                              and not (name in ("skipped_steps", "skipped_samples") and value == 0)})


def finish(env: Distributed, networks: list[torch.nn.Module]) -> None:
    """End of a run: report whether all ranks hold the same parameters, leave the process group."""
    if env.world > 1:
        same = all(check_replicas(network, env) for network in networks)
        if env.main:
            print(f"parameters identical on all {env.world} ranks: {same}", file=sys.stderr)
    teardown()
