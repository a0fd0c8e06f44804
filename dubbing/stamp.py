"""A frame's index stamped as a barcode of blocks along its top edge (`live.py --stamp`), so that a recording of
the live stream tells which output frame each of its pictures is, and so which audio belongs with it.

The row holds a white and a black block (the levels the reader thresholds against, so video coding that shifts
brightness or blurs the edges does not flip a bit) and then BITS blocks, the index's bits from the most
significant, white for 1.
"""
from __future__ import annotations

import numpy as np

BITS = 12  # indices modulo 4096: 164 s at 25 fps, far longer than a recording is compared over


def block_size(width: int) -> int:
    """The side of one block: the row spans at most ~90% of the width, and a block stays 4 px or more."""
    return max(4, (9 * width) // (10 * (BITS + 2)))


def stamp(image: np.ndarray, index: int) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 image with `index` (modulo 2**BITS) stamped along its top edge."""
    height, width = image.shape[:2]
    side = block_size(width)
    if height < side or width < side * (BITS + 2):
        raise ValueError(f"a {width}x{height} frame is too small for a {BITS}-bit stamp")
    out = image.copy()
    levels = [255, 0] + [255 if (index >> bit) & 1 else 0 for bit in reversed(range(BITS))]
    for n, level in enumerate(levels):
        out[:side, n * side:(n + 1) * side] = level
    return out


def read_stamp(image: np.ndarray) -> int | None:
    """The index stamped on an (H, W, 3) or (H, W) image, or None where the two reference blocks are not
    told apart (no stamp, or a picture too damaged to read)."""
    grey = image.mean(axis=2) if image.ndim == 3 else image.astype(np.float64)
    side = block_size(grey.shape[1])
    margin = max(side // 4, 1)  # block centres only: coding blurs the edges between blocks
    means = [float(grey[margin:side - margin, n * side + margin:(n + 1) * side - margin].mean())
             for n in range(BITS + 2)]
    white, black = means[0], means[1]
    if white - black < 64:
        return None
    middle = (white + black) / 2
    return int("".join("1" if m > middle else "0" for m in means[2:]), 2)
