"""Records, packs and datasets at face sizes 256 and 512 (data/face_size.FACE_SIZES); at 128 they stay as they were."""
import contextlib
import io
import json
import re

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

import preprocess
from data import crop
from data import records as record_files
from data.datasets import RenderFrames, records_under
from data.errors import InputError
from data.packs import open_pack
from data.video import read_frames
from testing.records import random_record
from testing.reference_samples import render_sample


@pytest.fixture(scope="module")
def records_256(samples, tmp_path_factory):
    """talk_a and talk_b preprocessed at 256, and the summary line preprocess.py printed."""
    inputs, root = tmp_path_factory.mktemp("inputs_256"), tmp_path_factory.mktemp("records_256")
    for name in ("talk_a.mp4", "talk_b.mp4"):
        (inputs / name).symlink_to(samples / name)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert preprocess.main(["--input-root", str(inputs), "--output-root", str(root), "--workers", "0",
                                "--face-size", "256"]) == 0
    return root, printed.getvalue()


def test_the_rule_at_128_is_the_one_records_were_always_cut_with():
    # The 128 rule's text is pinned once, in test_crop_rule.py; here only what the face size changes in it.
    assert crop.crop_rule(128) == crop.crop_rule()
    assert crop.crop_rule(256) == crop.crop_rule(128).replace("size=128", "size=256") != crop.crop_rule(128)
    assert record_files.record_version() == "1 (margin=0.05;size=128)"  # so pack keys at 128 stay as they were


def test_a_128_record_holds_exactly_the_arrays_it_held(tmp_path):
    random_record(tmp_path / "r")
    with np.load(tmp_path / "r.npz") as arrays:
        assert set(arrays.files) == {"version", "crop_rule", "fps", "source_fps", "source_size", "face_format",
                                     "has_audio", "landmarks", "boxes", "has_face", "mel", "face_offsets"}
        assert str(arrays["crop_rule"]) == "margin=0.05;size=128"
    assert record_files.load_clip(tmp_path / "r").face_size == 128


def test_preprocessing_at_256_stores_256_faces_and_says_so(records_256, samples):
    root, _ = records_256
    clip = record_files.load_clip(root / "talk_b")
    assert clip.face_size == 256 and clip.faces.shape == (125, 256, 256, 3) and clip.faces[60].shape == (256, 256, 3)
    with np.load(root / "talk_b.npz") as arrays:
        assert str(arrays["crop_rule"]) == "margin=0.05;size=256"
    frame = read_frames(samples / "talk_b.mp4")[10]
    x0, y0, x1, y1 = clip.boxes[10]
    expected = cv2.resize(frame[y0:y1, x0:x1], (256, 256), interpolation=crop.crop_interpolation(y1 - y0, x1 - x0, 256))
    difference = np.abs(clip.faces[10].astype(int) - expected).mean()
    assert difference < 1.5  # JPEG at quality 95
    small = cv2.resize(cv2.resize(expected, (128, 128), interpolation=cv2.INTER_AREA), (256, 256))
    assert np.abs(clip.faces[10].astype(int) - small).mean() > 1.5 * difference  # more detail than a 128 crop
    assert record_files.is_complete(root / "talk_a", 256) and not record_files.is_complete(root / "talk_a", 128)


def test_the_upscaled_share_is_printed_and_counts_boxes_under_the_face_size(records_256):
    root, printed = records_256
    clips = [record_files.load_clip(root / name) for name in ("talk_a", "talk_b")]
    sides = np.concatenate([np.minimum(c.boxes[:, 2] - c.boxes[:, 0], c.boxes[:, 3] - c.boxes[:, 1]) for c in clips])
    share = float((sides < 256).mean())
    assert 0 < share < 0.5  # talk_b's face box is 254-267 px, talk_a's over 300
    assert record_files.upscaled_share([root / "talk_a", root / "talk_b"]) == pytest.approx(share)
    assert RenderFrames(records_under(root), refs=1, face_size=256).pack.upscaled_share() == pytest.approx(share)
    found = re.search(r"; ([0-9.]+)% of their face frames upscaled \(source face box under 256 px\)", printed)
    assert found and float(found.group(1)) == pytest.approx(100 * share, abs=0.05), printed


