"""FlameTalk losses in vertex space, and the motion <-> head-parameter mapping.

Ground truth is "augmented": the tracked expression (and jaw, where the model has a jaw joint) on the subject's
identity (its shape), with everything else (rotation, neck, eyes, translation) from the template, i.e. zero.
Shapes: motion (B, T, M) with M = ``HeadModel.motion_dim``; vertices (B, T, N, 3) for N chosen vertices.
"""

from __future__ import annotations

import torch

from ..headmodel import HeadModel, HeadParams

__all__ = ["motion_from_params", "motion_to_kwargs", "motion_vertices", "trend_loss", "velocity_loss", "vertex_loss",
           "lip_vertex_error", "mouth_opening"]


def motion_from_params(params: HeadParams, model: HeadModel) -> torch.Tensor:
    """(T, M) motion vector of tracked parameters: expression, then jaw where the model has one."""
    parts = [params.expression] + ([params.jaw] if "jaw" in model.pose_parts else [])
    return torch.cat(parts, dim=-1)


def motion_to_kwargs(motion: torch.Tensor, model: HeadModel) -> dict[str, torch.Tensor]:
    """(N, M) motion -> ``expression=``/``jaw=`` keyword arguments of the head model."""
    out = {"expression": motion[:, : model.n_expression]}
    if "jaw" in model.pose_parts:
        out["jaw"] = motion[:, model.n_expression: model.n_expression + 3]
    return out


def motion_vertices(model: HeadModel, motion: torch.Tensor, shape: torch.Tensor,
                    vertex_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Vertices of motion (B, T, M) on identity ``shape`` (n_shape,), template pose: (B, T, N, 3)."""
    b, t, m = motion.shape
    flat = motion.reshape(b * t, m)
    verts = model(shape=shape.to(flat).expand(b * t, -1), **motion_to_kwargs(flat, model), vertex_ids=vertex_ids)
    return verts.reshape(b, t, verts.shape[1], 3)


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


def lip_vertex_error(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """LVE: per frame the largest L2 distance over lip vertices, averaged over frames. (..., N_lips, 3) -> scalar."""
    return (pred - true).norm(dim=-1).amax(dim=-1).mean()


def mouth_opening(model: HeadModel, motion: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Inner-lip gap (iBUG 62 to 66) in metres for motion (T, M): (T,)."""
    kw = motion_to_kwargs(motion, model)
    lm = model.forward_landmarks(shape=shape.to(motion).expand(motion.shape[0], -1), **kw)
    return (lm[:, 66] - lm[:, 62]).norm(dim=-1)
