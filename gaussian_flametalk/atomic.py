"""Atomic writes: every file the pipeline writes goes through :func:`atomic_write`, every folder built as a whole
(a SUBJECT, the demo subject, a VHAP export) through :func:`start_folder` / :func:`finish_folder`.

The content is written to a unique temporary name in the destination folder and renamed over the destination only
when it is complete (``os.replace`` is atomic within one file system), so a killed run leaves either the old
finished file or none, never a partial one that looks finished; on an error the temporary file is removed and the
old file is untouched. A folder is built under ``FINAL.partial`` and renamed to ``FINAL`` when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GftError

__all__ = ["atomic_write", "ensure_writable", "finish_folder", "jsonable", "partial_folder", "save_figure", "save_npz",
           "save_png", "save_torch", "start_folder", "temp_path", "write_json", "write_text"]


def temp_path(final: str | os.PathLike, suffix: str | None = None) -> Path:
    """A unique temporary name beside ``final`` (same folder, so the rename is atomic); it keeps ``final``'s suffix
    (or ``suffix``) so that tools choosing a format by extension (ffmpeg, OpenCV) still do."""
    final = Path(final)
    return final.with_name(f".{final.stem}.tmp-{uuid.uuid4().hex[:8]}{suffix if suffix is not None else final.suffix}")


def ensure_writable(folder: str | os.PathLike, need_bytes: int = 0) -> Path:
    """Check, before a long run, that ``folder`` can be created and written and has about ``need_bytes`` free.

    Creates ``folder`` (and its parents), writes and removes a probe file (so a read-only mount or a folder without
    write permission is found even for root, whom ``os.access`` does not refuse), and compares ``need_bytes`` with the
    free space. Raises :class:`~gaussian_flametalk.errors.GftError` with one line naming the folder and the problem.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path(folder / "write-probe", ".tmp")
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as e:
        raise GftError(f"{folder}: cannot write there ({e.strerror or e})") from None
    free = shutil.disk_usage(folder).free
    if need_bytes and free < need_bytes:
        raise GftError(f"{folder}: only {free / 2**20:.0f} MB free, this run writes about {need_bytes / 2**20:.0f} MB "
                       "(free some space or choose another output)")
    return folder


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on a clean exit it replaces ``path``, on an exception
    (or a kill) ``path`` keeps what it had. The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"{path}: nothing was written")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def partial_folder(final: str | os.PathLike) -> Path:
    """Where the folder ``final`` is built before :func:`finish_folder` renames it into place: ``FINAL.partial``
    beside it (so a killed run never leaves a finished-looking ``FINAL``)."""
    final = Path(final)
    return final.with_name(final.name + ".partial")


def start_folder(final: str | os.PathLike, resume: bool = False) -> Path:
    """Create the :func:`partial_folder` of ``final`` and return it; emptied first unless ``resume`` (keep what an
    interrupted run left there). Nothing at ``final`` is touched."""
    work = partial_folder(final)
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    return work


def finish_folder(final: str | os.PathLike) -> Path:
    """Rename the complete :func:`partial_folder` of ``final`` to ``final``, replacing an old ``final``. Returns
    ``final``."""
    final = Path(final)
    if final.exists():
        shutil.rmtree(final)
    partial_folder(final).rename(final)
    return final


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None, paths as strings, numpy scalars/arrays and tuples as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Strict JSON (NaN and inf written as null), indented, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(jsonable(data), indent=2, allow_nan=False))
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """An uncompressed npz."""
    with atomic_write(path, ".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """(H, W, 3) RGB or (H, W) grey uint8 as PNG."""
    import cv2

    rgb = np.asarray(rgb)
    with atomic_write(path, ".png") as tmp:
        if not cv2.imwrite(str(tmp), rgb[..., ::-1] if rgb.ndim == 3 else rgb):
            raise OSError(f"{path}: could not write the PNG")
    return Path(path)


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` (checkpoints)."""
    import torch

    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """A matplotlib figure as PNG (Agg canvas: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_write(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
