"""The dubbing half of the GPU check: pass 2 end to end on a device, on templates prepared on a CPU machine.

  python -m bench.gpu_dub --prepare DIR                         # here (needs MediaPipe): templates + face tracks
  python -m bench.gpu_dub --templates DIR [--device cuda] [--json gpu_dub.json] [--frames 200] [--refs 25]

--prepare writes DIR/template_256x256.mp4 and DIR/template_1280x720.mp4 (the demo template's first 100 frames,
scaled) and each one's FaceMesh track (DIR/*.track.npz, a few hundred KB), so the device machine needs no
MediaPipe: the tracks go into its template cache, and `prepare_template` finds them there. The device side needs
torch, numpy, OpenCV and PyAV. Printed, per template, with random official-shape weights (speed does not depend
on their values): frames/s of the whole dub at N=--refs in bf16 (pipeline on and off, libx264 and, where it
opens, NVENC), the setup (reference encoding) apart, and the PSNR of the bf16 output against float32.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import dubbing
from data.audio import SAMPLE_RATE, load_audio
from data.errors import InputError
from data.facemesh import FaceTrack
from data.samples import sample
from data.tensors import as_images
from data.video import FPS, read_frames
from dubbing.cache import cache_entry, write_cached_track
from metrics.image import psnr
from testing.audio import write_wav

SIZES = ((256, 256), (1280, 720))


def prepare(folder: Path, frames: int = 100) -> None:
    """Scaled templates and their FaceMesh tracks, for a device machine without MediaPipe."""
    import itertools

    import cv2

    from data.facemesh import FaceMesh, track_faces
    from data.video import FPS, VideoReader, VideoWriter

    folder.mkdir(parents=True, exist_ok=True)
    for width, height in SIZES:
        path = folder / f"template_{width}x{height}.mp4"
        with VideoReader(sample("template_129.mp4"), FPS) as reader, VideoWriter(path, FPS, crf=12) as writer:
            for frame in itertools.islice(reader, frames):
                writer.write(cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC))
        with VideoReader(path, FPS) as reader, FaceMesh(video=True) as mesh:
            track = track_faces(reader, mesh)
        np.savez(path.with_suffix(".track.npz"), landmarks=track.landmarks, boxes=track.boxes,
                 has_face=track.has_face, size=np.asarray(track.size))
        print(f"{path}: {len(track)} frames, {int(track.has_face.sum())} with a face")


def seed_cache(template: Path, cache: Path) -> None:
    """Put the carried track of `template` into this machine's template cache, under this machine's key."""
    with np.load(template.with_suffix(".track.npz")) as arrays:
        track = FaceTrack(arrays["landmarks"], arrays["boxes"], arrays["has_face"],
                          tuple(int(v) for v in arrays["size"]))
    write_cached_track(*cache_entry(template, False, cache, FPS, dubbing.default_config()["faces"]["max"]), track)


def random_models(folder: Path, device: str) -> dubbing.Models:
    from models.landmark_generator import LandmarkGenerator
    from models.renderer import Renderer

    torch.manual_seed(0)
    landmark, renderer = folder / "landmark.pt", folder / "renderer.pt"
    torch.save({"kind": "landmark_generator", "model": LandmarkGenerator().state_dict(), "model_args": {}}, landmark)
    torch.save({"kind": "renderer", "model": Renderer().state_dict(), "model_args": {}}, renderer)
    return dubbing.load_models(landmark, renderer, device)


def run(args) -> dict:
    table: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        models = random_models(scratch, args.device)
        speech = load_audio(sample("speech_audio2.wav"))
        audio = write_wav(scratch / "speech.wav", np.tile(speech, 2)[:int(args.frames / FPS * SAMPLE_RATE)])
        for width, height in SIZES:
            template = args.templates / f"template_{width}x{height}.mp4"
            cache = scratch / "cache"
            seed_cache(template, cache)
            name = f"{width}x{height}"
            outputs = {}
            for bf16, pipeline, encoder in ((True, True, "libx264"), (True, False, "libx264"),
                                            (True, True, "h264_nvenc"), (False, True, "libx264")):
                config = dubbing.default_config()
                config.update(refs=args.refs, bf16=bf16, pipeline=pipeline)
                config["output"].update(fps=FPS, encoder=encoder)
                config["cache"] = {"enabled": True, "dir": str(cache)}
                label = f"{name} {'bf16' if bf16 else 'float32'} {'overlapped' if pipeline else 'serial'} {encoder}"
                try:
                    prepared = dubbing.prepare_template(template, models, config, progress=False)
                    dubbing.dub_prepared(prepared, audio, scratch / "warm.mp4", models,
                                         {**config, "audio_seconds": min(1.0, args.frames / FPS)}, progress=False)
                    output = scratch / f"{label.replace(' ', '_')}.mp4"
                    result = dubbing.dub_prepared(prepared, audio, output, models, config, progress=False)
                    prepared.close()
                except InputError as error:  # NVENC absent (H100, H200, A100)
                    table[f"{label} frames/s"] = f"not run: {error}"
                    continue
                table[f"{label} frames/s"] = result.frames / (result.seconds - result.setup_seconds)
                table[f"{name} N={args.refs} reference encoding s"] = prepared.seconds
                outputs[(bf16, pipeline, encoder)] = output
            bf16_out, fp32_out = outputs.get((True, True, "libx264")), outputs.get((False, True, "libx264"))
            if bf16_out and fp32_out:
                a, b = (as_images(torch.from_numpy(np.stack(read_frames(path))))
                        for path in (bf16_out, fp32_out))
                scores = psnr(a, b).numpy()
                table[f"{name} bf16 vs float32 PSNR dB (mean, min)"] = (f"{float(np.mean(scores)):.1f}, "
                                                                       f"{float(np.min(scores)):.1f}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", type=Path, help="write the templates and tracks here (CPU, with MediaPipe)")
    parser.add_argument("--templates", type=Path, help="a folder --prepare wrote")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=200, help="output frames per dub (default 200: 8 s)")
    parser.add_argument("--refs", type=int, default=dubbing.default_config()["refs"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.prepare)
        return 0
    if not args.templates:
        parser.error("give --prepare DIR or --templates DIR")
    table = run(args)
    width = max(len(name) for name in table)
    for name, value in table.items():
        print(f"{name:<{width}}  {value:.4g}" if isinstance(value, float) else f"{name:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
