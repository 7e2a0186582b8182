"""Lip-sync scores: the weight-free envelope sync, LMD, and the SyncNet scoring (its weights are not here)."""

import itertools

import numpy as np
import pytest
import torch

from gaussian_flametalk.eval.lipsync import envelope_sync, landmark_distance, mouth_opening, speech_envelope
from gaussian_flametalk.eval.syncnet import (
    SyncNet,
    SyncNetError,
    face_crops,
    load_syncnet,
    mfcc_features,
    sync_offset_scores,
    syncnet_scores,
)

FPS, SR, HOP = 25.0, 16000, 640


def _face(n: int, seed: int = 0) -> np.ndarray:
    """(n, 68, 2) plausible face points in pixels (eyes 60 px apart) whose inner and outer lips open and close."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(-50, 50, (68, 2)) + 200
    base[36], base[45] = [170, 180], [230, 180]
    pts = np.repeat(base[None], n, 0) + rng.normal(0, 0.2, (n, 68, 2))
    opening = 8 + 6 * np.sin(np.arange(n) / 3.0)
    pts[:, [61, 62, 63, 49, 50, 51, 52, 53], 0] = pts[:, [67, 66, 65, 59, 58, 57, 56, 55], 0] = \
        [190, 200, 210, 180, 190, 200, 210, 220]
    pts[:, [61, 62, 63, 49, 50, 51, 52, 53], 1] = 240 - opening[:, None] / 2
    pts[:, [67, 66, 65, 59, 58, 57, 56, 55], 1] = 240 + opening[:, None] / 2
    return pts


def _delay(wave: np.ndarray, frames: int) -> np.ndarray:
    """The same length of sound, late by ``frames`` video frames (early when negative)."""
    k = frames * HOP
    if k >= 0:
        return np.concatenate([np.zeros(k, wave.dtype), wave])[: wave.size]
    return np.concatenate([wave[-k:], np.zeros(-k, wave.dtype)])


# ----------------------------------------------------------------------------------------------- offline

def _modulated_speech(opening: np.ndarray, seed: int = 0) -> np.ndarray:
    """Noise in the 1-4 kHz band whose amplitude follows ``opening`` (one value per 25 fps frame)."""
    rng = np.random.default_rng(seed)
    n = opening.size * HOP
    carrier = np.sin(2 * np.pi * 2000 * np.arange(n) / SR) + 0.5 * rng.normal(size=n)
    amp = np.interp(np.arange(n), (np.arange(opening.size) + 0.5) * HOP, opening)
    return (0.1 * amp * carrier).astype(np.float32)


def test_envelope_sync_sign_convention_offline():
    rng = np.random.default_rng(1)
    opening = np.convolve(rng.random(400), np.hanning(5), "same")  # a smooth random mouth track, 16 s
    wave = _modulated_speech(opening)
    for k in (-4, 0, 3, 7):
        res = envelope_sync(opening, speech_envelope(_delay(wave, k), opening.size, FPS), FPS)
        assert res["offset"] == k, (k, res["offset"])
        assert res["peak"] > 0.5 and res["peak_minus_median"] > 0.4
        assert res["offsets"] == list(range(-15, 16)) and len(res["correlations"]) == 31


def test_envelope_sync_excludes_frames_without_face():
    rng = np.random.default_rng(2)
    opening = np.convolve(rng.random(300), np.hanning(5), "same")
    env = speech_envelope(_delay(_modulated_speech(opening), 2), opening.size, FPS)
    holed = opening.copy()
    holed[100:130] = np.nan
    res = envelope_sync(holed, env, FPS)
    assert res["offset"] == 2 and res["frames_without_face"] == 30
    assert res["frames_used"] == 300 - 2 - 30
    with pytest.raises(ValueError, match="have a face"):
        envelope_sync(np.full(300, np.nan), env, FPS)


def test_silence_and_noise_give_no_sync():
    rng = np.random.default_rng(3)
    opening = np.convolve(rng.random(300), np.hanning(5), "same")
    silent = envelope_sync(opening, speech_envelope(np.zeros(300 * HOP, np.float32), 300, FPS), FPS)
    assert silent["peak_minus_median"] == 0.0 and silent["peak"] == 0.0
    noise = envelope_sync(opening, speech_envelope(rng.normal(0, 0.1, 300 * HOP), 300, FPS), FPS)
    assert noise["peak_minus_median"] < 0.2
    short = speech_envelope(np.zeros(10, np.float32), 5, FPS)  # shorter than a frame: no crash
    assert short.shape == (5,) and np.isfinite(short).all()


def test_mouth_opening_is_scale_invariant_and_keeps_nan():
    pts = _face(50)
    pts[7] = np.nan
    a = mouth_opening(pts)
    b = mouth_opening(pts * 2.5 + [40.0, -13.0])  # the same clip at 2.5x the resolution, shifted
    np.testing.assert_allclose(a, b, rtol=1e-9)
    assert np.isnan(a[7]) and np.isfinite(np.delete(a, 7)).all()
    np.testing.assert_allclose(np.delete(a, 7), (8 + 6 * np.sin(np.delete(np.arange(50), 7) / 3.0)) / 60, atol=0.02)
    assert mouth_opening(pts, "outer").shape == (50,) and mouth_opening(pts, "both").shape == (50,)
    with pytest.raises(ValueError):
        mouth_opening(pts[:, :60])


def test_landmark_distance():
    ref = _face(80)
    assert landmark_distance(ref, ref) == 0.0
    assert landmark_distance(ref + [15.0, -7.0], ref) == pytest.approx(0.0, abs=1e-9)  # head translation: no cost
    scores = []
    for d in (0.5, 1.0, 2.0, 4.0):
        moved = ref.copy()
        moved[:, 55:60, 1] += d  # lower outer lip pushed down by d px
        scores.append(landmark_distance(moved, ref))
    assert all(b > a > 0 for a, b in itertools.pairwise(scores))
    # the centroid shifts by 5d/20, the 5 moved points are off by 3d/4, the 15 others by d/4 -> mean 3d/8
    assert scores[-1] == pytest.approx(4.0 * 3 / 8 / 60, rel=0.01)
    holed = ref.copy()
    holed[:10] = np.nan
    assert landmark_distance(holed, ref) == 0.0
    with pytest.raises(ValueError, match="frames"):
        landmark_distance(ref[:70], ref)


# ----------------------------------------------------------------------------------------------- SyncNet

def _brute_force_dists(v: torch.Tensor, a: torch.Tensor, m: int) -> list[float]:
    """Mean over windows of |v_i - a_{i+k}| for k = -m..m, a zero vector past the ends (the public definition)."""
    out = []
    for k in range(-m, m + 1):
        d = [torch.linalg.vector_norm(v[i] - (a[i + k] if 0 <= i + k < len(a) else 0) + 1e-6).item()
             for i in range(len(v))]
        out.append(float(np.mean(d)))
    return out


def test_sync_offset_scores_recovers_planted_offset():
    g = torch.Generator().manual_seed(0)
    n, dim = 80, 64
    video = torch.randn(n + 30, dim, generator=g)
    for k in (-6, 0, 4, 11):
        # sound late by k windows: the audio of video window i appears at audio window i + k
        audio = video[15 - k: 15 - k + n] + 0.3 * torch.randn(n, dim, generator=g)
        res = sync_offset_scores(video[15: 15 + n], audio)
        assert res["offset"] == k
        assert res["confidence"] > 3.0 and res["min_dist"] == pytest.approx(min(res["dists"]))
        np.testing.assert_allclose(res["dists"], _brute_force_dists(video[15: 15 + n], audio, 15), rtol=1e-5)
    unrelated = sync_offset_scores(torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g))
    assert unrelated["confidence"] < 0.5
    with pytest.raises(SyncNetError):
        sync_offset_scores(torch.zeros(5, 8), torch.zeros(6, 8))


def test_syncnet_module_shapes_and_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    net = SyncNet()
    with torch.no_grad():  # give the batch norms non-trivial statistics so the round trip checks them too
        for mod in net.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    net.eval()
    crops, mfcc = torch.rand(2, 3, 5, 224, 224) * 255, torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        v, a = net(crops, mfcc)
    assert v.shape == (2, 1024) and a.shape == (2, 1024)
    path = tmp_path / "syncnet_v2.model"
    torch.save(net.state_dict(), path)
    loaded = load_syncnet(path)
    assert not loaded.training
    with torch.no_grad():
        v2, a2 = loaded(crops, mfcc)
    torch.testing.assert_close(v2, v)
    torch.testing.assert_close(a2, a)
    # files written before batch norms counted their batches (as old releases) load too
    old = {k: t for k, t in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.model")
    load_syncnet(tmp_path / "old.model")


def test_load_syncnet_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.model.*syncnet_v2\.model"):
        load_syncnet(tmp_path / "nowhere.model")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(SyncNetError, match="garbage.model"):
        load_syncnet(garbage)
    wrong = tmp_path / "wrong.model"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(SyncNetError, match="wrong.model.*missing"):
        load_syncnet(wrong)


def test_face_crops_follow_the_public_geometry():
    # pixel (x, y) holds R = x, G = y: a crop tells where it was cut
    h = w = 250
    yy, xx = np.mgrid[0:h, 0:w]
    frame = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
    pts = np.zeros((15, 68, 2))
    pts[:, :, 0] = np.linspace(100, 160, 68)  # box x 100..160
    pts[:, :, 1] = np.linspace(110, 160, 68)  # box y 110..160, raised by 0.2 * 50 -> 100..160: a 60 px square
    crops, missing = face_crops([frame] * 15, pts)
    assert crops.shape == (15, 224, 224, 3) and missing == 0
    half = 30.0  # crop: x 130 -+ 1.4 * 30 = 88..172, y 130 - 30 = 100 .. 130 + 1.8 * 30 = 184
    top_left, bottom_right = crops[7, 0, 0], crops[7, -1, -1]
    assert abs(int(top_left[0]) - (130 - 1.4 * half)) <= 1 and abs(int(top_left[1]) - (130 - half)) <= 1
    assert abs(int(bottom_right[0]) - (130 + 1.4 * half)) <= 1 and abs(int(bottom_right[1]) - (130 + 1.8 * half)) <= 1
    # a face near the border: the part outside the frame is the public pipeline's grey (110)
    crops, _ = face_crops([frame] * 15, pts - 125)  # crop x -37..47, y -25..59
    assert (crops[7, :60, :60] == 110).all() and (crops[7, -60:, -60:] != 110).any()


def test_syncnet_scores_runs_end_to_end():
    torch.manual_seed(0)
    net = SyncNet().eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (12, 120, 120, 3), dtype=np.uint8)
    pts = _face(12)[:, :, :] * 0.4  # a face of about 40 px in the 120 px frames
    wave = rng.normal(0, 0.1, 12 * HOP).astype(np.float32)
    res = syncnet_scores(iter(frames), pts, wave, FPS, net, progress=False, max_offset=3)
    assert res["windows"] == 12 - 5 and len(res["dists"]) == 7
    assert res["lse_d"] == res["min_dist"] > 0 and res["lse_c"] == res["confidence"] >= 0
    assert -3 <= res["offset"] <= 3
    assert "100-frame minimum" in res["warning"]  # a 12-frame clip: the public pipeline would not score it
    assert mfcc_features(wave).shape == (13, 47)  # 25 ms windows every 10 ms over 0.48 s: 1 + ceil((7680 - 400) / 160)
    with pytest.raises(SyncNetError, match="25 fps"):
        syncnet_scores(frames, pts, wave, 30.0, net)
    with pytest.raises(SyncNetError, match="too short"):
        syncnet_scores(frames[:5], pts[:5], wave, FPS, net, progress=False)


# ----------------------------------------------------------------------------------------------- real clip

@pytest.fixture(scope="module")
def anchor(shared_dir):
    """First 12 s of the news anchor clip: iBUG-68 points at 25 fps and its own sound (16 kHz)."""
    from gaussian_flametalk.io.audio import load_audio
    from gaussian_flametalk.tracking.landmarks import MediapipeDetector, detect_clip
    from gaussian_flametalk.io.media import iter_frames

    path = shared_dir / "data" / "videos" / "v1_german_news_anchor_20s.mp4"
    with MediapipeDetector(max_num_faces=1) as det:
        clip = detect_clip(iter_frames(path, fps=FPS, duration=12.0), det, progress=False)
    wave = load_audio(path)[: len(clip) * HOP]
    return clip.points68, wave


def _sync(points, wave):
    opening = mouth_opening(points)
    return envelope_sync(opening, speech_envelope(wave, len(opening), FPS), FPS)


def test_real_clip_reports_its_audio_delay(anchor):
    points, wave = anchor
    assert len(points) == 300 and np.isfinite(points).all()
    own = _sync(points, wave)
    assert abs(own["offset"]) <= 1
    late = _sync(points, _delay(wave, 5))
    assert abs(late["offset"] - 5) <= 1
    early = _sync(points, _delay(wave, -4))
    assert abs(early["offset"] + 4) <= 1
    assert own["peak_minus_median"] > 0.25


def test_real_clip_own_sound_beats_other_speakers_and_noise(anchor, shared_dir):
    from gaussian_flametalk.io.audio import load_audio

    points, wave = anchor
    own = _sync(points, wave)["peak_minus_median"]
    others = sorted((shared_dir / "data" / "speech").glob("*"))
    assert others
    for path in others:
        other = _sync(points, load_audio(path)[: wave.size])["peak_minus_median"]
        assert other < own - 0.05, (path.name, other, own)
    noise = _sync(points, np.random.default_rng(0).normal(0, 0.05, wave.size).astype(np.float32))
    assert noise["peak_minus_median"] < own - 0.1
    assert _sync(points, np.zeros_like(wave))["peak_minus_median"] == 0.0


def test_syncnet_face_track_is_median_filtered_even_when_short():
    from scipy.signal import medfilt

    from gaussian_flametalk.eval.syncnet import _box_track

    pts = _face(9).astype(np.float64)
    pts[4] += 30.0  # one jumpy frame in a 9-frame clip
    cx, cy, half, missing = _box_track(pts, 0.2)
    lo, hi = pts.min(1), pts.max(1)
    raw_cx = 0.5 * (lo[:, 0] + hi[:, 0])
    assert missing == 0 and np.allclose(cx, medfilt(raw_cx, 13))
    assert abs(cx[4] - raw_cx[4]) > 10  # the jump is filtered out
