"""live.py's server (dubbing/live_server.py) with its client (dubbing/live_client.py) on 127.0.0.1: a stream end to
end, bad messages answered with one-line JSON errors, two clients at once, a disconnect that frees its session,
and a slow reader that loses frames (counted) while its queue stays bounded."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
import uvicorn
import websocket

import dubbing
from data.audio import SAMPLE_RATE, load_audio
from data.video import read_frames
from dubbing import live_client
from dubbing.live import LiveSession
from dubbing.live_server import MAX_CHUNK_SECONDS, Outbox, Server, encode_frame, make_app
from tests.test_live import _config, _drawn, media  # noqa: F401  (the same template and speech)


@pytest.fixture(scope="module")
def models(random_checkpoints) -> dubbing.Models:
    return replace(dubbing.load_models(*random_checkpoints, "cpu"), render_step=_drawn)


@pytest.fixture(scope="module")
def served(media, models, tmp_path_factory):  # noqa: F811
    """A server on a free port of 127.0.0.1 with the template under two names (so a start must name one)."""
    server = Server(models, _config(), {"template": media[0], "second": media[0]}, tmp_path_factory.mktemp("spool"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = uvicorn.Server(uvicorn.Config(make_app(server), host="127.0.0.1", port=port, ws="wsproto",
                                           log_level="warning"))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not runner.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.started
    yield server, f"ws://127.0.0.1:{port}/live", f"http://127.0.0.1:{port}/health"
    runner.should_exit = True
    thread.join(timeout=30)
    server.close()


def _next_event(connection: websocket.WebSocket) -> dict:
    """The next JSON event, passing over frames."""
    while True:
        message = connection.recv()
        if isinstance(message, str):
            return json.loads(message)


def test_a_stream_end_to_end_with_the_client(media, served, tmp_path):  # noqa: F811
    server, url, _ = served
    started = time.monotonic()
    output = tmp_path / "dubbed.mp4"
    assert live_client.main(["--url", url, "--audio", str(media[1]), "--out", str(output), "--template",
                             "template", "--chunk-ms", "100"]) == 0
    assert time.monotonic() - started < 120
    frames = read_frames(output)
    assert len(frames) == 20
    assert abs(len(load_audio(output)) - len(media[2])) < 0.05 * SAMPLE_RATE  # the speech is muxed
    # What came over the wire is the session's frames, JPEG-encoded: the same bytes as a local session makes.
    received = live_client.stream(url, media[2], chunk_s=0.1, start={"template": "template", "quality": 90})
    assert sorted(received.frames) == list(range(received.frames and min(received.frames),
                                                 min(received.frames) + 20))
    _check_frames(server, media, received, 90)
    assert received.ready["lookahead_s"] == pytest.approx(0.2125) and received.errors == []


def _check_frames(server: Server, media, received: live_client.Received, quality: int) -> None:  # noqa: F811
    """The frames a client received are the JPEGs of a local session's frames, that session idling until the
    utterance's first index (as the server did until the first chunk came) and then fed the same speech."""
    face = server.faces[("template", 2, "template")]
    local = LiveSession(face.prepared, server.models, _config(), face.idle, face.spool)
    local.idle(min(received.frames))
    expected = local.feed(media[2]) + local.end()
    assert sorted(received.frames) == [frame.index for frame in expected]
    for frame in expected:
        jpeg = np.frombuffer(encode_frame(frame, quality)[9:], np.uint8)
        decoded = live_client.cv2.cvtColor(live_client.cv2.imdecode(jpeg, 1), live_client.cv2.COLOR_BGR2RGB)
        assert np.array_equal(received.frames[frame.index], decoded)


