"""The CUDA path in one bounded command: gsplat built, agreeing with the reference, and timed (issue 19).

On a bare GPU machine (python3 with a CUDA torch, nvcc and ninja; no package registry), from the repository root::

    python3 -m gaussian_flametalk.scripts.gpu_check [--out DIR]          # DIR defaults to $OUT

runs these steps in order; each is timed and bounded by a timeout (all of them together by ``--budget-s``), and one
that fails is recorded and the next still runs:

- ``environment``: device, driver, torch / CUDA / nvcc / numpy versions, CPU count.
- ``install``: the carried wheels (``gpu_wheels/*.whl``) with ``pip install --no-index --no-deps --target WORK/site``,
  put first on the PYTHONPATH of every later step; ``--no-deps`` and a separate target leave the machine's own
  torch and numpy alone. Each installed package is imported once to prove it.
- ``build``: gsplat's CUDA extension. gsplat 1.5.3 ships sources only and JIT-compiles them (torch's
  ``cpp_extension`` with ninja) when ``gsplat.cuda._backend`` is first imported; the build goes to
  ``WORK/torch_extensions`` (``TORCH_EXTENSIONS_DIR``, shared by every later step), for this GPU's architecture only
  (``TORCH_CUDA_ARCH_LIST``), with ``MAX_JOBS`` = the CPU count. Timed from a cold cache.
- ``pytest``: ``pytest -m gpu tests/test_rasterize_gpu.py`` (gsplat against the reference: images, alphas and
  gradients, batches of cameras, SH degrees 0-3).
- ``render``: bench_render's CUDA cases, each in its own process (gsplat and the pure-PyTorch reference at 512x512
  with 100k Gaussians, forward and forward + backward): FPS, peak CUDA memory, gsplat's speed-up over the reference.
- ``train``: ``gft train-avatar`` on a copy of the prepared SUBJECT (the demo's, tracked on the CPU machine) at
  512 px for a fixed number of iterations: it/s.
- ``drive``: bench_drive (``gft drive`` after a short warm-up drive) with the trained avatar at 512 px: frames per
  second and the real-time factor.

It writes ``OUT/gpu_check.json`` (rewritten after every step: device, versions, each step's status, reason, seconds
and figures, the goals) and ``OUT/gpu_check.log`` (every step's own output). Exit status 0 when every step passed.

None of these steps imports mediapipe (which does not import beside numpy 2) or needs espeak-ng: the SUBJECT, its
FlameTalk (mel audio encoder: pocketsphinx has no wheel for the GPU image's Python) and the drive speech are made
on the CPU machine by ``prepare`` and carried along::

    python -m gaussian_flametalk.scripts.gpu_check prepare

downloads the wheels into ``gpu_wheels/`` (pip download, no install), builds the demo SUBJECT into ``gpu_prep/``
(both git-ignored), checks that what travels fits the device tool's 64 MiB, and prints the exact ``run`` call (command,
``carry`` list, ``timeout_s``).

``--dry-run`` checks the script itself on a machine without CUDA: every step runs that can (argument parsing, the
wheel install into a temporary target, pytest, whose GPU tests skip, the JSON and the log), the CUDA ones are
recorded as ``skipped`` with the reason, bench_render runs a small CPU case instead, and train and drive run on the
CPU at 64 px for a few iterations (stand-ins that check the plumbing; their figures are not GPU figures).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import add_dataclass_args, config_to_dict, dataclass_from_args, validate

__all__ = ["GpuCheckConfig", "PrepareConfig", "STEPS", "StepSkipped", "Timeouts", "main", "prepare", "run_check"]

#: the repository root (the device tool copies the working tree and runs commands there)
REPO = Path(__file__).resolve().parents[2]

#: bench_render's cases that the check times on CUDA
CUDA_RENDER_CASES = ("gsplat-cuda-512-100k-fwd", "gsplat-cuda-512-100k-fwdbwd", "ref-cuda-512-100k-fwd",
                     "ref-cuda-512-100k-fwdbwd")

#: what the GPU image lacks that the checked stages import (gsplat's own needs, jaxtyping, rich and ninja, and torch,
#: numpy, scipy, opencv, tqdm, matplotlib, pyyaml, pytest are on it: /work/.library/device/KINDS.md). imageio-ffmpeg
#: carries the ffmpeg that audio loading and video writing run; 0.6.0's wheel is 29 MB (0.8's is 68 MB: too big for
#: the 64 MiB the device tool copies).
DEFAULT_PACKAGES = ("gsplat==1.5.3", "imageio-ffmpeg==0.6.0")

#: distributions that must come from the GPU image itself, never from carried wheels
IMAGE_OWN = ("torch", "numpy", "triton", "nvidia-")

#: the device tool's limit on what travels (working tree + carried paths)
CARRY_LIMIT_BYTES = 64 * 2**20

#: the scratch folder of the printed run call (on the GPU machine)
GPU_WORK = "/tmp/gpu_check"

#: a step is not started with less than this many seconds of the budget left
MIN_STEP_S = 5.0

JSON_MARK = "GPU_CHECK_JSON "


@dataclass
class Timeouts:
    """Per-step limits in seconds (each also capped by what is left of ``--budget-s``)."""

    install: float = field(default=120.0, metadata={"above": 0, "help": "pip install of the wheels and the import check"})
    build: float = field(default=330.0, metadata={"above": 0, "help": "gsplat's CUDA extension build (cold cache)"})
    pytest: float = field(default=150.0, metadata={"above": 0, "help": "pytest -m gpu"})
    render_case: float = field(default=90.0, metadata={"above": 0, "help": "one bench_render case (own process)"})
    train: float = field(default=180.0, metadata={"above": 0, "help": "gft train-avatar"})
    drive: float = field(default=150.0, metadata={"above": 0, "help": "bench_drive (warm-up drive + timed drive)"})


#: gft train-avatar options as ``gft demo`` trains its avatar (pipeline/demo.py)
DEMO_TRAIN_ARGS = "--densify.start 0.25 --densify.end 0.75 --densify.opacity-resets 0 --sh-degree 2 --sh-ramp 0.6667"

STEP_NAMES = ("environment", "install", "build", "pytest", "render", "train", "drive")


@dataclass
class GpuCheckConfig:
    """Options of the GPU check (``python -m gaussian_flametalk.scripts.gpu_check``)."""

    out: Path | None = field(default=None, metadata={"help": "folder for gpu_check.json and gpu_check.log "
                                                             "(default: $OUT)"})
    dry_run: bool = field(default=False, metadata={
        "help": "check the script without CUDA: CUDA steps skipped, train/drive on the CPU at tiny sizes"})
    wheels: Path = field(default=Path("gpu_wheels"), metadata={"help": "folder of wheels to install (from prepare)"})
    subject: Path = field(default=Path("gpu_prep/subject"), metadata={
        "help": "tracked SUBJECT with a trained FlameTalk (SUBJECT/talk) to train the avatar on (from prepare)"})
    speech: Path = field(default=Path("gpu_prep/drive_speech.wav"), metadata={"help": "speech to drive with"})
    work: Path | None = field(default=None, metadata={"help": "scratch folder (default: a new temporary one)"})
    steps: tuple[str, ...] = field(default=STEP_NAMES, metadata={"help": f"steps to run ({', '.join(STEP_NAMES)})"})
    budget_s: float = field(default=450.0, metadata={"min": 1, "help": "time for all steps together (seconds)"})
    train_iterations: int | None = field(default=None, metadata={
        "min": 1, "help": "avatar training iterations (default 500; 3 in a dry run)"})
    train_resolution: int | None = field(default=None, metadata={
        "min": 16, "help": "avatar training size in px (default 512; 64 in a dry run)"})
    drive_resolution: int | None = field(default=None, metadata={
        "min": 16, "help": "drive render size in px (default 512; 64 in a dry run)"})
    train_args: str = field(default=DEMO_TRAIN_ARGS, metadata={
        "help": "further gft train-avatar options, one string (--train-args='...'; default: the demo's densification "
                "schedule and SH degree)"})
    render_cases: tuple[str, ...] = field(default=CUDA_RENDER_CASES, metadata={"help": "bench_render cases to time"})
    dry_render_cases: tuple[str, ...] = field(default=("ref-cpu-256-20k-fwd-t1",), metadata={
        "help": "bench_render cases a dry run times instead of the CUDA ones"})
    render_repeats: int = field(default=10, metadata={"min": 1, "help": "timed runs per gsplat case (after a warm-up)"})
    reference_repeats: int = field(default=3, metadata={"min": 1, "help": "timed runs per reference case"})
    gpu_tests: tuple[str, ...] = field(default=("tests/test_rasterize_gpu.py",), metadata={
        "help": "test files for pytest -m gpu (relative to the repository)"})
    timeouts: Timeouts = field(default_factory=Timeouts, metadata={"help": "per-step time limits"})

    def __post_init__(self) -> None:
        validate(self)
        unknown = [s for s in self.steps if s not in STEP_NAMES]
        if unknown:
            raise ValueError(f"--steps: unknown {', '.join(unknown)} (known: {', '.join(STEP_NAMES)})")
        if self.out is None:
            if not os.environ.get("OUT"):
                raise ValueError("--out: not given and $OUT is not set")
            self.out = Path(os.environ["OUT"])
        self.out, self.wheels, self.subject, self.speech = (Path(p).absolute() for p in
                                                            (self.out, self.wheels, self.subject, self.speech))
        if self.work is not None:
            self.work = Path(self.work).absolute()

    @property
    def sizes(self) -> dict[str, int]:
        """Iterations and resolutions in effect (the dry run's tiny defaults unless given)."""
        tiny = self.dry_run
        return {"train_iterations": self.train_iterations or (3 if tiny else 500),
                "train_resolution": self.train_resolution or (64 if tiny else 512),
                "drive_resolution": self.drive_resolution or (64 if tiny else 512)}


# ------------------------------------------------------------------------------------------------ running steps

class StepSkipped(Exception):
    """A step that cannot run here (its reason is recorded, with what it measured on the way, if anything)."""

    def __init__(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.figures = figures or {}


class StepFailed(Exception):
    """A step that ran and failed; ``figures`` are what it measured before failing."""

    def __init__(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.figures = figures or {}


class StepTimeout(Exception):
    """A subprocess of a step ran past its timeout and was killed (with its whole process group)."""


@dataclass
class Proc:
    returncode: int
    output: str
    seconds: float

    def json(self) -> dict[str, Any]:
        """The payload of the last ``GPU_CHECK_JSON`` line, else the last line that parses as a JSON object."""
        lines = self.output.strip().splitlines()
        for line in reversed(lines):
            if line.startswith(JSON_MARK):
                return json.loads(line[len(JSON_MARK):])
        for line in reversed(lines):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
        raise ValueError("no JSON line in the output")


def tail(text: str, n: int = 2000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


class Context:
    """What the steps share: the config, the scratch folders, the subprocess environment, the log and the clock."""

    def __init__(self, cfg: GpuCheckConfig, log, work: Path) -> None:
        self.cfg = cfg
        self.log_file = log
        self.work = work
        self.site = work / "site"
        self.t0 = time.perf_counter()
        self.cuda = False  # set by the environment step: torch sees a GPU and this is no dry run
        self.torch_cuda = False  # torch sees a GPU
        self.results: dict[str, dict[str, Any]] = {}
        self.env = dict(os.environ)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        self.env.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.env["TORCH_EXTENSIONS_DIR"] = str(work / "torch_extensions")
        self.env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
        self.python_path = [str(REPO)]
        self._set_python_path()

    def _set_python_path(self) -> None:
        rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        self.env["PYTHONPATH"] = os.pathsep.join(self.python_path + rest)

    def add_python_path(self, path: Path) -> None:
        self.python_path.insert(0, str(path))
        self._set_python_path()
        sys.path.insert(0, str(path))

    def remaining(self) -> float:
        return self.cfg.budget_s - (time.perf_counter() - self.t0)

    def say(self, msg: str) -> None:
        """A line on stdout and in the log."""
        line = f"[gpu-check {time.perf_counter() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log_file.write((line + "\n").encode())
        self.log_file.flush()

    def run(self, cmd: list[str], timeout: float, cwd: Path | None = None) -> Proc:
        """Run ``cmd`` (its output into the log), killed with its process group after ``timeout`` seconds or when
        the budget runs out; raises StepTimeout then. A process group of its own, not a session: whatever kills
        this process's session (the device tool, at its timeout) still ends the step's children too."""
        limit = min(timeout, self.remaining() - 1.0)
        if limit < 1.0:
            raise StepSkipped(f"out of time (budget {self.cfg.budget_s:g} s)")
        self.say("$ " + " ".join(cmd) + f"   (timeout {limit:.0f} s)")
        self.log_file.flush()
        start = self.log_file.tell()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(cwd or REPO), env=self.env, **_OWN_GROUP)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            seconds = time.perf_counter() - t0
            output = self._read_from(start)
            raise StepTimeout(f"timed out after {seconds:.0f} s: {' '.join(cmd[:6])}\n{tail(output, 1500)}") from None
        except BaseException:
            _kill_group(proc)
            raise
        _kill_group(proc)  # anything it left running
        seconds = time.perf_counter() - t0
        return Proc(rc, self._read_from(start), seconds)

    def _read_from(self, offset: int) -> str:
        self.log_file.flush()
        with open(self.log_file.name, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


#: Popen keywords that start a child in a process group of its own (``process_group`` is Python 3.11+)
_OWN_GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _no_cuda_reason(ctx: Context) -> str:
    return "no CUDA (dry run)" if ctx.torch_cuda else "no CUDA"


def _need_cuda(ctx: Context) -> None:
    if not ctx.cuda:
        raise StepSkipped(_no_cuda_reason(ctx))


# ------------------------------------------------------------------------------------------------ the steps

def step_environment(ctx: Context) -> dict[str, Any]:
    import numpy
    import torch

    cfg = ctx.cfg
    ctx.torch_cuda = torch.cuda.is_available()
    ctx.cuda = ctx.torch_cuda and not cfg.dry_run
    figs: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "numpy": numpy.__version__, "cpu_count": os.cpu_count(),
        "cpu": _cpu_name(), "cuda_available": ctx.torch_cuda, "dry_run": cfg.dry_run,
        "ninja": shutil.which("ninja"), "sizes": cfg.sizes,
        # what torch's JIT build of gsplat needs besides nvcc: a host C++ compiler and the Python headers
        "cxx": shutil.which("c++") or shutil.which("g++"),
        "python_h": (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file(),
    }
    if ctx.torch_cuda:
        props = torch.cuda.get_device_properties(0)
        figs.update(device=torch.cuda.get_device_name(0), capability=f"{props.major}.{props.minor}",
                    gpu_memory_gb=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version())
        ctx.env.setdefault("TORCH_CUDA_ARCH_LIST", f"{props.major}.{props.minor}")
    else:
        figs["device"] = f"CPU: {figs['cpu']}"
    figs["torch_cuda_arch_list"] = ctx.env.get("TORCH_CUDA_ARCH_LIST")
    figs["max_jobs"] = ctx.env.get("MAX_JOBS")
    figs["nvcc"] = _nvcc_version()
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
            figs["nvidia_smi"] = out or None
        except (subprocess.TimeoutExpired, OSError) as exc:
            figs["nvidia_smi"] = f"failed: {exc}"
    for name in ("mediapipe", "gsplat", "imageio_ffmpeg"):  # what the image has before the install step
        figs[f"has_{name}"] = importlib.util.find_spec(name) is not None
    return figs


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvcc_version() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
        nvcc = str(Path(home) / "bin" / "nvcc") if (Path(home) / "bin" / "nvcc").is_file() else None
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (subprocess.TimeoutExpired, OSError) as exc:
        return f"failed: {exc}"
    m = re.search(r"release [\d.]+, V([\d.]+)", out)
    if m:
        return m.group(1)
    lines = out.strip().splitlines()
    return lines[-1] if lines else None


def wheel_name(path: Path) -> tuple[str, str]:
    """(normalised distribution name, version) of a wheel file name."""
    parts = path.name[: -len(".whl")].split("-")
    if len(parts) < 5:
        raise ValueError(f"{path.name}: not a wheel file name (NAME-VERSION-PY-ABI-PLATFORM.whl)")
    return normalise(parts[0]), parts[1]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _image_own(name: str) -> bool:
    return any(name == p or (p.endswith("-") and name.startswith(p)) for p in IMAGE_OWN)


def step_install(ctx: Context) -> dict[str, Any]:
    wheels = sorted(ctx.cfg.wheels.glob("*.whl")) if ctx.cfg.wheels.is_dir() else []
    if not wheels:
        raise StepSkipped(f"no wheels in {ctx.cfg.wheels} (run `python -m {__spec__.name} prepare` where pip "
                          "reaches a registry)")
    named = [(w, *wheel_name(w)) for w in wheels]
    refused = [w.name for w, name, _ in named if _image_own(name)]
    chosen = [w for w, name, _ in named if not _image_own(name)]
    seen: dict[str, str] = {}
    for _, name, version in named:
        if name in seen and seen[name] != version:
            raise StepFailed(f"two versions of {name} in {ctx.cfg.wheels} ({seen[name]}, {version}): keep one")
        seen[name] = version
    ctx.site.mkdir(parents=True, exist_ok=True)
    proc = ctx.run(_python("-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                           "--upgrade", "--disable-pip-version-check", "--target", str(ctx.site),
                           *map(str, chosen)), ctx.cfg.timeouts.install)
    figs: dict[str, Any] = {"target": str(ctx.site), "wheels": [w.name for w in chosen], "refused": refused,
                            "pip_seconds": round(proc.seconds, 2)}
    if proc.returncode != 0:
        raise StepFailed(f"pip install exited {proc.returncode}: {tail(proc.output, 800)}", figs)
    ctx.add_python_path(ctx.site)
    # import every installed top-level module in a fresh process with the environment the later steps get
    check = ctx.run(_python("-c", f"from {__spec__.name} import probe_site; probe_site({str(ctx.site)!r})"),
                    ctx.cfg.timeouts.install)
    if check.returncode != 0:
        raise StepFailed(f"import check exited {check.returncode}: {tail(check.output, 800)}", figs)
    figs["installed"] = check.json()
    broken = {n: d["errors"] for n, d in figs["installed"].items() if d["errors"]}
    if broken:
        raise StepFailed(f"installed but not importable: {broken}", figs)
    return figs


def probe_site(site: str) -> None:
    """Import every top-level module of every distribution installed in ``site``; prints one JSON line:
    {name: {version, modules, errors}} (an error also when a module is imported from elsewhere than ``site``)."""
    import importlib
    import importlib.metadata as md

    out: dict[str, Any] = {}
    for dist in md.distributions(path=[site]):
        tops = set()
        for f in dist.files or []:
            first = f.parts[0]
            if first.endswith((".dist-info", ".data")) or first in ("..", "bin", "__pycache__"):
                continue
            if len(f.parts) > 1 and (Path(site) / first / "__init__.py").is_file():
                tops.add(first)
            elif len(f.parts) == 1 and first.endswith(".py"):
                tops.add(first[:-3])
        errors = {}
        for mod in sorted(tops):
            try:
                m = importlib.import_module(mod)
                origin = str(getattr(m, "__file__", None) or "")
                if not origin.startswith(site):
                    errors[mod] = f"imported from {origin or 'nowhere'}, not {site}"
            except Exception as exc:  # report, do not stop: the next module may import
                errors[mod] = f"{type(exc).__name__}: {exc}"
        out[dist.metadata["Name"]] = {"version": dist.version, "modules": sorted(tops), "errors": errors}
    print(JSON_MARK + json.dumps(out), flush=True)


def step_build(ctx: Context) -> dict[str, Any]:
    _need_cuda(ctx)
    code = ("import json, time\n"
            "t0 = time.perf_counter()\n"
            "from gaussian_flametalk.avatar.rasterize_gsplat import gsplat_status\n"
            "s = gsplat_status(build=True)\n"
            "s['seconds'] = time.perf_counter() - t0\n"
            f"print({JSON_MARK!r} + json.dumps(s, default=str))\n")
    proc = ctx.run(_python("-c", code), ctx.cfg.timeouts.build)
    try:
        status = proc.json()
    except ValueError:
        raise StepFailed(f"exited {proc.returncode} without a status: {tail(proc.output, 1500)}") from None
    so = sorted(Path(ctx.env["TORCH_EXTENSIONS_DIR"]).glob("**/gsplat_cuda*.so"))
    figs = {"build_seconds": round(status.pop("seconds"), 1), "process_seconds": round(proc.seconds, 1),
            "status": status, "extension_file": str(so[0]) if so else None,
            "extension_mb": round(so[0].stat().st_size / 2**20, 1) if so else None,
            "torch_extensions_dir": ctx.env["TORCH_EXTENSIONS_DIR"], "max_jobs": ctx.env.get("MAX_JOBS"),
            "torch_cuda_arch_list": ctx.env.get("TORCH_CUDA_ARCH_LIST")}
    if not status.get("extension"):
        raise StepFailed(f"gsplat's CUDA extension did not load: {status.get('error')}\n{tail(proc.output, 1500)}",
                         figs)
    return figs


def step_pytest(ctx: Context) -> dict[str, Any]:
    report = ctx.work / "pytest-gpu.xml"
    report.unlink(missing_ok=True)
    proc = ctx.run(_python("-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={report}",
                           *ctx.cfg.gpu_tests), ctx.cfg.timeouts.pytest)
    if not report.is_file():
        raise StepFailed(f"pytest exited {proc.returncode} without a report: {tail(proc.output, 1500)}")
    figs = junit_counts(report)
    figs["pytest_seconds"] = round(proc.seconds, 1)
    if figs["failures"] or figs["errors"] or proc.returncode not in (0, 5):
        raise StepFailed(f"pytest exited {proc.returncode}: {figs['failures']} failed, {figs['errors']} errors: "
                         + "; ".join(f"{k}: {v}" for k, v in list(figs["failed"].items())[:5]), figs)
    if figs["tests"] == 0:
        raise StepFailed("no gpu tests collected", figs)
    if figs["passed"] == 0:
        reasons = sorted(set(figs["skip_reasons"].values()))
        if ctx.cuda:
            raise StepFailed(f"all {figs['tests']} gpu tests skipped on a CUDA machine: {reasons}", figs)
        raise StepSkipped(f"{_no_cuda_reason(ctx)}: all {figs['tests']} gpu tests skipped ({'; '.join(reasons)})",
                          figs)
    return figs


def junit_counts(path: Path) -> dict[str, Any]:
    """tests / passed / failures / errors / skipped of a pytest junit XML, with failure messages and skip reasons."""
    root = ET.parse(path).getroot()
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    n = 0
    for case in root.iter("testcase"):
        n += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                failed[name] = (el.get("message") or el.text or tag)[:300]
        el = case.find("skipped")
        if el is not None:
            skipped[name] = (el.get("message") or "")[:200]
    errors = sum(1 for c in root.iter("testcase") if c.find("error") is not None)
    failures = len(failed) - errors
    return {"tests": n, "passed": n - len(failed) - len(skipped), "failures": failures, "errors": errors,
            "skipped": len(skipped), "failed": failed, "skip_reasons": skipped}


def step_render(ctx: Context) -> dict[str, Any]:
    from .bench_render import CASES

    by_name = {c.name: c for c in CASES}
    cfg = ctx.cfg
    names = list(cfg.render_cases)
    if not ctx.cuda:
        names += [n for n in cfg.dry_render_cases if n not in names]
    cases: dict[str, Any] = {}
    failed = []
    for name in names:
        case = by_name.get(name)
        if case is None:
            cases[name] = {"status": "failed", "reason": f"unknown case (known: {', '.join(by_name)})"}
            failed.append(name)
            continue
        if case.device == "cuda" and not ctx.cuda:
            cases[name] = {"status": "skipped", "reason": _no_cuda_reason(ctx)}
            continue
        if case.device != "cuda" and ctx.cuda:
            cases[name] = {"status": "skipped", "reason": "CPU case: dry runs only"}
            continue
        repeats = cfg.reference_repeats if case.backend == "reference" else cfg.render_repeats
        try:
            proc = ctx.run(_python("-m", "gaussian_flametalk.scripts.bench_render", "--run-one", name,
                                   "--repeats", str(repeats)), cfg.timeouts.render_case)
        except StepTimeout as exc:
            cases[name] = {"status": "timeout", "reason": str(exc)[:500]}
            failed.append(name)
            continue
        except StepSkipped as exc:
            cases[name] = {"status": "skipped", "reason": str(exc)}
            continue
        if proc.returncode != 0:
            cases[name] = {"status": "failed", "reason": f"exited {proc.returncode}: {tail(proc.output, 800)}"}
            failed.append(name)
            continue
        r = proc.json()
        cases[name] = {"status": "ok", "backend": case.backend, "device": case.device, "size": case.size,
                       "gaussians": case.n_gaussians, "pass": "fwd+bwd" if case.backward else "fwd",
                       "repeats": repeats, "median_s": r["seconds"], "min_s": r["min_seconds"],
                       "fps_median": 1.0 / r["seconds"], "fps_best": 1.0 / r["min_seconds"],
                       "peak_cuda_gb": r.get("peak_cuda_gb"), "peak_rss_gb": r["peak_rss_gb"],
                       "process_seconds": round(proc.seconds, 1)}
    figs: dict[str, Any] = {"cases": cases}
    for pass_ in ("fwd", "fwdbwd"):
        g, ref = cases.get(f"gsplat-cuda-512-100k-{pass_}", {}), cases.get(f"ref-cuda-512-100k-{pass_}", {})
        if g.get("status") == "ok" and ref.get("status") == "ok":
            figs[f"gsplat_over_reference_{pass_}"] = ref["median_s"] / g["median_s"]
    if failed:
        raise StepFailed(f"cases failed: {', '.join(failed)}", figs)
    if all(c["status"] == "skipped" for c in cases.values()):
        raise StepSkipped(_no_cuda_reason(ctx), figs)
    return figs


def _device(ctx: Context) -> str:
    if ctx.cuda:
        return "cuda"
    if ctx.cfg.dry_run:
        return "cpu"
    raise StepSkipped(_no_cuda_reason(ctx))


def step_train(ctx: Context) -> dict[str, Any]:
    device = _device(ctx)
    cfg, sizes = ctx.cfg, ctx.cfg.sizes
    if not (cfg.subject / "meta.json").is_file():
        raise StepFailed(f"{cfg.subject}: no tracked SUBJECT (run `python -m {__spec__.name} prepare` and carry it)")
    subject = ctx.work / "subject"
    if subject.exists():
        shutil.rmtree(subject)
    copy_subject(cfg.subject, subject)
    iters, res = sizes["train_iterations"], sizes["train_resolution"]
    proc = ctx.run(_python("-m", "gaussian_flametalk.scripts.gft", "train-avatar", str(subject),
                           "--iterations", str(iters), "--resolution", str(res), "--device", device,
                           "--checkpoint-every", str(iters), "--no-progress", *shlex.split(cfg.train_args)), cfg.timeouts.train)
    meta_path = subject / "avatar" / "meta.json"
    if proc.returncode != 0 or not meta_path.is_file():
        raise StepFailed(f"gft train-avatar exited {proc.returncode}: {tail(proc.output, 1500)}")
    meta = json.loads(meta_path.read_text())
    t, f = meta["timings"], meta["figures"]
    figs = {"device": t.get("device", device), "iterations": iters, "resolution": res,
            "iterations_per_s": t["iterations_per_s"], "train_s": t["train_s"], "load_s": t["load_s"],
            "total_s": t["total_s"], "process_seconds": round(proc.seconds, 1), "test_psnr": f.get("test_psnr"),
            "n_gaussians": f.get("n_gaussians"), "train_frames": meta["inputs"].get("train_frames"),
            "versions": meta.get("versions")}
    if device == "cpu":
        figs["note"] = "dry run: CPU stand-in at a tiny size, not a GPU figure"
    return figs


def step_drive(ctx: Context) -> dict[str, Any]:
    device = _device(ctx)
    cfg = ctx.cfg
    subject = ctx.work / "subject"
    if not (subject / "avatar" / "meta.json").is_file():
        raise StepFailed(f"{subject}: no trained avatar (the train step did not finish)")
    if not cfg.speech.is_file():
        raise StepFailed(f"{cfg.speech}: no speech file (run prepare and carry it)")
    res = cfg.sizes["drive_resolution"]
    out = ctx.work / "drive"
    out.mkdir(exist_ok=True)
    proc = ctx.run(_python("-m", "gaussian_flametalk.scripts.bench_drive", str(subject), str(cfg.speech),
                           "--resolutions", str(res), "--device", device, "--out", str(out)), cfg.timeouts.drive)
    meta_path = out / f"drive_{res}.meta.json"
    if proc.returncode != 0 or not meta_path.is_file():
        raise StepFailed(f"bench_drive exited {proc.returncode}: {tail(proc.output, 1500)}")
    meta = json.loads(meta_path.read_text())
    t, f = meta["timings"], meta["figures"]
    model_s = t["audio_model"] + t["mesh"] + t["render"] + t["encode"]
    figs = {"device": meta["device"], "resolution": meta["resolution"], "frames": meta["frames"],
            "speech_seconds": f["speech_seconds"], "real_time_factor": f["real_time_factor"],
            "fps": meta["frames"] / max(model_s, 1e-9), "render_fps": meta["frames"] / max(t["render"], 1e-9),
            "timings": t, "full_frame": meta.get("full_frame"), "process_seconds": round(proc.seconds, 1)}
    if device == "cpu":
        figs["note"] = "dry run: CPU stand-in at a tiny size, not a GPU figure"
    return figs


Step = Callable[[Context], dict[str, Any]]

#: the check, in order (``--steps`` picks some)
STEPS: list[tuple[str, Step]] = [
    ("environment", step_environment), ("install", step_install), ("build", step_build), ("pytest", step_pytest),
    ("render", step_render), ("train", step_train), ("drive", step_drive),
]


def goals(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets against what was measured (None where not measured on CUDA)."""
    def fig(step: str, *keys: str) -> Any:
        r = results.get(step, {})
        v: Any = r.get("figures", {}) if r.get("status") == "ok" else {}
        for k in keys:
            v = v.get(k, {}) if isinstance(v, dict) else {}
        return v if isinstance(v, (int, float)) else None

    on_cuda = results.get("environment", {}).get("figures", {}).get("cuda_available") and not results.get(
        "environment", {}).get("figures", {}).get("dry_run")
    fwd = fig("render", "cases", "gsplat-cuda-512-100k-fwd", "fps_median")
    rtf = fig("drive", "real_time_factor") if on_cuda else None
    return {
        "gsplat_fwd_fps_512_100k": fwd, "gsplat_fwd_fps_goal": 300, "gsplat_fwd_fps_met": None if fwd is None else fwd >= 300,
        "gsplat_fwdbwd_fps_512_100k": fig("render", "cases", "gsplat-cuda-512-100k-fwdbwd", "fps_median"),
        "gsplat_over_reference_fwd": fig("render", "gsplat_over_reference_fwd"),
        "gsplat_over_reference_fwdbwd": fig("render", "gsplat_over_reference_fwdbwd"),
        "drive_real_time_factor_512": rtf, "drive_real_time_factor_goal": 10,
        "drive_real_time_factor_met": None if rtf is None else rtf >= 10,
        "train_iterations_per_s_512": fig("train", "iterations_per_s") if on_cuda else None,
        "build_seconds": fig("build", "build_seconds"),
    }


def run_check(cfg: GpuCheckConfig, steps: list[tuple[str, Step]] | None = None) -> dict[str, Any]:
    """Run the steps (default: those of ``cfg.steps``), writing OUT/gpu_check.json after each; returns the report."""
    steps = steps if steps is not None else [(n, s) for n, s in STEPS if n in cfg.steps or n == "environment"]
    cfg.out.mkdir(parents=True, exist_ok=True)
    json_path, log_path = cfg.out / "gpu_check.json", cfg.out / "gpu_check.log"
    tmp = None
    if cfg.work is None:
        tmp = tempfile.mkdtemp(prefix="gpu_check_")
        work = Path(tmp)
    else:
        work = cfg.work
        work.mkdir(parents=True, exist_ok=True)
    from ..atomic import write_json

    report: dict[str, Any] = {
        "format": 1, "check": "gpu_check", "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dry_run": cfg.dry_run, "argv": sys.argv, "config": config_to_dict(cfg), "repo": str(REPO),
        "git_commit": _git_commit(), "prepared": _prepared_info(cfg), "work": str(work), "device": None, "versions": {}, "steps": {}, "goals": {},
    }
    try:
        log_path.write_bytes(b"")
        with open(log_path, "ab") as log:  # appended to by the steps' subprocesses too
            ctx = Context(cfg, log, work)
            ctx.say(f"GPU check{' (dry run)' if cfg.dry_run else ''}: steps {', '.join(n for n, _ in steps)}; "
                    f"budget {cfg.budget_s:g} s; work {work}; out {cfg.out}")
            for name, fn in steps:
                result = _run_step(ctx, name, fn)
                ctx.results[name] = report["steps"][name] = result
                if name == "environment" and result["status"] == "ok":
                    f = result["figures"]
                    report["device"] = f.get("device")
                    report["versions"] = {k: f.get(k) for k in ("python", "torch", "torch_cuda", "numpy", "nvcc",
                                                               "cudnn", "nvidia_smi")}
                report["goals"] = goals(report["steps"])
                report["seconds"] = round(time.perf_counter() - ctx.t0, 1)
                write_json(json_path, report)
            ctx.say("summary: " + ", ".join(f"{n} {r['status']}" for n, r in report["steps"].items()))
            ctx.say("goals: " + json.dumps(report["goals"]))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    report["ok"] = all(r["status"] == "ok" or (cfg.dry_run and r["status"] == "skipped")
                       for r in report["steps"].values())
    write_json(json_path, report)
    return report


def _run_step(ctx: Context, name: str, fn: Step) -> dict[str, Any]:
    ctx.say(f"== {name}")
    t0 = time.perf_counter()
    result: dict[str, Any]
    if name != "environment" and ctx.remaining() < MIN_STEP_S:
        result = {"status": "skipped", "reason": f"out of time (budget {ctx.cfg.budget_s:g} s)", "figures": {}}
    else:
        try:
            result = {"status": "ok", "figures": fn(ctx)}
        except StepSkipped as exc:
            result = {"status": "skipped", "reason": str(exc), "figures": exc.figures}
        except StepTimeout as exc:
            result = {"status": "timeout", "reason": str(exc), "figures": {}}
        except StepFailed as exc:
            result = {"status": "failed", "reason": str(exc), "figures": exc.figures}
        except Exception as exc:  # a step's own bug must not stop the next step
            import traceback

            result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "figures": {},
                      "traceback": tail(traceback.format_exc(), 3000)}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    ctx.say(f"{name}: {result['status']}" + (f" ({tail(result['reason'], 300)})" if "reason" in result else "")
            + f" in {result['seconds']:.1f} s")
    return result


def _prepared_info(cfg: GpuCheckConfig) -> dict[str, Any] | None:
    """prepare's record of the carried SUBJECT (when ``--subject`` is prepare's), for the report."""
    marker = cfg.subject.parent / "prepared.json"
    try:
        return json.loads(marker.read_text()) if marker.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


# ------------------------------------------------------------------------------------------------ prepare

@dataclass
class PrepareConfig:
    """Options of ``gpu_check prepare`` (runs on the CPU machine: pip reaches a registry, espeak-ng and mediapipe
    work)."""

    root: Path = field(default=REPO, metadata={"help": "repository root: the carried folders go below it and the "
                                                       "printed paths are relative to it"})
    wheels: Path = field(default=Path("gpu_wheels"), metadata={"help": "wheel folder (relative to --root)"})
    prep: Path = field(default=Path("gpu_prep"), metadata={"help": "prepared-inputs folder (relative to --root)"})
    packages: tuple[str, ...] = field(default=DEFAULT_PACKAGES, metadata={"help": "NAME==VERSION of the wheels"})
    python_version: str = field(default="3.12", metadata={"help": "the GPU machine's Python"})
    platforms: tuple[str, ...] = field(default=("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                                                "manylinux2014_x86_64"), metadata={"help": "pip --platform tags"})
    download: bool = field(default=True, metadata={"help": "pip download the wheels not yet in the folder"})
    subject: Path | None = field(default=None, metadata={
        "help": "carry this tracked SUBJECT (with SUBJECT/talk) instead of building the demo's"})
    speech: Path | None = field(default=None, metadata={"help": "speech to drive with (required with --subject)"})
    seconds: float = field(default=6.0, metadata={"above": 0, "help": "length of the demo subject's video"})
    resolution: int = field(default=512, metadata={"min": 64, "help": "demo video and SUBJECT frame size"})
    talk_iterations: int = field(default=300, metadata={"min": 1, "help": "FlameTalk training iterations (CPU)"})
    seed: int = field(default=0, metadata={"help": "demo subject seed"})
    force: bool = field(default=False, metadata={"help": "rebuild the prepared SUBJECT"})
    budget_s: float = field(default=450.0, metadata={"min": 1, "help": "--budget-s of the printed command"})

    def __post_init__(self) -> None:
        validate(self)
        if self.subject is not None and self.speech is None:
            raise ValueError("--speech: required with --subject")
        for spec in self.packages:
            if "==" not in spec:
                raise ValueError(f"--packages: {spec!r} is not NAME==VERSION")
            if _image_own(normalise(spec.split("==")[0])):
                raise ValueError(f"--packages: {spec!r} must come from the GPU image itself, not a wheel")
        self.root = Path(self.root).absolute()
        for option, path in (("--wheels", self.wheels), ("--prep", self.prep)):
            try:
                self.at(path).absolute().relative_to(self.root)
            except ValueError:
                raise ValueError(f"{option}: {path} is not inside --root {self.root} (the device tool carries only "
                                 "paths inside the repository)") from None

    def at(self, path: Path) -> Path:
        return path if path.is_absolute() else self.root / path


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def fetch_wheels(cfg: PrepareConfig) -> list[Path]:
    """The wheels of ``cfg.packages`` in the wheel folder, pip-downloaded where missing (``--no-deps``,
    ``--only-binary=:all:``, for the GPU machine's Python and platform)."""
    folder = cfg.at(cfg.wheels)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {normalise(s.split("==")[0]): s.split("==")[1] for s in cfg.packages}

    def present() -> dict[str, list[tuple[str, Path]]]:
        have: dict[str, list[tuple[str, Path]]] = {}
        for w in sorted(folder.glob("*.whl")):
            name, version = wheel_name(w)
            have.setdefault(name, []).append((version, w))
        return have

    missing = [s for s in cfg.packages if not any(v == wanted[normalise(s.split("==")[0])]
                                                   for v, _ in present().get(normalise(s.split("==")[0]), []))]
    if missing:
        if not cfg.download:
            raise FileNotFoundError(f"{folder}: no wheel for {', '.join(missing)} (run without --no-download)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--python-version", cfg.python_version, "--implementation", "cp",
               *[a for p in cfg.platforms for a in ("--platform", p)], "--dest", str(folder), *missing]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    have = present()
    extra = [w.name for name, vs in have.items() for v, w in vs if wanted.get(name) != v]
    if extra:
        raise ValueError(f"{folder}: wheels not in --packages ({', '.join(extra)}); two versions of one package stop "
                         "the whole install there: remove them")
    return [w for vs in have.values() for _, w in vs]


def build_subject(cfg: PrepareConfig) -> dict[str, Any]:
    """PREP/subject (tracked, with a trained FlameTalk, mel audio encoder) and PREP/drive_speech.*: the demo's own,
    built here, or the given ``--subject`` / ``--speech`` copied."""
    prep = cfg.at(cfg.prep)
    settings = {"subject": str(cfg.subject) if cfg.subject else "demo", "speech": str(cfg.speech) if cfg.speech else None,
                "seconds": cfg.seconds, "resolution": cfg.resolution, "talk_iterations": cfg.talk_iterations,
                "seed": cfg.seed}
    marker = prep / "prepared.json"
    if (not cfg.force and marker.is_file() and json.loads(marker.read_text()).get("settings") == settings
            and (prep / "subject" / "meta.json").is_file()):
        print(f"{prep}: prepared before with the same settings: reused (--force rebuilds)", flush=True)
        return json.loads(marker.read_text())
    from ..atomic import write_json

    prep.mkdir(parents=True, exist_ok=True)
    for stale in ("subject", "build"):
        shutil.rmtree(prep / stale, ignore_errors=True)
    for old in [*prep.glob("drive_speech.*"), *prep.glob("source_video.*")]:
        old.unlink()
    marker.unlink(missing_ok=True)
    t0 = time.perf_counter()
    if cfg.subject is not None:
        source, speech = Path(cfg.subject), Path(cfg.speech)
        if not (source / "talk" / "meta.json").is_file():
            raise FileNotFoundError(f"{source}: no trained FlameTalk (SUBJECT/talk); run gft train-talk "
                                    "--audio-encoder mel on it first")
        build = None
    else:
        build = prep / "build"
        source, speech = _build_demo(cfg, build), build / "demo_subject" / "drive_speech.wav"
    dest = prep / "subject"
    notes = []
    video, carried = subject_video(source), None
    if video is not None and video.is_file():  # gft drive pastes into it (--full-frame) when the SUBJECT is a crop
        carried = prep / f"source_video{video.suffix}"
        shutil.copyfile(video, carried)
    elif video is not None:
        notes.append(f"the SUBJECT's source video {video} is gone: gft drive's full-frame output (its default for a "
                     "cropped SUBJECT) fails without it")
    copy_subject(source, dest, carried)
    speech_dest = prep / f"drive_speech{speech.suffix}"
    shutil.copyfile(speech, speech_dest)
    if build is not None:
        _strip_optimizer(dest / "talk" / "checkpoint.pt")
        shutil.rmtree(build)
    encoder = json.loads((dest / "talk" / "meta.json").read_text()).get("config", {}).get("audio_encoder")
    if encoder and "phonetic" in encoder:
        notes.append(f"FlameTalk uses the {encoder} audio encoder: pocketsphinx has no wheel for the GPU machine's "
                     "Python 3.12, so gft drive fails there (train it with --audio-encoder mel)")
    elif encoder and encoder.split(":")[0] in ("wav2vec2", "hubert"):
        notes.append(f"FlameTalk uses {encoder}: its weights must travel too")
    info = {"settings": settings, "subject": _rel(dest, cfg.root), "speech": _rel(speech_dest, cfg.root),
            "source_video": _rel(carried, cfg.root) if carried else None,
            "audio_encoder": encoder, "seconds": round(time.perf_counter() - t0, 1), "notes": notes,
            "git_commit": _git_commit(),
            "made": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    write_json(marker, info)
    return info


def subject_video(subject: Path) -> Path | None:
    """The source video a SUBJECT's meta.json names (``inputs.video.path``, relative to the SUBJECT when not
    absolute, as ``gft drive`` reads it), whether or not it still exists; None when it names none."""
    video = json.loads((Path(subject) / "meta.json").read_text()).get("inputs", {}).get("video") or {}
    if not video.get("path"):
        return None
    path = Path(video["path"])
    return path if path.is_absolute() else (Path(subject) / path).resolve()


def copy_subject(src: Path, dest: Path, video: Path | None = None) -> Path:
    """Copy a SUBJECT folder without its avatar and overlay, naming its source video (``video``, else the one its
    meta.json names) relative to the copy, so that the copy, carried or moved along with it, still finds it."""
    from ..atomic import write_json

    src, dest = Path(src), Path(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("avatar", "*.partial", "overlay.mp4"))
    target = Path(video) if video is not None else subject_video(src)
    if target is not None and target.exists():
        meta = json.loads((dest / "meta.json").read_text())
        meta["inputs"]["video"]["path"] = os.path.relpath(target.resolve(), dest.resolve())
        write_json(dest / "meta.json", meta)
    return dest


def _build_demo(cfg: PrepareConfig, build: Path) -> Path:
    """The demo subject (espeak-ng speech), tracked (mediapipe, the quick demo's fit) and with a FlameTalk trained on
    the CPU (mel encoder, which needs nothing the GPU image lacks). Returns the SUBJECT folder."""
    from ..demo_subject.subject import DemoSubjectConfig, make_demo_subject
    from ..flametalk.train import TalkConfig, train_talk
    from ..tracking.track import TrackConfig, track

    demo, subject = build / "demo_subject", build / "subject"
    print(f"== demo subject ({cfg.resolution} px, {cfg.seconds:g} s)", flush=True)
    make_demo_subject(DemoSubjectConfig(out=demo, seed=cfg.seed, resolution=cfg.resolution, seconds=cfg.seconds,
                                        device="cpu"))
    print("== track", flush=True)
    track(TrackConfig(video=demo / "video.mp4", out=subject, head_model="synthetic", resolution=cfg.resolution,
                      device="cpu", overlay=False, rigid_iters=10, full_iters=4, smooth_iters=15))
    print(f"== train-talk ({cfg.talk_iterations} iterations, mel encoder)", flush=True)
    train_talk(TalkConfig(subjects=(subject,), audio_encoder="mel", iterations=cfg.talk_iterations, device="cpu",
                          seed=cfg.seed, checkpoint_every=cfg.talk_iterations))
    return subject


def _strip_optimizer(path: Path) -> None:
    """Drop the optimizer state from a FlameTalk checkpoint that only drives (two thirds of its size)."""
    import torch

    from ..atomic import save_torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    state.pop("optimizer", None)
    save_torch(path, state)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def tree_bytes(root: Path) -> int | None:
    """Bytes of what the device tool copies besides the carried paths: tracked files and untracked, not ignored ones
    (None when ``root`` is not a git checkout)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    files = {f for f in out.stdout.decode(errors="replace").split("\0") if f}
    return sum((root / f).stat().st_size for f in files if (root / f).is_file())


def gpu_command(wheels: str, subject: str, speech: str, budget_s: float) -> dict[str, Any]:
    """The device tool's ``run`` call of the check: command line, carry list, timeout. The scratch folder is fixed, so
    that a second call on the still-warm machine reuses the gsplat build (the JSON's build status says so)."""
    command = (f"PYTHONUNBUFFERED=1 python3 -m gaussian_flametalk.scripts.gpu_check --wheels {wheels} "
               f"--subject {subject} --speech {speech} --work {GPU_WORK} --budget-s {budget_s:g}")
    carry = sorted({Path(wheels).parts[0], Path(subject).parts[0], Path(speech).parts[0]})
    return {"command": command, "carry": carry, "timeout_s": int(min(600, budget_s + 60))}


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Wheels and inputs for the GPU check; prints (and returns) the run call to make on the GPU machine."""
    wheels = fetch_wheels(cfg)
    info = build_subject(cfg)
    root = cfg.root
    call = gpu_command(_rel(cfg.at(cfg.wheels), root), info["subject"], info["speech"], cfg.budget_s)
    sizes = {"wheels": _size(cfg.at(cfg.wheels)), "prep": _size(cfg.at(cfg.prep)), "tree": tree_bytes(root)}
    total = sum(v for v in sizes.values() if v is not None)
    mib = {k: None if v is None else round(v / 2**20, 1) for k, v in sizes.items()}
    print("\nwheels: " + ", ".join(f"{w.name} ({w.stat().st_size / 2**20:.1f} MiB)" for w in wheels))
    print(f"prepared: {info['subject']} (FlameTalk audio encoder {info['audio_encoder']}), speech {info['speech']}"
          + (f", source video {info['source_video']}" if info.get("source_video") else ""))
    for note in info.get("notes", []):
        print(f"WARNING: {note}")
    print(f"what travels: wheels {mib['wheels']} MiB + prepared {mib['prep']} MiB + working tree {mib['tree']} MiB = "
          f"{total / 2**20:.1f} MiB (limit {CARRY_LIMIT_BYTES / 2**20:.0f} MiB)")
    if total > CARRY_LIMIT_BYTES:
        print("WARNING: over the device tool's limit: carry less (a shorter --seconds, fewer wheels)")
    print("\nOn the GPU machine, one call of the device tool's run (from the repository root):")
    print(f"  command:   {call['command']}")
    print(f"  carry:     {json.dumps(call['carry'])}")
    print(f"  timeout_s: {call['timeout_s']}")
    print("It writes $OUT/gpu_check.json and $OUT/gpu_check.log.")
    print("RUN_CALL " + json.dumps(call), flush=True)
    return {**call, "sizes_bytes": sizes, "total_bytes": total, "wheels": [w.name for w in wheels], "prepared": info}


# ------------------------------------------------------------------------------------------------ command line

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare"]:
        parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name} prepare",
                                         description=PrepareConfig.__doc__)
        add_dataclass_args(parser, PrepareConfig)
        try:
            pcfg = dataclass_from_args(PrepareConfig, parser.parse_args(argv[1:]))
        except ValueError as exc:
            parser.error(str(exc))
        prepare(pcfg)
        return 0
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, GpuCheckConfig)
    try:
        cfg = dataclass_from_args(GpuCheckConfig, parser.parse_args(argv))
    except ValueError as exc:
        parser.error(str(exc))
    report = run_check(cfg)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
