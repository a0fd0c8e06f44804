"""Live dubbing: a prepared face speaks a stream of audio as it arrives (docs/live.md).

    python live.py --template presenter.mp4 [--template other.mp4] [--landmark-ckpt PATH|REF]
                   [--renderer-ckpt PATH|REF] [--config configs/inference.yaml] [--device cpu|cuda]
                   [--host 127.0.0.1] [--port 8765] [--ice-server URL] [key=value ...]

Open http://HOST:PORT/ in a browser to speak into the microphone and see the face say it back (WebRTC); programs
connect to ws://HOST:PORT/live (python -m dubbing.live_client is one). Each template is prepared when the server
starts (FaceMesh pass and idle loop, both kept in the template cache; a template that fails is reported and
refused to callers, the others are served), and the networks load once for all clients.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from config import INFERENCE_CONFIG
from data.errors import DiskError, InputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", action="append", type=Path, required=True,
                        help="a template video or photo; repeat for several (clients pick one by its file stem)")
    parser.add_argument("--landmark-ckpt", metavar="PATH|REF", help="default: checkpoints.landmark in the config")
    parser.add_argument("--renderer-ckpt", metavar="PATH|REF", help="default: checkpoints.renderer in the config")
    parser.add_argument("--config", default=str(INFERENCE_CONFIG), help="YAML settings laid over "
                                                                        "configs/inference.yaml")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: CUDA when present)")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime"),
                        help="the render step's runtime (default: runtime in the config, torch; onnxruntime: CPU only)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                                                            "machine only)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    parser.add_argument("--max-sessions", type=int, default=8, help="clients served at once; a start beyond it "
                        "gets a one-line 'busy' error (default 8)")
    parser.add_argument("--ice-server", action="append", default=[], metavar="URL",
                        help="a STUN or TURN server for the page's calls, e.g. turn:127.0.0.1:3478?transport=tcp "
                             "(repeatable; needed only across NATs, docs/live.md)")
    parser.add_argument("--ice-username", help="username for the TURN servers")
    parser.add_argument("--ice-credential", help="password for the TURN servers")
    parser.add_argument("--stamp", action="store_true", help="test mode: stamp each frame's index as a barcode "
                        "along its top edge, to measure the audio/video offset of a recording (dubbing/stamp.py)")
    parser.add_argument("overrides", nargs="*", help="config overrides, dotted.key=value (e.g. refs=3)")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn

        import dubbing
        from config import load_config
        from dubbing.cache import cache_dir
        from dubbing.live_server import Server, make_app, template_names
        from dubbing.webrtc import ice_servers

        if args.max_sessions < 1:
            raise InputError("--max-sessions", "must be 1 or more")
        overrides = list(args.overrides) + ([f"runtime={args.runtime}"] if args.runtime else [])
        config = load_config(args.config, overrides, base=INFERENCE_CONFIG)
        templates = template_names(args.template)
        ice = ice_servers(args.ice_server, args.ice_username, args.ice_credential)
        models = dubbing.load_models(args.landmark_ckpt or config["checkpoints"]["landmark"],
                                     args.renderer_ckpt or config["checkpoints"]["renderer"],
                                     None if args.device == "auto" else args.device,
                                     require_sha256=config["checkpoints"]["require_sha256"],
                                     runtime=config["runtime"], graphs=cache_dir(config),
                                     winograd=config["winograd"])
        with tempfile.TemporaryDirectory(prefix="iplap-live-") as spool_dir:
            server = Server(models, config, templates, Path(spool_dir), max_sessions=args.max_sessions,
                            stamp=args.stamp, ice_servers=ice)
            ready = 0
            for name in templates:
                try:
                    server.face(name, config["refs"], config["output"]["fps"])
                    print(f"template {name!r} ready", file=sys.stderr)
                    ready += 1
                except InputError as error:  # kept: a caller picking it gets this line
                    print(f"template {name!r} refused: {error}", file=sys.stderr)
            if not ready:
                raise InputError("--template", "no template could be prepared (each is refused above)")
            host = f"[{args.host}]" if ":" in args.host else args.host
            print(f"page: http://{host}:{args.port}/   WebSocket: ws://{host}:{args.port}/live", file=sys.stderr)
            try:
                uvicorn.run(make_app(server), host=args.host, port=args.port, ws="wsproto", log_level="warning")
            finally:
                server.close()
    except (InputError, DiskError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
