"""Per-frame crop and paste-back: OpenCV on the host (frame_work: host) against torch on a device
(frame_work: device), in ms per frame, at 256x256 and 1280x720.

  python -m bench.frame_work [--device cpu|cuda] [--frames 32] [--threads N]

The frame is talk_a's first (data/samples.py) scaled so that the face fills the frame's height as in a talking-head
shot (256x256: the whole frame; 1280x720: a 720x720 square in the middle). The face box is talk_a's, scaled; the
pasted hull is an oval of 131 points inside it, the generated face that box's own crop. Rows:
  crop    crop_face (OpenCV) / crop_face_tensor (torch), one 128x128 face from a frame already in place;
  paste   paste_face (OpenCV: copies the frame) / paste_face_tensor (torch: in place), configs/inference.yaml's mask;
  trip    the device path only: the frames' upload and the pasted frames' way back (network.upload_frames and
          HostCopy; on the CPU a copy of the batch), per frame of a batch of 16.
On CUDA each torch row ends with a synchronisation, so it is the device's time for that work alone.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

import cv2
import numpy as np
import torch

from bench.timing import seconds_per_call
from config import INFERENCE_CONFIG, load_config, pick_device
from data.crop import crop_face, crop_face_tensor
from data.samples import sample
from data.video import VideoReader
from dubbing.network import HostCopy, upload_frames
from dubbing.paste import paste_face, paste_face_tensor

TALK_A_BOX = np.array([250, 300, 550, 620])  # talk_a's face (844x844 frame), about as FaceMesh boxes it
MASK = load_config(INFERENCE_CONFIG)["mask"]  # the blur of the pasted face's mask
SIZES = {"256x256": ((256, 256), 256, 0), "1280x720": ((1280, 720), 720, 280)}  # (frame, face square, x offset)


def scene(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The frame (H, W, 3) uint8, face box, hull outline (131, 2) and generated face (128, 128, 3) of a size."""
    (width, height), square, offset = SIZES[name]
    with VideoReader(sample("talk_a.mp4")) as reader:
        source = next(iter(reader))
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:, offset:offset + square] = cv2.resize(source, (square, square), interpolation=cv2.INTER_AREA)
    box = np.round(TALK_A_BOX * square / source.shape[0]).astype(np.int32) + [offset, 0, offset, 0]
    x0, y0, x1, y1 = box
    angle = np.linspace(0, 2 * np.pi, 131, endpoint=False)
    outline = np.array([x0 + x1, y0 + y1]) / 2 + np.array([x1 - x0, y1 - y0]) * 0.45 * np.stack(
        [np.cos(angle), np.sin(angle)], 1)
    return frame, box, outline, crop_face(frame, box)


def ms_per_call(work: Callable[[], object], calls: int, device: torch.device) -> float:
    return seconds_per_call(work, calls, device) * 1000


def measure(name: str, device: torch.device, calls: int) -> dict[str, tuple[float, float | None]]:
    """{row: (host ms/frame, device ms/frame)} for one frame size."""
    frame, box, outline, face = scene(name)
    on_device, face_on_device = torch.from_numpy(frame).to(device), torch.from_numpy(face).to(device)
    batch = [frame] * 16

    def trip() -> None:
        HostCopy(upload_frames(batch, device)).ready()

    with torch.inference_mode():
        return {
            "crop": (ms_per_call(lambda: crop_face(frame, box), calls, device),
                     ms_per_call(lambda: crop_face_tensor(on_device, box), calls, device)),
            "paste": (ms_per_call(lambda: paste_face(frame, face, box, outline, **MASK), calls, device),
                      ms_per_call(lambda: paste_face_tensor(on_device, face_on_device, box, outline, **MASK), calls,
                                  device)),
            "trip": (0.0, ms_per_call(trip, max(calls // 16, 2), device) / len(batch)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=32, help="calls timed per row")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"device {device}, torch CPU threads {torch.get_num_threads()}, OpenCV threads {cv2.getNumThreads()}")
    print("| frame | step | host, OpenCV (ms/frame) | device, torch (ms/frame) |")
    print("| --- | --- | --- | --- |")
    for name in SIZES:
        rows = measure(name, device, args.frames)
        for step, (host, ours) in rows.items():
            print(f"| {name} | {step} | {host:.2f} | {ours:.2f} |" if step != "trip" else
                  f"| {name} | {step} | - | {ours:.2f} |")
        host_total, ours_total = (sum(values) for values in zip(*rows.values()))
        print(f"| {name} | all | {host_total:.2f} | {ours_total:.2f} |")


if __name__ == "__main__":
    main()
