"""Table 1 scoring: every metric of every (generated, real) video pair, and the dataset-level values.

Per pair, both videos are decoded at 25 fps and cut to the shorter one's length; a generated video of another
size is resized to the real one's. Dataset values: PSNR, SSIM and LPIPS are means over all frames; LipLMD and CSIM
means over all frames where the faces were found; FID over all real against all generated frames; LSE-C/LSE-D
means over videos; lip jitter (steadiness) the mean over all frames whose neighbours have a face too, for the
generated videos and, where a real video is given, for the real ones, with their ratio. A metric whose network
weights are missing is reported as n/a with the reason, never computed with other weights.
A protocol (metrics/protocols.py) sets CSIM's framing and pairing and FID's square root; `sync_round_trip` scores
LSE on crops that went through syncnet_python's codec round trips (metrics/round_trip.py).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from data.audio import load_audio
from data.errors import InputError, one_line
from data.facemesh import FaceTrack, track_faces
from data.tensors import image_tensor
from data.video import read_frames
from metrics import identity, weights
from metrics.fid import fid, load_fid_features
from metrics.identity import face_batch, identity_similarity, load_arcface
from metrics.image import PSNR_EPS, psnr, ssim
from metrics.landmarks import track_lip_distances
from metrics.lpips_alex import load_lpips, lpips_distance
from metrics.protocols import PROTOCOLS, Protocol
from metrics.steadiness import jitter_ratio, track_lip_jitter
from metrics.sync import face_track, load_syncnet, offset_distances, sync_crops, sync_features, sync_scores

METRICS = ("psnr", "ssim", "lpips", "fid", "lip_lmd", "csim", "sync", "steadiness")
NETWORKS: dict[str, tuple[weights.WeightFile, Callable[..., torch.nn.Module]]] = {
    "lpips": (weights.LPIPS_ALEXNET, load_lpips),
    "fid": (weights.FID_INCEPTION, load_fid_features),
    "csim": (weights.ARCFACE_R100, load_arcface),
    "sync": (weights.SYNCNET_V2, load_syncnet),
}
NEEDS_REFERENCE = {"psnr", "ssim", "lpips", "fid", "lip_lmd", "csim"}
USES_REFERENCE = NEEDS_REFERENCE | {"steadiness"}  # steadiness scores the real video too when there is one
STEADINESS = ("lip_jitter", "lip_jitter_real", "jitter_ratio")  # its summary keys: generated, real, their ratio


@dataclass
class Networks:
    """The metric networks that loaded (metric -> network) and, for the others, why not (metric -> reason)."""

    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def load_networks(metrics: tuple[str, ...], paths: dict[str, str | Path | None], device: torch.device | str,
                  skip_missing: bool = False, download: bool = True) -> Networks:
    """Load the networks `metrics` need; a missing weight file raises InputError, or with skip_missing is noted."""
    networks = Networks()
    for metric in metrics:
        if metric not in NETWORKS:
            continue
        _, loader = NETWORKS[metric]
        try:
            networks.models[metric] = loader(paths.get(metric), download=download).to(device)
        except InputError as error:
            if not skip_missing:
                raise
            networks.missing[metric] = one_line(error)
    return networks


@dataclass
class Pair:
    """One video to score: its name (relative path), the generated file, the real file, and the audio for sync."""

    name: str
    generated: Path
    reference: Path | None = None
    audio: Path | None = None


@dataclass
class Scores:
    """Per-video rows, dataset-level values (metric -> float, None where n/a) and n/a reasons (metric -> reason)."""

    per_video: list[dict]
    summary: dict[str, float | None]
    reasons: dict[str, str]


def _mean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)] if values.size else values
    return float(values.mean()) if values.size else None


class _Accumulator:
    """Frame-weighted sums per metric, FID features, and the sums of unit face embeddings (all-pairs CSIM)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.real_features: list[np.ndarray] = []
        self.generated_features: list[np.ndarray] = []
        self.embeddings = {"real": 0.0, "generated": 0.0}
        self.embedding_count = 0

    def add(self, metric: str, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[~np.isnan(values)]
        self.sums[metric] = self.sums.get(metric, 0.0) + float(values.sum())
        self.counts[metric] = self.counts.get(metric, 0) + int(values.size)

    def mean(self, metric: str) -> float | None:
        return self.sums[metric] / self.counts[metric] if self.counts.get(metric) else None


def score_videos(pairs: list[Pair], networks: Networks, metrics: tuple[str, ...] = METRICS,
                 device: torch.device | str = "cpu", batch_size: int = 16, progress: bool = True,
                 protocol: Protocol = PROTOCOLS["standard"], sync_round_trip: bool = True) -> Scores:
    """Score every pair with `metrics` (names from METRICS) using the loaded `networks`, under `protocol`; LSE on
    crops through syncnet_python's round trips when `sync_round_trip` (configs/evaluate.yaml decides both)."""
    from data.facemesh import FaceMesh

    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    active = tuple(m for m in metrics if m not in networks.missing)
    reasons = {m: networks.missing[m] for m in metrics if m in networks.missing}
    total = _Accumulator()
    rows = []
    with FaceMesh(video=True) as mesh:
        for pair in tqdm(pairs, desc="scoring", unit="video", file=sys.stderr, disable=not progress):
            rows.append(_score_pair(pair, active, networks, device, batch_size, mesh, total, protocol,
                                    sync_round_trip))
    summary: dict[str, float | None] = {m: None for m in metrics}
    for metric in ("psnr", "ssim", "lpips", "lip_lmd", "csim"):
        if metric in active:
            summary[metric] = total.mean(metric)
            if metric == "csim" and protocol.csim_pairs == "all":
                summary[metric] = identity.mean_pair_similarity(
                    total.embeddings["real"], total.embedding_count, total.embeddings["generated"],
                    total.embedding_count) if total.embedding_count else None
            if summary[metric] is None:
                reasons[metric] = "no frame could be scored (no face found)" if metric in ("lip_lmd", "csim") \
                    else "no frame could be scored"
    if "fid" in active:
        real, generated = total.real_features, total.generated_features
        if sum(len(f) for f in real) < 2 or sum(len(f) for f in generated) < 2:
            reasons["fid"] = "FID needs at least 2 real and 2 generated frames"
        else:
            summary["fid"] = fid(np.concatenate(real), np.concatenate(generated), protocol.fid_root)
    if "sync" in active:
        summary.pop("sync")
        for key in ("lse_c", "lse_d"):
            summary[key] = _mean([row[key] for row in rows if row.get(key) is not None])
        if summary["lse_c"] is None:
            reasons["sync"] = "no video could be scored: " + "; ".join(
                sorted({row["sync_note"] for row in rows if row.get("sync_note")}))
    elif "sync" in metrics:
        summary.pop("sync")
        summary["lse_c"] = summary["lse_d"] = None
    if "steadiness" in metrics:
        summary.pop("steadiness")
        summary.update(_steadiness_summary(total, rows) if "steadiness" in active else dict.fromkeys(STEADINESS))
        if "steadiness" in active and summary["lip_jitter"] is None:
            reasons["steadiness"] = "no three consecutive generated frames with a face"
    return Scores(rows, summary, reasons)


def _steadiness_summary(total: _Accumulator, rows: list[dict]) -> dict[str, float | None]:
    """Lip jitter over all usable frames; the real videos' and the ratio only when some pair had a real video."""
    generated = total.mean("lip_jitter")
    if not any("lip_jitter_real" in row for row in rows):
        return {"lip_jitter": generated}
    real = total.mean("lip_jitter_real")
    return {"lip_jitter": generated, "lip_jitter_real": real, "jitter_ratio": jitter_ratio(generated, real)}


@torch.no_grad()
def _score_pair(pair: Pair, active: tuple[str, ...], networks: Networks, device, batch_size: int, mesh,
                total: _Accumulator, protocol: Protocol, sync_round_trip: bool) -> dict:
    """Every active metric of one pair: its row of per-video values (also added into `total`)."""
    generated, real, row = _decode_pair(pair, active)
    if real is not None:
        row.update(_image_metrics(generated, real, active, networks, device, batch_size, total))
    face_metrics = {"lip_lmd", "steadiness"} | ({"csim"} if protocol.csim_framing == "face" else set())
    real_faces = track_faces(real, mesh) if real is not None and face_metrics & set(active) else None
    generated_faces = track_faces(generated, mesh, keep_points=True) \
        if ("lip_lmd" in active and real is not None) or {"sync", "steadiness"} & set(active) else None
    if "lip_lmd" in active and real is not None:
        row.update(_lip_distance(generated_faces, real_faces, total))
    if "csim" in active and real is not None and protocol.csim_framing == "face":
        row.update(_identity(networks.models["csim"], generated, real, real_faces, device, batch_size, total))
    elif "csim" in active and real is not None:
        row.update(_identity_of_frames(networks.models["csim"], generated, real, device, batch_size, total))
    if "sync" in active:
        row.update(_sync(networks.models["sync"], pair, generated, generated_faces.points, device, batch_size,
                         sync_round_trip))
    if "steadiness" in active:
        row.update(_steadiness(generated_faces, real_faces, total))
    return row


def _decode_pair(pair: Pair, active: tuple[str, ...]) -> tuple[list[np.ndarray], list[np.ndarray] | None, dict]:
    """Both videos' frames at 25 fps, cut to the shorter, the generated one resized to the real one's size; and
    the row's first fields."""
    generated = read_frames(pair.generated)
    row: dict = {"name": pair.name, "generated": str(pair.generated),
                 "reference": None if pair.reference is None else str(pair.reference)}
    real = None
    if pair.reference is not None and USES_REFERENCE & set(active):
        real = read_frames(pair.reference)
        count = min(len(real), len(generated))
        real, generated = real[:count], generated[:count]
        height, width = real[0].shape[:2]
        row["resized"] = generated[0].shape[:2] != (height, width)
        if row["resized"]:
            shrink = generated[0].shape[0] > height
            generated = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
                         for f in generated]
    elif NEEDS_REFERENCE & set(active):
        raise InputError(pair.generated, "no real video to compare with")
    row["frames"] = len(generated)
    return generated, real, row


