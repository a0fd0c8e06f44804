"""Every ```python block of README.md and docs/*.md runs (docs/testing.md): a file's blocks in order, in one fresh
interpreter, in a scratch folder holding the example record testing/records.EXAMPLE_STEM. A block whose first line
is `# not run` (it needs real data or weights) is skipped."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testing.records import EXAMPLE_STEM, random_record

REPO = Path(__file__).resolve().parents[1]
NOT_RUN = "# not run"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(markdown: str) -> list[str]:
    """The ```python blocks of a Markdown text that are to run, in order (those opening with `# not run` left out)."""
    blocks = [block for block in BLOCK.findall(markdown)]
    return [block for block in blocks if not block.lstrip().startswith(NOT_RUN)]


def _pages() -> list[Path]:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [page for page in pages if page.is_file() and python_blocks(page.read_text())]


def test_blocks_are_found_in_order_and_the_marker_opts_out():
    text = ("Intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\n# not run: needs LRS2\nload()\n```\n"
            "```python\nassert x == 1\n```\n")
    assert python_blocks(text) == ["x = 1\n", "assert x == 1\n"]


@pytest.mark.parametrize("page", _pages(), ids=lambda page: page.relative_to(REPO).as_posix())
def test_a_pages_python_blocks_run(page, tmp_path):
    random_record(tmp_path / EXAMPLE_STEM, frames=12)
    script = "\n".join(python_blocks(page.read_text()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{page.name}'s Python blocks failed:\n{result.stderr[-3000:]}"
