"""Crash recovery proven by killing: each stage runs as a real ``gft`` process, is SIGKILLed at a chosen point (after
its first checkpoint, or in the middle of writing its outputs), and is run again. Checked: (a) after the kill no output
looks finished (no meta.json), (b) the re-run resumes from the last checkpoint on disk, so at most one checkpoint
interval of work is redone (printed), (c) the final outputs equal an uninterrupted run's (to the bit for the avatar,
FlameTalk's loss history, the driven frames' parameters and the tracked parameters).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gaussian_flametalk.io.audio import save_wav
from test_avatar import make_subject
from test_flametalk import speech_like


def gft(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``gft ARGS`` to the end in a fresh process (one thread: the tests share a small machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "gaussian_flametalk.scripts.gft", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def gft_killed(args: list[str], when, timeout: float = 600) -> float:
    """Start ``gft ARGS``, SIGKILL it as soon as ``when()`` is true (polled every 10 ms); returns the seconds it ran.
    Fails if the process ends by itself first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gaussian_flametalk.scripts.gft", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    try:
        while not when():
            if proc.poll() is not None:
                pytest.fail(f"gft {args[0]} ended (status {proc.returncode}) before the kill point:\n"
                            f"{proc.stderr.read()[-2000:]}")
            if time.perf_counter() - t0 > timeout:
                pytest.fail(f"gft {args[0]} did not reach the kill point in {timeout} s")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return time.perf_counter() - t0


def _checkpoint_iteration(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["iteration"])


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    """The synthetic SUBJECT (96 px, 30 frames) with speech."""
    root = make_subject(tmp_path_factory.mktemp("crash") / "S", n=30, size=96)
    samples, _ = speech_like(30 / 25.0, seed=11)
    save_wav(root / "audio.wav", samples)
    return root


AVATAR = ["--iterations", "90", "--checkpoint-every", "30", "--resolution", "96", "--sh-degree", "0",
          "--densify.start", "0.3", "--densify.end", "0.7", "--densify.every", "20", "--densify.opacity-resets", "0",
          "--grid-frames", "1", "--no-progress"]


