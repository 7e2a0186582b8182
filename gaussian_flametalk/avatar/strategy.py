"""Adaptive density control as a strategy object, in the manner of gsplat's ``DefaultStrategy``.

The training loop calls :meth:`DefaultStrategy.step_pre_backward` before each backward pass (the screen-space means
keep their gradient), :meth:`DefaultStrategy.step_post_backward` after it (and before the optimiser step, when the
screen-space gradients of this iteration are still in ``info.means2d.grad``), then
:meth:`DefaultStrategy.step_post_update` after the step; the strategy decides, from the run's :class:`~.schedule
.Schedule`, when to accumulate gradients, densify and prune (:func:`~.gaussians.densify_and_prune`) and reset
opacities (:func:`~.gaussians.reset_opacity`). Its state (the accumulated gradients) is a
:class:`~.gaussians.DensifyStats`, saved in the checkpoint with the rest. Another strategy (e.g. MCMC-style
relocation) implements the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gaussians import BoundGaussians, DensifyStats, densify_and_prune, reset_opacity
from .schedule import Schedule

__all__ = ["DefaultStrategy"]


@dataclass
class DefaultStrategy:
    """3DGS's clone / split / prune and opacity reset for triangle-bound Gaussians.

    Attributes:
        schedule: when to collect gradients, densify and reset (absolute iterations).
        face_scale: (F,) triangle scales of the reference mesh (metres), for world sizes.
        grad_threshold: mean screen-space gradient norm (NDC units) above which a Gaussian is densified.
        split_size: world size (max std, metres) above which it is split rather than cloned.
        min_opacity, max_size: pruned below this opacity or above this world size (metres).
    """

    schedule: Schedule
    face_scale: torch.Tensor
    grad_threshold: float
    split_size: float
    min_opacity: float
    max_size: float

    def initialize_state(self, gaussians: BoundGaussians) -> DensifyStats:
        return DensifyStats(len(gaussians), gaussians.xyz.device)

    def step_pre_backward(self, info) -> None:
        """Before the backward pass: keep the gradient of the render's screen-space means ``info.means2d`` (not a
        leaf), which :meth:`step_post_backward` reads."""
        if info.means2d.requires_grad:
            info.means2d.retain_grad()

    def step_post_backward(self, state: DensifyStats, info, it: int, width: int, height: int) -> None:
        """Accumulate this iteration's screen-space gradients (iteration index ``it``, 0-based)."""
        if self.schedule.collect_gradients(it) and info.means2d.grad is not None:
            state.update(info.means2d.grad, info.visible, width, height)

    def step_post_update(self, gaussians: BoundGaussians, optimizer: torch.optim.Optimizer, state: DensifyStats,
                         it: int, generator: torch.Generator) -> dict[str, int] | None:
        """After the optimiser step of iteration ``it``: densify/prune and reset opacities where the schedule says.
        Returns the densification counts when it densified."""
        done = it + 1
        counts = None
        if self.schedule.densify_at(done):
            counts = densify_and_prune(gaussians, optimizer, state, self.face_scale, self.grad_threshold,
                                       self.split_size, self.min_opacity, self.max_size, generator)
        if self.schedule.reset_at(done):
            reset_opacity(gaussians, optimizer)
        return counts
