"""SyncScore: SyncNet audio-visual sync confidence LSE-C and distance LSE-D (syncnet_python, `syncnet_v2.model`).

Pipeline (syncnet_python's run_pipeline + SyncNetInstance.evaluate, with FaceMesh in place of the S3FD detector):
- face track: per frame, the box of all FaceMesh points (S3FD's face box in the original); half its longer side
  `s` and its centre are median-filtered over 13 frames; the crop spans centre_y - s .. centre_y + 1.8 s and
  centre_x - 1.4 s .. centre_x + 1.4 s (crop_scale 0.4) of the frame padded with grey 110, and is resized to
  224x224 (cv2 bilinear). The whole face crop goes in, as BGR 0..255 without normalisation. By default
  (`sync.reference_pipeline`) the frames and crops first take syncnet_python's codec round trips
  (metrics/round_trip.py: MPEG-4 and JPEG at quantiser 2 for the frames, XVID and ffmpeg-default JPEG for the
  crops), as the published numbers' pixels did; without it the crops are scored uncompressed.
- audio: the 16 kHz mono track at int16 scale, 13 MFCCs per 10 ms (python_speech_features.mfcc defaults), so 4
  MFCC frames per video frame at 25 fps.
- features: for video frame t, the lip stream sees frames t..t+4 (5 x 224 x 224) and the audio stream MFCC frames
  4t..4t+19; both give 1024-d features. Frames t run over 0 .. min(T, samples // 640) - 6.
- offset search: for each t, the Euclidean distance between the video feature at t and the audio features at
  t-15 .. t+15 (zero features beyond either end); these are averaged over t into 31 mean distances.
  LSE-D = their minimum, LSE-C = their median minus their minimum, AV offset = 15 - argmin (frames; positive
  when the audio lags the video). Wav2Lip and IP_LAP report LSE-C as "SyncScore" (higher is better), LSE-D lower.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.signal import medfilt
from torch import nn

from data.audio import SAMPLE_RATE
from data.video import FPS
from metrics.round_trip import crop_round_trip, frame_round_trip
from metrics.weights import SYNCNET_V2
from model_files.weights import frozen, load_exactly, read_state, resolve

MAX_OFFSET = 15
CROP_SCALE = 0.4
CROP_SIZE = 224
WINDOW = 5  # video frames per SyncNet input
MFCC_PER_SECOND = 100
MFCC_PER_FRAME = MFCC_PER_SECOND // FPS  # 4
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


def _conv_block(conv: nn.Module, norm: nn.Module, pool: nn.Module | None = None) -> list[nn.Module]:
    return [conv, norm, nn.ReLU(inplace=True)] + ([pool] if pool is not None else [])


class SyncNet(nn.Module):
    """SyncNet v2: an audio stream (MFCC windows) and a lip stream (5-frame face crops) into a shared 1024-d space.

    Module names and layer order follow syncnet_python's SyncNetModel.S so that `syncnet_v2.model` loads as is.
    """

    def __init__(self, embedding: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(  # (B, 1, 13, 20) -> (B, 512, 1, 1)
            *_conv_block(nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.MaxPool2d(1, 1)),
            *_conv_block(nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192), nn.MaxPool2d(3, (1, 2))),
            *_conv_block(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_conv_block(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_conv_block(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.MaxPool2d(3, 2)),
            *_conv_block(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))
        self.netcnnlip = nn.Sequential(  # (B, 3, 5, 224, 224) -> (B, 512, 1, 1, 1)
            *_conv_block(nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2)), nn.BatchNorm3d(96),
                         nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_block(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256),
                         nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))),
            *_conv_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256),
                         nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_block(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),
        )

    def forward_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) MFCC windows -> (B, 1024)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) BGR 0..255 face crops -> (B, 1024)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet(path: str | Path | None = None, download: bool = True) -> SyncNet:
    """SyncNet with syncnet_python's `syncnet_v2.model` weights from `path` (or the hub cache), frozen."""
    file = resolve(SYNCNET_V2, path, download)
    network = SyncNet()
    load_exactly(network, read_state(file, SYNCNET_V2.what), file, SYNCNET_V2.what)
    return frozen(network)


