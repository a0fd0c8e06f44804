"""Template analysis (pass 1) and reference choice: what a dub keeps of its template video or photo.

FaceMesh runs once per frame at the dubbing rate, keeping only landmarks, crop boxes and face flags (about 1 KB a
frame); frames without a face borrow the landmarks and box of the nearest face frame, and the reference frames
are chosen by lip openness.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.crop import denormalise_from_box, normalise_to_box, smooth_boxes
from data.errors import InputError
from data.landmarks import lip_openness
from data.video import FPS, VideoReader, is_image
from dubbing.faces import FaceChoice, FaceScan, parse_face, scan_faces, select_face
from dubbing.progress import ANALYSIS, Report, StageProgress

MAX_TEMPLATE_FPS = 60  # the highest template rate dubbed at its own rate (output.fps: template)


@dataclass
class Template:
    """What pass 1 keeps of a template: per frame at `fps` (the dubbing rate), landmarks (L, 131, 2) normalised
    to the crop box, boxes (L, 4) in source pixels, has_face (L,) and lip openness (L,) in pixels. Frames without
    a face hold the landmarks and box of the nearest face frame (their flag stays False). `phase`: the ping-pong
    position output frame 0 shows (a live session's speech resumes where the template is, dubbing/live.py)."""

    path: Path
    size: tuple[int, int]
    landmarks: np.ndarray
    boxes: np.ndarray
    has_face: np.ndarray
    openness: np.ndarray
    fps: float = FPS
    uncertain: int = 0  # frames passed through because the chosen face's identity was uncertain (dubbing/faces.py)
    phase: int = 0

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


def analyse_template(path: str | Path, *, smooth: int, detect_every_frame: bool = False, progress: bool = True,
                     cache_dir: str | Path | None = None, fps: float = FPS, report: Report | None = None,
                     face: str | FaceChoice = "largest", faces: dict | None = None) -> Template:
    """Pass 1: FaceMesh once per frame at `fps` of a video or image, every face (at most faces['max']) linked
    into tracks (or, with `cache_dir`, the result of an earlier pass over the same file with the same settings
    and rate); the chosen `face` followed through the template (dubbing/faces.py; `faces`: the config's faces
    section); then frames without it filled from their nearest frame with it and the crop boxes smoothed over
    `smooth` frames within each shot (the config's smooth_boxes; data/crop.smooth_boxes; landmarks follow their
    box). `report` hears of every frame FaceMesh reads (dubbing/progress.py), and of none when the cache
    answers. A choice that names no face is an InputError."""
    from dubbing.cache import cache_entry, read_cached_scan, write_cached_scan

    if faces is None:  # callers without a config: configs/inference.yaml's
        from config import INFERENCE_CONFIG, load_config

        faces = load_config(INFERENCE_CONFIG)["faces"]
    path = Path(path)
    choice = face if isinstance(face, FaceChoice) else parse_face(face)
    entry = cache_entry(path, detect_every_frame, cache_dir, fps, faces["max"]) if cache_dir is not None else None
    scan = read_cached_scan(*entry) if entry is not None else None
    if scan is None:
        scan = _scan(path, detect_every_frame, fps, progress, report, int(faces["max"]))
        if entry is not None:
            write_cached_scan(*entry, scan)
    sound = _own_sound(path) if choice.kind == "auto" else None
    selection = select_face(scan, choice, str(path), float(faces["same"]), float(faces["other"]), sound, fps)
    track = selection.track
    if not track.has_face.any():
        raise InputError(path, f"no face found in any of its {len(track)} frames")
    nearest = nearest_face(track.has_face)
    landmarks, boxes = track.landmarks[nearest], track.boxes[nearest]
    pixels = denormalise_from_box(landmarks, boxes)
    if smooth > 1:
        # Shot by shot: a box is never averaged with the box of another shot or another track.
        starts = np.flatnonzero(selection.starts[1:]) + 1
        boxes = np.concatenate([smooth_boxes(b, f, smooth, track.size) for b, f in
                                zip(np.split(boxes, starts), np.split(track.has_face, starts))])
        landmarks = normalise_to_box(pixels, boxes)
    return Template(path, track.size, landmarks, boxes, track.has_face, lip_openness(pixels), fps,
                    int(selection.uncertain.sum()))


def _scan(path: Path, detect_every_frame: bool, fps: float, progress: bool, report: Report | None,
          max_faces: int) -> FaceScan:
    from data.facemesh import FaceMesh

    with VideoReader(path, fps) as reader, FaceMesh(video=not detect_every_frame, max_faces=max_faces) as mesh, \
            StageProgress(ANALYSIS, reader.expected_frames, progress, report, leave=False) as steps:
        return scan_faces(reader, mesh, on_frame=steps.advance)


def _own_sound(path: Path) -> np.ndarray:
    """The template's own sound (16 kHz), by which `auto` finds the face that speaks."""
    from data.audio import SAMPLE_RATE, load_audio

    try:
        return load_audio(path, SAMPLE_RATE)
    except InputError as error:
        raise InputError(path, f"--face auto finds the speaker by the template's own sound: {error.problem}") \
            from None


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


def reference_count(refs: int | str, template: Template, max_refs: int | None = None) -> int:
    """N from the config: a number, or 'fifth' (one fifth of the template's frames, at least 1); never more than
    the template's face frames (more would only repeat them: the distinct frames chosen are the same) nor than
    max_refs (the config's bound on the work one dub may ask for: a larger number is refused, 'fifth' stops there)."""
    if isinstance(refs, str):
        if refs != "fifth":
            raise InputError(f"refs={refs}", "refs takes a number or 'fifth'")
        count = max(1, len(template) // 5)
    elif isinstance(refs, bool) or not isinstance(refs, (int, float)) or int(refs) < 1:
        raise InputError(f"refs={refs}", "refs must be at least 1")
    elif max_refs is not None and int(refs) > max_refs:
        raise InputError(f"refs={refs}", f"refs may be at most max_refs={max_refs} (the config's bound)")
    else:
        count = int(refs)
    faces = int(np.count_nonzero(template.has_face))
    return max(1, min(count, faces, max_refs or count))


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


def template_at(template: Template, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The template at fractional output-frame positions (...,): landmarks (..., 131, 2) float32, linear between
    the two template frames the ping-pong order shows around each position, and boxes (..., 4), the nearer
    frame's. At whole positions, exactly those frames' landmarks and boxes."""
    below = np.floor(positions).astype(np.int64)
    fraction = np.asarray(positions, np.float64) - below
    below_shown = below + template.phase
    first, second = ping_pong(below_shown, len(template)), ping_pong(below_shown + 1, len(template))
    landmarks = template.landmarks[first] + fraction[..., None, None] * (template.landmarks[second] -
                                                                         template.landmarks[first])
    boxes = np.where((fraction < 0.5)[..., None], template.boxes[first], template.boxes[second])
    return landmarks.astype(np.float32), boxes
