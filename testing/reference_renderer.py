"""The official renderer formulation, written plainly, as the reference the fast one is checked against
(tests/test_renderer.py) and timed against (bench/renderer.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.renderer import Renderer, flow_to_grid, mask_lower_half


def per_reference_forward(model: Renderer, face, target_sketches, ref_images, ref_sketches, mels):
    """The alignment network run once per reference, SPADE gamma/beta recomputed every time, the weighted sums
    accumulated reference by reference; then the translation module. Returns (generated, warped image)."""
    flow = model.alignment
    driving = target_sketches.flatten(1, 2)
    small = F.interpolate(driving, size=(64, 64), mode="nearest")
    sums, denominator = [0.0, 0.0, 0.0], 0.0
    for i in range(ref_images.shape[1]):
        image = ref_images[:, i]
        h1 = F.relu(flow.conv1_bn(flow.conv1(torch.cat([image, ref_sketches[:, i]], dim=1))))
        h2 = F.relu(flow.conv2_bn(flow.conv2(h1)))
        x = flow.spade_2(flow.spade_1(h2, small), small)
        x = flow.spade_3(flow.pixel_shuffle(x), driving)
        grid, weight = flow_to_grid(flow.flow(x)), flow.weight_head(x)
        small_grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(64, 64), mode="bilinear").permute(0, 2, 3, 1)
        warped = [F.grid_sample(v, g, align_corners=False) for v, g in ((h1, grid), (h2, small_grid), (image, grid))]
        weights = [weight, F.interpolate(weight, size=(64, 64), mode="nearest"), weight]
        sums = [s + w * v for s, w, v in zip(sums, weights, warped)]
        denominator = denominator + weight
    denominator = denominator + 1e-5
    h1, h2, image = sums[0] / denominator, sums[1] / F.interpolate(denominator, (64, 64)), sums[2] / denominator
    inputs = torch.cat([mask_lower_half(face), target_sketches.flatten(1, 2)], dim=1)
    return model.translation(inputs, image, h1, h2, mels), image
