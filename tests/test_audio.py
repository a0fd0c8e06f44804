import av
import librosa
import numpy as np
import pytest

from conftest import tone
from data import audio
from data.errors import InputError


def _reference_mel(wav: np.ndarray) -> np.ndarray:
    """Section 2 of the facts, re-derived step by step with plain NumPy loops (slow, literal)."""
    x = np.asarray(wav, np.float64)
    emphasised = np.empty_like(x)
    emphasised[0] = x[0]
    emphasised[1:] = x[1:] - 0.97 * x[:-1]
    padded = np.pad(emphasised, 400, mode="reflect")
    window = 0.5 * (1 - np.cos(2 * np.pi * np.arange(800) / 800))  # periodic Hann
    count = 1 + len(x) // 200
    spectrum = np.stack([np.abs(np.fft.rfft(padded[i * 200:i * 200 + 800] * window)) for i in range(count)])

    def hz_to_mel(f):
        return f * 3 / 200 if f < 1000 else 15 + np.log(f / 1000) * 27 / np.log(6.4)

    def mel_to_hz(m):
        return m * 200 / 3 if m < 15 else 1000 * np.exp((m - 15) * np.log(6.4) / 27)

    centres = [mel_to_hz(m) for m in np.linspace(hz_to_mel(55.0), hz_to_mel(7600.0), 82)]
    freqs = np.arange(401) * 8000 / 400
    filters = np.zeros((80, 401))
    for band in range(80):
        lo, mid, hi = centres[band:band + 3]
        for k, f in enumerate(freqs):
            filters[band, k] = max(0.0, min((f - lo) / (mid - lo), (hi - f) / (hi - mid))) * 2 / (hi - lo)
    filters = filters.astype(np.float32).astype(np.float64)  # librosa hands the filters out as float32
    db = 20 * np.log10(np.maximum(1e-5, spectrum @ filters.T)) - 20
    return np.clip(8 * ((db + 100) / 100) - 4, -4, 4)


def test_mel_equals_a_direct_rederivation_on_real_speech(samples):
    wav = audio.load_audio(samples / "speech_audio2.wav")[: 16000 * 4]
    mel = audio.melspectrogram(wav)
    assert mel.shape == (1 + len(wav) // 200, 80) and mel.dtype == np.float32
    assert np.abs(mel - _reference_mel(wav)).max() < 1e-4
    assert mel.min() >= -4 and mel.max() <= 4 and mel.std() > 0.5


def test_mel_filters_equal_librosas_slaney_filters():
    expected = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    np.testing.assert_allclose(audio.mel_filters(), expected, atol=1e-7)


def test_mel_uses_reflect_padding_not_librosas_new_zero_default():
    wav = tone(0.5, frequency=300.0)
    emphasised = np.concatenate([[wav[0]], wav[1:] - 0.97 * wav[:-1]])
    zero_padded = np.abs(librosa.stft(emphasised, n_fft=800, hop_length=200, pad_mode="constant"))
    reflect = np.abs(librosa.stft(emphasised, n_fft=800, hop_length=200, pad_mode="reflect"))
    ours = audio.melspectrogram(wav)

    def to_mel(spectrum):
        db = 20 * np.log10(np.maximum(1e-5, audio.mel_filters() @ spectrum)) - 20
        return np.clip(8 * ((db + 100) / 100) - 4, -4, 4).T

    assert np.abs(ours - to_mel(reflect)).max() < 1e-4
    assert np.abs(ours[0] - to_mel(zero_padded)[0]).max() > 0.1  # the first frame tells them apart


def test_mel_windows_follow_the_wav2lip_index_rule():
    mel = np.arange(200 * 80, dtype=np.float32).reshape(200, 80)
    windows = audio.mel_windows(mel, [2, 10, 0, 1])
    assert windows.shape == (4, 80, 16)
    # Frame t starts at int(80 * (t - 2) / 25): 0 for t=2, int(25.6) = 25 for t=10.
    np.testing.assert_array_equal(windows[0], mel[0:16].T)
    np.testing.assert_array_equal(windows[1], mel[25:41].T)
    # Frames 0 and 1 start before the audio (-6, -3): the first mel frame repeats.
    np.testing.assert_array_equal(windows[2][:, :7], np.repeat(mel[0][:, None], 7, axis=1))
    np.testing.assert_array_equal(windows[3][:, 3:], mel[0:13].T)
    end = audio.mel_windows(mel, [70])[0]  # starts at 217 > 199: all last frame
    np.testing.assert_array_equal(end, np.repeat(mel[-1][:, None], 16, axis=1))


def _write_audio(path, samples: np.ndarray, rate: int, codec: str, layout: str) -> None:
    """Encode a mono signal (copied to every channel) with PyAV; the encoder converts the sample format."""
    channels = 2 if layout == "stereo" else 1
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(np.repeat(samples[None, :], channels, axis=0), format="fltp",
                                           layout=layout)
        frame.sample_rate = rate
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)


@pytest.mark.parametrize("name,codec,rate,layout", [
    ("speech.wav", "pcm_s16le", 44100, "stereo"),
    ("speech.flac", "flac", 48000, "mono"),
    ("speech.mp3", "mp3", 44100, "stereo"),
    ("speech.m4a", "aac", 48000, "stereo"),
])
def test_load_audio_any_codec_to_16k_mono(tmp_path, name, codec, rate, layout):
    path = tmp_path / name
    _write_audio(path, tone(2.0, rate), rate, codec, layout)
    wav = audio.load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) / 16000 - 2.0) < 0.08  # encoder padding of compressed formats
    # The 440 Hz tone survives resampling: the spectral peak of the middle second.
    middle = wav[8000:24000]
    spectrum = np.abs(np.fft.rfft(middle))
    assert abs(np.argmax(spectrum) * 16000 / len(middle) - 440) < 3
    assert 0.25 < np.abs(middle).max() < 0.35  # channels averaged, not summed


def test_video_audio_track(samples):
    wav = audio.load_audio(samples / "talk_a.mp4")
    assert abs(len(wav) / 16000 - 5.0) < 0.05


def test_errors_name_the_file(tmp_path, samples):
    with pytest.raises(InputError, match="no such file"):
        audio.load_audio(tmp_path / "missing.wav")
    with pytest.raises(InputError, match="template_129.mp4: no audio stream"):
        audio.load_audio(samples / "template_129.mp4")
    text = tmp_path / "notes.mp3"
    text.write_text("not audio")
    with pytest.raises(InputError, match="notes.mp3: not a readable"):
        audio.load_audio(text)


def test_frames_covered():
    assert audio.frames_covered(16000) == 25 and audio.frames_covered(16000 * 21.339125) == 533
