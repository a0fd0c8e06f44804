"""Training loaders' samples per second in one process (what one DataLoader worker delivers), both stages.

  python -m bench.loaders [--official /path/to/IP_LAP] [--samples 400] [--landmark-samples 3000]

Data: records of talk_a.mp4 and talk_b.mp4 (found by data/samples.py) made by preprocess.py in a temporary folder.
Each column loops over items of one epoch and collates batches with torch's default_collate, torch threads = 1
(as in a worker), timed by wall time and by the process's CPU time (closer to an idle core's on a shared machine):
  ours      LandmarkWindows / RenderFrames over the split's pack (the one-off packing is timed apart);
            renderer samples are uint8, converted on the device by RenderFrames.to_device (not timed: on a GPU
            that runs there, not in the worker).
  before    the per-record formulation (testing/reference_samples.py), which the packed datasets equal sample
            for sample: two .npz reads a sample, float32 images and 3-channel sketches.
  official  the official release's Dataset classes, run from a checkout named by --official (read from its
            train_landmarks_generator.py and train_video_renderer.py at run time; nothing of it is in this
            repository), over the same videos written in its own layout: a pickled landmark dict, a face PNG and
            a sketch PNG per frame, one audio.npy per video. Without --official that column is skipped and
            bench/README.md's official figures are printed instead.
"""
from __future__ import annotations

import argparse
import ast
import glob
import os
import random
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate

import preprocess
from data.crop import box_size
from data.datasets import LandmarkWindows, RenderFrames, records_under
from data.landmarks import CONTENT_POSITIONS, FACEMESH_IDS, POSE_POSITIONS
from data.records import load_clip
from data.samples import samples_folder
from data.sketch import draw_sketch
from testing.reference_samples import landmark_sample, render_sample

# bench/README.md "Official reference figures": the official loaders on this kind of machine, one process.
OFFICIAL_FIGURES = {"landmark": 132.0, "renderer": 109.0}
TARGETS = {"landmark": 3000.0, "renderer": 300.0}  # issue 21's per-worker targets for one H100
LANDMARK_BATCH, RENDER_BATCH = 128, 24  # the official batch of the landmark trainer; a renderer batch per GPU


def make_records(folder: Path) -> list[Path]:
    """Records of the two talking-face samples, made by preprocess.py in `folder`."""
    inputs, records = folder / "inputs", folder / "records"
    inputs.mkdir()
    for name in ("talk_a.mp4", "talk_b.mp4"):
        (inputs / name).symlink_to(samples_folder() / name)
    if preprocess.main(["--input-root", str(inputs), "--output-root", str(records), "--workers", "0"]) != 0:
        raise SystemExit("preprocess.py failed on the sample videos")
    return records_under(records)


def rate(item, count: int, batch: int) -> tuple[float, float]:
    """Samples per second of item(i) for i < count, collated `batch` at a time (one warm-up batch first), by wall
    time and by this process's CPU time (on a shared machine, what an idle core would give)."""
    default_collate([item(i) for i in range(batch)])
    wall, cpu = time.perf_counter(), time.process_time()
    for first in range(0, count, batch):
        default_collate([item(i) for i in range(first, min(first + batch, count))])
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def sample_bytes(sample) -> int:
    values = sample.values() if isinstance(sample, dict) else sample
    return sum(value.numel() * value.element_size() for value in values)


# ---------------------------------------------------------------- the official loaders, run from their checkout
def write_official_layout(stems: list[Path], root: Path) -> list[str]:
    """The records' videos in the official preprocessed layout under root; returns their names (speaker/clip)."""
    names = []
    for number, stem in enumerate(stems):
        clip = load_clip(stem)
        name = f"speaker{number}/{stem.name}"
        names.append(name)
        for kind in ("landmarks", "faces", "sketches", "audio"):
            (root / kind / name).mkdir(parents=True)
        np.save(root / "audio" / name / "audio.npy", clip.mel)
        for t in clip.face_frames:
            points = clip.landmarks[t]
            entry = {"pose_landmarks": [(FACEMESH_IDS[p], *points[p]) for p in POSE_POSITIONS],
                     "content_landmarks": [(FACEMESH_IDS[p], *points[p]) for p in CONTENT_POSITIONS]}
            np.save(root / "landmarks" / name / f"{t}.npy", entry, allow_pickle=True)
            cv2.imwrite(str(root / "faces" / name / f"{t}.png"), cv2.cvtColor(clip.faces[int(t)], cv2.COLOR_RGB2BGR))
            sketch = draw_sketch(points, box_size(clip.boxes[t]))
            cv2.imwrite(str(root / "sketches" / name / f"{t}.png"), np.repeat(sketch[..., None], 3, axis=2))
    (root / "filelists" / "lrs2").mkdir(parents=True)
    (root / "filelists" / "lrs2" / "train.txt").write_text("".join(f"{name}\n" for name in names))
    return names


