"""The bad-input matrix: every case exits with status 2 and one line ``gft <command>: error: ...`` on stderr that
names the offending file or option, shows no traceback, and leaves no finished-looking output behind.

The cases run through the real command line (``gft.main``) on files the fixtures make: broken and odd videos, broken
speech, a SUBJECT whose stages are missing or were made with another head model, a truncated checkpoint, missing or
wrong head-model files, and options out of range for every stage.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gaussian_flametalk.avatar.train import AvatarConfig, train_avatar
from gaussian_flametalk.flametalk.train import TalkConfig, train_talk
from gaussian_flametalk.io.audio import save_wav
from gaussian_flametalk.io.media import ffmpeg_exe, write_video
from gaussian_flametalk.scripts.gft import main as gft_main
from test_avatar import make_subject
from test_flametalk import speech_like

N_FRAMES = 24


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every input the matrix needs, made once."""
    root = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {"root": root}
    # --- a trained SUBJECT (synthetic head), and copies of it with one stage missing
    subject = make_subject(root / "S", n=N_FRAMES, size=96)
    samples, _ = speech_like(N_FRAMES / 25.0, seed=5)
    save_wav(subject / "audio.wav", samples)
    train_avatar(AvatarConfig(subject=subject, iterations=10, resolution=96, progress=False, regions=(),
                              sh_degree=0, densify_every=0, opacity_resets=0, grid_frames=1))
    train_talk(TalkConfig(subjects=(subject,), iterations=3, seq_frames=8, batch_size=1, dim=16, heads=2,
                          mel_dim=16, progress=False, window=16, overlap=4))
    f["subject"] = subject
    no_avatar = root / "no_avatar"
    shutil.copytree(subject, no_avatar, ignore=shutil.ignore_patterns("avatar"))
    f["no_avatar"] = no_avatar
    no_talk = root / "no_talk"
    shutil.copytree(subject, no_talk, ignore=shutil.ignore_patterns("talk"))
    f["no_talk"] = no_talk
    no_audio = root / "no_audio"
    shutil.copytree(subject, no_audio, ignore=shutil.ignore_patterns("talk", "avatar", "audio.wav"))
    f["no_audio"] = no_audio
    truncated_ckpt = root / "truncated_ckpt"
    shutil.copytree(subject, truncated_ckpt, ignore=shutil.ignore_patterns("talk"))
    ckpt = truncated_ckpt / "avatar" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])
    (truncated_ckpt / "avatar" / "meta.json").unlink()  # as a run killed mid-write would leave it
    f["truncated_ckpt"] = truncated_ckpt
    # --- videos
    f["text_mp4"] = root / "notes.mp4"
    f["text_mp4"].write_text("this is not a video")
    f["empty_mp4"] = root / "empty.mp4"
    f["empty_mp4"].write_bytes(b"")
    good = root / "pattern.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=1", "-pix_fmt", "yuv420p", str(good))
    f["no_face"] = good
    f["truncated_mp4"] = root / "truncated.mp4"
    f["truncated_mp4"].write_bytes(good.read_bytes()[:1500])
    f["audio_only_mp4"] = root / "audio_only.mp4"
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(f["audio_only_mp4"]))
    f["one_frame"] = root / "one_frame.mp4"
    write_video(f["one_frame"], [np.full((120, 160, 3), 128, np.uint8)], 25.0)
    f["still_png"] = root / "still.png"
    import cv2

    cv2.imwrite(str(f["still_png"]), np.full((120, 160, 3), 200, np.uint8))
    f["still_as_mp4"] = root / "still.mp4"
    shutil.copy(f["still_png"], f["still_as_mp4"])
    # --- speech
    f["corrupt_wav"] = root / "corrupt.wav"
    f["corrupt_wav"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    f["text_wav"] = root / "speech.wav"
    f["text_wav"].write_text("hello")
    f["empty_wav"] = root / "empty.wav"
    f["empty_wav"].write_bytes(b"")
    f["silent_wav"] = root / "silent.wav"
    save_wav(f["silent_wav"], np.zeros(16000, np.float32))
    f["corrupt_mp3"] = root / "speech.mp3"
    f["corrupt_mp3"].write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(300))
    # --- head-model files
    f["text_pkl"] = root / "generic_model.pkl"
    f["text_pkl"].write_text("not a pickle")
    f["ict_empty"] = root / "ict_empty"
    f["ict_empty"].mkdir()
    f["out"] = root / "out"
    return f


