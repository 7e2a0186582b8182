"""``gft eval`` end to end on short videos made from real frames: outputs, frames without a face, reference alignment,
motion metrics against a SUBJECT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gaussian_flametalk.io.audio import save_wav
from test_flametalk import make_subject, speech_like
from test_stability import astronaut_clip

from gaussian_flametalk.eval.evaluate import EvalConfig, ReferenceMismatchError, evaluate
from gaussian_flametalk.eval.motion import motion_metrics
from gaussian_flametalk.scripts.gft import main as gft_main
from gaussian_flametalk.io.media import write_video

N = 60
NO_FACE = list(range(20, 25))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """real.mp4 (the astronaut clip with speech-like sound), fake.mp4 (the same with 1.5 px planted jitter and five
    grey frames without a face), real24.mp4 (real's frames at 24 fps), short.mp4 (its first half), silent.wav."""
    d = tmp_path_factory.mktemp("eval")
    speech, _ = speech_like(N / 25, seed=0)
    save_wav(d / "speech.wav", speech)
    save_wav(d / "silent.wav", np.zeros_like(speech))
    real = astronaut_clip(N)
    fake = astronaut_clip(N, jitter=1.5, seed=3)
    fake[NO_FACE] = 128
    write_video(d / "real.mp4", real, 25.0, d / "speech.wav")
    write_video(d / "fake.mp4", fake, 25.0, d / "speech.wav")
    write_video(d / "real24.mp4", real, 24.0)
    write_video(d / "short.mp4", real[: N // 2], 25.0)
    return d


def test_eval_two_videos_against_a_reference(clips, tmp_path, capsys):
    subject = make_subject(tmp_path / "S", seconds=4.0)
    with np.load(subject / "params.npz") as z:
        expression, jaw = z["expression"], z["jaw"]
    test = np.arange(80, 100)  # the synthetic subject's test split (last 20 % of 100 frames)
    np.savez(tmp_path / "exact.npz", expression=expression[test], jaw=jaw[test])
    np.savez(tmp_path / "still.npz", expression=np.zeros_like(expression[test]), jaw=np.zeros_like(jaw[test]),
             frames=test)
    out = tmp_path / "out"
    assert gft_main(["eval", str(clips / "fake.mp4"), str(clips / "real.mp4"), "--reference", str(clips / "real.mp4"),
                     "--params", str(tmp_path / "still.npz"), str(tmp_path / "exact.npz"), "--tracked", str(subject),
                     "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    fake, real = metrics["videos"]
    assert [fake["name"], real["name"]] == ["fake", "real"] and fake["frames"] == real["frames"] == N

    # frames without a face: flagged, counted, excluded
    assert fake["faces"]["frames_without_face"] == len(NO_FACE) and fake["faces"]["frames"] == NO_FACE
    assert set(NO_FACE) <= set(fake["stability"]["excluded_frames"])
    assert real["faces"]["frames_without_face"] == 0 and real["stability"]["excluded_frames"] == []
    with np.load(out / "fake" / "trajectories.npz") as z:
        assert z["trajectories"].shape == (N, 9, 2) and np.isnan(z["trajectories"][NO_FACE]).all()
        assert not z["found"][NO_FACE].any() and z["reference_found"].all()

    # stability: the reference itself scores 1, the jittered video more
    assert real["stability"]["score_vs_reference"] == pytest.approx(1.0, abs=1e-9)
    assert fake["stability"]["score_vs_reference"] > 1.5
    assert 0 < real["stability"]["score"] < 1 and fake["stability"]["terms"]["n_excluded"] >= len(NO_FACE)

    # images: the reference against itself is perfect; LPIPS says why it is missing
    assert real["image"]["ssim"] == pytest.approx(1.0) and real["image"]["psnr"] > 60
    assert 0 < fake["image"]["ssim"] < 0.95 and 10 < fake["image"]["psnr"] < 30
    assert "--lpips-weights" in fake["image"]["lpips"]["unavailable"]

    # lip sync: weight-free score on each video's own sound; no SyncNet weights; LMD against the reference
    for e in (fake, real):
        assert {"offset", "peak", "peak_minus_median"} <= set(e["lipsync"]["envelope"])
        assert "unavailable" in e["lipsync"]["syncnet"]
    assert real["lipsync"]["lmd"] == pytest.approx(0.0, abs=1e-6) and fake["lipsync"]["lmd"] > 0
    # the reference's own phonetic sync (its landmarks, its sound) is what real.mp4 scores as a video, not the video's
    for e in (fake, real):
        assert e["lipsync"]["reference_phonetic"]["peak"] == pytest.approx(real["lipsync"]["phonetic"]["peak"],
                                                                           abs=1e-9)
    assert fake["lipsync"]["phonetic"]["peak"] != pytest.approx(real["lipsync"]["phonetic"]["peak"], abs=1e-3)

    # motion metrics against the tracked SUBJECT
    assert real["motion"]["lve_mm"] == pytest.approx(0.0, abs=1e-6) and real["motion"]["subject_frames"] == "80..99"
    assert fake["motion"]["lve_mm"] > 0.1 and fake["motion"]["fdd_mm"] > 0 and fake["motion"]["ffe_mm2"] > 0

    # files and the side-by-side table
    for name in ("fake", "real"):
        for f in ("trajectories.npz", "spectrum.png", "trajectory.png"):
            assert (out / name / f).stat().st_size > 1000
    assert (out / "spectra.png").is_file()
    summary = (out / "summary.md").read_text()
    assert "| metric | fake | real |" in summary and "| frames without face | 5 | 0 |" in summary
    assert "| reference's phonetic sync peak |" in summary
    assert "stability score (vs reference)" in printed and "fake" in printed.splitlines()[0]
    assert not list(out.rglob(".*tmp*"))


def test_reference_of_other_length_or_fps_is_aligned_or_refused(clips, tmp_path):
    metrics = evaluate(EvalConfig(videos=(clips / "real.mp4",), out=tmp_path / "a", reference=clips / "real24.mp4",
                                  audio=clips / "silent.wav", progress=False))
    (entry,) = metrics["videos"]
    align = entry["alignment"]
    assert align["resampled"] and align["reference_fps"] == pytest.approx(24.0)
    assert align["common_frames"] == entry["frames"] == N and align["reference_frames"] >= N
    assert np.isfinite(entry["stability"]["score_vs_reference"]) and entry["image"]["psnr"] > 10
    assert "silent" in entry["lipsync"]["envelope"]["unavailable"]
    assert "real24.mp4 has no sound track" in entry["lipsync"]["reference_phonetic"]["unavailable"]
    assert (tmp_path / "a" / "summary.md").is_file()

    with pytest.raises(ReferenceMismatchError) as err:
        evaluate(EvalConfig(videos=(clips / "real.mp4",), out=tmp_path / "b", reference=clips / "short.mp4",
                            progress=False))
    msg = str(err.value)
    assert "real.mp4" in msg and "short.mp4" in msg and "2.40 s at 25 fps" in msg and "1.20 s at 25 fps" in msg
    assert not (tmp_path / "b").exists()  # refused before anything was written
    with pytest.raises(FileNotFoundError, match="nothing.mp4"):
        evaluate(EvalConfig(videos=(clips / "nothing.mp4",), out=tmp_path / "c", progress=False))


def test_motion_metrics_against_tracked_parameters(clips, tmp_path):
    subject = make_subject(tmp_path / "S", seconds=4.0)
    with np.load(subject / "params.npz") as z:
        expression, jaw = z["expression"], z["jaw"]
    frames = np.arange(30, 60)
    np.savez(tmp_path / "same.npz", expression=expression[frames], jaw=jaw[frames], frames=frames)
    same = motion_metrics(tmp_path / "same.npz", subject)
    assert same["frames"] == 30 and same["subject_frames"] == "30..59"
    assert same["lve_mm"] == same["fdd_mm"] == same["ffe_mm2"] == 0.0
    rng = np.random.default_rng(0)
    noisy_jaw = jaw[frames] + rng.normal(0, 0.05, jaw[frames].shape) * np.array([1.0, 0, 0])
    np.savez(tmp_path / "noisy.npz", expression=expression[frames], jaw=noisy_jaw, frames=frames)
    noisy = motion_metrics(tmp_path / "noisy.npz", subject)
    assert noisy["lve_mm"] > 0.1 and noisy["ffe_mm2"] > 0
    np.savez(tmp_path / "start.npz", expression=expression[frames], jaw=jaw[frames])
    assert motion_metrics(tmp_path / "start.npz", subject, start=30)["lve_mm"] == 0.0
    with pytest.raises(ValueError, match="outside"):
        motion_metrics(tmp_path / "start.npz", subject, start=90)
    np.savez(tmp_path / "bad.npz", expression=np.zeros((30, 3)), jaw=jaw[frames])
    with pytest.raises(ValueError, match="expression components"):
        motion_metrics(tmp_path / "bad.npz", subject)
    with pytest.raises(ValueError, match="bad.npz.*expression components"):  # gft eval checks before any work
        evaluate(EvalConfig(videos=(clips / "real.mp4",), out=tmp_path / "out", params=(tmp_path / "bad.npz",),
                            tracked=subject, progress=False))
    assert not (tmp_path / "out").exists()
