"""CSIM: identity similarity of generated and real faces with ArcFace (iresnet100, insightface arcface_torch).

Definition: for each frame pair, the face is cut out of both frames with the same box, the crop box of the real
frame's FaceMesh landmarks (data/crop.py's rule), resized to 112x112 without alignment, kept RGB and scaled to
[-1, 1] ((x / 255 - 0.5) / 0.5); each crop is embedded by iresnet100 (512-d) and CSIM is the cosine similarity of
the two embeddings, averaged over the frames where the real frame has a face. 1 means the same embedding.
The iplap protocol (metrics/protocols.py) follows the ViCo baseline's compute_csim.py instead: each whole frame
resized to 112x112 (cv2.resize, bilinear), no face cut, the same scaling and network; and the mean over every
(real frame, generated frame) pair, not over matching frames: that script averages sklearn's full cosine matrix.
That mean is the dot product of the mean unit embeddings of the two sets (mean_pair_similarity).
The network below has the layer structure of arcface_torch's iresnet100, so its model-zoo `backbone.pth`
state dict loads tensor for tensor.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.crop import crop_face
from data.tensors import image_tensor
from metrics.weights import ARCFACE_R100
from model_files.weights import frozen, load_exactly, read_state, resolve

FACE_SIZE = 112
IRESNET100_BLOCKS = (3, 13, 30, 3)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)


class ResidualUnit(nn.Module):
    """Improved residual unit: BN, conv, BN, PReLU, conv (strided), BN, plus a shortcut (1x1 conv + BN on change)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """(B, 3, 112, 112) RGB in [-1, 1] -> (B, 512) face embedding (not normalised)."""

    def __init__(self, blocks: tuple[int, ...] = IRESNET100_BLOCKS, embedding: int = 512):
        super().__init__()
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        channels = 64
        for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            units = [ResidualUnit(channels, width, stride=2)] + [ResidualUnit(width, width) for _ in range(count - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*units))
            channels = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, embedding)  # 112 / 2^4 = 7
        self.features = nn.BatchNorm1d(embedding, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, 7, 7)
        return self.features(self.fc(self.dropout(torch.flatten(self.bn2(x), 1))))


def load_arcface(path: str | Path | None = None, download: bool = True) -> IResNet:
    """iresnet100 with arcface_torch weights from `path` (or the hub cache), frozen."""
    file = resolve(ARCFACE_R100, path, download)
    network = IResNet()
    load_exactly(network, read_state(file, ARCFACE_R100.what), file, ARCFACE_R100.what)
    return frozen(network)


def face_batch(frames: list[np.ndarray], boxes: list[np.ndarray]) -> torch.Tensor:
    """(B, 3, 112, 112) float32 in [-1, 1]: each RGB uint8 frame cut by its box and resized to 112x112."""
    return image_tensor([crop_face(frame, box, FACE_SIZE) for frame, box in zip(frames, boxes)]).sub_(0.5).div_(0.5)


def frame_batch(frames: list[np.ndarray]) -> torch.Tensor:
    """(B, 3, 112, 112) float32 in [-1, 1]: each whole RGB uint8 frame resized to 112x112 (the iplap framing)."""
    return image_tensor([cv2.resize(frame, (FACE_SIZE, FACE_SIZE)) for frame in frames]).sub_(0.5).div_(0.5)


@torch.no_grad()
def unit_embeddings(network: IResNet, faces: torch.Tensor) -> torch.Tensor:
    """(B, 512) float64 embeddings of (B, 3, 112, 112) inputs in [-1, 1], each scaled to unit length."""
    return F.normalize(network(faces.float()).double(), dim=1)


def mean_pair_similarity(real_sum: np.ndarray, real_count: int, generated_sum: np.ndarray,
                         generated_count: int) -> float:
    """The mean cosine similarity over all (real, generated) pairs, from each set's sum of unit embeddings."""
    return float(np.dot(real_sum / real_count, generated_sum / generated_count))


@torch.no_grad()
def identity_similarity(network: IResNet, generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the embeddings of (B, 3, 112, 112) crops in [-1, 1]: (B,) float64."""
    both = network(torch.cat([generated, real]).float()).double()
    return F.cosine_similarity(both[: len(generated)], both[len(generated):], dim=1)
