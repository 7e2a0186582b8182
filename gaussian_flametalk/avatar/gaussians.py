"""The avatar's Gaussians, bound to the triangles of a head mesh (GaussianAvatars), and their adaptive density control.

Parameters per Gaussian (all in the parent triangle's local frame, see :mod:`.binding`):

* ``xyz`` (N, 3) position in units of the triangle scale; ``rotation`` (N, 4) quaternion (w, x, y, z);
  ``log_scale`` (N, 3) log of the standard deviations relative to the triangle scale;
* ``opacity`` (N,) logit; ``sh_dc`` (N, 1, 3) and ``sh_rest`` (N, 15, 3) spherical-harmonics colour (degree 3,
  gsplat's basis, :mod:`.sh`);
* ``parent`` (N,) long buffer: the parent triangle (index into the head model's ``faces``).

Invariant: the set of triangles with at least one Gaussian never shrinks — densified children inherit their parent's
triangle and pruning keeps, for a triangle that would lose all its Gaussians, the most opaque one.

PLY: :func:`save_ply` writes the standard 3D Gaussian Splatting vertex layout (``x y z nx ny nz f_dc_0..2
f_rest_0..44 opacity scale_0..2 rot_0..3``; world values of one frame; ``f_rest`` channel-major, opacity as a logit,
scales as logs) plus the binding: ``parent_triangle`` (int) and the local parameters ``local_x..z``,
``local_rot_0..3``, ``local_scale_0..2`` — so :func:`load_ply` gives back exactly the avatar that was saved.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..geometry.rotation import quaternion_to_matrix
from .binding import bind
from .sh import MAX_SH_DEGREE, num_sh_bases, rgb_to_sh

__all__ = [
    "FIELDS",
    "BoundGaussians",
    "DensifyStats",
    "densify_and_prune",
    "load_ply",
    "read_ply",
    "region_triangles",
    "reset_opacity",
    "save_ply",
]

#: Names of the optimised per-Gaussian tensors (also the optimizer's param-group names).
FIELDS = ("xyz", "rotation", "log_scale", "opacity", "sh_dc", "sh_rest")
N_REST = num_sh_bases(MAX_SH_DEGREE) - 1


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def region_triangles(faces: torch.Tensor, regions: dict[str, torch.Tensor], names: tuple[str, ...]) -> torch.Tensor:
    """Triangles whose three vertices all lie in the union of the named vertex regions.

    Args:
        faces: (F, 3) long; regions: name -> vertex indices; names: the regions to keep (empty = every triangle).
    Returns:
        (T,) long triangle indices, ascending.
    """
    if not names:
        return torch.arange(faces.shape[0], device=faces.device)
    unknown = [n for n in names if n not in regions]
    if unknown:
        raise ValueError(f"unknown region(s) {unknown}; the head model has {list(regions)}")
    keep = torch.zeros(int(faces.max()) + 1, dtype=torch.bool, device=faces.device)
    for n in names:
        keep[regions[n].to(faces.device)] = True
    return torch.nonzero(keep[faces].all(dim=1))[:, 0]


class BoundGaussians(nn.Module):
    """Triangle-bound Gaussians (fields in the module docstring)."""

    parent: torch.Tensor

    def __init__(self, parent: torch.Tensor, n_faces: int, **fields: torch.Tensor) -> None:
        super().__init__()
        missing = [f for f in FIELDS if f not in fields]
        if missing:
            raise ValueError(f"BoundGaussians needs {missing}")
        if parent.numel() and (int(parent.min()) < 0 or int(parent.max()) >= n_faces):
            raise ValueError(f"parent triangles must be in 0..{n_faces - 1}")
        self.n_faces = n_faces
        self.register_buffer("parent", parent.long())
        for f in FIELDS:
            setattr(self, f, nn.Parameter(fields[f].detach().clone()))

    @classmethod
    def init(
        cls,
        triangles: torch.Tensor,
        n_faces: int,
        colors: torch.Tensor | None = None,
        scale: float = 0.5,
        opacity: float = 0.1,
    ) -> BoundGaussians:
        """One Gaussian per triangle at its centroid, aligned with it.

        Args:
            triangles: (T,) long triangle indices; n_faces: the mesh's triangle count.
            colors: (T, 3) initial RGB in [0, 1] (mid-grey when None).
            scale: initial standard deviation relative to the triangle scale; opacity: initial opacity.
        """
        t, dev = triangles.shape[0], triangles.device
        rgb = colors if colors is not None else torch.full((t, 3), 0.5, device=dev)
        return cls(
            triangles,
            n_faces,
            xyz=torch.zeros(t, 3, device=dev),
            rotation=torch.tensor([1.0, 0.0, 0.0, 0.0], device=dev).repeat(t, 1),
            log_scale=torch.full((t, 3), math.log(scale), device=dev),
            opacity=torch.full((t,), _logit(opacity), device=dev),
            sh_dc=rgb_to_sh(rgb.float())[:, None, :],
            sh_rest=torch.zeros(t, N_REST, 3, device=dev),
        )

    def __len__(self) -> int:
        return self.parent.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Detached copies of every field plus ``parent`` (for checkpoints)."""
        out = {f: getattr(self, f).detach().clone() for f in FIELDS}
        out["parent"] = self.parent.clone()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], n_faces: int) -> BoundGaussians:
        return cls(tensors["parent"], n_faces, **{f: tensors[f] for f in FIELDS})

    def world(
        self, vertices: torch.Tensor, faces: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """World Gaussians on B posed meshes.

        Args:
            vertices: (B, V, 3); faces: (F, 3) long.
        Returns:
            means (B, N, 3), quats (B, N, 4), scales (B, N, 3), opacities (N,), SH coefficients (N, 16, 3).
        """
        means, quats, scales = self.pose(vertices, faces)
        return (means, quats, scales, *self.appearance())

    def pose(self, vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """World means (B, N, 3), quats (B, N, 4) and scales (B, N, 3) on B posed meshes (B, V, 3); faces (F, 3)."""
        if faces.shape[0] != self.n_faces:
            raise ValueError(f"the avatar is bound to a mesh of {self.n_faces} triangles, got {faces.shape[0]}")
        return bind(vertices, faces, self.parent, self.xyz, self.rotation, self.log_scale)

    def appearance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What does not depend on the pose: opacities (N,) and SH coefficients (N, 16, 3)."""
        return torch.sigmoid(self.opacity), torch.cat([self.sh_dc, self.sh_rest], dim=1)

    def world_max_scale(self, face_scale: torch.Tensor) -> torch.Tensor:
        """(N,) largest world standard deviation given (F,) triangle scales of a reference mesh."""
        return face_scale[self.parent] * torch.exp(self.log_scale.detach()).amax(dim=-1)

    def covered_triangles(self) -> torch.Tensor:
        """(T,) the triangles that hold at least one Gaussian, ascending."""
        return torch.unique(self.parent)


# ----------------------------------------------------------------------------------------------------------------
# Adaptive density control


class DensifyStats:
    """Accumulated screen-space gradient norms (3DGS): the mean over the views where a Gaussian was visible of
    ``|dL/d means2d|`` in normalised device units (pixels times half the image size)."""

    def __init__(self, n: int, device: torch.device | str) -> None:
        self.grad = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)

    def update(self, means2d_grad: torch.Tensor, visible: torch.Tensor, width: int, height: int) -> None:
        """means2d_grad: (C, N, 2) pixel gradients; visible: (C, N) bool."""
        g = means2d_grad.detach() * torch.tensor([width / 2.0, height / 2.0], device=means2d_grad.device)
        g = g * means2d_grad.shape[0]
        self.grad += (g.norm(dim=-1) * visible).sum(dim=0)
        self.count += visible.sum(dim=0)

    def mean(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.grad / self.count.clamp_min(1), torch.zeros_like(self.grad))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"grad": self.grad.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.grad, self.count = state["grad"].clone(), state["count"].clone()


def _edit(
    gaussians: BoundGaussians,
    optimizer: torch.optim.Optimizer,
    keep: torch.Tensor,
    extra: dict[str, torch.Tensor],
    extra_parent: torch.Tensor,
) -> None:
    """Keep the Gaussians where ``keep`` (N,) bool, append ``extra`` (field -> (M, ...)) with fresh Adam moments."""
    for group in optimizer.param_groups:
        name = group.get("name")
        if name not in FIELDS:
            continue
        old = group["params"][0]
        new = nn.Parameter(torch.cat([old.detach()[keep], extra[name].detach()], dim=0))
        state = optimizer.state.pop(old, None)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = torch.cat([state[key][keep], torch.zeros_like(extra[name])], dim=0)
            optimizer.state[new] = state
        group["params"][0] = new
        setattr(gaussians, name, new)
    gaussians.parent = torch.cat([gaussians.parent[keep], extra_parent])


def densify_and_prune(
    gaussians: BoundGaussians,
    optimizer: torch.optim.Optimizer,
    stats: DensifyStats,
    face_scale: torch.Tensor,
    grad_threshold: float,
    size_threshold: float,
    min_opacity: float,
    max_size: float,
    generator: torch.Generator,
) -> dict[str, int]:
    """One 3DGS density-control step: clone small / split large Gaussians with a large mean screen-space gradient,
    then prune transparent or too large ones, never leaving a covered triangle empty.

    Args:
        gaussians, optimizer: the avatar and its Adam (param groups named by :data:`FIELDS`); both edited in place.
        stats: the accumulated gradients (reset here).
        face_scale: (F,) triangle scales of a reference mesh (metres), for world sizes.
        grad_threshold: mean gradient norm above which a Gaussian is densified.
        size_threshold: world size (max std, metres) above which it is split rather than cloned.
        min_opacity, max_size: prune below this opacity or above this world size.
        generator: for the split positions.
    Returns:
        counts {"cloned", "split", "pruned", "n"}.
    """
    grads = stats.mean()
    size = gaussians.world_max_scale(face_scale)
    hot = grads >= grad_threshold
    clone = hot & (size <= size_threshold)
    split = hot & (size > size_threshold)

    fields = {f: getattr(gaussians, f).detach() for f in FIELDS}
    extra = {f: [fields[f][clone]] for f in FIELDS}
    parents = [gaussians.parent[clone], gaussians.parent[split].repeat(2)]
    std = torch.exp(fields["log_scale"][split]).repeat(2, 1)
    rot = quaternion_to_matrix(fields["rotation"][split]).repeat(2, 1, 1)
    noise = torch.randn(std.shape, generator=generator, device=generator.device).to(std.device)
    for f in FIELDS:
        if f == "xyz":
            extra[f].append(fields["xyz"][split].repeat(2, 1) + (rot @ (noise * std)[..., None])[..., 0])
        elif f == "log_scale":
            extra[f].append(fields["log_scale"][split].repeat(2, 1) - math.log(1.6))
        else:
            extra[f].append(fields[f][split].repeat(2, *([1] * (fields[f].dim() - 1))))
    _edit(gaussians, optimizer, ~split, {f: torch.cat(v) for f, v in extra.items()}, torch.cat(parents))

    opacity = torch.sigmoid(gaussians.opacity.detach())
    drop = (opacity < min_opacity) | (gaussians.world_max_scale(face_scale) > max_size)
    drop &= ~_best_per_triangle(gaussians.parent, opacity, drop, gaussians.n_faces)
    n_pruned = int(drop.sum())
    _edit(gaussians, optimizer, ~drop, {f: getattr(gaussians, f).detach()[:0] for f in FIELDS},
          gaussians.parent[:0])
    stats.grad = torch.zeros(len(gaussians), device=stats.grad.device)
    stats.count = torch.zeros(len(gaussians), device=stats.count.device)
    return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": n_pruned, "n": len(gaussians)}


def _best_per_triangle(parent: torch.Tensor, score: torch.Tensor, drop: torch.Tensor, n_faces: int) -> torch.Tensor:
    """(N,) bool: for every triangle all of whose Gaussians are in ``drop``, its highest-scoring Gaussian (ties: the
    first)."""
    kept = torch.zeros(n_faces, device=parent.device).index_add_(0, parent, (~drop).float())
    orphan = drop & (kept[parent] == 0)
    best = torch.full((n_faces,), -1.0, device=parent.device).scatter_reduce(
        0, parent[orphan], score[orphan], reduce="amax"
    )
    cand = orphan & (score == best[parent])
    # one per triangle even when scores tie: the first candidate index of each triangle
    idx = torch.nonzero(cand)[:, 0]
    first = torch.full((n_faces,), parent.shape[0], device=parent.device).scatter_reduce(
        0, parent[idx], idx, reduce="amin"
    )
    out = torch.zeros_like(drop)
    out[first[first < parent.shape[0]]] = True
    return out


def reset_opacity(gaussians: BoundGaussians, optimizer: torch.optim.Optimizer, ceiling: float = 0.01) -> None:
    """Clamp every opacity to at most ``ceiling`` and zero its Adam moments (3DGS's opacity reset)."""
    with torch.no_grad():
        gaussians.opacity.clamp_(max=_logit(ceiling))
    for group in optimizer.param_groups:
        if group.get("name") == "opacity":
            state = optimizer.state.get(group["params"][0])
            if state:
                state["exp_avg"].zero_()
                state["exp_avg_sq"].zero_()


# ----------------------------------------------------------------------------------------------------------------
# PLY


def _ply_names() -> list[str]:
    return (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(3 * N_REST)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
        + ["local_x", "local_y", "local_z"]
        + [f"local_rot_{i}" for i in range(4)]
        + [f"local_scale_{i}" for i in range(3)]
    )


def save_ply(
    path: str | os.PathLike, gaussians: BoundGaussians, vertices: torch.Tensor, faces: torch.Tensor, frame: int = 0
) -> Path:
    """Write the avatar posed on one mesh as a 3D Gaussian Splatting PLY (binary little-endian), atomically.

    Args:
        path: output file; gaussians: the avatar.
        vertices: (V, 3) the posed mesh of the chosen frame; faces: (F, 3) long.
        frame: the frame index, recorded in a header comment.
    """
    path = Path(path)
    with torch.no_grad():
        means, quats, scales, _, _ = gaussians.world(vertices[None], faces)
        n = len(gaussians)
        cols = [
            means[0],
            torch.zeros(n, 3, device=means.device),
            gaussians.sh_dc[:, 0, :],
            gaussians.sh_rest.transpose(1, 2).reshape(n, -1),  # channel-major, as 3DGS
            gaussians.opacity[:, None],
            torch.log(scales[0]),
            quats[0],
            gaussians.xyz,
            gaussians.rotation,
            gaussians.log_scale,
        ]
        data = torch.cat([c.float() for c in cols], dim=1).cpu().numpy()
    names = _ply_names()
    dtype = np.dtype([(nm, "<f4") for nm in names] + [("parent_triangle", "<i4")])
    rec = np.empty(n, dtype=dtype)
    for i, nm in enumerate(names):
        rec[nm] = data[:, i]
    rec["parent_triangle"] = gaussians.parent.cpu().numpy()
    header = [
        "ply",
        "format binary_little_endian 1.0",
        f"comment gaussian-flametalk avatar: frame {frame}, mesh triangles {gaussians.n_faces}",
        f"element vertex {n}",
        *[f"property float {nm}" for nm in names],
        "property int parent_triangle",
        "end_header",
    ]
    with atomic_write(path, ".ply") as tmp, open(tmp, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(rec.tobytes())
    return path


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """A binary little-endian PLY's vertex element as a structured array, and its header comments."""
    path = Path(path)
    types = {"float": "<f4", "float32": "<f4", "double": "<f8", "int": "<i4", "int32": "<i4", "uint": "<u4",
             "uchar": "u1", "uint8": "u1", "short": "<i2", "ushort": "<u2", "char": "i1"}
    with open(path, "rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        props, comments, n = [], [], None
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{path}: truncated PLY header")
            parts = line.decode("ascii").split()
            if not parts:
                continue
            if parts[0] == "end_header":
                break
            if parts[0] == "format" and parts[1] != "binary_little_endian":
                raise ValueError(f"{path}: only binary_little_endian PLY is supported, got {parts[1]}")
            if parts[0] == "comment":
                comments.append(" ".join(parts[1:]))
            elif parts[0] == "element":
                if parts[1] != "vertex" or n is not None:
                    raise ValueError(f"{path}: expected a single 'vertex' element")
                n = int(parts[2])
            elif parts[0] == "property":
                if parts[1] not in types:
                    raise ValueError(f"{path}: unsupported property type {parts[1]}")
                props.append((parts[2], types[parts[1]]))
        dtype = np.dtype(props)
        buf = fh.read(dtype.itemsize * (n or 0))
    if n is None or len(buf) != dtype.itemsize * n:
        raise ValueError(f"{path}: truncated PLY data")
    return np.frombuffer(buf, dtype=dtype), comments


def load_ply(path: str | os.PathLike, device: torch.device | str = "cpu") -> BoundGaussians:
    """Load an avatar written by :func:`save_ply` (its binding and local parameters)."""
    rec, comments = read_ply(path)
    need = ["parent_triangle", "local_x", "f_dc_0", "opacity"]
    if any(nm not in rec.dtype.names for nm in need):
        raise ValueError(f"{path}: not a gaussian-flametalk avatar PLY (no parent_triangle / local_* properties)")
    n_faces = next((int(c.rsplit(" ", 1)[1]) for c in comments if "mesh triangles" in c), None)
    if n_faces is None:
        raise ValueError(f"{path}: the header comment with the mesh's triangle count is missing")

    def cols(names: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([rec[nm] for nm in names], axis=1).astype(np.float32)).to(device)

    n = len(rec)
    return BoundGaussians(
        torch.from_numpy(rec["parent_triangle"].astype(np.int64)).to(device),
        n_faces,
        xyz=cols(["local_x", "local_y", "local_z"]),
        rotation=cols([f"local_rot_{i}" for i in range(4)]),
        log_scale=cols([f"local_scale_{i}" for i in range(3)]),
        opacity=cols(["opacity"])[:, 0],
        sh_dc=cols([f"f_dc_{i}" for i in range(3)])[:, None, :],
        sh_rest=cols([f"f_rest_{i}" for i in range(3 * N_REST)]).reshape(n, 3, N_REST).transpose(1, 2).contiguous(),
    )
