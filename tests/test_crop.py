import cv2
import numpy as np
import pytest

from data import crop
from data.landmarks import from_facemesh


def test_box_is_the_landmark_box_widened_by_the_margin():
    points = np.array([[100.0, 200.0], [300.0, 260.0], [180.0, 400.0]])
    box = crop.crop_box(points, (1000, 1000))
    pad = crop.MARGIN * 200  # longer side is 200 px tall
    np.testing.assert_array_equal(box, [100 - pad, 200 - pad, 300 + pad, 400 + pad])
    assert box.dtype == np.int32


def test_box_is_clipped_to_the_frame():
    points = np.array([[2.0, 5.0], [60.0, 90.0]])
    box = crop.crop_box(points, (62, 92))  # the widened box would reach (-2, 1) .. (64, 94)
    np.testing.assert_array_equal(box, [0, 1, 62, 92])


def test_normalisation_round_trips_and_maps_the_box_to_unit_square():
    box = np.array([10, 20, 110, 220], np.int32)
    corners = np.array([[10.0, 20.0], [110.0, 220.0]])
    np.testing.assert_allclose(crop.normalise_to_box(corners, box), [[0, 0], [1, 1]])
    points = np.random.default_rng(1).random((131, 2)) * 300
    np.testing.assert_allclose(crop.denormalise_from_box(crop.normalise_to_box(points, box), box), points,
                               rtol=1e-5, atol=1e-3)


def test_rule_is_resolution_independent_for_the_same_face_synthetic():
    points = np.random.default_rng(2).random((131, 2)) * [90, 110] + [35, 25]  # a face in a 160x160 frame
    low = crop.normalise_to_box(points, crop.crop_box(points, (160, 160)))
    for scale in (2.0, 5.275):  # 320 px and LRS2 -> 844 px (talk_a's size)
        high_points = points * scale
        size = int(160 * scale)
        high = crop.normalise_to_box(high_points, crop.crop_box(high_points, (size, size)))
        assert np.abs(high - low).max() < 0.01


def test_rule_is_resolution_independent_on_a_real_face(talk_a_frames, face_mesh):
    frame = talk_a_frames[0]
    small = cv2.resize(frame, (422, 422), interpolation=cv2.INTER_AREA)
    normalised = []
    for image in (frame, small):
        points = from_facemesh(face_mesh(image))
        normalised.append(crop.normalise_to_box(points, crop.crop_box(points, image.shape[1::-1])))
    # Same face at 844 and 422 px: the crop-relative landmarks agree to within 1% of the crop.
    assert np.abs(normalised[0] - normalised[1]).mean() < 0.01


def test_crop_face_size_and_content():
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[50:150, 100:200] = 255
    face = crop.crop_face(frame, np.array([100, 50, 200, 150]))
    assert face.shape == (128, 128, 3) and face.dtype == np.uint8
    assert face.min() == 255  # the box holds exactly the white square


def test_degenerate_box_is_an_error():
    with pytest.raises(ValueError):
        crop.crop_box(np.array([[500.0, 500.0], [501.0, 501.0]]), (100, 100))
