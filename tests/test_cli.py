"""The ``gft`` command line: config dataclasses as options, and ``gft doctor``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from gaussian_flametalk.config import add_dataclass_args, config_to_dict, dataclass_from_args
from gaussian_flametalk.scripts import doctor, gft


@dataclass
class _Example:
    video: Path = field(metadata={"help": "input"})
    fps: float = 25.0
    size: int = 512
    landmarks: str = "mediapipe"
    cache: bool = True
    flame: str | None = None
    subjects: tuple[str, ...] = ()


def test_dataclass_options_round_trip():
    import argparse

    p = argparse.ArgumentParser()
    add_dataclass_args(p, _Example, positional=("video",))
    cfg = dataclass_from_args(_Example, p.parse_args(["clip.mp4", "--fps", "30", "--no-cache", "--subjects", "a", "b"]))
    assert cfg == _Example(Path("clip.mp4"), 30.0, 512, "mediapipe", False, None, ("a", "b"))
    assert config_to_dict(cfg)["video"] == "clip.mp4"
    with pytest.raises(SystemExit):
        p.parse_args(["clip.mp4", "--size", "big"])


def test_doctor_json_reports_this_machine(capsys):
    assert gft.main(["doctor", "--json"]) == 0
    report = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert report["torch"]["ok"] is True and report["gaussian-flametalk"]["ok"] is True
    assert report["CUDA"]["info"]["available"] == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert report["CUDA"]["ok"] is None and "CPU" in report["CUDA"]["detail"]
        assert report["rasterizer: gsplat"]["ok"] in (None, False)  # never claims a working CUDA rasterizer without CUDA
    assert report["head model: synthetic"]["ok"] is True
    assert report["ffmpeg"]["ok"] is True


def test_doctor_names_a_broken_head_model_without_failing(capsys, tmp_path):
    assert gft.main(["doctor", "--flame", str(tmp_path / "missing.pkl")]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("head model: flame"))
    assert "FAIL" in line and "missing.pkl" in line


def test_doctor_exit_status_only_for_the_core(monkeypatch):
    monkeypatch.setattr(doctor, "check_torch", lambda: (_ for _ in ()).throw(ImportError("no torch")))
    assert doctor.main(doctor.DoctorConfig()) == 1


@pytest.mark.skipif(shutil.which("gft", path=str(Path(sys.executable).parent)) is None, reason="console script not installed")
def test_console_script_runs():
    exe = shutil.which("gft", path=str(Path(sys.executable).parent))
    out = subprocess.run([exe, "doctor"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torch" in out.stdout and "CUDA" in out.stdout


def test_doctor_lists_every_registered_component(capsys):
    from gaussian_flametalk.avatar.rasterize import RASTERIZERS
    from gaussian_flametalk.flametalk.encoders import AUDIO_ENCODERS
    from gaussian_flametalk.headmodel import HEAD_MODELS
    from gaussian_flametalk.tracking.landmarks import LANDMARK_DETECTORS

    assert gft.main(["doctor", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in rows]
    assert len(names) == len(set(names)), f"listed twice: {sorted({n for n in names if names.count(n) > 1})}"
    report = {c["name"]: c for c in rows}
    for label, registry in (("head model", HEAD_MODELS), ("audio encoder", AUDIO_ENCODERS),
                            ("landmark detector", LANDMARK_DETECTORS), ("rasterizer", RASTERIZERS)):
        for name in registry.names():
            assert f"{label}: {name}" in report
    assert report["rasterizer: reference"]["ok"] is True and report["rasterizer: cpu"]["ok"] is True
    assert report["audio encoder: mel"]["ok"] is True
    with pytest.raises(ValueError, match="--audio-encoder: unknown audio encoder 'melody'; choose from mel"):
        AUDIO_ENCODERS.build("melody")
    with pytest.raises(ValueError, match="needs wav2vec2:HUB_ID_OR_DIR"):
        AUDIO_ENCODERS.build("wav2vec2")


def test_expected_errors_are_one_line_with_exit_2_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    out = tmp_path / "S"
    assert gft.main(["track", str(fake), "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[gft]")]
    assert len(err) == 1 and err[0].startswith("gft track: error: ") and str(fake) in err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fake.mp4"]
    assert gft.main(["--debug", "track", str(fake), "--out", str(out)]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("GFT_DEBUG", "1")
    assert gft.main(["track", str(tmp_path / "missing.mp4"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "missing.mp4: no such file" in err


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    from gaussian_flametalk.scripts import doctor as doctor_module

    monkeypatch.setattr(doctor_module, "run_checks", lambda config: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        gft.main(["doctor"])
