"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016), for float32 inference on the CPU.

Each 4x4 block of output is computed from the 6x6 block of input around it: the input block and the 3x3 kernel are
mapped into a 6x6 transform domain (B^T d B and G g G^T), multiplied element by element and summed over the input
channels (36 matrix products, one per transform element), and mapped back (A^T m A). That is 36 multiplications
for 16 outputs instead of 144, so 4x fewer multiply-accumulates, as one batch of large matrix products.

Where it pays: the renderer's alignment runs four 3x3 convolutions of 256 channels at 64x64 for every reference of
every frame, two thirds of a CPU dub's arithmetic, and oneDNN's direct convolution is already near this CPU's
float32 peak on them; here they take about half the time (bench/winograd.py). With fewer channels the transforms
cost more than the products save, and the renderer's wide convolutions on larger planes (256 -> 128 at 128x128)
gain nothing, so those stay direct (`applies`). The result differs from the direct sum by float32 rounding of the
transforms (about 1e-5 of the output's scale; a whole render step within 0.01 grey levels of oneDNN's,
tests/test_winograd.py).

Used by dubbing on the CPU (configs/inference.yaml `winograd`), never in training: `use_winograd(renderer)` turns
the eligible convolutions of a network into `WinogradConv2d`, which keeps their parameters and state-dict names.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

TILE = 4  # output block side
SPAN = TILE + 2  # input block side (and transform side) for a 3x3 kernel
# Where it was measured faster (bench/winograd.py): with 64 or 32 input channels it is 1.3-2.7x slower, and the
# renderer's only wide 3x3 convolutions on a larger plane (256 -> 128 at 128x128) run no faster (0.99-1.08x).
MIN_CHANNELS = 128
MAX_PIXELS = 64 * 64

# The F(4x4, 3x3) matrices with interpolation points 0, +-1, +-2 and infinity (Lavin and Gray, section 4.2).
_INPUT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
          (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))  # B^T
_KERNEL = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
           (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))  # G
_OUTPUT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))  # A^T
_BIAS_SLOT = 1 * SPAN + 1  # A^T's column 1 is all ones: a bias added there reaches every output once


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) kernel -> (36, O, C) float32: G g G^T per (O, C) pair, computed in float64."""
    g = torch.tensor(_KERNEL, dtype=torch.float64, device=weight.device)
    transformed = torch.einsum("ij,ocjk,lk->iloc", g, weight.detach().double(), g)
    return transformed.reshape(SPAN * SPAN, *weight.shape[:2]).float().contiguous()


@functools.cache
def _side(length: int, device: torch.device) -> torch.Tensor:
    """(6 * length/4, length): B^T applied along one axis of a plane of `length` pixels, to every input block at
    once, the zero padding of 1 folded in; rows ordered (transform element, block)."""
    b_t = torch.tensor(_INPUT, dtype=torch.float64)
    blocks = length // TILE
    side = torch.zeros(SPAN, blocks, length, dtype=torch.float64)
    for block in range(blocks):
        for i in range(SPAN):
            source = block * TILE + i - 1  # the block's input starts one pixel before its output (padding 1)
            if 0 <= source < length:
                side[:, block, source] += b_t[:, i]
    return side.reshape(SPAN * blocks, length).float().to(device)


@functools.cache
def _output_matrix(device: torch.device) -> torch.Tensor:
    a_t = torch.tensor(_OUTPUT, dtype=torch.float64)
    return torch.kron(a_t, a_t).float().to(device)  # (16, 36): A^T m A for a flattened 6x6 m


def transform_input(x: torch.Tensor) -> torch.Tensor:
    """One sample (C, H, W) -> (36, C, H/4 * W/4): B^T d B of every input block, as two matrix products over
    the whole plane (one per axis) and one reordering."""
    channels, height, width = x.shape
    rows, cols = height // TILE, width // TILE
    along_width = (x.reshape(channels * height, width) @ _side(width, x.device).T).view(channels, height, -1)
    both = torch.matmul(_side(height, x.device), along_width)  # (C, 6 * rows, 6 * cols)
    return both.view(channels, SPAN, rows, SPAN, cols).permute(1, 3, 0, 2, 4).reshape(SPAN * SPAN, channels, -1)


def from_transformed(transformed_input: torch.Tensor, transformed_weight: torch.Tensor,
                     bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """Write the convolution of one sample into out (O, H, W), from its transform_input and a transform_weight."""
    products = torch.bmm(transformed_weight, transformed_input)  # (36, O, blocks)
    if bias is not None:
        products[_BIAS_SLOT] += bias[:, None]
    channels, height, width = out.shape
    blocks = (_output_matrix(out.device) @ products.view(SPAN * SPAN, -1)).view(TILE, TILE, channels,
                                                                                 height // TILE, width // TILE)
    out.view(channels, height // TILE, TILE, width // TILE, TILE).copy_(blocks.permute(2, 3, 0, 4, 1))


def conv3x3(x: torch.Tensor, convs: list[WinogradConv2d]) -> tuple[torch.Tensor, ...]:
    """Each conv of `convs` (3x3, stride 1, padding 1) applied to x (B, C, H, W), the input transformed once for
    all of them. One sample at a time: a sample's transformed input (2.25x the sample) then stays in cache
    through its products, and the work per frame does not depend on how references are chunked."""
    outs = [x.new_empty(x.shape[0], conv.out_channels, *x.shape[2:]) for conv in convs]
    for i in range(x.shape[0]):
        transformed = transform_input(x[i])
        for conv, out in zip(convs, outs):
            from_transformed(transformed, conv.transformed_weight(), conv.bias, out[i])
    return tuple(outs)


def applies(x: torch.Tensor) -> bool:
    """Whether a 3x3 convolution of x runs by Winograd: float32 inference on the CPU, outside autocast, tracing
    and compiling, on a plane of sides divisible by 4 and at most MAX_PIXELS, of at least MIN_CHANNELS."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and not torch.is_grad_enabled()
            and x.shape[1] >= MIN_CHANNELS and x.shape[2] % TILE == 0 and x.shape[3] % TILE == 0
            and x.shape[2] * x.shape[3] <= MAX_PIXELS and not _autocast_on_cpu()
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch before 2.4 takes no device type here
        return torch.is_autocast_cpu_enabled()


class WinogradConv2d(nn.Conv2d):
    """An nn.Conv2d (3x3, stride 1, padding 1) that runs by Winograd where `applies`, else as nn.Conv2d. Its
    transformed weight is kept and made again when the weight changes."""

    def transformed_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device)
        cached = getattr(self, "_winograd", None)
        if cached is None or cached[0] != key:
            cached = self._winograd = (key, transform_weight(self.weight))
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if applies(x):
            return conv3x3(x, [self])[0]
        return super().forward(x)


def eligible(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.padding == (1, 1) and module.dilation == (1, 1) and module.groups == 1
            and module.padding_mode == "zeros" and module.in_channels >= MIN_CHANNELS)


def use_winograd(network: nn.Module) -> int:
    """Turn every eligible nn.Conv2d of `network` into a WinogradConv2d in place (parameters, names and state dict
    unchanged); returns how many."""
    count = 0
    for module in network.modules():
        if eligible(module):
            module.__class__ = WinogradConv2d
            count += 1
    return count
