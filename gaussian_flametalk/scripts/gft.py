"""The ``gft`` command line: one subcommand per pipeline stage.

Each subcommand's options are the fields of that stage's config dataclass (see ``config.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ..config import add_dataclass_args, dataclass_from_args
from ..eval import evaluate as eval_stage
from ..avatar.sequence import RenderAvatarConfig
from ..avatar.sequence import main as render_avatar_main
from ..avatar.train import AvatarConfig
from ..avatar.train import main as train_avatar_main
from ..flametalk.train import TalkConfig
from ..flametalk.train import main as train_talk_main
from ..tracking import track
from . import demo, doctor, drive


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    config: type
    run: Callable[[object], int]
    positional: tuple[str, ...] = ()


COMMANDS = (
    Command("demo", "run the whole pipeline on the built-in synthetic subject (offline; --quick: about 3 minutes)",
            demo.DemoConfig, demo.main),
    Command("doctor", "report what works on this machine (torch, CUDA, gsplat, landmarks, head models, ffmpeg)",
            doctor.DoctorConfig, doctor.main),
    Command("track", "track a talking-head video into a SUBJECT folder (frames, masks, landmarks, head parameters)",
            track.TrackConfig, track.main, positional=("video",)),
    Command("train-avatar", "train a Gaussian head avatar bound to the head mesh (writes SUBJECT/avatar)",
            AvatarConfig, train_avatar_main, positional=("subject",)),
    Command("render-avatar", "render a trained avatar for a head-parameter sequence into a composited mp4",
            RenderAvatarConfig, render_avatar_main, positional=("subject",)),
    Command("train-talk", "train FlameTalk (speech to expression + jaw) on SUBJECT folders (writes SUBJECT/talk)",
            TalkConfig, train_talk_main, positional=("subjects",)),
    Command("drive", "drive a SUBJECT's avatar with any speech into an mp4 (FlameTalk expression + jaw, tracked pose)",
            drive.DriveConfig, drive.main, positional=("subject", "speech")),
    Command("eval", "measure stability, lip sync, image quality and mesh motion of videos (metrics.json, plots, table)",
            eval_stage.EvalConfig, eval_stage.main, positional=("videos",)),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gft", description="gaussian-flametalk: audio-driven Gaussian head avatars")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_dataclass_args(p, cmd.config, cmd.positional)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd: Command = args._command
    try:
        config = dataclass_from_args(cmd.config, args)
    except ValueError as e:  # a config's own validation: refused before any work, as a usage error
        parser.error(f"{cmd.name}: {e}")
    return cmd.run(config)


if __name__ == "__main__":
    sys.exit(main())
