"""``gft track VIDEO --audio FILE``: a silent video tracked with its sound from a separate file (the ../shared clip x1
is such a video, its sound is x2)."""

from __future__ import annotations

import numpy as np
import pytest

from gaussian_flametalk.io.audio import SAMPLE_RATE, AudioError, load_audio, save_wav
from gaussian_flametalk.io.subject import Subject
from gaussian_flametalk.scripts import gft
from gaussian_flametalk.pipeline.track import track  # gft track: the stage with the sync estimate
from gaussian_flametalk.tracking import track as stage

from test_track import _cfg, _ffmpeg


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


@pytest.fixture()
def pattern(tmp_path):
    """A 2 s video with no sound and no face: the --audio checks come before the face scan."""
    clip = tmp_path / "pattern.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=2", "-pix_fmt", "yuv420p", str(clip))
    return clip


def test_bad_audio_fails_before_anything_is_written(tmp_path, pattern):
    out = tmp_path / "s"
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        track(_cfg(pattern, out, audio=tmp_path / "nowhere.wav"))
    text = tmp_path / "notes.wav"
    text.write_text("not a sound")
    with pytest.raises(AudioError, match="notes.wav"):
        track(_cfg(pattern, out, audio=text))
    long = save_wav(tmp_path / "long.wav", _tone(3.0))  # 1 s longer than the video
    with pytest.raises(AudioError, match=r"long\.wav: 3\.00 s of sound for a 2\.00 s video"):
        track(_cfg(pattern, out, audio=long))
    assert not out.exists() and not out.with_name("s.partial").exists()


