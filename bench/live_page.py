"""The live page's WebRTC path (dubbing/webrtc.py) without a browser: an aiortc client calls live.py's app in this
process, its microphone a WAV of speech with pauses played in real time, and receives the face and the voice.

  python -m bench.live_page [--device cuda] [--refs 25] [--face-size 128] [--seconds 20] [--json live_page.json]
  python -m bench.live_page --device cpu --refs 1 --seconds 6 --stand-in     # the path alone, on a CPU

For a GPU server, where no browser runs: the page's figures from the server's side, as tests/test_live_page.py
measures them in Chromium. Random weights in this project's layout (speed does not depend on their values);
--stand-in replaces the render step with a blend that costs nothing, to time the path alone. Printed: frames the
server made and the client received, the first-frame and steady latency (the voice reaching the server to the
face saying it), audio skipped, how far apart each picture and its sound were handed to WebRTC (mean, worst), and
how long after its play time each picture reached the client decoded (mean, worst; the same process's clock).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import uvicorn

from bench.gpu_live import random_models
from bench.live import speech, template_clip
from data.audio import SAMPLE_RATE
from dubbing.live_server import Server, make_app
from dubbing.stamp import read_stamp
from testing.audio import write_wav
from testing.browser import free_port


def microphone(seconds: float) -> np.ndarray:
    """The sample speech in 2 s stretches with 1 s pauses (the voice gate ends an utterance in each pause)."""
    voice, out = speech(seconds), []
    for start in range(0, len(voice), 2 * SAMPLE_RATE):
        out += [voice[start:start + 2 * SAMPLE_RATE], np.zeros(SAMPLE_RATE, np.float32)]
    return np.concatenate(out)[:int(seconds * SAMPLE_RATE)]


def stand_in(renderer, refs, faces, sketches, mels):
    """A render step that costs nothing and still depends on its inputs (as the tests' stand-in)."""
    return 0.6 * faces + 0.4 * sketches.mean(dim=1) + 0.05 * mels.mean(dim=(1, 2, 3))[:, None, None, None]


async def call(base: str, wav: Path, seconds: float) -> list[tuple[float, int | None]]:
    """One call from an aiortc client: the WAV as its microphone for `seconds`; returns (arrival time, stamped
    index) per picture received."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer
    from aiortc.mediastreams import MediaStreamError

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    player = MediaPlayer(str(wav))
    pc.addTrack(player.audio)
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("events")
    received, readers = [], []

    async def read(track) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    received.append((time.monotonic(), read_stamp(frame.to_ndarray(format="rgb24"))))
        except MediaStreamError:
            pass

    pc.on("track", lambda track: readers.append(asyncio.ensure_future(read(track))))
    await pc.setLocalDescription(await pc.createOffer())
    body = json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"}).encode()

    def post() -> dict:
        request = urllib.request.Request(base + "offer", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())

    answer = await asyncio.get_running_loop().run_in_executor(None, post)
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    await asyncio.sleep(seconds)
    await pc.close()
    for reader in readers:
        reader.cancel()
    return received


def summary(caller, received: list[tuple[float, int | None]]) -> dict:
    """The call's figures from the server's record of it and the client's pictures."""
    slots = {slot.index: slot for slot in caller.playout.log}
    apart = [slot.picture_sent - slot.sound_sent for slot in slots.values()
             if slot.picture_sent is not None and slot.sound_sent is not None]
    late = [arrived - (caller.playout.start + slots[index].play) for arrived, index in received if index in slots]
    return {"frames_made": len(slots), "frames_received": len(received),
            "speech_frames": sum(slot.speech for slot in slots.values()),
            "first_frame_s": float(np.median(caller.first_latencies)) if caller.first_latencies else None,
            "steady_s": float(np.median(caller.latencies)) if caller.latencies else None,
            "skipped_s": caller.skipped_s,
            "picture_minus_sound_ms": [1000 * float(np.mean(apart)), 1000 * float(np.max(np.abs(apart)))],
            "picture_to_client_ms": [1000 * float(np.mean(late)), 1000 * float(np.max(late))] if late else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--refs", type=int, default=25)
    parser.add_argument("--face-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the call (default 20)")
    parser.add_argument("--template-frames", type=int, default=50)
    parser.add_argument("--stand-in", action="store_true", help="a render step that costs nothing")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import dubbing

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        models = random_models(folder, args.face_size, args.device)
        if args.stand_in:
            models = replace(models, render_step=stand_in)
        config = {**dubbing.default_config(), "refs": args.refs}
        config["cache"] = {**config["cache"], "enabled": False}
        template = template_clip(folder, args.template_frames)
        server = Server(models, config, {"face": template}, folder, stamp=True, record=True)
        started = time.perf_counter()
        server.face("face", args.refs, config["output"]["fps"])  # prepared before the call, as live.py does
        print(f"template prepared (FaceMesh pass and idle loop) in {time.perf_counter() - started:.1f} s")
        port = free_port()
        runner = uvicorn.Server(uvicorn.Config(make_app(server), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        while not runner.started:
            time.sleep(0.05)
        wav = write_wav(folder / "microphone.wav", microphone(args.seconds))
        received = asyncio.run(call(f"http://127.0.0.1:{port}/", wav, args.seconds))
        row = {"device": args.device, "refs": args.refs, "face_size": args.face_size, "stand_in": args.stand_in,
               **summary(server.calls[-1], received)}
        runner.should_exit = True
        thread.join(timeout=30)
        server.close()
    print(json.dumps(row, indent=1))
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
