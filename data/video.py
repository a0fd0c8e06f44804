"""Video input through PyAV: decode any container, resample to 25 fps by presentation time; stills as one frame."""
from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from data.errors import InputError, one_line

FPS = 25  # the frame rate of everything this project reads, trains on and writes (the paper's)
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def is_image(path: str | Path) -> bool:
    """True for a still image path (read as a one-frame video)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """RGB (H, W, 3) uint8, turned as the container's display matrix says (phone videos)."""
    image = frame.to_ndarray(format="rgb24")
    turns = int(round(getattr(frame, "rotation", 0) / 90)) % 4  # degrees counter-clockwise
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


class VideoReader:
    """Frames of a video at `fps` (default FPS) as RGB uint8 arrays, streamed; a still image gives one frame.

    Output frame k shows the last source frame whose presentation time is before (k + 0.5) / fps, which is
    what ffmpeg's fps filter does; the output has round(duration * fps) frames. Attributes: source_fps,
    variable_rate (the container's mean rate and its base rate disagree: frames are not evenly spaced), size
    (width, height after rotation), has_audio. At fps=source_fps a constant-rate video gives each of its frames
    once.
    """

    def __init__(self, path: str | Path, fps: float = FPS):
        self.path, self.fps = Path(path), fps
        if not self.path.is_file():
            raise InputError(self.path, "no such file")
        self._container = None
        if is_image(self.path):
            self._still = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
            if self._still is None:
                raise InputError(self.path, "not a readable image")
            self._still = cv2.cvtColor(self._still, cv2.COLOR_BGR2RGB)
            self.source_fps, self.has_audio, self.variable_rate = float(fps), False, False
            self.size = (self._still.shape[1], self._still.shape[0])
            return
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, UnicodeDecodeError, OSError) as error:
            raise InputError(self.path, f"not a readable video ({one_line(error)})") from None
        if not self._container.streams.video:
            self.close()
            raise InputError(self.path, "no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        self.source_fps = float(rate) if rate else float(fps)
        base = self._stream.base_rate
        # A constant-rate stream's mean rate is its base rate; variable-rate files (phone recordings, screen
        # captures) have a mean below a fine base timing grid.
        self.variable_rate = bool(rate and base and abs(float(rate) - float(base)) > 0.01 * float(base))
        width, height = self._stream.codec_context.width, self._stream.codec_context.height
        self.size = (width, height)  # corrected on the first frame if the video is rotated
        self.has_audio = bool(self._container.streams.audio)

    @property
    def expected_frames(self) -> int | None:
        """How many frames iterating gives, from the container's duration (1 for a still image; None when the
        container does not say): for progress bars, not for sizing arrays."""
        if self._container is None:
            return 1
        if self._stream.duration is not None and self._stream.time_base is not None:
            seconds = float(self._stream.duration * self._stream.time_base)
        elif self._container.duration is not None:
            seconds = self._container.duration / av.time_base
        else:
            return None
        return max(1, int(round(seconds * self.fps)))

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._container is None:
            yield self._still
            return
        step = 1.0 / self.source_fps
        start = previous = None
        last_time, emitted = 0.0, 0
        try:
            for frame in self._container.decode(self._stream):
                if frame.pts is None:  # no timestamps: assume a constant rate
                    time = last_time + step if previous is not None else 0.0
                else:
                    start = float(frame.time) if start is None else start
                    time = float(frame.time) - start
                if previous is not None and time <= last_time:
                    time = last_time + 1e-6  # keep presentation times increasing
                image = _upright(frame)
                # Emit the held frame for every output instant whose window closes before this frame shows.
                while previous is not None and (emitted + 0.5) / self.fps <= time:
                    yield previous
                    emitted += 1
                previous, last_time = image, time
                self.size = (image.shape[1], image.shape[0])
        except av.FFmpegError as error:
            raise InputError(self.path, f"decoding failed after {emitted} frames ({one_line(error)})") from None
        if previous is None:
            raise InputError(self.path, "the video stream holds no decodable frame")
        total = max(int(round((last_time + step) * self.fps)), emitted + 1)
        while emitted < total:
            yield previous
            emitted += 1


def find_videos(root: str | Path) -> list[Path]:
    """Video files under `root` (any depth, sorted), by extension, case-insensitive; hidden files (such as a
    writer's partial output) are left out."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")
                  and p.is_file())


def read_frames(path: str | Path, fps: float = FPS) -> list[np.ndarray]:
    """All frames of a video (or one image) at `fps` as a list of RGB uint8 (H, W, 3) arrays."""
    with VideoReader(path, fps) as reader:
        return list(reader)


# Each encoder's options for a quality of `crf` (x264's constant rate factor; NVENC's constant quality, cq, is on
# a similar scale). x264's veryfast preset encodes 1280x720 at bench/README.md's rate; NVENC's p4 is its middle.
ENCODER_OPTIONS = {"libx264": lambda crf: {"crf": str(crf), "preset": "veryfast"},
                   "h264_nvenc": lambda crf: {"rc": "vbr", "cq": str(crf), "b": "0", "preset": "p4"}}


class VideoWriter:
    """Encode RGB frames to H.264 (CRF 18) at `fps` with `encoder` (libx264 or h264_nvenc), optionally muxing
    mono float audio as AAC, into `path`.

    Frames stream to the encoder and the audio is interleaved as they come, so memory stays bounded. The file
    is written under a temporary name and renamed into place by close(); abort() (or an exception inside a
    `with` block) removes it, so a failed run leaves no partial output.
    """

    def __init__(self, path: str | Path, fps: float = FPS, audio: np.ndarray | None = None,
                 sample_rate: int = 16000, crf: int = 18, encoder: str = "libx264"):
        self.path, self.encoder = Path(path), encoder
        self._temp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix or '.mp4'}")
        self.fps, self.crf = Fraction(fps).limit_denominator(1001), crf
        self._audio = None if audio is None else np.asarray(audio, np.float32).reshape(-1)
        self._rate, self._audio_done, self._frames = sample_rate, 0, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._temp), "w", format="mp4" if self.path.suffix.lower() != ".mkv" else None)
        self._video = None
        self._sound = None
        if self._audio is not None:
            self._sound = self._container.add_stream("aac", rate=sample_rate)
            self._sound.layout = "mono"

    def _open_video(self, width: int, height: int) -> None:
        self._video = self._container.add_stream(self.encoder, rate=self.fps)
        self._video.width, self._video.height = width, height
        # 4:2:0 needs even sizes; odd-sized frames keep their size in 4:4:4.
        self._video.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._video.options = ENCODER_OPTIONS[self.encoder](self.crf)

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 (H, W, 3) frame; all frames must share the first one's size."""
        if self._video is None:
            self._open_video(frame.shape[1], frame.shape[0])
        # FFmpeg's own RGB-to-YUV conversion. OpenCV's takes a third of the time and is as close to the source, but
        # its 1-level differences change x264's decisions: 1.3 levels on average from today's files (bench/README.md).
        for packet in self._video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)
        self._frames += 1
        self._write_audio(int(round(self._frames / self.fps * self._rate)))

    def _write_audio(self, until: int) -> None:
        if self._sound is None or until <= self._audio_done:
            return
        chunk = self._audio[self._audio_done:until]
        if len(chunk):
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts = self._rate, self._audio_done
            for packet in self._sound.encode(frame):
                self._container.mux(packet)
        self._audio_done = until

    def close(self) -> Path:
        """Flush the encoders and move the finished file into place; returns its path."""
        if self._container is None:
            return self.path
        if self._video is None:
            self.abort()
            raise ValueError(f"{self.path}: no frame was written")
        self._write_audio(len(self._audio) if self._audio is not None else 0)
        for stream in (self._video, self._sound):
            if stream is not None:
                for packet in stream.encode(None):
                    self._container.mux(packet)
        self._container.close()
        self._container = None
        self._temp.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Stop and delete the partial file."""
        if self._container is not None:
            try:
                self._container.close()
            except av.FFmpegError:
                pass
            self._container = None
        self._temp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
