"""Lip-sync scores that need no network weights: mouth opening against the speech envelope, and the mouth
landmark distance (LMD) to a reference video.

Mouth opening
-------------
Per frame, the mean distance between facing points of the lip contours, in units of the clip's median
inter-ocular distance (outer eye corners, iBUG 36 and 45, as :mod:`.stability`), so the value does not depend on
the image scale. ``contour="inner"`` (default): pairs 61-67, 62-66, 63-65 of the inner lip; ``"outer"``: pairs
49-59 ... 53-55 of the outer lip; ``"both"``: the mean of the two. Frames without a face (NaN points) stay NaN.

Speech envelope
---------------
Per video frame, the log energy (dB) of the speech band: the wave is band-passed to 1-4 kHz (4th-order
Butterworth, zero phase; the second and third formant region, cf. Chandrasekaran et al. 2009; on ../shared clips
it separated a speaker's own sound from other speech better than 0.3-4 or 0.1-7 kHz did), squared, and averaged
with a Hann window two frames long centred on the middle of each frame; the dB values are floored at 50 dB
below the clip's 99th percentile, so pauses do not reach minus infinity. Frames past the end of the sound get the floor.

Envelope sync
-------------
Both series are high-passed (minus their centred moving average over ``highpass_s``, 0.36 s = 9 frames at 25 fps:
the syllable rate is kept, slow drifts of head pose and loudness are removed). For each offset k in
``-max_offset..max_offset`` the Pearson correlation of ``opening[t]`` with ``envelope[t + k]`` is taken over the
frames where both exist. ``offset`` is the k with the highest correlation (``peak``); ``k > 0`` means the sound is
late by k frames (a clip whose audio was delayed by 5 frames reports +5). ``peak_minus_median`` (peak minus the
median over all offsets) is the confidence. A constant series (silence, a mouth that never moves) correlates 0
at every offset.

Measured on ../shared clips (v1, v2, v4; 12 s windows; inner lips): own sound peak - median 0.29-0.45 at offset
-1..+1, the same sound delayed by 5 frames found at +4..+6; the highest of six other speech tracks 0.20-0.33;
white noise 0.10-0.15; silence 0. The outer-lip opening (``contour="outer"``) separates them better: own sound
0.35-0.47 against at most 0.32 for other speech.

Landmark distance (LMD)
-----------------------
The mean over frames and the 20 mouth points (iBUG 48-67) of the Euclidean distance between corresponding
points of the two videos (the LMD of Chen et al. 2018 compares mouth points of aligned faces; the alignment here
is the removal of each frame's mouth centroid from both, so head translation does not count), divided by the
reference's median inter-ocular distance.
Frames where either video has no face are excluded.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from ..headmodel import inter_ocular

__all__ = ["MOUTH", "envelope_sync", "landmark_distance", "mouth_opening", "speech_envelope"]

#: iBUG-68 mouth points (outer 48-59, inner 60-67)
MOUTH = tuple(range(48, 68))
_CONTOURS = {
    "inner": ((61, 62, 63), (67, 66, 65)),
    "outer": ((49, 50, 51, 52, 53), (59, 58, 57, 56, 55)),
}


def _check_points(points68: np.ndarray, name: str) -> np.ndarray:
    pts = np.asarray(points68, np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
        raise ValueError(f"{name}: need (T, 68, 2) landmarks, got {pts.shape}")
    return pts


def _clip_scale(pts: np.ndarray, name: str) -> float:
    """Median inter-ocular distance over the frames with a face."""
    d = inter_ocular(pts)
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise ValueError(f"{name}: no frame has a face (all landmarks are NaN)")
    scale = float(np.median(d))
    if scale <= 0:
        raise ValueError(f"{name}: the eye corners coincide (inter-ocular distance 0)")
    return scale


def mouth_opening(points68: np.ndarray, contour: str = "inner") -> np.ndarray:
    """(T, 68, 2) pixels -> (T,) lip opening divided by the clip's median inter-ocular distance.

    ``contour``: ``"inner"`` (default), ``"outer"`` or ``"both"`` (see the module docstring). NaN rows stay NaN.
    """
    pts = _check_points(points68, "mouth_opening")
    if contour == "both":
        return 0.5 * (mouth_opening(pts, "inner") + mouth_opening(pts, "outer"))
    if contour not in _CONTOURS:
        raise ValueError(f"contour must be 'inner', 'outer' or 'both', got {contour!r}")
    upper, lower = _CONTOURS[contour]
    gap = np.linalg.norm(pts[:, list(upper)] - pts[:, list(lower)], axis=-1).mean(1)
    return gap / _clip_scale(pts, "mouth_opening")


def speech_envelope(wave: np.ndarray, n_frames: int, fps: float, sample_rate: int = 16000, *,
                    band_hz: tuple[float, float] = (1000.0, 4000.0), window_frames: float = 2.0,
                    floor_db: float = 50.0) -> np.ndarray:
    """(S,) mono samples -> (n_frames,) log band energy in dB per video frame (see the module docstring)."""
    x = np.asarray(wave, np.float64)
    if x.ndim != 1:
        raise ValueError(f"speech_envelope: need a mono wave (S,), got {x.shape}")
    if n_frames < 1 or fps <= 0:
        raise ValueError(f"speech_envelope: need n_frames >= 1 and fps > 0, got {n_frames}, {fps}")
    if not np.isfinite(x).all():
        raise ValueError("speech_envelope: the wave contains NaN or infinite samples")
    hop = sample_rate / fps
    centres = (np.arange(n_frames) + 0.5) * hop
    if x.size == 0:
        return np.full(n_frames, -120.0)
    sos = signal.butter(4, [band_hz[0], min(band_hz[1], 0.45 * sample_rate)], "bandpass", fs=sample_rate,
                        output="sos")
    if x.size > 3 * (2 * len(sos) + 1):  # sosfiltfilt's edge padding needs that many samples
        x = signal.sosfiltfilt(sos, x)
    length = max(3, round(window_frames * hop))
    win = np.hanning(length + 2)[1:-1]
    energy = signal.oaconvolve(x * x, win / win.sum(), mode="same")
    inside = centres < x.size
    idx = np.minimum(centres.astype(np.int64), x.size - 1)
    db = 10.0 * np.log10(np.maximum(energy[idx], 0.0) + 1e-12)
    ref = float(np.percentile(db[inside], 99)) if inside.any() else -120.0
    return np.where(inside, np.maximum(db, ref - floor_db), ref - floor_db)


def _highpass(x: np.ndarray, width: int) -> np.ndarray:
    """x (T,) minus its centred moving average over ``width`` frames (NaN-aware, edges use what exists)."""
    width = min(width, x.size - 1 + x.size % 2)  # odd and no longer than x
    if width <= 1:
        return x
    ok = np.isfinite(x)
    kernel = np.ones(width)
    sums = np.convolve(np.where(ok, x, 0.0), kernel, mode="same")
    counts = np.convolve(ok.astype(np.float64), kernel, mode="same")
    return np.where(ok, x - sums / np.maximum(counts, 1.0), np.nan)


def _pearson(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3:
        return 0.0, n
    a = a[ok] - a[ok].mean()
    b = b[ok] - b[ok].mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return (float((a * b).sum()) / den if den > 1e-12 else 0.0), n


def envelope_sync(opening: np.ndarray, envelope: np.ndarray, fps: float, max_offset: int = 15, *,
                  highpass_s: float = 0.36) -> dict:
    """Weight-free sync score of a clip: opening (T,) from :func:`mouth_opening`, envelope (T,) from
    :func:`speech_envelope` (compared over the common length).

    Returns ``{"offset", "peak", "median", "peak_minus_median", "offsets", "correlations", "frames_used",
    "frames_without_face"}``; offset k > 0 means the sound is late by k frames. NaN frames (no face) are excluded;
    ``frames_used`` counts the frame pairs that entered the correlation at the best offset.
    """
    o = np.asarray(opening, np.float64).reshape(-1)
    e = np.asarray(envelope, np.float64).reshape(-1)
    T = min(o.size, e.size)
    o, e = o[:T], e[:T]
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0, got {max_offset}")
    if int(np.isfinite(o).sum()) < 2 * max_offset + 3:
        raise ValueError(f"envelope_sync: only {int(np.isfinite(o).sum())} of {T} frames have a face; need at "
                         f"least {2 * max_offset + 3} for offsets of +-{max_offset} frames")
    width = max(1, round(highpass_s * fps))
    width += 1 - width % 2  # odd, so the average is centred
    o, e = _highpass(o, width), _highpass(e, width)
    offsets = list(range(-max_offset, max_offset + 1))
    corr, used = [], []
    for k in offsets:
        a, b = (o[: T - k], e[k:]) if k >= 0 else (o[-k:], e[: T + k])
        r, n = _pearson(a, b)
        corr.append(r)
        used.append(n)
    c = np.asarray(corr)
    best = max(range(len(c)), key=lambda i: (c[i], -abs(offsets[i])))  # ties: the smaller shift
    median = float(np.median(c))
    return {"offset": offsets[best], "peak": float(c[best]), "median": median,
            "peak_minus_median": float(c[best]) - median, "offsets": offsets, "correlations": c.tolist(),
            "frames_used": used[best], "frames_without_face": int((~np.isfinite(np.asarray(opening)[:T])).sum())}


def landmark_distance(points68: np.ndarray, reference68: np.ndarray) -> float:
    """LMD of (T, 68, 2) landmarks against the reference's (T, 68, 2) (module docstring); frames where either has
    no face are excluded. Raises ValueError for different lengths or no common frame."""
    pts = _check_points(points68, "landmark_distance")
    ref = _check_points(reference68, "landmark_distance reference")
    if len(pts) != len(ref):
        raise ValueError(f"landmark_distance: the video has {len(pts)} frames, the reference {len(ref)}; "
                         "align them (same fps and span) first")
    scale = _clip_scale(ref, "landmark_distance reference")
    mouth = list(MOUTH)
    ok = np.isfinite(pts[:, mouth]).all(axis=(1, 2)) & np.isfinite(ref[:, mouth]).all(axis=(1, 2))
    if not ok.any():
        raise ValueError("landmark_distance: no frame has a face in both videos")
    a, b = pts[ok][:, mouth], ref[ok][:, mouth]
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return float(np.linalg.norm(a - b, axis=-1).mean() / scale)
