"""``gft batch MANIFEST --out ROOT``: many clips through the stages, as Ray tasks, resumable, one results table.

The manifest (:mod:`.manifest`, YAML or CSV) lists clips; each clip becomes the SUBJECT folder ``ROOT/NAME`` and
runs the chosen stages in order (``track``, ``train-avatar``, ``train-talk``, ``benchmark``, through the same Python
entry points as the ``gft`` commands), clips in parallel. ``train-talk-prior`` adds one task that trains the
cross-subject FlameTalk prior (``ROOT/talk-prior``) on every clip that tracked, once all tracking is over; each
clip's ``train-talk`` then adapts it (``--init``). Each (clip, stage) is one Ray task with declared CPUs, GPU fraction
and memory (:mod:`.batch_exec`); without ``--address`` a local Ray with as many task slots as the machine fits is
started, with it an existing cluster is joined, whose nodes must all see ROOT at the same path (checked at start).
Without Ray installed (or with ``--sequential``) the same plan runs in this process, one task after another.

Resumable and idempotent: a stage whose ``meta.json`` (``benchmark.json`` for the benchmark) is valid is finished and
never run again, so re-running a killed batch continues where it stopped; a stage that fails (its error recorded,
the traceback in ``ROOT/logs/CLIP.STAGE.log``) stops only its own clip's chain. While it runs, one table (clip ×
stage: pending, queued, running, done, reused, failed, blocked, with seconds) is kept up to date on stderr; after
every task and at the end ``ROOT/batch.json`` and ``ROOT/batch.md`` hold every clip's status, error and figures
(tracking error, avatar PSNR, FlameTalk LVE against the mean-expression baseline, the benchmark row).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json, write_text
from ..config import validate
from ..errors import GftError
from .batch_exec import RayExecutor, SequentialExecutor, parse_resources, ray_available
from .batch_stages import STAGE_CONFIGS, StageOutcome, StageTask, finished_meta, marker_of, stage_figures
from .manifest import CLIP_STAGES, PRIOR_STAGE, STAGES, Clip, ManifestError, coerce_options, read_manifest

__all__ = ["BatchConfig", "Plan", "batch", "main", "make_plan"]

#: iterations of the cross-subject prior unless the manifest says otherwise (README: 120 or more)
PRIOR_ITERATIONS = 120
PRIOR_FOLDER = "talk-prior"


@dataclass
class BatchConfig:
    """Options of ``gft batch``."""

    manifest: Path = field(metadata={"help": "clips to run: a YAML or CSV manifest (see the README's gft batch)"})
    out: Path = field(metadata={"help": "ROOT folder: one SUBJECT folder per clip, batch.md, batch.json, logs/"})
    stages: str = field(default="track,train-avatar,train-talk,benchmark", metadata={
        "help": f"comma-separated stages to run, of {','.join(STAGES)} (run in that order)"})
    address: str | None = field(default=None, metadata={
        "help": "join this Ray cluster (ray://HOST:PORT, or auto); default: start a local Ray. Every node must see "
                "ROOT and the videos at the same paths (shared storage; checked at start)"})
    workers: int = field(default=0, metadata={"help": "local Ray: task slots (CPUs); 0 = as many as the CPUs and "
                                                      "memory fit"})
    sequential: bool = field(default=False, metadata={"help": "run in this process, one task after another, even "
                                                              "when Ray is installed"})
    head_model: str = field(default="ict", metadata={"help": "head model of clips whose manifest entry names none"})
    device: str = field(default="auto", metadata={"help": "every stage's torch device (auto resolves on the worker "
                                                          "that runs it)"})
    resources: tuple[str, ...] = field(default=(), metadata={
        "help": "per-stage resource requests, e.g. train-avatar.gpus=0.5 track.cpus=2 benchmark.memory_gb=4"})
    progress: bool = field(default=True, metadata={"help": "keep the live table on stderr"})

    def __post_init__(self) -> None:
        validate(self)
        parse_resources(self.resources)
        self.stage_list()
        if self.workers < 0:
            raise ValueError(f"--workers: {self.workers} is negative")
        if self.address is not None and self.address != "auto" and ":" not in self.address:
            raise ValueError(f"--address: {self.address!r} is not ray://HOST:PORT, HOST:PORT or auto")

    def stage_list(self) -> tuple[str, ...]:
        """The chosen stages in run order; a ValueError naming an unknown one."""
        names = [s.strip() for s in self.stages.replace(" ", ",").split(",") if s.strip()]
        unknown = [s for s in names if s not in STAGES]
        if unknown or not names:
            raise ValueError(f"--stages: {', '.join(unknown) or 'none given'}: choose from {','.join(STAGES)}")
        return tuple(s for s in STAGES if s in names)


@dataclass
class Plan:
    """Every task of a batch: ``tasks[(clip, stage)]`` in each clip's run order (``clips`` in manifest order), and
    the prior's task (clip None) whose ``subjects`` are filled in when tracking is over."""

    root: Path
    clips: list[Clip]
    stages: tuple[str, ...]
    tasks: dict[tuple[str | None, str], StageTask]

    @property
    def chain(self) -> list[str]:
        """Each clip's stages, in run order."""
        return [s for s in self.stages if s in CLIP_STAGES]

    @property
    def prior(self) -> bool:
        return PRIOR_STAGE in self.stages


