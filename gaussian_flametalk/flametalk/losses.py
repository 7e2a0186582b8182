"""FlameTalk's training losses in vertex space: vertex, velocity and StyleSpeaker's multi-order trend loss.

Vertices (B, T, N, 3) of the predicted and the augmented ground-truth motion
(:mod:`gaussian_flametalk.headmodel.motion`).
"""

from __future__ import annotations

import torch

__all__ = ["trend_loss", "velocity_loss", "vertex_loss"]


def vertex_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean squared vertex distance (B, T, N, 3) x 2 -> scalar (m^2)."""
    return ((pred - true) ** 2).sum(-1).mean()


def velocity_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean squared error of frame-to-frame vertex displacements: scalar."""
    return vertex_loss(pred[:, 1:] - pred[:, :-1], true[:, 1:] - true[:, :-1])


def trend_loss(pred: torch.Tensor, true: torch.Tensor, orders: int = 3) -> torch.Tensor:
    """StyleSpeaker's multi-order trend loss: for r = 1..R, the mean squared error of the displacements over r frames,
    (V_{t+r} - V_t), averaged over the orders (r = 1 is the velocity loss). Scalar."""
    orders = min(orders, pred.shape[1] - 1)
    terms = [vertex_loss(pred[:, r:] - pred[:, :-r], true[:, r:] - true[:, :-r]) for r in range(1, orders + 1)]
    return torch.stack(terms).mean()
