"""MediaPipe FaceMesh (478 points, refine_landmarks=True): frames -> landmarks in source pixels."""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np


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
    """One-face FaceMesh detector. Call it on an RGB uint8 (H, W, 3) frame; returns (478, 2) float32 pixels or None.

    video=True tracks the face from frame to frame (about 1.4x faster on these CPUs; call reset() between
    videos); video=False detects the face on every frame, as the official preprocessing did.
    """

    def __init__(self, video: bool = True, min_confidence: float = 0.5):
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's start-up chatter
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from mediapipe.python.solutions import face_mesh  # heavy import, only where detection runs

        with native_stderr_silenced():  # start-up chatter
            self._mesh = face_mesh.FaceMesh(static_image_mode=not video, max_num_faces=1, refine_landmarks=True,
                                            min_detection_confidence=min_confidence,
                                            min_tracking_confidence=min_confidence)
            self._mesh._graph.wait_until_idle()
        self._settling = 3  # calls whose graph threads are waited for while fd 2 is silenced

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        with native_stderr_silenced():  # the detection and the tracking graphs each warn on first use, from
            result = self._mesh.process(frame)  # graph threads that may still run after process() returns
            if self._settling:
                self._mesh._graph.wait_until_idle()
                self._settling -= 1
        if not result.multi_face_landmarks:
            return None
        points = np.array([(p.x, p.y) for p in result.multi_face_landmarks[0].landmark], dtype=np.float32)
        return points * np.array([frame.shape[1], frame.shape[0]], dtype=np.float32)

    def reset(self) -> None:
        """Forget the tracked face (start of a new video)."""
        self._mesh.reset()

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMesh:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
