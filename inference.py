"""Dub a video or a photo with new speech: IP_LAP's landmark generator and renderer, chained.

    python inference.py --video TEMPLATE --audio SPEECH --output OUT.mp4 [--landmark-ckpt PATH]
                        [--renderer-ckpt PATH] [--config configs/inference.yaml] [--device cpu|cuda] [key=value ...]
    python inference.py --video TEMPLATE --audio A.wav --audio B.wav ... --output OUT_DIR    (one dub per audio)
    python inference.py --tasks tasks.yaml [--shard I/N] ...                                  (a list of dubs)

TEMPLATE: a video of any frame rate, size and container, or a still image (jpg/png). SPEECH: wav, mp3, m4a,
flac, or a video whose audio track drives the face. The output is an H.264 + AAC video at the template's size, as
long as the speech (the template loops forwards and backwards when it is shorter), at the template's own frame
rate: every template frame once per pass, none dropped or repeated. A still image, a variable-rate video and a
rate above 60 fps give 25 fps, each saying so in one line; --fps 25 (or N) resamples the template to that rate.
Checkpoints may be this project's (runs/*/step_*.pt), the official IP_LAP files or exports (models/export.py), each
by path or by hub reference, hf://OWNER/REPO@REVISION/PATH[#sha256=HEX] (docs/models.md). The renderer's
checkpoint carries its face size (128, the paper's, or 256 / 512: train_render.py's face_size), and the faces are
cropped, rendered and pasted back at that size.

Several dubs in one run load the networks once, analyse and encode each template once however many audios use
it, and keep going past a bad entry. A task list is YAML, a list of {video, audio, output} entries (relative
paths are relative to the list's folder). What the FaceMesh pass learns about a template is cached (keyed by the
file's content and the settings that change it), so a later run on the same template skips that pass.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from config import INFERENCE_CONFIG
from data.errors import DISK_STATUS, DiskError, InputError
from shards import parse_shard, shard_share

OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv")
SOME_FAILED = 3


@dataclass
class Task:
    video: Path
    audio: Path
    output: Path
    sketch: Path | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from data.video import FPS
    from dubbing.template import MAX_TEMPLATE_FPS
    from dubbing.writer import ENCODERS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 when every video was written; 2 for bad input (missing or unreadable file, no "
               "face, audio too short, bad checkpoint, task list or override), reported in one line, when nothing "
               "was written; 3 when some dubs of several were written and others failed (each failure in one "
               "line, then a summary); 74 when the output's disk is full, over quota, read-only or failing (one "
               "line; a list of dubs stops there, since every later dub would fail alike); 130 when interrupted")
    parser.add_argument("--video", help="template video or still image (the face to animate)")
    parser.add_argument("--audio", action="append", help="driving speech: an audio file or a video with audio; "
                                                         "repeat for several dubs of the one template")
    parser.add_argument("--output", help="output video (.mp4, .mov or .mkv); with several --audio, a folder that "
                                         "receives <audio name>.mp4 for each")
    parser.add_argument("--tasks", type=Path, help="YAML list of {video, audio, output}: many dubs in one run")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1),
                        help="I/N: run only shard I of N of the dubs: every N-th of the list sorted by output path, "
                             "from the I-th, so shard sizes differ by at most one (one process per GPU, a SLURM "
                             "array; every shard must be given the same list; with --device cuda, shard I takes GPU "
                             "I mod the visible GPUs); default 0/1")
    parser.add_argument("--landmark-ckpt", help="landmark generator checkpoint: a path, an export folder, or "
                                                "hf://OWNER/REPO@REVISION/PATH, optionally ending in #sha256=HEX "
                                                "(default: checkpoints.landmark in the config)")
    parser.add_argument("--renderer-ckpt", help="renderer checkpoint, as --landmark-ckpt (default: "
                                                "checkpoints.renderer in the config)")
    parser.add_argument("--config", default=str(INFERENCE_CONFIG),
                        help="YAML settings laid over configs/inference.yaml (default: that file)")
    parser.add_argument("--fps", help="output frame rate: 'template' (the template's own: a constant-rate video up "
                                      f"to {MAX_TEMPLATE_FPS} fps, else {FPS}), or a number such as {FPS} (the "
                                      "config's output.fps; default template)")
    parser.add_argument("--encoder", choices=ENCODERS,
                        help="H.264 encoder (the config's output.encoder; default auto: NVENC on a CUDA GPU that has "
                             "it, else libx264 on the CPU, said in one line)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: CUDA when present)")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime"),
                        help="what renders each frame on the CPU (the config's runtime; default torch): onnxruntime "
                             "runs the renderer's ONNX graph, exported on first use beside the template cache")
    parser.add_argument("--no-cache", action="store_true", help="analyse the template afresh; do not keep the "
                                                                "result (the config's cache.enabled)")
    parser.add_argument("--cache-dir", help="where prepared templates are kept (the config's cache.dir; default "
                                            "$IPLAP_TEMPLATES, else ~/.cache/iplap/templates)")
    parser.add_argument("--save-sketch", action="store_true",
                        help="also write a side-by-side video (predicted sketch | result), OUTPUT with '_sketch' "
                             "added to its name unless --sketch-output says where")
    parser.add_argument("--sketch-output", metavar="PATH", help="where --save-sketch writes (implies it; one dub)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="config overrides, dotted.key=value (e.g. refs=fifth)")
    return parser.parse_intermixed_args(argv)  # key=value overrides anywhere among the flags


def _sketch_for(output: Path, args: argparse.Namespace) -> Path | None:
    if args.sketch_output:
        return Path(args.sketch_output)
    return output.with_name(f"{output.stem}_sketch{output.suffix}") if args.save_sketch else None


def read_tasks(path: Path) -> list[Task]:
    """A task list: YAML, a list of {video, audio, output}; relative paths from the list's folder."""
    import yaml

    if not path.is_file():
        raise InputError(path, "no such task list")
    try:
        entries = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InputError(path, f"not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(entries, list) or not entries:
        raise InputError(path, "a task list is a non-empty YAML list of {video, audio, output} entries")
    tasks = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or set(entry) != {"video", "audio", "output"}:
            raise InputError(path, f"entry {number} must have exactly the keys video, audio and output")
        tasks.append(Task(*(path.parent / Path(str(entry[key])).expanduser() for key in ("video", "audio", "output"))))
    return tasks


def plan(args: argparse.Namespace) -> list[Task]:
    """The dubs this run asks for (before sharding); a malformed request is an InputError."""
    if args.tasks is not None:
        if args.video or args.audio or args.output:
            raise InputError("--tasks", "give either --tasks or --video/--audio/--output")
        if args.sketch_output:
            raise InputError("--sketch-output", "names one file: use --save-sketch with --tasks")
        tasks = read_tasks(args.tasks)
        for task in tasks:
            task.sketch = _sketch_for(task.output, args) if args.save_sketch else None
    else:
        missing = [flag for flag, value in (("--video", args.video), ("--audio", args.audio),
                                            ("--output", args.output)) if not value]
        if missing:
            raise InputError(missing[0], "missing: give --video, --audio and --output (or --tasks)")
        output = Path(args.output)
        if len(args.audio) == 1:
            tasks = [Task(Path(args.video), Path(args.audio[0]), output, _sketch_for(output, args))]
        else:
            if output.suffix.lower() in OUTPUT_SUFFIXES:
                raise InputError(output, "with several --audio, --output is a folder (one video per audio)")
            if args.sketch_output:
                raise InputError("--sketch-output", "names one file: use --save-sketch with several --audio")
            stems = [Path(audio).stem for audio in args.audio]
            if len(set(stems)) < len(stems):
                raise InputError("--audio", "two audio files share a name; their outputs would collide")
            tasks = [Task(Path(args.video), Path(audio), output / f"{stem}.mp4") for audio, stem in
                     zip(args.audio, stems)]
            for task in tasks:
                task.sketch = _sketch_for(task.output, args)
    for task in tasks:
        if task.output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise InputError(task.output, "the output must be a .mp4, .mov or .mkv file")
    outputs = [task.output.resolve() for task in tasks]
    if len(set(outputs)) < len(outputs):
        raise InputError(args.tasks or "--output", "two dubs write the same output file")
    return tasks


def shard_of(tasks: list[Task], shard: tuple[int, int]) -> list[Task]:
    """This process's share of the dubs, by position in the list sorted by output path (shards.py)."""
    return shard_share(tasks, shard, lambda task: task.output.as_posix())


def device_for_shard(device: str, shard: tuple[int, int]) -> str:
    """The device of shard I of N: with --device cuda (or auto) and several visible GPUs, GPU I mod their number,
    so that N processes on one machine spread over its GPUs; any other device as given."""
    index, count = shard
    if count == 1 or device not in ("cuda", "auto"):
        return device
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{index % gpus}" if gpus > 1 else device


def run(tasks: list[Task], args: argparse.Namespace, config: dict) -> list[tuple[Task, str]]:
    """Dub every task, grouped by template so that each template is prepared once; returns the failures."""
    import dubbing
    from dubbing.cache import cache_dir

    if len(tasks) == 1:  # the cheap checks first, before the checkpoints load (several dubs: each fails alone)
        for path in (tasks[0].video, tasks[0].audio):
            if not path.is_file():
                raise InputError(path, "no such file")
    models = dubbing.load_models(args.landmark_ckpt or config["checkpoints"]["landmark"],
                                 args.renderer_ckpt or config["checkpoints"]["renderer"],
                                 device_for_shard(args.device, args.shard), config["runtime"], cache_dir(config))
    if models.device.type == "cpu":
        from allocator import keep_freed_memory

        keep_freed_memory()  # process-wide: the renderer's CPU pass runs faster with it (bench/README.md)
    groups: dict[Path, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.video.resolve(), []).append(task)
    failures, written = [], 0
    for group in groups.values():
        prepared = None
        try:
            prepared = dubbing.prepare_template(group[0].video, models, config, progress=not args.quiet)
        except InputError as error:
            failures += [(task, str(error)) for task in group]
            if len(tasks) > 1:
                print(f"error: {error} ({len(group)} dubs of this template skipped)", file=sys.stderr)
            continue
        if prepared.note:
            print(prepared.note, file=sys.stderr)
        try:
            for task in group:
                try:
                    result = dubbing.dub_prepared(prepared, task.audio, task.output, models, config,
                                                  sketch_output=task.sketch, progress=not args.quiet)
                except DiskError as error:
                    if len(tasks) == 1:
                        raise
                    raise DiskError(error.path, f"{error.problem}; stopped after {written} of {len(tasks)} dubs "
                                                "(rerun the rest once there is space)") from None
                except InputError as error:
                    failures.append((task, str(error)))
                    if len(tasks) > 1:
                        print(f"error: {error}", file=sys.stderr)
                    continue
                written += 1
                seconds = result.seconds + (prepared.seconds if task is group[0] else 0.0)
                print(f"{result.output}: {dubbing.summary(result, prepared.template.fps, seconds)}")
        finally:
            prepared.close()
    return failures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from config import load_config

        overrides = list(args.overrides) + (["cache.enabled=false"] if args.no_cache else []) + \
            ([f"cache.dir={args.cache_dir}"] if args.cache_dir else []) + \
            ([f"output.fps={args.fps}"] if args.fps else []) + \
            ([f"output.encoder={args.encoder}"] if args.encoder else []) + \
            ([f"runtime={args.runtime}"] if args.runtime else [])
        config = load_config(args.config, overrides, base=INFERENCE_CONFIG)
        tasks = shard_of(plan(args), args.shard)
        if not tasks:
            print(f"shard {args.shard[0]}/{args.shard[1]} has no dubs", file=sys.stderr)
            return 0
        failures = run(tasks, args, config)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DiskError as error:
        print(f"error: {error}", file=sys.stderr)
        return DISK_STATUS
    except KeyboardInterrupt:
        print("interrupted; the video being written was not kept", file=sys.stderr)
        return 130
    if not failures:
        return 0
    if len(tasks) == 1:
        print(f"error: {failures[0][1]}", file=sys.stderr)
        return 2
    print(f"{len(failures)} of {len(tasks)} dubs failed: " + "; ".join(str(task.output) for task, _ in failures),
          file=sys.stderr)
    return 2 if len(failures) == len(tasks) else SOME_FAILED


if __name__ == "__main__":
    sys.exit(main())
