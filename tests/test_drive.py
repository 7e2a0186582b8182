"""`gft drive`: a trained avatar and FlameTalk driven by speech of any format; durations, looping, self-reenactment."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from gaussian_flametalk.avatar.sequence import pingpong
from gaussian_flametalk.io.subject import read_params
from gaussian_flametalk.avatar.train import AvatarConfig, DensifyOptions, train_avatar
from gaussian_flametalk.io.audio import SAMPLE_RATE, load_audio, save_wav
from gaussian_flametalk.flametalk.model import FlameTalkArch
from gaussian_flametalk.flametalk.train import TalkConfig, train_talk
from gaussian_flametalk.headmodel import eye_components
from gaussian_flametalk.pipeline.drive import DriveConfig, drive
from gaussian_flametalk.scripts.gft import main as gft_main
from gaussian_flametalk.io.subject import train_test_split
from gaussian_flametalk.io.media import ffmpeg_exe, iter_frames, probe_video
from test_avatar import make_subject
from test_flametalk import speech_like

N_FRAMES = 24


@pytest.fixture(scope="module")
def trained_subject(tmp_path_factory) -> Path:
    """The avatar tests' synthetic SUBJECT (96 px, 24 frames) with speech, a briefly trained avatar and FlameTalk."""
    root = make_subject(tmp_path_factory.mktemp("drive") / "S", n=N_FRAMES, size=96)
    samples, _ = speech_like(N_FRAMES / 25.0, seed=3)
    save_wav(root / "audio.wav", samples)
    train_avatar(AvatarConfig(subject=root, iterations=20, resolution=96, progress=False, regions=(), sh_degree=0,
                              densify=DensifyOptions(every=0, opacity_resets=0), grid_frames=1))
    train_talk(TalkConfig(subjects=(root,), iterations=5, seq_frames=8, batch_size=1,
                          model=FlameTalkArch(dim=16, heads=2), mel_dim=16, progress=False, window=16, overlap=4))
    return root


def _stereo_mp3(path: Path, seconds: float) -> Path:
    """Speech-like audio as a 44.1 kHz stereo mp3 (through the bundled ffmpeg)."""
    samples, _ = speech_like(seconds, seed=7)
    wav = path.with_suffix(".wav")
    save_wav(wav, samples)
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(wav), "-ac", "2", "-ar", "44100",
                    str(path)], check=True)
    return path


def test_drive_any_speech_loops_pose_and_matches_durations(trained_subject, tmp_path):
    seconds = 1.13  # longer than the 24-frame clip: the pose loops forward-backward
    speech = _stereo_mp3(tmp_path / "speech.mp3", seconds)
    duration = load_audio(speech).size / SAMPLE_RATE
    out = tmp_path / "out" / "talking.mp4"
    meta = drive(DriveConfig(subject=trained_subject, speech=speech, out=out, progress=False))
    n = math.ceil(duration * 25.0 - 1e-9)
    assert meta["frames"] == n
    frames = list(iter_frames(out, fps=None))
    assert len(frames) == n and frames[0].shape == (96, 96, 3)
    sound = load_audio(out).size / SAMPLE_RATE  # AAC track of the mp4
    assert abs(sound - n / 25.0) <= 1 / 25.0, (sound, n / 25.0)
    info = probe_video(out)
    assert info.has_audio and info.video_codec == "h264" and info.audio_codec == "aac"
    with np.load(out.with_suffix(".npz")) as z:
        assert z["expression"].shape[0] == n and z["motion"].shape[0] == n
        np.testing.assert_array_equal(z["frames"], pingpong(n, N_FRAMES))
        tuned = read_params(trained_subject / "avatar" / "params.npz")
        np.testing.assert_allclose(z["rotation"], tuned.rotation[z["frames"]].numpy(), atol=1e-6)
        blinks = eye_components(_head(trained_subject))
        assert blinks, "the synthetic head names its blink components"
        np.testing.assert_allclose(z["expression"][:, blinks], tuned.expression[z["frames"]][:, blinks].numpy(),
                                   atol=1e-6)
    saved = json.loads(out.with_suffix(".meta.json").read_text())
    assert set(saved["timings"]) >= {"audio_model", "mesh", "render", "encode"} and saved["figures"]["real_time_factor"] > 0
    assert saved["format"] and saved["stage"] == "drive" and saved["outputs"][:2] == [str(out), str(out.with_suffix(".npz"))]


def _head(subject: Path):
    from gaussian_flametalk.io.subject import Subject

    return Subject.open(subject).head_model()


def test_self_reenactment_writes_aligned_reference(trained_subject, tmp_path):
    out = tmp_path / "self.mp4"
    assert gft_main(["drive", str(trained_subject), "--self-reenact", "--out", str(out), "--no-progress"]) == 0
    _, test = train_test_split(N_FRAMES, 25.0)
    with np.load(out.with_suffix(".npz")) as z:
        np.testing.assert_array_equal(z["frames"], test)
    ref = out.with_name("self.reference.mp4")
    assert len(list(iter_frames(ref, fps=None))) == len(list(iter_frames(out, fps=None))) == len(test)


