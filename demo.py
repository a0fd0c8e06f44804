"""A dubbing page in the browser: drop in a template (a video or a photo of a face) and a speech recording (or record
one), and get the dubbed video. A Gradio app over the same dubbing library as inference.py (dubbing/).

    python demo.py [--landmark-ckpt PATH|REF] [--renderer-ckpt PATH|REF] [--models LANDMARK,RENDERER ...]
                   [--config configs/inference.yaml] [--device cpu|cuda] [--host 127.0.0.1] [--port 7860] [--share]
                   [--work-dir DIR] [--keep-minutes 60] [--max-upload-mb 200] [key=value ...]

Then open http://127.0.0.1:7860 (on a GPU server, forward the port first: ssh -L 7860:127.0.0.1:7860 user@server).
The networks load once per checkpoint pair; the template cache is shared by every request, so a second audio on
the same template skips the FaceMesh pass; one dub runs at a time, and a waiting visitor sees their place in the
queue. Uploads and results are deleted after --keep-minutes, and when the app stops (SIGTERM included). On a
non-loopback --host or with --share, visitors choose among the operator's checkpoint pairs (--models) and can name
no file. More in docs/demo.md.
"""
# No `from __future__ import annotations` here: Gradio finds the request parameter of a page's handler by its
# annotation, which must be the class itself.
import argparse
import atexit
import contextvars
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from config import INFERENCE_CONFIG
from data.errors import DiskError, InputError, one_line
from data.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

SWEEP_SECONDS = 60  # how often old uploads and results are looked for
STOP_WAIT_SECONDS = 120  # how long Stop waits for the dub to reach its next batch and end
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TEMPLATE_TYPES = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
# What a speech upload may be: audio files, the browser's recording, and videos (their audio track is used).
AUDIO_TYPES = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus", ".weba") + VIDEO_EXTENSIONS


class Cancelled(Exception):
    """The visitor pressed Stop: raised from the dub's report hook (dubbing/progress.py) to end it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for network, key in (("landmark", "landmark generator"), ("renderer", "renderer")):
        parser.add_argument(f"--{network}-ckpt", metavar="PATH|REF",
                            help=f"{key} checkpoint, a path or a hub reference, shown in the page (default: "
                                 f"checkpoints.{network} in the config)")
    parser.add_argument("--models", action="append", metavar="LANDMARK,RENDERER",
                        help="a checkpoint pair visitors may choose (paths or hub references, a comma between the "
                             "two; repeat for more); on a non-loopback --host or with --share the page offers only "
                             "these (default: the pair of --landmark-ckpt and --renderer-ckpt)")
    parser.add_argument("--config", default=str(INFERENCE_CONFIG),
                        help="YAML settings laid over configs/inference.yaml (default: that file); the page's "
                             "settings start from it")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: CUDA when present)")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime"),
                        help="what renders each frame on the CPU (the config's runtime; default torch)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens the page "
                             "to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also ask Gradio for a public share link (needs internet; off by default)")
    parser.add_argument("--work-dir", type=Path,
                        help="where the app makes its folder of uploads and dubbed videos (default: the system's "
                             "temporary folder); that folder is removed when the app stops, and nothing else there "
                             "is touched")
    parser.add_argument("--keep-minutes", type=float, default=60.0,
                        help="uploads, dubbed videos and visitors' template cache entries older than this are "
                             "deleted (default 60)")
    parser.add_argument("--max-upload-mb", type=float, default=200.0,
                        help="largest upload accepted, in megabytes (default 200)")
    parser.add_argument("overrides", nargs="*", help="config overrides, dotted.key=value (e.g. batch_size=8)")
    return parser.parse_intermixed_args(argv)


# ---------------------------------------------------------------- checkpoints
def is_local(reference: str) -> bool:
    """Whether a checkpoint reference names a file on this machine (a hub reference such as hf://OWNER/REPO@REV/PATH
    is resolved by the loaders)."""
    return "://" not in reference


def local_file(reference: str) -> Path | None:
    """The local path a reference names, without its #sha256=HEX; None for a hub reference or a malformed one."""
    from model_files import hub

    try:
        return hub.parse(reference).local
    except InputError:
        return None


