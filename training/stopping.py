"""How a run stops before its last step: stop signals (preemption), non-finite losses, and their exit statuses.

Nothing here makes the host wait for the GPU inside a step. The loss guard notes non-finite parts in device
tensors and the run (loop.Run) reads them (one copy) at its sync steps; the signal flag is a host value in one
process and is agreed across ranks only at sync steps.
"""
from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from data.errors import InputError
from training.distributed import Distributed, bare

PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after writing a checkpoint; requeue with --resume auto
DIVERGED = 3
EXIT_STATUS = ("exit status: 0 when the run reached its last step; 2 for a user error (bad config or override, "
               "missing or damaged data or checkpoint), reported in one line; 3 when a loss became NaN or inf "
               "(nothing after the last finite check saved; --resume auto restarts from the last good checkpoint); "
               "74 when a checkpoint could not be written (full, read-only or failing disk; named in one line, nothing "
               "partial left, earlier checkpoints intact); 75 when SIGTERM or SIGUSR1 (a scheduler's preemption "
               "notice), or a record that could not be read during training (deleted, cut short, a failing file "
               "system; named in one line; schedule.on_bad_record: skip replaces such samples instead), stopped the "
               "run after it wrote a checkpoint at the step reached (requeue it with --resume auto); 130 when "
               "interrupted (Ctrl-C)")


class Preempted(Exception):
    """Raised by loop.Run after it saved a checkpoint on a stop signal."""

    def __init__(self, step: int, signal_name: str, main: bool):
        super().__init__(f"stopped by {signal_name} at step {step}")
        self.step, self.signal_name, self.main = step, signal_name, main


class RecordStop(Exception):
    """Raised by loop.Run after it saved a checkpoint because a record could not be read
    (schedule.on_bad_record: stop); `record` is the BadRecord, which names the file."""

    def __init__(self, step: int, record: Exception, skip_hint: bool = True):
        hint = ", or set schedule.on_bad_record=skip to train on without it" if skip_hint else ""
        super().__init__(f"{record} (stopped at step {step} after writing its checkpoint; mend the record and rerun "
                         f"with --resume auto{hint})")
        self.step, self.record = step, record


class Diverged(Exception):
    """A loss (or, at a save, a parameter) is not finite."""


class StopSignals:
    """Within `with`: SIGTERM and SIGUSR1 are noted instead of killing the process, so the loop can finish its
    step, save and exit. `requested(env)` is True on every rank once any rank has seen one; under DDP it is an
    all-reduce, so the loop asks only at its sync steps (all ranks then save at the same step)."""

    NAMES = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread
            for name in self.NAMES:
                if hasattr(signal, name):
                    number = getattr(signal, name)
                    self._previous[number] = signal.signal(number, self._note)
        return self

    def _note(self, number, frame) -> None:
        self.received = self.received or signal.Signals(number).name

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def requested(self, env: Distributed) -> bool:
        if env.world == 1:
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else 1], device=env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class LossGuard:
    """Checks each loss part before its optimiser uses it.

    mode 'stop': `ok` notes the first non-finite part (its step, name and value) in device tensors and returns
    True, with no host sync; `check`, called by the run at its sync steps and always before a checkpoint, reads
    them and raises Diverged naming that step and part. Steps between the bad one and the check run on, but
    nothing after the last finite check is saved.
    mode 'skip': `ok` reads the parts at once (one sync per check): a non-finite step is left out, counted, and the
    networks named get back the buffers (BatchNorm statistics) that `begin` saw before the forward pass.
    Under DDP every rank takes the same decision (an all-reduce at each read).
    """

    def __init__(self, env: Distributed, mode: str, step: int = 0):
        if mode not in ("stop", "skip"):
            raise InputError("schedule.on_nonfinite", f"must be 'stop' or 'skip', got {mode!r}")
        self.env, self.mode, self.skipped = env, mode, 0
        self.names: list[str] = []  # part names in first-seen order; the device notes index into it
        self._ids: dict[tuple[str, ...], torch.Tensor] = {}
        self._buffers: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.reset(step)

    def reset(self, step: int) -> None:
        """Count steps from `step` (the loop's starting step) with nothing noted."""
        device = self.env.device
        self.step = torch.tensor(step, device=device)  # the step under way, counted on the device by begin()
        self.first = torch.tensor([-1.0, -1.0, 0.0], device=device)  # (step, part id, value) of the first bad part

    def begin(self, *networks: torch.nn.Module) -> None:
        """Call once per step, before its forward pass: counts the step; in skip mode keeps the networks' buffers."""
        self.step += 1
        if self.mode == "skip":
            self._buffers = {id(bare(n)): [(b, b.detach().clone()) for b in bare(n).buffers()] for n in networks}

    def _part_ids(self, names: tuple[str, ...]) -> torch.Tensor:
        if names not in self._ids:
            for name in names:
                if name not in self.names:
                    self.names.append(name)
            self._ids[names] = torch.tensor([self.names.index(n) for n in names], device=self.env.device,
                                            dtype=torch.float32)
        return self._ids[names]

    def ok(self, parts: dict[str, torch.Tensor], *networks: torch.nn.Module) -> bool:
        values = torch.stack([value.detach().float().reshape(()) for value in parts.values()])
        bad = ~torch.isfinite(values)
        if self.mode == "stop":
            ids = self._part_ids(tuple(parts))
            where = bad.to(torch.uint8).argmax()  # the first bad part of this call
            noted = torch.stack([self.step.float(), ids[where], values[where]])
            self.first = torch.where((self.first[0] < 0) & bad.any(), noted, self.first)
            return True
        any_bad = bad.any()
        if self.env.world > 1:
            flag = any_bad.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            any_bad = flag
        if not bool(any_bad):
            return True
        self.skipped += 1
        with torch.no_grad():
            for network in networks:
                for buffer, kept in self._buffers.get(id(bare(network)), []):
                    buffer.copy_(kept)
        return False

    def check(self, alone: bool = False) -> None:
        """Stop mode: raise Diverged if any part noted since the start was not finite (one read; an all-reduce
        under DDP, so every rank raises together; `alone`: this rank's notes only, no collective)."""
        if self.mode != "stop":
            return
        first = self.first
        if self.env.world > 1 and not alone:
            flag = (first[0] >= 0).to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            first = torch.cat([first, flag.float()[None]])
        step, part, value, *others = first.tolist()
        if step >= 0:
            raise Diverged(f"step {int(step)}: loss part '{self.names[int(part)]}' is {value}")
        if others and others[0] > 0:
            raise Diverged("a loss part is not finite on another rank")


def check_finite_parameters(networks: dict[str, torch.nn.Module], step: int) -> None:
    """Refuse to save parameters that are NaN or inf (a checkpoint of them would replace good ones)."""
    for name, network in networks.items():
        for tensor_name, tensor in bare(network).state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise Diverged(f"step {step}: {name} tensor '{tensor_name}' is not finite; no checkpoint written")
