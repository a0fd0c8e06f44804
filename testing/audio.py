"""Speech files for tests and benches: float samples written as the WAV files a user would give."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from data.audio import SAMPLE_RATE


def write_wav(path: str | Path, samples: np.ndarray, rate: int = SAMPLE_RATE, channels: int = 1) -> Path:
    """Float samples in -1..1 as a 16-bit PCM WAV file (mono, or the mono signal on every channel)."""
    data = np.repeat(samples[:, None], channels, axis=1) if channels > 1 else samples
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(data, -1, 1) * 32767).astype(np.int16).tobytes())
    return Path(path)
