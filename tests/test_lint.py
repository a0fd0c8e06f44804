import subprocess
import sys

from conftest import REPO


def test_ruff_finds_nothing():
    # Through the interpreter running the tests: its environment's ruff (pinned in requirements.txt), PATH or not.
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_imports_point_down_the_house():
    """data/ at the bottom, then models/, then losses/ and metrics/: a module imports nothing above its package
    (model_files/export.py once imported metrics to draw its card's table)."""
    import ast

    above = {"data": {"models", "model_files", "losses", "metrics", "training", "dubbing"},
             "models": {"model_files", "losses", "metrics", "training", "dubbing"},
             "model_files": {"losses", "metrics", "training", "dubbing"}}
    for package, forbidden in above.items():
        for path in sorted((REPO / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                for name in names:
                    assert name.split(".")[0] not in forbidden, f"{path.relative_to(REPO)} imports {name}"
