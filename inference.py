"""Dub a video or a photo with new speech: IP_LAP's landmark generator and renderer, chained.

    python inference.py --video TEMPLATE --audio SPEECH --output OUT.mp4 [--landmark-ckpt PATH]
                        [--renderer-ckpt PATH] [--config configs/inference.yaml] [--device cpu|cuda] [key=value ...]

TEMPLATE: a video of any frame rate, size and container, or a still image (jpg/png). SPEECH: wav, mp3, m4a,
flac, or a video whose audio track drives the face. The output is an H.264 + AAC video at 25 fps and the
template's size, as long as the speech (the template loops forwards and backwards when it is shorter).
Checkpoints may be this project's (runs/*/step_*.pt) or the official IP_LAP files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.errors import InputError

CONFIG = Path(__file__).resolve().parent / "configs" / "inference.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit status: 0 when the video was written; 2 for bad input (missing or "
                                            "unreadable file, no face, audio too short, bad checkpoint or "
                                            "override), reported in one line; 130 when interrupted")
    parser.add_argument("--video", required=True, help="template video or still image (the face to animate)")
    parser.add_argument("--audio", required=True, help="driving speech: an audio file or a video with audio")
    parser.add_argument("--output", required=True, help="output video (.mp4, .mov or .mkv)")
    parser.add_argument("--landmark-ckpt", help="landmark generator checkpoint (default: checkpoints.landmark in "
                                                "the config)")
    parser.add_argument("--renderer-ckpt", help="renderer checkpoint (default: checkpoints.renderer in the config)")
    parser.add_argument("--config", default=str(CONFIG),
                        help="YAML settings (default: configs/inference.yaml in this repository)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: CUDA when present)")
    parser.add_argument("--save-sketch", action="store_true",
                        help="also write a side-by-side video (predicted sketch | result), OUTPUT with '_sketch' "
                             "added to its name unless --sketch-output says where")
    parser.add_argument("--sketch-output", metavar="PATH", help="where --save-sketch writes (implies it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="config overrides, dotted.key=value (e.g. refs=fifth)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import dubbing
        from config import load_config

        config = load_config(args.config, args.overrides, base=CONFIG)
        output = Path(args.output)
        if output.suffix.lower() not in (".mp4", ".mov", ".mkv"):
            raise InputError(output, "the output must be a .mp4, .mov or .mkv file")
        sketch = Path(args.sketch_output) if args.sketch_output else None
        if args.save_sketch and sketch is None:
            sketch = output.with_name(f"{output.stem}_sketch{output.suffix}")
        for path in (args.video, args.audio):  # before the checkpoints load: the cheap checks first
            if not Path(path).is_file():
                raise InputError(path, "no such file")
        models = dubbing.load_models(args.landmark_ckpt or config["checkpoints"]["landmark"],
                                     args.renderer_ckpt or config["checkpoints"]["renderer"], args.device)
        if models.device.type == "cpu":
            from allocator import keep_freed_memory

            keep_freed_memory()  # process-wide: the renderer's CPU pass runs faster with it (bench/README.md)
        result = dubbing.dub(args.video, args.audio, output, models, config, sketch_output=sketch,
                             progress=not args.quiet)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no output written", file=sys.stderr)
        return 130
    rate = result.frames / result.seconds if result.seconds else float("inf")
    print(f"{result.output}: {result.frames} frames ({result.rendered} with a face) in {result.seconds:.1f} s, "
          f"{rate:.2f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
