"""The evaluation report: metrics.json, keypoint trajectories (npz), PNG plots, and a side-by-side table.

Every file is written atomically (:mod:`gaussian_flametalk.atomic`). Plots use matplotlib's
object-oriented API with the Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..atomic import save_figure
from .stability import NOSE, StabilityTerms, power_spectrum

__all__ = ["UNAVAILABLE", "format_table", "plot_spectra", "plot_trajectories", "summary_rows"]

#: key of a metric section that could not be computed; its value says why
UNAVAILABLE = "unavailable"
_NOSE_TIP = NOSE.index(30)


def _mean_spectrum(terms: StabilityTerms) -> tuple[np.ndarray, np.ndarray, int]:
    """(freqs (F,), power share per frequency (F,), frames) of the longest used run: the detrended nose keypoint
    spectra, each normalised to a total of 1, averaged over keypoints and axes."""
    a, b = max(terms.runs(), key=lambda r: r[1] - r[0])
    freqs, power = power_spectrum(terms.trajectories[a:b], terms.fps)
    total = power.sum(0, keepdims=True)
    share = np.divide(power, total, out=np.zeros_like(power), where=total > 0)
    return freqs, share.mean(1), b - a


def plot_spectra(path: str | os.PathLike, series: dict[str, StabilityTerms], title: str) -> None:
    """Power spectra of the nose keypoint trajectories of each labelled clip, on a log scale, with the cutoff
    frequency and each clip's H_f in the legend (clips with frames excluded: their longest run)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    cutoff = next(iter(series.values())).cutoff_hz
    for label, terms in series.items():
        freqs, share, n = _mean_spectrum(terms)
        note = f", longest run {n} frames" if terms.n_excluded else ""
        ax.semilogy(freqs[1:], np.maximum(share[1:], 1e-12), label=f"{label} (H_f {terms.high_freq_share:.4f}{note})")
    ax.axvline(cutoff, color="k", ls="--", lw=1)
    ax.axvspan(cutoff, ax.get_xlim()[1], color="0.9", zorder=0)
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("share of power")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_trajectories(path: str | os.PathLike, series: dict[str, StabilityTerms], title: str) -> None:
    """Nose-tip (iBUG 30) trajectory (x and y minus their mean, in inter-ocular distances) and the per-frame motion
    m_t of each labelled clip over time; excluded frames are gaps."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6))
    ax_x, ax_y, ax_m = fig.subplots(3, 1, sharex=True)
    for label, terms in series.items():
        t = np.arange(terms.n_frames) / terms.fps
        tip = terms.trajectories[:, _NOSE_TIP]
        tip = tip - np.nanmean(tip, axis=0)
        ax_x.plot(t, tip[:, 0], lw=1, label=label)
        ax_y.plot(t, tip[:, 1], lw=1, label=label)
        stats = f"M_d {terms.mean_motion:.4f}, V_m {terms.motion_std:.4f}"
        ax_m.plot(t[:-1], terms.motion, lw=1, label=f"{label} ({stats})")
    ax_x.set_ylabel("nose tip x")
    ax_y.set_ylabel("nose tip y")
    ax_m.set_ylabel("m_t")
    ax_m.set_xlabel("time (s)")
    ax_x.set_title(title)
    ax_m.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _get(entry: dict, dotted: str) -> Any:
    value: Any = entry
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


#: (row label, dotted key into a video's metrics entry)
_ROWS = (
    ("frames", "frames"),
    ("frames without face", "faces.frames_without_face"),
    ("stability score (absolute)", "stability.score"),
    ("stability score (vs reference)", "stability.score_vs_reference"),
    ("M_d mean motion", "stability.terms.mean_motion"),
    ("V_m motion std", "stability.terms.motion_std"),
    ("H_f high-frequency share", "stability.terms.high_freq_share"),
    ("sync offset (frames)", "lipsync.envelope.offset"),
    ("sync peak", "lipsync.envelope.peak"),
    ("sync peak - median", "lipsync.envelope.peak_minus_median"),
    ("phonetic sync offset (frames)", "lipsync.phonetic.offset"),
    ("phonetic sync peak", "lipsync.phonetic.peak"),
    ("phonetic sync peak - median", "lipsync.phonetic.peak_minus_median"),
    ("open vowel > p/b/m AUC", "lipsync.phonetic.vowel_bilabial_auc"),
    ("phonetic sync beyond loudness", "lipsync.phonetic.beyond_loudness"),
    ("reference's phonetic sync peak", "lipsync.reference_phonetic.peak"),
    ("SyncNet offset", "lipsync.syncnet.offset"),
    ("SyncNet min dist (LSE-D)", "lipsync.syncnet.min_dist"),
    ("SyncNet confidence (LSE-C)", "lipsync.syncnet.confidence"),
    ("LMD", "lipsync.lmd"),
    ("PSNR (dB)", "image.psnr"),
    ("SSIM", "image.ssim"),
    ("LPIPS", "image.lpips"),
    ("LVE (mm)", "motion.lve_mm"),
    ("FDD (mm)", "motion.fdd_mm"),
    ("FFE (mm^2)", "motion.ffe_mm2"),
)


def _fmt(value: Any) -> str:
    if value is None or isinstance(value, (dict, list)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}" if math.isfinite(value) else "n/a"
    return str(value)


def summary_rows(entries: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """One (label, [value per video]) row per metric any video has; missing or unavailable values read n/a."""
    rows = []
    for label, key in _ROWS:
        values = [_get(e, key) for e in entries]
        if any(v is not None and not isinstance(v, (dict, list)) for v in values):
            rows.append((label, [_fmt(v) for v in values]))
    return rows


def format_table(names: Sequence[str], rows: Sequence[tuple[str, list[str]]], markdown: bool = False) -> str:
    """The side-by-side table (metrics down, videos across) as aligned plain text or as a markdown table."""
    header = ["metric", *names]
    body = [[label, *values] for label, values in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(names)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n"
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = [lambda s, w=widths[0]: s.ljust(w)] + [lambda s, w=w: s.rjust(w) for w in widths[1:]]
    lines = ["  ".join(f(s) for f, s in zip(fmt, r)) for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"
