"""Which training frame each avatar iteration sees: uniform, or balanced over the face's states.

A talking-head clip is mostly a half-open mouth and open eyes: the frames with the teeth bared or the eyes shut are a
few percent of it, so a uniform sampler shows the Gaussians of the teeth and lids those states a few dozen times in a
whole run, and the avatar renders them faint (grey teeth, a grey lid). ``BalancedFrames`` draws frames with a
probability that falls with how common their state is: the inverse of a Gaussian kernel density estimate over two
features of the tracked mesh (the inner-lip gap and the mean eye opening, each over the inter-ocular distance and
standardised), mixed with uniform sampling so that no frame is starved.
"""

from __future__ import annotations

import numpy as np
import torch

from ..headmodel.base import IBUG68_PARTS, eye_openness

__all__ = ["BalancedFrames", "FrameSampler", "UniformFrames", "face_state_features", "make_sampler"]


def face_state_features(points68: torch.Tensor) -> np.ndarray:
    """(T, 68, 2) projected iBUG landmarks -> (T, 2): inner-lip gap (62-66) over the inter-ocular distance (36-45),
    and the mean of both eyes' openness (:func:`~..headmodel.base.eye_openness`)."""
    lips = IBUG68_PARTS["lips_inner"].start
    iod = (points68[:, 36] - points68[:, 45]).norm(dim=-1).clamp_min(1e-9)
    mouth = (points68[:, lips + 2] - points68[:, lips + 6]).norm(dim=-1) / iod
    eyes = eye_openness(points68).mean(dim=-1)
    return torch.stack([mouth, eyes], dim=-1).double().cpu().numpy()


class FrameSampler:
    """Draws training frame indices; ``probabilities`` are over the training frames in their given order."""

    def __init__(self, train_idx: np.ndarray, probabilities: np.ndarray) -> None:
        self.train_idx = torch.as_tensor(np.asarray(train_idx), dtype=torch.long)
        self.probabilities = torch.as_tensor(probabilities, dtype=torch.float64)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n,) frame indices, drawn with replacement."""
        pick = torch.multinomial(self.probabilities, n, replacement=True, generator=generator)
        return self.train_idx[pick]


class UniformFrames(FrameSampler):
    """Every training frame equally often (3DGS, GaussianAvatars)."""

    def __init__(self, train_idx: np.ndarray) -> None:
        n = len(train_idx)
        super().__init__(train_idx, np.full(n, 1.0 / n))

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.train_idx[torch.randint(len(self.train_idx), (n,), generator=generator)]


class BalancedFrames(FrameSampler):
    """Frames in rare face states drawn more often: ``p = mix * q + (1 - mix) / N`` with ``q`` proportional to the
    inverse kernel density of the frame's standardised features (bandwidth by Scott's rule, ``N^(-1/(d+4))``), each
    frame's ``q`` at most ``max_ratio`` times the median one."""

    def __init__(self, train_idx: np.ndarray, features: np.ndarray, mix: float = 0.5, max_ratio: float = 10.0) -> None:
        """features: (N, d), one row per training frame."""
        f = np.asarray(features, dtype=np.float64)
        n, d = f.shape
        z = (f - f.mean(0)) / np.maximum(f.std(0), 1e-9)
        h = n ** (-1.0 / (d + 4))
        sq = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
        density = np.exp(-0.5 * sq / h**2).mean(1)
        q = 1.0 / density
        q = np.minimum(q, max_ratio * np.median(q))
        q /= q.sum()
        super().__init__(train_idx, mix * q + (1.0 - mix) / n)


def make_sampler(kind: str, train_idx: np.ndarray, states: np.ndarray | None, mix: float) -> FrameSampler:
    """The sampler ``kind`` ("uniform" or "balanced") over ``train_idx``; ``states``: (T, d) features of all frames
    (:func:`face_state_features`; balanced needs them, without them it is uniform)."""
    if kind == "uniform" or states is None:
        return UniformFrames(train_idx)
    if kind == "balanced":
        return BalancedFrames(train_idx, states[np.asarray(train_idx)], mix)
    raise ValueError(f"unknown frame sampling {kind!r} (uniform, balanced)")
