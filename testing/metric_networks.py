"""Random-weight metric networks saved as weight files, for tests only (never for a reported number)."""
from __future__ import annotations

from pathlib import Path

import torch


def calibrated(network: torch.nn.Module, *inputs: torch.Tensor, forward=None) -> torch.nn.Module:
    """Set every BatchNorm's running statistics from `inputs` so a random deep network's features do not vanish."""
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over this one pass
    network.train()
    with torch.no_grad():
        (forward or network)(*inputs)
    return network.eval()


def save_random_weights(folder: Path, frames: torch.Tensor | None = None) -> dict[str, Path]:
    """Random LPIPS AlexNet, FID Inception, iresnet100 and SyncNet state dicts under `folder`: metric -> path.

    frames: (B, 3, H, W) RGB in 0..1 to calibrate the FID Inception with (its random features vanish otherwise).
    """
    from torchvision.models import alexnet

    from metrics.fid import FIDFeatures, fid_inception_network
    from metrics.identity import IResNet
    from metrics.sync import SyncNet

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    inception = fid_inception_network()
    if frames is not None:
        calibrated(inception, frames, forward=FIDFeatures(inception))
    networks = {"lpips": alexnet(weights=None), "fid": inception, "csim": IResNet(), "sync": SyncNet()}
    paths = {}
    for metric, network in networks.items():
        paths[metric] = folder / f"{metric}.pth"
        state = network.state_dict()
        if metric == "sync":  # syncnet_v2.model predates BatchNorm batch counters
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        torch.save(state, paths[metric])
    return paths