def mfcc(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(13, N) float32 MFCCs of mono float audio in -1..1, computed at int16 scale as syncnet_python reads its wav."""
    import python_speech_features

    pcm = np.clip(np.round(np.asarray(audio, np.float64) * 32768), -32768, 32767)
    return python_speech_features.mfcc(pcm, sample_rate).T.astype(np.float32)


def face_track(points: list[np.ndarray | None]) -> np.ndarray | None:
    """(T, 3) float64 smoothed (centre_x, centre_y, half size) per frame from FaceMesh points; None if no face.

    Frames without a face take the nearest detected frame's box before smoothing.
    """
    found = [i for i, p in enumerate(points) if p is not None]
    if not found:
        return None
    boxes = []
    for i in range(len(points)):
        p = points[i] if points[i] is not None else points[min(found, key=lambda j: abs(j - i))]
        low, high = p.min(axis=0), p.max(axis=0)
        boxes.append(((low[0] + high[0]) / 2, (low[1] + high[1]) / 2, float((high - low).max()) / 2))
    boxes = np.array(boxes, dtype=np.float64)
    with warnings.catch_warnings():  # scipy warns when the track is shorter than the kernel (zero padding, as there)
        warnings.simplefilter("ignore")
        return np.stack([medfilt(boxes[:, k], kernel_size=13) for k in range(3)], axis=1)


def face_crop(frame: np.ndarray, centre_x: float, centre_y: float, half: float) -> np.ndarray:
    """(224, 224, 3) uint8 BGR crop of an RGB frame, cut as syncnet_python's crop_video does."""
    pad = int(half * (1 + 2 * CROP_SCALE))
    padded = np.pad(frame[..., ::-1], ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
    y, x = centre_y + pad, centre_x + pad
    face = padded[int(y - half):int(y + half * (1 + 2 * CROP_SCALE)),
                  int(x - half * (1 + CROP_SCALE)):int(x + half * (1 + CROP_SCALE))]
    return cv2.resize(face, (CROP_SIZE, CROP_SIZE))


def sync_crops(frames: list[np.ndarray], track: np.ndarray, round_trip: bool = True) -> np.ndarray:
    """(T, 224, 224, 3) uint8 BGR crops of RGB frames along a face_track, as SyncNet scores them: with round_trip,
    as syncnet_python reads them (frames and crops through its codecs, metrics/round_trip.py), else uncompressed."""
    if round_trip:
        frames = frame_round_trip(frames)
    crops = np.stack([face_crop(frame, *box) for frame, box in zip(frames, track)])
    return crop_round_trip(crops) if round_trip else crops


def offset_distances(video_features: torch.Tensor, audio_features: torch.Tensor,
                     max_offset: int = MAX_OFFSET) -> torch.Tensor:
    """(T, 2 * max_offset + 1) distances between video feature t and audio features t - max_offset .. t + max_offset.

    Audio features beyond either end are zero vectors (syncnet_python's padding); distances use
    torch's pairwise_distance (eps 1e-6) as the original does.
    """
    padded = torch.nn.functional.pad(audio_features, (0, 0, max_offset, max_offset))
    width = 2 * max_offset + 1
    windows = padded.unfold(0, width, 1)[: len(video_features)]  # (T, D, width)
    return torch.nn.functional.pairwise_distance(video_features[:, :, None].expand_as(windows).transpose(1, 2),
                                                 windows.transpose(1, 2))


def sync_scores(distances: torch.Tensor, max_offset: int = MAX_OFFSET) -> dict[str, float]:
    """LSE-D, LSE-C and the AV offset in frames from (T, 2 * max_offset + 1) offset distances."""
    mean = distances.mean(dim=0)
    minimum, index = torch.min(mean, 0)
    return {"lse_d": float(minimum), "lse_c": float(torch.median(mean) - minimum),
            "offset": int(max_offset - int(index))}


@torch.no_grad()
def sync_features(network: SyncNet, crops: np.ndarray, audio: np.ndarray, device: torch.device | str,
                  batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and audio features (T', 1024) each for (T, 224, 224, 3) BGR crops and 16 kHz mono audio."""
    coefficients = mfcc(audio)
    usable = min(len(crops), len(audio) // SAMPLES_PER_FRAME)  # syncnet_python counts audio in samples
    count = usable - WINDOW  # windows start at 0 .. usable - 6, as there
    if count < 1:
        raise ValueError(f"too short for SyncNet: {usable} frames with audio, need at least {WINDOW + 1}")
    video = torch.from_numpy(crops[:usable]).permute(3, 0, 1, 2).float()  # (3, T, 224, 224)
    audio_windows = torch.from_numpy(coefficients).float()[None]  # (1, 13, N)
    video_features, audio_features = [], []
    for start in range(0, count, batch_size):
        frames = range(start, min(count, start + batch_size))
        clips = torch.stack([video[:, t:t + WINDOW] for t in frames]).to(device)
        windows = torch.stack([audio_windows[:, :, t * MFCC_PER_FRAME:t * MFCC_PER_FRAME + 20] for t in frames])
        video_features.append(network.forward_video(clips).cpu())
        audio_features.append(network.forward_audio(windows.to(device)).cpu())
    return torch.cat(video_features), torch.cat(audio_features)