def official_dataset(script: Path, names: dict):
    """The Dataset class of an official training script, built from its source: the module's literal constants
    and class definitions, run with `names` (its paths and imports) instead of its command line and logger."""
    tree = ast.parse(script.read_text())
    kept = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            kept.append(node)
        elif isinstance(node, ast.Assign) and all(isinstance(target, ast.Name) for target in node.targets):
            try:
                ast.literal_eval(node.value)
            except ValueError:
                continue
            kept.append(node)
    namespace = {"os": os, "random": random, "np": np, "torch": torch, "cv2": cv2, "join": os.path.join,
                 "isfile": os.path.isfile, "glob": glob.glob, "tqdm": lambda items, **_: items}
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(script), "exec"), namespace)
    namespace.update(names)  # after the module's own constants, so that ours win
    return namespace["Dataset"]


def official_rates(checkout: Path, stems: list[Path], folder: Path, count: int) -> dict[str, float]:
    """Samples per second of the official landmark and renderer datasets over the videos in their layout."""
    root = folder / "official"
    write_official_layout(stems, root)
    landmark_class = official_dataset(checkout / "train_landmarks_generator.py", {
        "landmark_root": str(root / "landmarks"),
        "args": types.SimpleNamespace(pre_audio_root=str(root / "audio"), landmarks_root=str(root / "landmarks"))})
    render_class = official_dataset(checkout / "train_video_renderer.py", {
        "face_img_root": str(root / "faces"), "sketch_root": str(root / "sketches"),
        "audio_root": str(root / "audio")})
    here = os.getcwd()
    os.chdir(root)  # the official datasets read filelists/lrs2/<split>.txt from the working folder
    try:
        landmark_set, render_set = landmark_class("train"), render_class("train")
    finally:
        os.chdir(here)
    random.seed(0)
    return {"landmark": rate(lambda i: landmark_set[i], count, LANDMARK_BATCH),
            "renderer": rate(lambda i: render_set[i], count, RENDER_BATCH),
            "renderer bytes": sample_bytes(render_set[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="a checkout of the official IP_LAP release")
    parser.add_argument("--samples", type=int, default=400, help="renderer samples and slow columns' samples")
    parser.add_argument("--landmark-samples", type=int, default=3000, help="samples of our landmark loader")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    with tempfile.TemporaryDirectory(prefix="bench-loaders-") as temp:
        folder = Path(temp)
        stems = make_records(folder)
        start = time.perf_counter()
        landmark_set = LandmarkWindows(stems, seed=0)
        packed = time.perf_counter() - start
        render_set = RenderFrames(stems, refs=3, seed=0)
        print(f"{len(stems)} records, {sum(len(load_clip(s)) for s in stems)} frames; packing the split took "
              f"{packed:.2f} s (once per split and record change)")
        ours = {"landmark": rate(lambda i: landmark_set[(0, i)], args.landmark_samples, LANDMARK_BATCH),
                "renderer": rate(lambda i: render_set[(0, i)], args.samples, RENDER_BATCH)}
        before = {"landmark": rate(lambda i: landmark_sample(stems, 0, 0, i), args.samples, LANDMARK_BATCH),
                  "renderer": rate(lambda i: render_sample(stems, 0, 0, i), args.samples, RENDER_BATCH)}
        sizes = {"ours": sample_bytes(render_set[0]), "before": sample_bytes(render_sample(stems, 0, 0, 0))}
        official, source = None, f"bench/README.md's figures, {OFFICIAL_FIGURES['landmark']:.0f} and " \
                                 f"{OFFICIAL_FIGURES['renderer']:.0f}, by wall time"
        if args.official is None:
            print("official: no --official checkout given; its column shows bench/README.md's figures")
        elif not (args.official / "train_video_renderer.py").is_file():
            print(f"official: {args.official} holds no train_video_renderer.py; its column shows bench/README.md's "
                  "figures")
        else:
            official = official_rates(args.official, stems, folder, args.samples)
            sizes["official"] = official["renderer bytes"]
            source = f"measured in this run from {args.official}"
    for column, clock in enumerate(("wall", "CPU")):
        print(f"\nsamples/s in one process by {clock} time, default_collate, torch threads 1 (official: {source})")
        print(f"{'stage':10} {'ours':>9} {'before':>9} {'official':>9} {'target':>8} {'ours/before':>12} "
              f"{'ours/official':>14}")
        for stage in ("landmark", "renderer"):
            other = official[stage][column] if official else OFFICIAL_FIGURES[stage]
            print(f"{stage:10} {ours[stage][column]:9.0f} {before[stage][column]:9.0f} {other:9.0f} "
                  f"{TARGETS[stage]:8.0f} {ours[stage][column] / before[stage][column]:11.1f}x "
                  f"{ours[stage][column] / other:13.1f}x")
    print("renderer sample at N=3: " + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in sizes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
