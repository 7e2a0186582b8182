import itertools

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


def test_flagged_frames_are_excluded_not_interpolated():
    pts = _face_track(200, jitter_px=0.5, seed=3)
    whole = stability_terms(pts, 25.0)
    gap = np.zeros(200, bool)
    gap[95:100] = True  # 5 frames without a face in the middle
    nan = pts.copy()
    nan[gap] = np.nan
    garbage = pts.copy()
    garbage[gap] += 40.0  # a wrong detection there must not matter either once flagged
    a = stability_terms(nan, 25.0, valid=~gap)
    b = stability_terms(garbage, 25.0, valid=~gap)
    assert a.summary() == b.summary()
    assert a.n_excluded == 5 and a.runs() == [(0, 95), (100, 200)]
    assert np.isnan(a.motion[94:100]).all() and np.isfinite(a.motion[:94]).all()
    assert a.mean_motion == pytest.approx(whole.mean_motion, rel=0.05)  # no spurious jump across the gap
    # H_f: the runs' shares (each detrended on its own) weighted by their lengths
    runs = [high_frequency_share(whole.trajectories[i:j], 25.0) for i, j in ((0, 95), (100, 200))]
    assert a.high_freq_share == pytest.approx((95 * runs[0] + 100 * runs[1]) / 195, rel=1e-6)
    short = ~gap
    short[:5] = False  # frames 5-94 and a 4-frame run would be fine; a run shorter than min_run is excluded
    short[100:196] = False
    c = stability_terms(nan, 25.0, valid=short)
    assert c.runs() == [(5, 95)] and c.n_excluded == 110
    with pytest.raises(ValueError, match="NaN"):
        stability_terms(nan, 25.0)
    with pytest.raises(ValueError, match="no run of 10 consecutive frames"):
        stability_terms(pts[:8], 25.0)


# ------------------------------------------------------------------------------------ re-detected planted jitter

def _shift(frames: np.ndarray, amplitude: float, seed: int) -> np.ndarray:
    """Each frame moved by its own random sub-pixel shift, uniform in [-amplitude, amplitude] px per axis."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = frames.shape[1:3]
    out = []
    for f in frames:
        dx, dy = rng.uniform(-amplitude, amplitude, 2)
        out.append(cv2.warpAffine(f, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE))
    return np.stack(out)


def _temporal_smooth(frames: np.ndarray, taps: int = 5) -> np.ndarray:
    """Each frame replaced by a Hann-weighted mean of the ``taps`` frames around it (edges repeated)."""
    w = np.hanning(taps + 2)[1:-1]
    w /= w.sum()
    T = len(frames)
    out = np.zeros(frames.shape, np.float32)
    for i, wi in enumerate(w):
        out += wi * frames[np.clip(np.arange(T) + i - taps // 2, 0, T - 1)]
    return np.round(out).astype(np.uint8)


def astronaut_clip(n: int = 80, jitter: float = 0.0, size: int = 256, fps: float = 25.0, seed: int = 0
                   ) -> np.ndarray:
    """skimage's astronaut photo, her face cropped (a 200 px window scaled to ``size``) and moved smoothly (0.4 and
    0.25 Hz sways of 10 and 6 px), with a fixed 0.3 px 'natural' per-frame jitter plus ``jitter`` px of planted
    jitter (uniform per axis, in output pixels)."""
    import cv2

    skdata = pytest.importorskip("skimage.data")
    img = skdata.astronaut()
    t = np.arange(n) / fps
    cx, cy = 228 + 10 * np.sin(2 * np.pi * 0.4 * t), 133 + 6 * np.sin(2 * np.pi * 0.25 * t + 1)
    natural = np.random.default_rng(1).uniform(-0.3, 0.3, (n, 2))
    planted = np.random.default_rng(seed).uniform(-jitter, jitter, (n, 2))
    s = size / 200
    frames = []
    for i in range(n):
        dx, dy = natural[i] + planted[i]
        m = np.float32([[s, 0, size / 2 - s * cx[i] + dx], [0, s, size / 2 - s * cy[i] + dy]])
        frames.append(cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


@pytest.fixture(scope="module")
def detector():
    from gaussian_flametalk.tracking.landmarks import MediapipeDetector

    with MediapipeDetector(max_num_faces=1) as det:
        yield det


def _terms(frames: np.ndarray, detector):
    from gaussian_flametalk.tracking.landmarks import detect_clip

    clip = detect_clip(frames, detector, progress=False)
    assert clip.found.all()
    return stability_terms(clip.points68, 25.0)


def _check_jitter_and_smoothing(real: np.ndarray, jittered: list[np.ndarray], smoothed: np.ndarray, detector):
    ref = _terms(real, detector)
    assert stability_score(_terms(real, detector), ref) == pytest.approx(1.0, abs=1e-9)
    scores = [stability_score(_terms(f, detector), ref) for f in jittered]
    assert scores[0] > 1.1 and all(a < b for a, b in itertools.pairwise(scores)), scores
    assert stability_score(_terms(smoothed, detector), ref) < 0.95
    return scores


def test_redetected_jitter_offline_astronaut(detector):
    """Offline: a clip built from a photo; jitter of 0.5, 1 and 2 px planted into the frames and re-detected."""
    real = astronaut_clip()
    scores = _check_jitter_and_smoothing(real, [astronaut_clip(jitter=a, seed=2) for a in (0.5, 1.0, 2.0)],
                                         _temporal_smooth(real), detector)
    assert scores[-1] > 2.0


def test_redetected_jitter_real_clip(shared_dir, detector):
    """The first 80 frames of v1 at 256 px against themselves, shifted by 0.5, 1 and 2 px jitter, and smoothed."""
    from gaussian_flametalk.io.media import iter_frames

    video = shared_dir / "data" / "videos" / "v1_german_news_anchor_20s.mp4"
    real = np.stack(list(iter_frames(video, fps=25.0, size=256, duration=3.2)))
    assert len(real) == 80
    scores = _check_jitter_and_smoothing(real, [_shift(real, a, seed=2) for a in (0.5, 1.0, 2.0)],
                                         _temporal_smooth(real), detector)
    assert scores[-1] > 5.0


@pytest.mark.parametrize("n", [100, 101])
def test_high_frequency_share_is_a_true_power_share(n):
    """A 1 Hz sine plus a frame alternation of the same amplitude: the alternation holds 1 / (1 + 1/2) = 2/3 of the
    power (the one-sided |rfft|^2 sum without doubling the interior bins gave 0.80)."""
    t = np.arange(n) / 25.0
    sine = np.sin(2 * np.pi * 1.0 * t)
    alternation = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    x = (sine + alternation)[:, None]
    share = high_frequency_share(x, 25.0)
    expected = np.var(alternation - np.polyval(np.polyfit(t, alternation, 1), t)) / np.var(
        x[:, 0] - np.polyval(np.polyfit(t, x[:, 0], 1), t))
    assert share == pytest.approx(expected, abs=0.01)
    if n == 100:
        assert share == pytest.approx(2 / 3, abs=0.01)