def test_upscaled_share_on_known_boxes(tmp_path):
    boxes = np.array([[0, 0, 300, 300],  # larger: not upscaled at 256
                      [0, 0, 200, 400],  # shorter side 200: upscaled
                      [10, 10, 266, 266],  # exactly 256: not upscaled
                      [0, 0, 300, 255],  # one pixel short: upscaled
                      [0, 0, 0, 0]], np.int32)  # no face: not counted
    np.testing.assert_array_equal(crop.upscaled(boxes, 256), [False, True, False, True, True])
    np.testing.assert_array_equal(crop.upscaled(boxes, 128), [False, False, False, False, True])
    has_face = np.array([True, True, True, True, False])
    for stem, size in (("at256", 256), ("at128", 128)):
        record_files.write_record(tmp_path / stem, faces=[b"x"] * 4 + [b""], landmarks=np.zeros((5, 131, 2)),
                                  boxes=boxes, has_face=has_face, mel=np.zeros((20, 80)), source_fps=25,
                                  source_size=(400, 400), face_format="jpg", face_size=size)
    assert record_files.upscaled_share([tmp_path / "at256"]) == 0.5
    assert record_files.upscaled_share([tmp_path / "at128"]) == 0.0
    assert record_files.upscaled_share([tmp_path / "at256", tmp_path / "at128"]) == 0.25  # each at its own size
    assert record_files.upscaled_share([]) == 0.0


def test_render_frames_at_256_give_256_samples_equal_to_the_per_record_draw(records_256):
    stems = records_under(records_256[0])
    dataset = RenderFrames(stems, refs=2, seed=3, face_size=256)
    sample = dataset[1]
    shapes = {name: tuple(value.shape) for name, value in sample.items()}
    assert shapes == {"face": (3, 256, 256), "sketches": (5, 1, 256, 256), "ref_images": (2, 3, 256, 256),
                      "ref_sketches": (2, 1, 256, 256), "mels": (1, 80, 16)}
    assert sample["sketches"].max() > 0  # drawn at 256, not a blank canvas
    converted = dataset.to_device(default_collate([sample]), torch.device("cpu"))
    expected = default_collate([render_sample(stems, 3, 0, 1, refs=2)])
    for name in expected:
        assert torch.equal(converted[name], expected[name]), name


def test_records_of_another_size_are_refused_in_one_line_naming_both_sizes(records, records_256):
    for stems, asked, found in ((records_under(records), 256, 128), (records_under(records_256[0]), 128, 256)):
        with pytest.raises(InputError) as caught:
            RenderFrames(stems, refs=1, face_size=asked)
        message = str(caught.value)
        assert "\n" not in message and str(record_files.record_paths(stems[0])[0]) in message
        assert f"{found}x{found}" in message and f"{asked}x{asked}" in message
    with pytest.raises(InputError, match="256x256 faces where 128x128"):
        record_files.load_clip(records_256[0] / "talk_a", face_size=128)
    with pytest.raises(InputError, match="must be one of 128, 256, 512"):
        RenderFrames(records_under(records), face_size=192)


def test_preprocessing_at_another_size_redoes_a_finished_record(tmp_path):
    random_record(tmp_path / "out" / "clip")  # finished at 128
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "clip.mp4").write_bytes(b"not a video")  # fails when attempted
    arguments = ["--input-root", str(tmp_path / "in"), "--output-root", str(tmp_path / "out"), "--workers", "0"]
    assert preprocess.main(arguments) == 0  # done at 128: skipped
    assert preprocess.main(arguments + ["--face-size", "256"]) == 3  # attempted again at 256 (and failed)
    assert "clip.mp4\t" in (tmp_path / "out" / "failures.tsv").read_text()