def missing_checkpoints(landmark: str, renderer: str) -> list[str]:
    """The local checkpoint files of the pair that do not exist (an export folder counts as there)."""
    return [path for path in (landmark, renderer) if is_local(path) and not _exists(local_file(path))]


def _exists(path: Path | None) -> bool:
    return path is not None and (path.is_file() or path.is_dir())


def is_exposed(host: str, share: bool) -> bool:
    """Whether visitors may come from other machines: a --host other than loopback, or a share link."""
    return share or host not in LOOPBACK


def model_choices(specs: list[str] | None, default: tuple[str, str]) -> dict[str, tuple[str, str]]:
    """The operator's checkpoint pairs ('LANDMARK,RENDERER' each; none: the default pair) by the label the page
    shows: the files' names, never their folders."""
    pairs = []
    for spec in specs or ():
        landmark, comma, renderer = spec.partition(",")
        if not comma or not landmark.strip() or not renderer.strip():
            raise InputError("--models", f"{spec!r} is not LANDMARK,RENDERER")
        pairs.append((landmark.strip(), renderer.strip()))
    choices = {}
    for number, pair in enumerate(pairs or [default], 1):
        choices[f"{number}: {_shown_name(pair[0])} + {_shown_name(pair[1])}"] = pair
    return choices


def _shown_name(reference: str) -> str:
    return reference.partition("#")[0].rstrip("/").rpartition("/")[2] or reference


def check_upload(path: str, allowed: tuple[str, ...], max_bytes: float, what: str) -> None:
    """A one-line InputError unless the uploaded file has an allowed type (by its name) and size."""
    name = Path(path).name
    if Path(path).suffix.lower() not in allowed:
        raise InputError(name, f"not a {what} this page takes ({' '.join(allowed)})")
    if Path(path).stat().st_size > max_bytes:
        raise InputError(name, f"larger than the {max_bytes / 1e6:g} MB this page takes")


def checkpoint_notice(landmark: str, renderer: str) -> str:
    """Markdown for the top of the page: which checkpoint files are missing and how to get them; '' when none."""
    missing = missing_checkpoints(landmark, renderer)
    if not missing:
        return ""
    files = "\n".join(f"- `{path}`" for path in missing)
    return ("**Checkpoints missing.** These files do not exist:\n\n" + files + "\n\nGet a pair in one of these "
            "ways and put its paths in the two fields under *Checkpoints*:\n"
            "- a hub reference such as `hf://OWNER/REPO@REV/PATH`, fetched by the loader;\n"
            "- the official IP_LAP files (`landmarkgenerator_checkpoint.pth`, `renderer_checkpoint.pth`) under "
            "`checkpoints/`, or files exported from a training run (`python -m model_files.export --help`);\n"
            "- a quick, barely trained pair from `bash scripts/smoke.sh` (a few minutes on a CPU; the newest "
            "`runs/smoke/landmark/step_*.pt` and `runs/smoke/render/step_*.pt`).")


# ---------------------------------------------------------------- files
def sweep(folder: Path, age_seconds: float, now: float | None = None) -> list[Path]:
    """Delete the entries of `folder` last modified more than `age_seconds` ago; returns what was deleted."""
    now = time.time() if now is None else now
    deleted = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        try:
            if now - entry.stat().st_mtime <= age_seconds:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            deleted.append(entry)
        except OSError:  # gone already, or not ours to delete: the next sweep tries again
            pass
    return deleted


def sweep_files(files: set[Path], age_seconds: float, now: float | None = None) -> list[Path]:
    """Delete the files of `files` (the app's own, such as the template cache entries it wrote) last modified more
    than `age_seconds` ago, and forget them; returns what was deleted."""
    now = time.time() if now is None else now
    deleted = []
    for path in list(files):
        try:
            if now - path.stat().st_mtime <= age_seconds:
                continue
            path.unlink()
            deleted.append(path)
        except FileNotFoundError:
            pass
        except OSError:  # the next sweep tries again
            continue
        files.discard(path)
    return deleted