def _image_metrics(generated, real, active, networks: Networks, device, batch_size: int, total: _Accumulator
                   ) -> dict:
    """PSNR, SSIM and LPIPS per frame (their video means), and the FID features of both videos."""
    row = {}
    per_frame: dict[str, list[torch.Tensor]] = {m: [] for m in ("psnr", "ssim", "lpips")}
    for start in range(0, len(real), batch_size):
        fake_batch = image_tensor(generated[start:start + batch_size])
        real_batch = image_tensor(real[start:start + batch_size])
        if "psnr" in active:
            per_frame["psnr"].append(psnr(fake_batch, real_batch, PSNR_EPS))
        if "ssim" in active:
            per_frame["ssim"].append(ssim(fake_batch, real_batch, downsample=True))
        if "lpips" in active:
            per_frame["lpips"].append(lpips_distance(networks.models["lpips"], fake_batch.to(device),
                                                     real_batch.to(device)).cpu())
        if "fid" in active:
            features = networks.models["fid"](torch.cat([real_batch, fake_batch]).to(device)).double().cpu()
            total.real_features.append(features[: len(real_batch)].numpy())
            total.generated_features.append(features[len(real_batch):].numpy())
    for metric, values in per_frame.items():
        if values:
            values = torch.cat(values).numpy()
            row[metric] = float(values.mean())
            total.add(metric, values)
    return row


