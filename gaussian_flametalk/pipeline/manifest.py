"""The ``gft batch`` manifest: which clips to run, and each clip's overrides of any stage option.

YAML (a list of clips, or a mapping with ``clips`` and optional ``defaults`` applied to every clip)::

    defaults:
      head_model: ict:/data/ICT-FaceKit/FaceXModel
      track: {resolution: 256, overlay: false}
      train-avatar: {iterations: 1000}
      train-talk-prior: {iterations: 200}        # the one cross-subject prior task (defaults only)
    clips:
      - video: videos/anchor.mp4                 # relative paths are relative to the manifest
        name: anchor                             # the SUBJECT folder ROOT/anchor (default: the video's stem)
        speech: [speech/jfk.flac]                # extra cross-reenactment speech for gft benchmark
        train-avatar: {iterations: 3000}         # this clip's own options win over the defaults

CSV: a header row with ``video`` and optionally ``name``, ``head_model``, ``speech`` (several files separated by
``;``) and one column per override, named ``STAGE.OPTION`` (``train-avatar.iterations``); an empty cell leaves the
option at its default. Option names are the stage's ``gft STAGE --help`` options without the dashes (``max-triangles``
or ``max_triangles``; a group's ``densify.grad-threshold``, or in YAML a mapping ``densify: {grad-threshold: ...}``);
values are checked against the option's type here, and the stage config validates them when the plan is made, so a
typo fails before any work starts, naming the manifest, the clip and the option.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GftError

__all__ = ["CLIP_STAGES", "Clip", "ManifestError", "PRIOR_STAGE", "STAGES", "coerce_options", "read_manifest"]

#: every stage ``gft batch`` runs, in the order a clip runs them (the prior between tracking and per-clip FlameTalk)
STAGES = ("track", "train-avatar", "train-talk-prior", "train-talk", "benchmark")
#: the cross-subject FlameTalk prior: one task over every tracked clip, not a per-clip stage
PRIOR_STAGE = "train-talk-prior"
CLIP_STAGES = tuple(s for s in STAGES if s != PRIOR_STAGE)

#: options the batch sets itself (from the clip and ROOT); a manifest may not override them
RESERVED = {
    "track": {"video", "out", "head_model"},
    "train-avatar": {"subject", "out"},
    "train-talk": {"subjects", "out", "init"},
    "train-talk-prior": {"subjects", "out", "init"},
    "benchmark": {"subjects", "out", "speech"},
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ManifestError(GftError, ValueError):
    """A manifest that cannot be run as written (names the file, the clip and the problem)."""


@dataclass(frozen=True)
class Clip:
    """One manifest entry: ``video`` (absolute), the SUBJECT folder name, the head-model spec (None: the batch's),
    extra cross-reenactment speech files, and per-stage option overrides (stage -> {field name: typed value})."""

    name: str
    video: Path
    head_model: str | None = None
    speech: tuple[Path, ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


def _unwrap(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _coerce(value: Any, tp: Any, base: Path) -> Any:
    """``value`` (from YAML, or a CSV cell's text) as type ``tp``; a ValueError saying what was expected."""
    tp, optional = _unwrap(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError("may not be empty")
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        items = value.split() if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        return tuple(_coerce(v, inner, base) for v in items)
    if typing.get_origin(tp) is typing.Literal:
        return _coerce(value, type(typing.get_args(tp)[0]), base)  # the allowed values are checked by the config
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value) if not isinstance(value, str) else int(value.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp is Path:
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else (base / path).resolve()
    if tp is str:
        return str(value)
    raise ValueError(f"options of type {tp} cannot be set from a manifest")


def _flatten(options: Any) -> Any:
    """A stage's options with nested mappings as dotted names (``{"densify": {"start": 0.2}}`` ->
    ``{"densify.start": 0.2}``), so a clip's options of a group merge with the defaults' one by one."""
    if not isinstance(options, dict):
        return options
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in _flatten(value).items()})
        else:
            out[str(key)] = value
    return out


def _is_group(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def coerce_options(stage: str, config_cls: type, options: dict[str, Any], base: Path, _prefix: str = ""
                   ) -> dict[str, Any]:
    """``options`` (names with dashes or underscores; a nested config's as ``group.name``, e.g.
    ``densify.grad-threshold``) as typed keyword arguments of ``config_cls`` (a nested config made and validated
    here); relative paths resolved against ``base``. A ValueError naming the option on an unknown, reserved or
    mistyped one."""
    hints = typing.get_type_hints(config_cls)
    known = {f.name for f in dataclasses.fields(config_cls)}
    out: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for key, value in _flatten(options).items():
        group, dot, rest = str(key).partition(".")
        name = group.replace("-", "_")
        if name not in known:
            raise ValueError(f"{stage} has no option {_prefix + str(key)!r} (see gft {stage.replace('-prior', '')} "
                             f"--help)")
        if not _prefix and name in RESERVED.get(stage, ()):
            raise ValueError(f"{stage} option {key!r} is set by gft batch itself")
        tp = hints[name]
        if _is_group(tp) != bool(dot):
            what = (f"is a group of options: give {_prefix}{group}.NAME" if not dot else "is not a group of options")
            raise ValueError(f"{stage} option {_prefix + group!r} {what}")
        if dot:
            groups.setdefault(name, {})[rest] = value
            continue
        try:
            out[name] = _coerce(value, tp, base)
        except ValueError as e:
            raise ValueError(f"{stage} option {_prefix + str(key)!r}: {e}") from None
    for name, sub in groups.items():
        kwargs = coerce_options(stage, hints[name], sub, base, f"{_prefix}{name}.")
        try:
            out[name] = hints[name](**kwargs)  # validates the group's values, naming the option
        except ValueError as e:
            raise ValueError(f"{stage}: {e}") from None
    return out


def _head_model(spec: Any, base: Path) -> str | None:
    """A head-model spec with a relative path made absolute (``ict:models/FaceXModel``), so any worker reads it."""
    if spec is None or str(spec).strip() == "":
        return None
    kind, sep, path = str(spec).partition(":")
    if not sep or not path:
        return str(spec)
    return f"{kind}:{_coerce(path, Path, base)}"


def _clip(entry: dict[str, Any], defaults: dict[str, Any], base: Path) -> Clip:
    unknown = set(entry) - {"video", "name", "head_model", "speech", *STAGES}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (a clip has video, name, head_model, speech and the "
                         f"stage names {', '.join(CLIP_STAGES)})")
    if PRIOR_STAGE in entry:
        raise ValueError(f"{PRIOR_STAGE} options belong in the manifest's defaults (it is one task for all clips)")
    if not entry.get("video"):
        raise ValueError("has no video")
    video = _coerce(entry["video"], Path, base)
    name = str(entry.get("name") or video.stem)
    if not _NAME.match(name):
        raise ValueError(f"name {name!r} is not a folder name (letters, digits, . _ -; not starting with . or -)")
    speech = entry.get("speech") or defaults.get("speech") or ()
    if isinstance(speech, str):
        speech = [s for s in speech.split(";") if s.strip()]
    options = {}
    for stage in CLIP_STAGES:
        merged = {**_flatten(defaults.get(stage) or {}), **_flatten(entry.get(stage) or {})}
        if not isinstance(merged, dict):
            raise ValueError(f"{stage}: expected a mapping of options")
        if merged:
            options[stage] = merged
    head_model = _head_model(entry.get("head_model", defaults.get("head_model")), base)
    return Clip(name=name, video=video, head_model=head_model,
                speech=tuple(_coerce(s.strip() if isinstance(s, str) else s, Path, base) for s in speech),
                options=options)


def _read_yaml(path: Path) -> tuple[list[dict], dict]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if isinstance(data, dict):
        unknown = set(data) - {"clips", "defaults"}
        if unknown:
            raise ManifestError(f"{path}: unknown top-level keys {sorted(unknown)} (expected clips, defaults)")
        clips, defaults = data.get("clips"), data.get("defaults") or {}
    else:
        clips, defaults = data, {}
    if not isinstance(clips, list) or not all(isinstance(c, dict) for c in clips):
        raise ManifestError(f"{path}: expected a list of clips (each a mapping with at least 'video')")
    if not isinstance(defaults, dict):
        raise ManifestError(f"{path}: 'defaults' must be a mapping")
    return clips, defaults


def _read_csv(path: Path) -> tuple[list[dict], dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    entries = []
    for row in rows:
        entry: dict[str, Any] = {}
        for key, cell in row.items():
            if key is None:
                raise ManifestError(f"{path}: a row has more cells than the header has columns")
            cell = (cell or "").strip()
            if not cell:
                continue
            stage, dot, option = key.strip().partition(".")
            if dot:
                if stage not in CLIP_STAGES:
                    raise ManifestError(f"{path}: column {key!r}: {stage!r} is not a stage ({', '.join(CLIP_STAGES)})")
                entry.setdefault(stage, {})[option] = cell
            else:
                entry[key.strip()] = cell
        if entry:
            entries.append(entry)
    return entries, {}


def read_manifest(path: str | Path) -> tuple[list[Clip], dict[str, Any]]:
    """The clips of a YAML (``.yaml``/``.yml``) or CSV (``.csv``) manifest, and the options of the prior stage (raw:
    the defaults' train-talk options but its length, then the defaults' train-talk-prior options). Checked whole
    before anything runs: a ManifestError naming the file and the clip otherwise. Option values are typed later,
    against the stage configs (:func:`coerce_options`)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        entries, defaults = _read_yaml(path)
    elif suffix == ".csv":
        entries, defaults = _read_csv(path)
    else:
        raise ManifestError(f"{path}: a manifest is .yaml, .yml or .csv, not {suffix or 'without an extension'}")
    unknown = set(defaults) - {"head_model", "speech", *STAGES}
    if unknown:
        raise ManifestError(f"{path}: defaults: unknown keys {sorted(unknown)}")
    if not entries:
        raise ManifestError(f"{path}: lists no clips")
    base = path.resolve().parent
    clips = []
    for k, entry in enumerate(entries):
        where = f"clip {k + 1}" + (f" ({entry['name']})" if entry.get("name") else "")
        try:
            clips.append(_clip(entry, defaults, base))
        except ValueError as e:
            raise ManifestError(f"{path}: {where}: {e}") from None
    seen: dict[str, int] = {}
    for k, clip in enumerate(clips):
        if clip.name in seen:
            raise ManifestError(f"{path}: clips {seen[clip.name] + 1} and {k + 1} share the name {clip.name!r} "
                                f"(give each a distinct 'name')")
        seen[clip.name] = k
    prior, talk = _flatten(defaults.get(PRIOR_STAGE) or {}), _flatten(defaults.get("train-talk") or {})
    if not isinstance(prior, dict) or not isinstance(talk, dict):
        raise ManifestError(f"{path}: defaults: {PRIOR_STAGE} and train-talk take a mapping of options")
    # the prior has the per-clip FlameTalk's encoder and architecture (the adaptation checks they match), but its
    # own length: the clips' iterations are those of an adaptation
    inherited = {k: v for k, v in talk.items() if k.replace("-", "_") not in ("iterations", "checkpoint_every")}
    return clips, {**inherited, **prior}
