import numpy as np
import pytest

from gaussian_flametalk.eval.stability import high_frequency_share, stability_score, stability_terms


def _face_track(n: int, fps: float = 25.0, jitter_px: float = 0.0, seed: int = 0) -> np.ndarray:
    """A rigid 68-point layout (inter-ocular 60 px) drifting slowly (0.3 Hz sway), plus white jitter."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(-60, 60, (68, 2))
    base[36:42] = [-30, 0] + rng.normal(0, 2, (6, 2))
    base[42:48] = [30, 0] + rng.normal(0, 2, (6, 2))
    t = np.arange(n) / fps
    sway = np.stack([20 * np.sin(2 * np.pi * 0.3 * t), 5 * np.cos(2 * np.pi * 0.2 * t)], 1)
    return base[None] + sway[:, None] + 256 + rng.normal(0, 1, (n, 68, 2)) * jitter_px


def test_high_frequency_share_of_pure_tones():
    fps, t = 25.0, np.arange(250) / 25.0
    slow = np.sin(2 * np.pi * 1.0 * t)[:, None]
    fast = np.sin(2 * np.pi * 8.0 * t)[:, None]
    assert high_frequency_share(slow, fps) < 0.01
    assert high_frequency_share(fast, fps) > 0.99
    assert high_frequency_share(slow + fast, fps) == pytest.approx(0.5, abs=0.02)


def test_planted_jitter_raises_every_term_and_the_score():
    clean = stability_terms(_face_track(250), 25.0)
    shaky = stability_terms(_face_track(250, jitter_px=1.5), 25.0)
    assert shaky.mean_motion > clean.mean_motion
    assert shaky.motion_std > clean.motion_std
    assert shaky.high_freq_share > 5 * clean.high_freq_share
    assert stability_score(clean, reference=clean) == pytest.approx(1.0)
    assert stability_score(shaky, reference=clean) > 2.0
    assert 0.0 <= stability_score(shaky) <= 1.0 and 0.0 <= stability_score(clean) <= 1.0  # ratios to the peak, and a share


def test_normalised_by_inter_ocular_distance():
    a = stability_terms(_face_track(100, jitter_px=1.0), 25.0)
    b = stability_terms(_face_track(100, jitter_px=1.0) * 3.0, 25.0)  # same clip, 3x the resolution
    assert b.mean_motion == pytest.approx(a.mean_motion) and b.high_freq_share == pytest.approx(a.high_freq_share)
