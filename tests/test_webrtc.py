"""The parts of the live page's calls (dubbing/webrtc.py, dubbing/stamp.py) that need no browser: the frame-index
stamp read back through lossy coding, the outgoing audio timeline, the voice gate, each frame's stretch of
audio, the playout clock, the ICE server settings, and live.py refusing a template without a face."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from data.errors import InputError
from dubbing import webrtc
from dubbing.live import LiveFrame
from dubbing.stamp import BITS, read_stamp, stamp


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def test_a_stamped_index_reads_back_after_lossy_coding_and_scaling(talk_a_frames):
    face = talk_a_frames[0]
    assert read_stamp(face) is None  # a picture without a stamp is not read as one
    for size in (64, 160, 512):
        base = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
        for index in (0, 1, 5, 1234, 2 ** BITS - 1, 2 ** BITS + 7):
            stamped = stamp(base, index)
            assert read_stamp(stamped) == index % 2 ** BITS
            assert read_stamp(_jpeg(cv2.GaussianBlur(stamped, (3, 3), 0), 25)) == index % 2 ** BITS
            assert np.array_equal(stamped[size // 3:], base[size // 3:])  # only the top edge is touched
    with pytest.raises(ValueError, match="too small"):
        stamp(np.zeros((32, 32, 3), np.uint8), 3)


def test_the_timeline_plays_each_write_at_its_sample_and_silence_elsewhere():
    timeline = webrtc.Timeline()
    timeline.write(1000, np.full(500, 7, np.int16))
    timeline.write(2900, np.full(200, 9, np.int16))
    packets = [timeline.read(position, webrtc.PACKET) for position in range(0, 4 * webrtc.PACKET, webrtc.PACKET)]
    played = np.concatenate(packets)
    expected = np.zeros(4 * webrtc.PACKET, np.int16)
    expected[1000:1500], expected[2900:3100] = 7, 9
    assert np.array_equal(played, expected)
    assert len(timeline.buffer) == 0  # what was read is freed
    timeline.write(4 * webrtc.PACKET - 40, np.full(100, 5, np.int16))  # partly before what was read: that part
    expected = np.zeros(100, np.int16)                                 # is dropped
    expected[:60] = 5
    assert np.array_equal(timeline.read(4 * webrtc.PACKET, 100), expected)


def _chunk(level: float, seconds: float = 0.02) -> np.ndarray:
    n = int(seconds * webrtc.RATE)
    return (level * 32767 * np.sin(np.arange(n) / 7.0)).astype(np.int16)


def test_the_gate_starts_at_a_voice_with_what_came_before_and_ends_after_the_hangover():
    gate = webrtc.Gate()
    quiet, loud = _chunk(0.0005), _chunk(0.3)
    for n in range(30):  # 0.6 s of quiet: nothing fed
        assert gate.push(quiet, n) == ([], False)
    fed, ended = gate.push(loud, 30)
    assert not ended and [arrived for _, arrived in fed] == list(range(20, 31))  # 0.2 s before the voice, with
    assert sum(len(chunk) for chunk, _ in fed) == int((webrtc.PREROLL_S + 0.02) * webrtc.RATE)  # their own times
    for n in range(int(webrtc.HANGOVER_S / 0.02) - 1):  # quiet shorter than the hangover: still the utterance
        assert gate.push(quiet, 31 + n) == ([(quiet, 31 + n)], False)
    fed, ended = gate.push(quiet, 99)
    assert ended and fed == [(quiet, 99)]
    assert gate.push(quiet, 100) == ([], False)
    assert webrtc.loudness_db(loud) > webrtc.VOICED_DB > webrtc.loudness_db(quiet)


def test_each_frame_plays_its_own_stretch_of_the_utterance():
    utterance = webrtc.Utterance(start=40, rate=25.0)
    audio = np.arange(5000, dtype=np.int16)
    utterance.add(audio[:3000], 1.0)
    utterance.add(audio[3000:], 1.5)
    piece, arrived = utterance.take(40)
    assert np.array_equal(piece, audio[:1920]) and arrived == 1.0
    piece, arrived = utterance.take(41)
    assert np.array_equal(piece, audio[1920:3840]) and arrived == 1.0  # its first sample came with the first add
    piece, arrived = utterance.take(42)  # past the end: zero-padded
    assert np.array_equal(piece[:5000 - 3840], audio[3840:]) and not piece[5000 - 3840:].any() and arrived == 1.5
    assert len(utterance.audio) == 0
    odd = webrtc.Utterance(start=0, rate=29.97)  # a rate that does not divide 48 kHz: the stretches still tile
    assert [odd.bounds(i) for i in range(3)] == [(0, 1602), (1602, 3203), (3203, 4805)]


def test_the_playout_spaces_frames_by_the_rate_and_pauses_sound_with_the_picture():
    rate = 29.97  # 48 kHz / 29.97 is not whole: the frames' stretches must still tile the timeline exactly
    playout = webrtc.Playout(rate, record=True)
    image = np.zeros((8, 8, 3), np.uint8)
    plays = [playout.schedule(i, image, np.full(1602, i + 1, np.int16), True) for i in range(300)]
    assert np.allclose(np.diff(plays), 1 / rate) and plays[0] >= webrtc.MARGIN_S
    start = int(round(plays[0] * webrtc.RATE))
    sound = playout.audio.buffer[start - playout.audio.base:]
    ends = [int(round(play * webrtc.RATE)) - start for play in plays] + [len(sound)]
    assert ends[-1] == int(round((plays[-1] + 1 / rate) * webrtc.RATE)) - start
    for i in range(300):  # frame i's audio fills its stretch, no gap, no overlap, no drift
        assert (sound[ends[i]:ends[i + 1]] == i + 1).all()
    playout.start -= plays[-1] + 0.1  # the clock passes the last frame (the networks fell behind): picture and
    # sound pause together
    late = playout.schedule(300, image, np.zeros(1602, np.int16), False)
    assert late - plays[-1] > 1.5 / rate and late >= playout.now() + webrtc.MARGIN_S - 0.01
    assert [slot.index for slot in playout.log] == list(range(301))


def test_ice_servers_are_checked():
    assert webrtc.ice_servers([]) == ()
    assert webrtc.ice_servers(["stun:127.0.0.1:3478"])[0].urls == "stun:127.0.0.1:3478"
    turn = webrtc.ice_servers(["turn:127.0.0.1:3478?transport=tcp"], "me", "secret")[0]
    assert (turn.username, turn.credential) == ("me", "secret")
    with pytest.raises(InputError, match="needs --ice-username"):
        webrtc.ice_servers(["turn:127.0.0.1:3478"])
    with pytest.raises(InputError, match="stun:, turn: or turns:"):
        webrtc.ice_servers(["http://example.org"])


class _Session:
    """A stand-in LiveSession (no networks): frame k of an utterance is final once the audio reaches k/25 s plus
    the lookahead; each frame's picture is its index."""

    rate, lookahead_s = 25.0, 0.2125

    def __init__(self):
        self.next_index, self.speaking, self.fed, self.given, self.start = 0, False, 0, 0, 0
        self.interrupted = 0

    def _frames(self, final: int, speech: bool) -> list:
        frames = [LiveFrame(self.start + k, (self.start + k) / self.rate, np.full((4, 4, 3), k % 256, np.uint8),
                            True, speech) for k in range(self.given, final)]
        self.given = max(self.given, final)
        return frames

    def feed(self, samples: np.ndarray, rate: int) -> list:
        if not self.speaking:
            self.speaking, self.start, self.given, self.fed = True, self.next_index, 0, 0
        self.fed += len(samples)
        return self._frames(max(int((self.fed / rate - self.lookahead_s) * self.rate), 0), True)

    def end(self) -> list:
        frames = self._frames(int(np.ceil(self.fed / webrtc.RATE * self.rate)), True)
        self.speaking, self.next_index = False, self.start + self.given
        return frames

    def interrupt(self) -> None:
        self.speaking, self.next_index = False, self.start + self.given
        self.interrupted += 1

    def idle(self, count: int) -> list:
        frames = [LiveFrame(i, i / self.rate, np.zeros((4, 4, 3), np.uint8), True, False)
                  for i in range(self.next_index, self.next_index + count)]
        self.next_index += count
        return frames


