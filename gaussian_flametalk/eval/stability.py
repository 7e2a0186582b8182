"""The FFT-based nose-keypoint stability metric (GaussianFlameTalk, section 3.3), with the normalisation fixed.

Nose keypoints are iBUG points 27-35, in pixels, per frame; their coordinates are divided by the clip's
median inter-ocular distance (between the outer eye corners, iBUG 36 and 45, the 300-W convention the tracking
figures use too), so the terms do not depend on resolution or on how large the face is in the frame.

    m_t = mean over keypoints of |p_{t+1} - p_t|            (t = 0 .. T-2)
    M_d = mean_t m_t        V_m = std_t m_t
    H_f = share of the power of the linearly detrended keypoint trajectories at frequencies above f_c
          (default 5 Hz), averaged over keypoints and both axes

With a reference (the real footage): score = mean of M_d/M_d_ref, V_m/V_m_ref, H_f/H_f_ref (the reference
itself scores 1.0; wobble raises it). Without one: score = mean of M_d/max_t m_t, V_m/max_t m_t and H_f.

Frames without a face (``valid`` False) are excluded, never interpolated: the clip splits into runs of consecutive
valid frames; runs shorter than ``min_run`` frames (default: two periods of the cutoff, ``ceil(2 fps / f_c)``, so a
run resolves frequencies below and above it) are excluded too. m_t is taken over the pairs inside the runs; H_f is
the mean of the runs' shares weighted by their lengths (each run detrended on its own); the inter-ocular median is
over the used frames. With every frame valid this is exactly the definition above.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..headmodel import inter_ocular

NOSE = tuple(range(27, 36))


@dataclass
class StabilityTerms:
    """Raw terms of one clip of T frames.

    ``motion`` is m_t (T-1,), NaN for pairs not inside a used run; ``trajectories`` the normalised nose keypoints
    (T, 9, 2), NaN on excluded frames; ``used`` (T,) bool marks the frames the terms come from.
    """

    mean_motion: float
    motion_std: float
    high_freq_share: float
    max_motion: float
    fps: float
    cutoff_hz: float
    n_frames: int
    n_excluded: int
    motion: np.ndarray
    trajectories: np.ndarray
    used: np.ndarray

    def summary(self) -> dict[str, float]:
        d = asdict(self)
        return {k: v for k, v in d.items() if not isinstance(v, np.ndarray)}

    def runs(self) -> list[tuple[int, int]]:
        """[start, end) frame ranges of the used runs."""
        return valid_runs(self.used, 1)


def detrend(x: np.ndarray) -> np.ndarray:
    """Remove the least-squares line along axis 0. x (T, ...) -> (T, ...)."""
    t = np.arange(len(x), dtype=np.float64)
    a = np.stack([t, np.ones_like(t)], 1)
    flat = x.reshape(len(x), -1)
    coef, *_ = np.linalg.lstsq(a, flat, rcond=None)
    return (flat - a @ coef).reshape(x.shape)


def power_spectrum(trajectories: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided power of detrended trajectories (T, ...) per frequency: (freqs (F,) in Hz, power (F, N)),
    N = prod(...). The interior bins count twice (their negative-frequency twins), DC and the Nyquist bin (even T)
    once, so the bins sum to the signal's total power (Parseval) and a share of them is a true power share: a sine
    plus a frame-to-frame alternation of the same amplitude has 2/3 of its power in the alternation."""
    x = detrend(np.asarray(trajectories, np.float64)).reshape(len(trajectories), -1)
    power = np.abs(np.fft.rfft(x, axis=0)) ** 2
    power[1: len(x) // 2 + (len(x) % 2)] *= 2.0  # interior bins: k = 1 .. ceil(T/2) - 1
    return np.fft.rfftfreq(len(x), d=1.0 / fps), power


def high_frequency_share(trajectories: np.ndarray, fps: float, cutoff_hz: float = 5.0) -> float:
    """Share of the power above ``cutoff_hz`` of detrended trajectories (T, ...), averaged over the other axes."""
    freqs, power = power_spectrum(trajectories, fps)
    total = power.sum(0)
    share = np.where(total > 0, power[freqs > cutoff_hz].sum(0) / np.where(total > 0, total, 1.0), 0.0)
    return float(share.mean())


def valid_runs(valid: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """[start, end) ranges of consecutive True in ``valid`` (T,) that are at least ``min_len`` long."""
    v = np.concatenate([[False], np.asarray(valid, bool), [False]])
    edges = np.flatnonzero(np.diff(v.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_len]


def default_min_run(fps: float, cutoff_hz: float) -> int:
    """Shortest run of frames used: two periods of the cutoff frequency, at least 3 frames."""
    return max(3, math.ceil(2.0 * fps / cutoff_hz))


def stability_terms(points68: np.ndarray, fps: float, cutoff_hz: float = 5.0, valid: np.ndarray | None = None,
                    min_run: int | None = None) -> StabilityTerms:
    """Terms of a clip from its per-frame iBUG-68 points (T, 68, 2) in pixels.

    ``valid`` (T,) bool flags the frames to use (e.g. ``ClipLandmarks.found``; their points may be NaN elsewhere);
    None: every frame, which must then all be finite. ``min_run``: see the module docstring.
    """
    pts = np.asarray(points68, np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
        raise ValueError(f"need (T, 68, 2) landmarks, got {pts.shape}")
    T = len(pts)
    min_run = default_min_run(fps, cutoff_hz) if min_run is None else max(3, int(min_run))
    finite = np.isfinite(pts[:, [*NOSE, 36, 45]]).all(axis=(1, 2))
    if valid is None:
        if not finite.all():
            raise ValueError("nose or eye landmarks contain NaN/inf: pass valid= to exclude those frames")
        valid = np.ones(T, bool)
    valid = np.asarray(valid, bool)
    if valid.shape != (T,):
        raise ValueError(f"valid must be ({T},), got {valid.shape}")
    if not finite[valid].all():
        raise ValueError(f"frames {np.flatnonzero(valid & ~finite)[:10].tolist()} are flagged valid but have "
                         "NaN/inf nose or eye landmarks")
    runs = valid_runs(valid, min_run)
    if not runs:
        raise ValueError(f"no run of {min_run} consecutive frames with a face among {T} frames "
                         f"({int(valid.sum())} with a face): too short to measure stability")
    used = np.zeros(T, bool)
    for a, b in runs:
        used[a:b] = True
    scale = float(np.median(inter_ocular(pts[used])))
    traj = np.where(used[:, None, None], pts[:, list(NOSE)], np.nan) / scale
    motion = np.linalg.norm(np.diff(traj, axis=0), axis=-1).mean(1)  # NaN where a pair leaves a run
    inside = motion[np.isfinite(motion)]
    shares = [high_frequency_share(traj[a:b], fps, cutoff_hz) for a, b in runs]
    lengths = [b - a for a, b in runs]
    return StabilityTerms(
        mean_motion=float(inside.mean()), motion_std=float(inside.std()),
        high_freq_share=float(np.average(shares, weights=lengths)), max_motion=float(inside.max()),
        fps=float(fps), cutoff_hz=float(cutoff_hz), n_frames=T, n_excluded=int(T - used.sum()),
        motion=motion, trajectories=traj, used=used,
    )


def stability_score(terms: StabilityTerms, reference: StabilityTerms | None = None) -> float:
    """The score (lower is steadier; 1.0 is as steady as the reference when one is given)."""
    if reference is not None:
        pairs = [(terms.mean_motion, reference.mean_motion), (terms.motion_std, reference.motion_std),
                 (terms.high_freq_share, reference.high_freq_share)]
        if any(ref <= 0 for _, ref in pairs):
            raise ValueError("the reference has a zero stability term (a still image?): no reference-relative score")
        return float(np.mean([value / ref for value, ref in pairs]))
    peak = max(terms.max_motion, 1e-12)
    return float(np.mean([terms.mean_motion / peak, terms.motion_std / peak, terms.high_freq_share]))
