"""The paper's Table 1: score generated talking-face videos against the real ones.

Scoring mode, for any method's videos (matched by relative path, extension aside):
    python evaluate.py --generated DIR --reference DIR --out DIR [--name Wav2Lip --dataset lrs2]
Generation mode, for this model (samples the test videos, dubs them with dubbing.py, then scores them):
    python evaluate.py --setting reconstruction|dubbing --filelist FILE --video-root DIR \
        --landmark-ckpt FILE --renderer-ckpt FILE [--num-videos 45 --seed 0] --out DIR
The reconstruction setting scores PSNR, SSIM, LPIPS, FID, LipLMD and CSIM; the dubbing setting SyncScore (LSE-C,
with LSE-D). Writes OUT/table.md (also printed), OUT/per_video.csv and OUT/results.json. See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import yaml

from data.errors import InputError, one_line
from data.video import VIDEO_EXTENSIONS
from metrics.scoring import METRICS, Pair, Scores, load_networks, score_videos

CONFIG = Path(__file__).resolve().parent / "configs" / "evaluate.yaml"
SETTING_METRICS = {"reconstruction": ("psnr", "ssim", "lpips", "fid", "lip_lmd", "csim"), "dubbing": ("sync",)}
WEIGHT_KEYS = {"lpips": "lpips", "fid": "fid", "arcface": "csim", "syncnet": "sync"}  # config key -> metric
COLUMNS = (  # (summary key, header, digits)
    ("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 4), ("lpips", "LPIPS ↓", 4), ("fid", "FID ↓", 2),
    ("lip_lmd", "LipLMD ↓", 5), ("csim", "CSIM ↑", 4), ("lse_c", "SyncScore (LSE-C) ↑", 2), ("lse_d", "LSE-D ↓", 2))
PAPER_ROWS = {  # Table 1 of the paper (docs/method.md, section 6); the paper gives no LSE-D
    "lrs2": {"Wav2Lip (paper)": (27.92, 0.8962, 0.0741, 43.46, 0.02003, 0.5925, 3.86, None),
             "IP_LAP (paper)": (32.91, 0.9399, 0.0303, 27.87, 0.01293, 0.6523, 4.49, None)},
    "lrs3": {"Wav2Lip (paper)": (28.45, 0.8852, 0.0683, 49.60, 0.02001, 0.5909, 4.26, None),
             "IP_LAP (paper)": (32.97, 0.9222, 0.0310, 29.96, 0.01353, 0.6385, 5.63, None)},
}
VERSIONED = ("torch", "torchvision", "numpy", "scipy", "lpips", "mediapipe", "opencv-contrib-python", "av",
             "scikit-image", "python_speech_features", "pyyaml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="exit status: 0 when the table was written; 2 for bad input (missing "
                                            "folder, file list or weight file, unreadable video), reported in one "
                                            "line; 130 when interrupted")
    parser.add_argument("--out", required=True, type=Path, help="folder for table.md, per_video.csv, results.json")
    score = parser.add_argument_group("scoring mode")
    score.add_argument("--generated", type=Path, help="folder of generated videos (any depth)")
    score.add_argument("--reference", type=Path, help="folder of the real videos, same relative paths")
    score.add_argument("--metrics", help=f"comma-separated subset of {','.join(METRICS)} (default: all)")
    generate = parser.add_argument_group("generation mode")
    generate.add_argument("--setting", choices=tuple(SETTING_METRICS))
    generate.add_argument("--filelist", type=Path, help="test list, one relative path per line (LRS2 format)")
    generate.add_argument("--video-root", type=Path, help="folder the file list's paths are relative to")
    generate.add_argument("--landmark-ckpt", type=Path)
    generate.add_argument("--renderer-ckpt", type=Path)
    generate.add_argument("--num-videos", type=int, help="videos to sample (config: 45)")
    generate.add_argument("--seed", type=int, help="sampling and pairing seed (config: 0)")
    generate.add_argument("--inference-config", type=Path, help="dubbing settings (default: "
                                                                "configs/inference.yaml, as inference.py)")
    common = parser.add_argument_group("weights and running")
    common.add_argument("--config", type=Path, default=CONFIG)
    for key in WEIGHT_KEYS:
        common.add_argument(f"--{key}-weights", type=Path, help=f"weight file (config: weights.{key})")
    common.add_argument("--skip-missing", action="store_true",
                        help="report a metric whose weights are missing as n/a with the reason instead of stopping")
    common.add_argument("--no-download", action="store_true", help="never try a weight file's public URL")
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--batch-size", type=int, help="frames per network batch (config: 16)")
    common.add_argument("--name", help="the method's name in the table (default: the generated folder's name)")
    common.add_argument("--dataset", choices=tuple(PAPER_ROWS), help="add the paper's rows for this dataset")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def load_config(path: Path) -> dict:
    """The evaluation config with defaults filled in; unknown keys are an error."""
    if not path.is_file():
        raise InputError(path, "no such config file")
    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    known = {"weights", "download", "batch_size", "num_videos", "seed"}
    if not isinstance(config, dict) or set(config) - known:
        raise InputError(path, f"unknown config keys {sorted(set(config) - known)}; known: {sorted(known)}")
    weights = config.get("weights") or {}
    if set(weights) - set(WEIGHT_KEYS):
        raise InputError(path, f"unknown weights keys {sorted(set(weights) - set(WEIGHT_KEYS))}")
    return {"weights": {k: weights.get(k) for k in WEIGHT_KEYS}, "download": bool(config.get("download", True)),
            "batch_size": int(config.get("batch_size", 16)), "num_videos": int(config.get("num_videos", 45)),
            "seed": int(config.get("seed", 0))}


# ---------------------------------------------------------------- video lists

def find_videos(root: Path) -> dict[str, Path]:
    """Videos under `root` (any depth) by relative path without extension."""
    if not root.is_dir():
        raise InputError(root, "no such folder")
    return {path.relative_to(root).with_suffix("").as_posix(): path for path in sorted(root.rglob("*"))
            if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file() and not path.name.startswith(".")}


def match_pairs(generated: Path, reference: Path | None) -> tuple[list[Pair], list[str], list[str]]:
    """Pairs matched by relative path; also the generated names with no real video and the real ones not generated."""
    made = find_videos(generated)
    if not made:
        raise InputError(generated, "no video files found")
    if reference is None:
        return [Pair(name, path) for name, path in made.items()], [], []
    real = find_videos(reference)
    pairs = [Pair(name, path, real[name]) for name, path in made.items() if name in real]
    if not pairs:
        raise InputError(generated, f"no video matches a video under {reference} by relative path")
    return pairs, sorted(set(made) - set(real)), sorted(set(real) - set(made))


def read_filelist(path: Path) -> list[str]:
    """Relative paths, extension dropped, of an LRS2-style file list (data/datasets.py reads the format)."""
    from data.datasets import read_filelist as read_stems

    names = [stem.as_posix() for stem in read_stems(path, "")]
    if not names:
        raise InputError(path, "the file list is empty")
    return names


def video_file(root: Path, name: str) -> Path:
    """The video file for a file-list entry (with or without its extension)."""
    candidates = [root / name] + [root / f"{name}{ext}" for ext in VIDEO_EXTENSIONS]
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix.lower() in VIDEO_EXTENSIONS:
            return candidate
    raise InputError(root / name, "listed video not found (tried .mp4 .mov .mkv .avi .webm)")


def sample_videos(names: list[str], count: int, seed: int, dubbing: bool) -> tuple[list[str], list[str]]:
    """`count` names drawn without replacement (seeded), and the audio source of each: itself for reconstruction,
    another sampled video for dubbing (a seeded derangement: no video keeps its own audio)."""
    rng = np.random.default_rng(seed)
    chosen = [names[i] for i in rng.permutation(len(names))[:count]]
    if not dubbing:
        return chosen, list(chosen)
    if len(chosen) < 2:
        raise InputError("--num-videos", "the dubbing setting needs at least 2 videos to pair")
    while True:  # rejection sampling: about e draws on average
        order = rng.permutation(len(chosen))
        if not np.any(order == np.arange(len(chosen))):
            return chosen, [chosen[i] for i in order]


def generate_videos(videos: list[Path], audios: list[Path], names: list[str], out: Path, landmark_ckpt: Path,
                    renderer_ckpt: Path, device: str, progress: bool = True, inference_config: Path | None = None
                    ) -> tuple[list[Path], int]:
    """Dub each video with its audio through dubbing.py into OUT/generated/<name>.mp4; returns the outputs and how
    many were reused. A video already there is reused only when its record (OUT/generated_with/<name>.json) shows
    the same checkpoints (by sha256), dubbing settings, device type and input files; otherwise it is made again."""
    from tqdm import tqdm

    import dubbing
    from data.samples import sha256

    models = dubbing.load_models(landmark_ckpt, renderer_ckpt, device)
    if inference_config is None:
        config = dubbing.default_config()
    else:
        from training import load_config as load_inference_config

        config = load_inference_config(inference_config)
    made_with = {"landmark_sha256": sha256(Path(landmark_ckpt)), "renderer_sha256": sha256(Path(renderer_ckpt)),
                 "settings": config, "device": torch.device(device).type}
    outputs, reused = [], 0
    for video, audio, name in tqdm(list(zip(videos, audios, names)), desc="generating", unit="video",
                                   file=sys.stderr, disable=not progress):
        output = out / "generated" / f"{name}.mp4"
        record = out / "generated_with" / f"{name}.json"  # beside the videos' tree, which holds videos only
        wanted = {**made_with, "video": _file_key(video), "audio": _file_key(audio)}
        if output.is_file() and _read_json(record) == wanted:
            reused += 1
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.unlink(missing_ok=True)
            dubbing.dub(video, audio, output, models, config, progress=False)  # written atomically
            temp = record.with_name(record.name + ".tmp")
            temp.write_text(json.dumps(wanted, indent=1, sort_keys=True))
            os.replace(temp, record)
        outputs.append(output)
    return outputs, reused


def _file_key(path: Path) -> dict:
    """What identifies an input file cheaply: its resolved path, size and modification time."""
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- reports

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
        cells = [_cell(v, d, True) if v is not None else "-" for v, (_, _, d) in zip(values, COLUMNS)]
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


def write_reports(out: Path, name: str, scores: Scores, metrics: tuple[str, ...], settings: dict,
                  lists: dict, dataset: str | None, notes: list[str]) -> str:
    """Write table.md, per_video.csv and results.json under `out`; returns the Markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(name, scores, metrics, dataset, notes)
    (out / "table.md").write_text(table)
    columns = ["name", "frames"] + [key for key in ("psnr", "ssim", "lpips", "lip_lmd", "lip_frames", "csim",
                                                     "csim_frames", "lse_c", "lse_d", "sync_offset", "sync_note",
                                                     "resized", "generated", "reference")
                                    if any(key in row for row in scores.per_video)]
    with open(out / "per_video.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in scores.per_video:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    results = {"method": name, "summary": scores.summary, "not_available": scores.reasons, "settings": settings,
               "lists": lists, "per_video": scores.per_video, "notes": notes, "versions": versions()}
    (out / "results.json").write_text(json.dumps(_plain(results), indent=2) + "\n")
    return table


