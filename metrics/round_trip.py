"""syncnet_python's lossy round trips, reproduced in memory with PyAV, so that LSE-C/LSE-D see the pixels the
published numbers saw (joonson/syncnet_python: run_pipeline.py, then SyncNetInstance.evaluate; Wav2Lip's and
IP_LAP's SyncScore come from it).

syncnet_python never scores frames from memory. Each frame passes two round trips:
1. run_pipeline converts the video with `ffmpeg -qscale:v 2 -async 1 -r 25 video.avi` (ffmpeg's default AVI video
   encoder: MPEG-4 Part 2 at a fixed quantiser of 2, a key frame every 12, no B-frames) and extracts its frames with
   `ffmpeg -qscale:v 2 -f image2 %06d.jpg` (ffmpeg's JPEG encoder at quantiser 2); the face is detected on, and
   cut from, those JPEG frames read with cv2.imread.
2. crop_video writes the 224x224 BGR crops with `cv2.VideoWriter(fourcc 'XVID', 25 fps)`: OpenCV's FFmpeg backend
   encodes them with the same MPEG-4 Part 2 encoder (tag XVID) under rate control at 2 * fps * width * height
   bit/s (2,508,800 at 224x224, 25 fps: OpenCV's fps*w*h raised by half twice), bit-rate tolerance the same,
   quantiser at least 3, a key frame every 12, BGR converted to yuv420p by swscale (bicubic). The audio is muxed in
   by stream copy, which leaves the video bits alone. SyncNetInstance.evaluate then extracts the frames with
   `ffmpeg -y -i crop.avi -threads 1 -f image2 %06d.jpg`: no -qscale:v, so the JPEG encoder runs at ffmpeg's
   defaults, rate control towards 200 kbit/s at the stream's 25 fps (8,000 bits a frame) with the quantiser free in
   2..31, on full-range yuvj420p pictures; cv2.imread (libjpeg) reads them back, and those pixels are scored.
ffmpeg's JPEG encoder has no quality percentage: frame quantiser q scales the MPEG-1 intra matrix,
DQT[i] = (matrix[i] * q) >> 3 with DC fixed at 8, so no libjpeg quality (cv2.IMWRITE_JPEG_QUALITY) gives the same
tables; PyAV's `mjpeg` (libavcodec, the same encoder) does.
"""
from __future__ import annotations

import io
from collections.abc import Iterable
from fractions import Fraction

import av
import cv2
import numpy as np

from data.video import FPS

KEY_FRAME_EVERY = 12  # OpenCV's writer and ffmpeg's AVI default alike
FRAME_QUANTISER = 2  # run_pipeline's -qscale:v 2, for the converted video and its JPEG frames
CROP_MIN_QUANTISER = 3  # OpenCV's writer: qmin 3


def _fix_quantiser(context: av.CodecContext, quantiser: int) -> None:
    """Every frame at `quantiser`, as ffmpeg's -qscale:v. The ffmpeg CLI passes it as each frame's quality, which
    PyAV cannot set; bounding the rate control to [q, q] gives the same quantiser and the same lambda (q * 118)."""
    context.qmin = context.qmax = quantiser


def opencv_xvid_bit_rate(width: int, height: int, fps: float = FPS) -> int:
    """The bit rate (bit/s) OpenCV's VideoWriter asks of the MPEG-4 encoder: fps * w * h, raised by half twice."""
    return int(2 * fps * width * height)


def mpeg4_round_trip(frames_bgr: Iterable[np.ndarray], quantiser: int | None = None, fps: float = FPS
                     ) -> list[av.VideoFrame]:
    """BGR uint8 (H, W, 3) frames through libavcodec's MPEG-4 Part 2 encoder in an AVI and back: the decoded yuv420p
    frames. quantiser=None: OpenCV's XVID writer (rate control, see opencv_xvid_bit_rate); a number: ffmpeg's
    `-qscale:v N` (fixed quantiser)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = KEY_FRAME_EVERY
        for index, frame in enumerate(frames_bgr):
            if index == 0:
                stream.height, stream.width = frame.shape[:2]
                if quantiser is None:
                    stream.codec_tag = "XVID"
                    stream.bit_rate = opencv_xvid_bit_rate(stream.width, stream.height, fps)
                    stream.codec_context.bit_rate_tolerance = stream.bit_rate
                    stream.codec_context.qmin = CROP_MIN_QUANTISER
                else:  # the quantiser -qscale:v fixes, through the rate control's bounds (see _fix_quantiser)
                    _fix_quantiser(stream.codec_context, quantiser)
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
            picture = picture.reformat(format="yuv420p", interpolation="BICUBIC")
            picture.pts = index
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer) as container:
        return list(container.decode(video=0))


def jpeg_files(frames: list[av.VideoFrame], quantiser: int | None = None, fps: float = FPS) -> list[bytes]:
    """Decoded video frames as ffmpeg's `-f image2 %06d.jpg` writes them: one JPEG file's bytes per frame.
    quantiser=None: ffmpeg's defaults (rate control at 200 kbit/s); a number: `-qscale:v N`."""
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = frames[0].width, frames[0].height
    encoder.pix_fmt = "yuvj420p"  # full range: ffmpeg's scaler expands the decoder's limited-range yuv420p
    encoder.time_base, encoder.framerate = Fraction(1, 1) / Fraction(fps), Fraction(fps)
    if quantiser is not None:
        _fix_quantiser(encoder, quantiser)
    files = []
    for index, frame in enumerate(frames):
        picture = frame.reformat(format="yuvj420p", interpolation="BICUBIC")
        picture.pts = index
        files += [bytes(packet) for packet in encoder.encode(picture)]
    files += [bytes(packet) for packet in encoder.encode(None)]
    return files


def read_jpegs(files: list[bytes]) -> np.ndarray:
    """(T, H, W, 3) uint8 BGR: JPEG files decoded as cv2.imread does (libjpeg)."""
    return np.stack([cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data in files])


def frame_round_trip(frames_rgb: list[np.ndarray], fps: float = FPS) -> list[np.ndarray]:
    """RGB frames as run_pipeline's face detector and cropper read them: MPEG-4 at quantiser 2, then JPEG at
    quantiser 2 (step 1 of the module docstring); RGB uint8."""
    decoded = mpeg4_round_trip((frame[..., ::-1] for frame in frames_rgb), FRAME_QUANTISER, fps)
    return list(read_jpegs(jpeg_files(decoded, FRAME_QUANTISER, fps))[..., ::-1])


def crop_round_trip(crops_bgr: np.ndarray, fps: float = FPS) -> np.ndarray:
    """(T, 224, 224, 3) BGR crops as SyncNetInstance.evaluate reads them back: OpenCV's XVID writer, then ffmpeg's
    default JPEG extraction (step 2 of the module docstring); BGR uint8."""
    return read_jpegs(jpeg_files(mpeg4_round_trip(crops_bgr, None, fps), None, fps))
