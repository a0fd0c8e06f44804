"""The live dubbing server behind live.py: a WebSocket endpoint (FastAPI on uvicorn) where each client drives its
own LiveSession (dubbing/live.py) on networks loaded once, and the browser page whose calls do the same over
WebRTC (dubbing/webrtc.py). The protocol is in docs/live.md.

Every session's network work runs on one worker thread, one call at a time (the clients share the networks and
the cores); the event loop only moves messages. Each client's outgoing frames wait in a queue of at most
QUEUED_FRAMES: a client that reads slower than frames are made loses the oldest ones and is told how many.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse

from data.audio import SAMPLE_RATE
from data.errors import InputError, one_line
from dubbing.frames import FrameSpool
from dubbing.idle import IdleLoop, idle_loop
from dubbing.live import LiveFrame, LiveSession
from dubbing.network import Models
from dubbing.pipeline import Prepared, prepare_template

FRAME_HEADER = struct.Struct("<IIB")  # frame index, time in ms, flags (bit 0: face dubbed, bit 1: speech)
MAX_CHUNK_SECONDS = 5.0  # the longest PCM chunk a client may send at once
QUEUED_FRAMES = 50  # frames waiting for a slow reader (2 s at 25 fps) before the oldest are dropped
MAX_SETTINGS = 4  # distinct (template, refs, fps) preparations a server keeps
MAX_SESSIONS = 8  # clients with a session at once: every session's frames go through the one network worker
QUALITY = 80  # JPEG quality unless the start message says
MESSAGES = ("start", "end", "interrupt")
MAX_OFFER_BYTES = 64 * 1024  # an SDP offer is a few kB
PAGE = Path(__file__).with_name("live_page.html")


@dataclass
class Face:
    """A template prepared for live sessions with one choice of settings, shared by every client that picks it."""

    prepared: Prepared
    idle: IdleLoop
    spool: FrameSpool


@dataclass
class Server:
    """What the clients share: the networks, the base config, the templates by name, and their preparations."""

    models: Models
    config: dict
    templates: dict[str, Path]
    spool_dir: Path
    faces: dict[tuple, Face] = field(default_factory=dict)
    sessions: set = field(default_factory=set)  # one entry per connected client with a session
    max_sessions: int = MAX_SESSIONS
    worker: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="live-net"))
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed: dict[tuple, str] = field(default_factory=dict)  # preparations that failed, with their one-line error
    stamp: bool = False  # test mode: each frame's index stamped as a barcode (dubbing/stamp.py)
    ice_servers: tuple = ()  # aiortc RTCIceServer entries, also given to the page
    record: bool = False  # keep each WebRTC call (its slots) in `calls`, for tests and benches
    calls: list = field(default_factory=list)

    def face(self, name: str, refs: int | str, fps: float | str) -> Face:
        """The preparation of template `name` at `refs` and `fps` (prepared, and its idle loop rendered or read
        from the template cache, on first use; a failure is kept and raised again as it was). Runs on the
        worker thread."""
        key = (name, refs, fps)
        if key in self.failed:  # named as the clients name it: a visitor is not shown the server's paths
            raise InputError(f"template {name!r}", self.failed[key])
        if key not in self.faces:
            if len(self.faces) >= MAX_SETTINGS:
                raise InputError("start", f"this server keeps {MAX_SETTINGS} template settings at most; use one of "
                                          f"those already asked for")
            config = {**self.config, "refs": refs, "output": {**self.config["output"], "fps": fps}}
            try:
                prepared = prepare_template(self.templates[name], self.models, config, progress=False)
            except InputError as error:
                self.failed[key] = error.problem
                raise InputError(f"template {name!r}", error.problem) from None
            spool = prepared.frame_spool(self.spool_dir)
            self.faces[key] = Face(prepared, idle_loop(prepared, self.models, config, spool), spool)
        return self.faces[key]

    def close(self) -> None:
        self.worker.shutdown(wait=True)
        for face in self.faces.values():
            face.prepared.close()


def template_names(paths: list[Path]) -> dict[str, Path]:
    """Templates by the name clients pick them with (the file's stem); raises InputError on a missing file or
    two files of one name."""
    names: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            raise InputError(path, "no such file")
        if path.stem in names:
            raise InputError(path, f"two templates are named {path.stem!r} (rename one)")
        names[path.stem] = path
    return names


def encode_frame(frame: LiveFrame, quality: int) -> bytes:
    """A frame as the server sends it: FRAME_HEADER then the JPEG of the RGB image."""
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    flags = int(frame.dubbed) | (int(frame.speech) << 1)
    return FRAME_HEADER.pack(frame.index, int(round(frame.time * 1000)), flags) + jpeg.tobytes()


def decode_header(message: bytes) -> tuple[int, int, int, bytes]:
    """A frame message -> index, time in ms, flags and the JPEG bytes."""
    index, millis, flags = FRAME_HEADER.unpack_from(message)
    return index, millis, flags, message[FRAME_HEADER.size:]


def start_settings(server: Server, request: dict) -> tuple[str, int | str, float | str, int, int]:
    """The start message's settings, checked: template name, refs, fps, JPEG quality, sample rate."""
    unknown = set(request) - {"type", "template", "refs", "fps", "quality", "sample_rate"}
    if unknown:
        raise InputError("start", f"unknown settings {', '.join(sorted(unknown))}")
    templates = server.templates
    name = request.get("template")
    if name is None:
        if len(templates) != 1:
            raise InputError("start", f"no template named (this server has: {', '.join(sorted(templates))})")
        name = next(iter(templates))
    if name not in templates:
        raise InputError("start", f"no template named {name!r} (this server has: {', '.join(sorted(templates))})")
    refs, most = request.get("refs", server.config["refs"]), server.config["max_refs"]
    if not (refs == "fifth" or (isinstance(refs, int) and not isinstance(refs, bool) and 1 <= refs <= most)):
        raise InputError("start", f"refs={refs!r}: refs takes a number from 1 to {most} or 'fifth'")
    fps = request.get("fps", server.config["output"]["fps"])
    if not (fps == "template" or (isinstance(fps, (int, float)) and not isinstance(fps, bool) and 1 <= fps <= 60)):
        raise InputError("start", f"fps={fps!r}: fps takes 'template' or a rate from 1 to 60")
    quality = request.get("quality", QUALITY)
    if not (isinstance(quality, int) and not isinstance(quality, bool) and 1 <= quality <= 100):
        raise InputError("start", f"quality={quality!r}: the JPEG quality takes a number from 1 to 100")
    rate = request.get("sample_rate", SAMPLE_RATE)
    if not (isinstance(rate, int) and not isinstance(rate, bool) and 8000 <= rate <= 48000):
        raise InputError("start", f"sample_rate={rate!r}: takes a rate from 8000 to 48000 Hz")
    return name, refs, float(fps) if fps != "template" else fps, quality, rate


class Outbox:
    """A client's outgoing messages in order: events always kept, frames at most `limit` (the oldest dropped
    first, and counted)."""

    def __init__(self, limit: int = QUEUED_FRAMES):
        self.items: collections.deque = collections.deque()  # (is_frame, payload)
        self.limit, self.queued, self.dropped, self.reported = limit, 0, 0, 0
        self.ready = asyncio.Event()

    @property
    def frames(self) -> list[bytes]:
        return [payload for is_frame, payload in self.items if is_frame]

    def frame(self, data: bytes) -> None:
        self.items.append((True, data))
        self.queued += 1
        if self.queued > self.limit:
            oldest = next(n for n, (is_frame, _) in enumerate(self.items) if is_frame)
            del self.items[oldest]
            self.queued -= 1
            self.dropped += 1
        self.ready.set()

    def event(self, name: str, **fields) -> None:
        self.items.append((False, json.dumps({"event": name, **fields})))
        self.ready.set()

    async def pump(self, websocket: WebSocket) -> None:
        """Send until cancelled, in order; before a frame, the dropped-frames count when it grew."""
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.items:
                if self.dropped > self.reported:
                    await websocket.send_text(json.dumps({"event": "dropped", "count": self.dropped - self.reported,
                                                          "total": self.dropped}))
                    self.reported = self.dropped
                    continue
                is_frame, payload = self.items.popleft()
                if is_frame:
                    self.queued -= 1
                    await websocket.send_bytes(payload)
                else:
                    await websocket.send_text(payload)


class Client:
    """One connection's state: its session (after `start`), its outbox, and the output clock that paces idle
    frames."""

    def __init__(self, server: Server, websocket: WebSocket):
        self.server, self.websocket = server, websocket
        self.outbox = Outbox()
        self.session: LiveSession | None = None
        self.quality = QUALITY
        self.sample_rate = SAMPLE_RATE
        self.clock = 0.0  # wall time of output frame 0: idle frames are given out as the clock reaches them
        self.was_speaking = False

    async def run_on_worker(self, call, *args):
        """`call(*args)` on the shared worker thread (the networks), its frames encoded there too."""
        def work():
            frames = call(*args)
            return [encode_frame(f, self.quality) for f in frames or []]

        return await asyncio.get_running_loop().run_in_executor(self.server.worker, work)

    def send(self, frames: list[bytes]) -> None:
        for data in frames:
            self.outbox.frame(data)

    def error(self, message: str) -> None:
        self.outbox.event("error", message=" ".join(message.split()))

    async def handle(self, message: dict) -> None:
        if "bytes" in message and message["bytes"] is not None:
            await self.audio(message["bytes"])
            return
        try:
            request = json.loads(message.get("text") or "")
        except json.JSONDecodeError:
            self.error("a text message must be JSON: {\"type\": \"start\" | \"end\" | \"interrupt\", ...}")
            return
        kind = request.get("type") if isinstance(request, dict) else None
        if kind not in MESSAGES:
            self.error(f"unknown message type {kind!r} (expected one of {', '.join(MESSAGES)})")
        elif kind == "start":
            await self.start(request)
        elif self.session is None:
            self.error(f"{kind} before start")
        elif kind == "end":
            self.send(await self.run_on_worker(self.session.end))
            self.went_idle()
        else:
            await self.run_on_worker(self.session.interrupt)
            self.went_idle()

    async def start(self, request: dict) -> None:
        if self.session is not None:
            self.error("start: this connection has a session already")
            return
        if len(self.server.sessions) >= self.server.max_sessions:
            self.error(f"start: busy, this server serves {self.server.max_sessions} sessions at once; try again later")
            return
        try:
            name, refs, fps, quality, rate = start_settings(self.server, request)
            face = await asyncio.get_running_loop().run_in_executor(
                self.server.worker, self.server.face, name, refs, fps)
        except InputError as error:
            self.error(str(error))
            return
        self.quality, self.sample_rate = quality, rate
        self.session = LiveSession(face.prepared, self.server.models,
                                   {**self.server.config, "refs": refs}, face.idle, face.spool)
        self.server.sessions.add(self)
        self.clock = time.monotonic()
        template = face.prepared.template
        self.outbox.event("ready", template=name, fps=template.fps, width=template.size[0],
                          height=template.size[1], lookahead_s=round(self.session.lookahead_s, 4),
                          sample_rate=self.sample_rate)

    async def audio(self, data: bytes) -> None:
        if self.session is None:
            self.error("audio before start")
            return
        if len(data) % 2:
            self.error(f"an audio chunk of {len(data)} bytes: expected PCM16 (little-endian 16-bit mono samples, "
                       f"an even number of bytes)")
            return
        if len(data) > MAX_CHUNK_SECONDS * self.sample_rate * 2:
            self.error(f"an audio chunk of {len(data)} bytes is longer than {MAX_CHUNK_SECONDS:g} s; send smaller "
                       f"chunks")
            return
        samples = np.frombuffer(data, "<i2")
        if not self.session.speaking:
            self.outbox.event("speaking", index=self.session.next_index)
        try:
            self.send(await self.run_on_worker(self.session.feed, samples, self.sample_rate))
        except InputError as error:
            self.error(str(error))
        self.was_speaking = True

    def went_idle(self) -> None:
        if self.was_speaking:
            self.outbox.event("idle", index=self.session.next_index)
        self.was_speaking = False

    async def pace(self) -> None:
        """Idle frames at the output rate while no utterance is under way; the clock waits for frames the
        speech gave out ahead of it, and restarts from the output's position after a stall, so frame indices stay
        contiguous."""
        while True:
            await asyncio.sleep(0.005)
            session = self.session
            if session is None or session.speaking:
                continue
            now = time.monotonic()
            due = int((now - self.clock) * session.rate) + 1  # frames whose time has come
            if due > session.next_index + 1:  # fell behind (the work took longer): go on from now
                self.clock = now - session.next_index / session.rate
                due = session.next_index + 1
            if due > session.next_index:
                self.send(await self.run_on_worker(session.idle, due - session.next_index))


def foreign_origin(headers) -> str | None:
    """The Origin a browser sent when it is not this server's own (another site's page using a visitor's
    browser to reach this server: browsers let any page open a WebSocket or send a simple POST anywhere); None
    when it is this server's, or when there is none (programs such as live_client send none or their own)."""
    origin = headers.get("origin")
    if origin is None:
        return None
    host = headers.get("host", "")
    return None if origin.split("://", 1)[-1].rstrip("/") == host else origin


def make_app(server: Server) -> FastAPI:
    """The FastAPI app: the WebSocket endpoint at /live, the browser page at / with its /config and /offer
    (WebRTC), and /health."""
    from dubbing import webrtc  # aiortc is needed by the page only

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        for caller in [s for s in server.sessions if isinstance(s, webrtc.Caller)]:
            await caller.close()

    app = FastAPI(title="IP_LAP live dubbing", lifespan=lifespan)
    app.state.server = server

    @app.get("/health")
    def health() -> dict:
        return {"templates": sorted(server.templates), "sessions": len(server.sessions)}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/config")
    def page_config() -> dict:
        return {"templates": sorted(server.templates), "refs": server.config["refs"],
                "max_refs": server.config["max_refs"],
                "ice_servers": [{"urls": ice.urls, **({"username": ice.username, "credential": ice.credential}
                                                      if ice.username else {})} for ice in server.ice_servers]}

    @app.post("/offer")
    async def offer(request: Request):
        origin = foreign_origin(request.headers)
        if origin:
            return JSONResponse({"error": f"offer: a page from {origin} may not call this server"}, status_code=403)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            # a cross-site page can send a text/plain POST without asking the server first; JSON it cannot
            return JSONResponse({"error": "offer: the body must be sent as application/json"}, status_code=415)
        try:
            body = bytearray()
            async for part in request.stream():  # read no further than an offer can need
                body += part
                if len(body) > MAX_OFFER_BYTES:
                    raise InputError("offer", f"more than the {MAX_OFFER_BYTES} bytes an offer needs")
            try:
                fields = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise InputError("offer", "the body must be JSON: {\"sdp\": ..., \"type\": \"offer\", "
                                          "\"template\": ...}") from None
            if not isinstance(fields, dict):
                raise InputError("offer", "the body must be a JSON object")
            return await webrtc.answer(server, fields, lambda settings: start_settings(server, settings),
                                       server.stamp)
        except InputError as error:
            return JSONResponse({"error": str(error)}, status_code=503 if isinstance(error, webrtc.Busy) else 400)

    @app.websocket("/live")
    async def live(websocket: WebSocket) -> None:
        if foreign_origin(websocket.headers):  # refused before the handshake completes: the page sees a failure
            await websocket.close(code=1008, reason="a page from another site may not use this server")
            return
        await websocket.accept()
        client = Client(server, websocket)
        tasks = [asyncio.create_task(client.outbox.pump(websocket)), asyncio.create_task(client.pace())]
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await client.handle(message)
                if any(task.done() for task in tasks):  # the sender stopped: the client has gone
                    break
        except WebSocketDisconnect:
            pass
        except Exception as error:  # a bug must not take the server down: tell the client and close
            with contextlib.suppress(Exception):
                await websocket.send_text(json.dumps({"event": "error", "message": one_line(error)}))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            server.sessions.discard(client)
            client.session = None  # the session (its mel, its utterance) goes with the connection

    return app
