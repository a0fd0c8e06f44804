"""Held-out seconds: each video of a speaker split into a training part and its last seconds, which fine-tuning
never trains on and evaluates before and after (finetune.py).

Both parts are re-encoded at FPS with their audio (16 kHz mono, as preprocessing reads it), each file written
whole or not at all (data/video.VideoWriter), so a rerun finds a finished split and keeps it.
"""
from __future__ import annotations

from pathlib import Path

from data.audio import SAMPLE_RATE, load_audio
from data.errors import InputError
from data.video import FPS, VideoReader, VideoWriter

MIN_TRAIN_SECONDS = 2.0  # the training part needs a few windows of frames (sample.min_face_frames is 25: 1 s)


def split_video(video: Path, train_path: Path, holdout_path: Path, seconds: float) -> tuple[int, int]:
    """Write the video's frames before its last `seconds` to `train_path` and those seconds to `holdout_path`,
    each with its audio; returns the frame counts (train, held out). Too short a video is a one-line error."""
    audio = load_audio(video)
    duration = len(audio) / SAMPLE_RATE
    if duration - seconds < MIN_TRAIN_SECONDS:
        raise InputError(video, f"{duration:.1f} s of audio: too short to hold out {seconds:g} s and train on at "
                                f"least {MIN_TRAIN_SECONDS:g} s (lower --holdout-seconds, or add footage)")
    cut = int(round((duration - seconds) * FPS))  # the first held-out frame
    at = cut * SAMPLE_RATE // FPS
    counts = [0, 0]
    # The reader gives frames at FPS, as preprocessing reads them, whatever the source's rate.
    with VideoReader(video) as reader, VideoWriter(train_path, FPS, audio[:at]) as train, \
            VideoWriter(holdout_path, FPS, audio[at:]) as holdout:
        for index, frame in enumerate(reader):
            (train if index < cut else holdout).write(frame)
            counts[index >= cut] += 1
        if counts[1] == 0:  # raised inside: both writers leave no file
            raise InputError(video, "its video ends before its audio's last seconds: nothing to hold out")
    return counts[0], counts[1]
