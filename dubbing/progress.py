"""How far a dub has got, stage by stage: a bar on the terminal and, for a caller that shows progress elsewhere (a
web page), a report hook.

The hook is called as each step ends, with the stage's name, the steps done and the steps in all (None when not
known). A hook that raises stops the dub there, which is how a caller cancels one: the error reaches the caller,
the writer removes its partial files, and a template whose FaceMesh pass was cut short is not cached.
"""
from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm

ANALYSIS = "face landmarks"  # pass 1: FaceMesh over the template's frames
FRAMES = "dubbing"  # pass 2: output frames rendered, pasted and written

Report = Callable[[str, int, int | None], None]


class StageProgress:
    """The steps of one stage: a tqdm bar (unless `show` is false) and `report`, called after every advance."""

    def __init__(self, stage: str, total: int | None, show: bool = True, report: Report | None = None,
                 unit: str = "frame", leave: bool = True):
        self.stage, self.total, self.done, self.report = stage, total, 0, report
        self.bar = tqdm(total=total, desc=stage, unit=unit, disable=not show, leave=leave)

    def advance(self, steps: int = 1) -> None:
        """`steps` more done; the report hook may raise to stop the stage."""
        self.done += steps
        if self.total is not None and self.done > self.total:  # an estimated total, passed
            self.total = self.bar.total = self.done
        self.bar.update(steps)
        if self.report is not None:
            self.report(self.stage, self.done, self.total)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
