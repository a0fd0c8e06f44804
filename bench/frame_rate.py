"""Dubbing a 30 fps template at its own rate against resampling it to 25 fps, as every lip-sync tool does.

  python -m bench.frame_rate [--seconds 3]

Clip: the first --seconds of template_129.mp4 (the official demo template, 256x256, 30 fps), held out of every
record, with the first --seconds of speech_audio2.wav; each frame's index is written into two 8x8 corner patches
(far from the face), so that an output frame tells which template frame it shows. It is dubbed twice through
`dubbing.dub`: output.fps: template (30 fps) and output.fps: 25. The renderer's forward is replaced by a
pass-through (the face crop comes back as it went in), because what is measured is which template frame each
output frame shows and where the crop box is, neither of which depends on the renderer (weights are random).

Printed per run:
  frames/template frame  output frames over the template frames they span (1.0: every frame once; 25/30 = 0.83:
                         one frame in six dropped);
  shown once / dropped / repeated  template frames of the clip that the output shows once, never, several times;
  skips                  consecutive output frames that jump over a template frame (the judder);
  box jitter             mean absolute second difference of the smoothed crop-box edges (bench/steady_faces.py's
                         measure) per output frame, in % of the box, and per second squared (x fps^2), the unit in
                         which two rates compare;
  lip jitter             evaluate.py's steadiness (metrics/steadiness.py) of the output, decoded at its own rate, per
                         frame and per second squared (the mouth is the template's here: the renderer passes through).
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

import dubbing
import dubbing.template
from bench.steady_faces import jitter
from data.audio import SAMPLE_RATE, load_audio
from data.facemesh import FaceMesh, track_faces
from data.samples import sample
from data.video import FPS, VideoReader, VideoWriter, read_frames
from metrics.steadiness import track_lip_jitter
from testing.audio import write_wav


def pass_through(renderer, refs, faces, sketches, mels):
    return faces


def random_models() -> dubbing.Models:
    import torch

    from models.landmark_generator import LandmarkGenerator
    from models.renderer import Renderer

    torch.manual_seed(0)
    return dubbing.Models(LandmarkGenerator().eval(), Renderer().eval(), torch.device("cpu"))


PATCH = 8  # pixels


def stamp(frame: np.ndarray, index: int) -> np.ndarray:
    """The frame with its index in two flat corner patches, 16 levels a step (H.264 keeps flat patches to +-2)."""
    frame = frame.copy()
    frame[:PATCH, :PATCH] = 16 * (index % 16) + 8
    frame[:PATCH, PATCH:2 * PATCH] = 16 * (index // 16) + 8
    return frame


def stamped_index(frame: np.ndarray) -> int:
    low, high = (int(round((float(frame[:PATCH, x:x + PATCH].mean()) - 8) / 16)) for x in (0, PATCH))
    return 16 * high + low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="clip and speech length")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        with VideoReader(sample("template_129.mp4")) as reader:
            rate = reader.source_fps
        with VideoReader(sample("template_129.mp4"), rate) as reader:
            source = list(itertools.islice(reader, int(round(args.seconds * rate))))
        clip = folder / "clip_30fps.mp4"
        with VideoWriter(clip, rate, crf=0) as writer:  # lossless: the matching sees the clip's own pixels
            for index, frame in enumerate(source):
                writer.write(stamp(frame, index))
        speech = write_wav(folder / "speech.wav", load_audio(sample("speech_audio2.wav"))
                           [:int(args.seconds * SAMPLE_RATE)])
        models = random_models()
        print(f"clip: template_129.mp4, first {len(source)} frames at {rate:g} fps ({args.seconds:g} s), "
              f"{args.seconds:g} s of speech_audio2.wav")
        print("| output.fps | output fps | output frames | frames/template frame | shown once | dropped | repeated "
              "| skips | box jitter (% of box per frame) | box jitter (% of box per s^2) | lip jitter (% of box per "
              "frame) | lip jitter (% of box per s^2) |")
        print("| --- " * 12 + "|")
        for setting in ("template", FPS):
            config = dubbing.default_config()
            config.update(refs=1, batch_size=4)
            config["output"]["fps"] = setting
            config["cache"]["enabled"] = False
            output = folder / f"out_{setting}.mp4"
            result = dubbing.dub(clip, speech, output, replace(models, render_step=pass_through), config,
                                 progress=False)
            prepared_rate, _ = dubbing.template.dubbing_rate(clip, setting)
            shown = np.array([stamped_index(frame) for frame in read_frames(output, prepared_rate)])
            counts = np.bincount(shown, minlength=len(source))
            spanned = shown.max() - shown.min() + 1
            skips = int(np.sum(np.diff(shown) > 1))
            template = dubbing.template.analyse_template(clip, smooth=config["smooth_boxes"], progress=False,
                                                         fps=prepared_rate)
            per_frame = jitter(template.boxes, template.has_face)
            with FaceMesh(video=True) as mesh:
                lips = float(np.nanmean(track_lip_jitter(track_faces(read_frames(output, prepared_rate), mesh))))
            print(f"| {setting} | {prepared_rate:g} | {result.frames} | {result.frames / spanned:.3f} | "
                  f"{int(np.sum(counts == 1))} | {int(np.sum(counts == 0))} | {int(np.sum(counts > 1))} | {skips} | "
                  f"{per_frame:.3f} | {per_frame * prepared_rate ** 2:.0f} | {100 * lips:.3f} | "
                  f"{100 * lips * prepared_rate ** 2:.0f} |", flush=True)


if __name__ == "__main__":
    main()
