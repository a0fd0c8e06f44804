"""Table 1 as files: the Markdown table (with the paper's rows), per-video CSV and a JSON record of everything.
They are written together and atomically (`write_files`): a full disk leaves the reports of an earlier run as they
were, and no partial or temporary file.

The paper's numbers are those of docs/method.md, section 6. Values print with the paper's digits; a metric that
could not be computed is "n/a" with its reason below the table; one not asked for is "-".
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from data.errors import DiskError, disk_problem
from metrics.scoring import Scores

COLUMNS = (  # (summary key, header, digits)
    ("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 4), ("lpips", "LPIPS ↓", 4), ("fid", "FID ↓", 2),
    ("lip_lmd", "LipLMD ↓", 5), ("csim", "CSIM ↑", 4), ("lse_c", "SyncScore (LSE-C) ↑", 2), ("lse_d", "LSE-D ↓", 2),
    ("lip_jitter", "Lip jitter ↓", 5), ("lip_jitter_real", "Real lip jitter", 5), ("jitter_ratio", "Jitter ratio", 2))
PAPER_ROWS = {  # Table 1 of the paper (docs/method.md, section 6); the paper gives no LSE-D and no steadiness
    "lrs2": {"Wav2Lip (paper)": (27.92, 0.8962, 0.0741, 43.46, 0.02003, 0.5925, 3.86, None),
             "IP_LAP (paper)": (32.91, 0.9399, 0.0303, 27.87, 0.01293, 0.6523, 4.49, None)},
    "lrs3": {"Wav2Lip (paper)": (28.45, 0.8852, 0.0683, 49.60, 0.02001, 0.5909, 4.26, None),
             "IP_LAP (paper)": (32.97, 0.9222, 0.0310, 29.96, 0.01353, 0.6385, 5.63, None)},
}
VERSIONED = ("torch", "torchvision", "numpy", "scipy", "lpips", "mediapipe", "opencv-contrib-python", "av",
             "scikit-image", "python_speech_features", "pyyaml")


def _cell(value: float | None, digits: int, computed: bool) -> str:
    if not computed:
        return "-"
    if value is None:
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def markdown_table(name: str, scores: Scores, metrics: tuple[str, ...], dataset: str | None, notes: list[str]) -> str:
    """Table 1 layout in Markdown: the paper's rows (when a dataset is named), this method's row, then notes."""
    computed = {key for key in scores.summary} | ({"lse_c", "lse_d"} if "sync" in metrics else set())
    lines = ["| method | " + " | ".join(header for _, header, _ in COLUMNS) + " |",
             "| --- " * (len(COLUMNS) + 1) + "|"]
    for paper_name, values in PAPER_ROWS.get(dataset, {}).items():
        cells = [_cell(v, d, True) if v is not None else "-" for v, (_, _, d) in
                 itertools.zip_longest(values, COLUMNS)]
        lines.append(f"| {paper_name} | " + " | ".join(cells) + " |")
    cells = [_cell(scores.summary.get(key), digits, key in computed) for key, _, digits in COLUMNS]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for metric, reason in scores.reasons.items():
        lines.append(f"- {metric}: n/a ({reason})")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _plain(value):
    """JSON-safe: NaN becomes null, inf a string, numpy scalars Python ones."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) else ("inf" if math.isinf(value) else value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries the metrics depend on."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["cuda"] = torch.version.cuda or "none"
    return found


def write_files(files: dict[Path, str], what: str = "report not written") -> None:
    """Write text files together: each under a temporary name first, then all renamed into place, so a failure
    leaves every one as it was and no temporary file behind. A full, read-only or failing disk is a DiskError
    naming the file (`what` says what was lost)."""
    temps = {path: path.with_name(f".{path.name}.tmp") for path in files}
    current = None
    try:
        for path, text in files.items():
            current = path
            with open(temps[path], "w", newline="") as handle:  # the text's own line endings (CSV's \r\n)
                handle.write(text)
        for path, temp in temps.items():
            current = path
            os.replace(temp, path)
    except BaseException as error:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        problem = disk_problem(error)
        if problem is None:
            raise
        raise DiskError(current, f"{problem} ({what})") from None


def write_reports(out: Path, name: str, scores: Scores, metrics: tuple[str, ...], settings: dict,
                  lists: dict, dataset: str | None, notes: list[str]) -> str:
    """Write table.md, per_video.csv and results.json under `out` (together: see write_files); returns the Markdown
    table."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(name, scores, metrics, dataset, notes)
    columns = ["name", "frames"] + [key for key in ("psnr", "ssim", "lpips", "lip_lmd", "lip_frames", "csim",
                                                     "csim_frames", "lse_c", "lse_d", "sync_offset", "sync_note",
                                                     "lip_jitter", "lip_jitter_real", "jitter_ratio", "jitter_frames",
                                                     "resized", "generated", "reference")
                                    if any(key in row for row in scores.per_video)]
    rows = io.StringIO()
    writer = csv.DictWriter(rows, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in scores.per_video:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    results = {"method": name, "summary": scores.summary, "not_available": scores.reasons, "settings": settings,
               "lists": lists, "per_video": scores.per_video, "notes": notes, "versions": versions(),
               "table": table}  # table.md's Markdown, which an export's model card shows (model_files/export.py)
    write_files({out / "table.md": table, out / "per_video.csv": rows.getvalue(),
                 out / "results.json": json.dumps(_plain(results), indent=2) + "\n"})
    return table