def _lip_distance(generated: FaceTrack, real: FaceTrack, total: _Accumulator) -> dict:
    distances = track_lip_distances(generated, real)
    total.add("lip_lmd", distances)
    return {"lip_lmd": _mean(distances), "lip_frames": int(np.isfinite(distances).sum())}


def _steadiness(generated: FaceTrack, real: FaceTrack | None, total: _Accumulator) -> dict:
    """Lip jitter of the generated video, and of the real one when there is one, with their ratio."""
    values = track_lip_jitter(generated)
    total.add("lip_jitter", values)
    row = {"lip_jitter": _mean(values), "jitter_frames": int(np.isfinite(values).sum())}
    if real is not None:
        real_values = track_lip_jitter(real)
        total.add("lip_jitter_real", real_values)
        row["lip_jitter_real"] = _mean(real_values)
        row["jitter_ratio"] = jitter_ratio(row["lip_jitter"], row["lip_jitter_real"])
    return row


def _identity(network, generated, real, real_faces: FaceTrack, device, batch_size: int, total: _Accumulator
              ) -> dict:
    """CSIM: ArcFace similarity of the generated and real faces, both cut by the real face's crop box."""
    found = np.flatnonzero(real_faces.has_face)
    similarities = []
    for start in range(0, len(found), batch_size):
        chosen = found[start:start + batch_size]
        boxes = [real_faces.boxes[i] for i in chosen]
        fake = face_batch([generated[i] for i in chosen], boxes).to(device)
        true = face_batch([real[i] for i in chosen], boxes).to(device)
        similarities.append(identity_similarity(network, fake, true).cpu())
    values = torch.cat(similarities).numpy() if similarities else np.zeros(0)
    total.add("csim", values)
    return {"csim": _mean(values), "csim_frames": len(values)}


