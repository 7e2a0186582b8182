"""Benchmark of ``gft batch``: the same clips through track + train-avatar (quick settings) on a local Ray and
sequentially in-process; wall times, CPU utilisation, the per-stage seconds, and what a cluster would need for a
dataset of a given size, extrapolated from them.

    python -m gaussian_flametalk.scripts.bench_batch VIDEO [VIDEO ...] --out DIR --head-model ict:PATH \
        [--seconds 4] [--workers 2]

Each VIDEO is cut to its first ``--seconds`` (after 1 s) into DIR/clips; both runs start from nothing (DIR/ray,
DIR/sequential are removed first). CPU utilisation is the stages' own CPU seconds (each task's process and the
subprocesses it waited for, from getrusage) over wall time × the machine's cores; the whole machine's busy share
over the same time (from /proc/stat; it includes anything else running) is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path

from ..atomic import write_json
from ..io.media import ffmpeg_exe, probe_video
from ..pipeline.batch import BatchConfig, batch

#: quick settings of the two stages (real code paths at small sizes)
QUICK = {
    "track": {"resolution": 256, "overlay": False, "rigid_iters": 20, "full_iters": 10, "smooth_iters": 50},
    "train-avatar": {"iterations": 150, "resolution": 96, "max_triangles": 4000, "checkpoint_every": 150,
                     "densify.opacity_resets": 0, "sh_degree": 1, "grid_frames": 1},
}


def _busy_jiffies() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def _run(manifest: Path, out: Path, sequential: bool, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    j0, t0 = _busy_jiffies(), time.perf_counter()
    result = batch(BatchConfig(manifest=manifest, out=out, stages="track,train-avatar", sequential=sequential,
                               workers=workers, progress=False))
    wall = time.perf_counter() - t0
    j1 = _busy_jiffies()
    cores = os.cpu_count() or 1
    cpu = sum(s["cpu_s"] or 0 for c in result["clips"] for s in c["stages"].values())
    failed = [c["name"] for c in result["clips"] if c["status"] != "done"]
    if failed:
        raise SystemExit(f"bench_batch: clips {failed} failed: see {out / 'batch.md'}")
    return {"wall_s": wall, "stage_cpu_s": cpu, "cpu_utilisation": cpu / (wall * cores), "cores": cores,
            "machine_busy_share": (j1[0] - j0[0]) / max(j1[1] - j0[1], 1) if j0 and j1 else None,
            "stages": {c["name"]: {s: v["elapsed_s"] for s, v in c["stages"].items()} for c in result["clips"]},
            "figures": {c["name"]: c["figures"] for c in result["clips"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("videos", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--head-model", required=True, help="e.g. ict:PATH/FaceXModel")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each cut clip")
    ap.add_argument("--workers", type=int, default=2, help="local Ray task slots")
    ap.add_argument("--sequential-threads", type=int, default=0,
                    help="torch threads of the sequential run (0: torch's default, one per core)")
    ap.add_argument("--only", choices=("ray", "sequential"), help="run only one of the two")
    ap.add_argument("--dataset-hours", type=float, default=15.8, help="extrapolate to this much footage (HDTF: 15.8)")
    ap.add_argument("--dataset-clips", type=int, default=362, help="... in this many clips (HDTF: 362)")
    ap.add_argument("--nodes", type=int, default=4, help="... on this many nodes")
    ap.add_argument("--slots-per-node", type=int, default=16, help="... with this many concurrent tasks each")
    args = ap.parse_args()

    clips_dir = args.out / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    entries, seconds = [], {}
    for video in args.videos:
        cut = clips_dir / f"{video.stem.split('_')[0]}.mp4"
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-ss", "1", "-t",
                        str(args.seconds), "-i", str(video), "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac",
                        str(cut)], check=True)
        seconds[cut.stem] = probe_video(cut).duration
        entries.append({"video": str(cut)})
    manifest = args.out / "manifest.yaml"
    write_json(manifest, {"defaults": {"head_model": args.head_model, **QUICK}, "clips": entries})

    if args.sequential_threads:
        import torch

        torch.set_num_threads(args.sequential_threads)  # Ray tasks cap theirs at their CPUs themselves
    runs = {name: _run(manifest, args.out / name, name == "sequential", args.workers)
            for name in ("ray", "sequential") if args.only in (None, name)}
    print(f"\n{len(entries)} clips of {args.seconds:g} s, track + train-avatar (quick settings), "
          f"{next(iter(runs.values()))['cores']} cores")
    print("| run | wall (s) | stage CPU (s) | CPU utilisation | machine busy (all processes) |")
    print("|---|---|---|---|---|")
    for name, r in runs.items():
        busy = f"{100 * r['machine_busy_share']:.0f} %" if r["machine_busy_share"] is not None else "n/a"
        print(f"| {name} | {r['wall_s']:.1f} | {r['stage_cpu_s']:.1f} | {100 * r['cpu_utilisation']:.0f} % | {busy} |")
    if len(runs) == 2:
        print(f"speed-up: {runs['sequential']['wall_s'] / runs['ray']['wall_s']:.2f}x")
    seq = runs["ray" if "ray" in runs else "sequential"]["stages"]  # Ray: one task per core, as a cluster slot
    print("\nper-stage seconds: " + "; ".join(
        f"{c}: " + ", ".join(f"{s} {v:.1f}" for s, v in st.items()) for c, st in seq.items()))
    track_rate = sum(st["track"] for st in seq.values()) / sum(seconds.values())  # stage seconds per video second
    avatar_clip = sum(st["train-avatar"] for st in seq.values()) / len(seq)  # fixed iterations: per clip
    total = track_rate * args.dataset_hours * 3600 + avatar_clip * args.dataset_clips
    slots = args.nodes * args.slots_per_node
    print(f"\nextrapolation (these settings, these per-task speeds): {args.dataset_clips} clips, "
          f"{args.dataset_hours:g} h: track {track_rate:.2f} s per video second, train-avatar {avatar_clip:.0f} s per "
          f"clip -> {total / 3600:.1f} task-hours; on {args.nodes} nodes x {args.slots_per_node} slots: "
          f"{total / slots / 3600:.1f} h")
    report = {"runs": runs, "clip_seconds": seconds, "track_s_per_video_s": track_rate,
              "avatar_s_per_clip": avatar_clip}
    write_json(args.out / f"bench_batch{'_' + args.only if args.only else ''}.json", report)


if __name__ == "__main__":
    main()
