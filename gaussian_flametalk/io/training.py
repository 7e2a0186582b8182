"""One resumable training loop, shared by every stage that trains (the avatar, FlameTalk).

A run trains from iteration 0 (or from its checkpoint) to ``iterations``, calling ``step(it)`` once per iteration,
and saves a checkpoint atomically every ``checkpoint_every`` iterations and at the end, so a killed run loses at most
one interval and a re-run continues exactly where the checkpoint left off: the checkpoint holds the named stateful
objects (models, optimizers, anything with ``state_dict`` / ``load_state_dict``), the run's random generator and
torch's global RNG, the history rows and the seconds trained so far.

A step whose history row holds a NaN or infinite number (a diverged loss) stops the run with a
:class:`~gaussian_flametalk.errors.TrainingDivergedError` naming the iteration and the term, before anything is
saved: the last checkpoint on disk is the last good one, never a non-finite one.

Checkpoint layout (``torch.save`` dict): ``format``, ``iteration``, ``history``, ``train_seconds``, ``generator``,
``torch_rng``, one key per named object (its state dict), and the stage's identity keys (compared on resume: a
checkpoint made by another architecture or head model is refused, naming the file and the key) and extra keys.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import save_torch
from ..errors import TrainingDivergedError

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "RunState", "restore", "run_training"]

CHECKPOINT_FORMAT = 1
_RESERVED = {"format", "iteration", "history", "train_seconds", "generator", "torch_rng"}


@dataclass
class RunState:
    """Where a run stands: iterations done, history rows, seconds trained, and where it resumed from."""

    iteration: int = 0
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from: int | None = None


class Checkpoint:
    """A stage's ``checkpoint.pt``.

    Args:
        path: the file.
        identity: keys saved with it that a resumed run must match (e.g. the architecture, the head model's size).
        normalize: per identity key, a function applied to the saved value before the comparison (e.g. filling in
            the defaults of fields that older checkpoints lack).
    """

    def __init__(self, path: str | Path, identity: Mapping[str, Any] | None = None,
                 normalize: Mapping[str, Callable[[Any], Any]] | None = None) -> None:
        self.path = Path(path)
        self.identity = dict(identity or {})
        self.normalize = dict(normalize or {})
        clash = _RESERVED & set(self.identity)
        if clash:
            raise ValueError(f"checkpoint identity keys {sorted(clash)} are reserved")

    def read(self, map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The saved state (None when there is no checkpoint); a ValueError naming the file when it is unreadable, of
        another format, or does not match ``identity``."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location=map_location, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means the same to the user
            raise ValueError(f"{self.path}: unreadable checkpoint ({type(e).__name__}: {e}); delete it to start "
                             "over") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path}: not a checkpoint of this version (format "
                             f"{state.get('format') if isinstance(state, dict) else None!r}, expected "
                             f"{CHECKPOINT_FORMAT}); delete it or use another --out")
        for key, want in self.identity.items():
            have = state.get(key)
            if key in self.normalize and have is not None:
                have = self.normalize[key](have)
            if have != want:
                raise ValueError(f"{self.path}: made with {key} = {have!r}, this run has {want!r}; delete it "
                                 f"or use another --out")
        return state

    def write(self, objects: Mapping[str, Any], run: RunState, generator: torch.Generator,
              extra: Mapping[str, Any] | None = None) -> None:
        """Save atomically: each object's ``state_dict()`` (or the value itself when it has none), the run, the RNGs."""
        state: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "iteration": run.iteration, "history": run.history,
                                 "train_seconds": run.train_seconds, "generator": generator.get_state(),
                                 "torch_rng": torch.get_rng_state(), **self.identity, **(extra or {})}
        for name, obj in objects.items():
            if name in state:
                raise ValueError(f"checkpoint object name {name!r} clashes with a reserved or identity key")
            state[name] = obj.state_dict() if hasattr(obj, "state_dict") else obj
        save_torch(self.path, state)


def restore(state: Mapping[str, Any], objects: Mapping[str, Any], generator: torch.Generator) -> RunState:
    """Load each named object's state and the RNGs from a checkpoint's ``state``; returns the resumed RunState."""
    for name, obj in objects.items():
        obj.load_state_dict(state[name])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    it = int(state["iteration"])
    return RunState(it, list(state["history"]), float(state["train_seconds"]), it)


def _check_finite(row: Mapping[str, Any], done: int, checkpoint: Checkpoint, saved: int) -> None:
    bad = {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        terms = ", ".join(f"{k} = {v}" for k, v in bad.items())
        kept = f"{checkpoint.path} (iteration {saved}) is kept" if checkpoint.path.is_file() else "nothing was saved"
        raise TrainingDivergedError(f"training diverged at iteration {done}: {terms}; {kept}. Lower the learning "
                                    f"rates or loss weights and run again")


def run_training(
    checkpoint: Checkpoint,
    run: RunState,
    iterations: int,
    step: Callable[[int], dict | None],
    objects: Callable[[], Mapping[str, Any]],
    generator: torch.Generator,
    *,
    checkpoint_every: int,
    extra: Callable[[int], Mapping[str, Any]] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> RunState:
    """Train from ``run.iteration`` to ``iterations``.

    Args:
        checkpoint, run: where to save, and the state to continue (from :func:`restore`, or a fresh RunState).
        step: ``step(it)`` does iteration ``it`` (0-based) and returns a history row (appended, with ``iteration``
            set to ``it + 1``, its numbers shown on the progress bar) or None.
        objects: returns the named stateful objects to save (called at each checkpoint: objects may be rebuilt).
        generator: the run's random generator (saved and restored with the RNG state).
        checkpoint_every: interval in iterations; a checkpoint is also written at the end (and for a run with no
            iteration left, when none exists yet).
        extra: ``extra(iteration)`` gives more keys to save (e.g. the SH degree at that point).
    Returns the RunState at the end (``train_seconds`` includes earlier sessions of a resumed run).
    """
    from tqdm.auto import tqdm

    def save(it: int, seconds: float) -> None:
        run.iteration, run.train_seconds = it, seconds
        checkpoint.write(objects(), run, generator, extra(it) if extra else None)

    start, before = run.iteration, run.train_seconds
    bar = tqdm(total=iterations, initial=min(start, iterations), desc=desc, unit="it", disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for it in range(start, iterations):
            row = step(it)
            done = it + 1
            if row is not None:
                _check_finite(row, done, checkpoint, run.iteration)
                run.history.append({"iteration": done, **row})
                bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
            bar.update(1)
            if done % max(checkpoint_every, 1) == 0 or done == iterations:
                save(done, before + time.perf_counter() - t0)
    finally:
        bar.close()
    run.iteration = max(iterations, start)
    run.train_seconds = before + time.perf_counter() - t0
    if not checkpoint.path.is_file():  # zero iterations asked for
        save(run.iteration, run.train_seconds)
    return run
