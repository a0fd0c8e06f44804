"""Pass 2's stages run overlapped (three threads joined by queues) or in series: the same output frame for frame,
and a failing stage, a bad input or Ctrl-C leaves no output and no thread behind. Also the fixed-shape padding
used on CUDA and the alignment's chunking rule under its memory budget."""
from __future__ import annotations

import errno
import threading
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import dubbing
import dubbing.cache
import dubbing.network
import dubbing.overlap
import dubbing.pipeline
import dubbing.progress
import dubbing.writer
import inference
from data.audio import SAMPLE_RATE, load_audio
from data.errors import DISK_STATUS, InputError
from data.video import ENCODER_OPTIONS, read_frames
from testing.audio import write_wav
from testing.templates import small_template


@pytest.fixture(scope="module")
def media(samples, tmp_path_factory) -> tuple[Path, Path]:
    """A 10-frame template (talk_a at 192x192, frame 4's face painted out) and 0.6 s of speech: 15 output
    frames, so the template loops (0..9, 9..5) and is read back from the spool."""
    folder = tmp_path_factory.mktemp("pipeline")
    template = small_template(samples / "talk_a.mp4", folder / "template.mp4", 10, 192,
                              (4, slice(20, 180), slice(30, 170)))
    audio = write_wav(folder / "speech.wav", load_audio(samples / "talk_b.mp4")[:int(0.6 * SAMPLE_RATE)])
    return template, audio


def _drawn(renderer, refs, faces, sketches, mels):
    """A stand-in render step whose output depends on every input the stages prepare: the face crop, the target
    sketches (from the landmark generator's prediction) and the audio window."""
    return (0.6 * faces + 0.4 * sketches.mean(dim=1) + 0.01 * mels.mean(dim=(1, 2, 3))[:, None, None, None])


@pytest.fixture(scope="module")
def models(random_checkpoints) -> dubbing.Models:
    return replace(dubbing.load_models(*random_checkpoints, "cpu"), render_step=_drawn)


def _config(**changes) -> dict:
    config = dubbing.default_config()
    config.update(refs=1, batch_size=4, **changes)
    return config


def _dub_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("dub-")]


def test_overlapped_stages_give_the_serial_output_frame_for_frame(media, models, tmp_path):
    template, audio = media
    serial = dubbing.dub(template, audio, tmp_path / "serial.mp4", models, _config(pipeline=False), progress=False)
    overlapped = dubbing.dub(template, audio, tmp_path / "overlapped.mp4", models, _config(pipeline=True),
                             progress=False)
    assert serial.frames == overlapped.frames == 15 and serial.rendered == overlapped.rendered == 14
    a, b = read_frames(tmp_path / "serial.mp4"), read_frames(tmp_path / "overlapped.mp4")
    assert len(a) == len(b) == 15
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # The stand-in draws: the faces differ from the template's (so the stages did run and paste).
    source = read_frames(template)
    assert np.abs(a[0].astype(int) - source[0]).max() > 20
    assert not _dub_threads()


def _no_output_left(folder: Path) -> None:
    assert not list(folder.glob("*.mp4")), "a partial or complete output was left"
    assert not _dub_threads(), "a stage thread is still running"


@pytest.mark.parametrize("stage", ["prepare", "network", "paste", "encode"])
def test_a_failing_stage_leaves_no_output_and_no_thread(stage, media, models, tmp_path, monkeypatch):
    template, audio = media
    calls = {"n": 0}

    def fail_on_second(original):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise InputError(template, f"{stage} failed")
            return original(*args, **kwargs)
        return wrapped

    if stage == "network":
        models = replace(models, render_step=fail_on_second(_drawn))
    elif stage == "encode":
        monkeypatch.setattr(dubbing.writer.Outputs, "write", fail_on_second(dubbing.writer.Outputs.write))
    else:
        name = {"prepare": "render_inputs", "paste": "paste_face"}[stage]
        monkeypatch.setattr(dubbing.pipeline, name, fail_on_second(getattr(dubbing.pipeline, name)))
    with pytest.raises(InputError, match=f"{stage} failed"):
        dubbing.dub(template, audio, tmp_path / "out.mp4", models, _config(), progress=False)
    _no_output_left(tmp_path)


def test_ctrl_c_during_a_dub_leaves_no_output_and_no_thread(media, models, tmp_path):
    template, audio = media

    def interrupted(*args):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dubbing.dub(template, audio, tmp_path / "out.mp4", replace(models, render_step=interrupted), _config(),
                    progress=False)
    _no_output_left(tmp_path)


