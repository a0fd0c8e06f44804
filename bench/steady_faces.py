"""Crop-box jitter with and without temporal smoothing (data/crop.smooth_boxes), on the sample clips.

  python -m bench.steady_faces [--windows 3,5,7,9]

Per clip (talk_a, talk_b, template_129; decoded at 25 fps; FaceMesh in tracking mode as dubbing runs it):
  jitter  mean absolute second difference of the four box edges over time, in % of the box size (the mean of
          its width and height), over frames whose neighbours both have a face: how much the crop shakes;
  drag    the largest distance between a smoothed box edge and the raw one, in % of the box size: how far
          smoothing can pull the box off a moving face.
Raw boxes are window 1. Prints one row per clip and window, and the mean over clips.
"""
from __future__ import annotations

import argparse

import numpy as np

from data.crop import smooth_boxes
from data.facemesh import FaceMesh, track_faces
from data.samples import sample
from data.video import VideoReader

CLIPS = ("talk_a.mp4", "talk_b.mp4", "template_129.mp4")


def box_scale(boxes: np.ndarray) -> np.ndarray:
    return ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / 2.0


def jitter(boxes: np.ndarray, has_face: np.ndarray) -> float:
    """Mean |b[t+1] - 2 b[t] + b[t-1]| over edges and frames with faces at t-1, t, t+1, in % of box size."""
    boxes = boxes.astype(np.float64)
    second = np.abs(boxes[2:] - 2 * boxes[1:-1] + boxes[:-2]).mean(axis=1) / box_scale(boxes[1:-1])
    usable = has_face[2:] & has_face[1:-1] & has_face[:-2]
    return float(100 * second[usable].mean())


def drag(smoothed: np.ndarray, raw: np.ndarray, has_face: np.ndarray) -> float:
    distance = np.abs(smoothed.astype(np.float64) - raw).max(axis=1) / box_scale(raw.astype(np.float64))
    return float(100 * distance[has_face].max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", default="3,5,7,9", help="smoothing windows to measure (frames)")
    args = parser.parse_args()
    windows = [1] + [int(w) for w in args.windows.split(",")]
    rows: dict[int, list[tuple[float, float]]] = {w: [] for w in windows}
    print("| clip | frames | window | jitter (% of box) | drag (% of box) |")
    print("| --- | --- | --- | --- | --- |")
    with FaceMesh(video=True) as mesh:
        for clip in CLIPS:
            with VideoReader(sample(clip)) as reader:
                track = track_faces(reader, mesh)
            for window in windows:
                boxes = smooth_boxes(track.boxes, track.has_face, window, track.size)
                value = (jitter(boxes, track.has_face), drag(boxes, track.boxes, track.has_face))
                rows[window].append(value)
                print(f"| {clip} | {len(track)} | {window} | {value[0]:.3f} | {value[1]:.2f} |")
    for window in windows:
        jitters, drags = zip(*rows[window])
        print(f"| mean of {len(CLIPS)} clips | | {window} | {np.mean(jitters):.3f} | {np.mean(drags):.2f} "
              f"(largest {max(drags):.2f}) |")


if __name__ == "__main__":
    main()
