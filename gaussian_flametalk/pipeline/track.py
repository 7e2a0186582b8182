"""``gft track``: the tracking stage with the sync estimate of :mod:`gaussian_flametalk.eval.av_offset` for
``--audio-offset auto`` (the default with ``--audio``). The estimate rests on eval's lip-sync scores and the phone
decoder of flametalk, which the tracking stage may not import (the layers of DESIGN.md), so it is handed in here."""

from __future__ import annotations

from pathlib import Path

from ..eval.av_offset import offset_for_tracking
from ..tracking import track as _stage
from ..tracking.track import TrackConfig

__all__ = ["TrackConfig", "main", "track"]


def track(cfg: TrackConfig) -> Path:
    """:func:`gaussian_flametalk.tracking.track.track` with the sound lined up by the sync estimate."""
    return _stage.track(cfg, estimate_offset=offset_for_tracking)


def main(cfg: TrackConfig) -> int:
    track(cfg)
    return 0
