"""Preprocess talking-face videos into compact training records (one .npz + one .faces file per video).

  python preprocess.py --input-root LRS2/main --output-root records/lrs2 [--workers 2] [--shard 0/4] [--face-size 256]

Every video under the input root (mp4, mov, mkv, avi, webm) is resampled to 25 fps; FaceMesh finds 131
landmarks per frame; the face is cropped by the shared crop rule (data/crop.py) to --face-size pixels square
(128 by default, the paper's); the audio track becomes the 16 kHz mel-spectrogram. Finished records of that size
are skipped on the next run (records of another size are made again); videos that cannot be used are listed with
the reason in failures.tsv under the output root. The summary line gives the share of the recorded face frames
whose face box in the source video is smaller than the crop on its shorter side: those crops are upscaled, with
less detail than their size suggests (all of LRS2's 160x160 frames at 256).

Exit status: 0 when the shard's videos have records (finished now or before), except those listed in the
failures file; 3 when the shard has videos and none of them could be recorded; 2 for bad arguments (a missing
input folder, a malformed --shard) or an input folder with no videos in it; 74 when a disk is full, over quota,
read-only or failing: the run stops at the first such failure, in one line naming the file (no video after it is
started, the records finished stay, none is left half-written, and a rerun goes on where it stopped); 1 is an
unexpected crash.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from data.audio import N_MELS, load_audio, melspectrogram
from data.crop import crop_face, upscaled
from data.errors import DISK_STATUS, DiskError, InputError, disk_problem, one_line
from data.face_size import FACE_SIZE, FACE_SIZES
from data.facemesh import track_faces
from data.records import FACE_FORMATS, encode_face, is_complete, record_paths, write_record
from data.video import FPS, VIDEO_EXTENSIONS, VideoReader, find_videos
from shards import parse_shard, shard_share

MIN_FRAMES = FPS  # one second of video


class Counts(NamedTuple):
    """What one recorded video adds to the run's summary."""

    frames: int
    faces: int  # frames with a face
    upscaled: int  # face frames whose source face box is under the face size (data.crop.upscaled)


NOTHING = Counts(0, 0, 0)


@dataclass(frozen=True)
class Options:
    """How videos become records; the defaults are the command line's."""
    face_format: str = "jpg"
    jpeg_quality: int = 95
    tracking: bool = True
    allow_no_audio: bool = False
    min_frames: int = MIN_FRAMES
    face_size: int = FACE_SIZE


_mesh = None  # one FaceMesh per worker process


