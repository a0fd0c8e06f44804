"""Dubbing at the template's own frame rate (output.fps): every template frame once per pass at 24, 30 and 60 fps,
the 25 fps networks sampled at the output's times, the fallbacks to 25 fps, several audios and task lists.

What is checked here is which template frame, audio window and time each output frame gets, which does not depend
on what the renderer draws; so most dubs pass the face crop through instead of running the renderer (a few
seconds a frame on a busy CPU), which tests/test_inference.py and tests/test_many_dubs.py exercise."""
from __future__ import annotations

import itertools
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

import dubbing
import dubbing.pipeline
import dubbing.prepare
import dubbing.template
import inference
from data.audio import SAMPLE_RATE, frames_covered, load_audio, mel_windows, melspectrogram
from data.crop import box_size
from data.errors import InputError
from data.landmarks import merge_pose_content, pose_of
from data.video import VideoReader, VideoWriter, read_frames
from models.renderer import Renderer
from testing.audio import write_wav
from testing.reference_samples import sketch_tensor

FRAMES = 12  # template frames
PATCH = 16  # a corner patch whose brightness encodes the template frame's index: far from the face


def _patch_index(frame: np.ndarray) -> float:
    return (float(frame[:PATCH, :PATCH].mean()) - 10) / 20


@pytest.fixture(scope="module")
def faces(samples) -> list[np.ndarray]:
    with VideoReader(samples / "talk_a.mp4") as reader:
        frames = [cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in itertools.islice(reader, FRAMES)]
    for index, frame in enumerate(frames):
        frame[:PATCH, :PATCH] = 20 * index + 10
    return frames


def _template(folder: Path, frames: list[np.ndarray], fps: float) -> Path:
    path = folder / f"template_{fps:g}.mp4"
    if not path.exists():
        with VideoWriter(path, fps) as writer:
            for frame in frames:
                writer.write(frame)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rates")


@pytest.fixture(scope="module")
def speech(samples, folder) -> dict[float, Path]:
    """Audios cut from talk_b, by length in seconds."""
    wav = load_audio(samples / "talk_b.mp4")
    return {seconds: write_wav(folder / f"speech_{seconds:g}.wav", wav[:int(seconds * SAMPLE_RATE)])
            for seconds in (0.2, 0.25, 0.5)}


@pytest.fixture(scope="module")
def models(random_checkpoints) -> dubbing.Models:
    return dubbing.load_models(*random_checkpoints, "cpu")


def _config(**changes) -> dict:
    config = dubbing.default_config()
    config.update(refs=1, batch_size=4, **changes)
    config["cache"]["enabled"] = False
    return config


class _Recorder:
    """A render step that keeps the mel windows it was given (the renderer's audio input) and passes the template
    face through."""

    def __init__(self):
        self.mels: list[np.ndarray] = []
        self.sketches: list[torch.Tensor] = []

    def __call__(self, renderer, refs, faces, sketches, mels):
        self.mels.append(mels[:, 0].float().numpy())
        self.sketches.append(sketches.clone())
        return faces


def _rate(path: Path) -> Fraction:
    with av.open(str(path)) as container:
        return container.streams.video[0].average_rate


def _check_frames(output: Path, template_file: Path, fps: float) -> np.ndarray:
    """Decode the output at its own rate; every frame's corner patch is its template frame's (ping-pong order)."""
    out, template = read_frames(output, fps), read_frames(template_file, fps)
    order = dubbing.template.ping_pong(np.arange(len(out)), len(template))
    for k, frame in enumerate(out):
        own = template[order[k]]
        assert abs(_patch_index(frame) - order[k]) < 0.2, f"output frame {k} shows the wrong template frame"
        # Away from the face (the top rows), the template frame of the same index within encoding noise, and
        # further from its neighbours (which differ from it in the patch).
        band = (slice(0, PATCH), slice(0, 256))
        difference = np.abs(frame[band].astype(int) - own[band]).mean()
        assert difference < 2.0, f"output frame {k}: changed outside the face"
        for neighbour in (order[k] - 1, order[k] + 1):
            if 0 <= neighbour < len(template):
                assert np.abs(frame[band].astype(int) - template[neighbour][band]).mean() > difference
    return order


