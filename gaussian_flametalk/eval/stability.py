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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..tracking.landmarks import inter_ocular

NOSE = tuple(range(27, 36))


@dataclass
class StabilityTerms:
    """Raw terms of one clip. ``motion`` is m_t (T-1,); ``trajectories`` the normalised nose keypoints (T, 9, 2)."""

    mean_motion: float
    motion_std: float
    high_freq_share: float
    max_motion: float
    fps: float
    cutoff_hz: float
    motion: np.ndarray
    trajectories: np.ndarray

    def summary(self) -> dict[str, float]:
        d = asdict(self)
        return {k: v for k, v in d.items() if not isinstance(v, np.ndarray)}


def detrend(x: np.ndarray) -> np.ndarray:
    """Remove the least-squares line along axis 0. x (T, ...) -> (T, ...)."""
    t = np.arange(len(x), dtype=np.float64)
    a = np.stack([t, np.ones_like(t)], 1)
    flat = x.reshape(len(x), -1)
    coef, *_ = np.linalg.lstsq(a, flat, rcond=None)
    return (flat - a @ coef).reshape(x.shape)


def high_frequency_share(trajectories: np.ndarray, fps: float, cutoff_hz: float = 5.0) -> float:
    """Share of the power above ``cutoff_hz`` of detrended trajectories (T, ...), averaged over the other axes."""
    x = detrend(np.asarray(trajectories, np.float64)).reshape(len(trajectories), -1)
    power = np.abs(np.fft.rfft(x, axis=0)) ** 2  # (F, N)
    freqs = np.fft.rfftfreq(len(x), d=1.0 / fps)
    total = power.sum(0)
    share = np.where(total > 0, power[freqs > cutoff_hz].sum(0) / np.where(total > 0, total, 1.0), 0.0)
    return float(share.mean())


def stability_terms(points68: np.ndarray, fps: float, cutoff_hz: float = 5.0) -> StabilityTerms:
    """Terms of a clip from its per-frame iBUG-68 points (T, 68, 2) in pixels (needs T >= 3)."""
    pts = np.asarray(points68, np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (68, 2) or len(pts) < 3:
        raise ValueError(f"need (T >= 3, 68, 2) landmarks, got {pts.shape}")
    if not np.isfinite(pts[:, [*NOSE, 36, 45]]).all():
        raise ValueError("nose or eye landmarks contain NaN/inf: interpolate missing frames first")
    scale = float(np.median(inter_ocular(pts)))
    traj = pts[:, list(NOSE)] / scale
    motion = np.linalg.norm(np.diff(traj, axis=0), axis=-1).mean(1)
    return StabilityTerms(
        mean_motion=float(motion.mean()), motion_std=float(motion.std()),
        high_freq_share=high_frequency_share(traj, fps, cutoff_hz), max_motion=float(motion.max()),
        fps=float(fps), cutoff_hz=float(cutoff_hz), motion=motion, trajectories=traj,
    )


def stability_score(terms: StabilityTerms, reference: StabilityTerms | None = None) -> float:
    """The score (lower is steadier; 1.0 is as steady as the reference when one is given)."""
    if reference is not None:
        ratios = [terms.mean_motion / reference.mean_motion, terms.motion_std / reference.motion_std,
                  terms.high_freq_share / reference.high_freq_share]
        return float(np.mean(ratios))
    peak = max(terms.max_motion, 1e-12)
    return float(np.mean([terms.mean_motion / peak, terms.motion_std / peak, terms.high_freq_share]))
