"""The head-model interface every stage uses.

A head model maps per-frame parameters to mesh vertices, differentiably and batched over frames:

    vertices = model(shape=..., expression=..., rotation=..., neck=..., jaw=..., eyes=..., translation=...)
    landmarks = model.landmarks(vertices)          # (B, 68, 3), iBUG 68-point layout

Parameters a model does not have (ICT-FaceKit has no neck, jaw or eye joints: its jaw moves through
expression blend shapes) are listed by ``pose_parts``; passing them raises. Parameters left out are
zero. Units are metres; the model's own coordinates are y up, z out of the face (towards a frontal
camera), x to the subject's left.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch
from torch import nn

#: iBUG 68-point layout: index ranges of its parts.
IBUG68_PARTS: dict[str, range] = {
    "contour": range(0, 17),
    "brow_right": range(17, 22),
    "brow_left": range(22, 27),
    "nose_bridge": range(27, 31),
    "nose_bottom": range(31, 36),
    "eye_right": range(36, 42),
    "eye_left": range(42, 48),
    "lips_outer": range(48, 60),
    "lips_inner": range(60, 68),
}



def inter_ocular(points68: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...,) distance between the outer eye corners (iBUG 36 and 45)."""
    p = np.asarray(points68)
    return np.linalg.norm(p[..., 36, :] - p[..., 45, :], axis=-1)