# ---------------------------------------------------------------- main

def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    paths = {metric: getattr(args, f"{key}_weights") or config["weights"][key] for key, metric in WEIGHT_KEYS.items()}
    batch_size = args.batch_size or config["batch_size"]
    download = config["download"] and not args.no_download
    settings = {"device": args.device, "batch_size": batch_size, "skip_missing": args.skip_missing,
                "weights": {m: None if p is None else str(p) for m, p in paths.items()}, "config": str(args.config)}
    notes: list[str] = []
    if args.generated is not None:
        if args.setting is not None:
            raise InputError("--generated", "give either --generated (scoring mode) or --setting (generation mode)")
        metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else METRICS
        if set(metrics) - set(METRICS):
            raise InputError("--metrics", f"unknown metrics {sorted(set(metrics) - set(METRICS))}; known: {METRICS}")
        if args.reference is None and set(metrics) - {"sync"}:
            raise InputError("--reference", "needed for every metric but sync (use --metrics sync without it)")
        pairs, unmatched, not_generated = match_pairs(args.generated, args.reference)
        if unmatched:
            notes.append(f"{len(unmatched)} generated videos have no real video and were left out")
        if not_generated:
            notes.append(f"{len(not_generated)} real videos have no generated video")
        settings.update({"mode": "scoring", "generated": str(args.generated), "reference": str(args.reference),
                         "metrics": list(metrics)})
        lists = {"scored": [p.name for p in pairs], "unmatched_generated": unmatched, "not_generated": not_generated}
        name = args.name or args.generated.resolve().name
    else:
        missing = [flag for flag, value in (("--setting", args.setting), ("--filelist", args.filelist),
                                            ("--video-root", args.video_root), ("--landmark-ckpt", args.landmark_ckpt),
                                            ("--renderer-ckpt", args.renderer_ckpt)) if value is None]
        if missing:
            raise InputError(missing[0], "missing: give --generated/--reference, or --setting with --filelist, "
                                         "--video-root, --landmark-ckpt and --renderer-ckpt")
        metrics = SETTING_METRICS[args.setting]
        count = args.num_videos or config["num_videos"]
        seed = config["seed"] if args.seed is None else args.seed
        names, audio_names = sample_videos(read_filelist(args.filelist), count, seed, args.setting == "dubbing")
        videos = [video_file(args.video_root, n) for n in names]
        audios = [video_file(args.video_root, n) for n in audio_names]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sampled.tsv").write_text("".join(f"{v}\t{a}\n" for v, a in zip(names, audio_names)))
        settings.update({"mode": "generation", "setting": args.setting, "filelist": str(args.filelist),
                         "video_root": str(args.video_root), "num_videos": count, "seed": seed,
                         "landmark_ckpt": str(args.landmark_ckpt), "renderer_ckpt": str(args.renderer_ckpt),
                         "metrics": list(metrics)})
        lists = {"sampled": names, "audio_of": dict(zip(names, audio_names))}
        networks = load_networks(metrics, paths, args.device, args.skip_missing, download)  # fail before dubbing
        outputs, reused = generate_videos(videos, audios, names, args.out, args.landmark_ckpt, args.renderer_ckpt,
                                          args.device, not args.quiet, args.inference_config)
        notes.append(f"{reused} of {len(outputs)} generated videos reused from an earlier run with the same "
                     "checkpoints and settings")
        settings["reused_videos"] = reused
        pairs = [Pair(n, o, v, a) for n, o, v, a in zip(names, outputs, videos, audios)]
        return _score_and_report(args, pairs, networks, metrics, batch_size, settings, lists, notes,
                                 args.name or f"IP_LAP ({args.setting})")
    networks = load_networks(metrics, paths, args.device, args.skip_missing, download)
    return _score_and_report(args, pairs, networks, metrics, batch_size, settings, lists, notes, name)


def _score_and_report(args, pairs, networks, metrics, batch_size, settings, lists, notes, name) -> int:
    scores = score_videos(pairs, networks, metrics, args.device, batch_size, progress=not args.quiet)
    settings["videos"] = len(pairs)
    settings["frames"] = sum(row["frames"] for row in scores.per_video)
    notes.append(f"{len(pairs)} videos, {settings['frames']} frames")
    table = write_reports(args.out, name, scores, metrics, settings, lists, args.dataset, notes)
    print(table, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except InputError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; videos already generated are kept and reused by the next run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
