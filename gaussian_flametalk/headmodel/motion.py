"""Head-model motion maths shared by every stage: the motion vector (expression, then jaw where the model has a jaw
joint) <-> head parameters, the vertices of a motion on an identity, the upper-face vertex set and the mouth opening.

Motion is "augmented" head parameters: the tracked expression (and jaw) on the subject's identity (its shape), with
everything else (rotation, neck, eyes, translation) from the template, i.e. zero.
Shapes: motion (B, T, M) or (T, M) with M = ``HeadModel.motion_dim``; vertices (B, T, N, 3) for N chosen vertices.
"""

from __future__ import annotations

import torch

from .base import HeadModel, HeadParams

__all__ = ["motion_from_params", "motion_to_kwargs", "motion_vertices", "mouth_opening", "upper_face_ids"]


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


def upper_face_ids(model: HeadModel) -> torch.Tensor:
    """Upper-face vertex ids (for FDD): the ``face`` region's vertices, lips excluded, whose height on the template
    (model coordinates, y up) is at or above the base of the nose, the mean height of the defined iBUG nose-bottom
    landmarks 31-35. That is the eyes, brows, forehead, nose and upper cheeks: the part of the face that speech
    moves least directly. Returns (K,) long, sorted, on the model's device."""
    with torch.no_grad():
        lmk = model.landmarks(model.template[None])[0]  # (68, 3)
    nose = torch.arange(31, 36, device=lmk.device)
    nose = nose[model.landmark_weights[nose] > 0]
    if nose.numel() == 0:
        raise ValueError(f"{model.kind} head model defines none of the nose-bottom landmarks (iBUG 31-35)")
    face = model.regions["face"]
    face = face[~torch.isin(face, model.regions["lips"])]
    ids = face[model.template[face, 1] >= lmk[nose, 1].mean()]
    if ids.numel() == 0:
        raise ValueError(f"{model.kind} head model: no face vertices above the nose")
    return torch.sort(ids).values


def mouth_opening(model: HeadModel, motion: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Inner-lip gap (iBUG 62 to 66) in metres for motion (T, M): (T,)."""
    kw = motion_to_kwargs(motion, model)
    lm = model.forward_landmarks(shape=shape.to(motion).expand(motion.shape[0], -1), **kw)
    return (lm[:, 66] - lm[:, 62]).norm(dim=-1)