def _task(manifest: Path, root: Path, clip: str | None, stage: str, options: dict[str, Any], folder: Path) -> StageTask:
    try:
        STAGE_CONFIGS[stage][0](**options)  # validated now, before any work; made again on the worker
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{manifest}: {f'clip {clip}' if clip else 'defaults'}: {stage}: {e}") from None
    return StageTask(clip=clip, stage=stage, options=options, marker=marker_of(stage, folder),
                     log=root / "logs" / f"{clip or 'all'}.{stage}.log")


def make_plan(cfg: BatchConfig) -> Plan:
    """Read the manifest and make (and validate) the config of every (clip, stage); a ManifestError before any work
    when a clip's options are wrong."""
    root = Path(cfg.out).resolve()
    stages = cfg.stage_list()
    clips, prior_options = read_manifest(cfg.manifest)
    base = Path(cfg.manifest).resolve().parent  # relative paths in the manifest are relative to it
    common = {"device": cfg.device, "progress": False}
    tasks: dict[tuple[str | None, str], StageTask] = {}
    prior_dir = root / PRIOR_FOLDER
    for clip in clips:
        subject = root / clip.name
        for stage in (s for s in stages if s in CLIP_STAGES):
            try:
                opts = coerce_options(stage, STAGE_CONFIGS[stage][0], clip.options.get(stage, {}), base)
            except ValueError as e:
                raise ManifestError(f"{cfg.manifest}: clip {clip.name}: {e}") from None
            own = {"track": {"video": clip.video, "out": subject, "head_model": clip.head_model or cfg.head_model},
                   "train-avatar": {"subject": subject},
                   "train-talk": {"subjects": (subject,), **({"init": prior_dir} if PRIOR_STAGE in stages else {})},
                   "benchmark": {"subjects": (subject,), "speech": clip.speech}}[stage]
            tasks[(clip.name, stage)] = _task(cfg.manifest, root, clip.name, stage, {**common, **opts, **own}, subject)
    if PRIOR_STAGE in stages:
        try:
            opts = coerce_options(PRIOR_STAGE, STAGE_CONFIGS[PRIOR_STAGE][0], prior_options, base)
        except ValueError as e:
            raise ManifestError(f"{cfg.manifest}: defaults: {e}") from None
        subjects = tuple(root / c.name for c in clips)  # the tracked ones are chosen when tracking is over
        tasks[(None, PRIOR_STAGE)] = _task(cfg.manifest, root, None, PRIOR_STAGE, {
            **common, "iterations": PRIOR_ITERATIONS, **opts, "subjects": subjects, "out": prior_dir}, prior_dir)
    return Plan(root=root, clips=clips, stages=stages, tasks=tasks)


@dataclass
class Cell:
    """One (clip, stage) of the table."""

    status: str = "pending"  # pending, queued, running, done, reused, failed, blocked
    since: float | None = None
    elapsed_s: float | None = None
    cpu_s: float | None = None
    host: str | None = None
    error: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)


