"""Preprocessing throughput and storage: this project's preprocess.py against the official formulation.

  python -m bench.preprocess [--copies 3] [--workers 2]

Both run on the same input tree (talk_a.mp4 and talk_b.mp4, found by data/samples.py, each linked --copies times)
in this process, wall clock from start to finish, start-up included:
  reference  the official release's per-frame pipeline, re-implemented here: every frame decoded into memory,
             FaceMesh in image mode (detector on every frame), 5 px crop, sketch drawn and written as PNG, face
             PNG, landmark dict pickled with np.save (3 files per frame), mel saved per video; videos spread over
             a thread pool of --workers threads, as the official script does.
  ours       preprocess.py --workers N (processes, FaceMesh tracking, one .npz + one .faces per video).
Prints frames per second, files per video and bytes per frame for each, and the ratios.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import preprocess
from data.audio import load_audio, melspectrogram
from data.facemesh import FaceMesh
from data.landmarks import from_facemesh
from data.samples import samples_folder
from data.sketch import canvas_size, draw_edges
from data.video import read_frames


def reference_video(video: Path, out: Path) -> int:
    """The official per-frame formulation (see module docstring); returns frames written."""
    frames = read_frames(video)
    stem = out / video.stem
    for kind in ("face", "sketch", "landmarks"):
        (stem / kind).mkdir(parents=True, exist_ok=True)
    with FaceMesh(video=False) as mesh:
        for index, frame in enumerate(frames):
            points = mesh(frame)
            if points is None:
                continue
            points = from_facemesh(points)
            height, width = frame.shape[:2]
            x0, y0 = np.maximum(points.min(axis=0) - 5, 0)
            x1, y1 = np.minimum(points.max(axis=0) + 5, (width, height))
            face = cv2.resize(frame[int(y0):int(y1), int(x0):int(x1)], (128, 128))
            normalised = (points - (x0, y0)) / (x1 - x0, y1 - y0)
            canvas = np.zeros(canvas_size((int(x1 - x0), int(y1 - y0)))[::-1] + (3,), np.uint8)
            sketch = cv2.resize(draw_edges(canvas, normalised), (128, 128))
            np.save(stem / "landmarks" / f"{index}.npy", {"pose": normalised[:74], "content": normalised[74:]},
                    allow_pickle=True)
            cv2.imwrite(str(stem / "sketch" / f"{index}.png"), sketch)
            cv2.imwrite(str(stem / "face" / f"{index}.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    np.save(stem / "audio.npy", melspectrogram(load_audio(video)).T)
    return len(frames)


def tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file() and p.name != "failures.tsv"]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=3, help="links to each sample video in the input tree")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        videos = []
        for copy in range(args.copies):
            for name in ("talk_a.mp4", "talk_b.mp4"):
                link = temp / "in" / f"copy{copy}" / name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(samples_folder((name,)) / name)
                videos.append(link)

        started = time.perf_counter()
        with futures.ThreadPoolExecutor(args.workers) as pool:
            frames = sum(pool.map(lambda v: reference_video(v, temp / "ref" / v.parent.name), videos))
        reference_seconds = time.perf_counter() - started
        reference_files, reference_bytes = tree_size(temp / "ref")

        started = time.perf_counter()
        preprocess.main(["--input-root", str(temp / "in"), "--output-root", str(temp / "ours"),
                         "--workers", str(args.workers)])
        ours_seconds = time.perf_counter() - started
        ours_files, ours_bytes = tree_size(temp / "ours")

    reference_fps, ours_fps = frames / reference_seconds, frames / ours_seconds
    print(f"\n{len(videos)} videos, {frames} frames, {args.workers} workers, {os.cpu_count()} CPUs")
    print(f"{'':10} {'frames/s':>9} {'files/video':>12} {'bytes/frame':>12}")
    for name, fps, files, size in (("reference", reference_fps, reference_files, reference_bytes),
                                   ("ours", ours_fps, ours_files, ours_bytes)):
        print(f"{name:10} {fps:9.1f} {files / len(videos):12.1f} {size / frames:12,.0f}")
    print(f"speed-up {ours_fps / reference_fps:.2f}x; storage {ours_bytes / reference_bytes:.2f}x of the reference "
          "(official figures in bench/README.md: 63 frames/s with 2 workers, 3.02 files/frame, "
          "36,387-46,147 bytes/frame)")


if __name__ == "__main__":
    main()
