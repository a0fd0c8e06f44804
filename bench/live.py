"""Live dubbing on the CPU (dubbing/live.py): frames made per second against the output rate, the time from the first
chunk to the first frame, the steady latency of a frame, and the process's memory over a long stream.

  python -m bench.live [--refs 3 25] [--seconds 20] [--memory-seconds 600] [--template-frames 50] [--json out.json]

Random official-shape weights (speed does not depend on their values), the sample template (its first 50 frames
at 25 fps) and the sample speech looped to length, fed in 20 ms chunks as fast as the session takes them. A frame's
steady latency is the lookahead (the audio it waits for) plus the time it takes to make: it keeps real time when
frames/s reaches the output rate. The memory pass feeds --memory-seconds of audio and prints the resident size
every tenth of the way: flat when the session holds nothing that grows with the stream.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import dubbing
from data.audio import SAMPLE_RATE, load_audio
from data.samples import sample
from data.video import FPS, VideoReader, VideoWriter
from dubbing.idle import idle_loop
from dubbing.live import LiveSession

CHUNK_S = 0.02


def template_clip(folder: Path, frames: int = 50, size: tuple[int, int] | None = None) -> Path:
    """The sample template's first `frames` frames at 25 fps (scaled to `size` when given)."""
    import itertools

    import cv2

    path = folder / (f"template_{size[0]}x{size[1]}.mp4" if size else "template.mp4")
    with VideoReader(sample("template_129.mp4"), FPS) as reader, VideoWriter(path, FPS, crf=12) as writer:
        for frame in itertools.islice(reader, frames):
            writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC) if size else frame)
    return path


def speech(seconds: float) -> np.ndarray:
    """The sample speech looped to `seconds`, as int16 (what a client sends)."""
    wav = load_audio(sample("speech_audio2.wav"))
    wav = np.tile(wav, int(np.ceil(seconds * SAMPLE_RATE / len(wav))))[:int(seconds * SAMPLE_RATE)]
    return np.round(np.clip(wav, -1, 32767 / 32768) * 32768).astype(np.int16)


def rss_mb() -> float:
    """The process's resident memory now (Linux /proc), in MB; the peak where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream_once(session: LiveSession, pcm: np.ndarray, on_progress=None) -> dict:
    """Feed `pcm` in 20 ms chunks as fast as the session takes them, then end: frames/s, the time from the first
    chunk to the first frame, each frame's making time; `on_progress(fraction)` every tenth of the audio."""
    step, made, first, tenth = int(CHUNK_S * SAMPLE_RATE), 0, None, max(len(pcm) // 10, 1)
    started = time.perf_counter()
    for offset in range(0, len(pcm), step):
        frames = session.feed(pcm[offset:offset + step])
        if frames and first is None:
            first = time.perf_counter() - started
        made += len(frames)
        if on_progress and (offset + step) // tenth != offset // tenth:
            on_progress((offset + step) / len(pcm))
    made += len(session.end())
    seconds = time.perf_counter() - started
    return {"frames": made, "seconds": seconds, "frames_per_s": made / seconds, "first_frame_s": first}


def measure(template: Path, models: dubbing.Models, refs: int, seconds: float, memory_seconds: float = 0.0,
            config_changes: dict | None = None) -> dict:
    """One row of the table: the template prepared at `refs`, its idle loop, and a stream of `seconds`."""
    config = dubbing.default_config()
    config.update(refs=refs, **(config_changes or {}))
    prepared = dubbing.prepare_template(template, models, config, progress=False)
    try:
        with tempfile.TemporaryDirectory() as folder:
            spool = prepared.frame_spool(Path(folder))
            started = time.perf_counter()
            loop = idle_loop(prepared, models, config, spool)
            idle_s = time.perf_counter() - started
            session = LiveSession(prepared, models, config, loop, spool)
            stream_once(session, speech(min(seconds, 0.3)))  # warm-up
            row = stream_once(session, speech(seconds))
            row.update(refs=refs, rate=session.rate, lookahead_s=session.lookahead_s, idle_loop_s=idle_s,
                       frame_s=1 / row["frames_per_s"])
            row["real_time"] = row["frames_per_s"] >= session.rate
            row["steady_latency_s"] = session.lookahead_s + row["frame_s"] if row["real_time"] else None
            if memory_seconds:
                samples = []
                stream_once(session, speech(memory_seconds), lambda fraction: samples.append(
                    (round(fraction * memory_seconds), round(rss_mb(), 1))))
                row["memory_mb"] = samples
    finally:
        prepared.close()
    return row


def print_row(row: dict) -> None:
    latency = f"{row['steady_latency_s']:.3f} s" if row["steady_latency_s"] else "falls behind"
    print(f"refs {row['refs']:>3}: {row['frames_per_s']:6.2f} frames/s made of {row['rate']:g} needed; first frame "
          f"{row['first_frame_s']:.3f} s after the first chunk; per frame {row['frame_s'] * 1000:.0f} ms; steady "
          f"latency {latency} (lookahead {row['lookahead_s']:.4f} s); idle loop {row['idle_loop_s']:.1f} s")
    if "memory_mb" in row:
        print("  resident MB by seconds of audio streamed: " + ", ".join(f"{s} s: {m}" for s, m in row["memory_mb"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refs", type=int, nargs="+", default=[3, 25])
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per timed stream (default 20)")
    parser.add_argument("--memory-seconds", type=float, default=0.0, help="a long stream's length for the memory "
                                                                          "column (600: ten minutes; 0: skip)")
    parser.add_argument("--template-frames", type=int, default=50, help="template length (the idle loop renders "
                                                                       "twice as many frames once)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    from testing.checkpoints import official_checkpoints

    with tempfile.TemporaryDirectory() as folder:
        models = dubbing.load_models(*official_checkpoints(Path(folder) / "ck"), args.device)
        template = template_clip(Path(folder), args.template_frames)
        rows = []
        for refs in args.refs:
            rows.append(measure(template, models, refs, args.seconds, args.memory_seconds))
            print_row(rows[-1])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