@pytest.fixture
def caller():
    server = SimpleNamespace(worker=concurrent.futures.ThreadPoolExecutor(1), sessions=set())
    yield webrtc.Caller(server, _Session(), None, stamped=False, record=True)
    server.worker.shutdown()


def _microphone(caller, chunks: list[np.ndarray]) -> None:
    for n, chunk in enumerate(chunks):
        caller.incoming.append((chunk, 0.02 * n))
        caller.waiting += len(chunk)


def test_a_caller_plays_each_spoken_frame_with_its_own_audio(caller):
    quiet, loud = _chunk(0.0005), _chunk(0.3)
    chunks = [quiet] * 15 + [loud] * 25 + [quiet] * 25  # 0.3 s quiet, 0.5 s voice, then quiet past the hangover
    _microphone(caller, chunks)
    while caller.incoming:
        asyncio.run(caller._hear())
    assert caller.utterance is None and not caller.session.speaking  # the hangover ended the utterance
    spoken = [slot for slot in caller.playout.log if slot.speech]
    # Fed: the 0.2 s before the voice, the voice, the quiet up to the hangover; each frame plays its 1/25 s.
    fed = np.concatenate([quiet] * 10 + [loud] * 25 + [quiet] * 20)
    played = np.concatenate([slot.audio for slot in spoken])
    assert np.array_equal(played[:len(fed)], fed) and not played[len(fed):].any()
    assert [slot.index for slot in spoken] == list(range(len(spoken)))
    assert np.allclose(np.diff([slot.play for slot in spoken]), 0.04)
    # The first-frame latency is the voice's: frame 5 (0.2 s of quiet before it) from its chunk's arrival.
    assert caller.first_latencies == collections.deque([spoken[5].play - 0.02 * 15])


def test_a_caller_too_far_behind_skips_and_idles_from_now(caller):
    _microphone(caller, [_chunk(0.3)] * int(webrtc.MAX_BEHIND_S / 0.02 + 5))
    asyncio.run(caller._hear())  # the utterance starts, frames up to what arrived
    _microphone(caller, [_chunk(0.3)] * int(webrtc.MAX_BEHIND_S / 0.02 + 5))
    caller._skip()  # what _produce does when more than MAX_BEHIND_S waits
    assert caller.skipped_s == pytest.approx(webrtc.MAX_BEHIND_S + 0.1) and caller.waiting == 0
    assert caller.session.interrupted == 1 and caller.utterance is None and not caller.incoming
    caller.playout.start -= 10  # ten seconds pass without a frame (a stall)
    asyncio.run(caller._idle())
    idle = [slot for slot in caller.playout.log if not slot.speech]
    # Idle frames cover IDLE_AHEAD_S from now (3 frames), not the ten seconds lost, starting MARGIN_S from now.
    assert len(idle) == int(np.ceil(webrtc.IDLE_AHEAD_S * 25)) == 3
    assert idle[0].play - caller.playout.now() == pytest.approx(webrtc.MARGIN_S, abs=0.01)
    assert idle[0].index == caller.session.start + caller.session.given  # the output goes on without a gap
