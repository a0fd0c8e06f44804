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
    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], wav)  # float64 from here on, as in librosa
    # Reflect padding needs more than half a window of signal; shorter clips are zero-extended first.
    if len(emphasised) <= N_FFT // 2:
        emphasised = np.pad(emphasised, (0, N_FFT // 2 + 1 - len(emphasised)))
    padded = np.pad(emphasised, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[:: HOP][: 1 + len(wav) // HOP]
    spectrum = np.abs(np.fft.rfft(frames * _hann(), axis=1))  # (M, 401)
    mel_db = 20.0 * np.log10(np.maximum(1e-5, spectrum @ mel_filters().T.astype(np.float64))) - REF_LEVEL_DB
    normalised = 2 * MAX_ABS * ((mel_db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS
    return np.clip(normalised, -MAX_ABS, MAX_ABS).astype(np.float32)


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
