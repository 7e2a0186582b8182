"""Mesh-motion metrics of predicted expression + jaw against a SUBJECT's tracked parameters of the same frames.

Both sequences are posed as FlameTalk's training sees them (:mod:`gaussian_flametalk.headmodel.motion`): the motion
(expression, plus jaw where the head model has a jaw joint) on the subject's identity (mean tracked shape), every
other part of the pose at zero; vertices in millimetres.

- LVE (lip vertex error, mm): per frame the largest distance over the ``lips`` vertices, averaged over frames.
- FDD (upper-face dynamics deviation, mm): CodeTalker's measure on the upper-face vertices, against the subject's
  neutral mesh (zero motion); positive = the prediction moves the upper face less than the tracking.
- FFE (Fourier frequency error, mm^2): StyleSpeaker's amplitude-spectrum distance on the ``face`` vertices.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..headmodel.motion import motion_from_params, motion_vertices, upper_face_ids
from ..metrics.motion import face_dynamics_deviation, fourier_frequency_error, lip_vertex_error
from ..headmodel import HeadModel
from ..io.subject import Subject

__all__ = ["load_motion", "motion_frames", "motion_metrics"]


def load_motion(path: str | os.PathLike, model: HeadModel) -> tuple[torch.Tensor, np.ndarray | None]:
    """Predicted motion (T, M) of an npz with ``expression`` (T, E) and, for a model with a jaw joint, ``jaw``
    (T, 3) (a drive or train-talk output), and its ``frames`` (T,) array when it has one (else None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such parameter file")
    with np.load(path) as z:
        if "expression" not in z.files:
            raise ValueError(f"{path}: has no 'expression' array (keys {z.files})")
        expression = np.asarray(z["expression"], np.float32)
        jaw = np.asarray(z["jaw"], np.float32) if "jaw" in z.files else None
        frames = np.asarray(z["frames"], np.int64) if "frames" in z.files else None
    if expression.ndim != 2 or expression.shape[1] != model.n_expression:
        raise ValueError(f"{path}: expression is {expression.shape}, the subject's {model.kind} head model has "
                         f"{model.n_expression} expression components")
    parts = [expression]
    if "jaw" in model.pose_parts:
        if jaw is None or jaw.shape != (len(expression), 3):
            raise ValueError(f"{path}: the head model has a jaw joint but the file has no (T, 3) 'jaw' array")
        parts.append(jaw)
    if frames is not None and frames.shape != (len(expression),):
        raise ValueError(f"{path}: 'frames' is {frames.shape}, expected ({len(expression)},)")
    return torch.from_numpy(np.concatenate(parts, axis=1)), frames


def motion_frames(n_pred: int, subject: Subject, frames: np.ndarray | None, start: int | None,
                  name: str) -> np.ndarray:
    """The SUBJECT frame of each predicted frame: ``frames`` when the file has them, else ``start`` onwards, else the
    first frame of the subject's test split onwards. Raises ValueError (naming ``name``) past the subject's end."""
    if frames is None:
        first = int(subject.split()[1][0]) if start is None else int(start)
        frames = np.arange(first, first + n_pred)
    if len(frames) == 0 or frames.min() < 0 or frames.max() >= subject.n_frames:
        raise ValueError(f"{name}: its {n_pred} frames map to subject frames {frames.min() if len(frames) else '-'}.."
                         f"{frames.max() if len(frames) else '-'}, outside {subject.root}'s 0..{subject.n_frames - 1}")
    return frames


@torch.no_grad()
def motion_metrics(params: str | os.PathLike, tracked: str | os.PathLike, start: int | None = None,
                   device: torch.device | str = "cpu") -> dict[str, float | int | str]:
    """LVE, FDD (mm) and FFE (mm^2) of the predicted parameters in ``params`` against SUBJECT ``tracked``.

    ``start``: the subject frame of the first predicted frame when the npz has no ``frames`` array (default: the
    first test-split frame, as in a self-reenactment drive). Returns the figures with the frame range used.
    """

    subject = Subject.open(tracked)
    model = subject.head_model().to(device)
    pred, frames = load_motion(params, model)
    frames = motion_frames(len(pred), subject, frames, start, str(params))
    tracked_params = subject.params(device=device)
    true = motion_from_params(tracked_params, model)[torch.as_tensor(frames, device=device)]
    shape = tracked_params.shape.mean(0)
    lips, upper, face = model.regions["lips"], upper_face_ids(model), model.regions["face"]
    ids = torch.unique(torch.cat([lips, upper, face]))  # sorted

    def subset(v: torch.Tensor, which: torch.Tensor) -> torch.Tensor:  # (..., K, 3) -> (..., len(which), 3)
        return v[..., torch.searchsorted(ids, which), :]

    def verts(m: torch.Tensor) -> torch.Tensor:  # (T, M) -> (T, K, 3) mm
        return motion_vertices(model, m[None].to(device), shape, vertex_ids=ids)[0] * 1000.0

    vp, vt = verts(pred), verts(true)
    neutral = verts(torch.zeros(1, pred.shape[1]))[0]
    return {
        "frames": len(frames),
        "subject_frames": f"{int(frames[0])}..{int(frames[-1])}",
        "lve_mm": float(lip_vertex_error(subset(vp, lips), subset(vt, lips))),
        "fdd_mm": float(face_dynamics_deviation(subset(vp, upper), subset(vt, upper), subset(neutral, upper))),
        "ffe_mm2": float(fourier_frequency_error(subset(vp, face), subset(vt, face))),
    }