def _quiet_worker() -> None:
    """Worker start-up: MediaPipe and TFLite log to fd 2 from C++; results travel back as values instead."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)


def _face_mesh(options: Options):
    global _mesh
    if _mesh is None:
        from data.facemesh import FaceMesh

        _mesh = FaceMesh(video=options.tracking)
    return _mesh


def preprocess_video(video: Path, stem: Path, options: Options) -> Counts:
    """Write the record of one video; returns its counts of 25 fps frames, face frames and upscaled face frames.
    Raises InputError for a bad video."""
    mesh = _face_mesh(options)
    with VideoReader(video, FPS) as reader:
        if reader.has_audio:
            mel = melspectrogram(load_audio(video))
        elif options.allow_no_audio:
            mel = np.zeros((0, N_MELS), np.float32)
        else:
            raise InputError(video, "no audio stream")
        faces = []

        def keep_face(frame: np.ndarray, box: np.ndarray | None) -> None:
            faces.append(b"" if box is None else encode_face(crop_face(frame, box, options.face_size),
                                                             options.face_format, options.jpeg_quality))

        track = track_faces(reader, mesh, keep_face)
        source_fps, source_size = reader.source_fps, reader.size
    if len(track) < options.min_frames:
        raise InputError(video, f"too short: {len(track)} frames at {FPS} fps (need at least {options.min_frames})")
    if not track.has_face.any():
        raise InputError(video, f"no face found in any of its {len(track)} frames")
    write_record(stem, faces=faces, landmarks=track.landmarks, boxes=track.boxes, has_face=track.has_face, mel=mel,
                 source_fps=source_fps, source_size=source_size, face_format=options.face_format, fps=FPS,
                 has_audio=len(mel) > 0, face_size=options.face_size)
    face_boxes = track.boxes[track.has_face]
    return Counts(len(faces), len(face_boxes), int(upscaled(face_boxes, options.face_size).sum()))


def _job(video: Path, stem: Path, options: Options) -> tuple[Counts, str | None]:
    """(counts, None) when recorded, (no counts, reason) when the video is unusable. A full, read-only or failing disk
    raises a DiskError naming the record instead: every later video would meet the same disk."""
    try:
        return preprocess_video(video, stem, options), None
    except InputError as error:
        return NOTHING, error.problem
    except Exception as error:  # a bad file must not stop a long run: report it and go on
        problem = disk_problem(error)
        if problem is not None:
            raise DiskError(record_paths(stem)[0], problem) from None  # pickles: reaches the main process whole
        return NOTHING, f"unexpected {type(error).__name__}: {one_line(error)}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    description, exit_status = __doc__.split("\nExit status: ")
    defaults = Options()
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit status: " + exit_status)
    parser.add_argument("--input-root", type=Path, required=True, help="folder searched recursively for videos")
    parser.add_argument("--output-root", type=Path, required=True,
                        help="records are written here at each video's relative path")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per CPU core; 0 = in this process)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1),
                        help="I/N: process only shard I of N (e.g. a SLURM array index): every N-th video of the "
                             "sorted list from the I-th, so shard sizes differ by at most one; default 0/1")
    parser.add_argument("--overwrite", action="store_true", help="redo videos whose record already exists")
    parser.add_argument("--face-size", type=int, choices=FACE_SIZES, default=defaults.face_size,
                        help=f"side of the stored face crops in pixels (default {defaults.face_size}, the paper's); "
                             "256 and 512 want source faces at least that large (see the upscaled share in the "
                             "summary line)")
    parser.add_argument("--face-format", choices=FACE_FORMATS, default=defaults.face_format,
                        help=f"jpg (quality --jpeg-quality) or png (lossless: about 4x the bytes, and slower); "
                             f"default {defaults.face_format}")
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality,
                        help=f"JPEG quality, 95-100 (default {defaults.jpeg_quality})")
    parser.add_argument("--detect-every-frame", action="store_true",
                        help="run FaceMesh's face detector on every frame as the official code did "
                             "(slower); default: track the face between frames")
    parser.add_argument("--allow-no-audio", action="store_true",
                        help="record videos without an audio track (empty mel) instead of failing them")
    args = parser.parse_args(argv)
    if not 95 <= args.jpeg_quality <= 100:
        parser.error("--jpeg-quality must be between 95 and 100")
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    if not args.input_root.is_dir():
        parser.error(f"{args.input_root}: no such folder")
    return args


def _process_context():
    """fork where the OS has it (workers start at once, MediaPipe already imported), else spawn.

    Safe here because this process never runs a MediaPipe graph or decodes video itself: each worker builds its
    own FaceMesh after the fork.
    """
    if "fork" in multiprocessing.get_all_start_methods():
        import mediapipe.python.solutions.face_mesh  # noqa: F401  (imported once, shared by the forked workers)

        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _run_jobs(jobs: list[tuple[Path, Path]], workers: int, options: Options):
    """Yield (video, counts, reason) as jobs finish; a worker that crashes fails its video, not the run. A
    DiskError from a job stops the run: no job is started after it, and the ones under way end first (a record
    being written then is either finished or removed)."""
    if workers == 0:
        for video, stem in jobs:
            yield video, *_job(video, stem, options)
        return
    context = _process_context()
    retry = []
    with futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_worker) as pool:
        running = {pool.submit(_job, video, stem, options): (video, stem) for video, stem in jobs}
        try:
            for future in futures.as_completed(running):
                try:
                    yield running[future][0], *future.result()
                except futures.process.BrokenProcessPool:
                    retry.append(running[future])
        except BaseException:  # a DiskError, Ctrl-C, the caller stopping: start nothing more
            for future in running:
                future.cancel()
            raise
    # A native crash breaks the whole pool: run each video it interrupted alone, so only the culprit fails.
    for video, stem in retry:
        with futures.ProcessPoolExecutor(1, mp_context=context, initializer=_quiet_worker) as pool:
            try:
                yield video, *pool.submit(_job, video, stem, options).result()
            except futures.process.BrokenProcessPool:
                yield video, NOTHING, "the worker process crashed on this video"


def _stopped_by(error: DiskError, input_root: Path, jobs: list[tuple[Path, Path]], failures_path: Path, done: int,
               skipped: int) -> int:
    """The end of a run that met a full or failing disk: one line, a note in the failures file where it can still
    be written, and exit status 74."""
    print(f"error: {error} (preprocessing stopped: {done} videos recorded in this run, {skipped} before; rerun to "
          "go on where it stopped)", file=sys.stderr)
    video = {str(record_paths(stem)[0]): video for video, stem in jobs}.get(error.path)
    with contextlib.suppress(OSError):  # the failures file may well be on the disk that failed
        with open(failures_path, "a") as failures:
            name = video.relative_to(input_root).as_posix() if video else error.path
            failures.write(f"{name}\t{error.problem} (preprocessing stopped here; rerun to go on)\n")
    return DISK_STATUS


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(face_format=args.face_format, jpeg_quality=args.jpeg_quality,
                      tracking=not args.detect_every_frame, allow_no_audio=args.allow_no_audio,
                      face_size=args.face_size)
    found = find_videos(args.input_root)
    if not found:
        print(f"error: {args.input_root}: no videos ({', '.join(VIDEO_EXTENSIONS)}) in this folder or below",
              file=sys.stderr)
        return 2
    # The whole sorted list is sharded, done records included, so that each video keeps its shard across reruns.
    videos = shard_share(found, args.shard, lambda video: video.relative_to(args.input_root).as_posix())
    jobs, skipped = [], 0
    for video in videos:
        stem = args.output_root / video.relative_to(args.input_root).with_suffix("")
        if is_complete(stem, options.face_size) and not args.overwrite:
            skipped += 1
        else:
            jobs.append((video, stem))
    index, count = args.shard
    failures_path = args.output_root / ("failures.tsv" if count == 1 else f"failures.shard-{index}-of-{count}.tsv")
    print(f"{len(videos)} videos in shard {index}/{count}: {skipped} already done, {len(jobs)} to process",
          file=sys.stderr)
    done = failed = frames = face_frames = upscaled_frames = 0
    started = time.perf_counter()
    try:
        args.output_root.mkdir(parents=True, exist_ok=True)
        with open(failures_path, "w") as failures, tqdm(total=len(jobs), unit="video") as bar:
            for video, counts, reason in _run_jobs(jobs, args.workers, options):
                relative = video.relative_to(args.input_root)
                if reason is None:
                    done, frames = done + 1, frames + counts.frames
                    face_frames, upscaled_frames = face_frames + counts.faces, upscaled_frames + counts.upscaled
                else:
                    failed += 1
                    failures.write(f"{relative.as_posix()}\t{reason}\n")
                    failures.flush()
                    tqdm.write(f"failed: {relative}: {reason}", file=sys.stderr)
                bar.update(1)
                bar.set_postfix(frames=frames, failed=failed)
    except DiskError as error:
        return _stopped_by(error, args.input_root, jobs, failures_path, done, skipped)
    except OSError as error:  # the output folder or the failures file itself
        if disk_problem(error) is None:
            raise
        stop = DiskError(error.filename or failures_path, disk_problem(error))
        return _stopped_by(stop, args.input_root, jobs, failures_path, done, skipped)
    seconds = time.perf_counter() - started
    upscaled = (f"; {upscaled_frames / face_frames:.1%} of their face frames upscaled (source face box under "
                f"{options.face_size} px)") if face_frames else ""
    print(f"videos: {done} done, {skipped} skipped, {failed} failed; {frames} frames in {seconds:.1f} s "
          f"({frames / max(seconds, 1e-9):.1f} frames/s){upscaled}"
          + (f"; failures listed in {failures_path}" if failed else ""))
    if failed and not (done or skipped):
        print(f"error: {args.input_root}: no record could be written ({failed} videos failed; see {failures_path})",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
