"""Typed dataclass configs that are also command-line options.

A stage's config is a dataclass; every field becomes ``--field-name`` with the field's type, default
and ``metadata={"help": ...}``. Supported field types: bool (``--x`` / ``--no-x``), int, float, str,
pathlib.Path, their ``| None`` forms, and ``tuple[T, ...]`` (space-separated values).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        raise TypeError(f"unsupported union type {tp}")
    return tp, False


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = ()) -> None:
    """Add one option per field of dataclass ``cls`` (fields named in ``positional`` become positional arguments)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap(hints[f.name])
        help_text = f.metadata.get("help", "")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        if f.name in positional:
            kwargs: dict[str, Any] = {"help": help_text}
            if typing.get_origin(tp) is tuple:
                kwargs.update(nargs="+" if not has_default else "*", type=typing.get_args(tp)[0])
            else:
                kwargs["type"] = tp
            if has_default and typing.get_origin(tp) is not tuple:
                kwargs["nargs"] = "?"
            if has_default:
                kwargs["default"] = default
            parser.add_argument(f.name, **kwargs)
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(tp) is tuple:
            parser.add_argument(flag, nargs="*", type=typing.get_args(tp)[0], default=default, help=help_text)
        else:
            parser.add_argument(flag, type=tp, default=default, required=not has_default and not optional, help=help_text)


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from parsed arguments (tuples converted from lists)."""
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def package_versions(*distributions: str) -> dict[str, str]:
    """Versions for a stage's meta.json: Python, this package, torch, numpy and the given distributions (if installed)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for dist in ("gaussian-flametalk", "torch", "numpy", *distributions):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a dataclass config (paths as strings), for meta.json files."""
    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return v
    return {f.name: conv(getattr(config, f.name)) for f in dataclasses.fields(config)}
