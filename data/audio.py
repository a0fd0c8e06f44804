"""Audio: load any container or codec as 16 kHz mono through PyAV; the Wav2Lip/IP_LAP mel-spectrogram; windows.

Mel (docs/method.md, section 2): pre-emphasis 0.97; STFT n_fft=800, hop=200, Hann window of 800, centred with reflect
padding; magnitude; 80 Slaney mel bands 55-7600 Hz; 20*log10(max(1e-5, x)) - 20 dB; clip(8*(S+100)/100 - 4, -4, 4).
That gives 80 mel frames per second, 3.2 per video frame at 25 fps.
"""
from __future__ import annotations

import functools
from pathlib import Path

import av
import numpy as np
from scipy.signal import lfilter

from data.errors import InputError, one_line
from data.landmarks import SKETCH_CENTRE
from data.video import FPS

SAMPLE_RATE = 16000
N_FFT, HOP, WIN = 800, 200, 800
N_MELS, FMIN, FMAX = 80, 55.0, 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB, REF_LEVEL_DB, MAX_ABS = -100.0, 20.0, 4.0
MEL_PER_SECOND = SAMPLE_RATE / HOP  # 80
MEL_STEPS = 16  # mel frames in one video frame's window (0.2 s, frames t-2..t+2)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file (wav, mp3, m4a, flac, a video) to mono float32 at sample_rate."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, OSError) as error:
        raise InputError(path, f"not a readable audio or video file ({one_line(error)})") from None
    with container:
        if not container.streams.audio:
            raise InputError(path, "no audio stream")
        # Keep the source channel layout and average the channels ourselves (librosa's downmix), so the
        # resampler only changes the rate.
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        chunks = []
        try:
            for frame in container.decode(container.streams.audio[0]):
                chunks += [out.to_ndarray() for out in resampler.resample(frame)]
            chunks += [out.to_ndarray() for out in resampler.resample(None)]
        except av.FFmpegError as error:
            raise InputError(path, f"audio decoding failed ({one_line(error)})") from None
    if not chunks or sum(chunk.shape[1] for chunk in chunks) == 0:
        raise InputError(path, "the audio stream holds no samples")
    channels = max(chunk.shape[0] for chunk in chunks)
    chunks = [np.broadcast_to(chunk, (channels, chunk.shape[1])) if chunk.shape[0] != channels else chunk
              for chunk in chunks]
    return np.concatenate(chunks, axis=1).mean(axis=0).astype(np.float32)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


