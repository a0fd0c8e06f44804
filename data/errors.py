"""The error types scripts catch and print as one line: bad user input, and a disk that cannot take a write."""
from __future__ import annotations

import errno

# What a write can meet on a cluster's scratch volume, in the words a user expects.
DISK_PROBLEMS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EIO: "input/output error"}
DISK_STATUS = 74  # EX_IOERR: every script's exit status for a DiskError


def _path_and_problem(kind: str, message: str) -> tuple[str, str]:
    """(path, problem) from 'PATH: PROBLEM', or from a worker's traceback whose last line is 'KIND: PATH: PROBLEM'
    (with the module before KIND)."""
    last = (str(message).strip().splitlines() or [""])[-1]
    path, _, problem = last.split(f"{kind}: ", 1)[-1].partition(": ")
    return path, problem


def escaped(text: object) -> str:
    """`text` with its control and format characters (newlines, escapes, direction marks) written as Python escapes,
    so that a name read from a file or typed by a visitor shows as one line, as it is."""
    return "".join(char if char.isprintable() or char == " " else repr(char)[1:-1] for char in str(text))


class InputError(Exception):
    """A user-facing problem with an input file or setting; str(error) is one line naming the file.

    InputError(message) with one argument rebuilds the error from a message alone: that is how a DataLoader
    re-raises an error from a worker process, and then the message is the worker's traceback, whose last line is
    'InputError: PATH: PROBLEM'. So an error raised in a loader worker reaches the main process as itself (and so
    does one of a subclass, or a DiskError, by the same rule).
    """

    def __init__(self, path: object, problem: str | None = None):
        if problem is None:
            path, problem = _path_and_problem(type(self).__name__, path)
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{escaped(self.path)}: {escaped(problem)}")


class BadRecord(InputError):
    """A record that could not be read while training (deleted, cut short, or its file system failing): raised by a
    training dataset for a sample, in a loader worker or in the main process. The training loop saves a checkpoint
    of the step reached and stops on it (exit 75), unless schedule.on_bad_record is skip."""


class DiskError(Exception):
    """Writing `path` failed because its disk is full, over quota, read-only or failing; one line, exit 74.
    Rebuilt from its message alone as InputError is (a worker process's error, pickled)."""

    def __init__(self, path: object, problem: str | None = None):
        if problem is None:
            path, problem = _path_and_problem(type(self).__name__, path)
        self.path, self.problem = str(path), problem
        super().__init__(f"{escaped(self.path)}: {escaped(problem)}")


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
