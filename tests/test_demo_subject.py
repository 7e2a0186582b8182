"""The demo's built-in subject: speech-driven motion, the rendered video, mediapipe on it, tracking it back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gaussian_flametalk.io.audio import SAMPLE_RATE, load_audio
from gaussian_flametalk.headmodel.synthetic import EXPRESSION_NAMES
from gaussian_flametalk.demo_subject import subject as ds
from gaussian_flametalk.headmodel import inter_ocular
from gaussian_flametalk.tracking.landmarks import MediapipeDetector, detect_clip
from gaussian_flametalk.tracking.track import TrackConfig, track
from gaussian_flametalk.io.media import iter_frames, probe_video

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")
FPS = 25.0


def _envelope(wave: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS in dB per video frame (40 ms windows centred on i / fps), computed here independently of the module."""
    hop, win = int(SAMPLE_RATE / FPS), int(0.04 * SAMPLE_RATE)
    padded = np.pad(wave, (win, win))
    starts = np.arange(n_frames) * hop + win - win // 2
    rms = np.array([np.sqrt(np.mean(padded[s : s + win] ** 2)) for s in starts])
    return 20 * np.log10(rms + 1e-5)


def test_motion_follows_a_synthetic_envelope():
    """Without espeak: bursts of noise (syllables) open the jaw in step; blinks come every few seconds; the head moves
    slowly; bright (high-passed) bursts spread the lips, dark (low-passed) ones round them."""
    rng = np.random.default_rng(1)
    n = 10 * SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) * (t > 1.0) * (t < 9.0)
    noise = rng.normal(size=n)
    bright = np.diff(noise, prepend=0.0)  # high-passed
    dark = np.convolve(noise, np.ones(16) / 16, mode="same")  # low-passed
    dark *= bright.std() / dark.std()
    wave = (0.3 * syllables * np.where(t < 5.0, bright, dark)).astype(np.float32)
    T = 250
    params = ds.speech_motion(wave, T, FPS, seed=0)
    jaw = params.jaw[:, 0].numpy()
    env = _envelope(wave, T)
    assert np.corrcoef(jaw, env)[0, 1] > 0.8
    assert jaw[:20].max() < 0.03 and jaw.max() > 0.12  # closed in the leading silence, open on the syllables
    e = {name: params.expression[:, i].numpy() for i, name in enumerate(EXPRESSION_NAMES)}
    first, second = slice(30, 120), slice(130, 220)
    assert e["mouth_stretch"][first].mean() > 3 * e["mouth_stretch"][second].mean()
    assert e["pucker"][second].mean() > 3 * e["pucker"][first].mean()
    blinks = np.flatnonzero(np.diff((e["blink_left"] > 1.5).astype(int)) > 0)
    assert 2 <= len(blinks) <= 5 and np.diff(blinks).min() >= 2.0 * FPS
    rot = params.rotation.numpy()
    assert 0.01 < np.abs(rot).max() < 0.25 and np.abs(np.diff(rot, axis=0)).max() < 0.02  # small and smooth
    assert np.allclose(params.shape.numpy(), params.shape.numpy()[:1])  # one identity