class Batch:
    """The scheduler: submits each clip's next stage when the one before it is finished, the prior once tracking is
    over, and keeps the table and the reports."""

    def __init__(self, plan: Plan, mode: str, make_executor, progress: bool, t0: float) -> None:
        self.plan, self.mode, self.make_executor = plan, mode, make_executor
        self.executor = None  # started with the first task to run: a batch with nothing left to do starts no Ray
        self.cells = {key: Cell() for key in plan.tasks}
        self.next = {c.name: 0 for c in plan.clips}  # index of the next stage to submit in the clip's chain
        self.t0 = t0
        self.table = LiveTable(sys.stderr, progress)

    # -- scheduling
    def _finished(self, key) -> bool:
        return self.cells[key].status in ("done", "reused")

    def _over(self, key) -> bool:
        return self.cells[key].status in ("done", "reused", "failed", "blocked")

    def _reuse(self, key, meta: dict) -> None:
        self.cells[key] = Cell(status="reused", elapsed_s=0.0, figures=stage_figures(key[1], meta))
        self.table.event(key, self.cells[key])

    def _submit(self, task: StageTask) -> None:
        if self.executor is None:
            self.executor = self.make_executor()
        self.cells[task.key] = Cell(status="queued", since=time.perf_counter())
        task.started_file.unlink(missing_ok=True)
        self.executor.submit(task)
        self.table.event(task.key, self.cells[task.key])

    def _block(self, clip: str, why: str) -> None:
        """The clip's stages from the next one on will not run."""
        chain = self.plan.chain
        for stage in chain[self.next[clip]:]:
            self.cells[(clip, stage)] = Cell(status="blocked", error=why)
        self.next[clip] = len(chain)

    def advance(self, clip: str) -> None:
        """Submit the clip's next stage that is not finished yet (finished ones are reused as they are)."""
        chain = self.plan.chain
        while self.next[clip] < len(chain):
            stage = chain[self.next[clip]]
            key = (clip, stage)
            if self.cells[key].status in ("queued", "running"):
                return
            if stage == "train-talk" and self.plan.prior:
                prior = self.cells[(None, PRIOR_STAGE)]
                if prior.status in ("failed", "blocked"):
                    self._block(clip, f"{PRIOR_STAGE} failed")
                    return
                if not self._finished((None, PRIOR_STAGE)):
                    return
            task = self.plan.tasks[key]
            meta = finished_meta(stage, task.marker)
            if meta is not None:
                self._reuse(key, meta)
                self.next[clip] += 1
                continue
            self._submit(task)
            return

    def advance_prior(self) -> None:
        """Once every clip's tracking is over, train the prior on the clips that tracked (or reuse a finished one)."""
        key = (None, PRIOR_STAGE)
        if not self.plan.prior or self.cells[key].status != "pending":
            return
        tracked = []
        for clip in self.plan.clips:
            track = (clip.name, "track")
            if track in self.cells and not self._over(track):
                return  # tracking still going
            if finished_meta("track", marker_of("track", self.plan.root / clip.name)) is not None:
                tracked.append(self.plan.root / clip.name)
        task = self.plan.tasks[key]
        meta = finished_meta(PRIOR_STAGE, task.marker)
        if meta is not None:
            self._reuse(key, meta)
        elif not tracked:
            self.cells[key] = Cell(status="failed", error="no clip was tracked")
            self.table.event(key, self.cells[key])
        else:
            self._submit(StageTask(**{**task.__dict__, "options": {**task.options, "subjects": tuple(tracked)}}))

    def record(self, outcome: StageOutcome) -> None:
        key = (outcome.clip, outcome.stage)
        self.plan.tasks[key].started_file.unlink(missing_ok=True)
        self.cells[key] = Cell(status=outcome.status, elapsed_s=outcome.elapsed_s, cpu_s=outcome.cpu_s,
                               host=outcome.host, error=outcome.error, figures=outcome.figures)
        self.table.event(key, self.cells[key])
        if outcome.clip is not None:
            self.next[outcome.clip] += 1
            if outcome.status != "done":
                self._block(outcome.clip, f"{outcome.stage} failed")

    def started(self, task: StageTask) -> None:
        cell = self.cells[task.key]
        if cell.status == "queued":
            cell.status, cell.since = "running", time.perf_counter()
            self.table.event(task.key, cell)

    def advance_all(self) -> None:
        """Submit whatever can run now (the prior, once ready, lets the clips' train-talk go)."""
        for clip in self.plan.clips:
            self.advance(clip.name)
        self.advance_prior()
        for clip in self.plan.clips:
            self.advance(clip.name)

    def run(self) -> dict:
        self.advance_all()
        self.write_reports()
        while self.executor is not None and self.executor.busy():
            self.table.draw(self)
            outcomes = self.executor.wait(self.started)
            for outcome in outcomes:
                self.record(outcome)
            if outcomes:
                self.advance_all()
                self.write_reports()
        self.table.draw(self, final=True)
        return self.write_reports()

    # -- reports
    def summary(self) -> dict:
        clips = []
        for clip in self.plan.clips:
            stages = {s: self.cells[(clip.name, s)] for s in self.plan.chain}
            failed = [s for s, c in stages.items() if c.status == "failed"]
            status = "failed" if failed or any(c.status == "blocked" for c in stages.values()) else (
                "done" if all(c.status in ("done", "reused") for c in stages.values()) else "incomplete")
            figures: dict[str, Any] = {}
            for c in stages.values():
                figures.update(c.figures)
            clips.append({"name": clip.name, "video": str(clip.video), "subject": str(self.plan.root / clip.name),
                          "status": status,
                          "error": next((f"{s}: {stages[s].error}" for s in failed), None) or next(
                              (f"{s}: {c.error}" for s, c in stages.items() if c.status == "blocked"), None),
                          "stages": {s: _cell_dict(c) for s, c in stages.items()}, "figures": figures})
        out = {"stage": "batch", "root": str(self.plan.root), "stages": list(self.plan.stages),
               "mode": self.mode if self.executor is not None else "nothing to run",
               "workers": self.executor.workers if self.executor is not None else 0,
               "wall_s": time.perf_counter() - self.t0, "clips": clips}
        if self.plan.prior:
            out["prior"] = {"folder": str(self.plan.root / PRIOR_FOLDER), **_cell_dict(self.cells[(None, PRIOR_STAGE)])}
        return out

    def write_reports(self) -> dict:
        summary = self.summary()
        write_json(self.plan.root / "batch.json", summary)
        write_text(self.plan.root / "batch.md", format_markdown(summary))
        return summary


