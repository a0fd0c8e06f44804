"""Dubbing speed and memory on the official demo (template_129.mp4 + speech_audio2.wav), CPU or CUDA.

  python -m bench.inference [--seconds 1] [--refs 3,25] [--skip-speed] [--skip-many] [--skip-memory]
                            [--skip-pipeline] [--pipeline-only] [--device cpu]
  python -m bench.inference --runtimes-only [--official "COMMAND"] [--official-frames 21] [--rounds 2]

Runtimes (--runtimes-only, or after the other sections unless --skip-runtimes): whole dubs at N=25 (the official
script's default) of the first --seconds of the demo speech on the demo template at 25 fps, under `runtime: torch`
(the config's default: Winograd convolutions on the CPU), torch with `winograd: false` ("torch direct") and
`runtime: onnxruntime`, alternating (per round: official, torch, torch direct, onnxruntime, then the same
backwards, official),
seconds per output frame, the template prepared anew each time (FaceMesh pass included, the template cache off;
the ONNX graph exported once before the first round and not timed). --official COMMAND is a shell command that runs
the official inference script (set up by hand outside this project: github.com/Weizhi-Zhong/IP_LAP moved to the
CPU, see bench/README.md) on the same inputs, which COMMAND names as {template} and {audio}; it writes
--official-frames frames (21 for 1 s: it drops the windows at both edges). The fastest run of each side is
compared. Then a per-stage profile of one dub under each runtime, in one thread (`pipeline: false`, so the stages
add up): FaceMesh pass, references encoded, decode, landmark generator, sketches and crops, render, paste-back,
video encoding, seconds per output frame.

Speed: output frames per second of the whole pipeline (inference.py's `dubbing.dub`: FaceMesh pass, landmark
generator, sketches, renderer, paste-back, H.264/AAC encoding) on the first --seconds of the demo speech (1 s, as
bench/README.md), for each N in --refs, against the same pipeline with the official renderer formulation
(testing/reference_renderer.py: the alignment network once per reference, nothing reused between frames) and one
frame per call. Both run in this process, one after the other; the ratio is what counts. The official script's
figures from bench/README.md (0.41 frames/s at N=3, about 0.08 at N=25, measured on this kind of machine) are
printed beside them.

Many audios (one template): the work before the first rendered frame (template analysis, reference choice and
encoding, the audio's mel) for a first dub, for the second audio of a multi-audio run, and for a separate run
on a prepared (cached) template, at each N; interpreter start-up and network loading reported apart. Then the
total time of one inference.py run with 5 audios against 5 runs, at N=3.

Memory: peak resident memory of a fresh process dubbing 5 s and 60 s of the demo speech (the template loops).
A minute of output is 1500 renderer calls, about an hour on two CPU cores, so on the CPU the memory runs replace
the renderer's per-frame forward with a pass-through (everything else runs: networks loaded, references encoded,
landmarks predicted, frames decoded, pasted and encoded); the renderer's activations for one batch do not depend
on the audio's length. --real-memory keeps the real renderer (use it on a GPU).
Pipeline: pass 2 alone (the template prepared beforehand) on the demo template at 256x256 and scaled to 1280x720,
200 output frames, N=25, batch 16, with both networks replaced by stand-ins that cost nothing, so only the host's
work is left: milliseconds per output frame that each stage spends in the calling thread (decode, prepare:
landmark inputs, sketches, crops; network; paste; encode), and wall time per frame, `pipeline: false` (every stage
in series, one thread) against `pipeline: true` (three overlapping stages). Then the network stage made to hold
each batch for a set time without using the CPU (a sleep, as a GPU would): the overlap's target is a wall time
per frame of at most 1.15x max(network, host), where the serial path costs their sum.
Weights are random (speed does not depend on them) unless --landmark-ckpt/--renderer-ckpt are given.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import dubbing
import dubbing.pipeline
from data.audio import SAMPLE_RATE, load_audio
from data.samples import sample
from data.video import FPS
from testing.audio import write_wav

ROOT = Path(__file__).resolve().parents[1]

OFFICIAL_REFS = 25  # N of the official inference script (configs/inference.yaml's refs)
# bench/README.md (official reference figures): the whole official script on the CPU, frames/s by N
OFFICIAL_FPS = {3: 0.41, OFFICIAL_REFS: 0.08}


def random_checkpoints(folder: Path) -> tuple[Path, Path]:
    from models.landmark_generator import LandmarkGenerator
    from models.renderer import Renderer

    torch.manual_seed(0)
    landmark, renderer = folder / "landmark.pt", folder / "renderer.pt"
    torch.save({"kind": "landmark_generator", "model": LandmarkGenerator().state_dict(), "model_args": {}}, landmark)
    torch.save({"kind": "renderer", "model": Renderer().state_dict(), "model_args": {}}, renderer)
    return landmark, renderer


def demo_config() -> dict:
    """The dubbing settings at 25 fps: the demo template is 30 fps, and the official figures were measured with
    the official script, which resamples it to 25."""
    config = dubbing.default_config()
    config["output"]["fps"] = FPS
    return config


def per_reference_step(renderer, refs, faces, sketches, mels):
    """The official formulation: every reference through the whole alignment network, for every frame."""
    from testing.reference_renderer import per_reference_forward

    batch = faces.shape[0]
    return per_reference_forward(renderer, faces, sketches, refs.images.expand(batch, -1, -1, -1, -1),
                                 refs.sketches.expand(batch, -1, -1, -1, -1), mels)[0]


def pass_through_step(renderer, refs, faces, sketches, mels):
    return faces


def dub_once(args, models, audio: Path, output: Path, refs: int, batch: int, step) -> float:
    config = demo_config()
    config.update(refs=refs, batch_size=batch)
    result = dubbing.dub(sample("template_129.mp4"), audio, output, replace(models, render_step=step), config,
                         progress=False)
    return result.frames / result.seconds


def memory_child(args) -> None:
    """Run one dub in this (fresh) process and print its peak resident memory as JSON."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        audio = write_wav(folder / "speech.wav", demo_speech(args.memory_child))
        models = dubbing.load_models(args.landmark_ckpt, args.renderer_ckpt, args.device)
        step = dubbing.render_faces if args.real_memory else pass_through_step
        fps = dub_once(args, models, audio, folder / "out.mp4", OFFICIAL_REFS, args.batch or "auto", step)
    print(json.dumps({"seconds": args.memory_child, "peak_mib": peak_resident_mib(), "fps": fps}))


