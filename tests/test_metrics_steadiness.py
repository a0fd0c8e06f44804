"""Steadiness (lip jitter, metrics/steadiness.py): known values on synthetic tracks, and a real sample against a
copy whose frames shake."""
import cv2
import numpy as np
import pytest

from data.audio import load_audio
from data.video import VideoWriter, read_frames
from metrics.scoring import Networks, Pair, score_videos
from metrics.steadiness import jitter_ratio, lip_jitter

FRAMES = 10


def test_a_still_face_and_a_face_at_constant_velocity_score_zero():
    lips = np.random.default_rng(0).uniform(0, 100, (1, 40, 2)).repeat(FRAMES, axis=0)
    sizes, faces = np.full(FRAMES, 80.0), np.ones(FRAMES, bool)
    values = lip_jitter(lips, sizes, faces)
    assert np.isnan(values[0]) and np.isnan(values[-1]) and np.all(values[1:-1] == 0)
    moving = lips + np.arange(FRAMES)[:, None, None] * np.array([1.5, -0.5])  # constant velocity: no jitter
    np.testing.assert_allclose(lip_jitter(moving, sizes, faces)[1:-1], 0, atol=1e-12)


def test_known_jitter_gives_its_closed_form_value():
    rng = np.random.default_rng(1)
    lips = rng.uniform(0, 100, (1, 40, 2)).repeat(FRAMES, axis=0)
    a, size = 0.75, 60.0
    signs = np.where(np.arange(FRAMES) % 2 == 0, 1.0, -1.0)
    shaking = lips + a * signs[:, None, None] * np.array([0.6, 0.8])  # +-a along a unit direction
    values = lip_jitter(shaking, np.full(FRAMES, size), np.ones(FRAMES, bool))
    np.testing.assert_allclose(values[1:-1], 4 * a / size, rtol=1e-12)  # |a - 2(-a) + a| = 4a
    # One point of 40 shaking by +-a in x alone: 4a / 40 of the box.
    single = lips.copy()
    single[:, 7, 0] += a * signs
    np.testing.assert_allclose(lip_jitter(single, np.full(FRAMES, size), np.ones(FRAMES, bool))[1:-1],
                               4 * a / 40 / size, rtol=1e-12)
    # A frame without a face leaves out the three second differences it takes part in.
    faces = np.ones(FRAMES, bool)
    faces[4] = False
    values = lip_jitter(shaking, np.full(FRAMES, size), faces)
    assert np.isnan(values[[0, 3, 4, 5, 9]]).all() and np.isfinite(values[[1, 2, 6, 7, 8]]).all()
    assert jitter_ratio(0.02, 0.01) == pytest.approx(2.0) and jitter_ratio(None, 0.01) is None
    assert jitter_ratio(0.0, 0.0) == 0.0 and jitter_ratio(0.1, 0.0) == float("inf")


def test_a_real_sample_is_steadier_than_a_copy_with_shaking_frames(samples, tmp_path):
    frames = [cv2.resize(f, (200, 200), interpolation=cv2.INTER_AREA)
              for f in read_frames(samples / "talk_a.mp4")[:FRAMES]]
    shift = 3  # pixels; every other frame moved down
    shaken = [np.ascontiguousarray(np.roll(f, shift, axis=0)) if i % 2 else f for i, f in enumerate(frames)]
    audio = load_audio(samples / "talk_a.mp4")[:FRAMES * 640]
    for name, video in (("real", frames), ("copy", frames), ("shaken", shaken)):
        with VideoWriter(tmp_path / name / "clip.mp4", audio=audio, crf=0) as writer:
            for frame in video:
                writer.write(frame)
    real = tmp_path / "real" / "clip.mp4"
    scores = score_videos([Pair("copy", tmp_path / "copy" / "clip.mp4", real),
                           Pair("shaken", tmp_path / "shaken" / "clip.mp4", real)], Networks(),
                          metrics=("steadiness",), progress=False)
    copy, shaken_row = scores.per_video
    assert copy["jitter_ratio"] == pytest.approx(1.0) and copy["jitter_frames"] == FRAMES - 2
    assert shaken_row["lip_jitter_real"] == copy["lip_jitter"]
    # A 3 px shake of the whole face adds about 4 * 3 px of second difference per frame (FaceMesh follows it), of a
    # face box no larger than the 200 px frame (measured: 0.011 real, 0.072 shaken).
    assert shaken_row["lip_jitter"] > copy["lip_jitter"] + 0.5 * 4 * shift / 200
    assert shaken_row["jitter_ratio"] > 3
    assert set(scores.summary) == {"lip_jitter", "lip_jitter_real", "jitter_ratio"}
    alone = score_videos([Pair("shaken", tmp_path / "shaken" / "clip.mp4")], Networks(), metrics=("steadiness",),
                         progress=False)
    assert alone.summary == {"lip_jitter": pytest.approx(shaken_row["lip_jitter"])}  # generated alone: no reference
