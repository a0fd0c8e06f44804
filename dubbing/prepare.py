"""Per-frame preparation for one batch of output frames: where they fall on the 25 fps grid, the landmark
generator's inputs (audio windows and template pose), then, from its prediction, the target sketches, the face
crops and the renderer's audio windows. All on the host, as uint8 where images (docs/method.md, section 5).

The networks keep their 25 fps semantics at any output rate: output frame k at time t = k / rate takes the content
landmarks interpolated to t between the windows centred on the grid frames around 25t, SKETCH_WINDOW sketches at
t-2/25..t+2/25 (pose from the template at those times) and the mel window of the fractional 25 fps index 25t.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.audio import mel_windows
from data.crop import box_size, crop_face
from data.landmarks import SKETCH_CENTRE, SKETCH_WINDOW, merge_pose_content, pose_of
from data.sketch import draw_sketch
from data.video import FPS
from dubbing.template import Template, template_at


@dataclass
class FrameBatch:
    """Output frames `steps` (k,), their template frames (each (H, W, 3) uint8) and which of them have a face
    (positions into `steps`)."""

    steps: np.ndarray
    frames: list[np.ndarray]
    live: np.ndarray


@dataclass
class LandmarkInputs:
    """The landmark generator's batch: audio windows (U, 1, 80, 16) and template poses (U, 2, 74) of the unique grid
    frames the windows cover, each window's rows among them (C, SKETCH_WINDOW), and how each rendered output frame
    blends the windows: windows `first` and `second` with `weight` on the second (k,)."""

    mels: np.ndarray
    pose: np.ndarray
    gather: np.ndarray
    first: np.ndarray
    second: np.ndarray
    weight: np.ndarray


@dataclass
class RenderInputs:
    """The renderer's batch for the k rendered frames: faces (k, S, S, 3) uint8 (None where the crops are
    made on the device from the boxes), target sketches (k, SKETCH_WINDOW, S, S) uint8 (one channel; the
    network's three are equal), audio windows (k, 1, 80, 16) float32; and for the crops and paste-back, each
    frame's crop box (k, 4) and predicted landmarks (k, 131, 2)."""

    faces: np.ndarray | None
    sketches: np.ndarray
    mels: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray


def grid_neighbours(frames: np.ndarray, rate: float, grid: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where output frames (k,) at `rate` fall on the 25 fps grid of an audio `grid` frames long: the fractional
    grid position 25k/rate (the mel window's index), the grid frames below and above it (clamped to the audio) and
    the weight of the one above. At 25 fps the position is k itself and the weight 0."""
    position = frames * FPS / rate
    below = np.minimum(np.floor(position), grid - 1).astype(np.int64)
    weight = np.where(below < grid - 1, position - below, 0.0)
    return position, below, np.minimum(below + 1, grid - 1), weight


def sketch_times(frames: np.ndarray, rate: float, count: int) -> np.ndarray:
    """The times of output frames' target sketches, t-2/25..t+2/25, in output frames (k, SKETCH_WINDOW) float64,
    clamped to the output's `count` frames (at 25 fps: frames k-2..k+2)."""
    offsets = (np.arange(SKETCH_WINDOW) - SKETCH_CENTRE) * rate / FPS
    return np.clip(np.asarray(frames)[:, None] + offsets, 0, count - 1)


def landmark_inputs(template: Template, mel: np.ndarray, grid: int, count: int, rendered: np.ndarray
                    ) -> LandmarkInputs:
    """The landmark generator's batch for output frames `rendered` of a dub `count` frames long whose audio (`mel`)
    lasts `grid` 25 fps frames."""
    _, below, above, weight = grid_neighbours(rendered, template.fps, grid)
    centres = np.unique(np.concatenate([below, above[weight > 0]]))
    # Windows t-2..t+2 (clamped to the audio). Neighbouring windows overlap, so each grid frame's audio window
    # and pose are encoded once and the windows gathered from those tokens.
    windows = np.clip(centres[:, None] + np.arange(SKETCH_WINDOW) - SKETCH_CENTRE, 0, grid - 1)  # (C, 5)
    frames, position = np.unique(windows, return_inverse=True)
    pose = pose_of(template_at(template, np.minimum(frames * template.fps / FPS, count - 1))[0])  # (U, 2, 74)
    first = np.searchsorted(centres, below)
    second = np.where(weight > 0, np.searchsorted(centres, above), first)
    return LandmarkInputs(mel_windows(mel, frames)[:, None], pose, position.reshape(windows.shape), first, second,
                          weight)


def blend_windows(content: np.ndarray, inputs: LandmarkInputs) -> np.ndarray:
    """Predicted content (C, SKETCH_WINDOW, 2, 57) of the windows -> each rendered frame's (k, SKETCH_WINDOW, 2, 57),
    linear between the two windows around it."""
    first, second = content[inputs.first], content[inputs.second]
    return (first + inputs.weight[:, None, None, None] * (second - first)).astype(np.float32)


def render_inputs(template: Template, mel: np.ndarray, grid: int, count: int, batch: FrameBatch,
                  content: np.ndarray, size: int, crop: bool = True) -> RenderInputs:
    """The renderer's batch for the rendered frames of `batch`, from their blended content landmarks (k, 5, 2, 57):
    the sketches at t-2/25..t+2/25 posed as the template there, the face crop at t (unless `crop` is false: the
    device crops it), and the audio window of 25t; sketches and crops are `size` pixels square."""
    rendered = batch.steps[batch.live]
    position, _, _, _ = grid_neighbours(rendered, template.fps, grid)
    posed, boxes = template_at(template, sketch_times(rendered, template.fps, count))  # (k, 5, 131, 2), (k, 5, 4)
    predicted = merge_pose_content(pose_of(posed), content)
    sketches = np.stack([[draw_sketch(predicted[i, j], box_size(boxes[i, j]), size) for j in range(SKETCH_WINDOW)]
                         for i in range(len(rendered))])
    centre_boxes = boxes[:, SKETCH_CENTRE]
    faces = None
    if crop:
        faces = np.stack([crop_face(batch.frames[i], centre_boxes[n], size) for n, i in enumerate(batch.live)])
    return RenderInputs(faces, sketches, mel_windows(mel, position)[:, None], centre_boxes, predicted[:, SKETCH_CENTRE])