def test_bad_messages_get_one_line_errors_and_the_client_goes_on(media, served):  # noqa: F811
    _, url, _ = served
    connection = websocket.create_connection(url, timeout=60)
    try:
        bad = [("binary", b"\x00\x01"), ("text", "not json"), ("text", json.dumps({"type": "dance"})),
               ("text", json.dumps({"type": "end"})), ("text", json.dumps({"type": "start"})),
               ("text", json.dumps({"type": "start", "template": "../../etc/passwd"})),
               ("text", json.dumps({"type": "start", "template": "template", "quality": 0})),
               ("text", json.dumps({"type": "start", "template": "template", "path": "/tmp"}))]
        expected = ["audio before start", "must be JSON", "unknown message type 'dance'", "end before start",
                    "no template named (this server has: second, template)", "no template named '../../etc/passwd'",
                    "quality=0", "unknown settings path"]
        for (kind, payload), words in zip(bad, expected):
            connection.send_binary(payload) if kind == "binary" else connection.send(payload)
            event = _next_event(connection)
            assert event["event"] == "error" and words in event["message"] and "\n" not in event["message"]
        connection.send(json.dumps({"type": "start", "template": "template"}))
        assert _next_event(connection)["event"] == "ready"
        for payload, words in ((b"\x00\x01\x02", "expected PCM16"),
                               (bytes(int(MAX_CHUNK_SECONDS * 16000 * 2) + 2), "longer than 5 s")):
            connection.send_binary(payload)
            event = _next_event(connection)
            assert event["event"] == "error" and words in event["message"]
        # The connection still serves: a short utterance comes back as speech frames, then idle.
        connection.send_binary(media[2][:4800].tobytes())
        connection.send(json.dumps({"type": "end"}))
        events = [_next_event(connection)["event"] for _ in range(2)]
        assert events == ["speaking", "idle"]
    finally:
        connection.close()


def test_two_clients_at_once(media, served):  # noqa: F811
    _, url, _ = served
    results = [None, None]

    def run(slot: int) -> None:
        results[slot] = live_client.stream(url, media[2], chunk_s=0.05, start={"template": "template"})

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    a, b = results
    assert len(a.frames) == len(b.frames) == 20 and a.dropped == b.dropped == 0
    for received in (a, b):  # each its own session: its frames start where its own template position was
        _check_frames(served[0], media, received, 80)


def test_a_disconnect_mid_stream_frees_the_session(media, served):  # noqa: F811
    server, url, health = served
    connection = websocket.create_connection(url, timeout=60)
    connection.send(json.dumps({"type": "start", "template": "template"}))
    assert _next_event(connection)["event"] == "ready"
    connection.send_binary(media[2][:6400].tobytes())
    assert _next_event(connection)["event"] == "speaking"
    assert json.loads(urllib.request.urlopen(health).read())["sessions"] >= 1
    connection.close()  # mid-utterance
    deadline = time.monotonic() + 60
    while server.sessions and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server.sessions
    assert json.loads(urllib.request.urlopen(health).read())["sessions"] == 0


def test_a_start_beyond_the_session_bound_is_busy_until_a_client_leaves(served, monkeypatch):  # noqa: F811
    server, url, _ = served
    monkeypatch.setattr(server, "max_sessions", 1)
    first, second = (websocket.create_connection(url, timeout=60) for _ in range(2))
    try:
        first.send(json.dumps({"type": "start", "template": "template"}))
        assert _next_event(first)["event"] == "ready"
        second.send(json.dumps({"type": "start", "template": "template"}))
        event = _next_event(second)
        assert event["event"] == "error" and "busy, this server serves 1 sessions at once" in event["message"]
        first.close()
        deadline = time.monotonic() + 60
        while server.sessions and time.monotonic() < deadline:
            time.sleep(0.1)
        second.send(json.dumps({"type": "start", "template": "template"}))
        assert _next_event(second)["event"] == "ready"
    finally:
        first.close()
        second.close()


class _SlowSocket:
    """A reader that takes each frame only when let through (the test's side of a slow connection)."""

    def __init__(self):
        self.frames, self.texts, self.gate = [], [], asyncio.Semaphore(0)

    async def send_bytes(self, data: bytes) -> None:
        await self.gate.acquire()
        self.frames.append(data)

    async def send_text(self, text: str) -> None:
        self.texts.append(json.loads(text))


def test_a_slow_reader_loses_the_oldest_frames_and_is_told():
    async def scenario():
        outbox, reader = Outbox(limit=5), _SlowSocket()
        pump = asyncio.create_task(outbox.pump(reader))
        for index in range(40):  # made far faster than read
            outbox.frame(index.to_bytes(4, "little"))
            assert len(outbox.frames) <= 5  # memory stays bounded
            await asyncio.sleep(0)
        for _ in range(10):
            reader.gate.release()
            await asyncio.sleep(0.01)
        pump.cancel()
        return outbox, reader

    outbox, reader = asyncio.run(scenario())
    got = [int.from_bytes(f, "little") for f in reader.frames]
    assert got[0] == 0 and got[1:] == list(range(35, 40))  # the newest kept, in order
    drops = [t for t in reader.texts if t["event"] == "dropped"]
    assert drops and sum(d["count"] for d in drops) == outbox.dropped == 34 and drops[-1]["total"] == 34


