"""The GPU check script on the CPU: prepare's printed run call (no network: a fake wheel folder and a tiny SUBJECT),
the dry run of exactly that call (CUDA steps skipped with their reason, train and drive as tiny CPU stand-ins), and
the failure, timeout and budget paths."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shlex
import sys
import time
import zipfile
from pathlib import Path

import pytest

from gaussian_flametalk.flametalk.model import FlameTalkArch
from gaussian_flametalk.flametalk.train import TalkConfig, train_talk
from gaussian_flametalk.io.audio import save_wav
from gaussian_flametalk.scripts.gpu_check import (
    STEP_NAMES,
    GpuCheckConfig,
    PrepareConfig,
    StepFailed,
    copy_subject,
    main,
    prepare,
    run_check,
    step_environment,
    subject_video,
)
from test_avatar import make_subject
from test_flametalk import speech_like

COMMAND_HEAD = "PYTHONUNBUFFERED=1 python3 -m gaussian_flametalk.scripts.gpu_check"


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal valid pure-Python wheel (one module that records it was imported)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test_gpu_check\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A stand-in repository root: a fake wheel folder, and a tiny SUBJECT made without tracking (the avatar tests'
    96 px synthetic clip) with speech and a small FlameTalk on the mel encoder, as prepare carries them."""
    root = tmp_path_factory.mktemp("repo")
    make_wheel(root / "gpu_wheels", "gftfake", "0.1")
    subject = make_subject(root / "src" / "S", n=24, size=96)
    save_wav(subject / "audio.wav", speech_like(24 / 25.0, seed=3)[0])
    train_talk(TalkConfig(subjects=(subject,), audio_encoder="mel", iterations=5, seq_frames=8, batch_size=1,
                          model=FlameTalkArch(dim=16, heads=2), mel_dim=16, progress=False, window=16, overlap=4))
    save_wav(root / "src" / "speech.wav", speech_like(1.0, seed=5)[0])
    return root


@pytest.fixture(scope="module")
def prepared(root) -> tuple[dict, str]:
    cfg = PrepareConfig(root=root, packages=("gftfake==0.1",), download=False, subject=root / "src" / "S",
                        speech=root / "src" / "speech.wav")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = prepare(cfg)
    return result, printed.getvalue()


def test_prepare_prints_the_run_call_and_carry_list(root, prepared):
    result, text = prepared
    call = json.loads(next(line for line in text.splitlines() if line.startswith("RUN_CALL "))[len("RUN_CALL "):])
    assert call["command"] == (f"{COMMAND_HEAD} --wheels gpu_wheels --subject gpu_prep/subject "
                               "--speech gpu_prep/drive_speech.wav --work /tmp/gpu_check --budget-s 450")
    assert call["carry"] == ["gpu_prep", "gpu_wheels"]
    assert call["timeout_s"] == 510  # the check's budget and a minute; the device tool allows 600
    assert f"  command:   {call['command']}" in text and '  carry:     ["gpu_prep", "gpu_wheels"]' in text
    assert result["wheels"] == ["gftfake-0.1-py3-none-any.whl"]
    prep = root / "gpu_prep"
    assert (prep / "subject" / "talk" / "meta.json").is_file() and (prep / "drive_speech.wav").is_file()
    assert not (prep / "subject" / "avatar").exists()  # the GPU trains it
    assert result["prepared"]["audio_encoder"] == "mel" and result["prepared"]["notes"] == []
    assert result["sizes_bytes"]["tree"] is None  # not a git checkout: only the carried folders are counted
    assert 0 < result["total_bytes"] < 64 * 2**20
    assert "what travels:" in text

    # a second run with the same settings reuses the prepared folder; bad inputs fail before any work
    again = io.StringIO()
    with contextlib.redirect_stdout(again):
        prepare(PrepareConfig(root=root, packages=("gftfake==0.1",), download=False, subject=root / "src" / "S",
                              speech=root / "src" / "speech.wav"))
    assert "reused" in again.getvalue()
    with pytest.raises(FileNotFoundError, match="no wheel for gsplat==1.5.3"):
        prepare(PrepareConfig(root=root, packages=("gsplat==1.5.3",), download=False))
    with pytest.raises(ValueError, match="must come from the GPU image"):
        PrepareConfig(root=root, packages=("torch==2.11.0",))
    with pytest.raises(ValueError, match="not inside --root"):
        PrepareConfig(root=root, wheels=root.parent / "elsewhere")
    with pytest.raises(ValueError, match="--speech: required"):
        PrepareConfig(root=root, subject=root / "src" / "S")


