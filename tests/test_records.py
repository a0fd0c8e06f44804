import os
from pathlib import Path

import numpy as np
import pytest

from data import records
from data.errors import InputError
from testing.records import random_record


def test_round_trip(tmp_path):
    faces, arrays = random_record(tmp_path / "spk" / "00001")
    clip = records.load_clip(tmp_path / "spk" / "00001")
    assert len(clip) == 6 and clip.fps == 25.0 and clip.source_fps == 29.97 and clip.source_size == (320, 240)
    for name, value in arrays.items():
        np.testing.assert_array_equal(getattr(clip, name), value)
    assert clip.faces.shape == (6, 128, 128, 3)
    np.testing.assert_array_equal(clip.faces[0], faces[0])  # PNG is lossless
    np.testing.assert_array_equal(clip.faces[[5, 1]], faces[[5, 1]])
    assert not clip.faces[2].any()  # no face: zeros
    np.testing.assert_array_equal(np.asarray(clip.faces)[3], faces[3])
    np.testing.assert_array_equal(clip.face_frames, [0, 1, 3, 4, 5])
    assert sorted(p.name for p in (tmp_path / "spk").iterdir()) == ["00001.faces", "00001.npz"]


def test_npz_needs_no_pickle(tmp_path):
    random_record(tmp_path / "a")
    with np.load(tmp_path / "a.npz", allow_pickle=False) as arrays:
        assert {"landmarks", "mel", "boxes", "has_face", "face_offsets", "face_format"} <= set(arrays.files)
        for name in arrays.files:
            arrays[name]  # every member loads without pickle


def test_jpeg_faces_are_close(tmp_path):
    faces, _ = random_record(tmp_path / "j", face_format="jpg")
    smooth = records.decode_face(records.encode_face(np.full((128, 128, 3), 120, np.uint8), "jpg"))
    assert np.abs(smooth.astype(int) - 120).max() <= 2
    assert records.load_clip(tmp_path / "j").faces[0].shape == (128, 128, 3)


def test_reading_a_frame_decodes_only_that_frame(tmp_path):
    random_record(tmp_path / "lazy")
    clip = records.load_clip(tmp_path / "lazy")
    start, end = int(clip.faces.offsets[0]), int(clip.faces.offsets[1])
    with open(tmp_path / "lazy.faces", "r+b") as handle:  # corrupt frame 0 only, same size
        handle.seek(start)
        handle.write(b"\0" * (end - start))
    assert clip.faces[4].shape == (128, 128, 3)
    with pytest.raises(ValueError, match="corrupt"):
        clip.faces[0]


def test_crash_mid_write_leaves_no_record(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        random_record(tmp_path / "crashed")
    assert not records.is_complete(tmp_path / "crashed")
    assert list(tmp_path.iterdir()) == []  # no temporary files either


def test_crash_between_renames_of_an_overwrite_leaves_no_complete_record(tmp_path, monkeypatch):
    random_record(tmp_path / "old")
    real_replace, calls = os.replace, []

    def replace_then_crash(source, target):
        calls.append(target)
        if len(calls) == 2:  # the .npz rename, after the new .faces is in place
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_then_crash)
    with pytest.raises(KeyboardInterrupt):
        random_record(tmp_path / "old", frames=9)
    assert not records.is_complete(tmp_path / "old")
    with pytest.raises(InputError, match="no such record"):
        records.load_clip(tmp_path / "old")


def test_faces_file_that_does_not_match_is_an_error(tmp_path):
    random_record(tmp_path / "m")
    with open(tmp_path / "m.faces", "ab") as handle:
        handle.write(b"extra")
    with pytest.raises(InputError, match="does not match"):
        records.load_clip(tmp_path / "m.npz")


def test_paths_accept_stem_npz_or_faces(tmp_path):
    assert records.record_paths(tmp_path / "x.npz") == records.record_paths(tmp_path / "x")
    assert records.record_paths(tmp_path / "x.faces")[0] == tmp_path / "x.npz"


def test_load_clip_is_offered_by_data_without_import_data_errors_pulling_opencv():
    import subprocess
    import sys

    import data

    assert data.load_clip is records.load_clip  # README's `from data import load_clip`
    code = ("import sys, data.errors; heavy = [m for m in ('cv2', 'av', 'torch') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(records.__file__).parents[1])
    assert result.returncode == 0, result.stderr