def test_cli_names_the_audio_file_in_one_line(tmp_path, pattern, capsys):
    short = save_wav(tmp_path / "short.wav", _tone(1.0))
    assert gft.main(["track", str(pattern), "--out", str(tmp_path / "s"), "--audio", str(short),
                     "--head-model", "synthetic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "short.wav" in err[0] and "1.00 s of sound" in err[0]


def test_silent_video_with_audio_file_becomes_a_subject_with_that_sound(tmp_path, shared_dir):
    """v4's first second without its sound, and that sound as flac: the SUBJECT's audio.wav is the flac's samples (a
    length within the 0.5 s tolerance is accepted as it is)."""
    src = shared_dir / "data/videos/v4_trump_oval_office_10s.mp4"
    silent = tmp_path / "silent.mp4"
    _ffmpeg("-i", str(src), "-t", "1", "-an", "-c:v", "copy", str(silent))
    sound = tmp_path / "sound.flac"
    _ffmpeg("-i", str(src), "-t", "0.8", "-vn", "-ac", "2", "-ar", "44100", str(sound))
    out = tmp_path / "s"
    track(_cfg(silent, out, shared_dir, overlay=False, audio=sound))
    subject = Subject.open(out)
    assert subject.audio_path is not None and subject.meta["has_audio"]
    assert subject.meta["inputs"]["audio"]["path"] == str(sound.resolve())
    got, want = load_audio(subject.audio_path), load_audio(sound)
    assert got.size == want.size and np.abs(got - want).max() < 2e-4  # 16-bit wav of the same 16 kHz mono samples

    # without --audio a silent video is tracked as before: no audio.wav
    out2 = tmp_path / "s2"
    track(_cfg(silent, out2, shared_dir, overlay=False))
    assert Subject.open(out2).audio_path is None and not (out2 / "audio.wav").exists()


# ------------------------------------------------------------------------------------------------ --audio-offset

def test_bad_audio_offset_fails_in_one_line_naming_the_option(tmp_path, pattern, capsys):
    for bad, why in (("soon", "neither auto nor a number"), ("3", "out of range"), ("nan", "out of range"),
                     ("-inf", "out of range")):
        with pytest.raises(ValueError, match=f"--audio-offset: '{bad}' is {why}"):
            _cfg(pattern, tmp_path / "s", audio_offset=bad)
        assert gft.main(["track", str(pattern), "--out", str(tmp_path / "s"), f"--audio-offset={bad}",
                         "--head-model", "synthetic"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--audio-offset" in err[0] and bad in err[0], err
    # the tracking stage alone has no sync estimate (eval sits above it): auto is refused before any work, a fixed
    # offset is not
    wav = save_wav(tmp_path / "tone.wav", _tone(2.0))
    for cfg in (_cfg(pattern, tmp_path / "s", audio=wav), _cfg(pattern, tmp_path / "s", audio_offset="auto")):
        with pytest.raises(ValueError, match="--audio-offset auto needs the sync estimate"):
            stage.track(cfg)
    with pytest.raises(Exception, match="face"):  # past the offset check: the pattern has no face
        stage.track(_cfg(pattern, tmp_path / "s", audio=wav, audio_offset="0.1"))
    assert not (tmp_path / "s").exists()
    for good in ("auto", "AUTO", "0", "-0.04", "2"):
        assert _cfg(pattern, tmp_path / "s", audio_offset=good).audio_offset == good


def test_planted_delay_of_a_separate_sound_is_found_and_removed(tmp_path, shared_dir):
    """v4's first 8 s without sound, and its own sound 120 ms late as a separate file (3 frames at 25 fps): the
    default (auto with --audio) finds the delay within a frame and writes the sound advanced by exactly the samples
    it records, so the lips and the sound line up again (the sync score of the written audio peaks at 0 +-1 frame,
    that of the file given at +3 +-1)."""
    from gaussian_flametalk.eval.av_offset import shift_wave
    from gaussian_flametalk.eval.lipsync import envelope_sync, mouth_opening, speech_envelope

    src = shared_dir / "data/videos/v4_trump_oval_office_10s.mp4"
    silent = tmp_path / "silent.mp4"
    _ffmpeg("-i", str(src), "-t", "8", "-an", "-c:v", "copy", str(silent))
    own = load_audio(src)[: 8 * SAMPLE_RATE]
    late = save_wav(tmp_path / "late.wav", shift_wave(own, -0.120))  # 1920 samples of silence first
    out = tmp_path / "s"
    # landmark detection is what the estimate uses: a cheap fit (synthetic head, few iterations) is enough here
    track(_cfg(silent, out, overlay=False, audio=late, resolution=256, rigid_iters=5, full_iters=2,
               smooth_iters=5))
    subject = Subject.open(out)
    rec = subject.meta["audio_offset"]
    assert rec["requested"] == "auto" and rec["default"] and rec["estimate"]["reliable"], rec
    # v4's own sound is estimated +15..+25 ms (in sync: the lips lead the sound); 120 ms planted on top
    assert abs(rec["applied_s"] - 0.120) <= 0.040 + 0.025, rec
    assert rec["applied_samples"] == round(rec["applied_s"] * SAMPLE_RATE) == rec["estimate"]["samples"]
    got, given = load_audio(subject.audio_path), load_audio(late)
    assert got.size == given.size
    want = shift_wave(given, rec["applied_s"])
    assert np.abs(got - want).max() < 2e-4  # sample exact: the given samples, advanced
    assert np.abs(got[-rec["applied_samples"]:]).max() == 0  # silence fills the end
    with np.load(out / "landmarks.npz") as z:
        opening = mouth_opening(np.where(z["found"][:, None, None], z["points68"], np.nan))
    T, fps = len(opening), subject.fps
    assert abs(envelope_sync(opening, speech_envelope(got, T, fps), fps)["offset"]) <= 1
    assert abs(envelope_sync(opening, speech_envelope(given, T, fps), fps)["offset"] - 3) <= 1

    # a fixed offset is applied as given, sample exact; 0 keeps the file's samples
    out2 = tmp_path / "s2"
    track(_cfg(silent, out2, overlay=False, audio=late, audio_offset="-0.0503", resolution=256, rigid_iters=5,
               full_iters=2, smooth_iters=5))
    rec2 = Subject.open(out2).meta["audio_offset"]
    assert rec2["applied_samples"] == -805 and "estimate" not in rec2 and not rec2["default"]
    got2 = load_audio(Subject.open(out2).audio_path)
    assert np.abs(got2 - shift_wave(given, -805 / SAMPLE_RATE)).max() < 2e-4 and np.abs(got2[:805]).max() == 0


def test_batch_tracks_with_the_sync_estimate(tmp_path, pattern):
    """``gft batch``'s track stage is gft track's, with the sync estimate: a manifest's ``audio`` reaches the sound's
    checks (here: too short) instead of the bare stage's refusal of ``--audio-offset auto``."""
    from gaussian_flametalk.pipeline.batch_stages import STAGE_CONFIGS

    short = save_wav(tmp_path / "short.wav", _tone(1.0))
    with pytest.raises(ValueError, match="sync estimate"):
        stage.track(_cfg(pattern, tmp_path / "s", audio=short))
    config_cls, run = STAGE_CONFIGS["track"]
    with pytest.raises(AudioError, match=r"short\.wav: 1\.00 s of sound"):
        run(_cfg(pattern, tmp_path / "s", audio=short))
