"""Where ``gft batch`` tasks run: Ray workers (a local Ray, or a cluster joined with ``--address``), or this process
one after another when Ray is not installed (or ``--sequential``). Both executors take :class:`StageTask` objects
and hand back :class:`StageOutcome` objects as tasks finish; the batch's plan and bookkeeping are the same for both.

Resources: every task declares CPUs, a GPU fraction and memory (:data:`DEFAULT_RESOURCES`, overridable per stage),
so Ray packs several CPU stages on a node and gives a GPU training its own GPU. GPU requests are dropped on a cluster
without GPUs (the stages then run on the CPU, ``device="auto"``).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..errors import GftError
from .batch_stages import StageOutcome, StageTask, one_line, run_stage
from .manifest import PRIOR_STAGE

__all__ = ["DEFAULT_RESOURCES", "RayExecutor", "Resources", "SequentialExecutor", "local_workers", "parse_resources",
           "ray_available"]


@dataclass(frozen=True)
class Resources:
    """What one task of a stage asks Ray for: CPUs, a GPU fraction (used only where the cluster has GPUs), memory."""

    cpus: float
    gpus: float
    memory_gb: float


#: tracking is CPU work (mediapipe) with a small fit; the avatar and the prior train on a whole GPU; a subject's
#: FlameTalk adaptation and the benchmark's renders share one
DEFAULT_RESOURCES = {
    "track": Resources(cpus=1, gpus=0.0, memory_gb=2.0),
    "train-avatar": Resources(cpus=1, gpus=1.0, memory_gb=4.0),
    PRIOR_STAGE: Resources(cpus=1, gpus=1.0, memory_gb=4.0),
    "train-talk": Resources(cpus=1, gpus=0.25, memory_gb=2.0),
    "benchmark": Resources(cpus=1, gpus=0.25, memory_gb=3.0),
}


def parse_resources(items: tuple[str, ...]) -> dict[str, Resources]:
    """The default resources with overrides such as ``train-avatar.gpus=0.5`` or ``track.memory_gb=3``."""
    out = dict(DEFAULT_RESOURCES)
    for item in items:
        key, eq, value = item.partition("=")
        stage, dot, name = key.partition(".")
        name = name.replace("-", "_")
        if not eq or not dot or stage not in out or name not in ("cpus", "gpus", "memory_gb"):
            raise ValueError(f"--resources: {item!r} is not STAGE.(cpus|gpus|memory_gb)=NUMBER with STAGE one of "
                             f"{', '.join(out)}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--resources: {item!r}: {value!r} is not a number") from None
        if number < 0 or (name == "cpus" and number <= 0):
            raise ValueError(f"--resources: {item!r}: must be {'positive' if name == 'cpus' else 'zero or more'}")
        out[stage] = Resources(**{**out[stage].__dict__, name: number})
    return out


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class SequentialExecutor:
    """Runs the tasks in this process, one at a time, in the order they were submitted."""

    workers = 1

    def __init__(self) -> None:
        self.queue: deque[StageTask] = deque()

    def submit(self, task: StageTask) -> None:
        self.queue.append(task)

    def busy(self) -> int:
        return len(self.queue)

    def wait(self, on_start) -> list[StageOutcome]:
        """Run the next task (``on_start(task)`` first) and return its outcome."""
        task = self.queue.popleft()
        on_start(task)
        return [run_stage(task)]

    def close(self) -> None:
        pass


def _memory_available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def local_workers(requested: int, resources: dict[str, Resources]) -> int:
    """Task slots of a local Ray: ``requested``, or as many as the CPUs and the memory fit (every slot able to hold
    the hungriest stage)."""
    if requested > 0:
        return requested
    cpus = os.cpu_count() or 1
    mem = _memory_available_gb()
    need = max(r.memory_gb for r in resources.values())
    return max(1, min(cpus, int(mem // need) if mem and need > 0 else cpus))


class RayExecutor:
    """Submits tasks as Ray remote calls with their stage's resources; hands outcomes back as they finish."""

    def __init__(self, root: Path, resources: dict[str, Resources], address: str | None, workers: int) -> None:
        import ray

        self.ray = ray
        self.resources = resources
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="error")
        else:
            n = local_workers(workers, resources)  # "local": a Ray of its own, never a cluster found on this machine
            ray.init(address="local", num_cpus=n, include_dashboard=False, log_to_driver=False, logging_level="error")
        total = ray.cluster_resources()
        self.workers = int(total.get("CPU", 1))
        self.has_gpu = total.get("GPU", 0) > 0
        self.remote = ray.remote(run_stage)
        self.running: dict = {}  # object ref -> task
        check_shared_storage(ray, root)

    def submit(self, task: StageTask) -> None:
        r = self.resources[task.stage]
        gpus = r.gpus if self.has_gpu else 0.0
        options = {"num_cpus": r.cpus, "num_gpus": gpus, "memory": int(r.memory_gb * 2**30), "max_retries": 0}
        threads = max(1, int(r.cpus))
        ref = self.remote.options(**options).remote(StageTask(**{**task.__dict__, "threads": threads}))
        self.running[ref] = task

    def busy(self) -> int:
        return len(self.running)

    def wait(self, on_start, timeout: float = 1.0) -> list[StageOutcome]:
        """Outcomes of the tasks that finished within ``timeout`` seconds (possibly none); ``on_start`` is called for
        tasks whose worker has started them."""
        for task in self.running.values():
            if task.started_file.is_file():
                on_start(task)
        ready, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=timeout)
        out = []
        for ref in ready:
            task = self.running.pop(ref)
            try:
                out.append(self.ray.get(ref))
            except Exception as e:  # the worker died (out of memory, a crash): this task's failure
                out.append(StageOutcome(clip=task.clip, stage=task.stage, status="failed", elapsed_s=0.0, cpu_s=0.0,
                                        error=f"Ray: {one_line(e)}"))
        return out

    def close(self) -> None:
        self.ray.shutdown()


def _probe(path: str, token: str) -> tuple[str, bool]:
    try:
        return socket.gethostname(), Path(path).read_text() == token
    except OSError:
        return socket.gethostname(), False


def check_shared_storage(ray, root: Path) -> None:
    """Every alive node must see ROOT at the same path (shared storage): a token written here is read back by a tiny
    task pinned to each node. A GftError naming the nodes that cannot."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = root / ".batch" / f"probe-{uuid.uuid4().hex}"
    probe.parent.mkdir(parents=True, exist_ok=True)
    token = f"{socket.gethostname()} {time.time()}"
    probe.write_text(token)
    try:
        remote = ray.remote(_probe)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [remote.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(probe), token) for n in nodes]
        seen = ray.get(refs, timeout=120)
    finally:
        probe.unlink(missing_ok=True)
    blind = [f"{host} ({n.get('NodeManagerAddress')})" for (host, ok), n in zip(seen, nodes) if not ok]
    if blind:
        raise GftError(f"{root}: not visible from Ray node(s) {', '.join(blind)}: gft batch needs ROOT (and the "
                       f"manifest's videos) on storage every node mounts at the same path")
