"""The avatar's training schedule, expressed relative to the run length and checked before any work starts.

3DGS's schedule is written for 30,000 iterations: densify every 100 iterations from 500 to 15,000 (1.7 % to 50 % of
the run), reset opacities every 3,000 (the last reset at 40 %, leaving 60 % of the run to recover), raise the SH degree
every 1,000 (degree 3 at 10 %), decay the position rate over the whole run. Copied as absolute numbers into a shorter
run the same constants break it (a reset on the very last iteration leaves every Gaussian at opacity 0.01: a ghost).
So here the schedule is given as fractions of ``iterations`` and resolved into absolute iteration numbers by
:func:`resolve_schedule`, which refuses combinations that cannot end well:

* densification runs in ``[densify_start, densify_end) * iterations``, every ``densify_every`` iterations (by default
  3DGS's 100, or less in a short run so that the window holds :data:`MIN_DENSIFY_STEPS` steps);
* ``opacity_resets`` resets are spaced evenly inside that window (never at its ends), each followed by at least one
  densification step (which prunes what did not recover) and the last leaving at least
  :data:`MIN_RECOVERY` of the run to recover;
* the SH degree rises by one at even steps over the first ``sh_ramp * iterations``, reaching ``sh_degree`` there;
* the position learning rate decays exponentially over the whole run.

The resolved numbers depend only on the options, so a resumed run follows the same schedule as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULT_DENSIFY_EVERY", "MIN_DENSIFY_STEPS", "MIN_RECOVERY", "Schedule", "resolve_schedule"]

MIN_RECOVERY = 0.2  # fraction of the run that must follow the last opacity reset
DEFAULT_DENSIFY_EVERY = 100  # 3DGS's densification interval
MIN_DENSIFY_STEPS = 5  # a short run's default interval shrinks so that its window holds this many steps


@dataclass(frozen=True)
class Schedule:
    """Absolute iteration numbers of one run (``done`` = iterations completed, 1-based)."""

    iterations: int
    densify_steps: tuple[int, ...]  # densify and prune after these iterations
    reset_steps: tuple[int, ...]  # reset opacities after these iterations
    densify_until: int  # gradients are accumulated while the iteration index is below this (the last densify step)
    sh_steps: tuple[int, ...]  # the SH degree is len([s for s in sh_steps if s <= it]) at iteration index it

    def densify_at(self, done: int) -> bool:
        return done in self.densify_steps

    def reset_at(self, done: int) -> bool:
        return done in self.reset_steps

    def collect_gradients(self, it: int) -> bool:
        return it < self.densify_until

    def sh_degree(self, it: int) -> int:
        """SH degree used at iteration index ``it`` (0-based)."""
        return sum(1 for s in self.sh_steps if s <= it)


def resolve_schedule(
    iterations: int,
    densify_start: float,
    densify_end: float,
    densify_every: int | None,
    opacity_resets: int,
    sh_degree: int,
    sh_ramp: float,
) -> Schedule:
    """Absolute schedule of a run of ``iterations`` (see the module docstring); a ValueError naming the option when the
    combination cannot work. ``densify_every=None``: the default interval; 0: no densification."""
    if iterations < 0:
        raise ValueError(f"--iterations must be >= 0, got {iterations}")
    if not 0.0 <= densify_start <= densify_end <= 1.0:
        raise ValueError(f"need 0 <= --densify.start <= --densify.end <= 1, got {densify_start} and {densify_end}")
    lo, hi = math.ceil(densify_start * iterations), math.ceil(densify_end * iterations)
    if densify_every is None:
        densify_every = max(min(DEFAULT_DENSIFY_EVERY, (hi - lo) // MIN_DENSIFY_STEPS), 1)
    if densify_every < 0 or opacity_resets < 0:
        raise ValueError(f"--densify.every and --densify.opacity-resets must be >= 0, got {densify_every}, "
                         f"{opacity_resets}")
    if not 0 <= sh_degree <= 3:
        raise ValueError(f"--sh-degree must be in 0..3, got {sh_degree}")
    if not 0.0 < sh_ramp <= 1.0:
        raise ValueError(f"--sh-ramp must be in (0, 1], got {sh_ramp}")
    densify: tuple[int, ...] = ()
    if densify_every:  # multiples of densify_every inside the window
        densify = tuple(range(densify_every * max(math.ceil(lo / densify_every), 1), hi, densify_every))
    resets: tuple[int, ...] = ()
    if opacity_resets and iterations:
        if not densify:
            raise ValueError(f"--densify.opacity-resets {opacity_resets} needs densification (with --densify.every "
                             f"{densify_every} no densification step falls in [{lo}, {hi}) of {iterations} iterations)")
        resets = tuple(round(lo + k * (hi - lo) / (opacity_resets + 1)) for k in range(1, opacity_resets + 1))
        last = resets[-1]
        if not any(d > last for d in densify):
            raise ValueError(f"the opacity reset at iteration {last} has no densification step after it to prune what "
                             f"stays transparent: lower --densify.opacity-resets or raise --densify.end (now "
                             f"{densify_end})")
        if iterations - last < MIN_RECOVERY * iterations:
            raise ValueError(f"the opacity reset at iteration {last} of {iterations} leaves less than "
                             f"{MIN_RECOVERY:.0%} of the run to recover: lower --densify.opacity-resets or "
                             "--densify.end")
    ramp = sh_ramp * iterations
    sh_steps = tuple(max(round(ramp * d / sh_degree), 1) for d in range(1, sh_degree + 1))
    return Schedule(iterations, densify, resets, densify[-1] if densify else 0, sh_steps)
