"""Binding Gaussians to mesh triangles (GaussianAvatars).

Every Gaussian has a parent triangle and keeps its position, rotation and scale in that triangle's local frame:

* origin: the triangle's centroid;
* axes (columns of ``R``): ``x`` = the unit first edge ``v1 - v0``, ``z`` = the unit normal
  ``(v1 - v0) x (v2 - v0)``, ``y = z x x`` (a right-handed orthonormal frame);
* scale ``k``: the mean of the first edge's length and the triangle's height over that edge
  (``k = (|e| + 2 area / |e|) / 2``), so that scaling the mesh by ``s`` scales ``k`` by ``s``.

Local -> world: ``mu = k R mu_local + centroid``, ``R_gauss = R R_local``, ``scale = k exp(log_scale_local)``.
Everything is differentiable with respect to the vertices (so per-frame head parameters can be optimised through it)
and batched over frames.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["TriangleFrames", "local_to_world", "quaternion_multiply", "rotation_to_quaternion", "triangle_frames"]

_EPS = 1e-12


class TriangleFrames(NamedTuple):
    """Local frames of F triangles, batched over B frames."""

    origin: torch.Tensor  # (B, F, 3) centroids
    rotation: torch.Tensor  # (B, F, 3, 3) columns = local axes in world coordinates
    scale: torch.Tensor  # (B, F) triangle scale k


def triangle_frames(vertices: torch.Tensor, faces: torch.Tensor) -> TriangleFrames:
    """Local frames of triangles.

    Args:
        vertices: (B, V, 3) posed vertices.
        faces: (F, 3) long vertex indices.
    Returns:
        :class:`TriangleFrames` (origin (B, F, 3), rotation (B, F, 3, 3) whose columns are the local axes in world
        coordinates, scale (B, F)).
    """
    v0, v1, v2 = vertices[:, faces[:, 0]], vertices[:, faces[:, 1]], vertices[:, faces[:, 2]]
    edge = v1 - v0
    cross = torch.linalg.cross(edge, v2 - v0)
    edge_len = edge.norm(dim=-1).clamp_min(_EPS)
    double_area = cross.norm(dim=-1).clamp_min(_EPS)
    x = edge / edge_len[..., None]
    z = cross / double_area[..., None]
    y = torch.linalg.cross(z, x)
    rotation = torch.stack([x, y, z], dim=-1)
    scale = 0.5 * (edge_len + double_area / edge_len)
    return TriangleFrames((v0 + v1 + v2) / 3.0, rotation, scale)


def local_to_world(
    frames: TriangleFrames,
    parent: torch.Tensor,
    xyz: torch.Tensor,
    quats: torch.Tensor,
    log_scales: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World means, rotations and scales of triangle-bound Gaussians.

    Args:
        frames: triangle frames of B posed meshes (:func:`triangle_frames`).
        parent: (N,) long parent triangle of each Gaussian.
        xyz: (N, 3) local positions (in units of the triangle scale).
        quats: (N, 4) local rotations (w, x, y, z), need not be normalised.
        log_scales: (N, 3) local log scales (relative to the triangle scale).
    Returns:
        means (B, N, 3), quats (B, N, 4) unit (w, x, y, z), scales (B, N, 3) — world values per frame.
    """
    origin, rotation, k = frames.origin[:, parent], frames.rotation[:, parent], frames.scale[:, parent]
    means = k[..., None] * (rotation @ xyz[None, :, :, None])[..., 0] + origin
    tri_quats = rotation_to_quaternion(frames.rotation)[:, parent]
    world_quats = quaternion_multiply(tri_quats, torch.nn.functional.normalize(quats, dim=-1)[None])
    scales = k[..., None] * torch.exp(log_scales)[None]
    return means, world_quats, scales


def rotation_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z), with finite gradients everywhere.

    Each quaternion comes from whichever of its four components is largest (the best-conditioned formula); the square
    roots are guarded so that the branches not taken do not turn gradients into NaN.
    """
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    four_sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = four_sq.argmax(dim=-1, keepdim=True)  # (..., 1)
    two_q = torch.gather(four_sq, -1, best).clamp_min(1e-8).sqrt()  # 2 |q_best|
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s10, s02, s21 = m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2]
    rows = torch.stack([
        torch.stack([four_sq[..., 0], d21, d02, d10], -1),
        torch.stack([d21, four_sq[..., 1], s10, s02], -1),
        torch.stack([d02, s10, four_sq[..., 2], s21], -1),
        torch.stack([d10, s02, s21, four_sq[..., 3]], -1),
    ], dim=-2)  # row i = 4 q_i q
    q = torch.gather(rows, -2, best[..., None].expand(*best.shape[:-1], 1, 4))[..., 0, :] / (2.0 * two_q)
    q = torch.nn.functional.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a b`` of (..., 4) quaternions (w, x, y, z) (broadcasting); rotates by b, then a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], dim=-1)
