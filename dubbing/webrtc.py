"""Live dubbing in the browser: the page live.py serves (dubbing/live_page.html) sends the microphone over WebRTC,
and each caller's LiveSession (dubbing/live.py, on the server's shared networks) sends the face back with the
voice, in sync (docs/live.md).

WebRTC through aiortc. Each output frame is a slot: its picture and the 1/fps seconds of the caller's audio that
the picture speaks (silence for the idle loop). A slot is given a play time on one clock when it is made, the
picture is sent at that time with it as its timestamp, and its audio is written into the outgoing audio at that
time, so picture and sound leave the server together whatever the networks' delay: the sound waits for its
frame, `lookahead_s` plus the frame's work. Both tracks are in one stream (RTCP sender reports map both
timestamps to one wall clock), and the page evens out what the browser's own buffers add (docs/live.md).

A voice-activity gate splits the microphone into utterances: between them the face runs the idle loop (no
network work) and the audio is not fed. Audio the networks cannot keep up with is skipped past MAX_BEHIND_S,
so the delay stays bounded on a slow machine, and the page is told how much was skipped.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import json
import time
from dataclasses import dataclass

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from data.errors import InputError, one_line
from dubbing.live import LiveFrame, LiveSession
from dubbing.stamp import stamp

RATE = 48000  # WebRTC's audio clock (Opus)
PACKET = 960  # samples of one outgoing audio frame, 20 ms
VIDEO_CLOCK = 90000  # RTP's video clock
VOICED_DB = -45.0  # a 20 ms stretch louder than this (RMS, dB below full scale) is speech
HANGOVER_S = 0.4  # an utterance ends after this much quiet
PREROLL_S = 0.2  # quiet audio before the first voiced stretch, fed with it (a word's onset is quiet)
MAX_BEHIND_S = 2.0  # audio waiting for the networks past this is skipped: the delay stays bounded
MARGIN_S = 0.04  # a slot plays at least this long after it is made (its audio is written before it is read)
IDLE_AHEAD_S = 0.12  # idle frames are made this far ahead of their play time
STATS_EVERY_S = 0.5


class Timeline:
    """The outgoing audio at RATE, indexed by samples since the call's clock started: slots write their audio at
    their play time, the audio track reads it a packet at a time and frees what it read; silence elsewhere."""

    def __init__(self):
        self.base = 0  # the sample index of buffer[0]
        self.buffer = np.zeros(0, np.int16)

    def write(self, position: int, audio: np.ndarray) -> None:
        if position < self.base:  # late (should not happen: slots play MARGIN_S ahead): drop what was read
            audio, position = audio[self.base - position:], self.base
        end = position + len(audio) - self.base
        if end > len(self.buffer):
            self.buffer = np.concatenate([self.buffer, np.zeros(end - len(self.buffer), np.int16)])
        self.buffer[position - self.base:end] = audio

    def read(self, position: int, count: int) -> np.ndarray:
        out = np.zeros(count, np.int16)
        start = max(position - self.base, 0)
        chunk = self.buffer[start:start + count]
        out[:len(chunk)] = chunk
        self.buffer = self.buffer[start + count:]
        self.base = position + count
        return out


@dataclass
class Slot:
    """An output frame as it was sent: its index, play time (s on the call's clock), whether it speaks, its
    audio (int16 at RATE), and when its picture and the packet with its audio's first sample were handed to
    WebRTC (s on the call's clock)."""

    index: int
    play: float
    speech: bool
    audio: np.ndarray
    picture_sent: float | None = None
    sound_sent: float | None = None


class Playout:
    """The call's clock and the slots waiting for their play time: `schedule` places a frame and its audio,
    OutgoingVideo and OutgoingAudio send them when the clock reaches them."""

    def __init__(self, rate: float, record: bool = False):
        self.start = time.monotonic()
        self.rate = rate
        self.last = -1.0 / rate  # play time of the last slot
        self.frames: collections.deque = collections.deque()  # (play time, index, image) not yet sent
        self.audio = Timeline()
        self.arrived = asyncio.Event()
        self.log: list[Slot] | None = [] if record else None  # every slot, for tests and benches
        self.unsounded: collections.deque = collections.deque()  # logged slots whose audio is not yet sent
        self.ended = False

    def now(self) -> float:
        return time.monotonic() - self.start

    def schedule(self, index: int, image: np.ndarray, audio: np.ndarray, speech: bool) -> float:
        """Place frame `index` with its audio (int16 at RATE) one frame after the last, or MARGIN_S from now
        if that has passed (the networks fell behind: picture and sound pause together); returns its play time."""
        play = max(self.last + 1.0 / self.rate, self.now() + MARGIN_S)
        self.last = play
        # The frame's stretch of the timeline ends where the next contiguous frame's begins (the same float):
        # its audio is fitted to it (a sample more or less), so sound never drifts from the pictures' times.
        start, end = int(round(play * RATE)), int(round((play + 1.0 / self.rate) * RATE))
        audio = np.pad(audio[:end - start], (0, max(end - start - len(audio), 0)))
        self.audio.write(start, audio)
        self.frames.append((play, index, image))
        self.arrived.set()
        if self.log is not None:
            self.log.append(Slot(index, play, speech, audio))
            self.unsounded.append(self.log[-1])
        return play

    def sent_picture(self, index: int) -> None:
        if self.log is not None:
            slot = next(slot for slot in reversed(self.log) if slot.index == index)
            slot.picture_sent = self.now()

    def sent_sound(self, start: int, end: int) -> None:
        """The packet of samples start..end-1 has been handed to WebRTC: a slot whose audio begins in it counts
        as sent when the packet was, plus its first sample's place in the packet."""
        while self.unsounded and int(round(self.unsounded[0].play * RATE)) < end:
            first = int(round(self.unsounded[0].play * RATE))
            self.unsounded.popleft().sound_sent = self.now() + max(first - start, 0) / RATE

    async def wait_until(self, play: float) -> None:
        delay = self.start + play - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class OutgoingVideo(MediaStreamTrack):
    """The dubbed frames, each sent at its play time with that time as its timestamp."""

    kind = "video"

    def __init__(self, playout: Playout):
        super().__init__()
        self.playout = playout

    async def recv(self) -> av.VideoFrame:
        while not self.playout.frames:
            if self.playout.ended:
                raise MediaStreamError
            self.playout.arrived.clear()
            await self.playout.arrived.wait()
        play, index, image = self.playout.frames[0]
        await self.playout.wait_until(play)
        self.playout.frames.popleft()
        self.playout.sent_picture(index)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = int(round(play * VIDEO_CLOCK)), fractions.Fraction(1, VIDEO_CLOCK)
        return frame


class OutgoingAudio(MediaStreamTrack):
    """The slots' audio, 20 ms at a time on the call's clock (a packet late is sent at once, so its timestamp
    stays that clock's)."""

    kind = "audio"

    def __init__(self, playout: Playout):
        super().__init__()
        self.playout, self.sent = playout, 0

    async def recv(self) -> av.AudioFrame:
        if self.playout.ended:
            raise MediaStreamError
        position = self.sent
        await self.playout.wait_until(position / RATE)
        self.sent += PACKET
        frame = av.AudioFrame.from_ndarray(self.playout.audio.read(position, PACKET)[None], format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, position, fractions.Fraction(1, RATE)
        self.playout.sent_sound(position, self.sent)
        return frame


def loudness_db(samples: np.ndarray) -> float:
    """RMS level of int16 samples in dB below full scale (-120 for digital silence)."""
    if len(samples) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean((samples.astype(np.float64) / 32768.0) ** 2)))
    return 20.0 * np.log10(max(rms, 1e-6))


class Gate:
    """Splits the microphone into utterances: `push` a chunk (with its arrival time), get back the chunks to feed
    and whether the utterance ended after them. An utterance starts at a voiced chunk (with up to PREROLL_S
    before it) and ends after HANGOVER_S of quiet."""

    def __init__(self):
        self.speaking = False
        self.quiet = 0  # samples of quiet since the last voiced chunk
        self.before: collections.deque = collections.deque()  # (chunk, arrival) of quiet kept while not speaking
        self.before_samples = 0

    def push(self, chunk: np.ndarray, arrived: float) -> tuple[list[tuple[np.ndarray, float]], bool]:
        voiced = loudness_db(chunk) > VOICED_DB
        if not self.speaking:
            self.before.append((chunk, arrived))
            self.before_samples += len(chunk)
            if not voiced:
                while self.before_samples - len(self.before[0][0]) >= PREROLL_S * RATE:
                    self.before_samples -= len(self.before.popleft()[0])
                return [], False
            fed = list(self.before)
            self.before.clear()
            self.before_samples, self.speaking, self.quiet = 0, True, 0
            return fed, False
        self.quiet = 0 if voiced else self.quiet + len(chunk)
        if self.quiet >= HANGOVER_S * RATE:
            self.speaking = False
            return [(chunk, arrived)], True
        return [(chunk, arrived)], False

    def reset(self) -> None:
        self.speaking, self.quiet = False, 0
        self.before.clear()
        self.before_samples = 0


class Utterance:
    """The audio fed to the session's current utterance, at RATE, kept until its frames are made (each frame
    plays its own stretch of it), with the time each piece arrived (for the latency)."""

    def __init__(self, start: int, rate: float):
        self.start, self.rate = start, rate  # the session index of its frame 0, the output frame rate
        self.base = 0  # samples dropped from the front
        self.audio = np.zeros(0, np.int16)
        self.arrivals: collections.deque = collections.deque()  # (end sample, arrival time on the call's clock)
        self.onset: int | None = None  # the sample where the voice starts (after the quiet fed before it)

    def add(self, samples: np.ndarray, arrived: float) -> None:
        self.audio = np.concatenate([self.audio, samples])
        self.arrivals.append((self.base + len(self.audio), arrived))

    def bounds(self, index: int) -> tuple[int, int]:
        step = index - self.start
        return int(round(step * RATE / self.rate)), int(round((step + 1) * RATE / self.rate))

    def speaks_onset(self, index: int) -> bool:
        """Frame `index` is the one whose audio holds the voice's first sample."""
        begin, end = self.bounds(index)
        return self.onset is not None and begin <= self.onset < end

    def take(self, index: int) -> tuple[np.ndarray, float]:
        """Frame `index`'s audio (zero-padded past the end: the last frames of an utterance outrun it) and the
        time its first sample arrived; frees the audio before it."""
        begin, end = self.bounds(index)
        chunk = self.audio[max(begin - self.base, 0):max(end - self.base, 0)]
        audio = np.zeros(end - begin, np.int16)
        audio[:len(chunk)] = chunk
        while len(self.arrivals) > 1 and self.arrivals[0][0] <= begin:
            self.arrivals.popleft()
        arrived = self.arrivals[0][1] if self.arrivals else 0.0
        drop = max(end - self.base, 0)
        self.audio, self.base = self.audio[drop:], self.base + drop
        return audio, arrived


class Caller:
    """One browser's call: its peer connection, its LiveSession on the server's networks, the microphone's
    gate, and the playout of what the session makes. `listen` (the microphone) and `begin` start its tasks;
    `close` ends them and frees all of it."""

    def __init__(self, server, session: LiveSession, pc: RTCPeerConnection, stamped: bool, record: bool = False):
        self.server, self.session, self.pc, self.stamped = server, session, pc, stamped
        self.playout = Playout(session.rate, record)
        self.gate = Gate()
        self.incoming: collections.deque = collections.deque()  # (int16 mono chunk at RATE, arrival time)
        self.waiting = 0  # samples in `incoming`
        self.wake = asyncio.Event()
        self.utterance: Utterance | None = None
        self.latencies: collections.deque = collections.deque(maxlen=25)
        self.first_latency: float | None = None  # the last utterance's
        self.first_latencies: collections.deque = collections.deque(maxlen=100)  # every utterance's, newest last
        self.skipped_s = 0.0
        self.channel = None
        self.tasks: list[asyncio.Task] = []
        self.closed = asyncio.Event()

    # ------------------------------------------------------------------ the call's tasks
    def listen(self, track: MediaStreamTrack) -> None:
        self.tasks.append(asyncio.create_task(self._microphone(track)))

    def begin(self) -> None:
        self.tasks += [asyncio.create_task(self._produce()), asyncio.create_task(self._report())]

    async def _microphone(self, track: MediaStreamTrack) -> None:
        mono = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        try:
            while True:
                frame = await track.recv()
                for part in mono.resample(frame):
                    self.incoming.append((part.to_ndarray()[0].copy(), self.playout.now()))
                    self.waiting += part.samples
                self.wake.set()
        except MediaStreamError:  # the browser stopped sending: the call is over
            await self.close()

    async def _produce(self) -> None:
        try:
            while not self.closed.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.5 / self.session.rate)
                self.wake.clear()
                if self.waiting > MAX_BEHIND_S * RATE:
                    self._skip()
                if self.incoming:
                    await self._hear()
                if not self.session.speaking:
                    await self._idle()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug must not take the server down: tell the page, end the call
            self.send("error", message=one_line(error))
            await self.close()

    async def _hear(self) -> None:
        """Feed what the gate lets through (one call on the networks for everything that waited)."""
        fed, ended = [], False
        while self.incoming and not ended:
            chunk, arrived = self.incoming.popleft()
            self.waiting -= len(chunk)
            parts, ended = self.gate.push(chunk, arrived)
            if parts and self.utterance is None:  # the voice starts in the last of these chunks
                self.utterance = Utterance(self.session.next_index, self.session.rate)
                self.utterance.onset = sum(len(part) for part, _ in parts[:-1])
            fed += parts
        if fed:
            for part, arrived in fed:
                self.utterance.add(part, arrived)
            self._play(await self._work(self.session.feed, np.concatenate([part for part, _ in fed]), RATE))
        if ended:
            self._play(await self._work(self.session.end))
            self.utterance = None
        if self.incoming:
            self.wake.set()

    async def _idle(self) -> None:
        """Idle frames up to IDLE_AHEAD_S from now (from now, not from the last frame: after a stall the idle
        loop does not queue up the time it lost)."""
        ahead = self.playout.now() + IDLE_AHEAD_S - max(self.playout.last, self.playout.now())
        if ahead > 0:
            self._play(await self._work(self.session.idle, int(np.ceil(ahead * self.session.rate))))

    def _skip(self) -> None:
        """The networks are MAX_BEHIND_S behind the microphone: drop the utterance and what waited."""
        self.skipped_s += self.waiting / RATE
        self.incoming.clear()
        self.waiting = 0
        self.session.interrupt()
        self.gate.reset()
        self.utterance = None
        self.send("skipped", seconds=round(self.skipped_s, 2))

    async def _work(self, call, *args) -> list[LiveFrame]:
        """`call(*args)` on the server's network worker (shared with every session), the frames stamped there."""
        def work():
            frames = call(*args) or []
            if self.stamped:
                for frame in frames:
                    frame.image = stamp(frame.image, frame.index)
            return frames

        return await asyncio.get_running_loop().run_in_executor(self.server.worker, work)

    def _play(self, frames: list[LiveFrame]) -> None:
        silence = np.zeros(0, np.int16)  # the playout pads it to the frame's length
        for frame in frames:
            if frame.speech and self.utterance is not None:
                onset = self.utterance.speaks_onset(frame.index)
                audio, arrived = self.utterance.take(frame.index)
                play = self.playout.schedule(frame.index, frame.image, audio, True)
                if onset:  # from the voice reaching the server to the face saying it
                    self.first_latency = play - arrived
                    self.first_latencies.append(self.first_latency)
                self.latencies.append(play - arrived)
            else:
                self.playout.schedule(frame.index, frame.image, silence, frame.speech)

    async def _report(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(STATS_EVERY_S)
            self.send("stats", first_frame_s=_rounded(self.first_latency),
                      steady_s=_rounded(float(np.median(self.latencies)) if self.latencies else None),
                      frames=self.session.next_index, skipped_s=round(self.skipped_s, 2))

    def send(self, event: str, **fields) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            with contextlib.suppress(Exception):
                self.channel.send(json.dumps({"event": event, **fields}))

    async def close(self) -> None:
        """End the call: its tasks, its tracks, its connection and its session (idempotent)."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.playout.ended = True
        self.playout.arrived.set()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.server.sessions.discard(self)  # the LiveSession goes with the Caller
        with contextlib.suppress(Exception):
            await self.pc.close()


def ice_servers(urls: list[str], username: str | None = None, credential: str | None = None
                ) -> tuple[RTCIceServer, ...]:
    """The STUN/TURN servers for calls (none on a LAN or through an SSH tunnel with UDP reachable); raises
    InputError for a URL that is neither."""
    for url in urls:
        if not url.startswith(("stun:", "turn:", "turns:")):
            raise InputError(f"--ice-server {url}", "expected a stun:, turn: or turns: URL")
        if url.startswith("turn") and not (username and credential):
            raise InputError(f"--ice-server {url}", "a TURN server needs --ice-username and --ice-credential")
    return tuple(RTCIceServer(urls=url, username=username, credential=credential) for url in urls)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


class Busy(InputError):
    """Every session place is taken (the page shows it; HTTP 503)."""


def _check_room(server) -> None:
    if len(server.sessions) >= server.max_sessions:
        raise Busy("start", f"busy, this server serves {server.max_sessions} sessions at once; try again later")


async def answer(server, request: dict, settings, stamped: bool) -> dict:
    """The server's side of an offer from the page: `request` holds the offer (`sdp`, `type`) and the start
    settings; `settings(request)` checks them as a WebSocket start is checked. Returns the answer; raises
    InputError (one line for the page) for bad settings, a busy server, or an offer without a microphone."""
    offer = {key: request.pop(key, None) for key in ("sdp", "type")}
    if not isinstance(offer["sdp"], str) or offer["type"] != "offer":
        raise InputError("offer", "expected a WebRTC offer: {\"sdp\": ..., \"type\": \"offer\", ...settings}")
    name, refs, fps, _, _ = settings(request)
    _check_room(server)
    face = await asyncio.get_running_loop().run_in_executor(server.worker, server.face, name, refs, fps)
    _check_room(server)  # again: another call may have taken the last place while this one waited
    session = LiveSession(face.prepared, server.models, {**server.config, "refs": refs}, face.idle, face.spool)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=list(server.ice_servers)))
    caller = Caller(server, session, pc, stamped, record=server.record)
    server.sessions.add(caller)
    if server.record:
        server.calls.append(caller)

    @pc.on("datachannel")
    def on_channel(channel) -> None:
        caller.channel = channel
        template = face.prepared.template

        @channel.on("open")
        def opened() -> None:
            caller.send("ready", template=name, fps=session.rate, width=template.size[0], height=template.size[1],
                        lookahead_s=round(session.lookahead_s, 4))

        @channel.on("close")
        async def channel_closed() -> None:
            await caller.close()

        if channel.readyState == "open":
            opened()

    @pc.on("track")
    def on_track(track) -> None:
        if track.kind == "audio":
            caller.listen(track)

    @pc.on("connectionstatechange")
    async def state_changed() -> None:
        if pc.connectionState in ("failed", "closed"):
            await caller.close()

    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        kinds = {transceiver.kind for transceiver in pc.getTransceivers()}
        if "audio" not in kinds:
            raise InputError("offer", "the offer carries no microphone (audio track)")
        pc.addTrack(OutgoingAudio(caller.playout))
        pc.addTrack(OutgoingVideo(caller.playout))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as error:
        await caller.close()
        if isinstance(error, InputError):
            raise
        raise InputError("offer", one_line(error)) from error
    caller.begin()
    return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
