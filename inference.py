"""Dub a video or a photo with new speech: IP_LAP's landmark generator and renderer, chained.

    python inference.py --video TEMPLATE --audio SPEECH --output OUT.mp4 [--landmark-ckpt PATH]
                        [--renderer-ckpt PATH] [--config configs/inference.yaml] [--device cpu|cuda] [key=value ...]
    python inference.py --video TEMPLATE --audio A.wav --audio B.wav ... --output OUT_DIR    (one dub per audio)
    python inference.py --tasks tasks.yaml [--shard I/N] ...                                  (a list of dubs)
    python inference.py --video TEMPLATE --audio A.wav --face index:0 --audio B.wav --face point:0,120,200
                        --output OUT.mp4                                     (two speakers, one output)

TEMPLATE: a video of any frame rate, size and container, or a still image (jpg/png). SPEECH: wav, mp3, m4a,
flac, or a video whose audio track drives the face. The output is an H.264 + AAC video at the template's size, as
long as the speech (the template loops forwards and backwards when it is shorter), at the template's own frame
rate: every template frame once per pass, none dropped or repeated. A still image, a variable-rate video and a
rate above 60 fps give 25 fps, each saying so in one line; --fps 25 (or N) resamples the template to that rate.
Checkpoints may be this project's (runs/*/step_*.pt), the official IP_LAP files or exports (model_files/export.py), each
by path or by hub reference, hf://OWNER/REPO@REVISION/PATH[#sha256=HEX] (docs/models.md). The renderer's
checkpoint carries its face size (128, the paper's, or 256 / 512: train_render.py's face_size), and the faces are
cropped, rendered and pasted back at that size.

Several dubs in one run load the networks once, analyse and encode each template once however many audios use
it, and keep going past a bad entry. A task list is YAML, a list of {video, audio, output} entries (relative
paths are relative to the list's folder), each with an optional face, or {video, speakers: [{audio, face}, ...],
output} for several speakers in one output. Where the template shows several people, --face chooses the one to
dub (largest, index:K, point:FRAME,X,Y, box:FRAME,X0,Y0,X1,Y1 or auto; docs/dubbing.md): only that face changes,
followed through cuts by its looks; frames where it is absent, or its identity uncertain, pass unchanged. What
the FaceMesh pass learns about a template is cached (keyed by the file's content and the settings that change
it), so a later run on the same template skips that pass.
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
    face: str | None = None  # None: the config's
    speakers: list[tuple[Path, str]] | None = None  # several (audio, face) into one output; audio is the first's


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
    parser.add_argument("--face", action="append",
                        help="the face to dub: largest (default), index:K (K-th from the left in the first frame "
                             "with faces, from 0), point:FRAME,X,Y, box:FRAME,X0,Y0,X1,Y1, auto (the face whose lips "
                             "move with the template's own sound); once for every dub, or once after each --audio: "
                             "several speakers, each face with its own audio, into one output")
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
    parser.add_argument("--require-hash", action="store_true",
                        help="refuse a checkpoint reference without #sha256=HEX (checkpoints.require_sha256=true)")
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
                        help="what renders each frame on the CPU (the config's runtime; default torch, with its wide "
                             "convolutions by Winograd unless winograd=false): onnxruntime runs the renderer's ONNX "
                             "graph, exported on first use beside the template cache")
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
    """A task list: YAML, a list of {video, audio, output} (and optionally face) or {video, speakers: [{audio,
    face}, ...], output}; relative paths from the list's folder."""
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
        keys = set(entry) - {"face"} if isinstance(entry, dict) else set()
        if keys not in ({"video", "audio", "output"}, {"video", "speakers", "output"}):
            raise InputError(path, f"entry {number} must have exactly the keys video, audio and output (and "
                                   "optionally face), or video, speakers and output")
        local = lambda value: path.parent / Path(str(value)).expanduser()  # noqa: E731
        if "speakers" in entry:
            speakers = entry["speakers"]
            if "face" in entry or not isinstance(speakers, list) or len(speakers) < 2 or \
                    any(not isinstance(one, dict) or set(one) != {"audio", "face"} for one in speakers):
                raise InputError(path, f"entry {number}: speakers is a list of two or more {{audio, face}}")
            pairs = [(local(one["audio"]), str(one["face"])) for one in speakers]
            tasks.append(Task(local(entry["video"]), pairs[0][0], local(entry["output"]), speakers=pairs))
        else:
            face = str(entry["face"]) if "face" in entry else None
            tasks.append(Task(*(local(entry[key]) for key in ("video", "audio", "output")), face=face))
    from dubbing.faces import parse_face

    for task in tasks:
        for _, face in task.speakers or ([(None, task.face)] if task.face else []):
            parse_face(face)
    return tasks


