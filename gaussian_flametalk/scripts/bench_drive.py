"""Benchmark of ``gft drive``: real-time factor split into audio model, mesh, render and encode.

    python -m gaussian_flametalk.scripts.bench_drive SUBJECT SPEECH [--resolutions 256 512] [--device cuda]

Runs the drive stage once per resolution (after one short warm-up drive, so one-off costs such as loading and CUDA
kernel compilation are not counted) and prints a markdown table: seconds per part and the real-time factor
(seconds of speech per second of audio model + mesh + render + encode). Model loading is reported apart.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import add_dataclass_args, dataclass_from_args, resolve_device, validate
from ..io.audio import SAMPLE_RATE, load_audio, save_wav
from ..pipeline.drive import DriveConfig, drive


@dataclass
class BenchDriveConfig:
    subject: Path = field(metadata={"help": "SUBJECT with a trained avatar and FlameTalk"})
    speech: Path = field(metadata={"help": "speech file to drive with"})
    resolutions: tuple[int, ...] = field(default=(256,), metadata={"help": "output sizes to time"})
    mode: Literal["autoregressive", "parallel"] = field(default="autoregressive", metadata={"help": "FlameTalk inference mode"})
    device: str = field(default="auto", metadata={
        "help": "torch device: auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N"})
    out: Path | None = field(default=None, metadata={"help": "folder for the videos (default: a temporary one)"})

    def __post_init__(self) -> None:
        validate(self)
        self.device = resolve_device(self.device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, BenchDriveConfig, ("subject", "speech"))
    cfg = dataclass_from_args(BenchDriveConfig, parser.parse_args(argv))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(cfg.out or tmp)
        warm = out / "warmup.wav"
        save_wav(warm, load_audio(cfg.speech)[: SAMPLE_RATE // 2])
        rows = []
        for res in cfg.resolutions:
            drive(DriveConfig(subject=cfg.subject, speech=warm, out=out / f"warmup_{res}.mp4", mode=cfg.mode,
                              resolution=res, device=cfg.device, progress=False))
            meta = drive(DriveConfig(subject=cfg.subject, speech=cfg.speech, out=out / f"drive_{res}.mp4",
                                     mode=cfg.mode, resolution=res, device=cfg.device, progress=True))
            rows.append(meta)
    device = rows[0]["device"] if rows else cfg.device
    print(f"\ndevice {device} ({platform.processor() or platform.machine()}), mode {cfg.mode}, speech {cfg.speech}")
    print("| resolution | speech s | frames | audio model s | mesh s | render s | encode s | load s | real-time factor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in rows:
        s, fig = m["timings"], m["figures"]
        print(f"| {m['resolution']} | {fig['speech_seconds']:.1f} | {m['frames']} | {s['audio_model']:.2f} | "
              f"{s['mesh']:.2f} | {s['render']:.2f} | {s['encode']:.2f} | {s['load']:.2f} | "
              f"{fig['real_time_factor']:.2f}x |")
    return 0 if rows and np.isfinite([m["figures"]["real_time_factor"] for m in rows]).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
