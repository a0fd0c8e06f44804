"""Packed splits (data/packs.py) and the datasets drawn from them, on tiny synthetic records."""
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from data.datasets import LandmarkWindows, RenderFrames
from data.errors import InputError
from data.records import encode_face, write_record
from testing.reference_samples import landmark_sample, render_sample


def write_records(folder, count: int = 2, frames: int = 36, seed: int = 0) -> list:
    """`count` records of random landmarks, boxes of several shapes, JPEG noise faces and a random mel; frame 17
    of each has no face."""
    rng = np.random.default_rng(seed)
    stems = []
    for v in range(count):
        has_face = np.ones(frames, bool)
        has_face[17] = False
        faces = [encode_face(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), "jpg") if face else b""
                 for face in has_face]
        corner = rng.integers(0, 50, (frames, 2))
        size = rng.integers(90, 200, (frames, 2))
        boxes = np.concatenate([corner, corner + size], axis=1) * has_face[:, None]
        landmarks = rng.uniform(0.02, 0.98, (frames, 131, 2)).astype(np.float32) * has_face[:, None, None]
        mel = rng.uniform(-4, 4, (1 + frames * 640 // 200, 80)).astype(np.float32)
        stems.append(folder / f"video_{v}")
        write_record(stems[-1], faces=faces, landmarks=landmarks, boxes=boxes, has_face=has_face, mel=mel,
                     source_fps=25, source_size=(256, 256), face_format="jpg")
    return stems


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("tiny"))


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


def test_landmark_windows_equal_the_per_record_draw(tiny):
    dataset = LandmarkWindows(tiny, refs=15, min_face_frames=20, seed=7, repeats=2)
    assert len(dataset) == 4 and dataset.stems == tiny
    for epoch in (0, 3):
        for index in range(len(dataset)):
            expected = landmark_sample(tiny, 7, epoch, index, steps=5, refs=15)
            _equal(dataset[(epoch, index)], expected)
            dataset.set_epoch(epoch)
            _equal(dataset[index], expected)
    # More references than other face frames: drawn with replacement, as the reference draws them.
    many = LandmarkWindows(tiny, refs=40, min_face_frames=20, seed=1)
    _equal(many[(2, 1)], landmark_sample(tiny, 1, 2, 1, steps=5, refs=40))


def test_a_pack_is_reused_and_a_changed_record_repacked(tiny, tmp_path):
    first = LandmarkWindows(tiny, min_face_frames=20, pack_dir=tmp_path / "packs")
    again = LandmarkWindows(tiny, min_face_frames=20, pack_dir=tmp_path / "packs")
    assert again.pack.folder == first.pack.folder and first.pack.folder.parent == tmp_path / "packs"
    assert LandmarkWindows(tiny, steps=4, min_face_frames=20, pack_dir=tmp_path / "packs").pack.folder != \
        first.pack.folder
    changed = write_records(tmp_path / "changed", count=2, seed=0)
    before = LandmarkWindows(changed, min_face_frames=20)
    assert before.pack.folder.parent == tmp_path / "changed" / ".packs"  # beside the records by default
    write_records(tmp_path / "changed", count=1, seed=5)  # video_0 rewritten with other landmarks
    after = LandmarkWindows(changed, min_face_frames=20)
    assert after.pack.folder != before.pack.folder
    _equal(after[(0, 0)], landmark_sample(changed, 0, 0, 0))
    assert not any(".tmp-" in path.name for path in (tmp_path / "changed" / ".packs").iterdir())


def test_skipped_missing_and_unwritable(tiny, tmp_path):
    with pytest.raises(InputError, match=r"no usable records among 3 \(2 with too few face frames, 1 missing\)"):
        LandmarkWindows(tiny + [tmp_path / "absent"], min_face_frames=36)  # 35 face frames each
    dataset = LandmarkWindows(tiny + [tmp_path / "absent"], min_face_frames=20, pack_dir=tmp_path / "p")
    assert dataset.stems == tiny and dataset.missing == [tmp_path / "absent"] and dataset.skipped == []
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="cannot write the records' pack here") as error:
        LandmarkWindows(tiny, min_face_frames=20, pack_dir=tmp_path / "file" / "packs")
    assert "\n" not in str(error.value) and str(tmp_path / "file" / "packs") in str(error.value)


def test_render_frames_are_uint8_and_equal_the_float_draw_on_the_device(tiny):
    dataset = RenderFrames(tiny, refs=3, min_face_frames=20, seed=2, repeats=2)
    keys = [(0, 0), (0, 3), (5, 1), (5, 2)]
    samples = [dataset[key] for key in keys]
    shapes = {"face": (3, 128, 128), "sketches": (5, 1, 128, 128), "ref_images": (3, 3, 128, 128),
              "ref_sketches": (3, 1, 128, 128), "mels": (1, 80, 16)}
    for sample in samples:
        assert {name: tuple(value.shape) for name, value in sample.items()} == shapes
        assert all(sample[name].dtype == torch.uint8 for name in shapes if name != "mels")
        assert sum(value.numel() * value.element_size() for value in sample.values()) <= 0.35e6
    expected = default_collate([render_sample(tiny, 2, epoch, index, refs=3) for epoch, index in keys])
    # Today's sketches are uint8 drawings divided by 255 in float32, so exact equality is the bar.
    assert torch.equal(expected["sketches"], (expected["sketches"] * 255).round() / 255)
    converted = dataset.to_device(default_collate(samples), torch.device("cpu"))
    _equal(converted, expected)
    _equal(dataset.to_device(converted, torch.device("cpu")), expected)  # a converted batch stays as it is
    dataset.set_epoch(5)
    _equal(dataset.to_device(default_collate([dataset[1]]), torch.device("cpu")),
           default_collate([render_sample(tiny, 2, 5, 1, refs=3)]))


def test_every_byte_value_divides_as_numpy_divides():
    values = np.arange(256, dtype=np.uint8)
    assert torch.equal(torch.from_numpy(values).float().div_(255), torch.from_numpy(values.astype(np.float32) / 255.0))


class EpochIndices(torch.utils.data.Sampler):
    """(epoch, index) for every index, the epoch set from outside: the shape of the trainers' epoch sampler."""

    def __init__(self, count: int):
        self.epoch, self.count = 0, count

    def __iter__(self):
        return iter([(self.epoch, index) for index in range(self.count)])

    def __len__(self) -> int:
        return self.count


def test_persistent_workers_draw_the_epoch_the_sampler_carries(tiny):
    dataset = LandmarkWindows(tiny, min_face_frames=20, seed=4, repeats=2)
    sampler = EpochIndices(len(dataset))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=2,
                                         persistent_workers=True)
    contents = []
    for epoch in (0, 1, 2):
        sampler.epoch = epoch
        batches = list(loader)
        assert len(batches) == 2
        for first, batch in zip((0, 2), batches):
            _equal(batch, default_collate([dataset[(epoch, index)] for index in (first, first + 1)]))
        contents.append(torch.cat([batch["content"] for batch in batches]))
    assert dataset.epoch == 0  # nothing but the sampler told the workers the epoch
    assert not torch.equal(contents[0], contents[1]) and not torch.equal(contents[1], contents[2])
