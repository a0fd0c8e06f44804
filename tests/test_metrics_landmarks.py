import numpy as np
import pytest

from data.crop import box_size, crop_box
from data.landmarks import LIP_POSITIONS, from_facemesh
from metrics.landmarks import lip_distance, lip_distances


def test_lip_distance_is_zero_for_the_same_face_and_normalised_by_the_real_crop(talk_a_frames, face_mesh):
    frame = talk_a_frames[10]
    points = face_mesh(frame)
    size = (frame.shape[1], frame.shape[0])
    assert lip_distance(points, points, size) == 0.0
    width, _ = box_size(crop_box(from_facemesh(points), size))
    moved = points.copy()
    moved[:, 0] += 3.0  # every point 3 px to the right
    assert lip_distance(moved, points, size) == pytest.approx(3.0 / width, rel=1e-4)
    assert lip_distances([moved, None], [points, points], size)[1] != lip_distances([moved], [points], size)[0]
    assert len(LIP_POSITIONS) == 40


def test_only_lip_points_count(talk_a_frames, face_mesh):
    frame = talk_a_frames[10]
    points = face_mesh(frame)
    size = (frame.shape[1], frame.shape[0])
    eyes_moved = points.copy()
    eyes_moved[[33, 133, 362, 263]] += 5.0  # eye corners, not lips
    assert lip_distance(eyes_moved, points, size) == 0.0
    assert np.isnan(lip_distances([None], [points], size)[0])