def test_missing_espeak_or_a_foreign_folder_fail_early(monkeypatch, tmp_path):
    monkeypatch.setattr(ds.shutil, "which", lambda name: None)
    with pytest.raises(ds.EspeakMissingError, match="apt-get install espeak-ng"):
        ds.make_demo_subject(ds.DemoSubjectConfig(out=tmp_path / "demo", quick=True, progress=False))
    assert not (tmp_path / "demo").exists() and not (tmp_path / "demo.partial").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a demo subject")
    with pytest.raises(FileExistsError, match="mine"):
        ds.make_demo_subject(ds.DemoSubjectConfig(out=tmp_path / "mine", quick=True, progress=False))
    assert (tmp_path / "mine" / "notes.txt").is_file()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """The quick subject, shortened to its first sentence (about 4 s) to keep the tests fast."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return ds.make_demo_subject(ds.DemoSubjectConfig(out=tmp_path_factory.mktemp("demo") / "demo", quick=True,
                                                     seconds=4.0, progress=False))


@needs_espeak
def test_quick_subject_builds_with_matching_sound(demo):
    T = demo["frames"]
    info = probe_video(demo["video"])
    assert (info.width, info.height, info.fps, info.video_codec, info.audio_codec) == (256, 256, 25.0, "h264", "aac")
    assert info.n_frames == T and 80 <= T <= 130
    sound = load_audio(demo["video"])
    assert abs(len(sound) / SAMPLE_RATE - T / FPS) <= 1 / FPS  # audio and video last as long, to one frame
    speech, drive = load_audio(demo["speech"]), load_audio(demo["drive_speech"])
    assert abs(len(speech) - T * SAMPLE_RATE / FPS) < 1
    assert len(drive) / SAMPLE_RATE > 3.0 and len(drive) != len(speech)
    with np.load(demo["gt_params"]) as z:
        assert z["expression"].shape == (T, 10) and z["jaw"].shape == (T, 3) and z["landmarks2d"].shape == (T, 68, 2)
    meta = json.loads(Path(demo["meta"]).read_text())
    assert meta["sentences"]["drive"] not in meta["sentences"]["train"]
    # a second call with the same settings reuses the folder
    stamp = Path(demo["video"]).stat().st_mtime_ns
    again = ds.make_demo_subject(ds.DemoSubjectConfig(out=demo["dir"], quick=True, seconds=4.0, progress=False))
    assert again["frames"] == T and Path(demo["video"]).stat().st_mtime_ns == stamp


@needs_espeak
def test_mediapipe_finds_the_face_where_the_ground_truth_is(demo):
    """The default detector finds the face in (nearly) every frame, and its 68 points lie near the ground truth.

    Mediapipe's points are not the synthetic head's embedding: measured on this clip, the mean distance is about 4 %
    of the outer-eye-corner distance (contour about 7 %: mediapipe puts the jaw line on the silhouette, the embedding
    a little inside it; eyes, nose and lips about 2 %)."""
    frames = list(iter_frames(demo["video"], fps=FPS))
    with np.load(demo["gt_params"]) as z:
        gt = z["landmarks2d"]
    clip = detect_clip(frames, MediapipeDetector(), progress=False)
    assert clip.found.mean() >= 0.95
    err = np.linalg.norm(clip.points68[clip.found] - gt[clip.found], axis=-1)  # (T', 68) pixels
    iod = float(np.median(inter_ocular(gt)))
    print(f"\nmediapipe: face in {100 * clip.found.mean():.1f} % of {len(frames)} frames; distance to the ground truth "
          f"{err.mean():.2f} px ({100 * err.mean() / iod:.2f} % IOD), inner 51 points {err[:, 17:].mean():.2f} px, "
          f"95th percentile {np.percentile(err, 95):.2f} px")
    assert err.mean() < 0.06 * iod
    assert err[:, 17:].mean() < 0.04 * iod  # brows, nose, eyes, lips
    assert np.percentile(err, 95) < 0.2 * iod


@needs_espeak
def test_jaw_opening_follows_the_videos_sound(demo):
    """The sound track of video.mp4 (decoded back from AAC) drives the jaw in step: correlation peaks at lag 0."""
    with np.load(demo["gt_params"]) as z:
        jaw = z["jaw"][:, 0]
    env = _envelope(load_audio(demo["video"]), len(jaw))
    T = len(jaw)
    # jaw at frame t + lag against the sound at frame t
    corr = {lag: np.corrcoef(jaw[max(lag, 0) : T + min(lag, 0)], env[max(-lag, 0) : T - max(lag, 0)])[0, 1]
            for lag in range(-3, 4)}
    assert corr[0] > 0.8
    assert max(corr, key=corr.get) in (-1, 0, 1)


@needs_espeak
def test_tracking_the_video_beats_the_template(demo, tmp_path):
    """``gft track`` with the synthetic head recovers the ground truth far better than the template at the mean pose."""
    subject = tmp_path / "subject"
    track(TrackConfig(video=demo["video"], out=subject, head_model="synthetic", resolution=256, overlay=False, progress=False,
                      rigid_iters=10, full_iters=4, smooth_iters=15))
    err = ds.tracking_error(subject, demo["dir"])
    print(f"\ntracking error {err['error_px']:.2f} px ({100 * err['error_iod']:.2f} % IOD); template "
          f"{err['template_error_px']:.2f} px ({100 * err['template_error_iod']:.2f} % IOD); {err['frames']} frames")
    assert err["frames"] == demo["frames"]
    assert err["error_iod"] < 0.06
    assert err["error_iod"] < 0.6 * err["template_error_iod"]
    with pytest.raises(FileNotFoundError, match="gt_params"):
        ds.tracking_error(subject, tmp_path)
