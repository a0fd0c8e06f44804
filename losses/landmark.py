"""Landmark generator losses (paper eq. 10-11): L1 on the content landmarks plus the velocity loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6  # added to the difference before the norm, as torch's pairwise_distance does (finite gradient at 0)


def velocity_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance between predicted and true frame-to-frame changes of the content landmarks.

    pred, true: (B, T, 2, 57). Each frame's 114 coordinates form one vector; the loss averages
    ||(pred[t+1] - pred[t]) - (true[t+1] - true[t]) + eps||_2 over the batch and the T-1 steps.
    """
    pred_step = (pred[:, 1:] - pred[:, :-1]).flatten(2)  # (B, T-1, 114)
    true_step = (true[:, 1:] - true[:, :-1]).flatten(2)
    return torch.linalg.vector_norm(pred_step - true_step + EPS, dim=-1).mean()


def landmark_loss(pred: torch.Tensor, true: torch.Tensor, velocity_weight: float = 1.0
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1 + velocity_weight * velocity loss on (B, T, 2, 57) content landmarks; returns (total, parts)."""
    l1 = F.l1_loss(pred, true)
    velocity = velocity_loss(pred, true)
    return l1 + velocity_weight * velocity, {"l1": l1.detach(), "velocity": velocity.detach()}
