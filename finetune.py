"""Fine-tune both stages on one speaker's footage, from any model the loaders take, in one command.

    python finetune.py --videos my_speaker/ --init-landmark REF --init-renderer REF --out runs/me
        [--holdout-seconds 10] [--config configs/finetune_speaker.yaml] [--inference-config FILE] [--device auto]
        [landmark.KEY=VALUE ...] [renderer.KEY=VALUE ...]

REF: an official IP_LAP file, a step_*.pt of this project, an export (file or folder) or hf://...#sha256= (as
--init of the trainers). In OUT:

1. videos/train, videos/holdout: each video split into its training part and its last --holdout-seconds;
2. records/train, records/holdout: preprocess.py of both, at the face size of the renderer REF;
3. eval/before: evaluate.py's reconstruction setting on the held-out seconds with the REF models (PSNR, SSIM,
   LPIPS, LipLMD, and LSE scored on the same videos; a metric whose weights are not at hand is listed as such);
4. landmark, renderer: train_landmark.py and train_render.py with the config's sections, --init REF, evaluating on
   the held-out records;
5. export/landmark_generator, export/renderer: model_files.export of each stage's last checkpoint (the renderer's with
   its discriminator);
6. eval/after: as 3, with the exports; report.md: the before/after table. Then a dub command using the new model.

Every step keeps what an earlier run finished (split files, records, checkpoints through --resume auto, exports of
the same checkpoint, generated videos of the same checkpoints), so rerunning the command continues an interrupted
run. Bad input is one line and exit status 2; a trainer's own exit status is passed on.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import yaml

from config import REPO, check_keys, read_yaml
from data.errors import DISK_STATUS, DiskError, InputError, one_line

CONFIG = REPO / "configs" / "finetune_speaker.yaml"
STAGES = {"landmark": ("train_landmark", "landmark_generator"), "renderer": ("train_render", "renderer")}
TABLE_METRICS = (("psnr", "PSNR (dB)", "higher"), ("ssim", "SSIM", "higher"), ("lpips", "LPIPS", "lower"),
                 ("lip_lmd", "LipLMD", "lower"), ("lse_c", "LSE-C", "higher"), ("lse_d", "LSE-D", "lower"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit status: 0 when the model was exported and evaluated; 2 for bad "
                                            "input (one line); 74 when a disk could not take a file; a trainer's "
                                            "status when it stopped (75: resumable); 130 when interrupted")
    parser.add_argument("--videos", type=Path, required=True, help="folder of the speaker's videos (any depth)")
    parser.add_argument("--init-landmark", required=True, metavar="REF", help="landmark generator to start from")
    parser.add_argument("--init-renderer", required=True, metavar="REF", help="renderer to start from")
    parser.add_argument("--out", type=Path, required=True, help="folder of the run (reused: reruns continue)")
    parser.add_argument("--holdout-seconds", type=float, default=10.0,
                        help="seconds at the end of each video kept out of training for evaluation (default 10)")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="sections 'landmark' and 'renderer', each laid over its trainer's base config")
    parser.add_argument("--inference-config", type=Path, help="dubbing settings of the held-out evaluations, laid "
                        "over configs/inference.yaml (e.g. refs: 3 for a quick look on a CPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: CUDA when present)")
    parser.add_argument("--workers", type=int, default=0, help="preprocessing worker processes (default 0: inline)")
    parser.add_argument("overrides", nargs="*", help="landmark.KEY=VALUE or renderer.KEY=VALUE, e.g. "
                                                     "renderer.schedule.max_steps=500")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- configs
def stage_configs(path: Path, overrides: list[str]) -> dict[str, tuple[dict, list[str]]]:
    """Per stage: the config file's section (checked against that trainer's base config) and its overrides."""
    import train_landmark
    import train_render

    sections = read_yaml(path)
    unknown = sorted(set(sections) - set(STAGES))
    if unknown:
        raise InputError(path, f"unknown section '{unknown[0]}' (a fine-tuning config has {', '.join(STAGES)})")
    bases = {"landmark": train_landmark.BASE_CONFIG, "renderer": train_render.BASE_CONFIG}
    split: dict[str, tuple[dict, list[str]]] = {}
    for stage, base in bases.items():
        section = sections.get(stage) or {}
        check_keys(section, read_yaml(base), path, f"{stage}.")
        split[stage] = (section, [])
    for item in overrides:
        stage, dot, rest = item.partition(".")
        if stage not in STAGES or not dot:
            raise InputError(item, "overrides take the form landmark.KEY=VALUE or renderer.KEY=VALUE")
        split[stage][1].append(rest)
    return split


def renderer_face_size(reference: str) -> int:
    """The face size of the renderer a reference names (128 for official files), read once to check it early."""
    from model_files.checkpoints import read_checkpoint, renderer_of

    return renderer_of(read_checkpoint(reference, "renderer")).face_size


# ---------------------------------------------------------------- steps
def split_videos(videos: Path, out: Path, seconds: float) -> list[str]:
    """Each video's training part and held-out seconds under OUT/videos/{train,holdout} (kept when there); returns
    the held-out clips' names relative to OUT/videos/holdout."""
    from data.holdout import split_video
    from data.video import VIDEO_EXTENSIONS, find_videos

    if not videos.is_dir():
        raise InputError(videos, "no such folder of videos")
    found = find_videos(videos)
    if not found:
        raise InputError(videos, f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in this folder or below")
    names = []
    for video in found:
        name = video.relative_to(videos).with_suffix(".mp4")
        train, holdout = out / "videos" / "train" / name, out / "videos" / "holdout" / name
        if not (train.is_file() and holdout.is_file()):
            counts = split_video(video, train, holdout, seconds)
            print(f"{name}: {counts[0]} frames to train on, {counts[1]} held out", file=sys.stderr)
        names.append(name.as_posix())
    return names


def preprocess(out: Path, face_size: int, workers: int) -> None:
    """Records of both parts (preprocess.py keeps the records already complete)."""
    import preprocess as script

    for part in ("train", "holdout"):
        argv = ["--input-root", str(out / "videos" / part), "--output-root", str(out / "records" / part),
                "--face-size", str(face_size), "--workers", str(workers)]
        if script.main(argv) != 0:
            raise InputError(out / "videos" / part, "preprocessing wrote no record (see the lines above)")


def train_stage(stage: str, out: Path, section: dict, overrides: list[str], reference: str, device: str,
                face_size: int) -> int:
    """One trainer, from `reference` or, when its run has a checkpoint, from there; returns its exit status."""
    import importlib

    run_dir = out / stage
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "finetune.yaml"  # the section as given; the trainer lays it over its base config
    config.write_text(yaml.safe_dump(section, sort_keys=False))
    paths = [f"run_dir={run_dir}", f"device={device}", f"data.records={out / 'records' / 'train'}",
             "data.train_list=null", f"data.val_list={out / 'records' / 'holdout'}"]
    if stage == "renderer":
        paths.append(f"face_size={face_size}")
    trainer = importlib.import_module(STAGES[stage][0])
    return trainer.main(["--config", str(config), "--init", reference, "--resume", "auto", *paths, *overrides])


def export_stage(stage: str, out: Path) -> Path:
    """OUT/export/<network>: the export of the stage's newest checkpoint (kept when it already is that one's)."""
    from data.samples import sha256
    from model_files.export import export
    from training.checkpoints import list_checkpoints

    kind = STAGES[stage][1]
    found = list_checkpoints(out / stage)
    if not found:
        raise InputError(out / stage, "no checkpoint to export")
    folder = out / "export" / kind
    record = folder / "config.json"
    if record.is_file() and json.loads(record.read_text())["source"]["sha256"] == sha256(found[-1]):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    export(found[-1], folder, with_discriminator=stage == "renderer")
    return folder


def evaluate_models(out: Path, names: list[str], landmark: str, renderer: str, device: str, where: str,
                    inference_config: Path | None = None) -> dict:
    """evaluate.py's reconstruction setting on the held-out clips, then LSE scored on the same generated videos;
    returns {metric: value or 'n/a: reason'}."""
    import evaluate

    folder = out / "eval" / where
    filelist = out / "holdout.txt"
    filelist.write_text("".join(f"{name}\n" for name in names))
    common = ["--skip-missing", "--device", device, "--quiet"]
    status = evaluate.main(["--out", str(folder), "--setting", "reconstruction", "--filelist", str(filelist),
                            "--video-root", str(out / "videos" / "holdout"), "--landmark-ckpt", landmark,
                            "--renderer-ckpt", renderer, "--num-videos", str(len(names)), *common,
                            *(["--inference-config", str(inference_config)] if inference_config else [])])
    if status != 0:
        raise InputError(folder, f"evaluate.py stopped with status {status} (see the lines above)")
    status = evaluate.main(["--out", str(folder / "sync"), "--generated", str(folder / "generated"), "--metrics",
                            "sync", *common])
    if status != 0:
        raise InputError(folder / "sync", f"evaluate.py stopped with status {status} (see the lines above)")
    scores = {}
    for results in (folder / "results.json", folder / "sync" / "results.json"):
        found = json.loads(results.read_text())
        scores.update({k: f"n/a: {v}" for k, v in found.get("not_available", {}).items()})
        scores.update({k: v for k, v in found["summary"].items() if v is not None})
    return scores


def report_table(before: dict, after: dict) -> str:
    """The before/after table, Markdown; a value not measured says why in a note under it."""
    lines = ["| metric | before | after | better |", "| --- | --- | --- | --- |"]
    missing = {}
    for key, title, better in TABLE_METRICS:
        cells = []
        for scores in (before, after):
            value = scores.get(key, scores.get("sync" if key.startswith("lse") else key))
            if isinstance(value, (int, float)):
                cells.append(f"{value:.4f}")
            else:
                cells.append("n/a")
                missing.setdefault(title, str(value or "not measured").removeprefix("n/a: "))
        lines.append(f"| {title} | {cells[0]} | {cells[1]} | {better} |")
    lines += [""] + [f"- {title}: {reason}" for title, reason in missing.items()]
    return "\n".join(lines) + "\n"


def dub_command(video: Path, audio: Path, out: Path) -> str:
    """The inference.py command that dubs with the fine-tuned model."""
    return shlex.join(["python", "inference.py", "--video", str(video), "--audio", str(audio), "--output",
                       str(out / "dub.mp4"), "--landmark-ckpt", str(out / "export" / "landmark_generator"),
                       "--renderer-ckpt", str(out / "export" / "renderer")])


def run(args: argparse.Namespace) -> int:
    if args.holdout_seconds <= 0:
        raise InputError("--holdout-seconds", "must be more than 0")
    stages = stage_configs(args.config, args.overrides)
    face_size = renderer_face_size(args.init_renderer)
    from model_files.checkpoints import landmark_generator_of, read_checkpoint

    # A bad reference fails now, not after preprocessing.
    landmark_generator_of(read_checkpoint(args.init_landmark, "landmark_generator"))
    names = split_videos(args.videos, args.out, args.holdout_seconds)
    preprocess(args.out, face_size, args.workers)
    before = evaluate_models(args.out, names, args.init_landmark, args.init_renderer, args.device, "before",
                             args.inference_config)
    for stage, reference in (("landmark", args.init_landmark), ("renderer", args.init_renderer)):
        status = train_stage(stage, args.out, *stages[stage], reference, args.device, face_size)
        if status != 0:
            return status
    landmark, renderer = (export_stage(stage, args.out) for stage in STAGES)
    after = evaluate_models(args.out, names, str(landmark), str(renderer), args.device, "after", args.inference_config)
    table = report_table(before, after)
    (args.out / "report.md").write_text(f"# Fine-tuning on {args.videos}: the held-out seconds, before and after\n\n"
                                        + table)
    print(table, end="")
    videos = args.out / "videos"
    print("dub with the fine-tuned model (any speech as --audio; this one is the held-out seconds):\n  "
          + dub_command(videos / "train" / names[0], videos / "holdout" / names[0], args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except InputError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except DiskError as error:  # a split video or an export that its disk could not take; the rest is kept
        print(f"error: {error}; run the same command again once there is room", file=sys.stderr)
        return DISK_STATUS
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to continue in {args.out}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
