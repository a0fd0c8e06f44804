"""The crop rule decides every stored face: a change to it (data/crop.MARGIN, FACE_SIZE) must make records, packs
and cached templates be made again, never reused with the old crop."""
from __future__ import annotations

import numpy as np
import pytest

import data.crop
import preprocess
from data import records
from data.errors import InputError
from data.facemesh import FaceTrack
from data.packs import pack_key
from dubbing.cache import cache_entry, read_cached_scan, write_cached_track
from testing.records import random_record


def _wider_margin(monkeypatch) -> None:
    monkeypatch.setattr(data.crop, "MARGIN", data.crop.MARGIN * 2)


def test_the_default_rule_is_the_one_version_1_records_were_cut_with():
    assert data.crop.crop_rule() == records.FIRST_CROP_RULE == "margin=0.05;size=128"


def test_records_of_another_crop_rule_are_refused_in_one_line_and_made_again(tmp_path, monkeypatch):
    random_record(tmp_path / "old")
    assert records.load_clip(tmp_path / "old").fps == 25.0
    _wider_margin(monkeypatch)
    with pytest.raises(InputError) as caught:
        records.load_clip(tmp_path / "old")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "old.npz") in message
    assert "margin=0.05" in message and "margin=0.1" in message
    assert not records.is_complete(tmp_path / "old")  # so preprocess.py makes it again rather than skipping it
    random_record(tmp_path / "new")  # written under the new rule: read back under it
    assert len(records.load_clip(tmp_path / "new")) == 6


def test_a_record_without_a_stored_rule_counts_as_cut_with_the_first_one(tmp_path, monkeypatch):
    random_record(tmp_path / "v1")
    npz = tmp_path / "v1.npz"
    with np.load(npz) as arrays:  # a version-1 record from before crop_rule was stored
        kept = {name: arrays[name] for name in arrays.files if name != "crop_rule"}
    np.savez_compressed(npz, **kept)
    assert len(records.load_clip(tmp_path / "v1")) == 6
    _wider_margin(monkeypatch)
    assert not records.is_complete(tmp_path / "v1")


def test_preprocessing_redoes_a_record_of_another_rule_without_overwrite(tmp_path, monkeypatch):
    random_record(tmp_path / "out" / "clip")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "clip.mp4").write_bytes(b"not a video")  # fails when attempted
    arguments = ["--input-root", str(tmp_path / "in"), "--output-root", str(tmp_path / "out"), "--workers", "0"]
    assert preprocess.main(arguments) == 0  # its record is done: skipped
    _wider_margin(monkeypatch)
    assert preprocess.main(arguments) == 3  # attempted again (and failed, having no video to read)
    assert "clip.mp4\t" in (tmp_path / "out" / "failures.tsv").read_text()


def test_packs_and_the_template_cache_are_keyed_on_the_rule(tmp_path, monkeypatch):
    random_record(tmp_path / "clip")
    template = tmp_path / "template.mp4"
    template.write_bytes(b"the template's bytes")
    track = FaceTrack(np.zeros((2, 131, 2), np.float32), np.tile(np.array([1, 2, 30, 40], np.int32), (2, 1)),
                      np.ones(2, bool), (64, 64))
    entry, facts = cache_entry(template, False, tmp_path / "cache")
    assert write_cached_track(entry, facts, track) and read_cached_scan(entry, facts) is not None
    pack = pack_key([tmp_path / "clip"], 5, 1)
    _wider_margin(monkeypatch)
    changed, changed_facts = cache_entry(template, False, tmp_path / "cache")
    assert changed != entry and read_cached_scan(changed, changed_facts) is None  # a miss: pass 1 runs again
    assert pack_key([tmp_path / "clip"], 5, 1) != pack