def test_run_overlapped_keeps_order_and_overlaps_the_stages():
    events = []

    def source():
        for i in range(6):
            events.append(("drawn", i))
            yield i

    def sink(item):
        if item == 0:
            time.sleep(0.3)  # a slow first encode: the other stages must not wait for it
        events.append(("written", item))

    dubbing.overlap.run_overlapped(source(), lambda i: i * 10, sink)
    assert [item for kind, item in events if kind == "written"] == [0, 10, 20, 30, 40, 50]
    # While the first item was being written, the source went on drawing (up to what the queues hold).
    assert events.index(("drawn", 3)) < events.index(("written", 0))


def test_run_overlapped_raises_the_first_error_and_ends_every_thread():
    def source():
        yield from range(100)

    def middle(i):
        if i == 3:
            raise ValueError("third")
        return i

    with pytest.raises(ValueError, match="third"):
        dubbing.overlap.run_overlapped(source(), middle, lambda item: None)
    assert not _dub_threads()


# ---------------------------------------------------------------- fixed shapes and chunking
def test_padded_network_calls_give_the_unpadded_rows(media, models, tmp_path):
    """On CUDA every call is padded to a multiple of the batch size; the real rows' results are unchanged."""
    template, audio = media
    config = _config()
    prepared = dubbing.prepare_template(template, models, config, progress=False)
    state = dubbing.pipeline.new_dub(prepared, *dubbing.pipeline.read_driving(audio, config), tmp_path / "x.mp4",
                                     models, config)
    batch = next(dubbing.pipeline.frame_batches(state, prepared.frame_spool(tmp_path)))
    inputs = dubbing.pipeline.landmark_inputs(state.template, state.mel, state.grid, state.count,
                                              batch.steps[batch.live])
    tokens = prepared.encoded.tokens
    plain = dubbing.network.predict_content(models, tokens, inputs, False)
    padded = dubbing.network.predict_content(models, tokens, inputs, False, rows=8)
    assert plain.shape == padded.shape
    np.testing.assert_allclose(plain, padded, atol=1e-5)
    shapes = []

    def recorded(renderer, refs, faces, sketches, mels):
        shapes.append((len(faces), len(sketches), len(mels)))
        return _drawn(renderer, refs, faces, sketches, mels)

    _, render = dubbing.pipeline.prepare_batch(state, batch)
    stand_in = replace(models, render_step=recorded)
    one = dubbing.network.render(stand_in, prepared.encoded.refs, render, False).ready()
    fixed = dubbing.network.render(stand_in, prepared.encoded.refs, render, False, rows=8).ready()
    assert shapes == [(4, 4, 4), (8, 8, 8)]  # the network saw 8 rows; the 4 real ones come back
    assert one.shape == fixed.shape == (4, 128, 128, 3) and np.array_equal(one, fixed)
    prepared.close()


def test_padding_repeats_the_last_row():
    rows = torch.arange(6.0).view(3, 2)
    out = dubbing.network.padded(rows, 5)
    assert out.shape == (5, 2) and torch.equal(out[3], rows[2]) and torch.equal(out[:3], rows)
    assert dubbing.network.fixed_rows(5, 4) == 8 and dubbing.network.fixed_rows(0, 4) == 4


# ---------------------------------------------------------------- a full disk
class _FullDisk:
    """A file whose writes fail as on a full volume (the file itself is created, as a real write would)."""

    def __init__(self, path, mode="r", *args, **kwargs):
        self._file = open(path, mode, *args, **kwargs)

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def _full_writer(monkeypatch) -> None:
    def write(self, frame):
        raise av.error.OSError(errno.ENOSPC, "No space left on device", str(self._temp))

    monkeypatch.setattr(dubbing.writer.VideoWriter, "write", write)


def test_a_dub_on_a_full_disk_is_one_line_and_exit_74(media, models, random_checkpoints, tmp_path, monkeypatch,
                                                       capsys):
    template, audio = media
    monkeypatch.setattr(dubbing, "load_models", lambda *args, **kwargs: models)
    _full_writer(monkeypatch)
    out = tmp_path / "out"
    code = inference.main(["--video", str(template), "--audio", str(audio), "--output", str(out / "a.mp4"),
                           "--landmark-ckpt", str(random_checkpoints[0]), "--renderer-ckpt",
                           str(random_checkpoints[1]), "--quiet", "refs=1", "batch_size=4"])
    err = capsys.readouterr().err
    assert code == DISK_STATUS == 74
    assert err.strip().splitlines() == [f"error: {out / 'a.mp4'}: no space left on device (video not written)"]
    assert not list(out.iterdir()) and not _dub_threads()  # no partial video, and the spool was an unnamed file


