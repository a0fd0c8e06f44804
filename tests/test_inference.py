"""inference.py end to end on the shared samples, with checkpoints the tests build (random weights: the output is
noise inside the face, which makes the pixels the pipeline must leave alone easy to check)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import dubbing
import dubbing.template
import inference
from conftest import REPO, numbered_frames
from data.audio import SAMPLE_RATE, frames_covered, load_audio
from data.video import VideoWriter, read_frames
from testing.audio import write_wav

FAST = ["refs=1", "batch_size=4"]  # one reference image keeps a frame near a second on CPU


@pytest.fixture(scope="session")
def speech(samples) -> np.ndarray:
    return load_audio(samples / "talk_b.mp4")


@pytest.fixture(scope="session")
def template(samples, tmp_path_factory) -> tuple[Path, list[np.ndarray], int]:
    """10 frames of talk_a at half size with the face of frame 5 painted out."""
    frames = [cv2.resize(f, (422, 422), interpolation=cv2.INTER_AREA) for f in read_frames(samples / "talk_a.mp4")[:10]]
    painted = 5
    frames[painted] = frames[painted].copy()
    frames[painted][60:380, 90:340] = (128, 128, 128)
    path = tmp_path_factory.mktemp("template") / "template.mp4"
    with VideoWriter(path) as writer:
        for frame in frames:
            writer.write(frame)
    return path, read_frames(path), painted


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = inference.main(args)
    return code, capsys.readouterr().err


@pytest.fixture(scope="session")
def looped(template, speech, random_checkpoints, tmp_path_factory):
    """Dub the 10-frame template with 0.6 s of speech: 15 output frames, so the template plays 0..9, 9..5."""
    folder = tmp_path_factory.mktemp("looped")
    audio = write_wav(folder / "speech.wav", speech[:int(0.6 * SAMPLE_RATE)])
    output = folder / "out.mp4"
    models = dubbing.load_models(*random_checkpoints, "cpu")
    config = dubbing.default_config()
    config.update(refs=1, batch_size=4)
    result = dubbing.dub(template[0], audio, output, models, config, sketch_output=folder / "sketch.mp4",
                         progress=False)
    return result, output, audio, folder


def test_output_format_length_and_audio(looped, template):
    result, output, audio, _ = looped
    expected = frames_covered(len(load_audio(audio)))
    assert result.frames == expected == 15
    with av.open(str(output)) as container:
        video = container.streams.video[0]
        assert float(video.average_rate) == 25
        assert (video.codec_context.width, video.codec_context.height) == (422, 422)
        assert container.streams.audio, "the driving audio is muxed"
        decoded_audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        audio_seconds = len(decoded_audio) / container.streams.audio[0].rate
    frames = read_frames(output)
    assert len(frames) == expected
    assert abs(audio_seconds - len(load_audio(audio)) / SAMPLE_RATE) <= 1 / 25
    assert abs(len(frames) / 25 - len(load_audio(audio)) / SAMPLE_RATE) <= 1 / 25


def test_pixels_away_from_the_face_are_the_template_and_the_face_is_generated(looped, template):
    _, output, _, _ = looped
    _, source, painted = template
    out = read_frames(output)
    order = dubbing.template.ping_pong(np.arange(len(out)), len(source))
    info = dubbing.template.analyse_template(template[0], smooth=dubbing.default_config()["smooth_boxes"],
                                            progress=False)
    pad = dubbing.default_config()["mask"]["kernel"] // 2 + 1
    for t, frame in enumerate(out):
        s = order[t]
        far = np.ones(frame.shape[:2], bool)
        x0, y0, x1, y1 = info.boxes[s]
        far[max(y0 - pad, 0):y1 + pad, max(x0 - pad, 0):x1 + pad] = False
        difference = np.abs(frame.astype(int) - source[s].astype(int))
        assert difference[far].mean() < 2.0, f"output frame {t} changed outside the face"
        inner = difference[y0 + (y1 - y0) // 3:y1 - (y1 - y0) // 4, x0 + (x1 - x0) // 4:x1 - (x1 - x0) // 4]
        if s == painted:
            assert inner.mean() < 2.0, "a frame without a face comes through unchanged"
        else:
            assert inner.mean() > 10.0, f"output frame {t}: no generated face pasted"


def test_face_less_frame_is_counted_and_sketch_video_written(looped, template):
    result, _, _, folder = looped
    order = dubbing.template.ping_pong(np.arange(result.frames), len(template[1]))
    assert result.rendered == int(np.sum(order != template[2])) == 13
    sketch = read_frames(folder / "sketch.mp4")
    assert len(sketch) == result.frames and sketch[0].shape == (422, 844, 3)
    assert sketch[0][:, :422].max() > 150  # the sketch half has lines


def test_still_image_template(samples, speech, random_checkpoints, tmp_path, capsys):
    image = tmp_path / "face.png"
    frame = read_frames(samples / "talk_a.mp4")[0]
    cv2.imwrite(str(image), cv2.cvtColor(cv2.resize(frame, (301, 301)), cv2.COLOR_RGB2BGR))  # odd size too
    audio = write_wav(tmp_path / "speech.wav", speech[:int(0.3 * SAMPLE_RATE)], rate=44100 // 3, channels=2)
    output = tmp_path / "still.mp4"
    landmark, renderer = random_checkpoints
    code, err = run_cli(["--video", str(image), "--audio", str(audio), "--output", str(output), "--landmark-ckpt",
                         str(landmark), "--renderer-ckpt", str(renderer), "--quiet", "--save-sketch", *FAST], capsys)
    assert code == 0, err
    frames = read_frames(output)
    assert len(frames) == frames_covered(len(load_audio(audio))) and frames[0].shape == (301, 301, 3)
    assert read_frames(tmp_path / "still_sketch.mp4")[0].shape == (301, 602, 3)  # the flag takes no value
    assert not (REPO / FAST[0]).exists()


def _faceless_video(path: Path) -> Path:
    with VideoWriter(path) as writer:
        for frame in numbered_frames(30, (96, 64)):
            writer.write(frame)
    return path


@pytest.mark.parametrize("case", ["text_as_mp4", "truncated", "faceless", "missing_video", "short_audio",
                                  "no_audio_stream", "missing_checkpoint", "bad_output_suffix", "bad_override"])
def test_bad_input_gives_one_line_and_no_output(case, samples, speech, random_checkpoints, tmp_path, capsys):
    video, audio = samples / "talk_a.mp4", write_wav(tmp_path / "speech.wav", speech[:8000])
    landmark, renderer = random_checkpoints
    output, extra = tmp_path / "out" / "result.mp4", []
    expect = ""
    if case == "text_as_mp4":
        video = tmp_path / "notes.mp4"
        video.write_text("not a video\n")
        expect = "not a readable video"
    elif case == "truncated":
        video = tmp_path / "cut.mp4"
        video.write_bytes((samples / "talk_a.mp4").read_bytes()[:20000])  # its index (moov) is at the end
        expect = "not a readable video"
    elif case == "faceless":
        video = _faceless_video(tmp_path / "grey.mp4")
        expect = "no face found"
    elif case == "missing_video":
        video = tmp_path / "nothing.mp4"
        expect = "no such file"
    elif case == "short_audio":
        audio = write_wav(tmp_path / "blip.wav", speech[:1600])
        expect = "shorter than one"
    elif case == "no_audio_stream":
        audio = samples / "template_129.mp4"
        expect = "no audio stream"
    elif case == "missing_checkpoint":
        landmark = tmp_path / "absent.pth"
        expect = "checkpoint not found"
    elif case == "bad_output_suffix":
        output = tmp_path / "out" / "result.gif"
        expect = ".mp4"
    elif case == "bad_override":
        extra = ["refs=half"]
        expect = "refs"
    code, err = run_cli(["--video", str(video), "--audio", str(audio), "--output", str(output), "--landmark-ckpt",
                         str(landmark), "--renderer-ckpt", str(renderer), "--quiet", *FAST, *extra], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err
    assert not output.exists()
    assert not output.parent.exists() or list(output.parent.iterdir()) == []


def test_command_line_error_has_no_traceback(tmp_path):
    bogus = tmp_path / "bogus.mp4"
    bogus.write_text("hello")
    result = subprocess.run([sys.executable, str(REPO / "inference.py"), "--video", str(bogus), "--audio",
                             str(bogus), "--output", str(tmp_path / "o.mp4"), "--landmark-ckpt", "x", "--renderer-ckpt",
                             "y"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ")


def test_help_describes_the_inputs():
    result = subprocess.run([sys.executable, str(REPO / "inference.py"), "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0
    for flag in ("--video", "--audio", "--output", "--landmark-ckpt", "--renderer-ckpt", "--device", "--save-sketch"):
        assert flag in result.stdout


def test_help_and_a_short_dub_from_a_folder_outside_the_repository(template, speech, random_checkpoints, tmp_path):
    """The default config and the package files come from the script's location; user paths from the caller's."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    write_wav(work / "speech.wav", speech[:int(0.3 * SAMPLE_RATE)])
    script = str(REPO / "inference.py")
    result = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=work, timeout=120)
    assert result.returncode == 0 and "exit status" in result.stdout
    landmark, renderer = random_checkpoints
    result = subprocess.run([sys.executable, script, "--video", str(template[0]), "--audio", "speech.wav", "--output",
                             "out/dubbed.mp4", "--landmark-ckpt", str(landmark), "--renderer-ckpt", str(renderer),
                             "--quiet", *FAST], capture_output=True, text=True, cwd=work, timeout=600)
    assert result.returncode == 0, result.stderr
    frames = read_frames(work / "out" / "dubbed.mp4")
    assert len(frames) == frames_covered(len(load_audio(work / "speech.wav"))) and frames[0].shape == (422, 422, 3)


def test_overrides_are_taken_anywhere_among_the_flags():
    import evaluate

    args = inference.parse_args(["--video", "v.mp4", "--audio", "a.wav", "--output", "o.mp4", "refs=1",
                                 "--device", "cpu", "audio_seconds=0.2"])
    assert args.overrides == ["refs=1", "audio_seconds=0.2"] and args.device == "cpu"
    args = evaluate.parse_args(["--out", "o", "batch_size=8", "--device", "cpu", "download=false"])
    assert args.overrides == ["batch_size=8", "download=false"] and args.device == "cpu"
