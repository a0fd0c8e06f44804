"""`--face auto`: the face that speaks, found by how its lips move with the template's own sound.

Per track (dubbing/faces.py), the lip opening (FaceMesh's inner-lip midpoints 13 and 14, as a share of the crop
box's height) is correlated with the sound's loudness (log RMS over the frame's 1/fps) in windows of
WINDOW_SECONDS, the sound leading by 0 to MAX_LEAD seconds (the best lead counts); a track's score is its
windows' mean correlation, weighted by their frames. Speech opens the mouth on loud syllables and
closes it in pauses, so the speaker's correlation is positive, a listener's near zero. The face chosen is the
best-scoring track of at least MIN_FRAMES frames; it is then followed like any other choice.
"""
from __future__ import annotations

import numpy as np

from data.audio import SAMPLE_RATE
from data.landmarks import FACEMESH_IDS

WINDOW_SECONDS = 2.0
MAX_LEAD = 0.12  # seconds the sound may lead the lips by
MIN_FRAMES = 8
INNER_LIP = (FACEMESH_IDS.index(13), FACEMESH_IDS.index(14))  # upper and lower inner-lip midpoints


def loudness(sound: np.ndarray, frames: int, fps: float) -> np.ndarray:
    """(frames,) log RMS of 16 kHz `sound` over each frame's 1/fps, centred on the frame's time."""
    half = SAMPLE_RATE / fps / 2
    centres = np.arange(frames) * SAMPLE_RATE / fps
    out = np.full(frames, -12.0)
    for t, centre in enumerate(centres):
        piece = sound[max(int(centre - half), 0):max(int(centre + half), 0)]
        if len(piece):
            out[t] = np.log(np.sqrt(np.mean(np.square(piece, dtype=np.float64))) + 1e-5)
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; 0 where either side is constant."""
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 0 else 0.0


def lead_correlation(opening: np.ndarray, energy: np.ndarray, frames: np.ndarray, lead: int) -> float:
    """The best correlation of the lip opening at `frames` with the loudness 0..lead frames earlier."""
    return max(correlation(opening, energy[np.maximum(frames - shift, 0)]) for shift in range(lead + 1))


def track_scores(scan, sound: np.ndarray, fps: float) -> dict[int, float]:
    """Each track's (of at least MIN_FRAMES frames) weighted mean windowed correlation of lip opening and
    loudness."""
    energy = loudness(sound, len(scan), fps)
    pixels = scan.pixels()
    opening = np.linalg.norm(pixels[:, INNER_LIP[0]] - pixels[:, INNER_LIP[1]], axis=-1) / \
        np.maximum(scan.boxes[:, 3] - scan.boxes[:, 1], 1)
    window = max(int(round(WINDOW_SECONDS * fps)), MIN_FRAMES)
    lead = int(round(MAX_LEAD * fps))
    scores = {}
    for key in np.unique(scan.track):
        rows = np.flatnonzero(scan.track == key)
        total, weight = 0.0, 0
        for start in range(0, len(rows), window):
            part = rows[start:start + window]
            if len(part) >= MIN_FRAMES:
                total += lead_correlation(opening[part], energy, scan.frame[part], lead) * len(part)
                weight += len(part)
        if weight:
            scores[int(key)] = total / weight
    return scores


def speaking_face(scan, sound: np.ndarray, fps: float) -> int:
    """A face (index into the scan) of the track that speaks: the best score of `track_scores`; the largest
    track when none is long enough to score."""
    scores = track_scores(scan, sound, fps)
    if scores:
        best = max(scores, key=lambda key: (scores[key], -key))
    else:
        keys, counts = np.unique(scan.track, return_counts=True)
        best = int(keys[np.argmax(counts)])
    return int(np.flatnonzero(scan.track == best)[0])
