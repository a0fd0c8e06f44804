"""Dubbing: a template video (or photo) and a driving audio -> a talking-face video (paper sections 3.2 and 4).

The output's frame rate (`output.fps`, `dubbing_rate`): the template's own for a constant-rate video up to 60 fps,
else 25 fps, or a rate the config names. Two passes over the template, so that memory does not grow with the
length of either input:
1. decode at that rate and run FaceMesh once per frame, keeping only landmarks, crop boxes and face flags (about
   1 KB a frame); choose the reference frames by lip openness and encode the reference images once.
2. for each output frame k (as many as the audio lasts), take template frame ping_pong(k), render the face, paste
   it into its crop box through a blurred face mask, encode. At most `batch_size` output frames are held at a
   time. When the audio outlasts the template, the template loops forwards and backwards in its own frames; its
   frames are then read back from a raw spool file on disk (in the output's folder) instead of being held in
   memory.

The networks keep their 25 fps semantics at any output rate (docs/method.md, section 5): the landmark generator
predicts windows of 5 frames on the 25 fps grid from their audio windows, as trained; output frame k at time
t = k / rate takes the content landmarks interpolated to t between the windows centred on the grid frames around
25t, 5 sketches at t-2/25..t+2/25 (pose from the template at those times) and the mel window of the fractional
25 fps index 25t. At 25 fps every index is whole and this is the 25 fps pipeline exactly.

Frames where FaceMesh finds no face are written unchanged; windows around them borrow the landmarks of the
nearest face frame, so their neighbours still render.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from config import autocast, load_config, pick_device
from data.audio import MEL_STEPS, SAMPLE_RATE, frames_covered, load_audio, mel_windows, melspectrogram
from data.crop import box_size, crop_face, denormalise_from_box, normalise_to_box, smooth_boxes
from data.errors import InputError
from data.facemesh import FaceTrack, track_faces
from data.landmarks import (
    JAW_POSITIONS,
    NUM_LANDMARKS,
    OUTLINE_POSITIONS,
    content_of,
    lip_openness,
    merge_pose_content,
    pose_of,
)
from data.sketch import draw_edges, sketch_tensor
from data.tensors import image_tensor
from data.video import FPS, VideoReader, VideoWriter, is_image
from models.checkpoints import load_landmark_generator, load_renderer
from models.landmark_generator import LandmarkGenerator
from models.renderer import References, Renderer

CONFIG = Path(__file__).resolve().parent / "configs" / "inference.yaml"
TEMPLATE_CACHE_ENV = "IPLAP_TEMPLATES"  # where prepared templates are cached when the config does not say
SMOOTH_BOXES = 5  # the config's default (configs/inference.yaml, smooth_boxes)
WINDOW = 5  # frames t-2..t+2 per landmark-generator call
MAX_TEMPLATE_FPS = 60  # the highest template rate dubbed at its own rate (output.fps: template)
MIN_AUDIO_SECONDS = MEL_STEPS / 80  # one audio window, 0.2 s


def default_config() -> dict:
    """configs/inference.yaml as a dict."""
    return load_config(CONFIG)


@dataclass
class Models:
    landmark: LandmarkGenerator
    renderer: Renderer
    device: torch.device


def load_models(landmark_ckpt: str | Path, renderer_ckpt: str | Path, device: str | torch.device | None = None
                ) -> Models:
    """Both networks from this project's checkpoints or the official files (told apart by their contents)."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    return Models(load_landmark_generator(landmark_ckpt, device), load_renderer(renderer_ckpt, device), device)


# ---------------------------------------------------------------- template analysis (pass 1)
@dataclass
class Template:
    """What pass 1 keeps of a template: per frame at `fps` (the dubbing rate), landmarks (L, 131, 2) normalised
    to the crop box, boxes (L, 4) in source pixels, has_face (L,) and lip openness (L,) in pixels. Frames without
    a face hold the landmarks and box of the nearest face frame (their flag stays False)."""

    path: Path
    size: tuple[int, int]
    landmarks: np.ndarray
    boxes: np.ndarray
    has_face: np.ndarray
    openness: np.ndarray
    fps: float = FPS

    def __len__(self) -> int:
        return len(self.has_face)


