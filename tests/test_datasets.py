import numpy as np
import pytest
import torch

from data.datasets import LandmarkWindows, read_filelist, records_under
from data.errors import InputError
from data.landmarks import content_of
from data.packs import valid_starts
from data.records import load_clip


def test_filelist_in_lrs2_format(tmp_path):
    (tmp_path / "train.txt").write_text("5535415699068794046/00001 NF\n# comment\n\n6330311066473698535/00011.mp4\n")
    assert read_filelist(tmp_path / "train.txt", tmp_path / "recs") == [
        tmp_path / "recs" / "5535415699068794046" / "00001", tmp_path / "recs" / "6330311066473698535" / "00011"]
    with pytest.raises(InputError, match="no such file list"):
        read_filelist(tmp_path / "val.txt", tmp_path)


def test_valid_starts_need_faces_and_audio():
    has_face = np.ones(40, bool)
    has_face[20] = False
    starts = valid_starts(has_face, mel_length=1 + 40 * 640 // 200, steps=5)
    assert starts.min() == 2  # window_start(t) >= 0 needs t >= 2
    assert not np.isin(np.arange(16, 21), starts).any()  # windows covering frame 20
    assert starts.max() + 4 <= 39 and (starts.max() + 4 - 2) * 3.2 + 16 <= 129


def test_landmark_windows_sample_shapes_and_content(records):
    stems = records_under(records)
    dataset = LandmarkWindows(stems, seed=3)
    assert len(dataset) == 2 and dataset.skipped == []
    sample = dataset[0]
    assert sample["mels"].shape == (5, 1, 80, 16) and sample["pose"].shape == (5, 2, 74)
    assert sample["content"].shape == (5, 2, 57) and sample["ref_pose"].shape == (15, 2, 74)
    assert sample["ref_content"].shape == (15, 2, 57)
    # The content is the stored landmarks of some 5 consecutive frames of the first record.
    clip = load_clip(stems[0])
    all_content = torch.from_numpy(content_of(clip.landmarks))
    match = [t for t in range(len(clip) - 4) if torch.equal(all_content[t:t + 5], sample["content"])]
    assert len(match) == 1
    # Same (seed, epoch, index): same sample; another epoch: another window.
    assert torch.equal(dataset[0]["content"], sample["content"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["content"], sample["content"])


def test_short_records_are_skipped_and_counted(records, tmp_path):
    from data.records import write_record

    write_record(tmp_path / "short", faces=[b""] * 30, landmarks=np.zeros((30, 131, 2)), boxes=np.zeros((30, 4)),
                 has_face=np.arange(30) < 20, mel=np.zeros((97, 80)), source_fps=25, source_size=(64, 64),
                 face_format="jpg")
    dataset = LandmarkWindows(records_under(records) + [tmp_path / "short", tmp_path / "absent"])
    assert len(dataset) == 2 and dataset.skipped == [tmp_path / "short"] and dataset.missing == [tmp_path / "absent"]


def test_render_frames_sample(records):
    from data.audio import mel_windows
    from data.datasets import RenderFrames
    from testing.reference_samples import sketch_tensor

    dataset = RenderFrames(records_under(records), refs=3, seed=1)
    batch = dataset.to_device({k: v[None] for k, v in dataset[1].items()}, torch.device("cpu"))
    sample = {k: v[0] for k, v in batch.items()}  # as the renderer takes it: float32 in 0..1, 3-channel sketches
    assert sample["face"].shape == (3, 128, 128) and sample["sketches"].shape == (5, 3, 128, 128)
    assert sample["ref_images"].shape == (3, 3, 128, 128) and sample["ref_sketches"].shape == (3, 3, 128, 128)
    assert sample["mels"].shape == (1, 80, 16)
    clip = load_clip(records_under(records)[1])
    faces = torch.from_numpy(np.asarray(clip.faces)).permute(0, 3, 1, 2).float() / 255
    target = [t for t in range(len(clip)) if torch.equal(faces[t], sample["face"])]
    assert len(target) == 1
    t = target[0]
    # The centre sketch is the target's own; the audio window is the target's.
    box = clip.boxes[t]
    expected = sketch_tensor(clip.landmarks[t], (int(box[2] - box[0]), int(box[3] - box[1])))
    np.testing.assert_array_equal(sample["sketches"][2].numpy(), expected)
    np.testing.assert_array_equal(sample["mels"][0].numpy(), mel_windows(clip.mel, [t])[0])
    for ref in sample["ref_images"]:  # references are other frames of the same video
        assert any(torch.equal(ref, faces[f]) for f in range(len(clip)) if f != t)