def keep_sweeping(folder: Path, age_seconds: float, every: float = SWEEP_SECONDS,
                  files: set[Path] | None = None) -> threading.Event:
    """Sweep `folder` (`sweep`) and `files` (`sweep_files`) every `every` seconds in a daemon thread, for as long as
    the app runs or until the returned event is set."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            sweep(folder, age_seconds)
            sweep_files(files if files is not None else set(), age_seconds)

    threading.Thread(target=run, name="demo-sweep", daemon=True).start()
    return stop


def clean_up(work: Path, cache_files: set[Path]) -> None:
    """Remove the app's folder and the template cache entries it wrote (at exit)."""
    shutil.rmtree(work, ignore_errors=True)
    for path in list(cache_files):
        path.unlink(missing_ok=True)


def _stop_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------- the dubs
@dataclass
class Running:
    """A visitor's dub in progress: Stop sets `cancel`; the dub sets `done` when it has ended."""

    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    frames: tuple[int, int | None] = (0, None)
    line: str = ""


class Dubber:
    """What the page's requests share: the networks (loaded once per checkpoint pair), the device, the config the
    page's settings are laid over, the results folder, and one lock so that one dub runs at a time."""

    def __init__(self, config_path: str, overrides: list[str], device: str, outputs: Path,
                 choices: dict[str, tuple[str, str]] | None = None, max_upload_bytes: float = float("inf")):
        from config import pick_device

        self.config_path, self.overrides, self.outputs = config_path, list(overrides), outputs
        self.device = pick_device(device)
        self.lock = threading.Lock()  # a cancelled dub ends at its next batch, perhaps after the next one began
        self._models: dict[tuple, object] = {}
        self.facemesh_passes = 0
        self.running: dict[str, Running] = {}
        # choices: the operator's checkpoint pairs by label, the only ones a visitor can use (None: visitors type
        # references, on loopback only); cache_files: the template cache entries this app wrote (swept with it).
        self.choices, self.max_upload_bytes = choices, max_upload_bytes
        self.cache_files: set[Path] = set()

    def pair(self, landmark: str, renderer: str) -> tuple[str, str]:
        """The checkpoint pair a request names: with choices, `landmark` is a choice's label (anything else is
        refused); without, the two references as typed."""
        if self.choices is None:
            return landmark.strip(), renderer.strip()
        if landmark not in self.choices:
            raise InputError("checkpoints", "choose one of the pairs this page offers")
        return self.choices[landmark]

    def config(self, page: list[str] = ()) -> dict:
        """The dubbing config: the config file, the command line's overrides, then the page's."""
        from config import load_config

        return load_config(self.config_path, self.overrides + list(page), base=INFERENCE_CONFIG)

    def models(self, landmark: str, renderer: str):
        """Both networks on the device, loaded once per checkpoint pair (a changed local file is loaded again)."""
        import dubbing
        from dubbing.cache import cache_dir

        config = self.config()  # the runtime is the server's setting, not the page's
        key = (landmark, renderer, config["runtime"], config["winograd"],
               *(_stamp(path) for path in (landmark, renderer)))
        if key not in self._models:  # a pair that fails keeps the last one
            models = dubbing.load_models(landmark, renderer, self.device,
                                         require_sha256=config["checkpoints"]["require_sha256"],
                                         runtime=config["runtime"], graphs=cache_dir(config),
                                         winograd=config["winograd"])
            self._models.clear()  # one pair in memory at a time
            self._models[key] = models
        return self._models[key]

    def dub(self, session: str, template: str | None, audio: str | None, landmark: str, renderer: str,
            page: list[str], sketch: bool, progress) -> tuple[str | None, str | None, str]:
        """One request: (dubbed video, sketch video or None, status line). Bad input, a missing checkpoint and a
        cancel end in a status line that says so, with nothing left in the results folder."""
        running = self.running[session] = Running()
        try:
            with self.lock:
                video, sketch_video, running.line = self._dub(running, template, audio, *self.pair(landmark, renderer),
                                                              page, sketch, progress)
                return video, sketch_video, running.line
        except Cancelled:
            running.line = f"cancelled after {_frames(running.frames)}; nothing was kept"
        except (InputError, DiskError) as error:
            running.line = "error: " + _named(str(error), template, audio)
        except Exception as error:  # a defect: the page gets one line, the log the whole story
            traceback.print_exc()
            running.line = f"error: the dub failed unexpectedly ({one_line(error)}); the server's log has details"
        finally:
            running.done.set()
            if self.running.get(session) is running:
                del self.running[session]
        return None, None, running.line

    def _dub(self, running: Running, template: str | None, audio: str | None, landmark: str, renderer: str,
             page: list[str], sketch: bool, progress) -> tuple[str, str | None, str]:
        import dubbing
        from dubbing.progress import ANALYSIS, FRAMES

        if not template:
            raise InputError("template", "upload a video or a photo of a face")
        if not audio:
            raise InputError("audio", "upload or record the speech that drives the face")
        check_upload(template, TEMPLATE_TYPES, self.max_upload_bytes, "template (a video or a photo)")
        check_upload(audio, AUDIO_TYPES, self.max_upload_bytes, "speech recording")
        config = self.config(page)
        report_progress = _reporter(progress)
        analysed = False

        def report(stage: str, done: int, total: int | None) -> None:
            nonlocal analysed
            if running.cancel.is_set():
                raise Cancelled
            if stage == ANALYSIS and not analysed:
                analysed = True
                self.facemesh_passes += 1
            if stage == FRAMES:
                running.frames = (done, total)
            report_progress(stage, done, total)

        report("loading the networks", 0, None)
        models = self.models(landmark, renderer)
        report("preparing the template", 0, None)
        from dubbing.cache import cache_dir

        cache = cache_dir(config)
        cached = set(cache.glob("*.npz")) if cache is not None and cache.is_dir() else set()
        try:
            prepared = dubbing.prepare_template(template, models, config, progress=False, report=report)
        finally:
            if cache is not None and cache.is_dir():  # one dub at a time: what appeared is this dub's entry
                self.cache_files |= set(cache.glob("*.npz")) - cached
        try:
            folder = self.outputs / uuid.uuid4().hex
            output = folder / f"{Path(template).stem}_{Path(audio).stem}.mp4"
            sketch_output = output.with_name(f"{output.stem}_sketch.mp4") if sketch else None
            try:
                result = dubbing.dub_prepared(prepared, audio, output, models, config, sketch_output,
                                              progress=False, report=report)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        finally:
            prepared.close()
        seconds = result.seconds + prepared.seconds
        analysis = (f"template analysed (FaceMesh pass {self.facemesh_passes} of this server)" if analysed else
                    f"template analysis reused (FaceMesh passes of this server: {self.facemesh_passes})")
        line = f"{dubbing.summary(result, prepared.template.fps, seconds)} on {self.device}; {analysis}"
        if prepared.note:
            line += "; " + _named(prepared.note, template, audio)
        return str(output), str(sketch_output) if sketch_output else None, line

    def stop(self, session: str) -> str:
        """Cancel the visitor's running dub and wait for it to end: the status line."""
        running = self.running.get(session)
        if running is None or running.done.is_set():
            return "no dub of yours is running (one waiting in the queue leaves it)"
        running.cancel.set()
        running.done.wait(STOP_WAIT_SECONDS)
        return running.line or "stopping: the dub ends at its next batch"


