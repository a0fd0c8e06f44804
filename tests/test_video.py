import math
from fractions import Fraction

import cv2
import numpy as np
import pytest

from conftest import frame_index, numbered_frames, tone
from data.errors import InputError
from data.video import VideoReader, VideoWriter, read_frames


def _write(path, frames, fps, audio=None):
    with VideoWriter(path, fps=fps, audio=audio) as writer:
        for frame in frames:
            writer.write(frame)
    return path


@pytest.mark.parametrize("fps", [30.0, 22.13, 25.0, 50.0])
def test_resampling_to_25_fps_by_presentation_time(tmp_path, fps):
    count = 30
    path = _write(tmp_path / "v.mp4", numbered_frames(count), fps)
    with VideoReader(path) as reader:
        expected_frames = reader.expected_frames
        frames = list(reader)
        assert reader.source_fps == pytest.approx(fps, rel=1e-3)
        assert reader.size == (64, 48)
    assert abs(expected_frames - len(frames)) <= 1  # the estimate progress bars show
    duration = count / fps
    assert abs(len(frames) - duration * 25) <= 1
    # Output frame k shows the last source frame shown before (k + 0.5) / 25 s (ffmpeg's fps filter).
    rate = Fraction(str(fps))
    expected = [min(math.ceil((k + Fraction(1, 2)) * rate / 25) - 1, count - 1) for k in range(len(frames))]
    assert [frame_index(f) for f in frames] == expected


def test_real_30fps_template_gives_9_seconds_at_25fps(samples):
    with VideoReader(samples / "template_129.mp4") as reader:
        count = sum(1 for _ in reader)
        assert (reader.source_fps, reader.size, reader.has_audio) == (30.0, (256, 256), False)
        assert reader.expected_frames == 225
    assert count == 225
    with VideoReader(samples / "template_129.mp4", 30) as reader:
        assert reader.expected_frames == sum(1 for _ in reader) == 270


def test_still_image_is_a_one_frame_video(tmp_path):
    image = np.zeros((40, 30, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    cv2.imwrite(str(tmp_path / "face.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    frames = read_frames(tmp_path / "face.png")
    assert len(frames) == 1 and frames[0].shape == (40, 30, 3) and frames[0][0, 0, 0] == 200
    with VideoReader(tmp_path / "face.png") as reader:
        assert reader.expected_frames == 1


def test_bad_inputs_give_one_line_errors(tmp_path, samples):
    text = tmp_path / "text.mp4"
    text.write_text("hello")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((samples / "talk_b.mp4").read_bytes()[:200_000])
    for path, problem in [(tmp_path / "missing.mp4", "no such file"), (text, "not a readable video"),
                          (truncated, "not a readable video"), (tmp_path / "x.png", "no such file")]:
        with pytest.raises(InputError) as error:
            read_frames(path)
        assert problem in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(tone(0.5)[None, :], format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)
    with pytest.raises(InputError, match="no video stream"):
        VideoReader(path)


def test_writer_muxes_audio_and_leaves_nothing_on_failure(tmp_path):
    from data.audio import load_audio

    path = _write(tmp_path / "out.mp4", numbered_frames(25, (66, 50)), 25, audio=tone(1.0))
    with VideoReader(path) as reader:
        assert reader.has_audio and sum(1 for _ in reader) == 25
    assert abs(len(load_audio(path)) / 16000 - 1.0) < 0.08
    odd = _write(tmp_path / "odd.mp4", numbered_frames(5, (33, 21)), 25)  # odd sizes are kept
    assert read_frames(odd)[0].shape == (21, 33, 3)
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "failed.mp4") as writer:
        writer.write(numbered_frames(1)[0])
        raise RuntimeError("the pipeline broke")
    assert list(tmp_path.glob("failed*")) == [] and list(tmp_path.glob(".failed*")) == []