def nearest_face(has_face: np.ndarray) -> np.ndarray:
    """For every frame, the index of the nearest frame with a face (itself when it has one; earlier on ties)."""
    faces = np.flatnonzero(has_face)
    index = np.arange(len(has_face))
    after = np.clip(np.searchsorted(faces, index), 0, len(faces) - 1)
    before = np.clip(after - 1, 0, len(faces) - 1)
    left, right = faces[before], faces[after]
    return np.where(np.abs(index - left) <= np.abs(right - index), left, right)


def analyse_template(path: str | Path, detect_every_frame: bool = False, progress: bool = True,
                     smooth: int = SMOOTH_BOXES, cache_dir: str | Path | None = None, fps: float = FPS) -> Template:
    """Pass 1: FaceMesh once per frame at `fps` of a video or image (or, with `cache_dir`, the result of an earlier
    pass over the same file with the same settings and rate); then no-face frames filled from their nearest face
    frame and the crop boxes smoothed over `smooth` frames (data/crop.smooth_boxes; landmarks follow their box)."""
    path = Path(path)
    entry = cache_entry(path, detect_every_frame, cache_dir, fps) if cache_dir is not None else None
    track = read_cached_track(*entry) if entry is not None else None
    if track is None:
        from data.facemesh import FaceMesh

        with VideoReader(path, fps) as reader, FaceMesh(video=not detect_every_frame) as mesh:
            frames = tqdm(reader, desc="face landmarks", unit="frame", disable=not progress, leave=False)
            track = track_faces(frames, mesh)
        if entry is not None:
            write_cached_track(*entry, track)
    if not track.has_face.any():
        raise InputError(path, f"no face found in any of its {len(track)} frames")
    nearest = nearest_face(track.has_face)
    landmarks, boxes = track.landmarks[nearest], track.boxes[nearest]
    pixels = denormalise_from_box(landmarks, boxes)
    if smooth > 1:
        boxes = smooth_boxes(boxes, track.has_face, smooth, track.size)
        landmarks = normalise_to_box(pixels, boxes)
    return Template(path, track.size, landmarks, boxes, track.has_face, lip_openness(pixels), fps)


def dubbing_rate(video: str | Path, setting: str | int | float) -> tuple[float, str | None]:
    """The frame rate to dub `video` at for output.fps = `setting` ('template', or a number of frames per second),
    and, when 'template' falls back to 25 fps (a still image, a variable-rate video, a rate above 60), the one
    line that says why."""
    if setting != "template":
        return float(setting), None
    if is_image(video):
        return float(FPS), f"{video}: a still image: dubbed at {FPS} fps"
    with VideoReader(video) as reader:
        rate, variable = reader.source_fps, reader.variable_rate
    if variable:
        return float(FPS), f"{video}: variable frame rate: dubbed at {FPS} fps"
    if rate > MAX_TEMPLATE_FPS:
        return float(FPS), f"{video}: {rate:g} fps is above {MAX_TEMPLATE_FPS}: dubbed at {FPS} fps"
    return rate, None


# ---------------------------------------------------------------- prepared templates (the pass-1 cache)
CACHE_FORMAT = 2  # raise when what the cache holds, or how FaceMesh is run, changes (2: keyed on the rate)


def template_cache_dir(config: dict) -> Path | None:
    """Where prepared templates are kept: the config's cache.dir, else $IPLAP_TEMPLATES, else the per-user cache;
    None when the cache is off."""
    if not config["cache"]["enabled"]:
        return None
    if config["cache"]["dir"]:
        return Path(config["cache"]["dir"]).expanduser()
    if os.environ.get(TEMPLATE_CACHE_ENV):
        return Path(os.environ[TEMPLATE_CACHE_ENV]).expanduser()
    from data.samples import user_cache

    return user_cache("templates")


