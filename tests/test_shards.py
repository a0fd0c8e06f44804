"""--shard I/N: shares of a sorted list that differ in size by at most one, whatever the names and their order."""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import pytest

import preprocess
from shards import parse_shard, shard_share


def _posix(path: Path) -> str:
    return path.as_posix()


@pytest.mark.parametrize("count", [2, 4, 8])
def test_sequential_names_split_evenly_with_no_overlap_and_no_gap(count):
    for total in (1, 7, 100, 101):
        names = [Path(f"spk/{i:05d}.mp4") for i in range(1, total + 1)]
        shares = [shard_share(names, (index, count), _posix) for index in range(count)]
        sizes = [len(share) for share in shares]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == total
        assert sorted(name for share in shares for name in share) == names  # the whole list, each name once


def test_the_share_does_not_depend_on_the_input_order():
    names = [Path(f"spk{i % 3}/{i:05d}.mp4") for i in range(50)]
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    for index in range(4):
        assert set(shard_share(shuffled, (index, 4), _posix)) == set(shard_share(names, (index, 4), _posix))
    assert shard_share(shuffled, (0, 1), _posix) == shuffled  # one shard keeps the order it was given


def test_preprocessing_shards_the_found_videos_the_same_way(tmp_path, capsys, monkeypatch):
    for i in range(6):
        (tmp_path / "in" / f"s{i}.mp4").parent.mkdir(exist_ok=True)
        (tmp_path / "in" / f"s{i}.mp4").write_bytes(b"")
    seen = []
    monkeypatch.setattr(preprocess, "preprocess_video",
                        lambda video, stem, options: seen.append(video.name) or preprocess.Counts(30, 30, 0))
    for index in range(2):
        assert preprocess.main(["--input-root", str(tmp_path / "in"), "--output-root", str(tmp_path / "out"),
                                "--workers", "0", "--shard", f"{index}/2"]) == 0
    assert seen == ["s0.mp4", "s2.mp4", "s4.mp4", "s1.mp4", "s3.mp4", "s5.mp4"]
    err = capsys.readouterr().err
    assert "3 videos in shard 0/2" in err and "3 videos in shard 1/2" in err


def test_malformed_shards_are_refused():
    assert parse_shard("3/4") == (3, 4)
    for text in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shard(text)
