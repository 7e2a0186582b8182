"""Mesh-motion metrics of speech-driven animation (vertex positions in millimetres or metres, as given).

- LVE (lip vertex error, FaceFormer/VOCA): per frame the largest lip-vertex L2 error, averaged over frames.
- FDD (face dynamics deviation, CodeTalker): ground truth minus prediction of the per-vertex standard deviation over
  time of the motion magnitude of the upper face (see :func:`~gaussian_flametalk.headmodel.motion.upper_face_ids`).
- FFE (Fourier frequency error, StyleSpeaker eq. 13): squared error between amplitude spectra over time.
"""

from __future__ import annotations

import torch

__all__ = ["face_dynamics_deviation", "fourier_frequency_error", "lip_vertex_error"]


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
