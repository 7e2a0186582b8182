"""The ``meta.json`` every stage writes last (its presence marks a finished stage), one schema for all stages.

Fields: ``format`` (:data:`META_FORMAT`), ``stage`` (the ``gft`` subcommand), ``config`` (the stage's options),
``versions`` (Python and packages), ``inputs``, ``outputs`` (files, relative to the folder), ``timings`` (seconds),
``figures`` (what the stage measured); a stage may add its own keys beside them (``extra``), e.g. the SUBJECT's
``n_frames``/``fps``/``head_model``, which later stages read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import jsonable, write_json

__all__ = ["META_FORMAT", "StageMeta", "package_versions", "read_meta", "write_meta"]

META_FORMAT = 1


def package_versions(*distributions: str) -> dict[str, str]:
    """Python, this package, torch, numpy and the given distributions (those installed)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for dist in ("gaussian-flametalk", "torch", "numpy", *distributions):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class StageMeta:
    """One stage's ``meta.json``."""

    stage: str
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {"format": META_FORMAT, "stage": self.stage, "config": self.config, "versions": self.versions,
             "inputs": self.inputs, "outputs": self.outputs, "timings": self.timings, "figures": self.figures}
        clash = set(self.extra) & set(d)
        if clash:
            raise ValueError(f"meta.json extra keys {sorted(clash)} clash with the schema's")
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageMeta:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: d[k] for k in known if k in d},
                   extra={k: v for k, v in d.items() if k not in known and k != "format"})


def write_meta(path: str | os.PathLike, meta: StageMeta) -> dict[str, Any]:
    """Write ``meta`` atomically; returns the dict as written (NaN as None)."""
    d = jsonable(meta.to_dict())
    write_json(path, d)
    return d


def read_meta(path: str | os.PathLike, stage: str | None = None) -> dict[str, Any]:
    """A stage's meta.json as a dict; a clear error when it is missing, not JSON, or from another stage."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the stage has not finished here)")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a stage meta.json")
    if stage is not None and d.get("stage") != stage:
        raise ValueError(f"{path}: is from stage {d.get('stage')!r}, expected {stage!r}")
    return d
