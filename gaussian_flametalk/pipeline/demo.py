"""``gft demo --out DIR``: the whole pipeline on the built-in synthetic subject, offline, in minutes on a CPU.

Stages, each writing its own folder under DIR (the same code and folders as the individual commands):

    demo_subject/  the built-in talking subject: video.mp4 with espeak-ng speech, ground-truth parameters
    subject/       gft track   (mediapipe detection, head-model fit, masks) of demo_subject/video.mp4
    subject/avatar gft train-avatar
    subject/talk   gft train-talk
    driven.mp4     gft drive   with a second, different sentence (demo_subject/drive_speech.wav)
    eval/          gft eval    of driven.mp4 (stability, lip sync against its own sound)

and ``summary.json`` / ``summary.md``: where each output is, the tracking error against the known ground truth
(and the template's, the trivial baseline), the avatar's test-split PSNR, FlameTalk's lip vertex error against the
mean-expression baseline, the driven video's stability and lip-sync scores, and the time each stage took.

A stage whose output is complete is reused, an interrupted one resumes from its checkpoint or is redone (every stage
writes to temporary names and its ``meta.json`` last), so running the demo again into the same folder finishes the
work. ``--force`` redoes every stage; running with other settings (``--quick`` or not) into a folder made with
different ones redoes every stage too. ``--quick`` runs the same stages at small sizes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..avatar.train import AvatarConfig, DensifyOptions, train_avatar
from ..config import resolve_device, validate
from ..eval.evaluate import EvalConfig, evaluate
from ..flametalk.train import TalkConfig, train_talk
from ..atomic import write_json, write_text
from ..tracking.track import TrackConfig, track
from ..demo_subject.subject import DemoSubjectConfig, make_demo_subject, tracking_error
from .drive import DriveConfig, drive

__all__ = ["DemoConfig", "DemoSizes", "demo", "main"]


@dataclass(frozen=True)
class DemoSizes:
    """Stage sizes of one demo flavour."""

    video_px: int
    seconds: float
    fit_iters: tuple[int, int, int]  # tracking: rigid LM, full LM, smoothing L-BFGS iterations
    avatar_px: int
    avatar_iterations: int
    talk_iterations: int
    talk_seq_frames: int
    drive_px: int


SIZES = {
    "default": DemoSizes(video_px=512, seconds=20.0, fit_iters=(50, 20, 100), avatar_px=256, avatar_iterations=1000,
                         talk_iterations=1000, talk_seq_frames=100, drive_px=256),
    "quick": DemoSizes(video_px=256, seconds=8.0, fit_iters=(10, 4, 15), avatar_px=128, avatar_iterations=250,
                       talk_iterations=300, talk_seq_frames=50, drive_px=128),
}


@dataclass
class DemoConfig:
    """Options of ``gft demo``."""

    out: Path = field(default=Path("gft-demo"), metadata={"help": "output folder (re-running reuses finished stages)"})
    quick: bool = field(default=False, metadata={"help": "small sizes: about 3 minutes on a 2-core CPU"})
    device: str = field(default="auto", metadata={
        "help": "torch device: auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N"})
    force: bool = field(default=False, metadata={"help": "redo every stage"})
    seed: int = field(default=0, metadata={"help": "seed of the demo subject and of training"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        validate(self)
        self.device = resolve_device(self.device)


class _Stages:
    """Runs the stages in order: a stage is reused when its output is complete and no stage before it ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.reused: dict[str, bool] = {}
        self.ran = False

    def __call__(self, name: str, complete: bool, run) -> None:
        reuse = complete and not self.ran
        print(f"\n== {name}" + (" (finished before: reused)" if reuse else ""), flush=True)
        t0 = time.perf_counter()
        if not reuse:
            run()
            self.ran = True
        self.seconds[name] = time.perf_counter() - t0
        self.reused[name] = reuse


