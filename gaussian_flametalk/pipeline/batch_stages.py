"""The stages ``gft batch`` runs, through their Python entry points, and the one function a worker runs.

A (clip, stage) task is a :class:`StageTask`: the stage, the keyword arguments of its config dataclass (made in the
worker, so ``device="auto"`` resolves on the machine that runs it), the file whose valid ``meta.json`` marks the stage
finished, and the log file the stage's output goes to. :func:`run_stage` runs one (in a Ray worker or in-process)
and returns a :class:`StageOutcome`: done with the figures read back from the stage's own meta, or failed with the
error's message (the traceback is in the log). Stages hold their own output locks (:mod:`..io.lock`).
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..atomic import write_json
from ..avatar.train import AvatarConfig, train_avatar
from ..flametalk.train import TalkConfig, train_talk
from ..io.meta import read_meta
from .benchmark import BenchmarkConfig, benchmark
from .manifest import PRIOR_STAGE
from .track import TrackConfig, track

__all__ = ["STAGE_CONFIGS", "StageOutcome", "StageTask", "finished_meta", "marker_of", "run_stage", "stage_figures"]

#: stage -> (config dataclass, entry point taking it); the prior is a gft train-talk over every tracked clip
STAGE_CONFIGS: dict[str, tuple[type, Callable[[Any], Any]]] = {
    "track": (TrackConfig, track),
    "train-avatar": (AvatarConfig, train_avatar),
    PRIOR_STAGE: (TalkConfig, train_talk),
    "train-talk": (TalkConfig, train_talk),
    "benchmark": (BenchmarkConfig, benchmark),
}
#: the ``stage`` each one's meta.json names
META_STAGE = {"track": "track", "train-avatar": "train-avatar", PRIOR_STAGE: "train-talk", "train-talk": "train-talk",
              "benchmark": "benchmark"}


def marker_of(stage: str, folder: Path) -> Path:
    """The file whose valid content marks ``stage`` finished; ``folder`` is the SUBJECT (the prior's own folder for
    the prior)."""
    return {"track": folder / "meta.json", "train-avatar": folder / "avatar" / "meta.json",
            PRIOR_STAGE: folder / "meta.json", "train-talk": folder / "talk" / "meta.json",
            "benchmark": folder / "benchmark" / "benchmark.json"}[stage]


def finished_meta(stage: str, marker: Path) -> dict | None:
    """The stage's meta when ``marker`` is a valid meta.json of that stage, else None."""
    try:
        return read_meta(marker, META_STAGE[stage])
    except (OSError, ValueError):
        return None


def stage_figures(stage: str, meta: dict) -> dict[str, Any]:
    """The figures of a finished stage for the batch table, read from its meta."""
    if stage == "track":
        f = meta.get("figures", {})
        return {"tracking_error_iod": f.get("reprojection_error_iod"), "frames": f.get("frames"),
                "face_found_share": f.get("face_found_share")}
    if stage == "train-avatar":
        f = meta.get("figures", {})
        return {"avatar_test_psnr": f.get("test_psnr"), "avatar_test_ssim": f.get("test_ssim"),
                "n_gaussians": f.get("n_gaussians")}
    if stage == PRIOR_STAGE:
        return {"subjects": len(meta.get("subjects", [])), "iterations": meta.get("iterations"),
                "final_loss": meta.get("figures", {}).get("final_train_loss", meta.get("final_loss"))}  # older metas
    if stage == "train-talk":
        t = next(iter(meta.get("test", {}).values()), {})
        return {"talk_lve_mm": t.get("lve_mm"), "talk_baseline_lve_mm": t.get("baseline_lve_mm"),
                "talk_vertex_error_mm": t.get("vertex_error_mm"), "talk_init": meta.get("config", {}).get("init")}
    rows = meta.get("rows", [])
    return {"benchmark": rows[0].get("figures") if rows else None}


@dataclass(frozen=True)
class StageTask:
    """One (clip, stage) of a batch. ``clip`` is None for the prior; ``options`` are the config's keyword
    arguments; ``threads`` caps torch's threads (None: torch's default)."""

    clip: str | None
    stage: str
    options: dict[str, Any]
    marker: Path
    log: Path
    threads: int | None = None

    @property
    def key(self) -> tuple[str | None, str]:
        return self.clip, self.stage

    @property
    def started_file(self) -> Path:
        """Written by the worker when it starts the task (the driver shows it as running from then on); beside the
        logs, in ROOT/.batch."""
        return self.log.parent.parent / ".batch" / (self.log.stem + ".started")

    def config(self) -> Any:
        """The stage's config (validated; device resolved here)."""
        return STAGE_CONFIGS[self.stage][0](**self.options)


@dataclass
class StageOutcome:
    """What one task did: ``status`` done or failed, ``error`` (one line) when failed, ``figures`` when done,
    wall-clock and CPU seconds (this process and the subprocesses it waited for), and where it ran."""

    clip: str | None
    stage: str
    status: str
    elapsed_s: float
    cpu_s: float
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    error: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)


def one_line(e: BaseException) -> str:
    """``TypeName: first line of the message``."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class _Redirect:
    """Send this process's output to a log file while a task runs, and restore it after: file descriptors 1 and 2
    (C libraries, subprocesses) and Python's ``sys.stdout`` / ``sys.stderr`` (which an embedding program, pytest
    say, may have pointed elsewhere)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _Redirect:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        self.streams = (sys.stdout, sys.stderr)
        self.fh = open(self.path, "a", buffering=1)
        os.dup2(self.fh.fileno(), 1)
        os.dup2(self.fh.fileno(), 2)
        sys.stdout = sys.stderr = self.fh
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.flush()
        sys.stdout, sys.stderr = self.streams
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        self.fh.close()


def run_stage(task: StageTask) -> StageOutcome:
    """Run one task; never raises for a stage's own error (it is this clip's failure, recorded in the outcome and,
    with its traceback, in the task's log). A KeyboardInterrupt still stops the run."""
    t0, c0 = time.perf_counter(), _cpu_seconds()
    task.started_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(task.started_file, {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid()})
    if task.threads:
        import torch

        torch.set_num_threads(task.threads)
    with _Redirect(task.log):
        print(f"== gft batch: {task.clip or 'all clips'} {task.stage} on {socket.gethostname()} (pid {os.getpid()}) "
              f"at {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
        try:
            config, entry = task.config(), STAGE_CONFIGS[task.stage][1]
            entry(config)
            meta = finished_meta(task.stage, task.marker)
            if meta is None:
                raise RuntimeError(f"{task.marker}: the stage returned but left no valid meta")
            status, error, figures = "done", None, stage_figures(task.stage, meta)
        except Exception as e:  # this clip's failure: recorded, the other clips go on
            traceback.print_exc()
            status, error, figures = "failed", one_line(e), {}
        print(f"== {status} in {time.perf_counter() - t0:.1f} s" + (f": {error}" if error else ""), flush=True)
    return StageOutcome(clip=task.clip, stage=task.stage, status=status, elapsed_s=time.perf_counter() - t0,
                        cpu_s=_cpu_seconds() - c0, error=error, figures=figures)