def test_train_avatar_killed_after_a_checkpoint_resumes(subject, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert gft("train-avatar", str(subject), "--out", str(straight), *AVATAR).returncode == 0
    ckpt = killed / "checkpoint.pt"
    ran = gft_killed(["train-avatar", str(subject), "--out", str(killed), *AVATAR], ckpt.is_file)
    assert not (killed / "meta.json").exists() and not (killed / "avatar.ply").exists()  # (a)
    at_kill = _checkpoint_iteration(ckpt)
    done = gft("train-avatar", str(subject), "--out", str(killed), *AVATAR)
    assert done.returncode == 0, done.stderr
    meta = json.loads((killed / "meta.json").read_text())
    ref = json.loads((straight / "meta.json").read_text())
    assert meta["resumed_from"] == at_kill >= 30  # (b) from the checkpoint on disk: < 30 iterations redone
    print(f"\ntrain-avatar: killed after {ran:.1f} s with its checkpoint at iteration {at_kill}; the re-run redid "
          f"{90 - at_kill} of 90 iterations (at most one 30-iteration interval lost)")
    # (c) the same avatar as the uninterrupted run, to the bit (RNG, optimiser and densification state resume too)
    a = torch.load(straight / "checkpoint.pt", map_location="cpu", weights_only=False)["gaussians"]
    b = torch.load(killed / "checkpoint.pt", map_location="cpu", weights_only=False)["gaussians"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta["figures"]["test_psnr"] == ref["figures"]["test_psnr"]


TALK = ["--iterations", "40", "--checkpoint-every", "10", "--seq-frames", "8", "--batch-size", "1", "--model.dim",
        "16", "--model.heads", "2", "--mel-dim", "16", "--window", "16", "--overlap", "4", "--audio-encoder", "mel",
        "--no-progress"]


def test_train_talk_killed_after_a_checkpoint_resumes_exactly(subject, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert gft("train-talk", str(subject), "--out", str(straight), *TALK).returncode == 0
    ckpt = killed / "checkpoint.pt"
    ran = gft_killed(["train-talk", str(subject), "--out", str(killed), *TALK], ckpt.is_file)
    assert not (killed / "meta.json").exists()  # (a)
    at_kill = _checkpoint_iteration(ckpt)
    done = gft("train-talk", str(subject), "--out", str(killed), *TALK)
    assert done.returncode == 0, done.stderr
    meta = json.loads((killed / "meta.json").read_text())
    assert meta["resumed_from"] == at_kill >= 10 and meta["iterations_run"] == 40 - at_kill  # (b)
    print(f"\ntrain-talk: killed after {ran:.1f} s with its checkpoint at iteration {at_kill}; the re-run redid "
          f"{40 - at_kill} of 40 iterations (at most one 10-iteration interval lost)")
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(killed / "checkpoint.pt", weights_only=False)
    np.testing.assert_allclose([h["loss"] for h in b["history"]], [h["loss"] for h in a["history"]], rtol=1e-4)


@pytest.fixture(scope="module")
def trained(subject, tmp_path_factory) -> Path:
    """``subject`` with a short avatar and FlameTalk, for the drive kill."""
    root = tmp_path_factory.mktemp("trained") / "S"
    shutil.copytree(subject, root)
    assert gft("train-avatar", str(root), *AVATAR).returncode == 0
    assert gft("train-talk", str(root), *TALK).returncode == 0
    return root


def test_drive_killed_while_writing_leaves_nothing_finished_and_reruns_identically(trained, tmp_path):
    speech = tmp_path / "speech.wav"
    save_wav(speech, speech_like(4.0, seed=2)[0])
    straight = tmp_path / "straight.mp4"
    assert gft("drive", str(trained), str(speech), "--out", str(straight), "--no-progress").returncode == 0
    out = tmp_path / "killed" / "x.mp4"

    def writing_the_video() -> bool:  # the encoder's temporary mp4 exists: the render is under way
        return out.parent.is_dir() and any(p.name.startswith(".x.tmp-") for p in out.parent.iterdir())

    ran = gft_killed(["drive", str(trained), str(speech), "--out", str(out), "--no-progress"], writing_the_video)
    assert not out.exists() and not out.with_suffix(".meta.json").exists() and not out.with_suffix(".npz").exists()
    print(f"\ndrive: killed {ran:.1f} s in, while encoding; nothing finished-looking was left")
    assert gft("drive", str(trained), str(speech), "--out", str(out), "--no-progress").returncode == 0
    with np.load(straight.with_suffix(".npz")) as a, np.load(out.with_suffix(".npz")) as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert json.loads(out.with_suffix(".meta.json").read_text())["frames"] == 100


def test_track_killed_after_detection_reuses_it(shared_dir, tmp_path):
    clip = shared_dir / "data" / "videos" / "v1_german_news_anchor_20s.mp4"
    ict = shared_dir / "headmodels" / "ict-facekit" / "FaceXModel"
    if not clip.is_file() or not ict.is_dir():
        pytest.skip("../shared clip or ICT-FaceKit missing")
    short = tmp_path / "short.mp4"
    from gaussian_flametalk.io.media import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(clip), "-t", "2", "-c:v", "libx264", "-c:a", "aac",
                    str(short)], check=True)
    args = ["--head-model", f"ict:{ict}", "--resolution", "256", "--no-overlay", "--no-progress"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert gft("track", str(short), "--out", str(straight), *args).returncode == 0
    detected = killed.with_name("killed.partial") / "detection.json"  # written once landmarks.npz is complete
    ran = gft_killed(["track", str(short), "--out", str(killed), *args], detected.is_file)
    assert not (killed / "meta.json").exists()  # (a)
    done = gft("track", str(short), "--out", str(killed), *args)
    assert done.returncode == 0, done.stderr
    assert "reusing the finished detection pass" in done.stderr  # (b) the detection is not redone
    print(f"\ntrack: killed {ran:.1f} s in, after its landmark detection; the re-run reused it")
    with np.load(straight / "params.npz") as a, np.load(killed / "params.npz") as b:  # (c)
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
