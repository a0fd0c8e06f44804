"""How far each protocol step and SyncNet round trip moves the metrics on the sample videos (random weights).

The figures of docs/evaluation.md, "Protocols and the SyncNet pipeline"; not a timing.

    python -m bench.protocols OUT [--part steps|csim|scores|all]

steps: the pixel change of each round trip of metrics/round_trip.py on the sample files talk_a and talk_b.
csim: CSIM of the blurred copies under standard, whole-frame matched pairs, and iplap (whole frames, all pairs).
scores: evaluate.py on the blurred copies (csim, fid, sync) under standard with and without the reference sync
pipeline, and under iplap; prints each summary.
Real: talk_a and talk_b; generated: Gaussian-blurred copies (sigma 2) with the same audio. Weights: random
(testing/metric_networks.py, the FID Inception's BatchNorm calibrated on the clips), written under OUT/weights.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

import evaluate
from data.audio import load_audio
from data.facemesh import FaceMesh, track_faces
from data.samples import samples_folder
from data.video import VideoWriter, read_frames
from metrics import identity
from metrics.round_trip import frame_round_trip, jpeg_files, mpeg4_round_trip, read_jpegs
from metrics.sync import face_crop, face_track
from testing.metric_networks import save_random_weights

NAMES = ("talk_a", "talk_b")


def _change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a).astype(int) - np.asarray(b)).mean())


def steps(real: dict[str, list[np.ndarray]]) -> None:
    for name, frames in real.items():
        with FaceMesh(video=True) as mesh:
            track = face_track(track_faces(frames, mesh, keep_points=True).points)
        through = frame_round_trip(frames)
        crops = np.stack([face_crop(f, *box) for f, box in zip(frames, track)])
        crops_through = np.stack([face_crop(f, *box) for f, box in zip(through, track)])
        xvid = mpeg4_round_trip(crops_through)
        xvid_pixels = np.stack([f.to_ndarray(format="bgr24") for f in xvid])
        files = jpeg_files(xvid)
        scored = read_jpegs(files)
        quantisers = [f[f.find(b"\xff\xdb") + 6] * 8 // 16 for f in files]  # DQT's first AC entry is 16 q >> 3
        print(f"{name}: frames q2 {np.mean([_change(a, b) for a, b in zip(through, frames)]):.2f}; crops from "
              f"them {_change(crops_through, crops):.2f}; XVID {_change(xvid_pixels, crops_through):.2f}; JPEG "
              f"{_change(scored, xvid_pixels):.2f}; all {_change(scored, crops):.2f}; JPEG q first/median/last "
              f"{quantisers[0]}/{int(np.median(quantisers))}/{quantisers[-1]}", flush=True)


def csim(real: dict[str, list[np.ndarray]], generated: dict[str, list[np.ndarray]], weights: Path) -> None:
    network = identity.load_arcface(weights)
    face_sums, frame_sums, count = [], {"real": 0.0, "generated": 0.0}, 0
    matched_frames = []
    with FaceMesh(video=True) as mesh:
        for name in NAMES:
            faces = track_faces(real[name], mesh)
            found = np.flatnonzero(faces.has_face)
            for start in range(0, len(found), 16):
                chosen = found[start:start + 16]
                boxes = [faces.boxes[i] for i in chosen]
                fake = identity.face_batch([generated[name][i] for i in chosen], boxes)
                true = identity.face_batch([real[name][i] for i in chosen], boxes)
                face_sums.append(identity.identity_similarity(network, fake, true).numpy())
            for start in range(0, len(real[name]), 16):
                embedded = {kind: identity.unit_embeddings(network, identity.frame_batch(frames[start:start + 16]))
                            .numpy() for kind, frames in (("real", real[name]), ("generated", generated[name]))}
                matched_frames.append((embedded["real"] * embedded["generated"]).sum(axis=1))
                for kind in frame_sums:
                    frame_sums[kind] = frame_sums[kind] + embedded[kind].sum(axis=0)
                count += len(embedded["real"])
    all_pairs = identity.mean_pair_similarity(frame_sums["real"], count, frame_sums["generated"], count)
    print(f"CSIM: face crops, matched (standard) {np.concatenate(face_sums).mean():.4f}; whole frames, matched "
          f"{np.concatenate(matched_frames).mean():.4f}; whole frames, all pairs (iplap) {all_pairs:.4f}", flush=True)


def scores(out: Path, paths: dict[str, Path]) -> None:
    base = ["--generated", str(out / "generated"), "--reference", str(out / "real"), "--metrics", "csim,fid,sync",
            "--quiet", "--lpips-weights", str(paths["lpips"]), "--fid-weights", str(paths["fid"]),
            "--arcface-weights", str(paths["csim"]), "--syncnet-weights", str(paths["sync"])]
    runs = {"standard": [], "standard_uncompressed_sync": ["sync.reference_pipeline=false"],
            "iplap": ["--protocol", "iplap"]}
    for name, extra in runs.items():
        assert evaluate.main(base + ["--out", str(out / name)] + extra) == 0
        results = json.loads((out / name / "results.json").read_text())
        videos = {row["name"]: (row.get("lse_c"), row.get("lse_d"), row.get("sync_offset"))
                  for row in results["per_video"]}
        print(name, {k: results["summary"][k] for k in ("csim", "fid", "lse_c", "lse_d")}, videos, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for the clips, weights and evaluate.py reports")
    parser.add_argument("--part", choices=("steps", "csim", "scores", "all"), default="all")
    args = parser.parse_args()
    real = originals = {name: read_frames(samples_folder() / f"{name}.mp4") for name in NAMES}
    generated = {name: [cv2.GaussianBlur(f, (0, 0), 2) for f in frames] for name, frames in real.items()}
    for name in NAMES:
        audio = load_audio(samples_folder() / f"{name}.mp4")
        for kind, frames in (("real", real[name]), ("generated", generated[name])):
            (args.out / kind).mkdir(parents=True, exist_ok=True)
            with VideoWriter(args.out / kind / f"{name}.mp4", audio=audio) as writer:
                for frame in frames:
                    writer.write(frame)
    sample = [cv2.resize(f, (299, 299)) for name in NAMES for f in real[name][::5]]
    calibration = torch.from_numpy(np.stack(sample)).permute(0, 3, 1, 2).float() / 255
    paths = save_random_weights(args.out / "weights", calibration)
    real = {name: read_frames(args.out / "real" / f"{name}.mp4") for name in NAMES}  # as evaluate.py reads them
    generated = {name: read_frames(args.out / "generated" / f"{name}.mp4") for name in NAMES}
    if args.part in ("steps", "all"):
        steps(originals)
    if args.part in ("csim", "all"):
        csim(real, generated, paths["csim"])
    if args.part in ("scores", "all"):
        scores(args.out, paths)


if __name__ == "__main__":
    main()