@functools.lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """Slaney-normalised triangular mel filters (80, 401) float32, equal to librosa.filters.mel with our settings."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    bins = np.linspace(0.0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    rising = (bins[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per band
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)  # periodic, as scipy/librosa build it


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Normalised log-mel of 16 kHz mono audio: (M, 80) float32 in [-4, 4], M = 1 + len(wav) // 200."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1 or len(wav) == 0:
        raise ValueError(f"expected non-empty mono audio (n,), got shape {wav.shape}")
    return mel_frames(_reflect_padded(emphasise(wav)), 1 + len(wav) // HOP)


def emphasise(wav: np.ndarray) -> np.ndarray:
    """The pre-emphasis filter, float64 from here on as in librosa (a two-tap FIR: each output sample depends on
    its input sample and the one before only)."""
    return lfilter([1.0, -PREEMPHASIS], [1.0], wav)


def _reflect_padded(emphasised: np.ndarray) -> np.ndarray:
    """Half a window of reflection at both ends (centred frames). Reflect padding needs more than half a window
    of signal; shorter clips are zero-extended first."""
    if len(emphasised) <= N_FFT // 2:
        emphasised = np.pad(emphasised, (0, N_FFT // 2 + 1 - len(emphasised)))
    return np.pad(emphasised, N_FFT // 2, mode="reflect")


def mel_frames(padded: np.ndarray, count: int) -> np.ndarray:
    """The first `count` normalised log-mel frames (count, 80) float32 of a padded, emphasised signal, the
    frames HOP apart from its start. Each frame is computed from its own window alone: the same values however
    many frames are computed at once (einsum's loops, where a BLAS product's rounding depends on the rows it is
    given; MelStream computes a few frames at a time)."""
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[:: HOP][:count]
    spectrum = np.abs(np.fft.rfft(frames * _hann(), axis=1))  # (count, 401)
    mel_db = 20.0 * np.log10(np.maximum(1e-5, np.einsum("fb,mb->fm", spectrum, _filters64()))) - REF_LEVEL_DB
    normalised = 2 * MAX_ABS * ((mel_db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS
    return np.clip(normalised, -MAX_ABS, MAX_ABS).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _filters64() -> np.ndarray:
    return mel_filters().astype(np.float64)


class MelStream:
    """melspectrogram computed as the audio arrives: `feed` chunks of 16 kHz samples of any length, `end` when
    the audio is whole. Frame m is final once the samples its window covers have arrived (m * HOP + N_FFT / 2 of
    them, and more than half a window in all, below which the whole clip is zero-extended); until `end`, only
    final frames are computed, and each equals melspectrogram's frame m of the whole audio. Holds the signal from
    the next frame's window on and the frames from `trim`'s index on, so that memory stays flat.

    Reads as the mel array for `mel_windows`: len() is the frames computed so far and indexing takes absolute
    frame indices (of the kept ones)."""

    def __init__(self):
        self.samples = 0  # fed so far
        self._previous: np.ndarray | None = None  # the last sample fed (the pre-emphasis filter's memory)
        self._signal = np.zeros(0)  # emphasised samples (the first N_FFT/2+1 until frames start), then padded
        self._signal_start = 0  # padded-signal index of _signal[0], once frames start
        self._started = False
        self._rows = np.zeros((0, N_MELS), np.float32)
        self._first = 0  # absolute index of _rows[0]
        self.ended = False

    def __len__(self) -> int:
        return self._first + len(self._rows)

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        if index.size and index.min() < self._first:
            raise IndexError(f"mel frame {index.min()} was trimmed (frames from {self._first} are kept)")
        return self._rows[index - self._first]

    def feed(self, samples: np.ndarray) -> int:
        """Add 16 kHz mono samples; returns the number of final frames now computed."""
        if self.ended:
            raise ValueError("the audio has ended")
        samples = np.asarray(samples, np.float32)
        if len(samples):
            history = self._previous if self._previous is not None else np.zeros(0, np.float32)
            emphasised = emphasise(np.concatenate([history, samples]))[len(history):]
            self._previous, self.samples = samples[-1:], self.samples + len(samples)
            self._signal = np.concatenate([self._signal, emphasised])
            if not self._started and self.samples > N_FFT // 2:
                # From here the start's reflection is known: the padded signal begins.
                self._signal = np.concatenate([self._signal[N_FFT // 2:0:-1], self._signal])
                self._started = True
        if self._started:
            final = (self.samples - N_FFT // 2) // HOP + 1
            self._compute(final)
        return len(self)

    def end(self) -> int:
        """The audio is whole: the last frames, over the end's reflection; returns the frame count."""
        if self.ended:
            return len(self)
        self.ended = True
        if self.samples == 0:
            raise ValueError("no audio")
        if not self._started:  # a clip of half a window or less: melspectrogram's zero-extended case
            self._signal, self._started = _reflect_padded(self._signal), True
        else:
            tail = self._signal[len(self._signal) - N_FFT // 2 - 1:-1][::-1]  # np.pad's reflection of the end
            self._signal = np.concatenate([self._signal, tail])
        self._compute(1 + self.samples // HOP)
        return len(self)

    def trim(self, first: int) -> None:
        """Drop the frames before index `first` (no window will read them again)."""
        drop = min(max(first - self._first, 0), len(self._rows))
        self._rows, self._first = self._rows[drop:], self._first + drop

    def _compute(self, final: int) -> None:
        done = len(self)
        if final <= done:
            return
        start = done * HOP - self._signal_start  # this frame's window in _signal
        rows = mel_frames(self._signal[start:start + (final - done - 1) * HOP + N_FFT], final - done)
        self._rows = np.concatenate([self._rows, rows])
        # Keep the signal from the next frame's window on (and, for the end's reflection, the last N_FFT/2+1).
        keep = min(final * HOP - self._signal_start, len(self._signal) - N_FFT // 2 - 1)
        if keep > 0:
            self._signal, self._signal_start = self._signal[keep:], self._signal_start + keep


def window_start(frame: int | np.ndarray, fps: float = FPS) -> np.ndarray:
    """First mel index of video frame t's window, the one starting at frame t-2 (SKETCH_CENTRE frames before
    t): int(80 * (t - 2) / fps), truncated toward zero as in Wav2Lip."""
    return np.trunc(MEL_PER_SECOND * (np.asarray(frame) - SKETCH_CENTRE) / fps).astype(np.int64)


def mel_windows(mel: np.ndarray, frames: int | np.ndarray, fps: float = FPS) -> np.ndarray:
    """Audio windows of video frames: mel (M, 80) -> (len(frames), 80, 16) float32 (bands x time).

    Windows reaching past either end of the mel repeat its first or last frame, so every video frame has one.
    """
    if len(mel) == 0:
        raise ValueError("empty mel-spectrogram")
    frames = np.atleast_1d(np.asarray(frames))
    index = window_start(frames, fps)[:, None] + np.arange(MEL_STEPS)
    windows = mel[np.clip(index, 0, len(mel) - 1)]  # (F, 16, 80)
    return np.ascontiguousarray(windows.transpose(0, 2, 1))


def frames_covered(num_samples: int, sample_rate: int = SAMPLE_RATE, fps: float = FPS) -> int:
    """Number of whole video frames that num_samples of audio last."""
    return int(num_samples * fps // sample_rate)
