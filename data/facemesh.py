"""MediaPipe FaceMesh (478 points, refine_landmarks=True): frames -> landmarks in source pixels; and the one rule
that turns a video's frames into IP_LAP landmarks, crop boxes and face flags (`track_faces`), which
preprocessing, dubbing and the landmark-based metrics all use."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from data.crop import crop_box, denormalise_from_box, normalise_to_box
from data.landmarks import NUM_LANDMARKS, from_facemesh


@contextlib.contextmanager
def native_stderr_silenced():
    """Send fd 2 to /dev/null: MediaPipe's C++ start-up lines (TFLite delegate, absl warnings) bypass Python."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class FaceMesh:
    """FaceMesh detector. Call it on an RGB uint8 (H, W, 3) frame; returns the first face's (478, 2) float32 pixels
    or None; `faces` returns every face found (at most `max_faces`, in FaceMesh's order).

    video=True tracks the face from frame to frame (faster: bench/README.md, preprocess.py; call reset() between
    videos); video=False detects the face on every frame, as the official preprocessing did. With one face in the
    frame, max_faces above 1 gives the same points as 1 (tests/test_faces.py).
    """

    def __init__(self, video: bool = True, min_confidence: float = 0.5, max_faces: int = 1):
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's start-up chatter
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from mediapipe.python.solutions import face_mesh  # heavy import, only where detection runs

        with native_stderr_silenced():  # start-up chatter
            self._mesh = face_mesh.FaceMesh(static_image_mode=not video, max_num_faces=max_faces, refine_landmarks=True,
                                            min_detection_confidence=min_confidence,
                                            min_tracking_confidence=min_confidence)
            self._mesh._graph.wait_until_idle()
        self._settling = 3  # calls whose graph threads are waited for while fd 2 is silenced

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        faces = self.faces(frame)
        return faces[0] if faces else None

    def faces(self, frame: np.ndarray) -> list[np.ndarray]:
        """Every face's (478, 2) float32 pixel points."""
        with native_stderr_silenced():  # the detection and the tracking graphs each warn on first use, from
            result = self._mesh.process(frame)  # graph threads that may still run after process() returns
            if self._settling:
                self._mesh._graph.wait_until_idle()
                self._settling -= 1
        scale = np.array([frame.shape[1], frame.shape[0]], dtype=np.float32)
        return [np.array([(p.x, p.y) for p in face.landmark], dtype=np.float32) * scale
                for face in result.multi_face_landmarks or ()]

    def reset(self) -> None:
        """Forget the tracked face (start of a new video)."""
        self._mesh.reset()

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMesh:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class FaceTrack:
    """Per frame of a video: landmarks (T, 131, 2) float32 normalised to the crop box, boxes (T, 4) int32
    (x0, y0, x1, y1 in source pixels), has_face (T,) bool; frames without a face hold zeros. size is the frames'
    (width, height). points holds FaceMesh's raw (478, 2) pixel points per frame (None without a face) when
    track_faces was asked to keep them."""

    landmarks: np.ndarray
    boxes: np.ndarray
    has_face: np.ndarray
    size: tuple[int, int]
    points: list[np.ndarray | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.has_face)

    def pixels(self) -> np.ndarray:
        """(T, 131, 2) landmarks in source pixels (zeros where there is no face)."""
        return np.where(self.has_face[:, None, None], denormalise_from_box(self.landmarks, self.boxes), 0)


def find_face(mesh: FaceMesh, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(131 landmarks normalised to their crop box, the box, FaceMesh's 478 pixel points) of the face in an RGB
    frame; None when FaceMesh finds none or the face lies (almost) outside the frame, so that its crop box would
    be empty: both count as "no face" everywhere."""
    points = mesh(frame)
    return None if points is None else face_in_frame(points, frame)


def find_faces(mesh: FaceMesh, frame: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """find_face for every face FaceMesh finds in the frame (those with an empty crop box left out)."""
    return [face for face in (face_in_frame(points, frame) for points in mesh.faces(frame)) if face is not None]


def face_in_frame(points: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """find_face's answer for one face's 478 FaceMesh points."""
    landmarks = from_facemesh(points)
    try:
        box = crop_box(landmarks, (frame.shape[1], frame.shape[0]))
    except ValueError:
        return None
    return normalise_to_box(landmarks, box), box, points


def track_faces(frames: Iterable[np.ndarray], mesh: FaceMesh, on_frame: Callable | None = None,
                keep_points: bool = False) -> FaceTrack:
    """FaceMesh over a video's frames (the mesh is reset first: a new video). on_frame(frame, box or None) is
    called for every frame, for callers that need the pixels too (preprocessing crops the faces there)."""
    mesh.reset()
    landmarks, boxes, found, points, size = [], [], [], [], (0, 0)
    for frame in frames:
        size = size if size != (0, 0) else (frame.shape[1], frame.shape[0])
        face = find_face(mesh, frame)
        found.append(face is not None)
        landmarks.append(face[0] if face else np.zeros((NUM_LANDMARKS, 2), np.float32))
        boxes.append(face[1] if face else np.zeros(4, np.int32))
        if keep_points:
            points.append(face[2] if face else None)
        if on_frame is not None:
            on_frame(frame, face[1] if face else None)
    if not found:
        return FaceTrack(np.zeros((0, NUM_LANDMARKS, 2), np.float32), np.zeros((0, 4), np.int32),
                         np.zeros(0, bool), size, points)
    return FaceTrack(np.stack(landmarks).astype(np.float32), np.stack(boxes).astype(np.int32),
                     np.array(found, dtype=bool), size, points)