def test_silent_speech_and_bad_input_are_handled(trained_subject, tmp_path):
    silent = tmp_path / "silent.wav"
    save_wav(silent, np.zeros(SAMPLE_RATE // 2, np.float32))
    meta = drive(DriveConfig(subject=trained_subject, speech=silent, out=tmp_path / "silent.mp4", progress=False))
    assert meta["frames"] == 13
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(Exception, match="bad.mp3"):
        drive(DriveConfig(subject=trained_subject, speech=bad, out=tmp_path / "bad.mp4", progress=False))
    with pytest.raises(ValueError, match=r"\.mp4"):
        drive(DriveConfig(subject=trained_subject, speech=silent, out=tmp_path / "x.avi", progress=False))
    empty = tmp_path / "empty_subject"
    empty.mkdir()
    with pytest.raises(Exception, match="empty_subject"):
        drive(DriveConfig(subject=empty, speech=silent, out=tmp_path / "y.mp4", progress=False))
    assert not (tmp_path / "bad.mp4").exists() and not (tmp_path / "y.mp4").exists()
    assert torch.isfinite(torch.from_numpy(np.load(tmp_path / "silent.npz")["jaw"])).all()


def _cropped_copy(trained_subject: Path, root: Path, crop=(30, 44, 96), size=(160, 200)) -> tuple[Path, np.ndarray]:
    """A copy of the trained SUBJECT whose meta.json says it was cropped from a larger video (written here: the
    SUBJECT frames pasted into a striped frame at the crop box), as gft track records it."""
    import shutil

    import cv2

    from gaussian_flametalk.io.media import write_video
    from gaussian_flametalk.io.subject import Subject

    shutil.copytree(trained_subject, root)
    x, y, s = crop
    w, h = size
    sub = Subject.open(root)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = np.stack([(xx * 5) % 256, (yy * 3) % 256, np.full_like(xx, 90)], -1).astype(np.uint8)
    frames = []
    for i in range(sub.n_frames):
        f = stripes.copy()
        f[y:y + s, x:x + s] = cv2.resize(sub.frame(i), (s, s), interpolation=cv2.INTER_AREA)
        frames.append(f)
    video = root / "source.mp4"
    write_video(video, frames, 25.0)
    meta = json.loads((root / "meta.json").read_text())
    meta["inputs"] = {"video": {"path": str(video), "width": w, "height": h, "fps": 25.0},
                      "crop": {"x": x, "y": y, "size": s}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root, np.stack(frames)


def test_full_frame_output_has_the_source_video_size_count_and_rate(trained_subject, tmp_path):
    root, _ = _cropped_copy(trained_subject, tmp_path / "S")
    source = np.stack(list(iter_frames(root / "source.mp4", fps=None)))  # as decoded (one codec pass less)
    speech = tmp_path / "speech.wav"
    samples, _ = speech_like(0.5, seed=5)
    save_wav(speech, samples)
    out = tmp_path / "full.mp4"
    meta = drive(DriveConfig(subject=root, speech=speech, out=out, progress=False))  # full frame by default
    assert meta["full_frame"] and meta["frame_size"] == [160, 200]
    info = probe_video(out)
    frames = list(iter_frames(out, fps=None))
    assert (info.width, info.height) == (160, 200) and abs(info.fps - 25.0) < 1e-6
    assert len(frames) == meta["frames"] == math.ceil(0.5 * 25.0 - 1e-9)
    assert info.has_audio
    with np.load(out.with_suffix(".npz")) as z:
        src = z["frames"]
    # outside the crop box the original frame is kept (up to the codec), inside the avatar was pasted
    outside = np.ones((200, 160), bool)
    outside[44 - 8:44 + 96 + 8, 30 - 8:30 + 96 + 8] = False
    err = np.mean([np.abs(f.astype(float) - source[i].astype(float))[outside].mean() for f, i in zip(frames, src)])
    assert err < 4.0, err
    inside = np.mean([np.abs(f[44:140, 30:126].astype(float) - source[i][44:140, 30:126]).mean()
                      for f, i in zip(frames, src)])
    assert inside > err  # the avatar (not the source's own head) is in the crop box
    # --no-full-frame: the rendered crop at the avatar's training resolution
    small = drive(DriveConfig(subject=root, speech=speech, out=tmp_path / "crop.mp4", progress=False,
                              full_frame=False))
    assert not small["full_frame"] and probe_video(tmp_path / "crop.mp4").width == 96
    # self-reenactment: the reference is the original frames too
    out2 = tmp_path / "self.mp4"
    drive(DriveConfig(subject=root, self_reenact=True, out=out2, progress=False))
    ref = out2.with_name("self.reference.mp4")
    r_info, o_info = probe_video(ref), probe_video(out2)
    assert (r_info.width, r_info.height) == (o_info.width, o_info.height) == (160, 200)
    _, test = train_test_split(N_FRAMES, 25.0)
    real = list(iter_frames(ref, fps=None))
    assert len(real) == len(test)
    assert np.abs(real[0].astype(float) - source[test[0]].astype(float)).mean() < 4.0
