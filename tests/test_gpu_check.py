"""bench/gpu.py (python -m bench.gpu), the one command for a GPU machine, runs here on the CPU with --quick, with
OpenCV, PyAV, MediaPipe and SciPy made unimportable as on a bare GPU machine, so that it cannot rot between GPU
sessions."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import REPO

BARE = ("import runpy, sys\n"
        "for name in ('cv2', 'av', 'mediapipe', 'scipy', 'librosa', 'lpips'): sys.modules[name] = None\n"
        "sys.argv = ['bench/gpu.py'] + sys.argv[1:]\n"
        "runpy.run_module('bench.gpu', run_name='__main__', alter_sys=True)\n")  # as python -m bench.gpu runs it


def test_the_gpu_check_runs_on_the_cpu_without_the_media_packages(tmp_path):
    table = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, "-c", BARE, "--device", "cpu", "--quick", "--json", str(table)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(table.read_text())
    assert rows["device line"].startswith("device: cpu")
    assert rows["resumed at step"] == 1 and rows["resumed parameters equal"] is True
    losses = {**rows["landmark step losses"], **rows["renderer step losses"]}
    assert len(losses) == 9 and all(math.isfinite(v) for v in losses.values())
    assert rows["renderer bf16 vs float32, warped (dB)"] > 40  # bf16 really ran, and the warp stayed float32
    assert all(rows[name] > 0 for name in rows if "steps/s" in name)
    assert "landmark steps/s" in result.stdout  # the printed table
