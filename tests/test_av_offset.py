"""The audio-visual offset estimate behind ``gft track --audio-offset auto`` (gaussian_flametalk.eval.av_offset)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from gaussian_flametalk.eval.av_offset import auto_offset, estimate_audio_offset, shift_wave

FPS, SR = 25.0, 16000


def test_shift_wave_is_sample_exact_at_constant_length():
    x = np.arange(1, 11, dtype=np.float32)
    assert shift_wave(x, 3 / SR).tolist() == [4, 5, 6, 7, 8, 9, 10, 0, 0, 0]  # late sound advanced
    assert shift_wave(x, -2 / SR).tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]  # early sound delayed
    assert shift_wave(x, 0.0).tolist() == x.tolist() and shift_wave(x, 0.4 / SR).tolist() == x.tolist()
    assert not shift_wave(x, 10 / SR).any() and not shift_wave(x, -12 / SR).any()
    assert shift_wave(x, 1 / SR).dtype == np.float32


def _talk(seed: int, seconds: float = 16.0, late_s: float = 0.0):
    """A mouth opening with a syllable rhythm (3-6 Hz) and a 'speech' wave: noise in the 1-4 kHz band whose amplitude
    follows that opening, ``late_s`` seconds late."""
    rng = np.random.default_rng(seed)
    T = int(seconds * FPS)
    t_frames = (np.arange(T) + 0.5) / FPS
    fine = np.arange(int(seconds * 200)) / 200.0
    sos = signal.butter(2, [3.0, 6.0], "bandpass", fs=200.0, output="sos")
    rhythm = signal.sosfiltfilt(sos, rng.normal(size=fine.size))
    rhythm = np.maximum(rhythm / rhythm.std(), 0.0)
    opening = np.interp(t_frames, fine, rhythm)
    ts = np.arange(int(seconds * SR)) / SR
    amp = 0.01 + np.interp(ts - late_s, fine, rhythm, left=0.0, right=0.0)
    carrier = signal.sosfiltfilt(signal.butter(4, [1000, 4000], "bandpass", fs=SR, output="sos"),
                                 rng.normal(size=ts.size))
    wave = (0.05 * amp * carrier).astype(np.float32)
    return opening + rng.normal(0, 0.05, T), wave


@pytest.mark.parametrize("late_ms", [0, 70, -90, 230])
def test_a_planted_offset_is_found_to_the_step_without_phones(late_ms):
    opening, wave = _talk(0, late_s=late_ms / 1000)
    est = estimate_audio_offset(opening, wave, FPS, phonetic=False)
    assert abs(est["offset_s"] - late_ms / 1000) <= 0.010, est
    assert est["samples"] == round(est["offset_s"] * SR) and est["frames"] == pytest.approx(est["offset_s"] * FPS)
    assert est["reliable"] and est["confidence"] > 0.3 and est["phonetic_offset"] is None
    assert abs(est["envelope_offset"] - late_ms / 40) <= 1
    shift, why = auto_offset(est)
    if abs(late_ms) <= 45:
        assert shift == 0.0 and "in sync" in why
    else:
        assert shift == est["offset_s"] and why == "applied"
        realigned = estimate_audio_offset(opening, shift_wave(wave, shift), FPS, phonetic=False)
        assert abs(realigned["offset_s"]) <= 0.010


def test_unrelated_sound_is_not_applied():
    opening, _ = _talk(0)
    _, other = _talk(1)
    est = estimate_audio_offset(opening, other, FPS, phonetic=False)
    assert not est["reliable"] and est["confidence"] < 0.3, est  # envelope alone: 0.3 needed
    shift, why = auto_offset(est)
    assert shift == 0.0 and why.startswith("not applied: confidence")
    silent = estimate_audio_offset(opening, np.zeros_like(other), FPS, phonetic=False)
    assert not silent["reliable"] and auto_offset(silent)[0] == 0.0
    with pytest.raises(ValueError, match="have a face"):
        estimate_audio_offset(np.full(opening.size, np.nan), other, FPS, phonetic=False)


# ----------------------------------------------------------------------------------------------- a real clip

@pytest.fixture(scope="module")
def v4(shared_dir):
    """v4 (10 s, English): the inner-lip opening of mediapipe's landmarks at 25 fps and its own sound."""
    from gaussian_flametalk.eval.lipsync import mouth_opening
    from gaussian_flametalk.io.audio import load_audio
    from gaussian_flametalk.io.media import iter_frames
    from gaussian_flametalk.tracking.landmarks import MediapipeDetector, detect_clip

    path = shared_dir / "data" / "videos" / "v4_trump_oval_office_10s.mp4"
    with MediapipeDetector(max_num_faces=1) as det:
        clip = detect_clip(iter_frames(path, fps=FPS), det, progress=False)
    opening = mouth_opening(clip.points68.astype(np.float64))
    return opening, load_audio(path)[: len(opening) * 640]


def test_real_clip_in_sync_is_left_alone_and_planted_delays_are_found(v4, shared_dir):
    pytest.importorskip("pocketsphinx")
    from gaussian_flametalk.io.audio import load_audio

    opening, wave = v4
    own = estimate_audio_offset(opening, wave, FPS)
    # in sync (muxed sound): the lips lead the sound by a little, within a frame; auto shifts nothing
    assert own["reliable"] and abs(own["offset_s"]) <= 0.040 and auto_offset(own)[0] == 0.0, own
    assert own["phonetic_offset"] is not None and abs(own["phonetic_offset"]) <= 1
    for planted in (0.120, -0.080, 0.300):  # the sound made late (> 0) or early
        est = estimate_audio_offset(opening, shift_wave(wave, -planted), FPS)
        assert est["reliable"] and abs(est["offset_s"] - own["offset_s"] - planted) <= 0.015, (planted, est)
        assert auto_offset(est)[0] == est["offset_s"]
    # other speech (the ../shared speech tracks, cut to the clip's length): never applied
    for path in sorted((shared_dir / "data" / "speech").glob("*")):
        other = load_audio(path)[: wave.size]
        other = np.pad(other, (0, wave.size - other.size))
        est = estimate_audio_offset(opening, other, FPS)
        assert auto_offset(est)[0] == 0.0 and not est["reliable"], (path.name, est)


def test_without_pocketsphinx_the_envelope_alone_decides(monkeypatch):
    import gaussian_flametalk.flametalk.phonetic as phonetic

    def missing(*a, **k):
        raise ImportError("the phonetic encoder needs pocketsphinx: pip install 'pocketsphinx==5.1.1'")

    monkeypatch.setattr(phonetic, "decode_phones", missing)
    opening, wave = _talk(0, late_s=0.1)
    est = estimate_audio_offset(opening, wave, FPS)
    assert est["phonetic_offset"] is None and any("pocketsphinx" in n for n in est["notes"])
    assert abs(est["offset_s"] - 0.1) <= 0.010 and est["reliable"]
