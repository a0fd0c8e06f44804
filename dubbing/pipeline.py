"""A dub from start to end: the template prepared once (analysis, references), then for each audio pass 2, in
four stages joined by bounded queues:

1. decode the template frames and prepare each batch: the landmark generator's inputs and prediction, the
   target sketches, the face crops and the audio windows (a thread of its own; on CUDA its own stream);
2. the renderer (the calling thread, which feeds the GPU; with frame_work on the device, crop and paste too);
3. paste-back (a thread of its own; on the device path it only waits for the pasted frames);
4. encoding and muxing (a thread of its own).

Each stage's heavy calls (PyAV, OpenCV, numpy, torch) release the GIL (bench/README.md). With `pipeline: false`
the same functions run one after the other in one thread; the output is the same frame for frame. Each stage holds
the batch of `batch_size` output frames it works on, and each queue between two stages at most QUEUE_DEPTH (2)
batches (dubbing/overlap.py), so memory does not grow with the audio's length. When the audio outlasts the
template, the template loops forwards and backwards in its own frames, read back from a raw spool file on disk (in
the output's folder) instead of being held in memory.

Frames where FaceMesh finds no face are written unchanged; windows around them borrow the landmarks of the
nearest face frame, so their neighbours still render.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from config import INFERENCE_CONFIG, load_config
from data.audio import MEL_PER_SECOND, MEL_STEPS, SAMPLE_RATE, frames_covered, load_audio, melspectrogram
from data.crop import crop_face_tensor
from data.errors import DiskError, InputError, disk_problem
from dubbing.cache import cache_dir
from dubbing.faces import check_faces
from dubbing.frames import FrameSpool, read_selected, spool_template, template_frames
from dubbing.network import (
    RUNTIMES,
    Encoded,
    HostCopy,
    Models,
    compiled,
    encode_references,
    generate,
    predict_content,
    render,
    upload_frames,
)
from dubbing.overlap import run_overlapped
from dubbing.paste import mask_outline, paste_face, paste_face_tensor, sketch_frame
from dubbing.prepare import FrameBatch, RenderInputs, blend_windows, landmark_inputs, render_inputs
from dubbing.progress import FRAMES, Report, StageProgress
from dubbing.template import (
    MAX_TEMPLATE_FPS,
    Template,
    analyse_template,
    choose_references,
    dubbing_rate,
    ping_pong,
    reference_count,
)
from dubbing.writer import Outputs, check_encoder, choose_encoder

MIN_AUDIO_SECONDS = MEL_STEPS / MEL_PER_SECOND  # one audio window, 0.2 s
FRAME_WORK = ("auto", "device", "host")  # where crop and paste-back run (frames_on_device)


def default_config() -> dict:
    """configs/inference.yaml as a dict."""
    return load_config(INFERENCE_CONFIG)


def check_config(config: dict) -> None:
    """One-line errors for dubbing settings that cannot work."""
    kernel = int(config["mask"]["kernel"])
    if kernel < 1 or kernel % 2 == 0:
        raise InputError(f"mask.kernel={kernel}", "the mask blur kernel must be a positive odd number")
    if config["batch_size"] != "auto" and not (isinstance(config["batch_size"], int) and config["batch_size"] >= 1):
        raise InputError(f"batch_size={config['batch_size']}", "batch_size takes a positive number or 'auto'")
    if isinstance(config["max_refs"], bool) or not isinstance(config["max_refs"], int) or config["max_refs"] < 1:
        raise InputError(f"max_refs={config['max_refs']}", "max_refs takes a positive number")
    if int(config["landmark_refs"]) < 1:
        raise InputError(f"landmark_refs={config['landmark_refs']}", "landmark_refs must be at least 1")
    fps = config["output"]["fps"]
    if fps != "template" and not (isinstance(fps, (int, float)) and not isinstance(fps, bool)
                                  and 1 <= fps <= MAX_TEMPLATE_FPS):
        raise InputError(f"output.fps={fps}", f"output.fps takes 'template' or a rate from 1 to {MAX_TEMPLATE_FPS}")
    check_encoder(config["output"]["encoder"])
    for key in ("pipeline", "compile"):
        if config[key] not in (True, False):
            raise InputError(f"{key}={config[key]}", f"{key} takes true or false")
    if config["checkpoints"]["require_sha256"] not in (True, False):
        raise InputError(f"checkpoints.require_sha256={config['checkpoints']['require_sha256']}",
                         "checkpoints.require_sha256 takes true or false")
    if config["runtime"] not in RUNTIMES:
        raise InputError(f"runtime={config['runtime']}", f"runtime takes one of {', '.join(RUNTIMES)}")
    if config["frame_work"] not in FRAME_WORK:
        raise InputError(f"frame_work={config['frame_work']}", f"frame_work takes one of {', '.join(FRAME_WORK)}")
    check_faces(config)


def batch_size_for(config: dict, device: torch.device) -> int:
    """Output frames per network call: the config's number, or for 'auto' 1 on CPU (measured fastest there,
    bench/README.md) and 16 on CUDA."""
    if config["batch_size"] == "auto":
        return 16 if device.type == "cuda" else 1
    return int(config["batch_size"])


def frames_on_device(config: dict, device: torch.device) -> bool:
    """Whether the face crops and paste-back run in torch on the networks' device (`frame_work`): 'auto' on CUDA
    only (on the CPU OpenCV is faster, bench/frame_work.py), 'device' anywhere, 'host' never."""
    return config["frame_work"] == "device" or (config["frame_work"] == "auto" and device.type == "cuda")


def load_driving_audio(path: str | Path) -> np.ndarray:
    """16 kHz mono samples of the driving audio, at least one 0.2 s window long."""
    wav = load_audio(path, SAMPLE_RATE)
    if len(wav) < MIN_AUDIO_SECONDS * SAMPLE_RATE:
        raise InputError(path, f"the audio lasts {len(wav) / SAMPLE_RATE:.3f} s, shorter than one "
                               f"{MIN_AUDIO_SECONDS:.1f} s window")
    return wav


@dataclass
class DubResult:
    output: Path
    frames: int
    rendered: int  # frames with a face, generated
    seconds: float
    setup_seconds: float = 0.0  # the work before the first frame is rendered (for `dub`, the template's too)
    uncertain: int = 0  # template frames passed through: the chosen face's identity was uncertain there


def summary(result: DubResult, fps: float, seconds: float | None = None) -> str:
    """One dub in words: its frames at `fps`, those with a face, and the time it took (`seconds`, default the
    dub's own) as seconds and frames per second."""
    seconds = result.seconds if seconds is None else seconds
    rate = result.frames / seconds if seconds else float("inf")
    uncertain = f"; {result.uncertain} template frames passed through, identity uncertain" if result.uncertain \
        else ""
    return (f"{result.frames} frames at {fps:g} fps ({result.rendered} with a face{uncertain}) in {seconds:.1f} s, "
            f"{rate:.2f} frames/s")


# ---------------------------------------------------------------- one state object per template
@dataclass
class Prepared:
    """A template ready for any number of audios: pass 1's analysis and the encoded references. `seconds`: what
    preparing cost; `note`: why the template is dubbed at 25 fps rather than its own rate, when it is (one line)."""

    template: Template
    encoded: Encoded
    seconds: float
    spool: FrameSpool | None = None
    note: str | None = None

    def frame_spool(self, directory: Path) -> FrameSpool:
        """The template's frames on disk, written on first use (an audio that outlasts the template loops it)."""
        if self.spool is None:
            self.spool = spool_template(self.template, directory)
        return self.spool

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None


def prepare_template(video: str | Path, models: Models, config: dict, progress: bool = True,
                     report: Report | None = None, face: str | None = None) -> Prepared:
    """Pass 1 (or its cached result) and the references, encoded once for every audio this template is dubbed
    with. Raises InputError for a missing or unusable template, or a `face` (default: the config's) that names
    no face. `report`: see dubbing/progress.py."""
    started = time.perf_counter()
    check_config(config)
    video = Path(video)
    if not video.is_file():
        raise InputError(video, "no such file")
    rate, note = dubbing_rate(video, config["output"]["fps"])
    template = analyse_template(video, smooth=int(config["smooth_boxes"]),
                                detect_every_frame=config["detect_every_frame"], progress=progress,
                                cache_dir=cache_dir(config), fps=rate, report=report,
                                face=config["face"] if face is None else face, faces=config["faces"])
    landmark_refs = choose_references(template, int(config["landmark_refs"]))
    # Distinct frames only: a repeated reference image would add cost and nothing else.
    image_refs = np.unique(choose_references(template, reference_count(config["refs"], template, config["max_refs"])))
    frames = read_selected(template.path, image_refs, template.fps)
    encoded = encode_references(models, template, frames, landmark_refs, image_refs, config["bf16"])
    if models.device.type == "cuda":
        torch.cuda.synchronize(models.device)  # the preparation stage reads the tokens from its own stream
    return Prepared(template, encoded, time.perf_counter() - started, note=note)


# ---------------------------------------------------------------- one state object per dub
@dataclass
class Dub:
    """One audio on one prepared template: the driving audio (the 16 kHz mel, the 25 fps frames it lasts, the
    samples to mux at `audio_rate`), the output's `count` frames and their template frames (`order`), and the
    settings of the run."""

    prepared: Prepared
    models: Models
    config: dict
    mel: np.ndarray
    grid: int
    muxed: np.ndarray
    count: int
    order: np.ndarray

    @property
    def template(self) -> Template:
        return self.prepared.template

    @property
    def audio_rate(self) -> int:
        return int(self.config["output"]["audio_rate"])

    @property
    def batch_size(self) -> int:
        return batch_size_for(self.config, self.models.device)

    @property
    def rows(self) -> int:
        """Rows every network call is padded to a multiple of: the batch size on CUDA (fixed shapes for
        torch.compile and CUDA graphs); 0 (no padding) on the CPU, where a padded row costs a real one's time."""
        return self.batch_size if self.models.device.type == "cuda" else 0

    @property
    def on_device(self) -> bool:
        return frames_on_device(self.config, self.models.device)


def read_driving(audio: str | Path, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """The driving audio of one dub: 16 kHz mono samples (cut to `audio_seconds` when set) and the same stretch at
    the output's audio rate, to mux. Raises InputError for an audio that is missing, unreadable or too short."""
    wav = load_driving_audio(audio)
    if config.get("audio_seconds"):
        wav = wav[:max(int(float(config["audio_seconds"]) * SAMPLE_RATE), int(MIN_AUDIO_SECONDS * SAMPLE_RATE))]
    rate = int(config["output"]["audio_rate"])
    return wav, load_audio(audio, rate)[:int(round(len(wav) * rate / SAMPLE_RATE))]


def new_dub(prepared: Prepared, wav: np.ndarray, muxed: np.ndarray, output: Path, models: Models, config: dict
            ) -> Dub:
    """The state of one dub from its driving audio (`read_driving`); raises InputError when the audio lasts less
    than one output frame."""
    template = prepared.template
    count = frames_covered(len(wav), fps=template.fps)
    if count == 0:
        raise InputError(output, f"the audio lasts less than one frame at {template.fps:g} fps")
    if config["compile"]:
        models = compiled(models)
    return Dub(prepared, models, config, melspectrogram(wav), frames_covered(len(wav)), muxed, count,
               ping_pong(np.arange(count), len(template)))


# ---------------------------------------------------------------- the stages
def frame_batches(dub: Dub, spool: FrameSpool | None) -> Iterator[FrameBatch]:
    """Stage 1's source: the template frames of every batch of output frames, in output order."""
    frames = template_frames(dub.template, dub.order, spool)
    try:
        for start in range(0, dub.count, dub.batch_size):
            steps = np.arange(start, min(start + dub.batch_size, dub.count))
            batch = [next(frames) for _ in steps]
            yield FrameBatch(steps, batch, np.flatnonzero(dub.template.has_face[dub.order[steps]]))
    finally:
        frames.close()


def prepare_batch(dub: Dub, batch: FrameBatch) -> tuple[FrameBatch, RenderInputs | None]:
    """Stage 1: the renderer's inputs for the batch's frames with a face (None when it has none)."""
    if len(batch.live) == 0:
        return batch, None
    inputs = landmark_inputs(dub.template, dub.mel, dub.grid, dub.count, batch.steps[batch.live])
    content = predict_content(dub.models, dub.prepared.encoded.tokens, inputs, dub.config["bf16"], dub.rows)
    return batch, render_inputs(dub.template, dub.mel, dub.grid, dub.count, batch, blend_windows(content, inputs),
                                dub.models.face_size, crop=not dub.on_device)


def render_batch(dub: Dub, item: tuple[FrameBatch, RenderInputs | None]
                 ) -> tuple[FrameBatch, RenderInputs | None, HostCopy | None]:
    """Stage 2: the generated faces on their way back to the host; or, with the frame work on the device, the
    batch's frames uploaded once, cropped for the renderer, the faces pasted back, and the output frames on their
    way back."""
    batch, inputs = item
    if inputs is None:
        return batch, None, None
    models, refs, bf16 = dub.models, dub.prepared.encoded.refs, dub.config["bf16"]
    if not dub.on_device:
        return batch, inputs, render(models, refs, inputs, bf16, dub.rows)
    with torch.inference_mode():
        frames = upload_frames(batch.frames, models.device)  # (B, H, W, 3) uint8
        crops = torch.stack([crop_face_tensor(frames[i], box, models.face_size)
                             for i, box in zip(batch.live, inputs.boxes)])
        generated = generate(models, refs, inputs, bf16, dub.rows, crops)
        kernel, sigma = _mask_blur(dub)
        for n, i in enumerate(batch.live):
            paste_face_tensor(frames[i], generated[n], inputs.boxes[n], _outline(dub, batch, inputs, n), kernel,
                              sigma)
    return batch, inputs, HostCopy(frames)


def paste_batch(dub: Dub, item: tuple[FrameBatch, RenderInputs | None, HostCopy | None], want_sketches: bool
                ) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Stage 3's work: the batch's output frames (and sketch views), faces pasted where rendered (on the device
    path they arrive pasted)."""
    batch, inputs, copy = item
    frames = list(batch.frames)
    sketches: list[np.ndarray | None] = [np.zeros_like(f) for f in frames] if want_sketches else [None] * len(frames)
    if inputs is None:
        return frames, sketches
    if dub.on_device:
        frames = list(copy.ready())
    else:
        generated, (kernel, sigma) = copy.ready(), _mask_blur(dub)
        for n, i in enumerate(batch.live):
            frames[i] = paste_face(frames[i], generated[n], inputs.boxes[n], _outline(dub, batch, inputs, n),
                                   kernel, sigma)
    if want_sketches:
        for n, i in enumerate(batch.live):
            sketches[i] = sketch_frame(inputs.landmarks[n], inputs.boxes[n], dub.template.size)
    return frames, sketches


def _mask_blur(dub: Dub) -> tuple[int, float]:
    return int(dub.config["mask"]["kernel"]), float(dub.config["mask"]["sigma"])


def _outline(dub: Dub, batch: FrameBatch, inputs: RenderInputs, n: int) -> np.ndarray:
    """The pasted hull's points (pixels) for the batch's n-th rendered frame."""
    frame = dub.order[batch.steps[batch.live[n]]]
    return mask_outline(dub.template.landmarks[frame], inputs.landmarks[n], inputs.boxes[n])


# ---------------------------------------------------------------- running them
def dub(video: str | Path, audio: str | Path, output: str | Path, models: Models, config: dict | None = None,
        sketch_output: str | Path | None = None, progress: bool = True, report: Report | None = None) -> DubResult:
    """Dub `video` (any frame rate, or a still image) with `audio` into `output` (.mp4), at the rate
    `output.fps` chooses (`dubbing_rate`), at the template's size, carrying the driving audio. Raises InputError on
    bad input and leaves no output file. `report` hears of every FaceMesh frame and every batch written, and may
    raise to stop the dub (dubbing/progress.py)."""
    started = time.perf_counter()
    config, video, output = checked_request(video, output, config, audio)
    wav, muxed = read_driving(audio, config)  # a bad audio file fails before the template's FaceMesh pass
    prepared = prepare_template(video, models, config, progress, report)
    try:
        state = new_dub(prepared, wav, muxed, output, models, config)
        return _run(state, output, sketch_output, StageProgress(FRAMES, state.count, progress, report), started)
    finally:
        prepared.close()


def dub_prepared(prepared: Prepared, audio: str | Path, output: str | Path, models: Models, config: dict,
                 sketch_output: str | Path | None = None, progress: bool = True, report: Report | None = None
                 ) -> DubResult:
    """Dub a prepared template (`prepare_template`) with one more audio: nothing of the template is analysed or
    encoded again. The same output as `dub` with the same inputs and settings, frame for frame. `report` hears
    of every batch written and may raise to stop the dub (dubbing/progress.py)."""
    started = time.perf_counter()
    output = Path(output)
    _check_output(output, prepared.template.path, Path(audio))
    state = new_dub(prepared, *read_driving(audio, config), output, models, config)
    return _run(state, output, sketch_output, StageProgress(FRAMES, state.count, progress, report), started)


def checked_request(video: str | Path, output: str | Path, config: dict | None, *audios: str | Path
                    ) -> tuple[dict, Path, Path]:
    """A dub's config (the default when None), checked, and its template and output as paths; InputError for a
    missing template or an output that would overwrite an input."""
    config = default_config() if config is None else config
    check_config(config)
    video, output = Path(video), Path(output)
    if not video.is_file():
        raise InputError(video, "no such file")
    _check_output(output, video, *(Path(audio) for audio in audios))
    return config, video, output


def _check_output(output: Path, *inputs: Path) -> None:
    if output.resolve() in tuple(path.resolve() for path in inputs):
        raise InputError(output, "the output would overwrite an input")


def _run(state: Dub, output: Path, sketch_output: str | Path | None, bar: StageProgress, started: float,
         layers: Callable[[FrameBatch], tuple] | None = None) -> DubResult:
    """Pass 2: render, paste and encode every output frame, in overlapping stages or in series. A full,
    read-only or failing disk under the output (or its spool) is one DiskError, and no partial file stays (nor
    when `bar`'s report hook raises to cancel). `layers` (several speakers, dubbing/speakers.py): each batch's
    (batch, frames, sketches) made by it, in series, instead of by the stages."""
    template, outputs, rendered = state.template, None, 0

    def paste(item: tuple[FrameBatch, RenderInputs | None, HostCopy | None]
              ) -> tuple[FrameBatch, list[np.ndarray], list[np.ndarray | None]]:
        return item[0], *paste_batch(state, item, outputs.sketch is not None)

    def encode(item: tuple[FrameBatch, list[np.ndarray], list[np.ndarray | None]]) -> None:
        nonlocal rendered
        batch, frames, sketches = item
        for frame, sketch in zip(frames, sketches):
            outputs.write(frame, sketch)
        rendered += len(batch.live)
        bar.advance(len(frames))

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        spool = state.prepared.frame_spool(output.parent) if state.count > len(template) else None  # a loop
        outputs = Outputs(output, Path(sketch_output) if sketch_output else None, template.fps, state.muxed,
                          state.audio_rate, int(state.config["output"]["crf"]),
                          choose_encoder(state.config["output"]["encoder"], state.models.device))
        setup = time.perf_counter() - started
        prepared = (prepare_batch(state, batch) for batch in frame_batches(state, spool))
        if layers is not None:
            for batch in frame_batches(state, spool):
                encode(layers(batch))
        elif state.config["pipeline"]:
            run_overlapped(prepared, lambda item: render_batch(state, item), paste, encode,
                           source_context=_stage_stream(state.models))
        else:
            for item in prepared:
                encode(paste(render_batch(state, item)))
        outputs.close()
    except BaseException as error:
        if outputs is not None:
            outputs.abort()
        problem = disk_problem(error)
        if problem is not None:
            raise DiskError(output, f"{problem} (video not written)") from None
        raise
    finally:
        bar.close()
    return DubResult(output, state.count, rendered, time.perf_counter() - started, setup, template.uncertain)


def _stage_stream(models: Models) -> Callable[[], contextlib.AbstractContextManager]:
    """The context stage 1 runs in: on CUDA a stream of its own, so that reading the landmark prediction back
    waits for that prediction only, not for the renders queued behind it."""
    if models.device.type != "cuda":
        return contextlib.nullcontext
    return lambda: torch.cuda.stream(torch.cuda.Stream(models.device))