def _identity_of_frames(network, generated, real, device, batch_size: int, total: _Accumulator) -> dict:
    """iplap CSIM: whole frames at 112x112, the mean cosine over every (real, generated) frame pair."""
    sums = {"real": 0.0, "generated": 0.0}
    for start in range(0, len(real), batch_size):
        for kind, frames in (("real", real), ("generated", generated)):
            batch = identity.frame_batch(frames[start:start + batch_size]).to(device)
            embeddings = identity.unit_embeddings(network, batch)
            sums[kind] = sums[kind] + embeddings.sum(dim=0).cpu().numpy()
    for kind in sums:
        total.embeddings[kind] = total.embeddings[kind] + sums[kind]
    total.embedding_count += len(real)
    value = identity.mean_pair_similarity(sums["real"], len(real), sums["generated"], len(generated))
    return {"csim": value, "csim_frames": len(real)}


def _sync(network, pair: Pair, generated, generated_points, device, batch_size: int, round_trip: bool) -> dict:
    track = face_track(generated_points)
    if track is None:
        return {"lse_c": None, "lse_d": None, "sync_offset": None, "sync_note": "no face in the generated video"}
    audio_source = pair.audio or pair.generated
    try:
        audio = load_audio(audio_source)
    except InputError as error:
        if pair.audio is None and pair.reference is not None:  # a silent generated file: use the real audio
            audio_source, audio = pair.reference, load_audio(pair.reference)
        else:
            return {"lse_c": None, "lse_d": None, "sync_offset": None, "sync_note": one_line(error)}
    crops = sync_crops(generated, track, round_trip)
    try:
        video_features, audio_features = sync_features(network, crops, audio, device, batch_size)
    except ValueError as error:
        return {"lse_c": None, "lse_d": None, "sync_offset": None, "sync_note": str(error)}
    scores = sync_scores(offset_distances(video_features, audio_features))
    return {"lse_c": scores["lse_c"], "lse_d": scores["lse_d"], "sync_offset": scores["offset"],
            "sync_audio": str(audio_source)}
