"""The audio-visual offset of a clip: how late its sound is against the lips, and the sound shifted to match.

A sound recorded apart from the video (``gft track VIDEO --audio FILE``) can be tens of milliseconds off, and a
lip-sync model trained on such a pair learns the delay or, for a few seconds of data, nothing: ../shared x1 with its
separate sound x2 scores an opening-envelope correlation of -0.07 as it is and +0.50 with the sound 80 ms earlier.

Estimate (:func:`estimate_audio_offset`), from the mouth opening of the tracked landmarks
(:func:`.lipsync.mouth_opening`, NaN without a face) and the 16 kHz speech:

1. coarse, whole frames: the correlation curves of the envelope score (:func:`.lipsync.envelope_sync`) and of the
   phonetic score (:func:`.phonetic_sync.phonetic_sync`, PocketSphinx phones; left out, with a note, when
   pocketsphinx is missing) over offsets of +-``max_offset_s``, averaged; the best whole-frame offset;
2. fine, ``step_s`` (5 ms): around it (+-1 frame) the sound itself is shifted (the envelope recomputed from the
   shifted samples, the phone segments moved by the same time) and both scores taken at offset 0; the best shift.

``offset_s > 0`` means the sound is late (it is advanced by that much to line up), as the scores' own sign.
``confidence`` is the combined curve's peak minus its median (the scores' ``peak_minus_median``). The estimate is
*reliable* when the confidence is at least ``clear_confidence`` (0.3), or at least ``min_confidence`` (0.2) with the
two scores' own whole-frame offsets within one frame of each other (without phones: 0.3 alone). Measured (25 fps,
detected landmarks): own sound 0.33-0.53 on v1, v2, v4, x1 (whole clips, also with delays of -120..+300 ms
planted, and v4's first 4, 6, 8 s, where the envelope score alone peaks at +8..+15 frames but the combined curve is
right); another clip's or speech track's sound (16 pairs) at most 0.24, and then with the two scores' offsets apart
(-11/+11 frames, ...), the pairs whose offsets agree at most 0.18.

Applying it (:func:`auto_offset`): an estimate within ``tolerance_s`` (45 ms, a frame at 25 fps and a little) of 0
is taken as in sync and nothing is shifted: speech in sync scores a peak 0-40 ms "late" (the lips lead the sound as
they are formed; measured on the ../shared clips with their own, muxed sound at 25 fps: v1 +35 ms, v2 -5 ms,
v4 +15 ms), and a shift within that would only move a clip that is already right. An unreliable estimate is not
applied either. Otherwise the sound is shifted by the whole estimate (x1 + x2: +80 ms; on x1 any shift of 40-120 ms
trained FlameTalk about equally well, BENCHMARKS.md).

:func:`shift_wave` does the shift sample-exactly at constant length: a late sound loses its first samples and
gets silence at the end, an early one the reverse.
"""

from __future__ import annotations

import numpy as np

from ..io.audio import SAMPLE_RATE
from ..tracking import track as _track
from .lipsync import envelope_sync, mouth_opening, speech_envelope

__all__ = ["auto_offset", "describe", "estimate_audio_offset", "offset_for_tracking", "shift_wave"]


