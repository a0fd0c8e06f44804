"""LPIPS (Zhang et al., 2018) with the AlexNet trunk, as the `lpips` package computes it (version 0.1).

Definition: both RGB images are mapped from 0..1 to [-1, 1] and through the package's scaling layer, AlexNet
features are taken after relu1..relu5, unit-normalised along channels, their squared differences weighted by the
package's learned lin layers (1x1 convolutions shipped inside the lpips wheel) and averaged over positions; the
five layers' values are summed. Identical images give 0; larger is less similar. The AlexNet trunk is torchvision's
ImageNet file (`alexnet-owt-7be5be79.pth`), resolved by metrics/weights.py rather than by torchvision itself.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from metrics.weights import LPIPS_ALEXNET
from model_files.weights import frozen, load_exactly, read_state, resolve


def load_lpips(path: str | Path | None = None, download: bool = True) -> torch.nn.Module:
    """The lpips package's LPIPS(net='alex') with its lin layers and AlexNet weights from `path` (or the hub cache)."""
    import lpips  # the package prints and warns on construction; keep that out of reports

    file = resolve(LPIPS_ALEXNET, path, download)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's 'pretrained' deprecation inside lpips
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    from torchvision.models import alexnet

    trunk = alexnet(weights=None)
    load_exactly(trunk, read_state(file, LPIPS_ALEXNET.what), file, LPIPS_ALEXNET.what)
    # lpips keeps AlexNet's feature layers under their torchvision indices, split over five slices.
    for index, layer in enumerate(trunk.features[:12]):
        for slice_ in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
            if str(index) in slice_._modules:
                slice_._modules[str(index)].load_state_dict(layer.state_dict())
    return frozen(model)


@torch.no_grad()
def lpips_distance(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS of (B, 3, H, W) RGB images in 0..1: (B,) float64."""
    return model(x.float(), y.float(), normalize=True).flatten().double()
