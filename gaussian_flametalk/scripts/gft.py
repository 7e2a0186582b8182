"""The ``gft`` command line: one subcommand per pipeline stage.

Each subcommand's options are the fields of that stage's config dataclass (see ``config.py``). Only the chosen
subcommand's module is imported (``gft doctor`` runs even when one stage's dependency is broken, and ``gft --help``
imports no stage at all).

Errors: an expected one (:class:`~gaussian_flametalk.errors.GftError`, and the ``ValueError`` / file errors every
input check raises, naming the file or option) prints ``gft <command>: error: <message>`` as one line on stderr and
exits 2, like a bad option; ``--debug`` (anywhere on the line) or ``GFT_DEBUG=1`` shows the traceback as well. Anything
else is a bug: its traceback and exit status 1.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from dataclasses import dataclass

from ..config import add_dataclass_args, dataclass_from_args
from ..errors import GftError

#: what an input check raises: reported as one line, exit status 2
EXPECTED_ERRORS = (GftError, ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                   NotADirectoryError)

#: OSErrors that are the storage's fault, not the program's (full, read-only, quota): reported as one line too
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    module: str  # relative to the package; it defines ``config`` (a dataclass) and ``run`` (config -> exit status)
    config: str
    run: str = "main"
    positional: tuple[str, ...] = ()

    def load(self) -> tuple[type, object]:
        mod = importlib.import_module(f"gaussian_flametalk.{self.module}")
        return getattr(mod, self.config), getattr(mod, self.run)


COMMANDS = (
    Command("demo", "run the whole pipeline on the built-in synthetic subject (offline; --quick: about 3 minutes)",
            "pipeline.demo", "DemoConfig"),
    Command("doctor", "report what works on this machine (torch, CUDA, rasterizers, landmarks, head models, ffmpeg)",
            "scripts.doctor", "DoctorConfig"),
    Command("track", "track a talking-head video into a SUBJECT folder (frames, masks, landmarks, head parameters)",
            "pipeline.track", "TrackConfig", positional=("video",)),
    Command("train-avatar", "train a Gaussian head avatar bound to the head mesh (writes SUBJECT/avatar)",
            "avatar.train", "AvatarConfig", positional=("subject",)),
    Command("render-avatar", "render a trained avatar for a head-parameter sequence into a composited mp4",
            "avatar.sequence", "RenderAvatarConfig", positional=("subject",)),
    Command("train-talk", "train FlameTalk (speech to expression + jaw) on SUBJECT folders (writes SUBJECT/talk)",
            "flametalk.train", "TalkConfig", positional=("subjects",)),
    Command("drive", "drive a SUBJECT's avatar with any speech into an mp4 (FlameTalk expression + jaw, tracked pose)",
            "pipeline.drive", "DriveConfig", positional=("subject", "speech")),
    Command("eval", "measure stability, lip sync, image quality and mesh motion of videos (metrics.json, plots, table)",
            "eval.evaluate", "EvalConfig", positional=("videos",)),
    Command("benchmark", "the paper's Table 1 for trained SUBJECTs: self- and cross-reenactment (TTS) with PSNR, SSIM, "
            "LPIPS, Sync, Stability", "pipeline.benchmark", "BenchmarkConfig", positional=("subjects",)),
    Command("batch", "run many clips (a YAML/CSV manifest) through the stages as Ray tasks, resumable, one results "
            "table (ROOT/batch.md)", "pipeline.batch", "BatchConfig", positional=("manifest",)),
    Command("view", "look at a SUBJECT's avatar in the browser (viser): head-model sliders, sequence playback",
            "pipeline.view", "ViewConfig", positional=("subject",)),
    Command("import-vhap", "turn a VHAP-exported monocular sequence (transforms.json, flame_param/) into a SUBJECT",
            "interop.vhap", "ImportVhapConfig", run="main_import", positional=("folder",)),
    Command("export-vhap", "write a FLAME-tracked SUBJECT in VHAP's export layout (GaussianAvatars trains on it)",
            "interop.vhap", "ExportVhapConfig", run="main_export", positional=("subject",)),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; the options of subcommand ``only`` (None: of all) are added, which imports their modules."""
    parser = argparse.ArgumentParser(prog="gft", description="gaussian-flametalk: audio-driven Gaussian head avatars")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if only is None or cmd.name == only:
            config, run = cmd.load()
            add_dataclass_args(p, config, cmd.positional)
            p.set_defaults(_command=cmd, _config=config, _run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("GFT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in {c.name for c in COMMANDS} else "")
    args = parser.parse_args(argv)
    name = args._command.name
    try:
        config = dataclass_from_args(args._config, args)
    except ValueError as e:  # a config's own validation (an option out of range, a bad choice): before any work
        if debug:
            traceback.print_exc()
        print(f"gft {name}: error: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        return args._run(config)
    except EXPECTED_ERRORS as e:
        if debug:
            traceback.print_exc()
        print(f"gft {name}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        if debug:
            traceback.print_exc()
        print(f"gft {name}: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror} (outputs finished "
              "before stay as they were)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gft {name}: interrupted (a re-run resumes from the last checkpoint)", file=sys.stderr)
        return 130


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (later lines, e.g. a compiler's output, are left to --debug)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text + (" (more with --debug)" if len(lines) > 1 else "")


if __name__ == "__main__":
    sys.exit(main())
