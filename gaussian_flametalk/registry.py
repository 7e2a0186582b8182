"""Small registries for the pluggable parts (head models, audio encoders, landmark detectors, rasterizer backends).

A registry maps a name to a factory and an availability check. Components are chosen with spec strings
``NAME`` or ``NAME:ARG`` (``ict:/path/FaceXModel``, ``wav2vec2:facebook/wav2vec2-base-960h``), built with
:meth:`Registry.build`, listed by ``gft doctor`` through :meth:`Registry.report`. A registry imports nothing heavy:
each factory imports its own dependencies when called, so one broken optional dependency never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Entry", "Registry"]

Availability = Callable[[], tuple[bool | None, str]]  # (True = works, None = not configured here, False = broken; why)


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]  # factory(arg: str | None, **options)
    arg: Literal["none", "optional", "required"]
    arg_help: str  # what ARG is, e.g. "PATH to a FaceXModel folder"
    help: str
    available: Availability | None


class Registry:
    """Name -> factory + availability, for one kind of component (``kind`` names it in messages)."""

    def __init__(self, kind: str, option: str) -> None:
        self.kind, self.option = kind, option
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, help: str, arg: Literal["none", "optional", "required"] = "none",
                 arg_help: str = "", available: Availability | None = None, aliases: tuple[str, ...] = ()
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``factory(arg, **options)`` under ``name`` (and ``aliases``)."""
        def add(factory: Callable[..., Any]) -> Callable[..., Any]:
            for key in (name, *aliases):
                if key in self._entries:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
                self._entries[key] = Entry(name, factory, arg, arg_help, help, available)
            return factory
        return add

    def names(self) -> list[str]:
        """The registered names (without aliases), in registration order."""
        return list(dict.fromkeys(e.name for e in self._entries.values()))

    def entry(self, spec: str) -> tuple[Entry, str | None]:
        """The entry of ``NAME[:ARG]`` and its ARG; a ValueError naming the option and the choices otherwise."""
        name, sep, arg = spec.partition(":")
        entry = self._entries.get(name.strip().lower())
        if entry is None:
            raise ValueError(f"{self.option}: unknown {self.kind} {spec!r}; choose from {self.usage()}")
        if entry.arg == "none" and sep:
            raise ValueError(f"{self.option}: {self.kind} {entry.name!r} takes no argument (got {spec!r})")
        if entry.arg == "required" and not arg:
            raise ValueError(f"{self.option}: {self.kind} {entry.name!r} needs {entry.name}:{entry.arg_help or 'ARG'}")
        return entry, (arg or None)

    def build(self, spec: str, **options: Any) -> Any:
        """Build the component that ``spec`` names, with the factory's ``options``."""
        entry, arg = self.entry(spec)
        return entry.factory(arg, **options)

    def usage(self) -> str:
        """``a | b:ARG | c[:ARG]``: the specs the option accepts."""
        def one(e: Entry) -> str:
            tail = {"none": "", "optional": f"[:{e.arg_help or 'ARG'}]", "required": f":{e.arg_help or 'ARG'}"}[e.arg]
            return e.name + tail
        return " | ".join(one(self._entries[n]) for n in self.names())

    def report(self) -> list[tuple[str, bool | None, str]]:
        """(name, ok, why) for each entry, for ``gft doctor`` (a check that raises is reported as broken)."""
        rows = []
        for name in self.names():
            check = self._entries[name].available
            if check is None:
                rows.append((name, True, self._entries[name].help))
                continue
            try:
                ok, why = check()
            except Exception as e:  # noqa: BLE001 - doctor must report, never crash
                ok, why = False, f"{type(e).__name__}: {e}"
            rows.append((name, ok, why))
        return rows