@pytest.fixture(scope="module")
def dry_run(root, prepared, tmp_path_factory) -> tuple[int, dict, Path, float]:
    """The printed command, run as given from the (stand-in) repository root, plus --dry-run."""
    result, _ = prepared
    words = shlex.split(result["command"])
    assert " ".join(words[:4]) == COMMAND_HEAD
    out = tmp_path_factory.mktemp("out")
    cwd = os.getcwd()
    os.chdir(root)
    t0 = time.perf_counter()
    try:
        rc = main([*words[4:], "--dry-run", "--out", str(out), "--work", str(out.parent / "work")])
    finally:
        os.chdir(cwd)
    return rc, json.loads((out / "gpu_check.json").read_text()), out, time.perf_counter() - t0


def test_dry_run_runs_every_step_it_can_and_skips_cuda_with_the_reason(dry_run):
    rc, report, out, seconds = dry_run
    assert rc == 0 and report["ok"] and report["dry_run"]
    steps = report["steps"]
    assert list(steps) == list(STEP_NAMES)
    assert {name: s["status"] for name, s in steps.items()} == {
        "environment": "ok", "install": "ok", "build": "skipped", "pytest": "skipped", "render": "ok",
        "train": "ok", "drive": "ok"}
    assert all(isinstance(s["seconds"], float) for s in steps.values())

    env = steps["environment"]["figures"]
    assert env["dry_run"] and env["sizes"] == {"train_iterations": 3, "train_resolution": 64, "drive_resolution": 64}
    assert report["versions"]["torch"] and report["versions"]["python"] and report["device"]

    install = steps["install"]["figures"]
    assert install["wheels"] == ["gftfake-0.1-py3-none-any.whl"]
    assert install["installed"] == {"gftfake": {"version": "0.1", "modules": ["gftfake"], "errors": {}}}
    assert install["target"].startswith(report["work"])  # a scratch target, never the running environment

    assert steps["build"]["reason"].startswith("no CUDA")
    pytest_step = steps["pytest"]
    assert pytest_step["reason"].startswith("no CUDA: all ")
    counts = pytest_step["figures"]
    assert counts["tests"] >= 8 and counts["skipped"] == counts["tests"] and counts["passed"] == 0
    assert all("CUDA" in r for r in counts["skip_reasons"].values())

    cases = steps["render"]["figures"]["cases"]
    for name in ("gsplat-cuda-512-100k-fwd", "gsplat-cuda-512-100k-fwdbwd", "ref-cuda-512-100k-fwd",
                 "ref-cuda-512-100k-fwdbwd"):
        assert cases[name]["status"] == "skipped" and cases[name]["reason"].startswith("no CUDA")
    cpu = cases["ref-cpu-256-20k-fwd-t1"]
    assert cpu["status"] == "ok" and cpu["fps_median"] > 0 and cpu["peak_rss_gb"] > 0 and cpu["repeats"] == 3

    train = steps["train"]["figures"]
    assert train["device"] == "cpu" and train["iterations"] == 3 and train["resolution"] == 64
    assert train["iterations_per_s"] > 0 and train["n_gaussians"] > 0 and "not a GPU figure" in train["note"]
    drive = steps["drive"]["figures"]
    assert drive["device"] == "cpu" and drive["resolution"] == 64 and drive["frames"] == 25
    assert drive["real_time_factor"] > 0 and drive["fps"] > 0 and drive["full_frame"] is False

    # on the CPU no figure counts towards the GPU goals
    assert report["goals"]["gsplat_fwd_fps_512_100k"] is None and report["goals"]["drive_real_time_factor_met"] is None
    log = (out / "gpu_check.log").read_text()
    for name in STEP_NAMES:
        assert f"== {name}" in log
    assert "train-avatar" in log and "bench_drive" in log and "skipped" in log  # the steps' own output is there
    print(f"\ndry run: {seconds:.1f} s; " + ", ".join(f"{n} {s['seconds']:.1f} s" for n, s in steps.items()))