def test_a_task_list_stops_at_the_first_full_disk_failure(media, models, random_checkpoints, tmp_path,
                                                          monkeypatch, capsys):
    template, audio = media
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("".join(f"- {{video: {template}, audio: {audio}, output: out/{name}.mp4}}\n"
                             for name in ("a", "b", "c")))
    calls = {"n": 0}
    original = dubbing.pipeline.new_dub

    def counted(*args):
        calls["n"] += 1
        return original(*args)

    monkeypatch.setattr(dubbing.pipeline, "new_dub", counted)
    monkeypatch.setattr(dubbing, "load_models", lambda *args, **kwargs: models)
    _full_writer(monkeypatch)
    code = inference.main(["--tasks", str(tasks), "--quiet", "refs=1", "batch_size=4"])
    err = capsys.readouterr().err
    assert code == 74 and calls["n"] == 1  # the second and third dubs were not started
    assert err.strip().splitlines() == [f"error: {tmp_path / 'out' / 'a.mp4'}: no space left on device (video not "
                                        f"written); stopped after 0 of 3 dubs (rerun the rest once there is space)"]
    assert not list((tmp_path / "out").glob("*"))


def test_a_template_cache_on_a_full_disk_warns_once_and_the_dub_goes_on(media, models, tmp_path, monkeypatch,
                                                                        capsys):
    template, audio = media
    monkeypatch.setattr(dubbing.cache, "open", _FullDisk, raising=False)
    config = _config(audio_seconds=0.2)
    config["cache"] = {"enabled": True, "dir": str(tmp_path / "cache")}
    result = dubbing.dub(template, audio, tmp_path / "out.mp4", models, config, progress=False)
    err = capsys.readouterr().err
    assert result.frames == 5 and (tmp_path / "out.mp4").is_file()
    warnings = [line for line in err.splitlines() if "cache" in line or "Traceback" in line or "ignored" in line]
    assert warnings == [f"warning: {tmp_path / 'cache'}: no space left on device (template not cached; the dub goes "
                        "on)"]
    assert not list((tmp_path / "cache").iterdir())  # the temporary entry was removed


# ---------------------------------------------------------------- the encoder
def test_encoder_choice_falls_back_to_x264_in_one_line(monkeypatch, capsys):
    assert dubbing.writer.choose_encoder("auto", torch.device("cpu")) == "libx264"
    assert dubbing.writer.choose_encoder("libx264", torch.device("cuda")) == "libx264"
    monkeypatch.setattr(dubbing.writer, "_nvenc_problem", lambda: "no NVENC device")
    dubbing.writer._say_once.cache_clear()
    for _ in range(2):
        assert dubbing.writer.choose_encoder("auto", torch.device("cuda")) == "libx264"
    assert capsys.readouterr().err.splitlines() == [
        "output.encoder auto: NVENC does not open here (no NVENC device); encoding with libx264 on the CPU"]
    with pytest.raises(InputError, match="NVENC does not open here"):
        dubbing.writer.choose_encoder("h264_nvenc", torch.device("cuda"))
    monkeypatch.setattr(dubbing.writer, "_nvenc_problem", lambda: None)
    assert dubbing.writer.choose_encoder("auto", torch.device("cuda")) == "h264_nvenc"
    with pytest.raises(InputError, match="takes one of auto, libx264, h264_nvenc"):
        dubbing.writer.choose_encoder("hevc", torch.device("cpu"))
    # Quality maps to each encoder's own setting.
    assert ENCODER_OPTIONS["libx264"](18)["crf"] == "18" and ENCODER_OPTIONS["h264_nvenc"](18)["cq"] == "18"


def test_shards_spread_over_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [inference.device_for_shard("cuda", (i, 8)) for i in range(8)] == [f"cuda:{i % 4}" for i in range(8)]
    assert inference.device_for_shard("cuda:2", (1, 8)) == "cuda:2"  # a named GPU is kept
    assert inference.device_for_shard("cpu", (1, 8)) == "cpu" and inference.device_for_shard("cuda", (0, 1)) == "cuda"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert inference.device_for_shard("auto", (3, 4)) == "auto"


def _recorded(step, calls: list):
    """`step`, noting the rows of every call's inputs (faces, sketches, mels) in `calls`."""
    def recording(renderer, refs, faces, sketches, mels):
        calls.append((len(faces), len(sketches), len(mels)))
        return step(renderer, refs, faces, sketches, mels)
    return recording