def eye_axis(points68: torch.Tensor, part: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One eye's frame from its corners (``part``: "eye_right", iBUG 36/39, or "eye_left", 42/45): the first corner
    (..., 2), the corner distance (...,) and the unit normal of the corner line (..., 2)."""
    i = IBUG68_PARTS[part].start
    c0, c1 = points68[..., i, :], points68[..., i + 3, :]
    axis = c1 - c0
    width = axis.norm(dim=-1).clamp_min(1e-9)
    return c0, width, torch.stack([-axis[..., 1], axis[..., 0]], dim=-1) / width[..., None]


def eye_openness(points68: torch.Tensor) -> torch.Tensor:
    """How open each eye is: (..., 68, 2) iBUG points -> (..., 2) (right eye 36-41, left eye 42-47).

    The gap between the upper and lower lid points (37/41 and 38/40, measured across the line through the eye corners
    36/39, then averaged) over the corner distance: the eye aspect ratio of Soukupova and Cech (2016) measured
    perpendicular to the eye's axis, ~0.2-0.35 open and ~0.05 closed.
    """
    out = []
    for part in ("eye_right", "eye_left"):
        i = IBUG68_PARTS[part].start
        _, width, normal = eye_axis(points68, part)
        gap = lambda a, b: ((points68[..., a, :] - points68[..., b, :]) * normal).sum(-1).abs()  # noqa: E731
        out.append(0.5 * (gap(i + 1, i + 5) + gap(i + 2, i + 4)) / width)
    return torch.stack(out, dim=-1)


def blink_components(model: "HeadModel") -> list[int]:
    """Indices of expression components named as blinks (e.g. ``blink_left``, ``eyeBlink_L``); empty for FLAME."""
    return [i for i, name in enumerate(model.expression_names) if "blink" in name.lower()]


def eye_components(model: "HeadModel") -> list[int]:
    """Indices of the expression components that move the eyelids and eyes: the blinks and ARKit's ``eye*`` shapes
    (``eyeSquint_L``, ``eyeWide_R``, ``eyeLookDown_L``, ...). A landmark fit spreads a blink over several of them
    (on ../shared v1 the deepest blink reads eyeBlink 0.45, eyeSquint 0.38, eyeLookDown 0.3-0.46); empty for FLAME."""
    return [i for i, name in enumerate(model.expression_names)
            if "blink" in name.lower() or name.lower().startswith("eye")]


#: Names of the vertex regions every model provides.
REGION_NAMES = ("face", "lips", "eyes", "scalp", "neck")
#: Mouth-interior regions a model provides where it has the geometry (ICT-FaceKit: teeth, gums, tongue, mouth socket;
#: FLAME: procedural teeth rows): upper teeth (rigid with the head), lower teeth (with the jaw), and ``mouth`` (gums,
#: tongue and the mouth socket: the dark interior).
MOUTH_REGION_NAMES = ("teeth_upper", "teeth_lower", "mouth")

POSE_DIMS: dict[str, int] = {"rotation": 3, "neck": 3, "jaw": 3, "eyes": 6}


@dataclass
class HeadParams:
    """Per-frame head-model parameters, batched over B frames (any missing part is zero).

    Attributes (all float tensors):
        shape: (B, S) identity coefficients (usually the same row for every frame of a subject).
        expression: (B, E) expression coefficients.
        rotation: (B, 3) global head rotation, axis-angle.
        neck, jaw: (B, 3) joint rotations, axis-angle (FLAME-format models only).
        eyes: (B, 6) left then right eyeball rotations, axis-angle (FLAME-format models only).
        translation: (B, 3) global translation in metres, applied after rotation.
    """

    shape: torch.Tensor
    expression: torch.Tensor
    rotation: torch.Tensor
    neck: torch.Tensor
    jaw: torch.Tensor
    eyes: torch.Tensor
    translation: torch.Tensor

    NAMES: ClassVar[tuple[str, ...]] = ("shape", "expression", "rotation", "neck", "jaw", "eyes", "translation")

    @classmethod
    def zeros(
        cls, model: "HeadModel", batch: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> "HeadParams":
        dims = {"shape": model.n_shape, "expression": model.n_expression, "translation": 3, **POSE_DIMS}
        return cls(**{n: torch.zeros(batch, dims[n], dtype=dtype, device=device) for n in cls.NAMES})

    @property
    def batch(self) -> int:
        return self.shape.shape[0]

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.as_kwargs().items()}

    @classmethod
    def from_numpy(
        cls, arrays: dict[str, np.ndarray], dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> "HeadParams":
        missing = [n for n in cls.NAMES if n not in arrays]
        if missing:
            raise KeyError(f"head parameters lack {missing}")
        return cls(**{n: torch.as_tensor(np.asarray(arrays[n]), dtype=dtype, device=device) for n in cls.NAMES})

    def __getitem__(self, index) -> "HeadParams":
        """Select frames: ``params[10:20]`` or ``params[idx_tensor]``."""
        return HeadParams(**{k: v[index] for k, v in self.as_kwargs().items()})

    def to(self, device: torch.device | str) -> "HeadParams":
        """The same parameters on ``device``."""
        return HeadParams(**{k: v.to(device) for k, v in self.as_kwargs().items()})


class HeadModel(nn.Module):
    """Base class: a parametric head mesh.

    Subclasses set, in ``__init__``, the buffers ``template`` (V,3), ``faces`` (F,3) long,
    ``landmark_faces`` (68,) long, ``landmark_bary`` (68,3), ``landmark_weights`` (68,) (0 where the
    model defines no such point), one long buffer ``region_<name>`` per name in REGION_NAMES (and optionally per
    name in MOUTH_REGION_NAMES), and
    the attributes ``kind``, ``n_shape``, ``n_expression``, ``pose_parts``, ``expression_names``.
    Subclasses implement :meth:`_deform`.
    """

    kind: str
    n_shape: int
    n_expression: int
    pose_parts: tuple[str, ...]
    expression_names: list[str]
    #: Valid range of expression coefficients (blend-shape weights are in [0, 1]); None = unbounded (PCA).
    expression_bounds: tuple[float, float] | None = None

    template: torch.Tensor
    faces: torch.Tensor
    landmark_faces: torch.Tensor
    landmark_bary: torch.Tensor
    landmark_weights: torch.Tensor

    @property
    def n_vertices(self) -> int:
        return self.template.shape[0]

    @property
    def n_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def regions(self) -> dict[str, torch.Tensor]:
        """Vertex index sets: face, lips, eyes, scalp (hair), neck, and the mouth-interior regions the model has."""
        out = {name: getattr(self, f"region_{name}") for name in REGION_NAMES}
        for name in MOUTH_REGION_NAMES:
            idx = getattr(self, f"region_{name}", None)
            if idx is not None and idx.numel():
                out[name] = idx
        return out

    @property
    def motion_dim(self) -> int:
        """Size of the speech-driven motion vector: expression plus jaw rotation where the model has a jaw joint."""
        return self.n_expression + (3 if "jaw" in self.pose_parts else 0)

    def forward(
        self,
        shape: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        rotation: torch.Tensor | None = None,
        neck: torch.Tensor | None = None,
        jaw: torch.Tensor | None = None,
        eyes: torch.Tensor | None = None,
        translation: torch.Tensor | None = None,
        vertex_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Posed vertices.

        Args:
            shape: (B, n_shape); expression: (B, n_expression); rotation, neck, jaw, translation: (B, 3);
            eyes: (B, 6). Any may be None (zero); at least one must be given to fix B, dtype and device.
            vertex_ids: (N,) long, evaluate only these vertices (much cheaper, e.g. for landmark fitting).
        Returns:
            (B, V, 3) vertices in metres (or (B, N, 3) with vertex_ids), in the dtype and on the device of the inputs.
        """
        given = {
            "shape": shape, "expression": expression, "rotation": rotation, "neck": neck,
            "jaw": jaw, "eyes": eyes, "translation": translation,
        }
        ref = next((t for t in given.values() if t is not None), None)
        if ref is None:
            raise ValueError("give at least one parameter tensor (it fixes batch size, dtype and device)")
        if not ref.is_floating_point():
            raise TypeError(f"head-model parameters must be floating point, got {ref.dtype}")
        batch = ref.shape[0]
        dims = {"shape": self.n_shape, "expression": self.n_expression, "translation": 3, **POSE_DIMS}
        for name, value in given.items():
            if value is None:
                continue
            if name in POSE_DIMS and name not in self.pose_parts:
                if torch.any(value != 0):
                    raise ValueError(f"{self.kind} head model has no '{name}' parameters (it has {self.pose_parts})")
            if value.shape != (batch, dims[name]):
                raise ValueError(f"'{name}' must have shape ({batch}, {dims[name]}), got {tuple(value.shape)}")
        full = {
            n: (v if v is not None else ref.new_zeros(batch, dims[n])).to(ref) for n, v in given.items()
        }
        return self._deform(**full, vertex_ids=vertex_ids)

    def _deform(self, vertex_ids: torch.Tensor | None = None, **params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_landmarks(self, **params: torch.Tensor) -> torch.Tensor:
        """``landmarks(forward(**params))`` evaluating only the vertices of the landmark triangles: (B, 68, 3)."""
        tri = self.faces[self.landmark_faces]  # (68, 3)
        ids, local = torch.unique(tri, return_inverse=True)
        verts = self(**params, vertex_ids=ids)
        return barycentric_points(verts, local, self.landmark_bary.to(verts))

    def forward_params(self, params: HeadParams) -> torch.Tensor:
        """:meth:`forward` on a :class:`HeadParams` (parts the model lacks must be zero)."""
        return self(**params.as_kwargs())

    def landmarks(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) vertices -> (B, 68, 3) iBUG landmarks (rows with zero ``landmark_weights`` are not defined)."""
        return barycentric_points(vertices, self.faces[self.landmark_faces], self.landmark_bary.to(vertices))


def barycentric_points(vertices: torch.Tensor, tri: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """Points given by barycentric coordinates on mesh triangles.

    Args:
        vertices: (B, V, 3).
        tri: (L, 3) vertex indices of each point's triangle.
        bary: (L, 3) barycentric coordinates, or (B, L, 3) per batch item.
    Returns:
        (B, L, 3).
    """
    corners = vertices[:, tri]  # (B, L, 3 corners, 3 xyz)
    return (corners * bary[..., None]).sum(-2)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals. vertices (B, V, 3), faces (F, 3) -> (B, V, 3)."""
    v0, v1, v2 = vertices[:, faces[:, 0]], vertices[:, faces[:, 1]], vertices[:, faces[:, 2]]
    face_n = torch.linalg.cross(v1 - v0, v2 - v0)
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals = normals.index_add(1, faces[:, k], face_n)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)


def closest_surface_points(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each query point, the closest triangle and barycentric coordinates of the closest point on it.

    Brute force over triangles (meant for tens of points, e.g. building a landmark embedding).

    Args:
        points: (L, 3); vertices: (V, 3); faces: (F, 3).
    Returns:
        face index (L,) and barycentric coordinates (L, 3).
    """
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    best_f = np.zeros(len(points), dtype=np.int64)
    best_b = np.zeros((len(points), 3))
    for i, p in enumerate(points):
        bary = _closest_bary(p, a, b, c)  # (F, 3)
        q = bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:] * c
        f = int(np.argmin(((q - p) ** 2).sum(-1)))
        best_f[i], best_b[i] = f, bary[f]
    return best_f, best_b


def _closest_bary(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (F, 3) of the closest point to p on each triangle (a, b, c each (F, 3))."""
    # Project onto the plane, then clamp to the triangle by testing the three edges.
    ab, ac, ap = b - a, c - a, p - a
    d00 = (ab * ab).sum(-1)
    d01 = (ab * ac).sum(-1)
    d11 = (ac * ac).sum(-1)
    d20 = (ap * ab).sum(-1)
    d21 = (ap * ac).sum(-1)
    den = np.maximum(d00 * d11 - d01 * d01, 1e-30)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    bary = np.stack([1 - v - w, v, w], -1)
    inside = (bary >= 0).all(-1)
    if inside.all():
        return bary
    # Outside: best of the three edge projections.
    out = bary.copy()
    best = np.full(len(a), np.inf)
    for (i, j), (s, e) in zip(((0, 1), (0, 2), (1, 2)), ((a, b), (a, c), (b, c))):
        se = e - s
        t = np.clip(((p - s) * se).sum(-1) / np.maximum((se * se).sum(-1), 1e-30), 0.0, 1.0)
        q = s + t[:, None] * se
        d = ((q - p) ** 2).sum(-1)
        take = (~inside) & (d < best)
        best = np.where(take, d, best)
        cand = np.zeros_like(bary)
        cand[:, i] = 1 - t
        cand[:, j] = t
        out[take] = cand[take]
    return out