def peak_resident_mib() -> float:
    """This process image's peak resident memory. /proc's VmHWM starts afresh at exec; getrusage's ru_maxrss
    does not on Linux (a child forked from a large parent reports the parent's peak)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def demo_speech(seconds: float) -> np.ndarray:
    """The first `seconds` of the demo speech, repeated when it is shorter (21.3 s)."""
    speech = load_audio(sample("speech_audio2.wav"))
    need = int(round(seconds * SAMPLE_RATE))
    return np.tile(speech, need // len(speech) + 1)[:need]


def main() -> None:
    from allocator import keep_freed_memory

    keep_freed_memory()  # as inference.py does on CPU
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="speech length for the speed runs")
    parser.add_argument("--refs", default=f"3,{OFFICIAL_REFS}", help="comma-separated N values")
    parser.add_argument("--batch", type=int, help="our batch size (default: configs/inference.yaml)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--landmark-ckpt")
    parser.add_argument("--renderer-ckpt")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-many", action="store_true", help="skip the prepared-template and 5-audio runs")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--pipeline-only", action="store_true", help="only the pipeline section")
    parser.add_argument("--real-memory", action="store_true", help="memory runs with the real renderer")
    parser.add_argument("--memory-child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--skip-runtimes", action="store_true")
    parser.add_argument("--runtimes-only", action="store_true", help="only the runtimes section")
    parser.add_argument("--official", help="shell command running the official script on {template} and {audio}")
    parser.add_argument("--official-frames", type=int, default=21, help="frames the official command writes")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the runtimes section")
    parser.add_argument("--runtime-refs", type=int, default=OFFICIAL_REFS, help="N of the runtimes section")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if not args.landmark_ckpt or not args.renderer_ckpt:
            args.landmark_ckpt, args.renderer_ckpt = random_checkpoints(folder)
        if args.memory_child is not None:
            return memory_child(args)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
        if args.runtimes_only:
            return runtimes(args, folder)
        if not args.skip_pipeline:
            pipeline(args, folder)
        if args.pipeline_only:
            return None
        if not args.skip_speed:
            speed(args, folder)
        if not args.skip_many:
            many(args, folder)
        if not args.skip_memory:
            memory(args)
        if not args.skip_runtimes:
            runtimes(args, folder)


def many(args, folder: Path) -> None:
    """One template, many audios: the work before the first rendered frame for a first dub, for the second audio
    of a run, and for a separate run on a prepared (cached) template; then 5 audios in one run of inference.py
    against 5 runs, each a fresh process (start-up and network loading included), at N=3."""
    seconds = args.seconds
    speech = demo_speech(5 * seconds)
    step = int(seconds * SAMPLE_RATE)
    audios = [write_wav(folder / f"take{i}.wav", speech[i * step:(i + 1) * step]) for i in range(5)]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dubbing, torch"], cwd=ROOT, check=True)
    startup = time.perf_counter() - started
    started = time.perf_counter()
    models = dubbing.load_models(args.landmark_ckpt, args.renderer_ckpt, args.device)
    loading = time.perf_counter() - started
    print(f"\nmany audios: interpreter start-up with the imports {startup:.2f} s, network loading {loading:.2f} s "
          "(neither counted below)")
    print("| N | first dub (FaceMesh pass, references) | second audio of the run | separate run, prepared template "
          "| second / first | separate / first |")
    print("| --- | --- | --- | --- | --- | --- |")
    template = sample("template_129.mp4")
    for refs in (int(n) for n in args.refs.split(",")):
        config = demo_config()
        config.update(refs=refs, batch_size=args.batch or "auto", audio_seconds=0.2)  # a few frames are enough
        config["cache"] = {"enabled": True, "dir": str(folder / f"cache_{refs}")}
        prepared = dubbing.prepare_template(template, models, config, progress=False)
        first = dubbing.dub_prepared(prepared, audios[0], folder / "first.mp4", models, config, progress=False)
        second = dubbing.dub_prepared(prepared, audios[1], folder / "second.mp4", models, config, progress=False)
        prepared.close()
        again = dubbing.prepare_template(template, models, config, progress=False)  # a later run: cache hit
        separate = dubbing.dub_prepared(again, audios[2], folder / "separate.mp4", models, config, progress=False)
        again.close()
        a, b, c = prepared.seconds + first.setup_seconds, second.setup_seconds, again.seconds + separate.setup_seconds
        print(f"| {refs} | {a:.2f} s | {b:.3f} s | {c:.2f} s | {b / a:.3f}x | {c / a:.3f}x |")

    common = ["--video", str(template), "--landmark-ckpt", str(args.landmark_ckpt), "--renderer-ckpt",
              str(args.renderer_ckpt), "--device", args.device, "--quiet", "refs=3", f"output.fps={FPS}"]
    script = str(ROOT / "inference.py")
    started = time.perf_counter()
    subprocess.run([sys.executable, script, *common, *[x for a in audios for x in ("--audio", str(a))], "--output",
                    str(folder / "one_run"), "--cache-dir", str(folder / "cache_one")], check=True,
                   capture_output=True)
    together = time.perf_counter() - started
    apart = {}
    for label, cache in (("the template cache on (the default)", ["--cache-dir", str(folder / "cache_runs")]),
                         ("no cache (every run analyses the template)", ["--no-cache"])):
        started = time.perf_counter()
        for audio in audios:  # with the cache, runs 2-5 find the template prepared, as a user's would
            subprocess.run([sys.executable, script, *common, "--audio", str(audio), "--output",
                            str(folder / "runs" / f"{audio.stem}.mp4"), *cache], check=True, capture_output=True)
        apart[label] = time.perf_counter() - started
    for label, value in apart.items():
        print(f"5 audios of {seconds:g} s at N=3: one run {together:.1f} s; 5 runs, {label}, {value:.1f} s: "
              f"{together / value:.2f}x")


def speed(args, folder: Path) -> None:
    models = dubbing.load_models(args.landmark_ckpt, args.renderer_ckpt, args.device)
    audio = write_wav(folder / "speech.wav", demo_speech(args.seconds))
    batch = args.batch or dubbing.pipeline.batch_size_for(dubbing.default_config(), torch.device(args.device))
    print(f"speed: {args.seconds} s of speech ({int(args.seconds * FPS)} output frames), template_129.mp4")
    print("| N | reference pipeline (per-reference, 1 frame/call) | ours (encode once, batch "
          f"{batch}) | ours / reference | ours / official script (BASELINES) |")
    print("| --- | --- | --- | --- | --- |")
    for refs in (int(n) for n in args.refs.split(",")):
        reference = dub_once(args, models, audio, folder / "reference.mp4", refs, 1, per_reference_step)
        ours = dub_once(args, models, audio, folder / "ours.mp4", refs, batch, dubbing.render_faces)
        official = OFFICIAL_FPS.get(refs)
        versus = f"{ours / official:.2f}x ({official} frames/s)" if official else "n/a"
        print(f"| {refs} | {reference:.3f} frames/s | {ours:.3f} frames/s | {ours / reference:.2f}x | {versus} |",
              flush=True)


def memory(args) -> None:
    peaks = {}
    for seconds in (5.0, 60.0):
        command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(seconds), "--device",
                   args.device, "--landmark-ckpt", str(args.landmark_ckpt), "--renderer-ckpt", str(args.renderer_ckpt)]
        if args.real_memory:
            command.append("--real-memory")
        if args.batch:
            command += ["--batch", str(args.batch)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"memory run for {seconds} s failed:\n{result.stderr[-2000:]}")
        peaks[seconds] = json.loads(result.stdout.strip().splitlines()[-1])
    what = "real renderer" if args.real_memory else "renderer forward replaced by a pass-through"
    print(f"memory ({what}, N={OFFICIAL_REFS}): peak resident 5 s of speech {peaks[5.0]['peak_mib']:.0f} MiB, 60 s "
          f"{peaks[60.0]['peak_mib']:.0f} MiB, ratio {peaks[60.0]['peak_mib'] / peaks[5.0]['peak_mib']:.2f} "
          f"(60 s ran at {peaks[60.0]['fps']:.1f} frames/s)")


def runtimes(args, folder: Path) -> None:
    """Whole dubs at N=25 under both runtimes (torch with and without Winograd convolutions), alternating with the
    official command; then a per-stage profile."""
    import os

    audio = write_wav(folder / "runtimes.wav", demo_speech(args.seconds))
    loaded = {side: dubbing.load_models(args.landmark_ckpt, args.renderer_ckpt, args.device, graphs=folder / "graphs",
                                        **settings) for side, settings in RUNTIME_SIDES.items()}
    config = demo_config()
    config.update(refs=args.runtime_refs)
    config["cache"]["enabled"] = False

    def ours(side: str) -> float:
        result = dubbing.dub(sample("template_129.mp4"), audio, folder / "ours.mp4", loaded[side], config,
                             progress=False)
        return result.seconds / result.frames

    # the official command is told this run's inputs through {template} and {audio}
    command = args.official.format(template=sample("template_129.mp4"), audio=audio) if args.official else None

    def official() -> float:
        started = time.perf_counter()
        subprocess.run(command, shell=True, check=True, capture_output=True)
        return (time.perf_counter() - started) / args.official_frames

    sides = {"official": official} if args.official else {}
    sides.update({side: (lambda side=side: ours(side)) for side in loaded})
    order = ["official", *RUNTIME_SIDES, *reversed(RUNTIME_SIDES), "official"]
    times: dict[str, list[float]] = {side: [] for side in sides}
    print(f"\nruntimes: N={args.runtime_refs}, {args.seconds:g} s of speech, template_129.mp4 at 25 fps, load "
          f"{os.getloadavg()[0]:.1f} at the start; seconds per output frame, in the order run")
    for _ in range(args.rounds):
        for side in order:
            if side in sides:
                times[side].append(sides[side]())
                print(f"  {side}: {times[side][-1]:.2f} s/frame", flush=True)
    best = {side: min(values) for side, values in times.items()}
    print("| side | fastest s/frame | runs | / torch | / official |")
    print("| --- | --- | --- | --- | --- |")
    for side, value in best.items():
        versus = f"{value / best['official']:.2f}x" if "official" in best else "n/a"
        print(f"| {side} | {value:.2f} | {', '.join(f'{t:.2f}' for t in times[side])} | "
              f"{value / best['torch']:.2f}x | {versus} |")
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    stage_profile(loaded, audio, config, folder)


# What renders in the runtimes section: the config's default (torch, Winograd on the CPU), torch with oneDNN's
# direct convolutions, and onnxruntime.
RUNTIME_SIDES = {"torch": {"runtime": "torch", "winograd": True},
                 "torch direct": {"runtime": "torch", "winograd": False},
                 "onnxruntime": {"runtime": "onnxruntime"}}

STAGE_NAMES = {"analyse_template": "FaceMesh pass", "encode_references": "references encoded", "decode": "decode",
               "predict_content": "landmark generator", "prepare": "sketches and crops", "network": "render",
               "paste": "paste-back", "encode": "video encoding"}


def stage_profile(loaded: dict, audio: Path, config: dict, folder: Path) -> None:
    """Seconds per output frame by stage of one dub per runtime, every stage in the calling thread."""
    config = {**config, "pipeline": False}
    rows = {}
    for runtime, models in loaded.items():
        clock = StageClock(extra=("analyse_template", "encode_references", "predict_content"))
        try:
            result = dubbing.dub(sample("template_129.mp4"), audio, folder / "profile.mp4", models, config,
                                 progress=False)
        finally:
            clock.remove()
        spent = {stage: seconds for (stage, main), seconds in clock.seconds.items() if main}
        spent["prepare"] = spent.get("prepare", 0.0) - spent.get("predict_content", 0.0)  # landmark counted apart
        rows[runtime] = ({stage: spent.get(stage, 0.0) / result.frames for stage in STAGE_NAMES},
                         result.seconds / result.frames)
    print(f"\nper-stage profile, N={config['refs']}, one thread, seconds per output frame")
    print("| stage | " + " | ".join(rows) + " |")
    print("| --- " * (len(rows) + 1) + "|")
    for stage, name in STAGE_NAMES.items():
        print(f"| {name} | " + " | ".join(f"{row[0][stage]:.3f}" for row in rows.values()) + " |")
    print("| whole dub | " + " | ".join(f"{row[1]:.3f}" for row in rows.values()) + " |")


class StandInLandmarks(torch.nn.Module):
    """The landmark generator's interface at no cost: every window predicts `content` (2, 57)."""

    def __init__(self, content: np.ndarray):
        super().__init__()
        self.content = torch.from_numpy(content)

    def encode_references(self, pose, content):
        return pose.new_zeros(pose.shape[0], pose.shape[1], 1)

    def encode_frames(self, mels, pose):
        return mels.new_zeros(len(mels), 1), pose.new_zeros(len(pose), 1)

    def fuse(self, tokens, audio, pose):
        return self.content.to(audio.device).expand(audio.shape[0], audio.shape[1], 2, 57)


