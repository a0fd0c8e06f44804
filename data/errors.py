"""The one error type for bad user input: scripts catch it and print its one-line message."""


class InputError(Exception):
    """A user-facing problem with an input file or setting; str(error) is one line naming the file."""

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def one_line(error: BaseException) -> str:
    """An exception as one short line; for FFmpeg/OS errors, without the errno and file name PyAV adds."""
    text = getattr(error, "strerror", None) or str(error)
    return " ".join(str(text).split()) or type(error).__name__
