"""The package's one error base class. A :class:`GftError` is an expected failure — bad input, a missing stage or
model file, a bad option, a diverged training run, a stage folder another process is writing — whose message names
the file or option and the problem; the ``gft`` command line prints it as one line and exits with status 2 (with
``--debug`` or ``GFT_DEBUG=1``, the traceback too). Anything else is a bug: a traceback and status 1.

Specific errors derive from it and from the matching built-in (``ValueError``, ``FileNotFoundError``, ...), so code
that catches the built-in keeps working.
"""

from __future__ import annotations

__all__ = ["GftError", "StageBusyError", "TrainingDivergedError"]


class GftError(Exception):
    """An expected error, reported to the user as one line."""


class TrainingDivergedError(GftError, FloatingPointError):
    """A training loss became NaN or infinite; the last good checkpoint is kept."""


class StageBusyError(GftError, RuntimeError):
    """Another live process is writing the same stage folder."""