def cache_entry(path: Path, detect_every_frame: bool, cache_dir: str | Path, fps: float = FPS) -> tuple[Path, dict]:
    """The entry's file, named by the template's content and the settings that change pass 1 (the rate it was
    decoded at among them), and the facts that must still hold when it is read (the file's size and modification
    time: a touched file is analysed again)."""
    import hashlib

    from data.samples import sha256

    stat = path.stat()
    settings = (f"format={CACHE_FORMAT};detect_every_frame={bool(detect_every_frame)};fps={float(fps)!r};"
                f"mediapipe={_mediapipe()}")
    key = hashlib.sha256(f"{sha256(path)};{settings}".encode()).hexdigest()[:32]
    return Path(cache_dir) / f"{key}.npz", {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _mediapipe() -> str:
    from importlib import metadata

    try:
        return metadata.version("mediapipe")
    except metadata.PackageNotFoundError:
        return "none"


def read_cached_track(entry: Path, facts: dict) -> FaceTrack | None:
    """The pass-1 result in a cache entry (`cache_entry`); None when there is none, it is stale, or it does not
    read back whole (a damaged entry is recomputed, never trusted)."""
    if not entry.is_file():
        return None
    try:
        with np.load(entry, allow_pickle=False) as arrays:
            if int(arrays["bytes"]) != facts["bytes"] or int(arrays["mtime_ns"]) != facts["mtime_ns"]:
                return None
            track = FaceTrack(arrays["landmarks"], arrays["boxes"], arrays["has_face"],
                              tuple(int(v) for v in arrays["size"]))
    except Exception:  # a cut-short or foreign file: analyse again
        return None
    frames = len(track.has_face)
    if track.landmarks.shape != (frames, NUM_LANDMARKS, 2) or track.boxes.shape != (frames, 4):
        return None
    return track


def write_cached_track(entry: Path, facts: dict, track: FaceTrack) -> None:
    """Store a pass-1 result atomically (a temporary file renamed into place); a cache that cannot be written is
    skipped, not an error."""
    temp = entry.with_name(f"{entry.stem}.tmp-{os.getpid()}.npz")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as handle:
            np.savez(handle, landmarks=track.landmarks, boxes=track.boxes, has_face=track.has_face,
                     size=np.asarray(track.size, np.int64), bytes=np.int64(facts["bytes"]),
                     mtime_ns=np.int64(facts["mtime_ns"]))
        os.replace(temp, entry)
    except OSError:
        temp.unlink(missing_ok=True)


def reference_count(refs: int | str, template: Template) -> int:
    """N from the config: a number, or 'fifth' (one fifth of the template's frames, at least 1)."""
    if isinstance(refs, str):
        if refs != "fifth":
            raise InputError(f"refs={refs}", "refs takes a number or 'fifth'")
        return max(1, len(template) // 5)
    if int(refs) < 1:
        raise InputError(f"refs={refs}", "refs must be at least 1")
    return int(refs)


def choose_references(template: Template, count: int) -> np.ndarray:
    """Frames at `count` evenly spaced positions of the face frames sorted by lip openness (closed to open), as the
    official script picks them (positions truncated); indices repeat when there are fewer face frames."""
    faces = np.flatnonzero(template.has_face)
    ranked = faces[np.argsort(template.openness[faces], kind="stable")]
    return ranked[np.linspace(0, len(ranked) - 1, count).astype(np.int64)]


def ping_pong(t: np.ndarray | int, length: int) -> np.ndarray:
    """Template frame of output frame t: 0..L-1, then L-1..0, and so on."""
    t = np.asarray(t)
    if length == 1:
        return np.zeros_like(t)
    phase = t % (2 * length)
    return np.where(phase < length, phase, 2 * length - 1 - phase)


def grid_neighbours(frames: np.ndarray, rate: float, grid: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where output frames (k,) at `rate` fall on the 25 fps grid of an audio `grid` frames long: the fractional
    grid position 25k/rate (the mel window's index), the grid frames below and above it (clamped to the audio) and
    the weight of the one above. At 25 fps the position is k itself and the weight 0."""
    position = frames * FPS / rate
    below = np.minimum(np.floor(position), grid - 1).astype(np.int64)
    weight = np.where(below < grid - 1, position - below, 0.0)
    return position, below, np.minimum(below + 1, grid - 1), weight


def sketch_times(frames: np.ndarray, rate: float, count: int) -> np.ndarray:
    """The times of output frames' 5 target sketches, t-2/25..t+2/25, in output frames (k, 5) float64, clamped to
    the output's `count` frames (at 25 fps: frames k-2..k+2)."""
    offsets = (np.arange(WINDOW) - WINDOW // 2) * rate / FPS
    return np.clip(np.asarray(frames)[:, None] + offsets, 0, count - 1)


def template_at(template: Template, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The template at fractional output-frame positions (...,): landmarks (..., 131, 2) float32, linear between
    the two template frames the ping-pong order shows around each position, and boxes (..., 4), the nearer
    frame's. At whole positions, exactly those frames' landmarks and boxes."""
    below = np.floor(positions).astype(np.int64)
    fraction = np.asarray(positions, np.float64) - below
    first, second = ping_pong(below, len(template)), ping_pong(below + 1, len(template))
    landmarks = template.landmarks[first] + fraction[..., None, None] * (template.landmarks[second] -
                                                                         template.landmarks[first])
    boxes = np.where((fraction < 0.5)[..., None], template.boxes[first], template.boxes[second])
    return landmarks.astype(np.float32), boxes


# ---------------------------------------------------------------- template frames (pass 2)
class FrameSpool:
    """Raw RGB frames in an unnamed temporary file, read back in any order (a looping template)."""

    def __init__(self, directory: str | Path | None = None):
        self._file = tempfile.TemporaryFile(dir=directory)
        self.shape: tuple[int, ...] | None = None

    def append(self, frame: np.ndarray) -> None:
        if self.shape is None:
            self.shape = frame.shape
        elif frame.shape != self.shape:
            frame = cv2.resize(frame, (self.shape[1], self.shape[0]))  # a mid-stream size change
        self._file.write(np.ascontiguousarray(frame, np.uint8).tobytes())

    def __getitem__(self, index: int) -> np.ndarray:
        size = int(np.prod(self.shape))
        self._file.seek(int(index) * size)
        return np.frombuffer(self._file.read(size), np.uint8).reshape(self.shape).copy()

    def close(self) -> None:
        self._file.close()


def template_frames(template: Template, order: np.ndarray, spool: FrameSpool | None) -> Iterator[np.ndarray]:
    """Template frames in `order` (output order): from the spool, or streamed when `order` never goes back."""
    if spool is not None:
        for index in order:
            yield spool[index]
        return
    with VideoReader(template.path, template.fps) as reader:
        stream, position, frame = iter(reader), -1, None
        for index in order:
            while position < index:
                frame, position = next(stream), position + 1
            yield frame


def read_selected(path: Path, indices: np.ndarray, spool: FrameSpool | None, fps: float = FPS
                  ) -> dict[int, np.ndarray]:
    """The template frames at `indices` of the video decoded at `fps` (decoding up to the last one when there is
    no spool)."""
    wanted = set(int(i) for i in indices)
    if spool is not None:
        return {i: spool[i] for i in wanted}
    found = {}
    with VideoReader(path, fps) as reader:
        for index, frame in enumerate(reader):
            if index in wanted:
                found[index] = frame
            if len(found) == len(wanted):
                break
    return found


# ---------------------------------------------------------------- per-frame work
def face_mask(shape: tuple[int, int], outline: np.ndarray, kernel: int, sigma: float) -> np.ndarray:
    """(H, W, 1) float32 mask: the convex hull of outline points (pixels) filled with 1, Gaussian-blurred."""
    mask = np.zeros(shape, np.float32)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(outline).astype(np.int32)), 1.0)
    return cv2.GaussianBlur(mask, (kernel, kernel), sigma)[..., None]


def paste_face(frame: np.ndarray, face: np.ndarray, box: np.ndarray, outline: np.ndarray, kernel: int = 21,
               sigma: float = 11.0) -> np.ndarray:
    """Resize a 128x128 face to its crop box, paste it, and blend it into the frame through the blurred mask of
    `outline` (face contour points in frame pixels). Only pixels within kernel//2 of the hull can change."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    pad = kernel // 2 + 1
    rx0, ry0, rx1, ry1 = max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, width), min(y1 + pad, height)
    region = frame[ry0:ry1, rx0:rx1].astype(np.float32)
    generated = region.copy()
    generated[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] = cv2.resize(face, (x1 - x0, y1 - y0),
                                                                 interpolation=cv2.INTER_LINEAR)
    mask = face_mask(region.shape[:2], outline - (rx0, ry0), kernel, sigma)
    out = frame.copy()
    out[ry0:ry1, rx0:rx1] = np.clip(np.round(region + mask * (generated - region)), 0, 255).astype(np.uint8)
    return out


def sketch_frame(landmarks: np.ndarray, box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Debug view: (131, 2) box-normalised landmarks drawn at their place in a black (H, W, 3) frame."""
    width, height = size
    canvas = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = (int(v) for v in box)
    canvas[y0:y1, x0:x1] = draw_edges(np.zeros((y1 - y0, x1 - x0, 3), np.uint8), landmarks)
    return canvas


def render_faces(renderer: Renderer, refs: References, faces: torch.Tensor, sketches: torch.Tensor,
                 mels: torch.Tensor) -> torch.Tensor:
    """The render step: references encoded once per video, a batch of frames per call. (bench/inference.py
    passes other steps of this signature to time other formulations.)"""
    return renderer.render(faces, sketches, refs, mels)[0]


RenderStep = Callable[[Renderer, References, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DubResult:
    output: Path
    frames: int
    rendered: int  # frames with a face, generated
    seconds: float
    setup_seconds: float = 0.0  # the work before the first frame is rendered (for `dub`, the template's too)


def _check_config(config: dict) -> None:
    kernel = int(config["mask"]["kernel"])
    if kernel < 1 or kernel % 2 == 0:
        raise InputError(f"mask.kernel={kernel}", "the mask blur kernel must be a positive odd number")
    if config["batch_size"] != "auto" and not (isinstance(config["batch_size"], int) and config["batch_size"] >= 1):
        raise InputError(f"batch_size={config['batch_size']}", "batch_size takes a positive number or 'auto'")
    if int(config["landmark_refs"]) < 1:
        raise InputError(f"landmark_refs={config['landmark_refs']}", "landmark_refs must be at least 1")
    fps = config["output"]["fps"]
    if fps != "template" and not (isinstance(fps, (int, float)) and not isinstance(fps, bool)
                                  and 1 <= fps <= MAX_TEMPLATE_FPS):
        raise InputError(f"output.fps={fps}", f"output.fps takes 'template' or a rate from 1 to {MAX_TEMPLATE_FPS}")


def batch_size_for(config: dict, device: torch.device) -> int:
    """Output frames per network call: the config's number, or for 'auto' 1 on CPU (measured fastest there,
    bench/README.md) and 16 on CUDA."""
    if config["batch_size"] == "auto":
        return 16 if device.type == "cuda" else 1
    return int(config["batch_size"])


def load_driving_audio(path: str | Path) -> np.ndarray:
    """16 kHz mono samples of the driving audio, at least one 0.2 s window long."""
    wav = load_audio(path, SAMPLE_RATE)
    if len(wav) < MIN_AUDIO_SECONDS * SAMPLE_RATE:
        raise InputError(path, f"the audio lasts {len(wav) / SAMPLE_RATE:.3f} s, shorter than one "
                               f"{MIN_AUDIO_SECONDS:.1f} s window")
    return wav


@dataclass
class Prepared:
    """A template ready for any number of audios: pass 1's analysis and the encoded references (Nl landmark sets
    for the landmark generator, N distinct reference images for the renderer). `seconds`: what preparing cost;
    `note`: why the template is dubbed at 25 fps rather than its own rate, when it is (one line)."""

    template: Template
    ref_tokens: torch.Tensor
    refs: References
    seconds: float
    spool: FrameSpool | None = None
    note: str | None = None

    def frame_spool(self, directory: Path) -> FrameSpool:
        """The template's frames on disk, written on first use (an audio that outlasts the template loops it)."""
        if self.spool is None:
            self.spool = FrameSpool(directory)
            for frame in template_frames(self.template, np.arange(len(self.template)), None):
                self.spool.append(frame)
        return self.spool

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None


def prepare_template(video: str | Path, models: Models, config: dict, progress: bool = True) -> Prepared:
    """Pass 1 (or its cached result) and the references, encoded once for every audio this template is dubbed
    with. Raises InputError for a missing or unusable template."""
    started = time.perf_counter()
    _check_config(config)
    video = Path(video)
    if not video.is_file():
        raise InputError(video, "no such file")
    rate, note = dubbing_rate(video, config["output"]["fps"])
    template = analyse_template(video, config["detect_every_frame"], progress, int(config["smooth_boxes"]),
                                template_cache_dir(config), rate)
    device = models.device
    landmark_refs = choose_references(template, int(config["landmark_refs"]))
    ref_pose = torch.from_numpy(pose_of(template.landmarks[landmark_refs]))[None].to(device)  # (1, Nl, 2, 74)
    ref_content = torch.from_numpy(content_of(template.landmarks[landmark_refs]))[None].to(device)
    # Distinct frames only: a repeated reference image would add cost and nothing else.
    image_refs = np.unique(choose_references(template, reference_count(config["refs"], template)))
    frames = read_selected(template.path, image_refs, None, template.fps)
    ref_images = image_tensor([crop_face(frames[i], template.boxes[i]) for i in image_refs], device)[None]
    ref_sketches = torch.from_numpy(np.stack([sketch_tensor(template.landmarks[i], box_size(template.boxes[i]))
                                              for i in image_refs]))[None].to(device)
    with torch.inference_mode(), autocast(device, config["bf16"]):
        ref_tokens = models.landmark.encode_references(ref_pose, ref_content)
        refs = models.renderer.encode_references(ref_images, ref_sketches)
    return Prepared(template, ref_tokens, refs, time.perf_counter() - started, note=note)


@dataclass
class _Audio:
    """The driving audio of one dub: the 16 kHz mel, how many 16 kHz samples it lasts, the samples to mux."""

    mel: np.ndarray
    samples: int
    muxed: np.ndarray
    rate: int


def _driving_audio(audio: str | Path, config: dict) -> _Audio:
    audio = Path(audio)
    wav = load_driving_audio(audio)
    if config.get("audio_seconds"):
        wav = wav[:max(int(float(config["audio_seconds"]) * SAMPLE_RATE), int(MIN_AUDIO_SECONDS * SAMPLE_RATE))]
    rate = int(config["output"]["audio_rate"])
    muxed = load_audio(audio, rate)[:int(round(len(wav) * rate / SAMPLE_RATE))]
    return _Audio(melspectrogram(wav), len(wav), muxed, rate)


def _check_output(output: Path, *inputs: Path) -> None:
    if output.resolve() in tuple(path.resolve() for path in inputs):
        raise InputError(output, "the output would overwrite an input")


def dub(video: str | Path, audio: str | Path, output: str | Path, models: Models, config: dict | None = None,
        sketch_output: str | Path | None = None, progress: bool = True,
        render_step: RenderStep = render_faces) -> DubResult:
    """Dub `video` (any frame rate, or a still image) with `audio` into `output` (.mp4), at the rate
    `output.fps` chooses (`dubbing_rate`), at the template's size, carrying the driving audio. Raises InputError on
    bad input and leaves no output file."""
    started = time.perf_counter()
    config = default_config() if config is None else config
    _check_config(config)
    video, output = Path(video), Path(output)
    if not video.is_file():
        raise InputError(video, "no such file")
    _check_output(output, video, Path(audio))
    driving = _driving_audio(audio, config)  # a bad audio file fails before the template's FaceMesh pass
    prepared = prepare_template(video, models, config, progress)
    try:
        result = _dub(prepared, driving, output, models, config, sketch_output, progress, render_step, started)
    finally:
        prepared.close()
    return result


def dub_prepared(prepared: Prepared, audio: str | Path, output: str | Path, models: Models, config: dict,
                 sketch_output: str | Path | None = None, progress: bool = True,
                 render_step: RenderStep = render_faces) -> DubResult:
    """Dub a prepared template (`prepare_template`) with one more audio: nothing of the template is analysed or
    encoded again. The same output as `dub` with the same inputs and settings, frame for frame."""
    started = time.perf_counter()
    output = Path(output)
    _check_output(output, prepared.template.path, Path(audio))
    return _dub(prepared, _driving_audio(audio, config), output, models, config, sketch_output, progress,
                render_step, started)


@dataclass
class _Video:
    """What every batch of one dub needs: the template, the output-to-template order, the audio and how many
    25 fps frames it lasts (the landmark generator's grid), the encoded references (landmark tokens and renderer
    features) and the settings."""

    template: Template
    order: np.ndarray
    mel: np.ndarray
    grid: int
    models: Models
    ref_tokens: torch.Tensor
    refs: References
    config: dict
    render_step: RenderStep

    def autocast(self):
        return autocast(self.models.device, self.config["bf16"])


def _dub(prepared: Prepared, driving: _Audio, output: Path, models: Models, config: dict,
         sketch_output: str | Path | None, progress: bool, render_step: RenderStep, started: float) -> DubResult:
    """Pass 2: render, paste and encode every output frame."""
    template = prepared.template
    count = frames_covered(driving.samples, fps=template.fps)
    if count == 0:
        raise InputError(output, f"the audio lasts less than one frame at {template.fps:g} fps")
    output.parent.mkdir(parents=True, exist_ok=True)
    spool = prepared.frame_spool(output.parent) if count > len(template) else None  # a looping template
    video = _Video(template, ping_pong(np.arange(count), len(template)), driving.mel,
                   frames_covered(driving.samples), models, prepared.ref_tokens, prepared.refs, config, render_step)
    source = template_frames(template, video.order, spool)
    crf = int(config["output"]["crf"])
    writer = VideoWriter(output, template.fps, driving.muxed, driving.rate, crf)
    sketch_writer = VideoWriter(sketch_output, template.fps, driving.muxed, driving.rate, crf) \
        if sketch_output else None
    batch_size, rendered = batch_size_for(config, models.device), 0
    setup = time.perf_counter() - started
    try:
        bar = tqdm(total=count, desc="dubbing", unit="frame", disable=not progress)
        for start in range(0, count, batch_size):
            steps = np.arange(start, min(start + batch_size, count))
            results, sketches = _dub_batch(video, steps, [next(source) for _ in steps], sketch_writer is not None)
            for index, frame in enumerate(results):
                writer.write(frame)
                if sketch_writer is not None:
                    sketch_writer.write(np.concatenate([sketches[index], frame], axis=1))
            rendered += int(template.has_face[video.order[steps]].sum())
            bar.update(len(steps))
        bar.close()
        writer.close()
        if sketch_writer is not None:
            sketch_writer.close()
    except BaseException:
        writer.abort()
        if sketch_writer is not None:
            sketch_writer.abort()
        raise
    return DubResult(output, count, rendered, time.perf_counter() - started, setup)


def _dub_batch(video: _Video, steps: np.ndarray, batch: list[np.ndarray], want_sketches: bool
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Output frames `steps` (their template frames in `batch`): rendered where the template has a face."""
    template, order, models, device = video.template, video.order, video.models, video.models.device
    results = list(batch)
    sketches = [np.zeros_like(frame) for frame in batch] if want_sketches else []
    live = np.flatnonzero(template.has_face[order[steps]])
    if len(live) == 0:
        return results, sketches
    rendered, last = steps[live], video.grid - 1
    # The landmark generator runs on the 25 fps grid, as trained; each output frame between two of its windows.
    grid, below, above, weight = grid_neighbours(rendered, template.fps, video.grid)
    centres = np.unique(np.concatenate([below, above[weight > 0]]))
    # Windows t-2..t+2 (clamped to the audio). Neighbouring windows overlap, so each grid frame's audio window
    # and pose are encoded once and the windows gathered from those tokens.
    windows = np.clip(centres[:, None] + np.arange(WINDOW) - WINDOW // 2, 0, last)  # (C, 5)
    frames, position = np.unique(windows, return_inverse=True)
    pose = pose_of(template_at(template, np.minimum(frames * template.fps / FPS, len(order) - 1))[0])  # (U, 2, 74)
    with torch.inference_mode(), video.autocast():
        audio_tokens, pose_tokens = models.landmark.encode_frames(
            torch.from_numpy(mel_windows(video.mel, frames)[:, None]).to(device), torch.from_numpy(pose).to(device))
        gather = torch.from_numpy(position.reshape(windows.shape)).to(device)
        content = models.landmark.fuse(video.ref_tokens, audio_tokens[gather], pose_tokens[gather])
    content = content.float().cpu().numpy()  # (C, 5, 2, 57)
    first = np.searchsorted(centres, below)
    second = np.where(weight > 0, np.searchsorted(centres, above), first)
    content = (content[first] + weight[:, None, None, None] * (content[second] - content[first])).astype(np.float32)
    # The 5 sketches at t-2/25..t+2/25, posed as the template there.
    posed, boxes = template_at(template, sketch_times(rendered, template.fps, len(order)))  # (k, 5, 131, 2), (k, 5, 4)
    predicted = merge_pose_content(pose_of(posed), content)
    target = torch.from_numpy(np.stack([[sketch_tensor(predicted[i, j], box_size(boxes[i, j]))
                                         for j in range(WINDOW)] for i in range(len(live))])).to(device)
    centre = WINDOW // 2
    faces = image_tensor([crop_face(batch[i], boxes[n, centre]) for n, i in enumerate(live)], device)
    mels = torch.from_numpy(mel_windows(video.mel, grid)[:, None]).to(device)  # (k, 1, 80, 16): window of 25t
    with torch.inference_mode(), video.autocast():
        generated = video.render_step(models.renderer, video.refs, faces, target, mels)
    generated = (generated.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    kernel, sigma = int(video.config["mask"]["kernel"]), float(video.config["mask"]["sigma"])
    for n, i in enumerate(live):
        box, landmarks = boxes[n, centre], predicted[n, centre]
        # The mask covers the template's face outline and the predicted jaw (an opening mouth lowers the chin).
        outline = denormalise_from_box(np.concatenate([template.landmarks[order[steps[i]]][OUTLINE_POSITIONS],
                                                       landmarks[JAW_POSITIONS]]), box)
        results[i] = paste_face(batch[i], generated[n], box, outline, kernel, sigma)
        if want_sketches:
            sketches[i] = sketch_frame(landmarks, box, template.size)
    return results, sketches
