"""Several faces per template: what they cost in pass 1, and how well `--face auto` finds the speaker.

  python -m bench.faces [--frames 50] [--skip-auto]

Cost: the template pass (FaceMesh in tracking mode at faces.max, tracks, descriptors) over --frames frames of
clips made from the sample talkers (testing/two_faces.py): one face beside an empty square, two, and four (a 2x2
grid), against FaceMesh looking for one face on the one-face clip (the pass before faces.max existed). Prints ms
per frame, the ratio to the one-face pass, and the descriptor's own cost per face.

Auto: a held-out clip (frames 40-124 of both talkers, none of the frames the tests use), the talkers side by side
in both arrangements, with either talker's sound; in every 2 s window (sliding by 1 s) `dubbing.active_speaker` picks a
face, and it should be the one whose sound plays. Also with the other talker still (its first frame held: a
listener). Prints the share of windows picked right.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from data.audio import SAMPLE_RATE, load_audio
from data.facemesh import FaceMesh, track_faces
from data.samples import samples_folder
from dubbing.active_speaker import track_scores
from dubbing.faces import FaceScan, scan_faces
from dubbing.identity import describe
from testing.two_faces import TILE, compose, talker_tiles

HELD_OUT = (40, 85)  # first frame and frames of the auto clip


def per_frame_ms(run, frames: list[np.ndarray], repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run(frames)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(frames)


def cost(frames: int) -> None:
    tiles = talker_tiles(samples_folder(), frames)
    clips = {1: compose(tiles, (("a", None),), frames)[0], 2: compose(tiles, (("a", "b"),), frames)[0]}
    clips[4] = [np.concatenate([a, b[:, ::-1]], axis=0) for a, b in zip(clips[2], clips[2])]
    with FaceMesh(max_faces=1) as mesh:
        baseline = per_frame_ms(lambda f: track_faces(f, mesh), clips[1])
    print(f"{'faces':>5} {'ms/frame':>9} {'x one-face pass':>16}")
    print(f"{'1*':>5} {baseline:9.1f} {1.0:16.2f}   (* FaceMesh looking for one face)")
    with FaceMesh(max_faces=4) as mesh:
        for count, clip in clips.items():
            found = scan_faces(clip[:1], mesh)
            assert len(found.frame) == count, f"{count} faces expected, {len(found.frame)} found"
            ms = per_frame_ms(lambda f: scan_faces(f, mesh), clip)
            print(f"{count:>5} {ms:9.1f} {ms / baseline:16.2f}")
        scan = scan_faces(clips[2][:1], mesh)
    points = scan.pixels()[0]
    describe(clips[2][0], points)
    started = time.perf_counter()
    for _ in range(10):
        describe(clips[2][0], points)
    print(f"one descriptor: {100 * (time.perf_counter() - started):.1f} ms (a track's first frame, then every "
          "25th frame)")


def windows_right(scan: FaceScan, sound: np.ndarray, speaker_side: str, window: int = 50, step: int = 25
                  ) -> tuple[int, int]:
    """(windows whose best-scoring face sits on `speaker_side`, windows)."""
    right = total = 0
    for start in range(0, len(scan) - window + 1, step):
        keep = (scan.frame >= start) & (scan.frame < start + window)
        part = FaceScan(scan.frame[keep] - start, scan.landmarks[keep], scan.boxes[keep], scan.track[keep],
                        scan.descriptors[keep], scan.cuts[start:start + window], scan.size)
        piece = sound[int(start / 25 * SAMPLE_RATE):int((start + window) / 25 * SAMPLE_RATE)]
        scores = track_scores(part, piece, 25.0)
        best = max(scores, key=scores.get)
        box = part.boxes[np.flatnonzero(part.track == best)[0]]
        right += ("left" if (box[0] + box[2]) / 2 < TILE else "right") == speaker_side
        total += 1
    return right, total


def auto() -> None:
    start, count = HELD_OUT
    folder = samples_folder()
    tiles = talker_tiles(folder, count, start)
    sounds = {name: load_audio(folder / f"talk_{name}.mp4")[int(start / 25 * SAMPLE_RATE):
                                                            int((start + count) / 25 * SAMPLE_RATE)]
              for name in ("a", "b")}
    print("auto, 2 s windows sliding by 1 s over a held-out clip (frames 40-124 of both talkers):")
    cases = []
    for listener in (False, True):
        for left, right in (("a", "b"), ("b", "a")):
            for speaker in ("a", "b"):
                other = "b" if speaker == "a" else "a"
                held = dict(tiles)
                if listener:
                    held[other] = [tiles[other][0]] * count
                frames, _ = compose(held, ((left, right),), count)
                with FaceMesh(max_faces=4) as mesh:
                    scan = scan_faces(frames, mesh)
                side = "left" if left == speaker else "right"
                hits, total = windows_right(scan, sounds[speaker], side)
                cases.append((listener, hits, total))
                print(f"  {left}|{right}, {speaker}'s sound{', other still' if listener else ''}: "
                      f"{hits}/{total} windows right")
    for listener in (False, True):
        hits = sum(h for flag, h, _ in cases if flag == listener)
        total = sum(t for flag, _, t in cases if flag == listener)
        print(f"  {'speaker beside a still listener' if listener else 'both talking, one sound'}: "
              f"{hits}/{total} = {100 * hits / total:.0f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--skip-auto", action="store_true")
    args = parser.parse_args()
    cost(args.frames)
    if not args.skip_auto:
        auto()


if __name__ == "__main__":
    main()
