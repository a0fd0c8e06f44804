import errno
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import preprocess
from conftest import REPO, numbered_frames, tone
from data import records as record_files
from data.audio import load_audio
from data.records import is_complete, load_clip, write_record
from data.video import VideoWriter, read_frames


def test_records_of_the_samples(records, samples):
    for name in ("talk_a", "talk_b"):
        clip = load_clip(records / name)
        assert len(clip) == 125 and clip.fps == 25.0 and clip.source_fps == 25.0 and clip.has_audio
        assert clip.has_face.all()
        # The mel covers the whole audio track: 1 + samples // 200 frames.
        assert len(clip.mel) == 1 + len(load_audio(samples / f"{name}.mp4")) // 200
        inside = ((clip.landmarks >= 0) & (clip.landmarks <= 1)).all(axis=-1)
        assert inside.mean() >= 0.95
        width, height = clip.source_size
        assert (clip.boxes[:, :2] >= 0).all() and (clip.boxes[:, 2] <= width).all()
        assert (clip.boxes[:, 3] <= height).all()
        face = clip.faces[60]
        assert face.shape == (128, 128, 3) and 40 < face.mean() < 220
    assert (records / "failures.tsv").read_text() == ""


def test_stored_crop_matches_the_source_frame(records, samples):
    clip = load_clip(records / "talk_b")
    frame = read_frames(samples / "talk_b.mp4")[10]
    x0, y0, x1, y1 = clip.boxes[10]
    expected = cv2.resize(frame[y0:y1, x0:x1], (128, 128), interpolation=cv2.INTER_AREA)
    difference = np.abs(clip.faces[10].astype(int) - expected)
    assert clip.face_format == "jpg" and difference.mean() < 1.5  # JPEG at quality 95
    shifted = cv2.resize(frame[y0 + 4:y1 + 4, x0:x1], (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(clip.faces[10].astype(int) - shifted).mean() > 2 * difference.mean()


def _write(path, frames, fps, audio=None):
    with VideoWriter(path, fps=fps, audio=audio) as writer:
        for frame in frames:
            writer.write(frame)


@pytest.fixture(scope="module")
def mixed_tree(tmp_path_factory, samples):
    """Good and bad videos side by side, as a real dataset folder can have them."""
    root = tmp_path_factory.mktemp("videos")
    (root / "spk1").mkdir()
    (root / "spk1" / "talk_a.mp4").symlink_to(samples / "talk_a.mp4")
    (root / "spk1" / "template_129.mp4").symlink_to(samples / "template_129.mp4")
    (root / "spk2").mkdir()
    (root / "spk2" / "notes.mp4").write_text("this is not a video")
    (root / "spk2" / "truncated.mp4").write_bytes((samples / "talk_b.mp4").read_bytes()[:150_000])
    faces = [cv2.resize(f, (320, 320), interpolation=cv2.INTER_AREA) for f in read_frames(samples / "talk_a.mp4")]
    speech = load_audio(samples / "talk_a.mp4")
    for fps, name in ((30.0, "at30.mov"), (22.13, "at22.mkv")):
        count = 60
        _write(root / "spk2" / name, faces[:count], fps, speech[: int(count / fps * 16000)])
    _write(root / "spk2" / "no_face.mp4", numbered_frames(40, (96, 96)), 25, tone(1.6))
    _write(root / "spk2" / "short.mp4", faces[:20], 25, speech[: 20 * 640])
    return root


def test_bad_videos_are_listed_and_the_run_goes_on(mixed_tree, tmp_path):
    out = tmp_path / "records"
    result = subprocess.run([sys.executable, "preprocess.py", "--input-root", str(mixed_tree), "--output-root",
                             str(out), "--workers", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    failures = dict(line.split("\t") for line in (out / "failures.tsv").read_text().splitlines())
    assert set(failures) == {"spk1/template_129.mp4", "spk2/notes.mp4", "spk2/truncated.mp4",
                             "spk2/no_face.mp4", "spk2/short.mp4"}
    assert failures["spk1/template_129.mp4"] == "no audio stream"
    assert failures["spk2/notes.mp4"].startswith("not a readable video")
    assert failures["spk2/no_face.mp4"].startswith("no face found")
    assert failures["spk2/short.mp4"].startswith("too short: 20 frames")
    assert "3 done, 0 skipped, 5 failed" in result.stdout
    for name, fps in (("at30", 30.0), ("at22", 22.13)):
        clip = load_clip(out / "spk2" / name)
        assert clip.source_fps == pytest.approx(fps, rel=1e-3)
        assert abs(len(clip) - 60 / fps * 25) <= 1
        decoded = load_audio(mixed_tree / "spk2" / f"{name}{'.mov' if fps == 30 else '.mkv'}")
        assert len(clip.mel) == 1 + len(decoded) // 200  # the mel covers the whole audio track
        assert abs(len(decoded) / 16000 - 60 / fps) < 0.07  # AAC rounds up to a whole 1024-sample frame
        assert clip.has_face.mean() > 0.9

    # Resume: finished records are skipped, failures retried; --overwrite redoes them.
    again = subprocess.run([sys.executable, "preprocess.py", "--input-root", str(mixed_tree), "--output-root",
                            str(out), "--workers", "0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert "0 done, 3 skipped, 5 failed" in again.stdout


def test_no_audio_template_can_be_recorded_when_asked(samples, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "template_129.mp4").symlink_to(samples / "template_129.mp4")
    preprocess.main(["--input-root", str(tmp_path / "in"), "--output-root", str(tmp_path / "out"), "--workers", "0",
                     "--allow-no-audio"])
    clip = load_clip(tmp_path / "out" / "template_129")
    assert len(clip) == 225 and clip.mel.shape == (0, 80) and not clip.has_audio and clip.source_fps == 30.0


def test_resume_skips_finished_records(records, samples, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "talk_a.mp4").symlink_to(samples / "talk_a.mp4")
    out = tmp_path / "out"
    out.mkdir()
    for suffix in (".npz", ".faces"):
        (out / f"talk_a{suffix}").write_bytes((records / f"talk_a{suffix}").read_bytes())
    before = (out / "talk_a.npz").stat().st_mtime_ns
    preprocess.main(["--input-root", str(tmp_path / "in"), "--output-root", str(out), "--workers", "0"])
    assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert (out / "talk_a.npz").stat().st_mtime_ns == before


def test_finding_videos_by_extension(tmp_path):
    for name in ("a.MP4", "b.mov", "c.mkv", "d.avi", "e.webm", "f.txt", "g.wav"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in preprocess.find_videos(tmp_path)] == ["a.MP4", "b.mov", "c.mkv", "d.avi", "e.webm"]


def test_command_line_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "preprocess.py", "--input-root", str(tmp_path / "nope"),
                             "--output-root", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "no such folder" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "preprocess.py", "--input-root", str(tmp_path), "--output-root",
                             str(tmp_path / "out"), "--shard", "4/4"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "0 <= I < N" in result.stderr
    assert not is_complete(tmp_path / "out" / "x")


def test_a_worker_crash_fails_only_its_video(tmp_path, monkeypatch):
    import os

    def fake(video, stem, options):
        if video.name == "crash.mp4":
            os._exit(1)  # a native crash inside MediaPipe or FFmpeg looks like this to the pool
        return preprocess.Counts(30, 30, 0)

    monkeypatch.setattr(preprocess, "preprocess_video", fake)  # forked workers inherit the patch
    jobs = [(Path(name), tmp_path / name) for name in ("a.mp4", "crash.mp4", "b.mp4", "c.mp4")]
    results = {video.name: (frames, reason) for video, frames, reason in
               preprocess._run_jobs(jobs, 2, preprocess.Options())}
    assert results["crash.mp4"] == (preprocess.NOTHING, "the worker process crashed on this video")
    assert all(results[name] == ((30, 30, 0), None) for name in ("a.mp4", "b.mp4", "c.mp4"))


def test_exit_status_when_nothing_could_be_recorded(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.mp4").write_text("this is not a video")
    result = subprocess.run([sys.executable, str(REPO / "preprocess.py"), "--input-root", "in", "--output-root", "out",
                             "--workers", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr
    assert "no record could be written" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "out" / "failures.tsv").read_text().startswith("notes.mp4\t")
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, str(REPO / "preprocess.py"), "--input-root", "empty", "--output-root",
                             "out2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: empty: no videos")
    assert "exit status" in subprocess.run([sys.executable, str(REPO / "preprocess.py"), "--help"], cwd=tmp_path,
                                           capture_output=True, text=True, timeout=300).stdout.lower()


def _tiny_record(video, stem, options):
    """preprocess_video without decoding or FaceMesh: a small record that reads back whole."""
    frames = 30
    write_record(stem, faces=[b"face"] * frames, landmarks=np.zeros((frames, 131, 2)), boxes=np.zeros((frames, 4)),
                 has_face=np.ones(frames, bool), mel=np.zeros((130, 80)), source_fps=25.0, source_size=(64, 64),
                 face_format="jpg")
    return preprocess.Counts(frames, frames, frames)  # zero boxes: every face frame is upscaled


def _full_for(name: str):
    """open() for data/records.py on a disk that is full when the record `name` is written (in any process)."""
    def fake_open(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if "w" in mode and Path(path).name.startswith(name):
            def full(data):
                raise OSError(errno.ENOSPC, "No space left on device")

            handle.write = full
        return handle

    return fake_open


@pytest.mark.parametrize("workers", [0, 2])
def test_a_full_disk_stops_preprocessing_at_once_and_a_rerun_finishes(workers, tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    for i in range(1, 6):
        (tmp_path / "in" / f"v{i}.mp4").write_bytes(b"")
    out = tmp_path / "out"
    args = ["--input-root", str(tmp_path / "in"), "--output-root", str(out), "--workers", str(workers)]
    monkeypatch.setattr(preprocess, "preprocess_video", _tiny_record)  # forked workers inherit the patches
    with monkeypatch.context() as disk:
        disk.setattr(record_files, "open", _full_for("v3."), raising=False)
        assert preprocess.main(args) == 74
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"error: {out / 'v3.npz'}: no space left on device (preprocessing stopped: ")
    assert not list(out.glob("*.tmp-*")) and not is_complete(out / "v3")  # nothing half-written
    if workers == 0:  # in one process the order is fixed: the two before finished, none after was started
        assert "2 videos recorded in this run" in errors[0]
        assert is_complete(out / "v1") and is_complete(out / "v2") and not list(out.glob("v[45].*"))
    assert "v3.mp4\tno space left on device (preprocessing stopped here" in (out / "failures.tsv").read_text()
    finished = {p.name for p in out.glob("*.npz")}
    assert preprocess.main(args) == 0
    assert f"{5 - len(finished)} done, {len(finished)} skipped, 0 failed" in capsys.readouterr().out
    assert all(is_complete(out / f"v{i}") for i in range(1, 6))