def test_live_py_names_a_missing_template_in_one_line(tmp_path, capsys):
    import live

    assert live.main(["--template", str(tmp_path / "absent.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'absent.mp4'}: no such file"


def _offer(base: str, body: bytes, **headers) -> tuple[int, dict]:
    request = urllib.request.Request(base + "offer", data=body, headers={"Content-Type": "application/json",
                                                                         **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_bad_offers_to_the_page_endpoint_get_one_line_errors(served, monkeypatch):
    server, _, health = served
    base = health.removesuffix("health")
    page = urllib.request.urlopen(base, timeout=30).read().decode()
    assert "<video" in page and "RTCPeerConnection" in page
    config = json.loads(urllib.request.urlopen(base + "config", timeout=30).read())
    assert config["templates"] == ["second", "template"] and config["ice_servers"] == []
    offer = {"sdp": "v=0\r\n", "type": "offer", "template": "template"}
    cases = [
        (b"not json", 400, "the body must be JSON"),
        (b"[1, 2]", 400, "a JSON object"),
        (b"{" + b" " * 70_000 + b"}", 400, "bytes an offer needs"),
        (json.dumps({"template": "template"}).encode(), 400, "expected a WebRTC offer"),
        (json.dumps({**offer, "template": "../etc/passwd"}).encode(), 400, "no template named"),
        (json.dumps({**offer, "refs": 0}).encode(), 400, "refs takes a number from 1"),
        (json.dumps({**offer, "colour": "red"}).encode(), 400, "unknown settings colour"),
        (json.dumps(offer).encode(), 400, "offer:"),  # an SDP aiortc cannot read
    ]
    for body, status, text in cases:
        code, answer = _offer(base, body)
        assert code == status and text in answer["error"] and "\n" not in answer["error"], (body[:40], answer)
    # Another site's page cannot use a visitor's browser to call this server.
    code, answer = _offer(base, json.dumps(offer).encode(), Origin="http://evil.example")
    assert (code, answer["error"]) == (403, "offer: a page from http://evil.example may not call this server")
    code, answer = _offer(base, json.dumps(offer).encode(), **{"Content-Type": "text/plain"})
    assert code == 415 and "application/json" in answer["error"]
    code, answer = _offer(base, b"{}", Origin=base.rstrip("/"))  # the page's own origin is let through
    assert code == 400 and "expected a WebRTC offer" in answer["error"]
    monkeypatch.setattr(server, "max_sessions", 1)
    server.sessions.add("someone")
    try:
        code, answer = _offer(base, json.dumps(offer).encode())
        assert code == 503 and "busy" in answer["error"]
    finally:
        server.sessions.discard("someone")
    assert json.loads(urllib.request.urlopen(health, timeout=30).read())["sessions"] == 0


def test_live_py_serves_the_templates_it_can_and_refuses_the_rest(tmp_path, capsys, monkeypatch,
                                                                  random_checkpoints, media):  # noqa: F811
    import live
    from data.video import VideoWriter

    faceless = tmp_path / "faceless.mp4"
    with VideoWriter(faceless) as writer:
        for _ in range(3):
            writer.write(np.full((96, 96, 3), 128, np.uint8))
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(sorted(app.state.server.faces)))
    common = ["--landmark-ckpt", str(random_checkpoints[0]), "--renderer-ckpt", str(random_checkpoints[1]),
              "--device", "cpu", "refs=1"]
    assert live.main(["--template", str(faceless), *common]) == 2
    err = capsys.readouterr().err
    assert "template 'faceless' refused: template 'faceless': no face found" in err
    assert err.strip().splitlines()[-1] == "error: --template: no template could be prepared (each is refused above)"
    assert live.main(["--template", str(faceless), "--template", str(media[0]), *common]) == 0
    err = capsys.readouterr().err
    assert "template 'faceless' refused" in err and "template 'template' ready" in err
    assert "page: http://127.0.0.1:8765/" in err and served == [[("template", 1, "template")]]


def test_another_sites_page_cannot_open_the_websocket(served):
    _, url, health = served
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(url, timeout=30, origin="http://evil.example")
    own = websocket.create_connection(url, timeout=30, origin=health.removesuffix("/health"))  # its own page's
    own.send(json.dumps({"type": "end"}))
    assert _next_event(own)["message"] == "end before start"
    own.close()
