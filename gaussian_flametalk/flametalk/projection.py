"""Keep predicted motion where the avatar was trained (issue 15, part 3).

A :class:`MotionProjector` is fitted on a subject's tracked training motion (N, M) (expression coefficients, then the
jaw axis-angle where the head model has one) and maps predictions (T, M) into that distribution:

- ``clip``: each coordinate clamped to the head model's box where it defines one (ICT blend-shape weights:
  ``HeadModel.expression_bounds`` = [0, 1]); coordinates without a box (FLAME's PCA expressions, the jaw) are clamped
  to the tracked range widened by ``margin`` of its width on each side.
- ``pca``: ``clip``, then the projection onto the principal subspace of the training motion that keeps ``variance``
  of its variance, then ``clip`` again (the projection can leave the box by a little). GeneFace++ projects its
  predicted landmarks onto the training set's space the same way; here the space is that of the face's vertices:
  each coordinate m is scaled by w_m, the RMS displacement of the face region's vertices per unit of m around the
  mean motion (so a coordinate that hardly moves the face cannot dominate the components), and
  x -> mean + W^-1 P P^T W (x - mean), P the leading eigenvectors of the covariance of W (motion - mean).
- ``none``: unchanged.

The projector is the same fitted on the same frames wherever it is applied: ``gft train-talk``'s test-split scores
(``--project``), :class:`~gaussian_flametalk.flametalk.inference.TalkModel` (``load_talk(project=...)``, default: the
training run's setting) and the ablation of ``scripts/bench_talk.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..headmodel import HeadModel

__all__ = ["PROJECT_MODES", "MotionProjector"]

#: The modes of ``--project``.
PROJECT_MODES = ("none", "clip", "pca")


def _vertex_scale(head: HeadModel, mean: torch.Tensor, step: float = 0.05) -> torch.Tensor:
    """w (M,): RMS displacement (mm) of the face region's vertices per unit of each motion coordinate, by a central
    difference of +-``step`` around ``mean`` on the mean identity (shape 0); at least 1e-3 mm."""
    m = mean.numel()
    with torch.no_grad():
        dev = next(iter(head.buffers()), mean).device if hasattr(head, "buffers") else mean.device
        eye = torch.eye(m, device=dev) * step
        base = mean.to(dev)[None]
        ids = head.regions["face"].to(dev) if "face" in head.regions else None
        shape = torch.zeros(2 * m, head.n_shape, device=dev)
        flat = torch.cat([base + eye, base - eye])
        kw = {"expression": flat[:, : head.n_expression]}
        if "jaw" in head.pose_parts:
            kw["jaw"] = flat[:, head.n_expression: head.n_expression + 3]
        v = head(shape=shape, **kw, vertex_ids=ids) * 1000
        d = (v[:m] - v[m:]) / (2 * step)
        return d.norm(dim=-1).pow(2).mean(-1).sqrt().clamp_min(1e-3).cpu()


@dataclass
class MotionProjector:
    """Box (lo, hi) (M,) and principal subspace (mean (M,), basis (M, K)) of a subject's training motion."""

    mode: str
    lo: torch.Tensor
    hi: torch.Tensor
    mean: torch.Tensor
    basis: torch.Tensor
    scale: torch.Tensor | None = None

    @classmethod
    def fit(cls, motion: torch.Tensor, head: HeadModel, mode: str = "pca", variance: float = 0.95,
            margin: float = 0.1) -> "MotionProjector":
        """Fit on training motion (N, M) of a subject tracked with ``head``."""
        if mode not in PROJECT_MODES:
            raise ValueError(f"unknown projection '{mode}' (choose from {', '.join(PROJECT_MODES)})")
        if not 0 < variance <= 1:
            raise ValueError(f"the kept variance must be in (0, 1] (got {variance})")
        motion = torch.as_tensor(motion).float().cpu()
        if motion.ndim != 2 or motion.shape[1] != head.motion_dim or len(motion) < 1:
            raise ValueError(f"training motion must be (N, {head.motion_dim}) with N >= 1, got {tuple(motion.shape)}")
        mn, mx = motion.min(0).values, motion.max(0).values
        width = (mx - mn).clamp_min(1e-6)
        lo, hi = mn - margin * width, mx + margin * width
        if head.expression_bounds is not None:
            e = head.n_expression
            lo[:e], hi[:e] = head.expression_bounds
        mean = motion.mean(0)
        scale = _vertex_scale(head, mean)
        centred = (motion - mean) * scale
        if len(motion) > 1:
            evals, evecs = torch.linalg.eigh(centred.T @ centred / (len(motion) - 1))
            evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
            total = float(evals.sum())
            if total > 0:
                k = int(np.searchsorted(np.cumsum(evals.numpy()) / total, variance - 1e-9) + 1)
            else:
                k = 0
            basis = evecs[:, : min(k, motion.shape[1])]
        else:
            basis = motion.new_zeros(motion.shape[1], 0)
        return cls(mode, lo, hi, mean, basis, scale)

    @property
    def components(self) -> int:
        """Principal components kept."""
        return int(self.basis.shape[1])

    def clip(self, motion: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(motion, self.hi.to(motion)), self.lo.to(motion))

    def project(self, motion: torch.Tensor) -> torch.Tensor:
        """(..., M) onto the principal subspace (no clipping)."""
        b, mean = self.basis.to(motion), self.mean.to(motion)
        w = self.scale.to(motion) if self.scale is not None else torch.ones_like(mean)
        return mean + (((motion - mean) * w) @ b) @ b.T / w

    def __call__(self, motion: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """(..., M) predictions mapped by ``mode``; numpy in, numpy out."""
        if isinstance(motion, np.ndarray):
            return self(torch.from_numpy(motion)).numpy().astype(motion.dtype, copy=False)
        if self.mode == "none":
            return motion
        out = self.clip(motion)
        if self.mode == "pca":
            out = self.clip(self.project(out))
        return out
