"""The paper's Table 1: score generated talking-face videos against the real ones.

Scoring mode, for any method's videos (matched by relative path, extension aside):
    python evaluate.py --generated DIR --reference DIR --out DIR [--name Wav2Lip --dataset lrs2]
Generation mode, for this model (samples the test videos, dubs them with dubbing/, then scores them):
    python evaluate.py --setting reconstruction|dubbing --filelist FILE --video-root DIR \
        --landmark-ckpt FILE --renderer-ckpt FILE [--num-videos 45 --seed 0] --out DIR
The reconstruction setting scores PSNR, SSIM, LPIPS, FID, LipLMD, CSIM and steadiness (lip jitter, generated and
real, and their ratio); the dubbing setting SyncScore (LSE-C, with LSE-D) and the generated videos' lip jitter.
--protocol standard|iplap chooses the reference code CSIM and FID follow (metrics/protocols.py); the config key
sync.reference_pipeline (default true) scores LSE on crops through syncnet_python's codec round trips.
Writes OUT/table.md (also printed), OUT/per_video.csv and OUT/results.json. See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from config import INFERENCE_CONFIG, pick_device
from config import load_config as read_config
from data.errors import DISK_STATUS, DiskError, InputError, disk_problem, one_line
from data.video import FPS, VIDEO_EXTENSIONS, find_videos
from metrics.protocols import PROTOCOLS, SYNC_PIPELINES
from metrics.report import PAPER_ROWS, write_files, write_reports
from metrics.scoring import METRICS, Pair, load_networks, score_videos

CONFIG = Path(__file__).resolve().parent / "configs" / "evaluate.yaml"
SETTING_METRICS = {"reconstruction": ("psnr", "ssim", "lpips", "fid", "lip_lmd", "csim", "steadiness"),
                   "dubbing": ("sync", "steadiness")}
WEIGHT_KEYS = {"lpips": "lpips", "fid": "fid", "arcface": "csim", "syncnet": "sync"}  # config key -> metric

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="exit status: 0 when the table was written; 2 for bad input (missing "
                                            "folder, file list or weight file, unreadable video), reported in one "
                                            "line; 74 when a disk is full, over quota, read-only or failing (one "
                                            "line naming the file; no partial report or video is left, and the "
                                            "generated videos that were complete are reused by the next run); 130 "
                                            "when interrupted")
    parser.add_argument("--out", required=True, type=Path, help="folder for table.md, per_video.csv, results.json")
    score = parser.add_argument_group("scoring mode")
    score.add_argument("--generated", type=Path, help="folder of generated videos (any depth)")
    score.add_argument("--reference", type=Path, help="folder of the real videos, same relative paths")
    score.add_argument("--metrics", help=f"comma-separated subset of {','.join(METRICS)} (default: all)")
    generate = parser.add_argument_group("generation mode")
    generate.add_argument("--setting", choices=tuple(SETTING_METRICS))
    generate.add_argument("--filelist", type=Path, help="test list, one relative path per line (LRS2 format)")
    generate.add_argument("--video-root", type=Path, help="folder the file list's paths are relative to")
    generate.add_argument("--landmark-ckpt", help="a path, export folder or hf://OWNER/REPO@REVISION/PATH "
                                                  "(docs/models.md)")
    generate.add_argument("--renderer-ckpt", help="as --landmark-ckpt")
    generate.add_argument("--require-hash", action="store_true", help="refuse a checkpoint reference without "
                          "#sha256=HEX (also checkpoints.require_sha256 in the inference config)")
    generate.add_argument("--num-videos", type=int, help="videos to sample (config: 45)")
    generate.add_argument("--seed", type=int, help="sampling and pairing seed (config: 0)")
    generate.add_argument("--inference-config", type=Path, help="dubbing settings (default: "
                                                                "configs/inference.yaml, as inference.py); the "
                                                                f"videos are dubbed at {FPS} fps whatever its "
                                                                "output.fps")
    common = parser.add_argument_group("weights and running")
    common.add_argument("--config", type=Path, default=CONFIG,
                        help="YAML settings laid over configs/evaluate.yaml (default: that file)")
    for key in WEIGHT_KEYS:
        common.add_argument(f"--{key}-weights", help=f"weight file or hf:// reference (config: weights.{key})")
    common.add_argument("--skip-missing", action="store_true",
                        help="report a metric whose weights are missing as n/a with the reason instead of stopping")
    common.add_argument("--no-download", action="store_true", help="never try a weight file's public URL")
    common.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: CUDA when present)")
    common.add_argument("--batch-size", type=int, help="frames per network batch (config: 16)")
    common.add_argument("--name", help="the method's name in the table (default: the generated folder's name)")
    common.add_argument("--dataset", choices=tuple(PAPER_ROWS), help="add the paper's rows for this dataset")
    common.add_argument("--protocol", choices=tuple(PROTOCOLS),
                        help="standard: CSIM on face crops, FID with scipy's sqrtm; iplap: the ViCo baseline code "
                             "IP_LAP's README names (CSIM on whole 112x112 frames over all frame pairs, FID with "
                             "piq's Newton-Schulz root) (config: standard)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="config overrides, dotted.key=value (e.g. batch_size=8 "
                                                     "weights.fid=/path/to/pt_inception.pth)")
    return parser.parse_intermixed_args(argv)  # key=value overrides anywhere among the flags


def load_config(path: str | Path = CONFIG, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """configs/evaluate.yaml, with the keys of `path` laid over it and `key=value` overrides; unknown keys are
    refused. The defaults live in that YAML file only."""
    return read_config(path, overrides, base=CONFIG)


# ---------------------------------------------------------------- video lists

def videos_by_name(root: Path) -> dict[str, Path]:
    """Videos under `root` (any depth) by relative path without extension."""
    return {path.relative_to(root).with_suffix("").as_posix(): path for path in find_videos(root)}


def match_pairs(generated: Path, reference: Path | None) -> tuple[list[Pair], list[str], list[str]]:
    """Pairs matched by relative path; also the generated names with no real video and the real ones not generated."""
    made = videos_by_name(generated)
    if not made:
        raise InputError(generated, "no video files found")
    if reference is None:
        return [Pair(name, path) for name, path in made.items()], [], []
    real = videos_by_name(reference)
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


def generate_videos(videos: list[Path], audios: list[Path], names: list[str], out: Path, landmark_ckpt: str | Path,
                    renderer_ckpt: str | Path, device: str, progress: bool = True, inference_config: Path | None = None,
                    require_sha256: bool = False) -> tuple[list[Path], int]:
    """Dub each video with its audio through dubbing/ into OUT/generated/<name>.mp4 at 25 fps (the rate of LRS2,
    LRS3 and Table 1, whatever the dubbing config's output.fps); returns the outputs and how many were reused.
    A video already there is reused only when its record (OUT/generated_with/<name>.json) shows
    the same checkpoints (by sha256), dubbing settings, device type and input files; otherwise it is made again."""
    from tqdm import tqdm

    import dubbing
    from data.samples import sha256
    from model_files.checkpoints import checkpoint_file

    config = dubbing.default_config() if inference_config is None else \
        read_config(inference_config, base=INFERENCE_CONFIG)
    # References resolved once (a hub file downloaded once), so the networks and the record's sha256 read one file.
    require_sha256 = require_sha256 or config["checkpoints"]["require_sha256"]
    landmark_ckpt = checkpoint_file(landmark_ckpt, "landmark_generator", require_sha256)
    renderer_ckpt = checkpoint_file(renderer_ckpt, "renderer", require_sha256)
    models = dubbing.load_models(landmark_ckpt, renderer_ckpt, device, winograd=config["winograd"])
    if models.device.type == "cpu":
        from allocator import keep_freed_memory

        keep_freed_memory()  # as inference.py: the renderer's CPU pass runs faster with it
    config["output"]["fps"] = FPS  # LRS2/LRS3 are 25 fps and Table 1 is defined there, whatever the config says
    made_with = {"landmark_sha256": sha256(landmark_ckpt), "renderer_sha256": sha256(renderer_ckpt),
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
            try:
                dubbing.dub(video, audio, output, models, config, progress=False)  # written atomically
            except Exception as error:  # dubbing/'s DiskError keeps the OSError it came from as its context
                problem = disk_problem(error)
                if problem is None:
                    raise
                raise DiskError(output, f"{problem} (video not written; the {len(outputs)} before it are kept and "
                                        "reused by the next run)") from None
            write_files({record: json.dumps(wanted, indent=1, sort_keys=True)},
                        "video made, but its record not written: it is made again next time")
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


# ---------------------------------------------------------------- main

@dataclass
class Job:
    """What both modes share: the settings, where the metric networks' weights are, the protocol and sync pipeline,
    and the notes so far."""

    config: dict
    paths: dict[str, str | Path | None]
    batch_size: int
    download: bool
    settings: dict
    protocol: str  # a metrics.protocols.PROTOCOLS name
    sync_round_trip: bool  # sync.reference_pipeline
    notes: list[str] = field(default_factory=list)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    args.device = str(pick_device(args.device))
    # Metrics in full float32 on a GPU too: TF32 matmuls and convolutions would move them by ~1e-3 from their CPU and
    # published values.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    paths = {metric: getattr(args, f"{key}_weights") or config["weights"][key] for key, metric in WEIGHT_KEYS.items()}
    batch_size = args.batch_size or config["batch_size"]
    protocol, round_trip = args.protocol or config["protocol"], config["sync"]["reference_pipeline"]
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise InputError(args.config, f"protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if not isinstance(round_trip, bool):
        raise InputError(args.config, f"sync.reference_pipeline: {round_trip!r} is not true or false")
    job = Job(config, paths, batch_size, config["download"] and not args.no_download,
              {"device": args.device, "batch_size": batch_size,
               "skip_missing": args.skip_missing, "config": str(args.config),
               "weights": {m: None if p is None else str(p) for m, p in paths.items()},
               "protocol": PROTOCOLS[protocol].record(),
               "sync_pipeline": {"reference_pipeline": round_trip, "summary": SYNC_PIPELINES[round_trip]}},
              protocol, round_trip)
    job.notes += [f"protocol: {protocol} ({PROTOCOLS[protocol].summary})",
                  f"sync pipeline: {SYNC_PIPELINES[round_trip]}"]
    if args.generated is not None:
        if args.setting is not None:
            raise InputError("--generated", "give either --generated (scoring mode) or --setting (generation mode)")
        return run_scoring(args, job)
    return run_generation(args, job)


def run_scoring(args: argparse.Namespace, job: Job) -> int:
    """Scoring mode: any method's videos against the real ones, matched by relative path."""
    metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else METRICS
    if set(metrics) - set(METRICS):
        raise InputError("--metrics", f"unknown metrics {sorted(set(metrics) - set(METRICS))}; known: {METRICS}")
    if args.reference is None and set(metrics) - {"sync", "steadiness"}:
        raise InputError("--reference", "needed for every metric but sync and steadiness (use --metrics "
                                        "sync,steadiness without it)")
    pairs, unmatched, not_generated = match_pairs(args.generated, args.reference)
    if unmatched:
        job.notes.append(f"{len(unmatched)} generated videos have no real video and were left out")
    if not_generated:
        job.notes.append(f"{len(not_generated)} real videos have no generated video")
    job.settings.update({"mode": "scoring", "generated": str(args.generated), "reference": str(args.reference),
                         "metrics": list(metrics)})
    lists = {"scored": [p.name for p in pairs], "unmatched_generated": unmatched, "not_generated": not_generated}
    networks = load_networks(metrics, job.paths, args.device, args.skip_missing, job.download)
    return score_and_report(args, job, pairs, networks, metrics, lists, args.name or args.generated.resolve().name)


def run_generation(args: argparse.Namespace, job: Job) -> int:
    """Generation mode: sample test videos, dub them with this model, score them."""
    missing = [flag for flag, value in (("--setting", args.setting), ("--filelist", args.filelist),
                                        ("--video-root", args.video_root), ("--landmark-ckpt", args.landmark_ckpt),
                                        ("--renderer-ckpt", args.renderer_ckpt)) if value is None]
    if missing:
        raise InputError(missing[0], "missing: give --generated/--reference, or --setting with --filelist, "
                                     "--video-root, --landmark-ckpt and --renderer-ckpt")
    metrics = SETTING_METRICS[args.setting]
    count = args.num_videos or job.config["num_videos"]
    seed = job.config["seed"] if args.seed is None else args.seed
    names, audio_names = sample_videos(read_filelist(args.filelist), count, seed, args.setting == "dubbing")
    videos = [video_file(args.video_root, n) for n in names]
    audios = [video_file(args.video_root, n) for n in audio_names]
    args.out.mkdir(parents=True, exist_ok=True)
    write_files({args.out / "sampled.tsv": "".join(f"{v}\t{a}\n" for v, a in zip(names, audio_names))},
                "sample list not written")
    job.settings.update({"mode": "generation", "setting": args.setting, "filelist": str(args.filelist),
                         "video_root": str(args.video_root), "num_videos": count, "seed": seed,
                         "landmark_ckpt": str(args.landmark_ckpt), "renderer_ckpt": str(args.renderer_ckpt),
                         "metrics": list(metrics)})
    lists = {"sampled": names, "audio_of": dict(zip(names, audio_names))}
    networks = load_networks(metrics, job.paths, args.device, args.skip_missing, job.download)  # before dubbing
    outputs, reused = generate_videos(videos, audios, names, args.out, args.landmark_ckpt, args.renderer_ckpt,
                                      args.device, not args.quiet, args.inference_config, args.require_hash)
    job.notes.append(f"{reused} of {len(outputs)} generated videos reused from an earlier run with the same "
                     "checkpoints and settings")
    job.settings["reused_videos"] = reused
    # Dubbing: the template's mouth speaks other words, so steadiness is the generated videos' alone.
    pairs = [Pair(n, o, v if args.setting == "reconstruction" else None, a)
             for n, o, v, a in zip(names, outputs, videos, audios)]
    return score_and_report(args, job, pairs, networks, metrics, lists, args.name or f"IP_LAP ({args.setting})")


def score_and_report(args: argparse.Namespace, job: Job, pairs: list[Pair], networks, metrics: tuple[str, ...],
                     lists: dict, name: str) -> int:
    scores = score_videos(pairs, networks, metrics, args.device, job.batch_size, progress=not args.quiet,
                          protocol=PROTOCOLS[job.protocol], sync_round_trip=job.sync_round_trip)
    job.settings["videos"] = len(pairs)
    job.settings["frames"] = sum(row["frames"] for row in scores.per_video)
    job.notes.append(f"{len(pairs)} videos, {job.settings['frames']} frames")
    table = write_reports(args.out, name, scores, metrics, job.settings, lists, args.dataset, job.notes)
    print(table, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except InputError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except DiskError as error:
        print(f"error: {error}", file=sys.stderr)
        return DISK_STATUS
    except OSError as error:  # any other write (a folder, a weight file's download) on a disk that cannot take it
        if disk_problem(error) is None:
            raise
        print(f"error: {error.filename or args.out}: {disk_problem(error)}", file=sys.stderr)
        return DISK_STATUS
    except KeyboardInterrupt:
        print("interrupted; videos already generated are kept and reused by the next run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
