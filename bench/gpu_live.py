"""Live dubbing on a GPU (dubbing/live.py): bench/live.py's table at face sizes 128 and 256, and how many sessions one
GPU keeps in real time.

  python -m bench.gpu_dub --prepare DIR                      # here (needs MediaPipe): templates + face tracks
  python -m bench.gpu_live --templates DIR [--device cuda] [--refs 25] [--seconds 20] [--json gpu_live.json]
  python -m bench.gpu_live --device cpu --seconds 0.4 --refs 1 --face-sizes 128 --sessions 1 --template-frames 3

The goal (issue 32): 25 frames/s per session within 0.3 s of latency at refs 25 on one H100. Random weights in
this project's layout (speed does not depend on their values). Sessions: K sessions fed in turn, 20 ms of audio
each, on one thread (as the server runs them); K is kept in real time when every session makes 25 frames/s.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import dubbing
from bench.live import CHUNK_S, measure, print_row, speech, template_clip
from data.audio import SAMPLE_RATE
from data.video import FPS
from dubbing.idle import idle_loop
from dubbing.live import LiveSession


def random_models(folder: Path, face_size: int, device: str) -> dubbing.Models:
    from models.landmark_generator import LandmarkGenerator
    from models.renderer import Renderer

    torch.manual_seed(0)
    landmark, renderer = folder / "landmark.pt", folder / f"renderer_{face_size}.pt"
    torch.save({"kind": "landmark_generator", "model": LandmarkGenerator().state_dict(), "model_args": {}}, landmark)
    torch.save({"kind": "renderer", "model": Renderer(face_size=face_size).state_dict(),
                "model_args": {"face_size": face_size}}, renderer)
    return dubbing.load_models(landmark, renderer, device)


def sessions_in_real_time(template: Path, models: dubbing.Models, refs: int, seconds: float, most: int) -> dict:
    """For K = 1, 2, 4, ... up to `most`: K sessions on one template fed 20 ms in turn; frames/s per session."""
    config = dubbing.default_config()
    config.update(refs=refs)
    prepared = dubbing.prepare_template(template, models, config, progress=False)
    results = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            spool = prepared.frame_spool(Path(folder))
            loop = idle_loop(prepared, models, config, spool)
            pcm, step, count = speech(seconds), int(CHUNK_S * SAMPLE_RATE), 1
            while count <= most:
                sessions = [LiveSession(prepared, models, config, loop, spool) for _ in range(count)]
                made, started = 0, time.perf_counter()
                for offset in range(0, len(pcm), step):
                    for session in sessions:
                        made += len(session.feed(pcm[offset:offset + step]))
                made += sum(len(session.end()) for session in sessions)
                per_session = made / count / (time.perf_counter() - started)
                results[count] = per_session
                print(f"  {count} sessions: {per_session:.2f} frames/s each", flush=True)
                if per_session < FPS:
                    break
                count *= 2
    finally:
        prepared.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", type=Path, help="bench/gpu_dub.py --prepare's folder (default: the sample "
                                                       "template's first 50 frames, FaceMesh run here)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--refs", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--face-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--sessions", type=int, default=16, help="the most sessions to try at once")
    parser.add_argument("--template-frames", type=int, default=50, help="without --templates: the sample "
                                                                       "template's first frames to use")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    table = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if args.templates:
            from bench.gpu_dub import seed_cache

            template = args.templates / "template_256x256.mp4"
            cache = folder / "cache"
            seed_cache(template, cache)
            changes = {"cache": {"enabled": True, "dir": str(cache)}}
        else:
            template, changes = template_clip(folder, args.template_frames, (256, 256)), {}
        for size in args.face_sizes:
            models = random_models(folder, size, args.device)
            row = measure(template, models, args.refs, args.seconds, config_changes=changes)
            print(f"face size {size}:", end=" ")
            print_row(row)
            row["sessions"] = sessions_in_real_time(template, models, args.refs, min(args.seconds, 5.0),
                                                    args.sessions)
            table[size] = row
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