def shift_wave(wave: np.ndarray, offset_s: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The wave advanced by ``offset_s`` seconds (> 0: a late sound made earlier; < 0: delayed), same length:
    ``out[i] = wave[i + n]`` with ``n = round(offset_s * sample_rate)``, zeros where ``i + n`` is outside (the
    shift ``gft track`` applies, :func:`gaussian_flametalk.tracking.track.shift_wave`)."""
    return _track.shift_wave(wave, int(round(offset_s * sample_rate)))


def _phones(wave: np.ndarray, n_frames: int, fps: float):
    """PocketSphinx phone segments of the speech up to one second past the last frame, or (None, why)."""
    from ..flametalk.phonetic import decode_phones

    try:  # pocketsphinx is imported when the first decoder is made
        return decode_phones(np.asarray(wave, np.float32)[: int(round((n_frames / fps + 1.0) * SAMPLE_RATE))]), None
    except ImportError as e:
        return None, f"phonetic score left out ({e})"


def estimate_audio_offset(opening: np.ndarray, wave: np.ndarray, fps: float, *, max_offset_s: float = 0.6,
                          step_s: float = 0.005, min_confidence: float = 0.2, clear_confidence: float = 0.3,
                          phonetic: bool = True) -> dict:
    """How late the sound is against the mouth opening (module docstring).

    opening (T,) from :func:`.lipsync.mouth_opening` of the clip's frames at ``fps`` (NaN without a face); wave: 16 kHz
    mono. Returns ``{"offset_s", "samples", "frames", "reliable", "confidence", "peak", "envelope_offset",
    "phonetic_offset", "envelope_peak", "phonetic_peak", "notes"}``: ``offset_s`` the fine estimate (a multiple of
    ``step_s``), ``samples`` it in samples, ``frames`` it in frames of the clip, the ``*_offset`` the scores' own
    whole-frame offsets (``phonetic_offset`` None when left out). Raises ValueError when too few frames have a face.
    """
    from .phonetic_sync import phonetic_sync

    o = np.asarray(opening, np.float64).reshape(-1)
    x = np.asarray(wave, np.float32).reshape(-1)
    T = o.size
    if fps <= 0 or max_offset_s < 0 or step_s <= 0:
        raise ValueError(f"estimate_audio_offset: need fps > 0, max_offset_s >= 0, step_s > 0; got {fps}, "
                         f"{max_offset_s}, {step_s}")
    max_offset = max(1, int(round(max_offset_s * fps)))
    env = speech_envelope(x, T, fps)
    coarse = [envelope_sync(o, env, fps, max_offset)]
    notes: list[str] = []
    segments = None
    if phonetic:
        segments, why = _phones(x, T, fps)
        if why:
            notes.append(why)
    if segments is not None:
        coarse.append(phonetic_sync(o, segments, fps, max_offset, envelope=env))
    curve = np.mean([c["correlations"] for c in coarse], axis=0)
    offsets = coarse[0]["offsets"]
    best = max(range(len(curve)), key=lambda i: (curve[i], -abs(offsets[i])))  # ties: the smaller shift
    confidence = float(curve[best] - np.median(curve))
    k = offsets[best]

    def score(shift_s: float) -> float:
        shifted = shift_wave(x, shift_s)
        r = [envelope_sync(o, speech_envelope(shifted, T, fps), fps, 0)["peak"]]
        if segments is not None:
            moved = [(p, a - shift_s, b - shift_s) for p, a, b in segments]
            r.append(phonetic_sync(o, moved, fps, 0)["peak"])
        return float(np.mean(r))

    n_steps = int(np.ceil(1.0 / fps / step_s))
    shifts = [(k / fps) + j * step_s for j in range(-n_steps, n_steps + 1)]
    shifts = [round(s / step_s) * step_s for s in shifts if abs(s) <= max_offset / fps + 1e-9]
    fine = [score(s) for s in shifts]
    i = max(range(len(fine)), key=lambda j: (fine[j], -abs(shifts[j])))
    offset_s = float(shifts[i])
    env_k = coarse[0]["offset"]
    ph_k = coarse[1]["offset"] if len(coarse) > 1 else None
    agree = ph_k is not None and abs(env_k - ph_k) <= 1  # without phones there is no second opinion
    reliable = confidence >= clear_confidence or (confidence >= min_confidence and agree)
    if confidence < min_confidence:
        notes.append(f"confidence {confidence:.2f} below {min_confidence:g}: no sync peak (is it this clip's "
                     "speech?)")
    elif not reliable:
        notes.append(f"confidence {confidence:.2f} below {clear_confidence:g} and "
                     + (f"the envelope ({env_k:+d} frames) and phonetic ({ph_k:+d}) scores disagree" if ph_k is not None
                        else "no phonetic score to confirm it"))
    return {"offset_s": offset_s, "samples": int(round(offset_s * SAMPLE_RATE)), "frames": offset_s * fps,
            "reliable": bool(reliable), "confidence": confidence, "peak": float(fine[i]),
            "envelope_offset": env_k, "phonetic_offset": ph_k, "envelope_peak": coarse[0]["peak"],
            "phonetic_peak": coarse[1]["peak"] if ph_k is not None else None, "notes": notes}


def describe(estimate: dict) -> str:
    """One line: the estimate, the two scores' whole-frame offsets and the confidence."""
    ph = estimate["phonetic_offset"]
    return (f"estimated {1000 * estimate['offset_s']:+.0f} ms (envelope {estimate['envelope_offset']:+d}, phonetic "
            f"{'-' if ph is None else format(ph, '+d')} frames; confidence {estimate['confidence']:.2f})")


def offset_for_tracking(points68: np.ndarray, wave: np.ndarray, fps: float) -> tuple[float, str, dict | None]:
    """``gft track --audio-offset auto`` (:data:`gaussian_flametalk.tracking.track.OffsetEstimator`): the shift for
    the detected landmarks (T, 68, 2; NaN without a face) and the sound, why, and the estimate (None when too few
    frames have a face to search)."""
    try:
        estimate = estimate_audio_offset(mouth_opening(points68), wave, fps)
    except ValueError as e:  # too few frames with a face for the search
        return 0.0, f"not estimated: {e}", None
    shift, why = auto_offset(estimate)
    return shift, f"{describe(estimate)}; {why}", estimate


def auto_offset(estimate: dict, tolerance_s: float = 0.045) -> tuple[float, str]:
    """The shift (seconds) ``--audio-offset auto`` applies for an :func:`estimate_audio_offset` result, and why
    (module docstring): 0 when unreliable or within ``tolerance_s`` of 0, else the estimate."""
    off = estimate["offset_s"]
    if not estimate["reliable"]:
        return 0.0, "not applied: " + "; ".join(estimate["notes"])
    if abs(off) <= tolerance_s + 1e-9:
        return 0.0, f"within {1000 * tolerance_s:.0f} ms of 0: taken as in sync"
    return off, "applied"
