"""Mesh-motion metrics of speech-driven animation (vertex positions in millimetres or metres, as given).

- LVE (lip vertex error, FaceFormer/VOCA): per frame the largest lip-vertex L2 error, averaged over frames.
- FDD (face dynamics deviation, CodeTalker): ground truth minus prediction of the per-vertex standard deviation over
  time of the motion magnitude of the upper face (see :func:`~gaussian_flametalk.headmodel.motion.upper_face_ids`).
- FFE (Fourier frequency error, StyleSpeaker eq. 13): squared difference of the first 20 DFT components over time,
  summed over them and averaged over the N x 3 vertex coordinates.
"""

from __future__ import annotations

import torch

__all__ = ["FFE_COMPONENTS", "face_dynamics_deviation", "fourier_frequency_error", "lip_vertex_error"]


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


FFE_COMPONENTS = 20  # StyleSpeaker: "the first 20 principal frequency components"


def fourier_frequency_error(pred: torch.Tensor, true: torch.Tensor, components: int = FFE_COMPONENTS) -> torch.Tensor:
    """FFE, StyleSpeaker's Fourier frequency error (eq. 13, shared/papers/003_d753b93f948751db.txt), as written:

        FFE = sum over the N x 3 vertex coordinates c of || F(M^c) - F(M_hat^c) ||^2  /  (N x 3)

    where M^c (T,) is one coordinate's sequence over time and F is the discrete Fourier transform (unnormalised, as
    numpy's and torch's ``fft``) keeping its first ``components`` (20) frequency components k = 0 .. 19 (all T of
    them for a clip shorter than that); the norm is over those complex components. A cosine of amplitude A at bin k
    (0 < k < T/2) has |F_k| = A T / 2.

    Args:
        pred, true: (T, N, 3) vertex sequences (or motion relative to a template: component 0 then holds the mean
            offset times T), same units.
    Returns:
        scalar in squared input units.
    """
    if pred.shape != true.shape or pred.dim() != 3:
        raise ValueError(f"FFE needs pred and true of the same (T, N, 3) shape; got {tuple(pred.shape)}, "
                         f"{tuple(true.shape)}")
    k = min(components, pred.shape[0])
    diff = torch.fft.fft(pred - true, dim=0)[:k]  # the DFT is linear: F(pred) - F(true) = F(pred - true)
    return (diff.abs() ** 2).sum(dim=0).mean()
