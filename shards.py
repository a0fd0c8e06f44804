"""--shard I/N: how N processes or machines (a SLURM array) share one list of jobs (videos, dubs) with no
coordination, no overlap and no gap.

Shard I takes the jobs at positions I, I + N, I + 2N, ... of the list sorted by each job's key (a relative path as
a POSIX string), so shard sizes differ by at most one whatever the names. Every shard must see the same list: it
is the position in that list, not the name alone, that decides (a hash of the name would put names that differ
in one digit into the same shard).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TypeVar

Job = TypeVar("Job")


def parse_shard(text: str) -> tuple[int, int]:
    """argparse type for --shard I/N."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N, e.g. 0/4; got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N; got {text!r}")
    return index, count


def shard_share(jobs: Sequence[Job], shard: tuple[int, int], key: Callable[[Job], str]) -> list[Job]:
    """This shard's jobs: every N-th of the whole list sorted by key, from position I (which jobs does not depend
    on the input's order); returned in the input's order, so a task list runs as written."""
    index, count = shard
    by_key = sorted(range(len(jobs)), key=lambda position: key(jobs[position]))
    chosen = set(by_key[index::count])
    return [job for position, job in enumerate(jobs) if position in chosen]