def test_a_pack_made_before_face_sizes_were_stored_reads_as_128(tmp_path):
    stems = [tmp_path / "a", tmp_path / "b"]
    for seed, stem in enumerate(stems):
        random_record(stem, frames=40, seed=seed)
    pack = open_pack(stems, 5, 20)
    assert pack.face_sizes == [128, 128]
    meta = json.loads((pack.folder / "meta.json").read_text())
    del meta["face_sizes"]
    (pack.folder / "meta.json").write_text(json.dumps(meta))
    dataset = RenderFrames(stems, refs=1, min_face_frames=20)
    assert dataset.pack.folder == pack.folder and dataset[0]["face"].shape == (3, 128, 128)


def test_a_pack_gives_the_records_upscaled_share_from_its_boxes(tmp_path):
    from data.datasets import LandmarkWindows

    boxes = np.tile(np.array([[0, 0, 300, 300], [0, 0, 200, 400], [10, 10, 266, 266], [0, 0, 300, 255]], np.int32),
                    (10, 1))
    has_face = np.arange(40) < 39
    boxes[~has_face] = 0
    stems = [tmp_path / "at256", tmp_path / "at128"]
    for stem, size in zip(stems, (256, 128)):
        record_files.write_record(stem, faces=[b"x"] * 39 + [b""], landmarks=np.zeros((40, 131, 2)), boxes=boxes,
                                  has_face=has_face, mel=np.zeros((129, 80)), source_fps=25, source_size=(400, 400),
                                  face_format="jpg", face_size=size)
    assert record_files.upscaled_share(stems) == 19 / 78  # frames 1, 5, .., 37 and 3, 7, .., 35 at 256; none at 128
    dataset = LandmarkWindows(stems, min_face_frames=20)  # the landmark generator takes records of any size
    assert dataset.pack.face_sizes == [256, 128] and dataset.pack.upscaled_share() == 19 / 78


def _train(records, run_dir, steps, *extra):
    import train_render

    small = ["data.val_list=null", "optim.batch_size=2", "sample.refs=1", "sample.epoch_repeats=2",
             "schedule.warmup_epochs=1", "schedule.save_every=1", "schedule.log_every=1"]
    return train_render.main(["--config", "configs/render_smoke.yaml", f"data.records={records}",
                              f"run_dir={run_dir}", f"schedule.max_steps={steps}", *small, *extra])


def test_a_trainer_of_another_size_than_its_records_stops_in_one_line(records_256, tmp_path, capsys, monkeypatch):
    from config import REPO

    monkeypatch.chdir(REPO)
    assert _train(records_256[0], tmp_path / "run", 1) == 2  # the smoke config's face_size is 128
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the device line and the packing bar
    assert last.startswith("error: ") and "256x256" in last and "128x128" in last and ".npz" in last


@pytest.mark.slow
def test_training_at_256_runs_both_phases_and_its_checkpoint_says_its_size(records_256, tmp_path, capsys,
                                                                           monkeypatch):
    import torch

    from config import REPO

    monkeypatch.chdir(REPO)
    # 2 batches an epoch: steps 1-2 warm up (the warp loss alone), step 3 trains with the full loss.
    assert _train(records_256[0], tmp_path / "run", 3, "face_size=256", "discriminator.scales=3") == 0
    states = {s: torch.load(tmp_path / "run" / f"step_00000000{s}.pt", weights_only=True) for s in (2, 3)}
    assert all(state["model_args"] == {"face_size": 256} for state in states.values())
    weight = "translation.up.0.conv.weight"  # a 256-only tensor, trained in the full phase only
    assert states[2]["model"][weight].shape[-1] == 3
    assert not torch.equal(states[2]["model"][weight], states[3]["model"][weight])
    # Resuming that run as a 128 one is one line naming both sizes.
    capsys.readouterr()
    assert _train(records_256[0], tmp_path / "run", 4, "--resume", "auto", "face_size=128") == 2
    assert "256x256" in capsys.readouterr().err
