"""Live dubbing: a prepared template speaks a stream of audio as it arrives (docs/live.md).

A `LiveSession` takes chunks of audio of any length (`feed`) and gives out each output frame as soon as the audio
it depends on has arrived: frame t reads the mel windows of the grid frames t-2..t+2, whose last mel frame is
centred 0.1875 s after t and whose STFT window reaches half a window (0.025 s) further, so the session runs
`lookahead_s` (0.2125 s at 25 fps) behind the audio. The frames are made by the offline dub's own stage
functions (dubbing/pipeline.py) over the mel computed incrementally (data.audio.MelStream), with the dub's
length taken as the audio fed so far: none of the end's clamps reach a frame that is given out before `end`, so
each frame is the one `dub` writes for the same audio, whatever the chunking.

Between utterances the session idles: `idle` gives the template dubbed with silence (dubbing/idle.py, rendered
once per template), at the template position the output has reached. An utterance starts where the template is
(`Template.phase`), so the picture goes on without a jump; each utterance is the offline dub of its own audio on
the template from that position (the first one, from position 0, is `dub`'s output exactly).
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from data.audio import HOP, MEL_STEPS, N_FFT, SAMPLE_RATE, MelStream, frames_covered, window_start
from data.errors import InputError
from data.landmarks import SKETCH_CENTRE
from data.video import FPS
from dubbing.frames import FrameSpool
from dubbing.idle import IdleLoop
from dubbing.network import Models, compiled
from dubbing.pipeline import (
    MIN_AUDIO_SECONDS,
    Dub,
    Prepared,
    batch_size_for,
    check_config,
    paste_batch,
    prepare_batch,
    render_batch,
)
from dubbing.prepare import FrameBatch
from dubbing.template import ping_pong

MIN_SAMPLES = int(MIN_AUDIO_SECONDS * SAMPLE_RATE)  # an utterance shorter than one window is padded with silence


@dataclass
class LiveFrame:
    """One output frame: its index and time (seconds) from the session's start, the (H, W, 3) uint8 RGB image,
    whether a face was dubbed in it (False on a template frame without a face), and whether it speaks the fed
    audio (False: the idle loop)."""

    index: int
    time: float
    image: np.ndarray
    dubbed: bool
    speech: bool


def samples_needed(frames: np.ndarray, rate: float) -> np.ndarray:
    """Samples of an utterance that must have arrived before its output frames `frames` (at `rate`) are final,
    i.e. the same for any longer audio: every mel frame their windows read is final (data.audio.MelStream), and
    the audio already lasts past the last grid frame and the last sketch position they use, so that no clamp to
    the audio's end reaches them (dubbing/prepare.py)."""
    frames = np.asarray(frames, np.int64)
    position = frames * FPS / rate
    below = np.floor(position).astype(np.int64)
    top = below + (position > below) + SKETCH_CENTRE  # the last grid frame of the windows the frame blends
    last_mel = window_start(top) + MEL_STEPS - 1
    mel = np.maximum(last_mel * HOP + N_FFT // 2, N_FFT // 2 + 1)
    grid = _samples_for(top + 1, FPS)  # frames_covered(n) > top
    # sketch_times and the landmark poses read output positions up to these; count - 1 must reach them.
    reach = np.maximum(frames + SKETCH_CENTRE * rate / FPS, top * rate / FPS)
    count = _samples_for(np.ceil(reach).astype(np.int64) + 1, rate)
    return np.maximum(mel, np.maximum(grid, count))


def _samples_for(frames: np.ndarray, fps: float) -> np.ndarray:
    """The fewest samples that `frames_covered` counts as `frames` whole frames at `fps` (each)."""
    guess = np.ceil(np.asarray(frames) * SAMPLE_RATE / fps).astype(np.int64) - 1
    return np.array([g + next(i for i in range(3) if frames_covered(g + i, fps=fps) >= f)
                     for g, f in zip(np.atleast_1d(guess), np.atleast_1d(frames))]).reshape(np.shape(guess))


def lookahead_seconds(rate: float) -> float:
    """How much audio past a frame's time must arrive before the frame can be made: the most, over the first
    ten seconds of frames (the pattern repeats every 5 frames at 25 fps), of samples_needed minus the frame's
    time."""
    frames = np.arange(int(10 * rate))
    return float(np.max(samples_needed(frames, rate) / SAMPLE_RATE - frames / rate))


class _Order:
    """An utterance's template frames by output frame (Dub.order): the ping-pong order from its phase."""

    def __init__(self, phase: int, length: int):
        self.phase, self.length = phase, length

    def __getitem__(self, steps):
        return ping_pong(np.asarray(steps) + self.phase, self.length)


@dataclass
class _Utterance:
    start: int  # the session's output index of the utterance's frame 0 (the template's phase)
    dub: Dub
    mel: MelStream
    resampler: av.AudioResampler | None = None
    source_rate: int = SAMPLE_RATE
    given: int = 0  # frames given out
    waiting_for: int = 0  # samples the next frame needs (a chunk short of them makes nothing)


class LiveSession:
    """A prepared template (`prepare_template`) dubbed live with one client's audio: `feed`, `end`,
    `interrupt`, and `idle` between utterances. `idle_loop` is the template's silent loop (dubbing/idle.py,
    shared by every session on the template); `spool`, its frames (default: the prepared template's, in the
    temporary folder). Not thread-safe: one caller at a time (the server holds a lock around the networks)."""

    def __init__(self, prepared: Prepared, models: Models, config: dict, idle_loop: IdleLoop,
                 spool: FrameSpool | None = None):
        check_config(config)
        self.prepared, self.config, self.idle_loop = prepared, config, idle_loop
        self.models = compiled(models) if config["compile"] else models
        self.spool = spool if spool is not None else prepared.frame_spool(Path(tempfile.gettempdir()))
        self.rate = prepared.template.fps
        self.lookahead_s = lookahead_seconds(self.rate)
        self.next_index = 0  # the next output frame the session gives out
        self._utterance: _Utterance | None = None

    @property
    def speaking(self) -> bool:
        """An utterance is under way (fed and not yet ended or interrupted)."""
        return self._utterance is not None

    @property
    def batch_size(self) -> int:
        return batch_size_for(self.config, self.models.device)

    def feed(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[LiveFrame]:
        """Add a chunk of mono audio (int16, or float in -1..1; any length; another rate is resampled to 16 kHz);
        returns the frames that have become final. The first chunk after idling starts an utterance."""
        samples = pcm_samples(samples)
        if len(samples) == 0:  # nothing to start or go on with
            return []
        if self._utterance is None:
            self._utterance = self._start()
        utterance = self._utterance
        if sample_rate != SAMPLE_RATE:
            samples = _resample(utterance, samples, sample_rate)
        utterance.mel.feed(samples)
        if utterance.mel.samples < utterance.waiting_for:
            return []
        return self._give(utterance, self._final_count(utterance))

    def end(self) -> list[LiveFrame]:
        """The utterance's audio is whole: its last frames, made as the offline dub makes its last ones. An
        utterance shorter than one 0.2 s window (which `dub` refuses) is padded with silence to one."""
        utterance = self._utterance
        if utterance is None:
            return []
        if utterance.resampler is not None:
            utterance.mel.feed(_flush(utterance))
        if utterance.mel.samples < MIN_SAMPLES:
            utterance.mel.feed(np.zeros(MIN_SAMPLES - utterance.mel.samples, np.float32))
        utterance.mel.end()
        frames = self._give(utterance, frames_covered(utterance.mel.samples, fps=self.rate))
        self.next_index, self._utterance = utterance.start + utterance.given, None
        return frames

    def interrupt(self) -> None:
        """Drop the audio not yet used; the next frames are the idle loop's, from where the output is."""
        if self._utterance is not None:
            self.next_index, self._utterance = self._utterance.start + self._utterance.given, None

    def idle(self, count: int = 1) -> list[LiveFrame]:
        """The next `count` frames of the idle loop (none while an utterance is under way)."""
        if self._utterance is not None:
            return []
        template, frames = self.prepared.template, []
        for index in range(self.next_index, self.next_index + count):
            shown = int(ping_pong(index, len(template)))
            image = self.idle_loop.frame(index, self.spool[shown], bool(template.has_face[shown]))
            frames.append(LiveFrame(index, index / self.rate, image, bool(template.has_face[shown]), False))
        self.next_index += count
        return frames

    # ---------------------------------------------------------------- the utterance's frames
    def _start(self) -> _Utterance:
        start = self.next_index
        template = dataclasses.replace(self.prepared.template, phase=start)
        dub = Dub(dataclasses.replace(self.prepared, template=template, spool=None), self.models, self.config,
                  mel=None, grid=0, muxed=np.zeros(0, np.float32), count=0, order=_Order(start, len(template)))
        utterance = _Utterance(start, dub, MelStream())
        dub.mel = utterance.mel
        return utterance

    def _final_count(self, utterance: _Utterance) -> int:
        """How many of the utterance's frames are final with the audio fed so far (looked at a few at a time:
        the samples needed grow with the frame)."""
        fed, final = utterance.mel.samples, utterance.given
        while True:
            ready = int(np.count_nonzero(samples_needed(np.arange(final, final + 8), self.rate) <= fed))
            final += ready
            if ready < 8:
                utterance.waiting_for = int(samples_needed([final], self.rate)[0])
                return final

    def _give(self, utterance: _Utterance, final: int) -> list[LiveFrame]:
        """Frames given..final-1 of the utterance, in batches of up to the batch size: the frames that waited
        (a stall, a long chunk) go through the networks together, a frame that keeps pace alone."""
        dub, frames = utterance.dub, []
        # The dub as long as the audio so far: the clamps to its end do not reach a final frame.
        dub.grid = frames_covered(utterance.mel.samples)
        dub.count = frames_covered(utterance.mel.samples, fps=self.rate)
        for first in range(utterance.given, final, self.batch_size):
            steps = np.arange(first, min(first + self.batch_size, final))
            shown = dub.order[steps]
            batch = FrameBatch(steps, [self.spool[i] for i in shown],
                               np.flatnonzero(dub.template.has_face[shown]))
            images, _ = paste_batch(dub, render_batch(dub, prepare_batch(dub, batch)), False)
            for step, image, face in zip(steps, images, dub.template.has_face[shown]):
                index = utterance.start + int(step)
                frames.append(LiveFrame(index, index / self.rate, image, bool(face), True))
            utterance.given = int(steps[-1]) + 1
        # The mel frames no later frame reads again (windows start at grid frame t-2 of the first one).
        first_grid = max(int(np.floor(utterance.given * FPS / self.rate)) - SKETCH_CENTRE, 0)
        utterance.mel.trim(max(int(window_start(first_grid)), 0))
        return frames


def pcm_samples(samples: np.ndarray) -> np.ndarray:
    """Mono PCM as float32 in -1..1: int16 (scaled by 1/32768, as PyAV decodes it) or float32/float64 as they
    are. Raises InputError for anything else."""
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise InputError("audio chunk", f"expected mono samples (n,), got shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if samples.dtype in (np.float32, np.float64):
        return samples.astype(np.float32, copy=False)
    raise InputError("audio chunk", f"samples must be int16 or float32, not {samples.dtype}")


def _resample(utterance: _Utterance, samples: np.ndarray, rate: int) -> np.ndarray:
    if utterance.resampler is None:
        utterance.resampler, utterance.source_rate = av.AudioResampler(format="fltp", layout="mono",
                                                                       rate=SAMPLE_RATE), rate
    if rate != utterance.source_rate:
        raise InputError("audio chunk", f"the sample rate changed mid-utterance ({utterance.source_rate} to {rate})")
    frame = av.AudioFrame.from_ndarray(samples[None], format="fltp", layout="mono")
    frame.sample_rate = rate
    return _joined(utterance.resampler.resample(frame))


def _flush(utterance: _Utterance) -> np.ndarray:
    return _joined(utterance.resampler.resample(None))


def _joined(frames: list) -> np.ndarray:
    return np.concatenate([f.to_ndarray()[0] for f in frames]) if frames else np.zeros(0, np.float32)
