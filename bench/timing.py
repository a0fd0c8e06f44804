"""Wall time of repeated calls, for the bench scripts: one warm-up call first, and on CUDA a synchronisation
before and after the timed calls, so that queued kernels count."""
from __future__ import annotations

import time
from collections.abc import Callable

import torch


def seconds_per_call(work: Callable[[], object], calls: int, device: torch.device) -> float:
    """Mean wall time of `work()` in seconds over `calls` calls, after one untimed call (allocator, cudnn's
    algorithm search)."""
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(calls):
        work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / calls