class StageClock:
    """Seconds each pass-2 stage spends, in the calling thread or another, while installed over
    dubbing.pipeline's stage functions and the writer (until `remove`)."""

    STAGES = {"frame_batches": "decode", "prepare_batch": "prepare", "render_batch": "network",
              "paste_batch": "paste"}

    def __init__(self, extra: tuple[str, ...] = ()):
        """extra: further dubbing.pipeline functions timed under their own names."""
        import threading

        self.seconds: dict[tuple[str, bool], float] = {}
        self._main = threading.main_thread

        def timed(name, function):
            def wrapper(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    self.add(name, time.perf_counter() - started)
            return wrapper

        def timed_source(function):
            def wrapper(*args, **kwargs):
                source = function(*args, **kwargs)
                while True:
                    started = time.perf_counter()
                    try:
                        item = next(source)
                    except StopIteration:
                        return
                    finally:
                        self.add("decode", time.perf_counter() - started)
                    yield item
            return wrapper

        import dubbing.writer

        names = {**self.STAGES, **{name: name for name in extra}}
        self._saved = [(dubbing.pipeline, name, getattr(dubbing.pipeline, name)) for name in names]
        self._saved.append((dubbing.writer.Outputs, "write", dubbing.writer.Outputs.write))
        for module, name, function in self._saved:
            if name == "frame_batches":
                setattr(module, name, timed_source(function))
            else:
                setattr(module, name, timed(names.get(name, "encode"), function))

    def add(self, stage: str, seconds: float) -> None:
        import threading

        key = (stage, threading.current_thread() is self._main())
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def remove(self) -> None:
        for module, name, function in self._saved:
            setattr(module, name, function)


def scaled_template(folder: Path, size: tuple[int, int], frames: int) -> Path:
    """The demo template's first `frames` frames at 25 fps, resized to `size` (width, height)."""
    import itertools

    import cv2

    from data.video import VideoReader, VideoWriter

    path = folder / f"template_{size[0]}x{size[1]}.mp4"
    with VideoReader(sample("template_129.mp4")) as reader, VideoWriter(path, FPS, crf=12) as writer:
        for frame in itertools.islice(reader, frames):
            writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC))
    return path


