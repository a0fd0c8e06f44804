import subprocess
import sys

from conftest import REPO


def test_ruff_finds_nothing():
    # Through the interpreter running the tests: its environment's ruff (pinned in requirements.txt), PATH or not.
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
