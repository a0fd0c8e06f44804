"""The renderer (paper section 3.2): alignment of N reference images by motion fields, then translation.

Images are RGB in 0..1, (B, 3, S, S) with S the face size: 128 (the paper's network, and the official weights), 256 or
512. Two steps, so that inference can encode a video's references once:

    refs = renderer.encode_references(ref_images, ref_sketches)     # per reference: h1, h2 (reusable)
    face, warped = renderer.render(face, target_sketches, refs, mels)  # per frame

`renderer(face, target_sketches, ref_images, ref_sketches, mels)` does both. In the alignment module the SPADE
gamma/beta maps depend only on the target sketches, which all N references of a frame share: they are computed
once per frame here, where the official network recomputes them for every reference (docs/method.md, section 7). The
result is the same (tests/test_renderer.py checks it against the per-reference formulation kept in
testing/reference_renderer.py).

Above 128 the network grows at its ends only (docs/method.md, section 9): each doubling of S adds one stride-2 level
in front of both encoders and one upsampling level, with a skip from the encoder, behind the decoder, so the motion
fields, SPADE and AdaIN blocks work at the spatial sizes they have at 128, while the reference image is warped and
blended at S.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from data.face_size import BASE_SIZE, FACE_SIZES
from data.landmarks import SKETCH_WINDOW
from models.layers import AdaINBlock, SPADEBlock, SPADELayer, audio_encoder

DRIVING = 3 * SKETCH_WINDOW  # channels of the target sketches, stacked
STEM_CHANNELS = 32  # channels of the stride-2 input levels above BASE_SIZE

CPU_ROWS_PER_CHUNK = 3  # see reference_chunk
# The alignment's working memory per (frame, reference) pair, an upper bound: a pass keeps about eight maps of
# 256x64x64 or 64x128x128 values alive (the copied reference features, SPADE's outputs, the float32 warps of h1
# and h2 and their weighted copies), 2 to 4 MiB each.
PAIR_BYTES = 24 * 2**20
ALIGNMENT_BUDGET = 6 * 2**30  # bytes of alignment work at once on a GPU (see reference_chunk)


@dataclass
class References:
    """Encoded references: images (B, N, 3, H, W), h1 (B, N, 32, H, W), h2 (B, N, 256, H/2, W/2), and the
    sketches (B, N, 3, H, W) they were encoded with. B may be 1 and then serves every frame of a batch."""

    images: torch.Tensor
    h1: torch.Tensor
    h2: torch.Tensor
    sketches: torch.Tensor

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return self.images, self.h1, self.h2, self.sketches

    def for_batch(self, batch: int) -> References:
        if self.images.shape[0] == batch:
            return self
        if self.images.shape[0] != 1:
            raise ValueError(f"references for {self.images.shape[0]} samples cannot serve a batch of {batch}")
        return References(*(t.expand(batch, *t.shape[1:]) for t in self._tensors()))

    def chunk(self, start: int, stop: int) -> References:
        """References start..stop-1 of every sample."""
        return References(*(t[:, start:stop] for t in self._tensors()))


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """Flow in pixels (B, 2, H, W) -> sampling grid (B, H, W, 2) for grid_sample.

    Pixel i maps to -1 + 2i/(W-1) (the align_corners=True convention), as the official code builds it, while
    grid_sample is then called with align_corners=False; both are kept so that official weights reproduce.
    """
    _, _, height, width = flow.shape
    xs = 2 * (torch.arange(width, device=flow.device, dtype=flow.dtype) / (width - 1)) - 1
    ys = 2 * (torch.arange(height, device=flow.device, dtype=flow.dtype) / (height - 1)) - 1
    base = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1)
    scaled = torch.stack([flow[:, 0] * (2 / (width - 1)), flow[:, 1] * (2 / (height - 1))], dim=-1)
    return base + scaled


def warp(source: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample source (B, C, h, w) at grid (B, H, W, 2), the grid resized bilinearly to (h, w) when it differs."""
    if grid.shape[1:3] != source.shape[2:]:
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=source.shape[2:], mode="bilinear").permute(0, 2, 3, 1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def input_levels(channels: int, face_size: int) -> nn.ModuleList:
    """The stride-2 levels that bring a face_size input down to BASE_SIZE: conv3x3/2, BatchNorm, ReLU each, the
    first from `channels`, the rest from STEM_CHANNELS. None at BASE_SIZE."""
    if face_size not in FACE_SIZES:
        raise ValueError(f"face size {face_size} is not one of {FACE_SIZES}")
    levels = []
    for i in range((face_size // BASE_SIZE).bit_length() - 1):
        conv = nn.Conv2d(channels if i == 0 else STEM_CHANNELS, STEM_CHANNELS, 3, 2, 1, bias=False)
        levels.append(nn.Sequential(conv, nn.BatchNorm2d(STEM_CHANNELS), nn.ReLU()))
    return nn.ModuleList(levels)


def to_size(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, S, S) maps averaged down to (B, C, size, size): area pooling keeps a thin sketch line's mass where
    nearest sampling would drop it. Unchanged when S == size."""
    if maps.shape[-1] == size:
        return maps
    if torch.jit.is_tracing():  # ONNX export: the same bins (S is size times a power of two) as a fixed-kernel pool,
        return F.avg_pool2d(maps, int(maps.shape[-1] // size))  # which the exporter takes without static shapes
    return F.adaptive_avg_pool2d(maps, size)


def at_size(weights: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, s, s) blending weights bilinearly resized to (B, 1, size, size); unchanged when s == size."""
    if weights.shape[-1] == size:
        return weights
    return F.interpolate(weights, size=(int(size), int(size)), mode="bilinear", align_corners=False)


class Alignment(nn.Module):
    """Motion fields and weights per reference, conditioned on the 5 target sketches; warps each reference's
    image and its two feature maps and aggregates them: sum_i w_i x_i / (sum_i w_i + 1e-5)."""

    def __init__(self, hidden: int = 256, face_size: int = BASE_SIZE):
        super().__init__()
        self.stem = input_levels(6, face_size)  # reference image + its sketch, down to BASE_SIZE
        self.conv1 = nn.Conv2d(STEM_CHANNELS if len(self.stem) else 6, 32, 7, 1, 3)
        self.conv1_bn = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 256, 3, 2, 1)
        self.conv2_bn = nn.BatchNorm2d(256)
        self.spade_1 = SPADEBlock(256, DRIVING, hidden)
        self.spade_2 = SPADEBlock(256, DRIVING, hidden)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.spade_3 = SPADEBlock(64, DRIVING, hidden)
        self.flow = nn.Conv2d(64, 2, 7, 1, 3)  # motion field, in pixels
        self.weight_head = nn.Sequential(nn.Conv2d(64, 32, 7, 1, 3), nn.ReLU(), nn.Conv2d(32, 1, 7, 1, 3), nn.Sigmoid())

    def encode_references(self, images: torch.Tensor, sketches: torch.Tensor) -> References:
        """(B, N, 3, H, W) images and sketches -> References. BatchNorm runs over all B*N references at once."""
        batch, count = images.shape[:2]
        x = torch.cat([images, sketches], dim=2).flatten(0, 1)
        for level in self.stem:
            x = level(x)
        h1 = F.relu(self.conv1_bn(self.conv1(x)))
        h2 = F.relu(self.conv2_bn(self.conv2(h1)))
        return References(images, h1.unflatten(0, (batch, count)), h2.unflatten(0, (batch, count)), sketches)

    def forward(self, refs: References, target_sketches: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """target_sketches (B, 5, 3, S, S) -> aggregated warped h1 (B, 32, 128, 128), h2 (B, 256, 64, 64) and image
        (B, 3, S, S)."""
        batch = target_sketches.shape[0]
        refs = refs.for_batch(batch)
        count = refs.h1.shape[1]
        driving = to_size(target_sketches.flatten(1, 2), refs.h1.shape[-1])  # (B, DRIVING, 128, 128)
        small = F.interpolate(driving, size=refs.h2.shape[-2:], mode="nearest")
        # Shared by the N references of each frame: computed once per frame.
        modulation = (self.spade_1.modulation_of(small), self.spade_2.modulation_of(small),
                      self.spade_3.modulation_of(driving))
        step = reference_chunk(batch, count, target_sketches.device)
        sums = None
        for start in range(0, count, step):
            part = self._weighted(refs if step >= count else refs.chunk(start, start + step), modulation)
            sums = part if sums is None else [a + b for a, b in zip(sums, part)]
        h1, h2, image, weights = sums
        total = weights + 1e-5
        small_total = F.interpolate(total, size=refs.h2.shape[-2:], mode="nearest")
        return h1 / total, h2 / small_total, image / at_size(total, image.shape[-1])

    def _weighted(self, refs: References, modulation) -> tuple[torch.Tensor, ...]:
        """For a chunk of n references: sum_i w_i x_i for h1, h2 and the image, and sum_i w_i (all (B, C, h, w))."""
        batch, count = refs.h1.shape[:2]
        x = self.spade_1(refs.h2.flatten(0, 1), modulation=modulation[0])
        x = self.spade_2(x, modulation=modulation[1])
        x = self.spade_3(self.pixel_shuffle(x), modulation=modulation[2])
        flow = self.flow(x)  # (B*n, 2, H, W), in pixels
        h1, h2, image = warp_in_float32(flow, (refs.h1.flatten(0, 1), refs.h2.flatten(0, 1),
                                               refs.images.flatten(0, 1)))
        weight = widened(self.weight_head(x))  # (B*n, 1, 128, 128)
        small_weight = F.interpolate(weight, size=refs.h2.shape[-2:], mode="nearest")
        terms = (h1 * weight, h2 * small_weight, image * at_size(weight, image.shape[-1]), weight)
        return tuple(t.unflatten(0, (batch, count)).sum(dim=1) for t in terms)


def warp_in_float32(flow: torch.Tensor, sources: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Each source (B, C, h, w) warped by the flow (B, 2, H, W) in pixels, in float32 whatever autocast is on:
    the grid and the sampling run in `full_precision`, so the result is float32 (sums over references too; float64
    in a float64 network)."""
    with full_precision(flow.device):
        grid = flow_to_grid(widened(flow))  # (B, H, W, 2)
        return [warp(widened(source), grid) for source in sources]


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float32, or as it is when wider (a float64 network, as bench/onnx_gap.py runs one)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def full_precision(device: torch.device):
    """A region where autocast is off: the motion field's grid and every warp run in float32 under bf16 too.

    A bf16 grid holds positions in [-1, 1] with 8 bits of mantissa, about 0.25 px at 128 px, so each warp would
    sample a quarter pixel off (docs/method.md, 'Mixed precision'). The official network runs in float32. Autocast's own
    rule for grid_sample differs by device (CPU casts it to float32, CUDA promotes to the widest input), so the
    inputs are cast here instead of relying on either.
    """
    return torch.autocast(device.type, enabled=False)


def reference_chunk(batch: int, count: int, device: torch.device) -> int:
    """References per alignment pass. On CPU, at most CPU_ROWS_PER_CHUNK (frame, reference) pairs at a time:
    every per-reference tensor is then a few MB, which glibc serves from its heap instead of fresh zeroed pages
    (a 25-reference pass allocates 100 MB tensors, and page faults cost more than the arithmetic beside the
    convolutions) and which stays in cache between layers (timings: bench/README.md). Elsewhere, as many pairs as
    ALIGNMENT_BUDGET holds at PAIR_BYTES each, so that a long template's references (refs=fifth) never need more
    than the budget at once, whatever their number."""
    if torch.jit.is_tracing():  # an exported graph (ONNX) takes all references in one pass: any count then works
        return count
    rows = CPU_ROWS_PER_CHUNK if device.type == "cpu" else ALIGNMENT_BUDGET // PAIR_BYTES
    return max(1, min(count, rows // batch))


class Translation(nn.Module):
    """Lower-half-masked target face + 5 target sketches -> face, modulated by the aggregated warped features
    (SPADE) and the audio (AdaIN), with its own audio encoder (ends in ReLU)."""

    def __init__(self, face_size: int = BASE_SIZE):
        super().__init__()
        self.audio_encoder = audio_encoder(last_activation="relu")
        self.stem = input_levels(3 + DRIVING, face_size)
        self.conv1 = nn.Conv2d(STEM_CHANNELS if len(self.stem) else 3 + DRIVING, 32, 7, 1, 3, bias=False)
        self.conv1_bn = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 256, 3, 2, 1, bias=False)
        self.conv2_bn = nn.BatchNorm2d(256)
        self.spade_1 = SPADEBlock(256, 256)
        self.adain_1 = AdaINBlock(256, 512)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.spade_2 = SPADEBlock(64, 32)
        self.adain_2 = AdaINBlock(64, 512)
        self.spade_3 = SPADEBlock(64, 3)
        # Above BASE_SIZE, one upsampling level per stride-2 input level, each fed the input level's skip.
        skips = [3 + DRIVING] + [STEM_CHANNELS] * (len(self.stem) - 1) if self.stem else []  # at S .. 2 * BASE_SIZE
        self.up = nn.ModuleList(UpLevel(64 if i == 0 else UP_CHANNELS, skip, UP_CHANNELS)
                                for i, skip in enumerate(reversed(skips)))
        self.conv_last = nn.Conv2d(UP_CHANNELS if len(self.up) else 64, 3, 7, 1, 3, bias=False)

    def forward(self, masked_and_sketches: torch.Tensor, warped_image: torch.Tensor, warped_h1: torch.Tensor,
                warped_h2: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        skips, x = [], masked_and_sketches
        for level in self.stem:
            skips.append(x)
            x = level(x)
        x = F.relu(self.conv1_bn(self.conv1(x)))
        x = F.relu(self.conv2_bn(self.conv2(x)))
        audio = self.audio_encoder(mels).flatten(1)  # (B, 512)
        x = self.adain_1(self.spade_1(x, warped_h2), audio)
        x = self.adain_2(self.spade_2(self.pixel_shuffle(x), warped_h1), audio)
        x = self.spade_3(x, to_size(warped_image, x.shape[-1]))
        if self.up:
            x = F.leaky_relu(x, 0.01)
            for level, skip in zip(self.up, reversed(skips)):
                x = level(x, skip, warped_image)
        return torch.sigmoid(self.conv_last(F.leaky_relu(x, 0.01)))  # slope 0.01 here, as the official


UP_CHANNELS = 32  # channels of the upsampling levels above BASE_SIZE


class UpLevel(nn.Module):
    """One upsampling level above BASE_SIZE: nearest x2, concatenated with the encoder's input at that size, a 3x3
    convolution, then a SPADE layer conditioned on the warped reference image at that size: the skip carries the
    target's unmasked upper face and the modulation the references' mouth texture at full resolution."""

    def __init__(self, channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels + skip_channels, out_channels, 3, 1, 1)
        self.norm = SPADELayer(out_channels, 3, hidden=out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, warped_image: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.conv(torch.cat([x, skip], dim=1))
        return F.leaky_relu(self.norm(x, to_size(warped_image, x.shape[-1])), 0.2)


def mask_lower_half(face: torch.Tensor) -> torch.Tensor:
    """Copy of (B, 3, H, W) faces with rows H/2.. set to 0."""
    masked = face.clone()
    masked[:, :, face.shape[2] // 2:] = 0
    return masked


class Renderer(nn.Module):
    """renderer(face, target_sketches, ref_images, ref_sketches, mels) -> (generated face, warped reference).

    face (B, 3, S, S) the unmasked target face (masked here); target_sketches (B, 5, 3, S, S);
    ref_images, ref_sketches (B, N, 3, S, S), any N >= 1; mels (B, 1, 80, 16). RGB in 0..1. S is `face_size`.
    """

    def __init__(self, face_size: int = BASE_SIZE):
        super().__init__()
        self.face_size = face_size
        self.alignment = Alignment(face_size=face_size)
        self.translation = Translation(face_size=face_size)

    def encode_references(self, ref_images: torch.Tensor, ref_sketches: torch.Tensor) -> References:
        return self.alignment.encode_references(ref_images, ref_sketches)

    def render(self, face: torch.Tensor, target_sketches: torch.Tensor, refs: References, mels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        warped_h1, warped_h2, warped_image = self.alignment(refs, target_sketches)
        inputs = torch.cat([mask_lower_half(face), target_sketches.flatten(1, 2)], dim=1)  # (B, 18, H, W)
        return self.translation(inputs, warped_image, warped_h1, warped_h2, mels), warped_image

    def forward(self, face: torch.Tensor, target_sketches: torch.Tensor, ref_images: torch.Tensor,
                ref_sketches: torch.Tensor, mels: torch.Tensor, warp_only: bool = False
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """warp_only: run the alignment module alone and return (None, warped) (the warm-up epochs need no more)."""
        refs = self.encode_references(ref_images, ref_sketches)
        if warp_only:
            return None, self.alignment(refs, target_sketches)[2]
        return self.render(face, target_sketches, refs, mels)