def _cell_dict(c: Cell) -> dict[str, Any]:
    return {"status": c.status, "elapsed_s": c.elapsed_s, "cpu_s": c.cpu_s, "host": c.host, "error": c.error,
            "figures": c.figures}


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    return format(v * scale, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def _bench(column: str, spec: str):
    """The cell of one benchmark column."""
    return lambda f: _fmt((f.get("benchmark") or {}).get(column), spec)


#: the results table's figure columns: (stage that measures it, title, cell of a clip's figures)
FIGURE_COLUMNS = (
    ("track", "tracking error (% IOD)", lambda f: _fmt(f.get("tracking_error_iod"), ".2f", 100)),
    ("train-avatar", "avatar test PSNR (dB)", lambda f: _fmt(f.get("avatar_test_psnr"), ".2f")),
    ("train-talk", "FlameTalk LVE mm (mean-expression baseline)",
     lambda f: f"{_fmt(f.get('talk_lve_mm'), '.3f')} ({_fmt(f.get('talk_baseline_lve_mm'), '.3f')})"),
    ("benchmark", "self PSNR", _bench("self PSNR", ".2f")),
    ("benchmark", "self SSIM", _bench("self SSIM", ".3f")),
    ("benchmark", "self Stability", _bench("self Stability", ".3f")),
    ("benchmark", "cross Stability", _bench("cross Stability", ".3f")),
)


def format_markdown(s: dict) -> str:
    """batch.md: the results table (one row per clip), the per-stage times, and every error."""
    columns = [(title, cell) for stage, title, cell in FIGURE_COLUMNS if stage in s["stages"]]
    lines = [f"# gft batch: {s['root']}", "",
             f"{len(s['clips'])} clips, stages {', '.join(s['stages'])}; {s['mode']} on {s['workers']} task slot(s); "
             f"{s['wall_s']:.0f} s wall.", "",
             "| clip | status | " + " | ".join(t for t, _ in columns) + " |", "|---|---|" + "---|" * len(columns)]
    for c in s["clips"]:
        lines.append(f"| {c['name']} | {c['status']} | " + " | ".join(cell(c["figures"]) for _, cell in columns) + " |")
    stages = [st for st in s["stages"] if st != PRIOR_STAGE]
    lines += ["", "Seconds per stage (reused: finished before, not run again):", "",
              "| clip | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for c in s["clips"]:
        lines.append(f"| {c['name']} | " + " | ".join(_status_cell(c["stages"][st]) for st in stages) + " |")
    if "prior" in s:
        p = s["prior"]
        lines += ["", f"Cross-subject FlameTalk prior ({p['folder']}): {_status_cell(p)}"
                  + (f", trained on {p['figures'].get('subjects')} subjects" if p["figures"] else "")
                  + (f": {p['error']}" if p["error"] else "")]
    errors = [c for c in s["clips"] if c["error"]]
    if errors:
        lines += ["", "Errors (tracebacks in logs/CLIP.STAGE.log):", ""]
        lines += [f"- {c['name']}: {c['error']}" for c in errors]
    return "\n".join(lines) + "\n"


def _status_cell(c: dict) -> str:
    if c["status"] in ("done", "failed") and c.get("elapsed_s") is not None:
        return f"{c['status']} {c['elapsed_s']:.0f} s"
    return c["status"]


class LiveTable:
    """The clip × stage table on a terminal, redrawn in place at most once a second; on anything else (a log file,
    a pipe), one line per change of a cell and the table at the end."""

    def __init__(self, stream, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.lines, self.last = 0, 0.0

    def event(self, key, cell: Cell) -> None:
        if self.enabled and not self.tty:
            clip, stage = key
            extra = f" ({cell.elapsed_s:.0f} s)" if cell.elapsed_s else ""
            print(f"[gft batch] {clip or 'all clips'} {stage}: {cell.status}{extra}"
                  + (f": {cell.error}" if cell.error else ""), file=self.stream, flush=True)

    def render(self, batch: Batch) -> list[str]:
        now = time.perf_counter()
        stages = [s for s in batch.plan.stages if s != PRIOR_STAGE]
        width = max([4, *(len(c.name) for c in batch.plan.clips)])
        rows = [f"{'clip':<{width}}  " + "  ".join(f"{s:<14}" for s in stages)]
        for clip in batch.plan.clips:
            cells = []
            for s in stages:
                c = batch.cells[(clip.name, s)]
                t = c.elapsed_s if c.elapsed_s is not None else (now - c.since if c.since is not None else None)
                cells.append(f"{c.status + (f' {t:.0f}s' if t and c.status != 'reused' else ''):<14}")
            rows.append(f"{clip.name:<{width}}  " + "  ".join(cells))
        if batch.plan.prior:
            c = batch.cells[(None, PRIOR_STAGE)]
            t = c.elapsed_s if c.elapsed_s is not None else (now - c.since if c.since is not None else None)
            rows.append(f"{PRIOR_STAGE}: {c.status}" + (f" {t:.0f}s" if t else ""))
        rows.append(f"{now - batch.t0:.0f} s elapsed")
        return rows

    def draw(self, batch: Batch, final: bool = False) -> None:
        if not self.enabled or not (final or self.tty):
            return
        if self.tty and not final and time.perf_counter() - self.last < 1.0:
            return
        rows = self.render(batch)
        if self.tty and self.lines:
            self.stream.write(f"\x1b[{self.lines}F\x1b[J")
        self.stream.write("\n".join(rows) + "\n")
        self.stream.flush()
        self.lines, self.last = len(rows), time.perf_counter()


def batch(cfg: BatchConfig) -> dict:
    """Run the batch (module docstring); returns the batch.json dict."""
    t0 = time.perf_counter()
    plan = make_plan(cfg)
    plan.root.mkdir(parents=True, exist_ok=True)
    resources = parse_resources(cfg.resources)
    sequential = cfg.sequential or not ray_available()
    if sequential and cfg.address:
        raise GftError(f"--address {cfg.address}: Ray is not installed here (pip install "
                       f"'gaussian-flametalk[distributed]')")
    if sequential and not cfg.sequential:
        print("[gft batch] Ray is not installed (pip install 'gaussian-flametalk[distributed]'): running the plan "
              "sequentially in this process", file=sys.stderr)
    run = Batch(plan, "sequential" if sequential else "ray", SequentialExecutor if sequential else
                lambda: RayExecutor(plan.root, resources, cfg.address, cfg.workers), cfg.progress, t0)
    try:
        return run.run()
    finally:
        if run.executor is not None:
            run.executor.close()


def main(cfg: BatchConfig) -> int:
    summary = batch(cfg)
    root = Path(summary["root"])
    print(format_markdown(summary), end="")
    failed = [c["name"] for c in summary["clips"] if c["status"] != "done"]
    prior_failed = summary.get("prior", {}).get("status") == "failed"
    print(f"wrote {root / 'batch.md'} and {root / 'batch.json'}")
    if failed or prior_failed:
        print(f"gft batch: {len(failed)} of {len(summary['clips'])} clips did not finish"
              + (f" ({', '.join(failed)})" if failed else "") + ("; the prior failed" if prior_failed else "")
              + f": see {root / 'batch.md'}", file=sys.stderr)
        return 2
    return 0