def _stamp(reference: str) -> int | None:
    """A local file's modification time (so that a rewritten checkpoint is loaded again); None otherwise."""
    path = local_file(reference)
    return path.stat().st_mtime_ns if path is not None and path.is_file() else None


def _frames(frames: tuple[int, int | None]) -> str:
    done, total = frames
    return f"{done} of {total} frames" if total else f"{done} frames"


def _named(line: str, *uploads: str | None) -> str:
    """`line` with the server's paths of uploaded files replaced by their names, as the visitor knows them."""
    for path in uploads:
        if path:
            line = line.replace(str(path), Path(path).name)
    return line


def _reporter(progress):
    """A report hook that moves the page's progress bar (a gr.Progress), callable from the dub's stage threads:
    Gradio finds the request from context variables, which a new thread does not inherit."""
    context = contextvars.copy_context()

    def report(stage: str, done: int, total: int | None) -> None:
        if done == 0 and total is None:  # a step without parts (loading the networks)
            context.copy().run(progress, 0.0, desc=stage)
        else:
            context.copy().run(progress, (done, total), desc=stage, unit="frames")
    return report


def page_overrides(refs: str, fps: str, seconds: float | None, smooth: float) -> list[str]:
    """The page's settings as config overrides (refs, output.fps, audio_seconds, smooth_boxes)."""
    refs, fps = str(refs).strip(), str(fps).strip()
    return [f"refs={refs}", f"output.fps={fps}", f"audio_seconds={seconds if seconds else 'null'}",
            f"smooth_boxes={int(smooth)}"]