# (id, argv with {name} placeholders, the text the one error line must contain, outputs that must not exist)
CASES = [
    # videos into gft track
    ("track-missing-video", "track {root}/nowhere.mp4 --out {out}/t1 --head-model synthetic", "nowhere.mp4", "t1"),
    ("track-text-as-mp4", "track {text_mp4} --out {out}/t2 --head-model synthetic", "notes.mp4", "t2"),
    ("track-empty-file", "track {empty_mp4} --out {out}/t3 --head-model synthetic", "empty.mp4", "t3"),
    ("track-truncated-mp4", "track {truncated_mp4} --out {out}/t4 --head-model synthetic", "truncated.mp4", "t4"),
    ("track-no-video-stream", "track {audio_only_mp4} --out {out}/t5 --head-model synthetic", "audio_only.mp4", "t5"),
    ("track-one-frame", "track {one_frame} --out {out}/t6 --head-model synthetic", "one_frame.mp4", "t6"),
    ("track-still-image", "track {still_png} --out {out}/t7 --head-model synthetic", "still.png", "t7"),
    ("track-image-named-mp4", "track {still_as_mp4} --out {out}/t8 --head-model synthetic", "still.mp4", "t8"),
    ("track-no-face", "track {no_face} --out {out}/t9 --head-model synthetic", "pattern.mp4", "t9"),
    ("track-directory", "track {root} --out {out}/t10 --head-model synthetic", str("{root}"), "t10"),
    # head-model files
    ("track-missing-flame", "track {no_face} --out {out}/h1 --head-model flame:{root}/missing.pkl", "missing.pkl", "h1"),
    ("track-flame-not-a-pickle", "track {no_face} --out {out}/h2 --head-model flame:{text_pkl}", "generic_model.pkl",
     "h2"),
    ("track-missing-ict", "track {no_face} --out {out}/h3 --head-model ict:{root}/no_ict", "no_ict", "h3"),
    ("track-empty-ict-folder", "track {no_face} --out {out}/h4 --head-model ict:{ict_empty}", "ict_empty", "h4"),
    ("track-unknown-head-model", "track {no_face} --out {out}/h5 --head-model basel:x", "basel", "h5"),
    # stages in the wrong order / from another head model / a broken checkpoint
    ("avatar-not-a-subject", "train-avatar {root}/nowhere", "nowhere", None),
    ("avatar-other-head-model", "train-avatar {no_talk} --head-model flame:{text_pkl} --out {out}/a2",
     "generic_model.pkl", "a2"),
    ("avatar-truncated-checkpoint", "train-avatar {truncated_ckpt} --iterations 10 --resolution 96",
     "checkpoint.pt", "truncated_ckpt/avatar/meta.json"),
    ("talk-audio-less-subject", "train-talk {no_audio} --iterations 2", "audio", "no_audio/talk"),
    ("drive-no-avatar", "drive {no_avatar} {silent_wav} --out {out}/d1.mp4", "no_avatar", "d1.mp4"),
    ("drive-no-talk", "drive {no_talk} {silent_wav} --out {out}/d2.mp4", "no_talk", "d2.mp4"),
    ("drive-missing-speech", "drive {subject} {root}/nothing.wav --out {out}/d3.mp4", "nothing.wav", "d3.mp4"),
    ("drive-corrupt-wav", "drive {subject} {corrupt_wav} --out {out}/d4.mp4", "corrupt.wav", "d4.mp4"),
    ("drive-text-as-wav", "drive {subject} {text_wav} --out {out}/d5.mp4", "speech.wav", "d5.mp4"),
    ("drive-empty-wav", "drive {subject} {empty_wav} --out {out}/d6.mp4", "empty.wav", "d6.mp4"),
    ("drive-corrupt-mp3", "drive {subject} {corrupt_mp3} --out {out}/d7.mp4", "speech.mp3", "d7.mp4"),
    ("drive-not-mp4", "drive {subject} {silent_wav} --out {out}/d8.avi", "d8.avi", "d8.avi"),
    ("eval-missing-video", "eval {root}/none.mp4 --out {out}/e1", "none.mp4", "e1/metrics.json"),
    ("eval-text-video", "eval {text_mp4} --out {out}/e2", "notes.mp4", "e2/metrics.json"),
    ("benchmark-no-talk", "benchmark {no_talk} --out {out}/b1", "no_talk", "b1/benchmark.json"),
    # options out of range, every stage
    ("avatar-iterations", "train-avatar {subject} --iterations -5", "--iterations", None),
    ("avatar-resolution", "train-avatar {subject} --resolution 0", "--resolution", None),
    ("avatar-sh-degree", "train-avatar {subject} --sh-degree 4", "--sh-degree", None),
    ("avatar-opacity", "train-avatar {subject} --init-opacity 1.5", "--init-opacity", None),
    ("avatar-lr", "train-avatar {subject} --position-lr -1", "--position-lr", None),
    ("avatar-densify-window", "train-avatar {subject} --densify-end 1.5", "--densify-end", None),
    ("avatar-checkpoint-every", "train-avatar {subject} --checkpoint-every 0", "--checkpoint-every", None),
    ("avatar-device", "train-avatar {subject} --device tpu", "--device", None),
    ("track-fps", "track {no_face} --out {out}/o1 --fps 0", "--fps", "o1"),
    ("track-resolution", "track {no_face} --out {out}/o2 --resolution 8", "--resolution", "o2"),
    ("drive-resolution", "drive {subject} {silent_wav} --out {out}/o3.mp4 --resolution 0", "--resolution", "o3.mp4"),
    ("render-resolution", "render-avatar {subject} --params {subject}/params.npz --out {out}/o4.mp4 --resolution 2",
     "--resolution", "o4.mp4"),
    ("eval-cutoff", "eval {no_face} --out {out}/o5 --cutoff-hz 0", "--cutoff-hz", "o5"),
    ("benchmark-resolution", "benchmark {subject} --out {out}/o6 --resolution -1", "--resolution", "o6"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_exit_2_and_one_line_naming_it(case, files, capsys):
    _, argv, named, must_not_exist = case
    subs = {k: str(v) for k, v in files.items()}
    args = [a.format(**subs) for a in argv.split()]
    command = args[0]
    if command in ("track", "train-avatar", "train-talk", "drive", "benchmark", "render-avatar"):
        args.append("--no-progress")
    try:
        status = gft_main(args)
    except SystemExit as e:  # argparse's own refusals
        status = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[gft")]  # [gft ...]: info lines
    assert status == 2, f"{args}: exit {status}\n{err}"
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith(f"gft {command}: error: ")]
    assert len(errors) == 1 and len(lines) == 1, f"expected one error line, got:\n{err}"
    assert named.format(**subs) in errors[0], f"{named!r} not named in: {errors[0]}"
    if must_not_exist:
        target = files["out"] / must_not_exist if not must_not_exist.startswith(("no_", "truncated")) else \
            files["root"] / must_not_exist
        assert not (target / "meta.json").exists() if target.suffix == "" else not target.exists(), target