def pipeline(args, folder: Path) -> None:
    """Pass 2's host work by stage, in series against overlapped, with stand-in networks (see the docstring)."""
    frames, batch = 200, 16  # 13 batches: filling and draining the queues costs little beside them
    audio = write_wav(folder / "pipeline.wav", demo_speech(frames / FPS))
    real = dubbing.load_models(args.landmark_ckpt, args.renderer_ckpt, args.device)
    print(f"\npipeline: pass 2 of {frames} output frames, N={OFFICIAL_REFS}, batch {batch}, stand-in networks; ms "
          "per output frame in the calling thread by stage, and wall time")
    print("| template | mode | decode | prepare | network | paste | encode | calling thread | wall | frames/s |")
    print("| --- " * 10 + "|")
    hosts = {}
    for size in ((256, 256), (1280, 720)):
        template = scaled_template(folder, size, frames)
        config = demo_config()
        config.update(refs=OFFICIAL_REFS, batch_size=batch)
        config["cache"] = {"enabled": True, "dir": str(folder / "pipeline_cache")}
        prepared = dubbing.prepare_template(template, real, config, progress=False)
        content = prepared.template.landmarks[0]
        from data.landmarks import content_of

        models = replace(real, landmark=StandInLandmarks(content_of(content)), render_step=pass_through_step)
        walls = {}
        for mode in (False, True):
            config["pipeline"] = mode
            dubbing.dub_prepared(prepared, audio, folder / "warm.mp4", models, config, progress=False)  # warm-up
            clock = StageClock()
            try:
                result = dubbing.dub_prepared(prepared, audio, folder / "pipeline.mp4", models, config,
                                              progress=False)
            finally:
                clock.remove()
            wall = (result.seconds - result.setup_seconds) / result.frames * 1000
            main = {stage: clock.seconds.get((stage, True), 0.0) / result.frames * 1000
                    for stage in ("decode", "prepare", "network", "paste", "encode")}
            walls[mode] = (wall, sum(main.values()))
            cells = " | ".join(f"{main[stage]:.2f}" for stage in main)
            print(f"| {size[0]}x{size[1]} | {'overlapped' if mode else 'serial'} | {cells} | "
                  f"{sum(main.values()):.2f} | {wall:.2f} | {1000 / wall:.1f} |", flush=True)
        print(f"| {size[0]}x{size[1]} | overlapped wall / serial calling thread | | | | | | | "
              f"{walls[True][0] / walls[False][1]:.2f}x | |")
        hosts[size] = (prepared, models, config, walls[False][0])
    print("\nwith a network stage that sleeps (a GPU's time, no CPU) as long as the serial host work takes; the "
          "stage as run adds its own tensor conversions, which a GPU would run:")
    print("| template | sleep ms/frame | network stage as run (overlapped) | host ms/frame (serial, no sleep) | "
          "serial wall | overlapped wall | overlapped / max(sleep, host) | overlapped / max(stage, host) | "
          "serial / max(sleep, host) |")
    print("| --- " * 9 + "|")
    for size, (prepared, models, config, host) in hosts.items():
        network = host  # equal times: the hardest case for the overlap

        def sleeping(renderer, refs, faces, sketches, mels, hold=network / 1000 * batch):
            time.sleep(hold)
            return faces

        slept = replace(models, render_step=sleeping)
        walls = {}
        for mode in (False, True):
            config["pipeline"] = mode
            clock = StageClock()
            try:
                result = dubbing.dub_prepared(prepared, audio, folder / "sleep.mp4", slept, config, progress=False)
            finally:
                clock.remove()
            walls[mode] = (result.seconds - result.setup_seconds) / result.frames * 1000
            stage = clock.seconds.get(("network", True), 0.0) / result.frames * 1000
        print(f"| {size[0]}x{size[1]} | {network:.2f} | {stage:.2f} | {host:.2f} | {walls[False]:.2f} | "
              f"{walls[True]:.2f} | {walls[True] / max(network, host):.2f}x | {walls[True] / max(stage, host):.2f}x | "
              f"{walls[False] / max(network, host):.2f}x |", flush=True)
        prepared.close()


if __name__ == "__main__":
    main()
