"""``gft track VIDEO --audio FILE``: a silent video tracked with its sound from a separate file (the ../shared clip x1
is such a video, its sound is x2)."""

from __future__ import annotations

import numpy as np
import pytest

from gaussian_flametalk.io.audio import SAMPLE_RATE, AudioError, load_audio, save_wav
from gaussian_flametalk.io.subject import Subject
from gaussian_flametalk.scripts import gft
from gaussian_flametalk.tracking.track import track

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
