"""Pieces of the dubbing pipeline: template looping, reference choice, no-face filling, the frame spool, paste-back."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import dubbing
import dubbing.frames
import dubbing.paste
import dubbing.pipeline
import dubbing.template
from data.errors import InputError


def test_ping_pong_plays_forwards_then_backwards():
    np.testing.assert_array_equal(dubbing.template.ping_pong(np.arange(9), 3), [0, 1, 2, 2, 1, 0, 0, 1, 2])
    np.testing.assert_array_equal(dubbing.template.ping_pong(np.arange(4), 1), [0, 0, 0, 0])  # a still image
    np.testing.assert_array_equal(dubbing.template.ping_pong(np.arange(5), 10), np.arange(5))  # shorter audio: a cut


def test_nearest_face_fills_gaps_from_the_closest_face_frame():
    has_face = np.array([0, 0, 1, 0, 0, 0, 1, 0], bool)
    np.testing.assert_array_equal(dubbing.template.nearest_face(has_face), [2, 2, 2, 2, 2, 6, 6, 6])  # ties go earlier


def _template(openness, has_face=None) -> dubbing.template.Template:
    count = len(openness)
    has_face = np.ones(count, bool) if has_face is None else np.asarray(has_face, bool)
    return dubbing.template.Template(Path("t.mp4"), (64, 64), np.zeros((count, 131, 2), np.float32),
                            np.tile([0, 0, 64, 64], (count, 1)).astype(np.int32), has_face,
                            np.asarray(openness, np.float64))


def test_references_follow_lip_openness_at_the_official_positions():
    openness = [5.0, 1.0, 9.0, 3.0, 7.0, 0.5, 2.0, 8.0, 4.0, 6.0]
    template = _template(openness)
    ranked = np.argsort(openness)  # frames from closed to open
    # positions int(linspace(0, 9, 4)) = 0, 3, 6, 9 of the ranking
    np.testing.assert_array_equal(dubbing.template.choose_references(template, 4), ranked[[0, 3, 6, 9]])
    np.testing.assert_array_equal(dubbing.template.choose_references(template, 1), ranked[[0]])


def test_references_skip_frames_without_a_face_and_repeat_when_few():
    template = _template([0.0, 1.0, 2.0, 3.0], has_face=[0, 1, 0, 1])
    chosen = dubbing.template.choose_references(template, 5)
    assert set(chosen.tolist()) == {1, 3}
    assert len(chosen) == 5 and chosen[0] == 1 and chosen[-1] == 3


def test_reference_count_rules():
    template = _template(np.arange(52.0))
    assert dubbing.template.reference_count(25, template) == 25
    assert dubbing.template.reference_count("fifth", template) == 10
    assert dubbing.template.reference_count("fifth", _template([1.0, 2.0])) == 1
    with pytest.raises(InputError, match="number or 'fifth'"):
        dubbing.template.reference_count("half", template)
    # Bounded by the template's face frames and by the config's max_refs: no request allocates for a billion.
    assert dubbing.template.reference_count(10 ** 9, template) == 52
    assert dubbing.template.reference_count(25, _template([0.0] * 4, has_face=[1, 0, 1, 0])) == 2
    assert dubbing.template.reference_count("fifth", template, max_refs=4) == 4
    with pytest.raises(InputError, match="at most max_refs=250"):
        dubbing.template.reference_count(10 ** 9, template, max_refs=250)
    with pytest.raises(InputError, match="at least 1"):
        dubbing.template.reference_count([3], template)


def test_frame_spool_reads_frames_back_in_any_order(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (7, 5, 3), dtype=np.uint8) for _ in range(6)]
    spool = dubbing.frames.FrameSpool(tmp_path)
    for frame in frames:
        spool.append(frame)
    for index in (5, 0, 3, 3, 1):
        np.testing.assert_array_equal(spool[index], frames[index])
    spool.close()
    assert list(tmp_path.iterdir()) == []  # an unnamed temporary file: nothing left behind


def test_paste_face_changes_only_the_blurred_hull():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    face = np.full((128, 128, 3), 255, np.uint8)
    box = np.array([40, 30, 100, 90], np.int32)
    outline = np.array([[55, 45], [85, 45], [85, 75], [55, 75]], np.float32)
    kernel = 11
    out = dubbing.paste.paste_face(frame, face, box, outline, kernel=kernel, sigma=5.0)
    changed = np.any(out != frame, axis=2)
    ys, xs = np.nonzero(changed)
    reach = kernel // 2
    assert xs.min() >= 55 - reach and xs.max() <= 85 + reach
    assert ys.min() >= 45 - reach and ys.max() <= 75 + reach
    # Deep inside the hull the mask is 1: the pasted face shows as it is.
    assert np.all(out[55:66, 65:76] == 255)
    # Everywhere, the blend through the hull's mask blurred on its own: frame + mask * (face - frame), rounded.
    hull = np.zeros(frame.shape[:2], np.float32)
    cv2.fillConvexPoly(hull, outline.astype(np.int32), 1.0)
    mask = cv2.GaussianBlur(hull, (kernel, kernel), 5.0)[..., None]
    expected = np.round(frame + mask * (255.0 - frame))
    assert np.abs(out - expected).max() <= 1
    # The hull's edge is a real blend (neither the frame nor the face), and it is there that the pixels change.
    edge = (mask[..., 0] > 0.2) & (mask[..., 0] < 0.8) & (frame.max(axis=2) < 200)
    assert edge.sum() > 50 and np.all(np.any(out[edge] != frame[edge], axis=1))
    assert np.all(np.any(out[edge] != 255, axis=1))


def test_paste_face_at_the_frame_border():
    frame = np.zeros((50, 60, 3), np.uint8)
    out = dubbing.paste.paste_face(frame, np.full((128, 128, 3), 200, np.uint8), np.array([0, 0, 30, 40]),
                             np.array([[0, 0], [29, 0], [29, 39], [0, 39]], np.float32), kernel=5, sigma=2.0)
    assert out.shape == frame.shape and out[20, 15, 0] == 200 and out[49, 59, 0] == 0


def test_sketch_frame_draws_inside_the_box_only():
    from data.landmarks import NUM_LANDMARKS

    landmarks = np.random.default_rng(2).uniform(0.1, 0.9, (NUM_LANDMARKS, 2)).astype(np.float32)
    canvas = dubbing.paste.sketch_frame(landmarks, np.array([20, 10, 60, 50]), (80, 70))
    ys, xs = np.nonzero(canvas[..., 0])
    assert len(xs) > 50 and xs.min() >= 20 and xs.max() < 60 and ys.min() >= 10 and ys.max() < 50


def test_config_checks():
    config = dubbing.default_config()
    config["mask"]["kernel"] = 20
    with pytest.raises(InputError, match="odd"):
        dubbing.pipeline.check_config(config)
