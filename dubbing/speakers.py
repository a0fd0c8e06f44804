"""Several speakers in one dub: each (audio, face) pair animates its face with its own audio, into one output
whose sound is the audios mixed (speech may overlap in time). A face that no audio names keeps its own mouth, and
so does each face once its audio has ended.

Each speaker's face is chosen and followed as in a one-face dub (dubbing/faces.py); the template's FaceMesh pass
runs once (the cache keeps every face). Each batch of output frames goes through the speakers in turn, in series:
the second speaker's face is rendered from, and pasted into, the frames the first has made.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from data.errors import InputError
from dubbing.faces import box_iou
from dubbing.network import Models
from dubbing.pipeline import (
    Dub,
    DubResult,
    Prepared,
    _run,
    checked_request,
    new_dub,
    paste_batch,
    prepare_batch,
    prepare_template,
    read_driving,
    render_batch,
)
from dubbing.prepare import FrameBatch
from dubbing.progress import FRAMES, Report, StageProgress
from dubbing.template import ping_pong


def mix(signals: list[np.ndarray]) -> np.ndarray:
    """The sum of mono signals, each padded with silence to the longest, clipped to [-1, 1]."""
    out = np.zeros(max(len(s) for s in signals), np.float32)
    for signal in signals:
        out[:len(signal)] += signal
    return np.clip(out, -1.0, 1.0)


def _layers(voices: list[Dub], order: np.ndarray):
    def layer(batch: FrameBatch) -> tuple[FrameBatch, list[np.ndarray], list[None]]:
        frames, rendered = list(batch.frames), set()
        for voice in voices:
            steps = batch.steps
            live = np.flatnonzero((steps < voice.count) & voice.template.has_face[order[steps]])
            item = prepare_batch(voice, FrameBatch(steps, frames, live))
            frames, _ = paste_batch(voice, render_batch(voice, item), False)
            rendered.update(live.tolist())
        return FrameBatch(batch.steps, frames, np.array(sorted(rendered), np.int64)), frames, [None] * len(frames)

    return layer


def dub_speakers(video: str | Path, speakers: list[tuple[str | Path, str]], output: str | Path, models: Models,
                 config: dict | None = None, progress: bool = True, report: Report | None = None) -> DubResult:
    """Dub `video` with several (audio, face) pairs into one `output` (.mp4), as long as the longest audio.
    Raises InputError on bad input (two speakers choosing one face among them) and leaves no output file."""
    started = time.perf_counter()
    config, video, output = checked_request(video, output, config, *(audio for audio, _ in speakers))
    driving = [read_driving(audio, config) for audio, _ in speakers]
    prepared: list[Prepared] = []
    try:
        for _, face in speakers:
            prepared.append(prepare_template(video, models, config, progress, report, face=face))
        for i, one in enumerate(prepared):
            for j, other in enumerate(prepared[:i]):
                both = one.template.has_face & other.template.has_face
                if (box_iou(one.template.boxes[both], other.template.boxes[both]) > 0.5).any():
                    raise InputError(video, f"--face {speakers[i][1]} and --face {speakers[j][1]} choose the "
                                            "same face")
        voices = [new_dub(p, wav, muxed, output, models, config) for p, (wav, muxed) in zip(prepared, driving)]
        count = max(voice.count for voice in voices)
        order = ping_pong(np.arange(count), len(voices[0].template))
        lead = replace(voices[0], count=count, order=order, muxed=mix([voice.muxed for voice in voices]))
        result = _run(lead, output, None, StageProgress(FRAMES, count, progress, report), started,
                      layers=_layers(voices, order))
    finally:
        for one in prepared:
            one.close()
    return replace(result, uncertain=sum(p.template.uncertain for p in prepared))