def test_a_30_fps_template_gives_30_fps_every_frame_once_and_ping_pongs(faces, folder, speech, models, tmp_path):
    template = _template(folder, faces, 30)
    recorder = _Recorder()
    output = tmp_path / "out.mp4"
    result = dubbing.dub(template, speech[0.5], output, replace(models, render_step=recorder), _config(),
                         progress=False)
    samples = len(load_audio(speech[0.5]))
    assert result.frames == frames_covered(samples, fps=30) == 15  # the template plays 0..11, then 11, 10, 9
    assert _rate(output) == 30
    order = _check_frames(output, template, 30)
    np.testing.assert_array_equal(order, [*range(12), 11, 10, 9])
    # The renderer's audio window of frame k is today's rule at the fractional 25 fps index 25k/30.
    mel = melspectrogram(load_audio(speech[0.5]))
    np.testing.assert_array_equal(np.concatenate(recorder.mels), mel_windows(mel, np.arange(15) * 25 / 30))
    with av.open(str(output)) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        seconds = len(audio) / container.streams.audio[0].rate
    assert abs(seconds - samples / SAMPLE_RATE) <= 1 / 30 and abs(result.frames / 30 - seconds) <= 1 / 30


def test_60_and_24_fps_templates_keep_their_rate(faces, folder, speech, models, tmp_path):
    for fps, seconds in ((60, 0.2), (24, 0.25)):
        output = tmp_path / f"out_{fps}.mp4"
        template = _template(folder, faces, fps)
        result = dubbing.dub(template, speech[seconds], output, replace(models, render_step=_Recorder()), _config(),
                             progress=False)
        assert result.frames == frames_covered(len(load_audio(speech[seconds])), fps=fps) == int(seconds * fps)
        assert _rate(output) == fps
        _check_frames(output, template, fps)


def _todays_sketches(prepared: dubbing.Prepared, models: dubbing.Models, mel: np.ndarray, count: int,
                     batch: int) -> list[torch.Tensor]:
    """The renderer's target sketches by the 25 fps rule, written out on its own: for output frame t, one landmark
    generator window of frames t-2..t+2 (clamped to the output), posed as template frames ping_pong(t-2..t+2)."""
    template, order = prepared.template, dubbing.template.ping_pong(np.arange(count), len(prepared.template))
    sketches = []
    for start in range(0, count, batch):
        steps = np.arange(start, min(start + batch, count))
        windows = np.clip(steps[:, None] + np.arange(5) - 2, 0, count - 1)
        frames, position = np.unique(windows, return_inverse=True)
        pose = pose_of(template.landmarks[order[frames]])
        with torch.inference_mode():
            audio, posed = models.landmark.encode_frames(torch.from_numpy(mel_windows(mel, frames)[:, None]),
                                                         torch.from_numpy(pose))
            gather = torch.from_numpy(position.reshape(windows.shape))
            content = models.landmark.fuse(prepared.encoded.tokens, audio[gather], posed[gather]).numpy()
        predicted = merge_pose_content(pose[position.reshape(windows.shape)], content)
        boxes = template.boxes[order[windows]]
        sketches.append(torch.from_numpy(np.stack([[sketch_tensor(predicted[i, j], box_size(boxes[i, j]))
                                                    for j in range(5)] for i in range(len(steps))])))
    return sketches


def test_a_25_fps_template_keeps_todays_sampling(faces, folder, speech, models, tmp_path):
    """At 25 fps every sampling position is whole: output frame k takes template frame k, mel window k and the
    sketches of today's rule, exactly (the byte-for-byte equality of the whole output with the pipeline before
    output.fps, renderer included, was measured when it came in: bench/README.md)."""
    recorder = _Recorder()
    template = _template(folder, faces, 25)
    config = _config()
    prepared = dubbing.prepare_template(template, models, config, progress=False)
    result = dubbing.dub_prepared(prepared, speech[0.5], tmp_path / "out.mp4", replace(models, render_step=recorder),
                                  config, progress=False)
    assert result.frames == 12 and _rate(tmp_path / "out.mp4") == 25
    mel = melspectrogram(load_audio(speech[0.5]))
    np.testing.assert_array_equal(np.concatenate(recorder.mels), mel_windows(mel, np.arange(12)))
    expected = _todays_sketches(prepared, models, mel, 12, config["batch_size"])
    assert len(expected) == len(recorder.sketches)
    assert all(torch.equal(got, want) for got, want in zip(recorder.sketches, expected))
    _check_frames(tmp_path / "out.mp4", template, 25)


def test_output_frames_on_the_25_fps_grid():
    # 7 frames at 30 fps, 5 at 25
    position, below, above, weight = dubbing.prepare.grid_neighbours(np.arange(7), 30.0, 5)
    np.testing.assert_allclose(position, np.arange(7) * 25 / 30)
    np.testing.assert_array_equal(below, [0, 0, 1, 2, 3, 4, 4])
    np.testing.assert_array_equal(above, [1, 1, 2, 3, 4, 4, 4])
    np.testing.assert_allclose(weight, [0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 0, 0])  # past the last window: the last
    position, below, above, weight = dubbing.prepare.grid_neighbours(np.arange(6), 25.0, 6)
    np.testing.assert_array_equal(position, np.arange(6))
    np.testing.assert_array_equal(below, np.arange(6))
    assert not weight.any()
    times = dubbing.prepare.sketch_times(np.array([0, 4]), 30.0, 6)
    np.testing.assert_allclose(times, [[0, 0, 0, 1.2, 2.4], [1.6, 2.8, 4, 5, 5]])  # 1/25 s is 1.2 frames at 30
    np.testing.assert_array_equal(dubbing.prepare.sketch_times(np.array([3]), 25.0, 10), [[1, 2, 3, 4, 5]])


