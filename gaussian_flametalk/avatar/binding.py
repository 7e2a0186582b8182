"""Binding Gaussians to mesh triangles (GaussianAvatars).

Every Gaussian has a parent triangle and keeps its position, rotation and scale in that triangle's local frame:

* origin: the triangle's centroid;
* axes (columns of ``R``): ``x`` = the unit first edge ``v1 - v0``, ``z`` = the unit normal
  ``(v1 - v0) x (v2 - v0)``, ``y = z x x`` (a right-handed orthonormal frame);
* scale ``k``: the mean of the first edge's length and the triangle's height over that edge
  (``k = (|e| + 2 area / |e|) / 2``), so that scaling the mesh by ``s`` scales ``k`` by ``s``.

Local -> world: ``mu = k R mu_local + centroid``, ``R_gauss = R R_local``, ``scale = k exp(log_scale_local)``.
Everything is differentiable with respect to the vertices (so per-frame head parameters can be optimised through it)
and batched over frames. :func:`bind` is the entry point: without gradients on float32 CPU tensors it runs the
compiled kernel (``csrc/bind_cpu.cpp``, the same maths per Gaussian, multithreaded; about 10x faster than the
PyTorch ops, which dominated rendering time in ``gft drive``), else :func:`triangle_frames` + :func:`local_to_world`,
the readable specification the kernel is tested against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..geometry.rotation import matrix_to_quaternion, quaternion_multiply

__all__ = ["TriangleFrames", "bind", "bind_compiled", "local_to_world", "triangle_frames"]

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
    tri_quats = matrix_to_quaternion(frames.rotation)[:, parent]
    world_quats = quaternion_multiply(tri_quats, torch.nn.functional.normalize(quats, dim=-1)[None])
    scales = k[..., None] * torch.exp(log_scales)[None]
    return means, world_quats, scales


def bind_compiled(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    parent: torch.Tensor,
    xyz: torch.Tensor,
    quats: torch.Tensor,
    log_scales: torch.Tensor,
    num_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`local_to_world` of :func:`triangle_frames` in the compiled kernel (no gradients).

    Args:
        vertices: (B, V, 3) float32 CPU; faces: (F, 3) long; parent: (N,) long; xyz (N, 3), quats (N, 4),
            log_scales (N, 3) float32; num_threads: default ``torch.get_num_threads()``.
    Returns:
        means (B, N, 3), quats (B, N, 4), scales (B, N, 3). Raises RuntimeError when the kernel cannot be loaded.
    """
    from .rasterize_cpu import load_library

    for name, t in (("vertices", vertices), ("xyz", xyz), ("quats", quats), ("log_scales", log_scales)):
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"the compiled binding needs float32 CPU tensors, got {name} as {t.dtype} on {t.device}")
    lib = load_library()
    B, V = vertices.shape[:2]
    N = parent.shape[0]
    v = vertices.detach().contiguous()
    f = faces.detach().to(torch.int64).contiguous()
    par = parent.detach().to(torch.int64).contiguous()
    x, q, ls = (t.detach().contiguous() for t in (xyz, quats, log_scales))
    means = torch.empty(B, N, 3)
    world_quats = torch.empty(B, N, 4)
    scales = torch.empty(B, N, 3)
    lib.gft_bind_forward(B, V, v.data_ptr(), f.data_ptr(), N, par.data_ptr(), x.data_ptr(), q.data_ptr(),
                         ls.data_ptr(), means.data_ptr(), world_quats.data_ptr(), scales.data_ptr(),
                         int(num_threads or torch.get_num_threads()))
    return means, world_quats, scales


def bind(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    parent: torch.Tensor,
    xyz: torch.Tensor,
    quats: torch.Tensor,
    log_scales: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World means (B, N, 3), unit quats (B, N, 4) and scales (B, N, 3) of Gaussians bound to the triangles of
    posed meshes ``vertices`` (B, V, 3) (arguments as :func:`local_to_world`, with ``faces`` (F, 3)).

    The compiled kernel when nothing needs a gradient and every tensor is float32 on the CPU (and the kernel loads),
    else the PyTorch reference."""
    tensors = (vertices, xyz, quats, log_scales)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if not needs_grad and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors):
        from .rasterize_cpu import cpu_loadable

        if cpu_loadable()[0]:
            return bind_compiled(vertices, faces, parent, xyz, quats, log_scales)
    return local_to_world(triangle_frames(vertices, faces), parent, xyz, quats, log_scales)