def test_compile_true_renders_every_batch_through_one_compiled_step_of_fixed_shapes(monkeypatch, media, models,
                                                                                   tmp_path):
    """compile: true as on CUDA (rows padded to the batch size): one compiled step serves every batch of every dub,
    each call with the same rows (what dynamic=False and CUDA graphs need), and the frames are those of
    compile: false."""
    plain_calls, compiled_calls = [], []
    monkeypatch.setattr(torch, "compile", lambda step, **options: _recorded(step, compiled_calls))
    monkeypatch.setattr(dubbing.pipeline.Dub, "rows", property(lambda dub: dub.batch_size))  # CUDA's padding
    dubbing.network._compiled_step.cache_clear()
    template, audio = media
    try:
        dubbing.dub(template, audio, tmp_path / "plain.mp4", models, _config(compile=False), progress=False)
        monkeypatch.setattr(dubbing.pipeline.Dub, "rows", property(lambda dub: 0))
        dubbing.dub(template, audio, tmp_path / "unpadded.mp4", replace(models, render_step=_recorded(_drawn,
                    plain_calls)), _config(compile=False), progress=False)
        monkeypatch.setattr(dubbing.pipeline.Dub, "rows", property(lambda dub: dub.batch_size))
        for name in ("a", "b"):
            dubbing.dub(template, audio, tmp_path / f"{name}.mp4", models, _config(compile=True), progress=False)
    finally:
        dubbing.network._compiled_step.cache_clear()
    assert min(rows for rows, _, _ in plain_calls) < 4  # a short batch, which the compiled step must see padded
    assert len(compiled_calls) == 2 * len(plain_calls)  # every batch of both dubs, through the one compiled step
    assert set(compiled_calls) == {(4, 4, 4)}
    for name in ("unpadded", "a", "b"):
        assert all(np.array_equal(x, y) for x, y in zip(read_frames(tmp_path / "plain.mp4"),
                                                        read_frames(tmp_path / f"{name}.mp4"), strict=True))


class _Cancelled(Exception):
    pass


def test_the_report_hook_hears_every_facemesh_frame_and_every_batch_written(media, models, tmp_path):
    template, audio = media
    config = _config(cache={"enabled": True, "dir": str(tmp_path / "cache")})
    heard = []
    result = dubbing.dub(template, audio, tmp_path / "out.mp4", models, config, progress=False,
                         report=lambda *event: heard.append(event))
    analysis = [event for event in heard if event[0] == dubbing.progress.ANALYSIS]
    assert analysis == [(dubbing.progress.ANALYSIS, n, 10) for n in range(1, 11)]  # 10 template frames
    written = [event for event in heard if event[0] == dubbing.progress.FRAMES]
    assert written == [(dubbing.progress.FRAMES, n, 15) for n in (4, 8, 12, 15)]  # batches of 4, 15 frames
    assert heard.index(analysis[-1]) < heard.index(written[0]) and result.frames == 15
    # The same template again: the cache answers, so FaceMesh reads nothing and the hook hears no analysis.
    heard.clear()
    dubbing.dub(template, audio, tmp_path / "again.mp4", models, config, progress=False,
                report=lambda *event: heard.append(event))
    assert [event[0] for event in heard] == [dubbing.progress.FRAMES] * 4


@pytest.mark.parametrize("pipeline", [True, False])
def test_a_report_hook_that_raises_cancels_the_dub_and_leaves_nothing(media, models, tmp_path, pipeline):
    template, audio = media
    config = _config(pipeline=pipeline, cache={"enabled": True, "dir": str(tmp_path / "cache")})

    def cancel_at(stage, after):
        def report(name, done, total):
            if name == stage and done >= after:
                raise _Cancelled
        return report

    # Mid-way through FaceMesh: no cache entry is written.
    with pytest.raises(_Cancelled):
        dubbing.dub(template, audio, tmp_path / "out.mp4", models, config, progress=False,
                    report=cancel_at(dubbing.progress.ANALYSIS, 3))
    assert not list((tmp_path / "cache").glob("*"))
    _no_output_left(tmp_path)
    # Mid-way through the frames: the output (and the sketch video) are removed, no stage thread is left.
    with pytest.raises(_Cancelled):
        dubbing.dub(template, audio, tmp_path / "out.mp4", models, config, tmp_path / "sketch.mp4", progress=False,
                    report=cancel_at(dubbing.progress.FRAMES, 8))
    _no_output_left(tmp_path)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1  # the finished FaceMesh pass was kept


def test_stage_progress_reports_each_advance_and_outgrows_a_short_estimate():
    heard = []
    with dubbing.progress.StageProgress("stage", 3, show=False, report=lambda *event: heard.append(event)) as steps:
        for n in (1, 2, 1):
            steps.advance(n)
    assert heard == [("stage", 1, 3), ("stage", 3, 3), ("stage", 4, 4)]


def test_summary_says_frames_rate_and_speed():
    result = dubbing.DubResult(Path("out.mp4"), frames=30, rendered=28, seconds=2.0)
    assert dubbing.summary(result, 29.97) == "30 frames at 29.97 fps (28 with a face) in 2.0 s, 15.00 frames/s"
    assert dubbing.summary(result, 25, seconds=3.0).endswith("in 3.0 s, 10.00 frames/s")
