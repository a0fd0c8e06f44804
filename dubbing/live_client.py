"""A client of the live dubbing server (live.py, docs/live.md): streams a WAV file (or any audio) as PCM16 chunks,
at real-time pace or as fast as the server takes them, and writes the dubbed frames that come back as an mp4
with that audio muxed.

    python -m dubbing.live_client --url ws://127.0.0.1:8765/live --audio speech.wav --out dubbed.mp4 --realtime
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import websocket

from data.audio import SAMPLE_RATE, load_audio
from data.errors import InputError, one_line
from dubbing.live_server import decode_header

SPEECH = 2  # the frame header's flag bit for frames that speak the fed audio


@dataclass
class Received:
    """What came back for one utterance: its frames by index (RGB arrays), the events in order, and timings in
    seconds from the first chunk sent: when each speech frame arrived and how much audio had been sent by then."""

    ready: dict
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    arrived: dict[int, float] = field(default_factory=dict)
    sent_at_arrival: dict[int, float] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    idle_frames: int = 0
    dropped: int = 0

    @property
    def errors(self) -> list[str]:
        return [event["message"] for event in self.events if event["event"] == "error"]


def pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in -1..1 as int16 (the protocol's sample format)."""
    return (np.clip(samples, -1, 1) * 32767).astype("<i2")


def stream(url: str, samples: np.ndarray, *, realtime: bool = False, chunk_s: float = 0.02,
           start: dict | None = None, timeout: float = 120.0) -> Received:
    """Stream int16 `samples` (16 kHz unless `start` says another sample_rate) to the server at `url` as one
    utterance, then `end`; returns what came back by the time the server went idle again."""
    start = {"type": "start", **(start or {})}
    rate = int(start.get("sample_rate", SAMPLE_RATE))
    connection = websocket.create_connection(url, timeout=timeout)
    try:
        connection.send(json.dumps(start))
        ready = _wait_ready(connection)
        received = Received(ready)
        state = {"sent": 0.0, "t0": None}
        sender = threading.Thread(target=_send, args=(connection, samples, rate, chunk_s, realtime, state),
                                  daemon=True)
        sender.start()
        _receive(connection, received, state)
        sender.join()
        return received
    finally:
        connection.close()


def _wait_ready(connection: websocket.WebSocket) -> dict:
    while True:
        message = connection.recv()
        if isinstance(message, str):
            event = json.loads(message)
            if event["event"] == "ready":
                return event
            if event["event"] == "error":
                raise InputError("server", event["message"])


def _send(connection: websocket.WebSocket, samples: np.ndarray, rate: int, chunk_s: float, realtime: bool,
          state: dict) -> None:
    step = max(1, int(round(chunk_s * rate)))
    state["t0"] = time.monotonic()
    for first in range(0, len(samples), step):
        if realtime:
            time.sleep(max(0.0, state["t0"] + first / rate - time.monotonic()))
        connection.send_binary(samples[first:first + step].tobytes())
        state["sent"] = min(first + step, len(samples)) / rate
    connection.send(json.dumps({"type": "end"}))
    state["ended"] = True


def _receive(connection: websocket.WebSocket, received: Received, state: dict) -> None:
    """Frames and events until the server goes idle after the end was sent."""
    while True:
        message = connection.recv()
        if isinstance(message, str):
            event = json.loads(message)
            received.events.append(event)
            if event["event"] == "dropped":
                received.dropped = event["total"]
            if event["event"] == "idle" and state.get("ended"):
                return
            continue
        index, _, flags, jpeg = decode_header(message)
        if not flags & SPEECH:
            received.idle_frames += 1
            continue
        now = time.monotonic() - (state["t0"] or time.monotonic())
        received.frames[index] = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR),
                                              cv2.COLOR_BGR2RGB)
        received.arrived[index] = now
        received.sent_at_arrival[index] = state["sent"]


def speech_frames(received: Received) -> list[np.ndarray]:
    """The utterance's frames in order, a dropped one filled with the frame before it (the audio stays in sync)."""
    indices = sorted(received.frames)
    if not indices:
        return []
    frames, last = [], received.frames[indices[0]]
    for index in range(indices[0], indices[-1] + 1):
        last = received.frames.get(index, last)
        frames.append(last)
    return frames


def write_video(received: Received, audio: Path, output: Path, crf: int = 18) -> int:
    """The utterance's frames as an mp4 with `audio` muxed (dubbing/writer.py); returns the frames written."""
    from dubbing.writer import Outputs

    frames = speech_frames(received)
    if not frames:
        raise InputError(output, "the server sent no speech frames")
    rate = 48000
    muxed = load_audio(audio, rate)[:int(round(len(frames) / received.ready["fps"] * rate))]
    outputs = Outputs(output, None, received.ready["fps"], muxed, rate, crf, "libx264")
    try:
        for frame in frames:
            outputs.write(frame)
        outputs.close()
    except BaseException:
        outputs.abort()
        raise
    return len(frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the server's WebSocket, e.g. ws://127.0.0.1:8765/live")
    parser.add_argument("--audio", required=True, type=Path, help="the speech to send (any audio file)")
    parser.add_argument("--out", required=True, type=Path, help="the dubbed video to write (.mp4)")
    parser.add_argument("--realtime", action="store_true", help="send at real-time pace (default: as fast as the "
                                                                "server takes it)")
    parser.add_argument("--chunk-ms", type=float, default=20.0, help="audio per message (default 20)")
    parser.add_argument("--template", help="the template's name on the server (needed when it has several)")
    parser.add_argument("--refs", type=int, help="reference images (default: the server's)")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the frames (default 80)")
    args = parser.parse_args(argv)
    start = {"quality": args.quality}
    start.update({key: value for key, value in (("template", args.template), ("refs", args.refs)) if value})
    try:
        samples = pcm16(load_audio(args.audio, SAMPLE_RATE))
        received = stream(args.url, samples, realtime=args.realtime, chunk_s=args.chunk_ms / 1000, start=start)
        for message in received.errors:
            print(f"error: server: {message}", file=sys.stderr)
        count = write_video(received, args.audio, args.out)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, websocket.WebSocketException) as error:
        print(f"error: {args.url}: {one_line(error)}", file=sys.stderr)
        return 3
    latency = [received.sent_at_arrival[i] - (i - min(received.frames)) / received.ready["fps"]
               for i in received.frames]
    print(f"{count} frames to {args.out} ({received.dropped} dropped, {received.idle_frames} idle frames skipped); "
          f"first frame {min(received.arrived.values()):.3f} s after the first chunk; audio sent ahead of a frame "
          f"when it arrived: median {np.median(latency):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
