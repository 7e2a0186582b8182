"""One writer per stage output: a lock file beside the output (``.NAME.gft-lock``, holding the pid, host and stage),
created exclusively, so a second ``gft`` command writing the same SUBJECT stage at once fails straight away instead
of interleaving files. A lock left by a process that no longer runs on this host is stale and taken over."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import GftError, StageBusyError

__all__ = ["lock_path", "stage_lock"]


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of output ``target`` (a folder or a file): beside it, hidden."""
    target = Path(target)
    return target.parent / f".{target.name}.gft-lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


@contextmanager
def stage_lock(target: str | os.PathLike, stage: str) -> Iterator[Path]:
    """Hold the lock of ``target`` while ``stage`` writes it; a StageBusyError naming the other process otherwise."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "stage": stage, "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, ValueError):
                other = {}
            pid, host = other.get("pid"), other.get("host")
            if isinstance(pid, int) and host == me["host"] and not _alive(pid):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise StageBusyError(f"{target}: being written by gft {other.get('stage', '?')} (pid {pid} on {host}, lock "
                                 f"{path}); wait for it, or delete the lock if that process is gone") from None
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
        except OSError as e:  # a full or failing file system: say where, and leave no empty lock behind
            path.unlink(missing_ok=True)
            raise GftError(f"{path}: cannot write the stage lock ({e.strerror or e})") from None
        break
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
