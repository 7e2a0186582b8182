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

from gaussian_flametalk.io.audio import save_wav
from gaussian_flametalk.io.media import ffmpeg_exe, write_video
from gaussian_flametalk.scripts.gft import main as gft_main
from test_drive import trained_subject  # noqa: F401 - the fixture


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_subject) -> dict[str, Path]:
    """Every input the matrix needs, made once."""
    root = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {"root": root}
    # --- a trained SUBJECT (test_drive's synthetic one, copied: cases write beside it), copies with a stage missing
    subject = root / "S"
    shutil.copytree(trained_subject, subject)
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
    ("avatar-densify-window", "train-avatar {subject} --densify.end 1.5", "--densify.end", None),
    ("avatar-grad-threshold", "train-avatar {subject} --densify.grad-threshold -1", "--densify.grad-threshold", None),
    ("avatar-densify-every", "train-avatar {subject} --densify.every -3", "--densify.every", None),
    ("avatar-checkpoint-every", "train-avatar {subject} --checkpoint-every 0", "--checkpoint-every", None),
    ("avatar-device", "train-avatar {subject} --device tpu", "--device", None),
    ("track-fps", "track {no_face} --out {out}/o1 --fps 0", "--fps", "o1"),
    ("track-resolution", "track {no_face} --out {out}/o2 --resolution 8", "--resolution", "o2"),
    ("talk-iterations", "train-talk {subject} --iterations 0", "--iterations", None),
    ("talk-lr", "train-talk {subject} --lr -0.1", "--lr", None),
    ("talk-pca-variance", "train-talk {subject} --pca-variance 1.5", "--pca-variance", None),
    ("talk-dropout", "train-talk {subject} --model.dropout 1", "--model.dropout", None),
    ("talk-dim", "train-talk {subject} --model.dim 0", "--model.dim", None),
    ("talk-dim-heads", "train-talk {subject} --model.dim 30 --model.heads 4", "--model.heads 4", None),
    ("talk-ptalker-tau", "train-talk {subject} --pt.tau 0", "--pt.tau", None),
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


# ---------------------------------------------------------------------------------------------------------------
# Full and read-only storage (a small tmpfs the test mounts; skipped where mounting is not allowed)


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs folder mounted with ``options`` (e.g. "size=64k", "ro"), unmounted after."""
    mounted: list[Path] = []

    def make(options: str) -> Path:
        folder = tmp_path / f"mnt{len(mounted)}"
        folder.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()[:80]})")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)


def _one_error_line(capsys, command: str) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("[gft")]
    assert len(lines) == 1 and lines[0].startswith(f"gft {command}: error: "), lines
    return lines[0]


def test_drive_into_a_full_filesystem_is_refused_before_rendering(files, mount, capsys):
    folder = mount("size=16k")  # the 4 s drive at 96 px needs about 55 kB by the estimate
    earlier = folder / "earlier.txt"
    earlier.write_text("a finished output from before")
    speech = files["root"] / "four_seconds.wav"
    save_wav(speech, np.zeros(4 * 16000, np.float32))
    out = folder / "x.mp4"
    status = gft_main(["drive", str(files["subject"]), str(speech), "--out", str(out), "--no-progress"])
    assert status == 2
    line = _one_error_line(capsys, "drive")
    assert str(folder) in line and "MB free" in line
    assert earlier.read_text() == "a finished output from before" and sorted(p.name for p in folder.iterdir()) == \
        ["earlier.txt"]


def test_outputs_into_a_read_only_folder_fail_with_one_line(files, mount, capsys):
    folder = mount("ro,size=64k")
    status = gft_main(["drive", str(files["subject"]), str(files["silent_wav"]), "--out", str(folder / "x.mp4"),
                       "--no-progress"])
    assert status == 2
    assert str(folder) in _one_error_line(capsys, "drive")
    status = gft_main(["eval", str(files["no_face"]), "--out", str(folder / "ev")])
    assert status == 2
    assert str(folder) in _one_error_line(capsys, "eval")


def test_a_write_that_fills_the_disk_keeps_the_older_file(mount):
    from gaussian_flametalk.atomic import save_npz

    folder = mount("size=256k")
    target = folder / "params.npz"
    save_npz(target, a=np.zeros(10))
    with pytest.raises(OSError) as e:
        save_npz(target, a=np.zeros(200_000))  # 1.6 MB into 256 kB
    assert e.value.errno == 28  # ENOSPC
    with np.load(target) as z:
        assert z["a"].shape == (10,)
    assert [p.name for p in folder.iterdir()] == ["params.npz"]  # the temporary is gone


def test_drive_holds_its_output_lock(files, capsys):
    from gaussian_flametalk.io.lock import stage_lock

    out = files["out"] / "locked.mp4"
    with stage_lock(out, "drive"):  # another drive of the same output, still running (this live process)
        status = gft_main(["drive", str(files["subject"]), str(files["silent_wav"]), "--out", str(out),
                           "--no-progress"])
    assert status == 2
    assert "being written by gft drive" in _one_error_line(capsys, "drive") and not out.exists()


def test_a_failed_drive_rerun_leaves_no_stale_meta_and_keeps_the_video(files, monkeypatch):
    import gaussian_flametalk.pipeline.drive as drive_mod

    out = files["out"] / "rerun.mp4"
    assert gft_main(["drive", str(files["subject"]), str(files["silent_wav"]), "--out", str(out),
                     "--no-progress"]) == 0
    meta, video = out.with_suffix(".meta.json"), out.read_bytes()
    assert meta.is_file()

    def broken(path, frames, *args, **kwargs):
        next(iter(frames))
        raise OSError(28, "No space left on device", str(path))  # the disk fills during the render

    monkeypatch.setattr(drive_mod, "write_video", broken)
    assert gft_main(["drive", str(files["subject"]), str(files["silent_wav"]), "--out", str(out),
                     "--no-progress"]) == 2
    assert not meta.exists()  # the new run did not finish: no meta.json says so
    assert out.read_bytes() == video  # the earlier video is untouched


def test_a_filesystem_full_to_the_last_byte_is_one_line_naming_the_folder(files, mount, capsys):
    folder = mount("size=4k")
    (folder / "filler").write_bytes(b"x" * 4096)  # not a byte left, not even for the stage lock
    status = gft_main(["drive", str(files["subject"]), str(files["silent_wav"]), "--out", str(folder / "x.mp4"),
                       "--no-progress"])
    assert status == 2
    line = _one_error_line(capsys, "drive")
    assert str(folder) in line and "No space left" in line
    assert sorted(p.name for p in folder.iterdir()) == ["filler"]  # no empty lock or temporary left behind
