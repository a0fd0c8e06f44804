"""LipLMD (metrics/landmarks.py) on face tracks with known landmarks: the value, its normalisation by the REAL
face's crop box (x by its width, y by its height), the lip points alone, and NaN exactly where a face is missing."""
import numpy as np
import pytest

from data.crop import normalise_to_box
from data.facemesh import FaceTrack
from data.landmarks import LIP_POSITIONS, NUM_LANDMARKS
from metrics.landmarks import track_lip_distances

REAL_BOX = np.array([100, 50, 300, 150], np.int32)  # 200 px wide, 100 px high


def _track(pixels: np.ndarray, box: np.ndarray, has_face: np.ndarray) -> FaceTrack:
    boxes = np.tile(box, (len(pixels), 1)).astype(np.int32)
    landmarks = normalise_to_box(pixels, boxes)
    return FaceTrack(np.where(has_face[:, None, None], landmarks, 0).astype(np.float32),
                     np.where(has_face[:, None], boxes, 0).astype(np.int32), has_face, (640, 360))


def _face(frames: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (REAL_BOX[:2] + rng.random((frames, NUM_LANDMARKS, 2)) * (REAL_BOX[2:] - REAL_BOX[:2])).astype(np.float32)


def test_a_shift_is_measured_in_the_real_faces_crop():
    real = _face()
    faces = np.ones(4, bool)
    shifted = real + np.array([3.0, 0.0], np.float32)
    # The generated face's own box is wider: the distance must still be in the real box's units.
    generated = _track(shifted, REAL_BOX + [0, 0, 100, 0], faces)
    np.testing.assert_allclose(track_lip_distances(generated, _track(real, REAL_BOX, faces)), 3.0 / 200, rtol=1e-5)
    lowered = real + np.array([0.0, 4.0], np.float32)  # y is divided by the box's height, not its width
    np.testing.assert_allclose(track_lip_distances(_track(lowered, REAL_BOX, faces), _track(real, REAL_BOX, faces)),
                               4.0 / 100, rtol=1e-5)


def test_the_same_face_scores_zero_and_only_lip_points_count():
    real = _face()
    faces = np.ones(4, bool)
    others = np.setdiff1d(np.arange(NUM_LANDMARKS), LIP_POSITIONS)
    moved = real.copy()
    moved[:, others] += 7.0
    assert len(LIP_POSITIONS) == 40
    assert track_lip_distances(_track(real, REAL_BOX, faces), _track(real, REAL_BOX, faces)).max() < 1e-6
    assert track_lip_distances(_track(moved, REAL_BOX, faces), _track(real, REAL_BOX, faces)).max() < 1e-6
    one_lip = real.copy()
    one_lip[:, LIP_POSITIONS[0], 0] += 40.0  # one of the 40 points, 40 px: the mean moves by 1 px
    np.testing.assert_allclose(track_lip_distances(_track(one_lip, REAL_BOX, faces),
                                                   _track(real, REAL_BOX, faces)), 1.0 / 200, rtol=1e-4)


@pytest.mark.parametrize("missing", ["generated", "real"])
def test_frames_without_a_face_on_either_side_are_nan_and_only_those(missing):
    real = _face()
    with_face, without = np.ones(4, bool), np.array([True, False, True, True])
    shifted = real + np.array([2.0, 0.0], np.float32)
    generated = _track(shifted, REAL_BOX, without if missing == "generated" else with_face)
    reference = _track(real, REAL_BOX, without if missing == "real" else with_face)
    distances = track_lip_distances(generated, reference)
    np.testing.assert_array_equal(np.isnan(distances), ~without)
    np.testing.assert_allclose(distances[without], 2.0 / 200, rtol=1e-5)
