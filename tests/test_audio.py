"""FlameTalk audio input: formats, rates and channels to 16 kHz mono; clear errors for bad files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from gaussian_flametalk.io.audio import AudioError, load_audio
from gaussian_flametalk.io.media import ffmpeg_exe


def _encode(out: Path, seconds: float, rate: int, channels: int, volume: float = 0.5) -> Path:
    """A sine sweep written by ffmpeg in the format of ``out``'s suffix."""
    src = f"sine=frequency=440:sample_rate={rate}:duration={seconds}"
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src,
           "-af", f"volume={volume}", "-ac", str(channels), str(out)]
    subprocess.run(cmd, check=True)
    return out


@pytest.mark.parametrize("name,rate,channels", [("a.wav", 8000, 2), ("b.flac", 44100, 1), ("c.mp3", 44100, 2),
                                                ("d.ogg", 22050, 1)])
def test_formats_rates_channels(tmp_path, name, rate, channels):
    wave = load_audio(_encode(tmp_path / name, 1.5, rate, channels), 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size / 16000 - 1.5) < 0.06  # mp3 adds a few ms of padding
    assert 0.03 < np.abs(wave).max() <= 1.0  # lavfi sine peaks at 1/8, times the volume


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "corrupt.mp3"
    bad.write_bytes(b"this is not audio" * 50)
    with pytest.raises(AudioError, match="corrupt.mp3.*corrupt or unsupported"):
        load_audio(bad)
    silent = _encode(tmp_path / "silent.wav", 1.0, 16000, 1, volume=0.0)
    with pytest.raises(AudioError, match="silent.wav.*silent"):
        load_audio(silent)
    assert load_audio(silent, allow_silent=True).size == 16000
    short = _encode(tmp_path / "short.wav", 0.01, 16000, 1)
    with pytest.raises(AudioError, match="short.wav.*shorter than"):
        load_audio(short)


def test_shared_speech_clips(shared_dir):
    for path in sorted((shared_dir / "data" / "speech").glob("*")):
        wave = load_audio(path)
        assert wave.size > 16000 and np.abs(wave).max() > 0.01, path