def plan(args: argparse.Namespace) -> list[Task]:
    """The dubs this run asks for (before sharding); a malformed request is an InputError."""
    if args.tasks is not None:
        if args.video or args.audio or args.output:
            raise InputError("--tasks", "give either --tasks or --video/--audio/--output")
        if args.sketch_output:
            raise InputError("--sketch-output", "names one file: use --save-sketch with --tasks")
        if args.face:
            raise InputError("--face", "with --tasks, give each entry's face in the list")
        tasks = read_tasks(args.tasks)
        for task in tasks:
            task.sketch = _sketch_for(task.output, args) if args.save_sketch and not task.speakers else None
    else:
        missing = [flag for flag, value in (("--video", args.video), ("--audio", args.audio),
                                            ("--output", args.output)) if not value]
        if missing:
            raise InputError(missing[0], "missing: give --video, --audio and --output (or --tasks)")
        output = Path(args.output)
        from dubbing.faces import parse_face

        faces = args.face or []
        for face in faces:
            parse_face(face)
        if len(faces) > 1 and len(faces) != len(args.audio):
            raise InputError("--face", "give one --face for every dub, or one after each --audio (several "
                                       "speakers in one output)")
        if len(faces) > 1:
            if args.save_sketch or args.sketch_output:
                raise InputError("--save-sketch", "is for one speaker's dubs")
            pairs = [(Path(audio), face) for audio, face in zip(args.audio, faces)]
            tasks = [Task(Path(args.video), pairs[0][0], output, speakers=pairs)]
        elif len(args.audio) == 1:
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
            task.face = faces[0] if len(faces) == 1 else None
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
        for path in (tasks[0].video, *(audio for audio, _ in tasks[0].speakers or [(tasks[0].audio, None)])):
            if not path.is_file():
                raise InputError(path, "no such file")
    models = dubbing.load_models(args.landmark_ckpt or config["checkpoints"]["landmark"],
                                 args.renderer_ckpt or config["checkpoints"]["renderer"],
                                 device_for_shard(args.device, args.shard),
                                 require_sha256=config["checkpoints"]["require_sha256"], runtime=config["runtime"],
                                 graphs=cache_dir(config), winograd=config["winograd"])
    if models.device.type == "cpu":
        from allocator import keep_freed_memory

        keep_freed_memory()  # process-wide: the renderer's CPU pass runs faster with it (bench/README.md)
    groups: dict[tuple, list[Task]] = {}
    for task in tasks:  # one prepared template per template and face (several speakers: a dub of its own)
        groups.setdefault((task.video.resolve(), task.face, id(task) if task.speakers else None), []).append(task)
    failures, written = [], 0
    for group in groups.values():
        if group[0].speakers:
            failed = _run_speakers(group[0], models, config, args, len(tasks))
            failures += failed
            written += not failed
            continue
        prepared = None
        try:
            prepared = dubbing.prepare_template(group[0].video, models, config, progress=not args.quiet,
                                                face=group[0].face)
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


def _run_speakers(task: Task, models, config: dict, args: argparse.Namespace, total: int) -> list[tuple[Task, str]]:
    """One dub of several speakers; its failure (a bad input) as a list of one, else an empty list."""
    from dubbing.speakers import dub_speakers
    from dubbing.template import dubbing_rate

    try:
        result = dub_speakers(task.video, task.speakers, task.output, models, config, progress=not args.quiet)
    except InputError as error:
        if total > 1:
            print(f"error: {error}", file=sys.stderr)
        return [(task, str(error))]
    import dubbing

    print(f"{result.output}: {dubbing.summary(result, dubbing_rate(task.video, config['output']['fps'])[0])}")
    return []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from config import load_config

        overrides = list(args.overrides) + (["cache.enabled=false"] if args.no_cache else []) + \
            ([f"cache.dir={args.cache_dir}"] if args.cache_dir else []) + \
            ([f"output.fps={args.fps}"] if args.fps else []) + \
            ([f"output.encoder={args.encoder}"] if args.encoder else []) + \
            (["checkpoints.require_sha256=true"] if args.require_hash else []) + \
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