def face_override(face: str | None) -> str:
    """The page's face choice as a config override (an unreadable one is the dub's one-line error)."""
    return f"face={(face or '').strip() or 'largest'}"


def chooser_picture(template: str | None, max_faces: int):
    """The template's first frame with its faces numbered (dubbing/chooser.py), or None where it has no picture
    to show (none uploaded, not readable, no face)."""
    from dubbing.chooser import chooser_picture as picture

    if not template:
        return None
    try:
        image, count = picture(template, max_faces)
    except (InputError, StopIteration):
        return None
    return image if count else None


# ---------------------------------------------------------------- the page
def build_page(dubber: Dubber, landmark: str, renderer: str, keep_minutes: float):
    """The Gradio page over `dubber`, its checkpoint fields starting at `landmark` and `renderer`; when the dubber
    has choices (an exposed app), a list of the operator's pairs instead, and no field or notice that names a file."""
    import gradio as gr

    config = dubber.config()
    keep = max(1, round(keep_minutes * 60))  # Gradio deletes its uploads and its copies of the results
    with gr.Blocks(title="IP_LAP dubbing", delete_cache=(SWEEP_SECONDS, keep), analytics_enabled=False) as page:
        gr.Markdown("# IP_LAP dubbing\nA template (a video or a photo of a face) and a speech recording in; the "
                    "face speaking it out. One dub runs at a time: a waiting visitor sees their place in the queue.")
        exposed = dubber.choices is not None
        notice = None if exposed else gr.Markdown(checkpoint_notice(landmark, renderer), elem_id="notice")
        with gr.Row():
            with gr.Column():
                template = gr.File(label="template: a video or a photo of a face", type="filepath",
                                   file_types=list(TEMPLATE_TYPES), elem_id="template")
                chooser = gr.Image(label="the faces of the first frame: click the one to dub", type="numpy",
                                   interactive=False, height=240, elem_id="chooser")
                face = gr.Textbox(label="face to dub (largest, index:K, point:FRAME,X,Y, box:..., auto)",
                                  value=str(config["face"]), elem_id="face")
                audio = gr.Audio(label="speech", sources=["upload", "microphone"], type="filepath", format=None,
                                 buttons=["download"], elem_id="audio")
                with gr.Accordion("Settings", open=True):
                    refs = gr.Textbox(label="reference frames (refs): a number, or 'fifth' of the template",
                                      value=str(config["refs"]), elem_id="refs")
                    fps = gr.Textbox(label="output frame rate: 'template' (its own) or frames per second",
                                     value=str(config["output"]["fps"]), elem_id="fps")
                    seconds = gr.Number(label="preview: dub only the first seconds of the speech (empty: all)",
                                        value=config["audio_seconds"], minimum=0, elem_id="seconds")
                    smooth = gr.Slider(label="box smoothing (frames; 1 = off)", minimum=1, maximum=15, step=1,
                                       value=int(config["smooth_boxes"]), elem_id="smooth")
                    sketch = gr.Checkbox(label="also make the sketch video (predicted landmarks | result)",
                                         value=False, elem_id="sketch")
                if exposed:  # the operator's pairs only; the unused second input keeps one handler for both modes
                    landmark_box = gr.Dropdown(list(dubber.choices), value=next(iter(dubber.choices)),
                                               label="checkpoints", elem_id="models")
                    renderer_box = gr.State("")
                else:
                    with gr.Accordion("Checkpoints", open=bool(missing_checkpoints(landmark, renderer)),
                                      elem_id="checkpoints"):
                        landmark_box = gr.Textbox(label="landmark generator: a path or a hub reference",
                                                  value=landmark, elem_id="landmark")
                        renderer_box = gr.Textbox(label="renderer: a path or a hub reference", value=renderer,
                                                  elem_id="renderer")
                with gr.Row():
                    start = gr.Button("Dub", variant="primary", elem_id="start")
                    stop = gr.Button("Stop", elem_id="stop")
            with gr.Column():
                video = gr.Video(label="dubbed video", format=None, buttons=["download"], height=360,
                                 elem_id="dubbed")
                status = gr.Textbox(label="status", interactive=False, elem_id="status")
                sketch_video = gr.Video(label="sketch video (predicted sketch | result)", format=None,
                                        buttons=["download"], height=240, elem_id="sketch-video")

        def on_dub(template, audio, landmark, renderer, refs, fps, seconds, smooth, sketch, face,
                   request: gr.Request, progress=gr.Progress()):  # noqa: B008 (Gradio finds the progress bar by it)
            overrides = page_overrides(refs, fps, seconds, smooth) + [face_override(face)]
            return dubber.dub(request.session_hash, template, audio, landmark, renderer, overrides, sketch, progress)

        def on_stop(request: gr.Request):
            return dubber.stop(request.session_hash)

        def on_template(template):
            return chooser_picture(template, int(config["faces"]["max"])), str(config["face"])

        def on_pick(event: gr.SelectData):
            x, y = event.index
            return f"point:0,{int(x)},{int(y)}"

        template.change(on_template, template, [chooser, face], concurrency_limit=None)
        chooser.select(on_pick, None, face, queue=False)
        running = start.click(on_dub, [template, audio, landmark_box, renderer_box, refs, fps, seconds, smooth,
                                       sketch, face], [video, sketch_video, status], concurrency_limit=1)
        stop.click(on_stop, None, status, cancels=[running], concurrency_limit=None)
        for box in () if exposed else (landmark_box, renderer_box):
            box.change(checkpoint_notice, [landmark_box, renderer_box], notice, queue=False)
    return page


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        for option, value in (("--keep-minutes", args.keep_minutes), ("--max-upload-mb", args.max_upload_mb)):
            if value <= 0:
                raise InputError(option, "must be more than 0")
        overrides = args.overrides + ([f"runtime={args.runtime}"] if args.runtime else [])
        dubber = Dubber(args.config, overrides, args.device, Path(), max_upload_bytes=args.max_upload_mb * 1e6)
        config = dubber.config()
        from dubbing.pipeline import check_config

        check_config(config)
        landmark = args.landmark_ckpt or str(config["checkpoints"]["landmark"])
        renderer = args.renderer_ckpt or str(config["checkpoints"]["renderer"])
        if args.models or is_exposed(args.host, args.share):  # visitors choose among the operator's pairs only
            dubber.choices = model_choices(args.models, (landmark, renderer))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for pair in dubber.choices.values() if dubber.choices else [(landmark, renderer)]:
        for path in missing_checkpoints(*pair):
            print(f"warning: {path}: checkpoint not found; the page says how to get one", file=sys.stderr)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    # The app's own folder: everything the sweeps and the clean-up delete is in it (or is a cache entry it wrote).
    work = Path(tempfile.mkdtemp(prefix="iplap-demo-", dir=args.work_dir))
    atexit.register(clean_up, work, dubber.cache_files)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # a service manager's stop: exit through the clean-up
    dubber.outputs = work / "outputs"
    dubber.outputs.mkdir(parents=True, exist_ok=True)
    if dubber.device.type == "cpu":
        from allocator import keep_freed_memory

        keep_freed_memory()  # process-wide, as in inference.py: the renderer's CPU pass runs faster with it
    # Gradio reads these when imported: no usage reports (there may be no internet), uploads beside the results.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["GRADIO_TEMP_DIR"] = str(work / "uploads")
    import gradio as gr

    keep_sweeping(dubber.outputs, args.keep_minutes * 60, files=dubber.cache_files)
    page = build_page(dubber, landmark, renderer, args.keep_minutes)
    page.queue(default_concurrency_limit=1)
    print(f"dubbing on {dubber.device}; uploads and results in {work}, kept {args.keep_minutes:g} minutes",
          file=sys.stderr)
    try:
        page.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=False,
                    max_file_size=f"{args.max_upload_mb:g}mb",
                    theme=gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                            font_mono=["ui-monospace", "monospace"]))
    except OSError:  # Gradio's message names its own settings, not this script's options
        print(f"error: {args.host}:{args.port}: cannot listen there (the port is taken, or the address is not this "
              "machine's); choose another --port or --host", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
