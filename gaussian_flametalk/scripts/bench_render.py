"""Rasterizer benchmark: time and peak memory of the reference, compiled CPU and gsplat backends on avatar-like scenes.

    python -m gaussian_flametalk.scripts.bench_render [--repeats 5] [--rounds 1] [--cases NAME ...] [--agreement]

Scene: Gaussians on the surface of a head-sized ellipsoid (radii 0.16, 0.2, 0.18 m, surface noise 1 cm) 1 m in front
of the camera, focal length 2 x width, scales 2-6 mm (one axis flattened), opacities uniform in [0.05, 0.99], SH
degree 3. Each case runs in a fresh subprocess so that its peak resident memory (VmHWM from /proc/self/status) is
its own. CPU cases always run (the compiled ``cpu`` backend with 1 and with 2 threads, the reference with torch's
default and, for the smaller scenes, with 1 thread); the CUDA cases (gsplat, and the reference on the GPU) run when torch sees a GPU. Prints a markdown table
(wall seconds, and the process's CPU seconds, which a loaded machine inflates less) with each compiled-CPU case's
speed-up over the reference case of the same scene, pass and thread count (min over min), and with
``--agreement`` the largest image and gradient differences between the compiled kernel and the reference on the
256x256 / 20k scene.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..avatar.rasterize import render
from ..geometry.camera import Camera


@dataclass(frozen=True)
class Case:
    name: str
    backend: str
    device: str
    size: int
    n_gaussians: int
    backward: bool
    threads: int | None = None  # torch.set_num_threads / the cpu backend's num_threads; None: torch's default


CASES = [
    Case("ref-cpu-256-20k-fwdbwd", "reference", "cpu", 256, 20_000, True),
    Case("ref-cpu-256-20k-fwd", "reference", "cpu", 256, 20_000, False),
    Case("ref-cpu-512-100k-fwd", "reference", "cpu", 512, 100_000, False),
    Case("ref-cpu-512-100k-fwdbwd", "reference", "cpu", 512, 100_000, True),
    Case("ref-cpu-256-20k-fwd-t1", "reference", "cpu", 256, 20_000, False, 1),
    Case("ref-cpu-256-20k-fwdbwd-t1", "reference", "cpu", 256, 20_000, True, 1),
    Case("ref-cpu-512-100k-fwd-t1", "reference", "cpu", 512, 100_000, False, 1),
    *(
        Case(f"cpu-{size}-{n // 1000}k-{pass_}-t{threads}", "cpu", "cpu", size, n, pass_ == "fwdbwd", threads)
        for size, n in ((256, 20_000), (512, 100_000))
        for pass_ in ("fwd", "fwdbwd")
        for threads in (1, 2)
    ),
    Case("gsplat-cuda-512-100k-fwd", "gsplat", "cuda", 512, 100_000, False),
    Case("gsplat-cuda-512-100k-fwdbwd", "gsplat", "cuda", 512, 100_000, True),
    Case("ref-cuda-512-100k-fwd", "reference", "cuda", 512, 100_000, False),
    Case("ref-cuda-512-100k-fwdbwd", "reference", "cuda", 512, 100_000, True),
]


def head_scene(n: int, size: int, seed: int = 0, device: str = "cpu") -> tuple[dict[str, torch.Tensor], Camera]:
    """Random avatar-like scene: ``render`` keyword tensors (float32, SH degree 3) and a ``size`` x ``size`` camera."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n, 3, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    radii = torch.tensor([0.16, 0.2, 0.18])
    means = dirs * radii * (1.0 + 0.05 * torch.randn(n, 1, generator=g))
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.002), math.log(0.006), generator=g))
    scales[:, 2] *= 0.3
    sh = torch.randn(n, 16, 3, generator=g) * 0.1
    sh[:, 0] = torch.rand(n, 3, generator=g) * 2.0 - 0.5
    tensors = {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),
        "scales": scales,
        "opacities": torch.empty(n).uniform_(0.05, 0.99, generator=g),
        "colors": sh,
    }
    camera = Camera.look_at((0.0, 0.0, -1.0), (0.0, 0.0, 0.0), focal=2.0 * size, width=size, height=size)
    return {k: v.to(device) for k, v in tensors.items()}, camera.to(device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_case(case: Case, repeats: int) -> dict[str, object]:
    """Time one case in this process; returns seconds (median, min) and peak memory."""
    if case.threads is not None:
        torch.set_num_threads(case.threads)
    tensors, camera = head_scene(case.n_gaussians, case.size, device=case.device)
    if case.backward:
        for t in tensors.values():
            t.requires_grad_(True)
    weights = torch.rand(case.size, case.size, 3, generator=torch.Generator().manual_seed(1)).to(case.device)

    def step() -> None:
        image, _, info = render(**tensors, camera=camera, sh_degree=3, backend=case.backend)
        if info.backend != case.backend:
            raise RuntimeError(f"asked for the {case.backend} backend, got {info.backend}")
        if case.backward:
            (image * weights).sum().backward()

    timed = _timed(step, case.device, repeats + 1)[1:]  # the first run warms up
    times = [wall for wall, _ in timed]
    result: dict[str, object] = {"seconds": statistics.median(times), "min_seconds": min(times)}
    result["min_cpu_seconds"] = min(cpu for _, cpu in timed)
    result["times"] = times
    result["cpu_times"] = [cpu for _, cpu in timed]
    result["peak_rss_gb"] = _peak_rss_gb()
    if case.device == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def _timed(fn: Callable[[], None], device: str, n: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds of this process: all its threads) of each of ``n`` calls."""
    times = []
    for _ in range(n):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def _peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    raise RuntimeError("no VmHWM in /proc/self/status")


def _loadavg() -> str:
    """1-minute load average (other processes on a shared machine slow the timings)."""
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def agreement(size: int = 256, n: int = 20_000) -> dict[str, float]:
    """Compiled kernel vs reference (float32, and float64 on the same inputs) on the benchmark scene: the largest
    image difference and, per gradient, the largest difference relative to the reference gradient's largest entry."""
    tensors, camera = head_scene(n, size)
    weights = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def run(backend: str, dtype: torch.dtype):
        leaves = {k: v.detach().to(dtype, copy=True).requires_grad_(True) for k, v in tensors.items()}
        image, _, info = render(**leaves, camera=camera.to(dtype=dtype), sh_degree=3, backend=backend)
        (image * weights.to(dtype)).sum().backward()
        return image.detach().double(), {k: v.grad.double() for k, v in leaves.items()}, info.means2d.grad.double()

    image, grads, g2d = run("cpu", torch.float32)
    out: dict[str, float] = {}
    refs = {}
    for label, dtype in (("ref32", torch.float32), ("ref64", torch.float64)):
        ref_image, ref_grads, ref_g2d = refs[label] = run("reference", dtype)
        out[f"image_max_abs_vs_{label}"] = (image - ref_image).abs().max().item()
        out[f"image_pixels_over_1e-4_vs_{label}"] = int(((image - ref_image).abs() > 1e-4).any(-1).sum().item())
        for name, g in {**grads, "means2d": g2d}.items():
            ref = {**ref_grads, "means2d": ref_g2d}[name]
            out[f"grad_{name}_rel_vs_{label}"] = ((g - ref).abs().max() / ref.abs().max()).item()
    # the float32 reference itself against float64: pairs within float32 rounding of the 1/255 cut-off
    out["ref32_image_max_abs_vs_ref64"] = (refs["ref32"][0] - refs["ref64"][0]).abs().max().item()
    return out


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (after one warm-up)")
    parser.add_argument("--cases", nargs="*", default=None, help="case names (default: all that this machine can run)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the whole list this many times and pool each case's timings (a shared machine's load "
                        "comes and goes: the best of several rounds is the fairest figure)")
    parser.add_argument("--agreement", action="store_true", help="also compare the compiled kernel with the reference")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)  # internal: the per-case subprocess
    args = parser.parse_args(argv)

    by_name = {c.name: c for c in CASES}
    if args.run_one is not None:
        print(json.dumps(run_case(by_name[args.run_one], args.repeats)))
        return

    cases = [by_name[n] for n in args.cases] if args.cases else CASES
    cuda = torch.cuda.is_available()
    device_desc = f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads"
    if cuda:
        device_desc += f"; GPU: {torch.cuda.get_device_name()}"
    print(f"# Rasterizer benchmark\n\n{device_desc}; torch {torch.__version__}; load average {_loadavg()}\n")
    results: dict[str, dict[str, object] | str] = {}
    for round_ in range(args.rounds):
        for case in cases:
            if case.device == "cuda" and not cuda:
                results[case.name] = "skipped: no GPU"
                continue
            proc = subprocess.run(
                [sys.executable, "-m", __spec__.name, "--run-one", case.name, "--repeats", str(args.repeats)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                results[case.name] = "failed: " + (proc.stderr.strip().splitlines() or ["failed"])[-1]
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            pooled = results.get(case.name)
            if isinstance(pooled, dict):
                r["times"] = pooled["times"] + r["times"]
                r["cpu_times"] = pooled["cpu_times"] + r["cpu_times"]
                r["peak_rss_gb"] = max(pooled["peak_rss_gb"], r["peak_rss_gb"])
            results[case.name] = r
            print(f"round {round_ + 1}/{args.rounds}: {case.name} done (load {_loadavg()})", file=sys.stderr, flush=True)

    print(
        "| case | backend | device | threads | image | Gaussians | pass | median s | min s | FPS (median) | FPS (best) "
        "| x reference (min, same threads) | CPU s (min) | peak RSS GB | peak CUDA GB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    default_threads = torch.get_num_threads()
    ref_min = {
        (c.size, c.n_gaussians, c.backward, c.threads or default_threads): min(results[c.name]["times"])
        for c in cases
        if c.backend == "reference" and c.device == "cpu" and isinstance(results.get(c.name), dict)
    }
    for case in cases:
        r = results[case.name]
        if isinstance(r, str):
            print(f"| {case.name} | {case.backend} | {case.device} | | | | | {r} | | | | | | | |")
            continue
        times = r["times"]
        median, best, cpu_best = statistics.median(times), min(times), min(r["cpu_times"])
        cuda_gb = f"{r['peak_cuda_gb']:.2f}" if "peak_cuda_gb" in r else ""
        threads = case.threads or default_threads
        key = (case.size, case.n_gaussians, case.backward, threads)
        speedup = f"{ref_min[key] / best:.1f}" if case.backend == "cpu" and key in ref_min else ""
        print(
            f"| {case.name} | {case.backend} | {case.device} | {threads} | {case.size}x{case.size} | {case.n_gaussians} | "
            f"{'fwd+bwd' if case.backward else 'fwd'} | {median:.4f} | {best:.4f} | "
            f"{1.0 / median:.1f} | {1.0 / best:.1f} | {speedup} | {cpu_best:.4f} | "
            f"{r['peak_rss_gb']:.2f} | {cuda_gb} |",
            flush=True,
        )
    print(f"\nload average at the end: {_loadavg()}")
    if args.agreement:
        print("\nAgreement of the compiled kernel with the reference, 256x256 / 20k, SH degree 3:\n")
        for name, value in agreement().items():
            print(f"- {name}: {value:.3g}")


if __name__ == "__main__":
    main()
