"""The error types scripts catch and print as one line: bad user input, and a disk that cannot take a write."""
from __future__ import annotations

import errno

# What a write can meet on a cluster's scratch volume, in the words a user expects.
DISK_PROBLEMS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EIO: "input/output error"}
DISK_STATUS = 74  # EX_IOERR: every script's exit status for a DiskError


class InputError(Exception):
    """A user-facing problem with an input file or setting; str(error) is one line naming the file.

    InputError(message) with one argument rebuilds the error from a message alone: that is how a DataLoader
    re-raises an error from a worker process, and then the message is the worker's traceback, whose last line is
    'InputError: PATH: PROBLEM'. So an error raised in a loader worker reaches the main process as itself.
    """

    def __init__(self, path: object, problem: str | None = None):
        if problem is None:
            lines = str(path).strip().splitlines() or [""]
            path, _, problem = lines[-1].split("InputError: ", 1)[-1].partition(": ")
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DiskError(Exception):
    """Writing `path` failed because its disk is full, over quota, read-only or failing; one line, exit 74."""

    def __init__(self, path: object, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{self.path}: {problem}")


def disk_problem(error: BaseException) -> str | None:
    """What the disk said when `error`, or an error it arose from, is an OSError of a full, read-only or failing
    disk (torch's zip writer, for one, raises a RuntimeError whose context is the OSError of the file it writes to);
    None for any other error."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_PROBLEMS:
            return DISK_PROBLEMS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    return None


def one_line(error: BaseException) -> str:
    """An exception as one short line; for FFmpeg/OS errors, without the errno and file name PyAV adds."""
    text = getattr(error, "strerror", None) or str(error)
    return " ".join(str(text).split()) or type(error).__name__
