"""One presenter, many audios: the prepared-template cache, several dubs per run, task lists and shards, and
the crop-box smoothing that steadies the face."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import dubbing
import inference
from data.audio import SAMPLE_RATE, frames_covered, load_audio
from data.crop import smooth_boxes
from data.video import VideoReader, VideoWriter, read_frames
from testing.audio import write_wav

FAST = ["refs=1", "batch_size=4"]


@pytest.fixture(scope="module")
def media(samples, tmp_path_factory):
    """A 12-frame template (talk_a at 256x256) and three short audios cut from talk_b."""
    folder = tmp_path_factory.mktemp("media")
    with VideoReader(samples / "talk_a.mp4") as reader:
        frames = [cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in itertools.islice(reader, 12)]
    template = folder / "presenter.mp4"
    with VideoWriter(template) as writer:
        for frame in frames:
            writer.write(frame)
    speech = load_audio(samples / "talk_b.mp4")
    audios = [write_wav(folder / f"take{i}.wav", speech[i * 4000:i * 4000 + int(0.32 * SAMPLE_RATE)]) for i in range(3)]
    return template, audios


def _config(cache_dir: Path, **changes) -> dict:
    config = dubbing.default_config()
    config.update(refs=1, batch_size=4, **changes)
    config["cache"] = {"enabled": True, "dir": str(cache_dir)}
    return config


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = inference.main(args)
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- the prepared-template cache
def test_a_second_dub_of_the_same_template_reads_the_cache(media, random_checkpoints, tmp_path, facemesh_calls):
    template, audios = media
    models = dubbing.load_models(*random_checkpoints, "cpu")
    config = _config(tmp_path / "cache")
    dubbing.dub(template, audios[0], tmp_path / "a.mp4", models, config, progress=False)
    assert facemesh_calls["n"] == 12 and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    dubbing.dub(template, audios[0], tmp_path / "b.mp4", models, config, progress=False)
    assert facemesh_calls["n"] == 12  # no FaceMesh pass the second time
    assert [np.array_equal(x, y) for x, y in zip(read_frames(tmp_path / "a.mp4"), read_frames(tmp_path / "b.mp4"))] \
        == [True] * frames_covered(len(load_audio(audios[0])))


def test_the_entry_serves_any_file_of_that_content_and_a_setting_or_content_change_misses(
        media, random_checkpoints, tmp_path, facemesh_calls):
    template, audios = media
    copy = tmp_path / "presenter.mp4"
    copy.write_bytes(template.read_bytes())
    models = dubbing.load_models(*random_checkpoints, "cpu")
    config = _config(tmp_path / "cache")
    dubbing.prepare_template(copy, models, config, progress=False)
    assert facemesh_calls["n"] == 12
    dubbing.prepare_template(copy, models, config, progress=False)
    assert facemesh_calls["n"] == 12
    (entry,) = (tmp_path / "cache").glob("*.npz")
    written = entry.stat().st_mtime_ns
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched (a re-upload): same bytes, newer time
    dubbing.prepare_template(copy, models, config, progress=False)
    other = tmp_path / "elsewhere" / "copy.mp4"  # a byte-identical copy under another path
    other.parent.mkdir()
    other.write_bytes(copy.read_bytes())
    dubbing.prepare_template(other, models, config, progress=False)
    assert facemesh_calls["n"] == 12 and entry.stat().st_mtime_ns == written  # reused, not rewritten
    dubbing.prepare_template(copy, models, _config(tmp_path / "cache", detect_every_frame=True), progress=False)
    assert facemesh_calls["n"] == 24  # another FaceMesh mode is another entry
    dubbing.prepare_template(copy, models, config, progress=False)
    assert facemesh_calls["n"] == 24  # ... and the first one is still there
    with open(copy, "ab") as handle:  # changed content
        handle.write(b"\0")
    dubbing.prepare_template(copy, models, config, progress=False)
    assert facemesh_calls["n"] == 36


def test_a_damaged_cache_entry_is_recomputed_not_trusted(media, random_checkpoints, tmp_path, facemesh_calls):
    template, _ = media
    models = dubbing.load_models(*random_checkpoints, "cpu")
    config = _config(tmp_path / "cache")
    first = dubbing.prepare_template(template, models, config, progress=False).template
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:200])  # cut short
    again = dubbing.prepare_template(template, models, config, progress=False).template
    assert facemesh_calls["n"] == 24
    np.testing.assert_array_equal(again.boxes, first.boxes)
    np.testing.assert_array_equal(again.landmarks, first.landmarks)
    assert entry.stat().st_size > 200  # written again, whole
    dubbing.prepare_template(template, models, config, progress=False)
    assert facemesh_calls["n"] == 24


@pytest.mark.slow  # 49 s on a 2-core CPU: keeps the default suite under 15 minutes; run with -m slow
def test_no_cache_runs_facemesh_every_time_and_keeps_nothing(media, random_checkpoints, tmp_path, capsys,
                                                            facemesh_calls):
    template, audios = media
    landmark, renderer = random_checkpoints
    for name in ("a", "b"):
        output = tmp_path / f"{name}.mp4"
        code, err = _cli(["--video", str(template), "--audio", str(audios[0]), "--output", str(output),
                          "--landmark-ckpt", str(landmark), "--renderer-ckpt", str(renderer), "--quiet", "--no-cache",
                          "--cache-dir", str(tmp_path / "cache"), *FAST], capsys)
        assert code == 0, err
    assert facemesh_calls["n"] == 24 and not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- several dubs per run
@pytest.mark.slow  # 137 s on a 2-core CPU: keeps the default suite under 15 minutes; run with -m slow
def test_several_audios_give_one_output_each_equal_to_separate_runs(media, random_checkpoints, tmp_path, capsys,
                                                                   facemesh_calls):
    template, audios = media
    landmark, renderer = random_checkpoints
    common = ["--landmark-ckpt", str(landmark), "--renderer-ckpt", str(renderer), "--quiet",
              "--cache-dir", str(tmp_path / "cache"), *FAST]
    code, err = _cli(["--video", str(template), *itertools.chain(*(["--audio", str(a)] for a in audios)),
                      "--output", str(tmp_path / "many"), *common], capsys)
    assert code == 0, err
    assert facemesh_calls["n"] == 12  # one FaceMesh pass for three dubs
    for audio in audios:
        separate = tmp_path / "one" / f"{audio.stem}.mp4"
        code, err = _cli(["--video", str(template), "--audio", str(audio), "--output", str(separate), "--no-cache",
                          *common], capsys)
        assert code == 0, err
        together = read_frames(tmp_path / "many" / f"{audio.stem}.mp4")
        alone = read_frames(separate)
        assert len(together) == len(alone) == frames_covered(len(load_audio(audio)))
        assert together[0].shape == (256, 256, 3)
        assert all(np.array_equal(x, y) for x, y in zip(together, alone)), audio.name
        with VideoReader(tmp_path / "many" / f"{audio.stem}.mp4") as reader:
            assert reader.source_fps == 25 and reader.has_audio


def test_a_task_list_with_a_bad_entry_completes_the_others_and_exits_non_zero(media, random_checkpoints, tmp_path,
                                                                             capsys):
    template, audios = media
    landmark, renderer = random_checkpoints
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(f"- {{video: {template}, audio: {audios[0]}, output: out/first.mp4}}\n"
                     f"- {{video: {template}, audio: missing.wav, output: out/bad.mp4}}\n"
                     f"- {{video: {template}, audio: {audios[1]}, output: out/third.mp4}}\n")
    code, err = _cli(["--tasks", str(tasks), "--landmark-ckpt", str(landmark), "--renderer-ckpt", str(renderer),
                      "--quiet", "--cache-dir", str(tmp_path / "cache"), *FAST], capsys)
    assert code == inference.SOME_FAILED
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing.wav" in errors[0]
    assert "1 of 3 dubs failed" in err and "bad.mp4" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first.mp4", "third.mp4"]
    assert len(read_frames(tmp_path / "out" / "third.mp4")) == frames_covered(len(load_audio(audios[1])))


def test_bad_task_lists_are_one_line(tmp_path, capsys):
    (tmp_path / "t.yaml").write_text("- {video: a.mp4, audio: b.wav}\n")
    code, err = _cli(["--tasks", str(tmp_path / "t.yaml")], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "entry 1 must have exactly the keys" in err
    code, err = _cli(["--tasks", str(tmp_path / "none.yaml")], capsys)
    assert code == 2 and "no such task list" in err
    code, err = _cli(["--video", "a.mp4", "--audio", "x.wav", "--audio", "y.wav", "--output", "o.mp4"], capsys)
    assert code == 2 and "--output is a folder" in err


def test_shards_partition_a_task_list_with_no_overlap_and_no_gap(tmp_path):
    tasks = [inference.Task(Path("t.mp4"), Path(f"a{i}.wav"), tmp_path / f"out/{i:03d}.mp4") for i in range(60)]
    shards = [inference.shard_of(tasks, (i, 4)) for i in range(4)]
    outputs = [task.output for shard in shards for task in shard]
    assert sorted(outputs) == sorted(task.output for task in tasks) and len(outputs) == len(set(outputs))
    assert [len(shard) for shard in shards] == [15, 15, 15, 15]
    assert inference.shard_of(tasks, (0, 1)) == tasks  # one shard: the list as written
    six = [inference.Task(Path("t.mp4"), Path("a.wav"), tmp_path / f"s{i}.mp4") for i in range(6)]
    assert [len(inference.shard_of(six, (i, 2))) for i in range(2)] == [3, 3]  # a CRC32 put all six in one


# ---------------------------------------------------------------- steady faces
def test_box_smoothing_averages_each_run_of_face_frames():
    boxes = np.array([[0, 0, 10, 10], [2, 2, 12, 12], [4, 4, 14, 14], [6, 6, 16, 16], [100, 100, 110, 110]],
                     np.int32)
    has_face = np.array([1, 1, 1, 0, 1], bool)
    smoothed = smooth_boxes(boxes, has_face, 3, (200, 200))
    np.testing.assert_array_equal(smoothed[:3], [[1, 1, 11, 11], [2, 2, 12, 12], [3, 3, 13, 13]])  # window shrinks
    np.testing.assert_array_equal(smoothed[3:], boxes[3:])  # no face: kept; a lone face frame: itself
    np.testing.assert_array_equal(smooth_boxes(boxes, has_face, 1, (200, 200)), boxes)
    noisy = np.array([[50, 50, 150, 150]] * 40) + np.tile([[0, 0, 0, 0], [2, 2, 2, 2]], (20, 1))  # shaking +-1
    steady = smooth_boxes(noisy.astype(np.int32), np.ones(40, bool), 5, (400, 400))
    assert np.abs(np.diff(steady[2:-2], 2, axis=0)).max() <= 1 < np.abs(np.diff(noisy, 2, axis=0)).max()
    assert smooth_boxes(np.array([[0, 0, 4, 4], [-3, -3, 3, 3]]), np.ones(2, bool), 2, (3, 3)).min() >= 0
