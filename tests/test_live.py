"""The live session (dubbing/live.py): its mel equals melspectrogram of the whole audio, its frames equal the
offline dub's for every chunking, each frame appears as soon as its lookahead has arrived, the networks batch the
frames that waited, and between utterances the idle loop (the template dubbed with silence, kept in the template
cache) goes on without a gap or a jump."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import dubbing
import dubbing.writer
from data.audio import SAMPLE_RATE, MelStream, load_audio, melspectrogram
from data.video import VideoReader
from dubbing.idle import idle_loop, loop_period
from dubbing.live import LiveSession, lookahead_seconds, samples_needed
from dubbing.template import ping_pong
from testing.audio import write_wav
from testing.templates import small_template


def test_mel_stream_equals_melspectrogram_for_every_chunking():
    rng = np.random.default_rng(0)
    for length in (300, 401, 3200, 20123):
        wav = (0.2 * rng.standard_normal(length)).astype(np.float32)
        whole = melspectrogram(wav)
        for chunking in (1, 320, 16000, "random"):
            stream, fed = MelStream(), 0
            while fed < length:
                size = int(rng.integers(1, 3000)) if chunking == "random" else chunking
                stream.feed(wav[fed:fed + size])
                fed += size
                done = len(stream)
                # Every frame computed before the end is final: equal to the whole audio's.
                kept = np.arange(max(done - 12, 0), done)
                assert np.array_equal(stream[kept], whole[kept]), (length, chunking, fed)
                assert done <= max((fed - 400) // 200 + 1, 0)
                stream.trim(done - 12)
            stream.end()
            assert len(stream) == len(whole)
            tail = np.arange(len(whole) - min(12, len(whole)), len(whole))
            assert np.array_equal(stream[tail], whole[tail]), (length, chunking)
        # The kept signal and frames stay small (flat memory over a long stream).
        assert len(stream._rows) <= 13 + 2 and len(stream._signal) <= 1200


@pytest.fixture(scope="module")
def media(samples, tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """A 5-frame template (talk_a at 160x160, frame 2's face painted out) and 0.8 s of speech as a WAV file and
    as the int16 samples that file holds: 20 output frames, the template looping (ping-pong period 10)."""
    folder = tmp_path_factory.mktemp("live")
    template = small_template(samples / "talk_a.mp4", folder / "template.mp4", 5, 160,
                              (2, slice(15, 150), slice(25, 140)))
    audio = write_wav(folder / "speech.wav", load_audio(samples / "talk_b.mp4")[:int(0.8 * SAMPLE_RATE) + 77])
    pcm = np.round(load_audio(audio) * 32768).astype(np.int16)
    return template, audio, pcm


def _drawn(renderer, refs, faces, sketches, mels):
    """A stand-in render step (the renderer takes seconds a frame on a shared CPU) whose output depends on every
    input the stages prepare: the face crop, the target sketches (from the landmark generator's prediction) and
    the audio window. The landmark generator, the mel, the crops and paste-back are the real ones."""
    return 0.6 * faces + 0.4 * sketches.mean(dim=1) + 0.05 * mels.mean(dim=(1, 2, 3))[:, None, None, None]


@pytest.fixture(scope="module")
def models(random_checkpoints) -> dubbing.Models:
    return replace(dubbing.load_models(*random_checkpoints, "cpu"), render_step=_drawn)


def _counting(calls: list):
    def counted(renderer, refs, faces, sketches, mels):
        calls.append(len(faces))
        return _drawn(renderer, refs, faces, sketches, mels)

    return counted


def _config(**changes) -> dict:
    config = dubbing.default_config()
    config.update(refs=2, landmark_refs=3, **changes)
    return config


@pytest.fixture(scope="module")
def offline(media, models, tmp_path_factory) -> list[np.ndarray]:
    """The frames `dub` writes (before encoding) for the template and the speech."""
    template, audio, _ = media
    written = []
    original = dubbing.writer.Outputs.write

    def keep(self, frame, sketch=None):
        written.append(frame.copy())
        original(self, frame, sketch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dubbing.writer.Outputs, "write", keep)
        result = dubbing.dub(template, audio, tmp_path_factory.mktemp("offline") / "dub.mp4", models, _config(),
                             progress=False)
    assert result.frames == len(written) == 20 and result.rendered == 16  # 4 of 20 show the faceless frame
    return written


@pytest.fixture(scope="module")
def prepared(media, models, tmp_path_factory):
    prepared = dubbing.prepare_template(media[0], models, _config(), progress=False)
    spool = prepared.frame_spool(tmp_path_factory.mktemp("spool"))
    loop = idle_loop(prepared, models, _config(), spool)
    yield prepared, spool, loop
    prepared.close()


def _session(prepared, models, **changes) -> LiveSession:
    prepared, spool, loop = prepared
    return LiveSession(prepared, models, _config(**changes), loop, spool)


def _stream(session: LiveSession, pcm: np.ndarray, chunking, seed: int = 0) -> tuple[list, list[int]]:
    """Feed `pcm` in chunks, then end: the frames given out and, for each, the samples fed when it appeared."""
    rng, frames, fed_at, fed = np.random.default_rng(seed), [], [], 0
    while fed < len(pcm):
        size = int(rng.integers(1, 6000)) if chunking == "random" else chunking
        chunk = pcm[fed:fed + size]
        out = session.feed(chunk.astype(np.float32) / 32768 if chunking == "random" else chunk)  # both formats
        fed = min(fed + size, len(pcm))
        frames += out
        fed_at += [fed] * len(out)
    out = session.end()
    return frames + out, fed_at + [None] * len(out)


@pytest.mark.parametrize("chunking", [1, 320, 16000, "random"], ids=["1-sample", "20ms", "1s", "random"])
def test_frames_equal_the_offline_dub_for_every_chunking(media, models, offline, prepared, chunking):
    session = _session(prepared, models)
    frames, fed_at = _stream(session, media[2], chunking)
    assert [f.index for f in frames] == list(range(20))
    assert all(f.speech for f in frames) and [f.dubbed for f in frames].count(False) == 4
    for frame, expected in zip(frames, offline):
        assert frame.image.dtype == np.uint8 and np.array_equal(frame.image, expected), frame.index
    assert not session.speaking and session.next_index == 20
    if chunking == 320:  # the latency: each frame comes out with the chunk that brings its lookahead
        lookahead = session.lookahead_s
        assert lookahead == pytest.approx(0.2125) and lookahead <= 0.25
        for frame, fed in zip(frames, fed_at):
            if fed is None:  # made at the end: the audio ran out before its lookahead
                assert (frame.time + lookahead) * SAMPLE_RATE > len(media[2])
                continue
            assert fed >= (frame.time + lookahead) * SAMPLE_RATE - 1e-6 or fed >= samples_needed([frame.index],
                                                                                                    25.0)[0]
            assert fed - 320 < (frame.time + lookahead) * SAMPLE_RATE  # not one chunk later than its figure


def test_the_lookahead_is_what_the_windows_need():
    """At 25 fps frame t needs the mel window of grid frame t+2 (mel frames 3.2t..3.2t+15, the last centred at
    t/25 + 0.1875 s) and half an STFT window more (0.025 s): 0.2125 s. Other rates stay within 0.25 s."""
    frames = np.arange(200)
    needed = samples_needed(frames, 25.0)
    assert needed[0] == 3400 and np.max(needed - frames * 640) == 3400
    assert lookahead_seconds(25.0) == pytest.approx(0.2125)
    for rate in (24.0, 29.97, 30.0, 50.0, 60.0):
        assert 0.2 <= lookahead_seconds(rate) <= 0.25, rate


def test_frames_that_waited_go_through_the_networks_together(media, models, offline, prepared):
    calls = []
    session = _session(prepared, replace(models, render_step=_counting(calls)), batch_size=4)
    frames = session.feed(media[2][:11000])  # 0.69 s at once: frames 0..12 are final
    assert len(frames) == 13 and calls == [3, 3, 4]  # batches of 4 steps, less the faceless frames (2, 7, 12)
    calls.clear()
    frames += session.feed(media[2][11000:11600])
    assert calls == [1] and len(frames) == 14  # keeping pace: one frame, one call
    frames += session.feed(media[2][11600:]) + session.end()
    assert [f.index for f in frames] == list(range(20))
    assert all(np.array_equal(f.image, e) for f, e in zip(frames, offline))


def test_interrupt_drops_the_audio_and_speech_resumes_where_the_template_is(media, models, offline, prepared):
    template = prepared[0].template
    session = _session(prepared, models)
    first = session.feed(media[2][:8000])  # half a second: frames 0..7
    session.interrupt()
    assert not session.speaking and session.end() == [] and session.next_index == len(first) == 8
    idle = session.idle(2)
    assert [f.index for f in idle] == [8, 9] and not any(f.speech for f in idle)
    # At output frame 10 the template is back at its ping-pong start (period 10): the utterance spoken from
    # there is the offline dub itself.
    assert session.next_index % loop_period(len(template)) == 0
    again, _ = _stream(session, media[2], 320)
    assert [f.index for f in again] == list(range(10, 30))
    assert all(np.array_equal(f.image, e) for f, e in zip(again, offline))
    # Resumed at another position: the template goes on from there (outside the face, each frame is the template
    # frame its index shows), so the picture does not jump.
    session.idle(3)
    resumed = session.feed(media[2][:8000]) + session.end()
    assert resumed[0].index == 33 and [f.index for f in resumed] == list(range(33, 33 + len(resumed)))
    with VideoReader(media[0]) as reader:
        source = list(reader)
    for frame in resumed[:6]:
        shown = source[int(ping_pong(frame.index, len(template)))]
        assert np.array_equal(frame.image[:8], shown[:8]) and np.array_equal(frame.image[-8:], shown[-8:])


def test_the_idle_loop_is_the_template_dubbed_with_silence(media, models, prepared):
    prepared_template, spool, loop = prepared
    template = prepared_template.template
    period = loop_period(len(template))
    session = _session(prepared, models)
    idle = session.idle(2 * period + 3)
    assert [f.index for f in idle] == list(range(2 * period + 3))
    assert [f.time for f in idle] == pytest.approx([i / 25 for i in range(2 * period + 3)])  # no gaps
    assert all(np.array_equal(a.image, b.image) for a, b in zip(idle, idle[period:]))  # it loops
    with VideoReader(media[0]) as reader:
        source = list(reader)
    changed = [not np.array_equal(f.image, source[int(ping_pong(f.index, len(template)))]) for f in idle]
    assert changed == [bool(template.has_face[ping_pong(f.index, len(template))]) for f in idle]
    # Speech that is silence gives the same frames, away from the utterance's ends (which clamp its windows).
    silent = session.feed(np.zeros(int(0.6 * SAMPLE_RATE), np.int16)) + session.end()
    start = silent[0].index
    assert start == 2 * period + 3
    assert all(np.array_equal(f.image, idle[f.index % period].image) for f in silent[2:-2])


def test_the_idle_loop_is_kept_with_the_template_cache(models, prepared):
    prepared_template, spool, loop = prepared
    calls = []
    counted = _counting(calls)
    cached = idle_loop(prepared_template, models, _config(), spool)  # the fixture rendered and stored it
    assert all(np.array_equal(getattr(cached, name), getattr(loop, name)) for name in ("faces", "boxes", "outlines"))
    # Other weights (here another render step) are another entry: rendered again.
    other = idle_loop(prepared_template, replace(models, render_step=counted), _config(), spool)
    assert len(calls) == sum(prepared_template.template.has_face[ping_pong(np.arange(10), 5)])
    assert np.array_equal(other.faces, loop.faces)  # the same networks, so the same loop
    calls.clear()
    idle_loop(prepared_template, replace(models, render_step=counted), _config(), spool)
    assert calls == []  # read back: no network time


def test_chunks_in_other_formats(media, models, prepared):
    with pytest.raises(dubbing.live.InputError, match="int16 or float32"):
        _session(prepared, models).feed(media[2].astype(np.int32))
    # Another rate is resampled to 16 kHz (float32 chunks at 48 kHz here; the random chunking above feeds float32
    # at 16 kHz): as many frames as the audio lasts.
    upsampled = load_audio(media[1], 48000)[:14400]
    session = _session(prepared, models)
    frames = session.feed(upsampled[:7000], 48000) + session.feed(upsampled[7000:], 48000) + session.end()
    assert [f.index for f in frames] == list(range(7))


def _resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status here")


@pytest.mark.slow
def test_a_ten_minute_stream_keeps_memory_flat(media, models, prepared):
    """Ten minutes of speech in 1 s chunks, the frames dropped as they come: the session's mel and signal stay a few
    windows long, and the process's resident memory after the first minute stays within 64 MB."""
    session = _session(prepared, models)
    second = np.resize(media[2], SAMPLE_RATE)
    resident, made = [], 0
    for index in range(600):
        made += len(session.feed(second))
        utterance = session._utterance
        assert len(utterance.mel._rows) <= 40 and len(utterance.mel._signal) <= 2 * SAMPLE_RATE
        if index % 60 == 59:
            resident.append(_resident_mb())
    made += len(session.end())
    assert made == 600 * 25
    assert max(resident) - resident[0] < 64, resident
