"""Audio input for FlameTalk: any common audio (or video) file to 16 kHz mono float32, through the bundled ffmpeg.

    wave = load_audio("speech.mp3")          # (S,) float32 in [-1, 1] at 16 kHz

Formats are whatever the ffmpeg of imageio-ffmpeg decodes (wav, flac, mp3, ogg, m4a/aac, opus, and the sound of
video files); any sample rate and channel count is resampled and down-mixed. Errors name the file and the problem.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from ..errors import GftError
from ..atomic import atomic_write
from .media import ffmpeg_reason, ffmpeg_exe

__all__ = ["SAMPLE_RATE", "AudioError", "load_audio", "check_wave", "save_wav"]

SAMPLE_RATE = 16000
#: Peak amplitude below which a clip counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4


class AudioError(GftError, ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, *, allow_silent: bool = False,
               min_seconds: float = 0.04) -> np.ndarray:
    """Decode the first audio stream of ``path`` to mono float32 at ``sample_rate`` Hz.

    Args:
        path: an audio or video file.
        allow_silent: accept digital silence (inference on a silent clip gives a closed mouth); by default a silent
            file is an error, since nothing can be learnt from it.
        min_seconds: shortest accepted duration (default one 25 fps frame).
    Returns:
        (S,) float32 samples in [-1, 1].
    Raises:
        FileNotFoundError: no such file. AudioError: corrupt, unsupported, no audio stream, too short, silent.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such audio file")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-i", str(path),
           "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(int(sample_rate)), "-f", "f32le", "-acodec", "pcm_f32le",
           "pipe:1"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        log = proc.stderr.decode("utf-8", "replace")
        if "matches no streams" in log:  # a readable file (image, silent video) without sound
            raise AudioError(f"{path}: has no audio stream")
        raise AudioError(f"{path}: corrupt or unsupported audio file ({ffmpeg_reason(log)})")
    wave = np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)
    check_wave(wave, sample_rate, str(path), allow_silent=allow_silent, min_seconds=min_seconds)
    return wave


def check_wave(wave: np.ndarray, sample_rate: int, name: str, *, allow_silent: bool = False,
               min_seconds: float = 0.04) -> None:
    """Raise AudioError (naming ``name``) for a wave that is empty, shorter than ``min_seconds``, not finite, or
    silent (unless ``allow_silent``). ``wave``: (S,)."""
    if wave.size == 0:
        raise AudioError(f"{name}: contains no audio samples (empty or corrupt)")
    if wave.size < min_seconds * sample_rate:
        raise AudioError(f"{name}: audio is {wave.size / sample_rate * 1000:.1f} ms long, shorter than "
                         f"{min_seconds * 1000:.0f} ms (one video frame)")
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if not allow_silent and float(np.abs(wave).max()) < SILENCE_PEAK:
        raise AudioError(f"{name}: audio is silent (peak below {SILENCE_PEAK:g})")


def save_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write (S,) float samples in [-1, 1] as a 16-bit mono wav (clipped), through a temporary name."""
    import wave

    path = Path(path)
    pcm = (np.clip(np.asarray(samples, np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    with atomic_write(path, ".wav") as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return path
