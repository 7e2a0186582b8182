"""`gft demo --quick`: every stage finishes on the built-in subject, its outputs are valid media, its figures beat
trivial baselines; a second run reuses the stages, and an interrupted run finishes when run again."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from gaussian_flametalk.io.audio import SAMPLE_RATE, load_audio
from gaussian_flametalk.demo_subject.subject import espeak_exe
from gaussian_flametalk.scripts.gft import main as gft_main
from gaussian_flametalk.io.media import iter_frames, probe_video
from test_crash import gft_killed


def _espeak_available() -> bool:
    try:
        espeak_exe()
    except Exception:
        return False
    return True


pytestmark = pytest.mark.skipif(not _espeak_available(), reason="espeak-ng is not installed (apt-get install "
                                                                "espeak-ng); the demo subject speaks with it")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "quick"
    assert gft_main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_demo_finishes_with_valid_outputs_and_beats_baselines(quick_demo):
    s = json.loads((quick_demo / "summary.json").read_text())
    assert set(s["seconds"]) >= {"demo subject", "track", "train-avatar", "train-talk", "drive", "eval"}
    assert not any(s["reused"].values())
    print("\n" + (quick_demo / "summary.md").read_text())
    # outputs exist and are valid media
    driven = quick_demo / "driven.mp4"
    info = probe_video(driven)
    assert info.has_audio and info.video_codec == "h264"
    n = len(list(iter_frames(driven, fps=None)))
    speech = load_audio(quick_demo / "demo_subject" / "drive_speech.wav").size / SAMPLE_RATE
    assert n == math.ceil(speech * 25 - 1e-9) == s["driven"]["frames"]
    for key in ("demo_video", "tracking_overlay", "avatar_test_grid"):
        assert Path(s["outputs"][key]).is_file(), key
    # better than trivial baselines
    t = s["tracking"]
    assert t["error_px"] < 0.5 * t["template_error_px"]
    assert s["flametalk"]["lve_mm"] < s["flametalk"]["baseline_lve_mm"]
    assert abs(s["driven"]["lipsync_offset_frames"]) <= 2
    assert s["driven"]["lipsync_peak_minus_median"] > 0.1
    assert s["avatar"]["test_psnr_db"] > 20.0


def test_rerun_reuses_and_interrupted_run_finishes(quick_demo):
    assert gft_main(["demo", "--quick", "--out", str(quick_demo), "--no-progress"]) == 0
    s = json.loads((quick_demo / "summary.json").read_text())
    assert all(s["reused"].values()), s["reused"]
    # a run SIGKILLed during train-talk (after its first checkpoint) finishes when run again, resuming there
    shutil.rmtree(quick_demo / "subject" / "talk")
    shutil.rmtree(quick_demo / "eval")
    for name in ("driven.mp4", "driven.meta.json"):
        (quick_demo / name).unlink()
    ckpt = quick_demo / "subject" / "talk" / "checkpoint.pt"
    gft_killed(["demo", "--quick", "--out", str(quick_demo), "--no-progress"], ckpt.is_file)
    assert not (quick_demo / "subject" / "talk" / "meta.json").exists() and not (quick_demo / "driven.mp4").exists()
    at_kill = int(torch.load(ckpt, map_location="cpu", weights_only=False)["iteration"])
    assert gft_main(["demo", "--quick", "--out", str(quick_demo), "--no-progress"]) == 0
    s = json.loads((quick_demo / "summary.json").read_text())
    assert s["reused"]["track"] and s["reused"]["train-avatar"]
    assert not s["reused"]["train-talk"] and not s["reused"]["drive"] and not s["reused"]["eval"]
    talk = json.loads((quick_demo / "subject" / "talk" / "meta.json").read_text())
    assert talk["resumed_from"] == at_kill > 0 and talk["iterations_run"] == talk["iterations"] - at_kill
    print(f"\ndemo: killed in train-talk with its checkpoint at {at_kill}; the re-run reused track and train-avatar "
          f"and redid {talk['iterations_run']} of {talk['iterations']} FlameTalk iterations")
    assert (quick_demo / "driven.mp4").is_file() and (quick_demo / "eval" / "metrics.json").is_file()


def test_benchmark_on_the_demo_subject_equals_separate_drive_and_eval(quick_demo, tmp_path):
    """gft benchmark's self-reenactment figures are those of gft drive --self-reenact + gft eval run by hand; its
    cross-reenactment uses TTS speech; the real frames' phonetic sync is gft eval's of self.reference.mp4 and the
    cross / real ratio divides by it; published rows are labelled; missing weights say why."""
    subject = quick_demo / "subject"
    out = tmp_path / "bench"
    assert gft_main(["benchmark", str(subject), "--out", str(out), "--tts", "Hello there, how are you today?",
                     "--no-progress"]) == 0
    b = json.loads((out / "benchmark.json").read_text())
    (row,) = b["rows"]
    f = row["figures"]
    assert gft_main(["drive", str(subject), "--self-reenact", "--no-full-frame", "--out", str(tmp_path / "self.mp4"),
                     "--no-progress"]) == 0
    assert gft_main(["eval", str(tmp_path / "self.mp4"), "--reference", str(tmp_path / "self.reference.mp4"),
                     "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    own = json.loads((tmp_path / "eval" / "metrics.json").read_text())["videos"][0]
    assert f["self PSNR"] == pytest.approx(own["image"]["psnr"], rel=1e-9) and f["self PSNR"] > 15
    assert f["self SSIM"] == pytest.approx(own["image"]["ssim"], rel=1e-9)
    assert f["self Stability"] == pytest.approx(own["stability"]["score"], rel=1e-9)
    assert isinstance(f["cross Stability"], float) and len(row["cross_speech"]) == 1
    assert f["self Sync"].startswith("unavailable") and f["self LPIPS"].startswith("unavailable")
    assert gft_main(["eval", str(out / "self.reference.mp4"), "--out", str(tmp_path / "eval_real"),
                     "--no-progress"]) == 0
    real = json.loads((tmp_path / "eval_real" / "metrics.json").read_text())["videos"][0]
    w = row["weight_free"]
    assert w["real frames' phonetic sync (peak)"] == pytest.approx(real["lipsync"]["phonetic"]["peak"], abs=1e-9)
    assert w["real frames' stability"] == pytest.approx(real["stability"]["score"], abs=1e-9)
    assert w["cross / real phonetic sync"] == pytest.approx(
        w["cross phonetic sync (peak)"] / w["real frames' phonetic sync (peak)"], rel=1e-12)
    md = (out / "benchmark.md").read_text()
    assert "GaussianFlameTalk (published) | 29.1233" in md and "not measured here" in md