def test_a_failing_step_is_recorded_and_the_next_still_runs(tmp_path):
    cfg = GpuCheckConfig(out=tmp_path / "out", dry_run=True, work=tmp_path / "work")
    pid_file = tmp_path / "grandchild.pid"

    def boom(ctx):
        raise RuntimeError("injected failure")

    def hangs(ctx):  # leaves a grandchild behind: the whole process group goes at the timeout
        ctx.run([sys.executable, "-c", "import subprocess, sys, time; "
                 f"p = subprocess.Popen(['sleep', '60']); open({str(pid_file)!r}, 'w').write(str(p.pid)); "
                 "time.sleep(60)"], timeout=2)
        return {"unreachable": True}

    def exits_3(ctx):
        proc = ctx.run([sys.executable, "-c", "import sys; print('oops'); sys.exit(3)"], timeout=30)
        raise StepFailed(f"exited {proc.returncode}: {proc.output.strip()}", {"returncode": proc.returncode})

    def after(ctx):
        return {"ran": True}

    t0 = time.perf_counter()
    report = run_check(cfg, steps=[("environment", step_environment), ("boom", boom), ("hangs", hangs),
                                   ("exits_3", exits_3), ("after", after)])
    assert time.perf_counter() - t0 < 30
    steps = report["steps"]
    assert steps["boom"]["status"] == "failed" and steps["boom"]["reason"] == "RuntimeError: injected failure"
    assert "injected failure" in steps["boom"]["traceback"]
    assert steps["hangs"]["status"] == "timeout" and steps["hangs"]["seconds"] < 15
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # reaped by init shortly after the kill
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the timed-out step's grandchild is still running")
    assert steps["exits_3"] == {"status": "failed", "reason": "exited 3: oops", "figures": {"returncode": 3},
                                "seconds": steps["exits_3"]["seconds"]}
    assert steps["after"]["status"] == "ok" and steps["after"]["figures"] == {"ran": True}
    assert not report["ok"]
    on_disk = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert {n: s["status"] for n, s in on_disk["steps"].items()} == {n: s["status"] for n, s in steps.items()}
    assert "oops" in (tmp_path / "out" / "gpu_check.log").read_text()


def test_budget_and_options(tmp_path, monkeypatch):
    cfg = GpuCheckConfig(out=tmp_path / "out", dry_run=True, budget_s=1, work=tmp_path / "work")
    report = run_check(cfg, steps=[("environment", step_environment), ("after", lambda ctx: {"ran": True})])
    assert report["steps"]["environment"]["status"] == "ok"
    assert report["steps"]["after"]["status"] == "skipped" and "out of time" in report["steps"]["after"]["reason"]
    with pytest.raises(ValueError, match="--steps: unknown nope"):
        GpuCheckConfig(out=tmp_path, steps=("nope",))
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), "--timeouts.build", "0"])
    assert exc.value.code == 2
    monkeypatch.delenv("OUT", raising=False)
    with pytest.raises(ValueError, match=r"\$OUT is not set"):
        GpuCheckConfig()
    monkeypatch.setenv("OUT", str(tmp_path / "from_env"))
    assert GpuCheckConfig().out == tmp_path / "from_env"


def test_a_copied_subject_still_finds_its_source_video(tmp_path):
    """gft drive pastes into the source video of a cropped SUBJECT (--full-frame): the carried copy names it relative
    to itself, and the check's own copy of that again."""
    src = tmp_path / "a" / "S"
    (src / "avatar").mkdir(parents=True)
    (tmp_path / "a" / "video.mp4").write_bytes(b"video")
    (src / "meta.json").write_text(json.dumps({"inputs": {"video": {"path": "../video.mp4", "width": 8}}}))
    assert subject_video(src) == (tmp_path / "a" / "video.mp4").resolve()
    carried = tmp_path / "prep" / "source_video.mp4"
    carried.parent.mkdir()
    carried.write_bytes(b"video")
    prep = copy_subject(src, tmp_path / "prep" / "subject", carried)
    assert json.loads((prep / "meta.json").read_text())["inputs"]["video"] == {"path": "../source_video.mp4",
                                                                            "width": 8}
    assert not (prep / "avatar").exists()
    work = copy_subject(prep, tmp_path / "work" / "deeper" / "subject")
    assert subject_video(work) == carried.resolve()