def demo(cfg: DemoConfig) -> dict:
    """Run every stage (module docstring). Returns the summary dict (also written to OUT/summary.json)."""
    flavour = "quick" if cfg.quick else "default"
    sizes = SIZES[flavour]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps({"flavour": flavour, "sizes": asdict(sizes), "seed": cfg.seed,
                                      "device": cfg.device}))  # as read back from demo.json
    settings_path = out / "demo.json"
    force = cfg.force
    if settings_path.is_file() and json.loads(settings_path.read_text()) != settings:
        print(f"{out} was made with other settings: redoing every stage")
        force = True
    demo_dir, subject = out / "demo_subject", out / "subject"
    driven, eval_dir = out / "driven.mp4", out / "eval"
    rebuild = force or not (demo_dir / "meta.json").is_file()
    if rebuild:  # everything after the demo subject is made from it
        for stale in ("subject", "subject.partial", "eval", "summary.json", "summary.md", "driven.mp4", "driven.npz",
                      "driven.meta.json", "driven.reference.mp4"):
            path = out / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    write_json(settings_path, settings)
    stage = _Stages()
    stage("demo subject", not rebuild, lambda: make_demo_subject(DemoSubjectConfig(
        out=demo_dir, quick=cfg.quick, seed=cfg.seed, resolution=sizes.video_px, seconds=sizes.seconds,
        device=cfg.device, force=force, progress=cfg.progress)))
    stage("track", (subject / "meta.json").is_file(), lambda: track(TrackConfig(
        video=demo_dir / "video.mp4", out=subject, head_model="synthetic", resolution=sizes.video_px, device=cfg.device,
        rigid_iters=sizes.fit_iters[0], full_iters=sizes.fit_iters[1], smooth_iters=sizes.fit_iters[2],
        progress=cfg.progress)))
    stage("train-avatar", (subject / "avatar" / "meta.json").is_file(), lambda: train_avatar(
        AvatarConfig(subject=subject, iterations=sizes.avatar_iterations, resolution=sizes.avatar_px,
                     device=cfg.device, seed=cfg.seed, checkpoint_every=max(sizes.avatar_iterations // 4, 1),
                     densify=DensifyOptions(start=0.25, end=0.75, opacity_resets=0), sh_degree=2, sh_ramp=2 / 3,
                     progress=cfg.progress)))
    stage("train-talk", (subject / "talk" / "meta.json").is_file(), lambda: train_talk(TalkConfig(
        subjects=(subject,), iterations=sizes.talk_iterations, seq_frames=sizes.talk_seq_frames, device=cfg.device,
        seed=cfg.seed, checkpoint_every=max(sizes.talk_iterations // 4, 1), progress=cfg.progress)))
    stage("drive", driven.with_suffix(".meta.json").is_file(),
           lambda: drive(DriveConfig(subject=subject, speech=demo_dir / "drive_speech.wav", out=driven,
                                     resolution=sizes.drive_px, device=cfg.device, progress=cfg.progress)))
    stage("eval", (eval_dir / "metrics.json").is_file(), lambda: evaluate(EvalConfig(
        videos=(driven,), out=eval_dir, device=cfg.device, progress=cfg.progress)))

    summary = summarise(out, stage.seconds, stage.reused)
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", format_summary(summary))
    return summary


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def summarise(out: Path, timings: dict[str, float], reused: dict[str, bool]) -> dict:
    """The demo's figures, read back from the stages' own outputs."""
    subject = out / "subject"
    avatar = _read(subject / "avatar" / "meta.json")
    talk = next(iter(_read(subject / "talk" / "meta.json")["test"].values()))
    video = _read(out / "eval" / "metrics.json")["videos"][0]
    sync = video["lipsync"]["envelope"]
    stab = video["stability"]
    return {
        "outputs": {
            "demo_video": str(out / "demo_subject" / "video.mp4"), "subject": str(subject),
            "tracking_overlay": str(subject / "overlay.mp4"), "avatar": str(subject / "avatar"),
            "avatar_test_grid": str(subject / "avatar" / "test_grid.png"), "talk": str(subject / "talk"),
            "driven_video": str(out / "driven.mp4"), "eval": str(out / "eval"),
        },
        "tracking": tracking_error(subject, out / "demo_subject"),
        "avatar": {"test_psnr_db": avatar["figures"]["test_psnr"], "test_ssim": avatar["figures"]["test_ssim"]},
        "flametalk": {"lve_mm": talk["lve_mm"], "baseline_lve_mm": talk["baseline_lve_mm"],
                      "mouth_opening_correlation": talk["mouth_opening_correlation"]},
        "driven": {
            "frames": video["frames"],
            "stability_score": stab.get("score"),
            "stability_terms": stab.get("terms"),
            "lipsync_offset_frames": sync.get("offset"),
            "lipsync_peak": sync.get("peak"),
            "lipsync_peak_minus_median": sync.get("peak_minus_median"),
        },
        "seconds": {**timings, "total": sum(timings.values())},
        "reused": reused,
    }


def format_summary(s: dict) -> str:
    """The summary as markdown (also what is printed)."""
    t, a, f, d = s["tracking"], s["avatar"], s["flametalk"], s["driven"]
    lines = [
        "# gft demo: summary", "",
        "| stage | figure | value | trivial baseline |", "|---|---|---|---|",
        f"| track | landmark error vs ground truth | {t['error_px']:.2f} px ({100 * t['error_iod']:.1f} % IOD) | "
        f"template: {t['template_error_px']:.2f} px ({100 * t['template_error_iod']:.1f} % IOD) |",
        f"| train-avatar | test-split PSNR / SSIM | {a['test_psnr_db']:.2f} dB / {a['test_ssim']:.3f} | |",
        f"| train-talk | test-split lip vertex error | {f['lve_mm']:.3f} mm | mean expression: "
        f"{f['baseline_lve_mm']:.3f} mm |",
        f"| drive + eval | stability score (no reference; lower is steadier) | {d['stability_score']:.3f} | |",
        f"| drive + eval | lip sync: best offset, peak - median | {d['lipsync_offset_frames']} frames, "
        f"{d['lipsync_peak_minus_median']:.3f} | offset 0 is in sync |",
        "", "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v:.1f}{' (reused)' if s['reused'].get(k) else ''} |" for k, v in s["seconds"].items()],
        "", "Outputs:", *[f"- {k}: `{v}`" for k, v in s["outputs"].items()], "",
    ]
    return "\n".join(lines)


def main(cfg: DemoConfig) -> int:
    summary = demo(cfg)
    print("\n" + format_summary(summary))
    print(f"summary written to {Path(cfg.out) / 'summary.md'}")
    return 0