def test_template_at_interpolates_within_the_ping_pong_order():
    landmarks = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 131, 2), np.float32)
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [2, 2, 12, 12]], np.int32)
    template = dubbing.template.Template(Path("t.mp4"), (64, 64), landmarks, boxes, np.ones(3, bool), np.zeros(3), 30.0)
    at, box = dubbing.template.template_at(template, np.array([0.0, 1.0, 1.25, 2.5, 3.0, 4.75]))
    # Positions 0..5 show frames 0 1 2 2 1 0: a half step at the turn (2 -> 2) stays on frame 2.
    np.testing.assert_allclose(at[:, 0, 0], [0.0, 1.0, 1.25, 2.0, 2.0, 1.0 - 0.75])
    np.testing.assert_array_equal(box[:, 0], [0, 1, 1, 2, 2, 0])
    assert at.dtype == np.float32


def test_rate_rule_and_its_fallbacks(faces, folder, tmp_path):
    assert dubbing.template.dubbing_rate(_template(folder, faces, 30), "template") == (30.0, None)
    assert dubbing.template.dubbing_rate(_template(folder, faces, 30), 25) == (25.0, None)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), faces[0])
    fast = tmp_path / "fast.mp4"
    with VideoWriter(fast, 120) as writer:
        for frame in faces[:3]:
            writer.write(frame)
    uneven = tmp_path / "uneven.mp4"  # frames 50 ms and 20 ms apart in turn
    with av.open(str(uneven), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        time = 0
        for index, frame in enumerate(faces[:8]):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = time, Fraction(1, 1000)
            time += 50 if index % 2 == 0 else 20
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    for path, why in ((image, "a still image"), (fast, "120 fps is above 60"), (uneven, "variable frame rate")):
        rate, note = dubbing.template.dubbing_rate(path, "template")
        assert rate == 25 and note == f"{path}: {why}: dubbed at 25 fps"
    for bad in (75, "fast", 0):
        config = _config()
        config["output"]["fps"] = bad
        with pytest.raises(InputError, match="output.fps takes 'template' or a rate from 1 to 60"):
            dubbing.pipeline.check_config(config)


def test_several_audios_and_task_lists_at_the_template_rate_with_the_cache_keyed_on_rate(
        faces, folder, speech, random_checkpoints, tmp_path, capsys, monkeypatch, facemesh_calls):
    calls = facemesh_calls
    monkeypatch.setattr(Renderer, "render", lambda self, faces, sketches, refs, mels: (faces,))  # see the top
    template = _template(folder, faces, 30)
    common = ["--landmark-ckpt", str(random_checkpoints[0]), "--renderer-ckpt", str(random_checkpoints[1]),
              "--quiet", "--cache-dir", str(tmp_path / "cache"), "refs=1", "batch_size=4"]
    code = inference.main(["--video", str(template), "--audio", str(speech[0.2]), "--audio", str(speech[0.25]),
                           "--output", str(tmp_path / "many"), *common])
    assert code == 0, capsys.readouterr().err
    assert calls["n"] == FRAMES  # one FaceMesh pass over the 12 frames at 30 fps
    for audio in (speech[0.2], speech[0.25]):
        output = tmp_path / "many" / f"{audio.stem}.mp4"
        assert _rate(output) == 30
        assert len(read_frames(output, 30)) == frames_covered(len(load_audio(audio)), fps=30)
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(f"- {{video: {template}, audio: {speech[0.2]}, output: out/at25.mp4}}\n")
    code = inference.main(["--tasks", str(tasks), "--fps", "25", *common])
    assert code == 0, capsys.readouterr().err
    assert calls["n"] == FRAMES + 10  # another rate is another cache entry: 12 frames at 30 fps are 10 at 25
    assert _rate(tmp_path / "out" / "at25.mp4") == 25 and len(read_frames(tmp_path / "out" / "at25.mp4")) == 5
    assert "at 25 fps" in capsys.readouterr().out
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), faces[0])
    code = inference.main(["--video", str(image), "--audio", str(speech[0.2]), "--output", str(tmp_path / "still.mp4"),
                           *common])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.splitlines() == [f"{image}: a still image: dubbed at 25 fps"]  # the fallback, in one line
    assert _rate(tmp_path / "still.mp4") == 25
