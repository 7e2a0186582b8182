"""Typed dataclass configs that are also command-line options.

A stage's config is a dataclass; every field becomes ``--field-name`` with the field's type, default and
``metadata={"help": ...}``. Supported field types: bool (``--x`` / ``--no-x``), int, float, str, pathlib.Path,
``Literal[...]`` (argparse ``choices``), their ``| None`` forms, ``tuple[T, ...]`` (space-separated values), and a
nested dataclass, whose fields become ``--group.field-name`` options in a help group of their own.

Validation happens when the config is made (:func:`validate`, called from each config's ``__post_init__``), so a
bad value fails before any work starts, from the command line and from Python alike, naming the option and what it
allows. A numeric field states its range in its metadata: ``"min"`` / ``"max"`` (inclusive), ``"above"`` / ``"below"``
(exclusive), e.g. ``field(default=256, metadata={"help": "...", "min": 16})``; the range is shown in ``--help``. ``device="auto"`` (every stage's default) resolves to CUDA when torch sees a GPU, else the CPU
(:func:`resolve_device`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["add_dataclass_args", "config_to_dict", "dataclass_from_args", "flag_name", "range_text", "resolve_device",
           "validate"]

#: metadata key -> (comparison that must hold, how it reads)
_BOUNDS = {
    "min": (lambda v, b: v >= b, ">="),
    "above": (lambda v, b: v > b, ">"),
    "max": (lambda v, b: v <= b, "<="),
    "below": (lambda v, b: v < b, "<"),
}


def range_text(metadata: typing.Mapping[str, Any]) -> str:
    """The allowed range a field's metadata states, e.g. ``">= 1"`` or ``"> 0 and <= 1"`` ("" when none)."""
    return " and ".join(f"{word} {metadata[key]:g}" for key, (_, word) in _BOUNDS.items() if key in metadata)


def _check_range(f: dataclasses.Field, value: Any, prefix: str) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if v != v or not all(ok(v, f.metadata[key]) for key, (ok, _) in _BOUNDS.items() if key in f.metadata):
            raise ValueError(f"{flag_name(f.name, prefix)}: {v!r} is out of range (allowed: {range_text(f.metadata)})")


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        raise TypeError(f"unsupported union type {tp}")
    return tp, False


def _default(f: dataclasses.Field) -> tuple[bool, Any]:
    if f.default is not dataclasses.MISSING:
        return True, f.default
    if f.default_factory is not dataclasses.MISSING:
        return True, f.default_factory()
    return False, None


def flag_name(name: str, prefix: str = "") -> str:
    """The option of field ``name`` (in the nested group ``prefix``), e.g. ``--densify.grad-threshold``."""
    return "--" + prefix + name.replace("_", "-")


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = (),
                       prefix: str = "", group: Any = None) -> None:
    """Add one option per field of dataclass ``cls`` (fields named in ``positional`` become positional arguments;
    nested dataclass fields become ``--name.field`` options)."""
    hints = typing.get_type_hints(cls)
    target = group if group is not None else parser
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap(hints[f.name])
        help_text = f.metadata.get("help", "")
        if range_text(f.metadata):
            help_text = f"{help_text} ({range_text(f.metadata)})" if help_text else range_text(f.metadata)
        has_default, default = _default(f)
        dest = (prefix + f.name).replace(".", "__")
        if _is_config(tp):
            sub = parser.add_argument_group(f"{prefix}{f.name} options", help_text or None)
            add_dataclass_args(parser, tp, (), f"{prefix}{f.name}.", sub)
            continue
        if f.name in positional and not prefix:
            kwargs: dict[str, Any] = {"help": help_text}
            if typing.get_origin(tp) is tuple:
                kwargs.update(nargs="+" if not has_default else "*", type=typing.get_args(tp)[0])
            else:
                kwargs["type"] = tp
            if has_default and typing.get_origin(tp) is not tuple:
                kwargs["nargs"] = "?"
            if has_default:
                kwargs["default"] = default
            target.add_argument(f.name, **kwargs)
            continue
        flag = flag_name(f.name, prefix)
        if tp is bool:
            target.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(tp) is tuple:
            target.add_argument(flag, dest=dest, nargs="*", type=typing.get_args(tp)[0], default=default,
                                help=help_text)
        elif typing.get_origin(tp) is typing.Literal:
            choices = typing.get_args(tp)
            target.add_argument(flag, dest=dest, type=type(choices[0]), choices=choices, default=default,
                                required=not has_default and not optional, help=help_text)
        else:
            target.add_argument(flag, dest=dest, type=tp, default=default, required=not has_default and not optional,
                                help=help_text)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, prefix: str = "") -> T:
    """Build ``cls`` (and its nested configs) from parsed arguments (tuples converted from lists)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap(hints[f.name])
        if _is_config(tp):
            values[f.name] = dataclass_from_args(tp, args, f"{prefix}{f.name}.")
            continue
        dest = f.name if not prefix and hasattr(args, f.name) else (prefix + f.name).replace(".", "__")
        v = getattr(args, dest)
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def validate(config: Any, prefix: str = "") -> None:
    """Check every ``Literal`` field of a config (and of its nested configs) against its allowed values and every
    numeric field against the range its metadata states; a ValueError naming the option, the value and what is
    allowed otherwise."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        tp, optional = _unwrap(hints[f.name])
        value = getattr(config, f.name)
        if _is_config(tp):
            if not isinstance(value, tp):
                raise ValueError(f"{flag_name(f.name, prefix)}: expected a {tp.__name__}, got {type(value).__name__}")
            validate(value, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is typing.Literal:
            choices = typing.get_args(tp)
            if value not in choices and not (optional and value is None):
                raise ValueError(f"{flag_name(f.name, prefix)}: {value!r} is not one of "
                                 f"{', '.join(repr(c) for c in choices)}")
        elif range_text(f.metadata):
            _check_range(f, value, prefix)


def resolve_device(spec: str, option: str = "--device") -> str:
    """``"auto"``: ``"cuda"`` when torch sees a CUDA GPU, else ``"cpu"`` (said once on stderr); any other torch device
    string is checked and returned as given."""
    import torch

    if spec == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in _announced:
            _announced.add(device)
            print(f"[gft] device: {device} ({'CUDA GPU found' if device == 'cuda' else 'no CUDA GPU'}; "
                  f"choose with {option})", file=sys.stderr)
        return device
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{option}: {spec!r} is not a torch device ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option}: {spec!r} asked for, but torch sees no CUDA GPU (use --device auto or cpu)")
    return spec


_announced: set[str] = set()


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a (possibly nested) dataclass config (paths as strings), for meta.json files."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return config_to_dict(v)
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return v
    return {f.name: conv(getattr(config, f.name)) for f in dataclasses.fields(config)}
