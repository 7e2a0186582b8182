"""FlameTalk losses in vertex space, and the motion <-> head-parameter mapping.

Ground truth is "augmented": the tracked expression (and jaw, where the model has a jaw joint) on the subject's
identity (its shape), with everything else (rotation, neck, eyes, translation) from the template, i.e. zero.
Shapes: motion (B, T, M) with M = ``HeadModel.motion_dim``; vertices (B, T, N, 3) for N chosen vertices.
"""

from __future__ import annotations

import torch

from ..headmodel import HeadModel, HeadParams

__all__ = ["face_dynamics_deviation", "fourier_frequency_error", "lip_vertex_error", "motion_from_params",
           "motion_to_kwargs", "motion_vertices", "mouth_opening", "trend_loss", "upper_face_ids", "velocity_loss",
           "vertex_loss"]


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


def face_dynamics_deviation(pred: torch.Tensor, true: torch.Tensor, template: torch.Tensor, *,
                            squared: bool = False) -> torch.Tensor:
    """FDD, CodeTalker's upper-face dynamics deviation (pass the upper-face vertices, :func:`upper_face_ids`).

    For each vertex v the motion is its displacement from the template, m_t = x_t - template; its dynamics
    dyn(v) = std over frames t of ||m_t||_2 (population standard deviation). FDD = mean over vertices of
    dyn_true(v) - dyn_pred(v): signed as in the paper (ground truth minus prediction), so positive means the
    prediction moves the upper face less than the ground truth (over-smoothing), negative more; 0 is best.
    ``squared=True`` uses ||m_t||^2 instead, as CodeTalker's released evaluation script does (its published
    numbers are in those units).

    Args:
        pred, true: (T, N, 3) vertex sequences; template: (N, 3) (e.g. the subject's neutral mesh), same units.
    Returns:
        scalar, in the input's units (squared units with ``squared``).
    """
    if pred.shape != true.shape or pred.dim() != 3 or template.shape != pred.shape[1:]:
        raise ValueError(f"FDD needs pred, true (T, N, 3) and template (N, 3); got {tuple(pred.shape)}, "
                         f"{tuple(true.shape)}, {tuple(template.shape)}")

    def dynamics(x: torch.Tensor) -> torch.Tensor:  # (T, N, 3) -> (N,)
        norm = (x - template).norm(dim=-1)
        return (norm ** 2 if squared else norm).std(dim=0, unbiased=False)

    return (dynamics(true) - dynamics(pred)).mean()


def fourier_frequency_error(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """FFE, StyleSpeaker's Fourier frequency error: how far the frequency content of the predicted motion is from
    the ground truth's, per vertex coordinate.

    StyleSpeaker compares the discrete Fourier transforms (over time) of the two sequences. Read literally as the
    squared modulus of the complex difference, the measure equals T times the mean squared error (Parseval) and
    says nothing beyond the vertex error; it is meant to score the speaking *style* (how much energy the motion has
    at each rate), so this implementation compares amplitude spectra, which ignores timing (phase):

        FFE = mean over frequencies k = 0..floor(T/2), vertices n, coordinates c of (|P_k| - |G_k|)^2

    with P = rfft(pred, norm="ortho") and G = rfft(true, norm="ortho") along time (orthonormal DFT, so a signal and
    its spectrum have the same energy). A time-shifted copy of the ground truth (circularly) scores 0; a sinusoid
    of amplitude A at bin k (0 < k < T/2) has |G_k| = A sqrt(T) / 2.

    Args:
        pred, true: (T, N, 3) vertex sequences (or motion relative to a template: the DC bin then holds the mean
            offset), same units.
    Returns:
        scalar in squared input units.
    """
    if pred.shape != true.shape or pred.dim() != 3:
        raise ValueError(f"FFE needs pred and true of the same (T, N, 3) shape; got {tuple(pred.shape)}, "
                         f"{tuple(true.shape)}")
    amp_pred = torch.fft.rfft(pred, dim=0, norm="ortho").abs()
    amp_true = torch.fft.rfft(true, dim=0, norm="ortho").abs()
    return ((amp_pred - amp_true) ** 2).mean()


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
