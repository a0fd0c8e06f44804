"""The idle loop of a live session (dubbing/live.py): the template dubbed with silence, so that a face waiting for
speech listens with its mouth at rest rather than mouthing the template's own speech.

The template shows in ping-pong order, which repeats every `period` output frames (2L for L frames, 1 for a
photo); with silence every audio window is the same, so the dub of silence repeats with it. One period is rendered
once per template and settings, from the middle of a silent dub three periods long (no clamp to either end
reaches it), and kept with the template cache (dubbing/cache.py) as the generated faces, their boxes and mask
outlines: an idle frame is a paste onto the template frame, with no network time.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from data.audio import SAMPLE_RATE, frames_covered, melspectrogram
from dubbing.cache import cache_dir, read_cached_arrays, write_cached_arrays
from dubbing.frames import FrameSpool
from dubbing.network import Models
from dubbing.paste import mask_outline, paste_face
from dubbing.pipeline import Dub, Prepared, batch_size_for, prepare_batch, render_batch
from dubbing.prepare import FrameBatch
from dubbing.template import ping_pong

FORMAT = 1  # raise when what an idle entry holds, or how it is rendered, changes


@dataclass
class IdleLoop:
    """One period of the template dubbed with silence: per loop position, the generated face (P, S, S, 3) uint8
    (zeros where the template frame has no face), its crop box (P, 4) and mask outline (P, K, 2) in pixels."""

    faces: np.ndarray
    boxes: np.ndarray
    outlines: np.ndarray
    kernel: int
    sigma: float

    @property
    def period(self) -> int:
        return len(self.faces)

    def frame(self, index: int, template_frame: np.ndarray, has_face: bool) -> np.ndarray:
        """Output frame `index` while idle: its template frame (ping_pong(index)) with the silent face pasted."""
        if not has_face:
            return template_frame
        n = index % self.period
        return paste_face(template_frame, self.faces[n], self.boxes[n], self.outlines[n], self.kernel, self.sigma)


def loop_period(length: int) -> int:
    """Output frames after which the ping-pong order of a template of `length` frames repeats."""
    return 1 if length == 1 else 2 * length


def render_idle_loop(prepared: Prepared, models: Models, config: dict, spool: FrameSpool) -> IdleLoop:
    """The idle loop of a prepared template: output frames P..2P-1 of a dub of silence 3P frames long, through
    the offline dub's stage functions (crop and paste-back on the host, where the faces are kept)."""
    template = prepared.template
    period = loop_period(len(template))
    config = {**config, "frame_work": "host"}
    count = 3 * period + 3
    samples = int(np.ceil((count + 1) * SAMPLE_RATE / template.fps))
    silence = np.zeros(samples, np.float32)
    order = ping_pong(np.arange(frames_covered(samples, fps=template.fps)), len(template))
    dub = Dub(prepared, models, config, melspectrogram(silence), frames_covered(samples), silence,
              len(order), order)
    size, kernel, sigma = models.face_size, int(config["mask"]["kernel"]), float(config["mask"]["sigma"])
    faces = np.zeros((period, size, size, 3), np.uint8)
    boxes = np.zeros((period, 4), np.float64)
    outlines: list[np.ndarray | None] = [None] * period
    step = batch_size_for(config, models.device)
    for first in range(period, 2 * period, step):
        steps = np.arange(first, min(first + step, 2 * period))
        batch = FrameBatch(steps, [spool[i] for i in order[steps]], np.flatnonzero(template.has_face[order[steps]]))
        batch, inputs, copy = render_batch(dub, prepare_batch(dub, batch))
        if inputs is None:
            continue
        generated = copy.ready()
        for n, i in enumerate(batch.live):
            position = int(steps[i]) - period
            faces[position], boxes[position] = generated[n], inputs.boxes[n]
            outlines[position] = mask_outline(template.landmarks[order[steps[i]]], inputs.landmarks[n],
                                              inputs.boxes[n])
    points = next(o for o in outlines if o is not None).shape
    outline = np.stack([o if o is not None else np.zeros(points) for o in outlines]).astype(np.float64)
    return IdleLoop(faces, boxes, outline, kernel, sigma)


def idle_loop(prepared: Prepared, models: Models, config: dict, spool: FrameSpool) -> IdleLoop:
    """The template's idle loop from the template cache, or rendered and kept there (when the cache is on)."""
    directory = cache_dir(config)
    key = _settings(prepared, models, config)
    if directory is not None:
        arrays = read_cached_arrays(prepared.template.path, config, prepared.template.fps, directory, key)
        if arrays is not None:
            return IdleLoop(arrays["faces"], arrays["boxes"], arrays["outlines"], int(config["mask"]["kernel"]),
                            float(config["mask"]["sigma"]))
    loop = render_idle_loop(prepared, models, config, spool)
    if directory is not None:
        write_cached_arrays(prepared.template.path, config, prepared.template.fps, directory, key,
                            {"faces": loop.faces, "boxes": loop.boxes, "outlines": loop.outlines})
    return loop


def _settings(prepared: Prepared, models: Models, config: dict) -> str:
    """What the idle loop depends on beyond pass 1: the networks' weights (and render step), the references, the
    precision and device kind, the box smoothing, the mask, and the face chosen among several."""
    digest = hashlib.sha256()
    for network in (models.landmark, models.renderer):
        for name, tensor in network.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    step = getattr(models.render_step, "__qualname__", type(models.render_step).__name__)
    return (f"idle={FORMAT};weights={digest.hexdigest()};step={step};refs={config['refs']};"
            f"landmark_refs={config['landmark_refs']};bf16={config['bf16']};device={models.device.type};"
            f"smooth={config['smooth_boxes']};mask={config['mask']['kernel']},{config['mask']['sigma']};"
            f"face={config['face']};faces={config['faces']}")
