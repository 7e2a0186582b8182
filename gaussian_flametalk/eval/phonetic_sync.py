"""A weight-free phonetic lip-sync score: does the mouth open on open vowels and close on bilabials?

The envelope score (:mod:`.lipsync`) rewards a mouth that opens with loudness, which a jaw driven by the speech
energy alone achieves. This score asks for the phones instead: the speech is decoded into phone segments by
PocketSphinx's phone loop (:func:`~gaussian_flametalk.flametalk.phonetic.decode_phones`, English phones, used as an
approximation for any language), and each video frame gets

- the expected openness: the per-phone openness of :data:`~gaussian_flametalk.flametalk.phonetic.OPENNESS`
  (open vowels 0.75-1, mid and close vowels 0.35-0.65, consonants 0.1-0.5, p/b/m and silence 0) averaged with a
  triangular kernel of half-width one frame around the frame's centre;
- the share of that kernel on open vowels (AA AE AH AO AW AY) and on bilabials (P B M, where the lips must close).

Scores, from the mouth opening of :func:`.lipsync.mouth_opening` (inner lips over the inter-ocular distance):

- ``peak`` / ``offset`` / ``peak_minus_median``: both series are high-passed exactly as the envelope score does
  (minus a centred moving average over ``highpass_s`` = 0.36 s) and the Pearson correlation of ``opening[t]`` with
  ``expected[t + k]`` is taken for k in ``-max_offset..max_offset``; ``offset`` is the best k (k > 0: the sound is
  late by k frames), ``peak`` its correlation, ``peak_minus_median`` the confidence. ``score`` is ``peak``.
- ``vowel_bilabial_auc``: at that offset, the probability that a frame on an open vowel (share >= 0.5) has a
  larger high-passed opening than a frame on a bilabial (share >= 0.5), ties counted half (the Mann-Whitney AUC:
  0.5 is chance, 1 is a mouth that is always more open on open vowels than on p/b/m), with the two frame counts
  and the mean high-passed openings of the two classes. It rests on few frames (bilabials are short: 15-60 frames in
  a 10-20 s clip), so read it with its counts.
- ``beyond_loudness``: at that offset, the correlation of the (high-passed) opening with the part of the expected
  openness that the speech envelope of :func:`.lipsync.speech_envelope` does not predict (least-squares residual of
  the high-passed expected openness on the high-passed envelope): phonetic information a mouth that opens with
  loudness lacks. Open vowels are loud and p/b/m quiet, so such a mouth scores a ``peak`` (and an AUC) like real
  footage; this figure is what tells them apart, where the clip's lips carry it (not on v2, below).

Measured on the real ../shared clips (whole clips, mediapipe landmarks at 25 fps, inner lips; own audio vs the
other three clips' audio and the four ../shared/data/speech tracks cut to the same length, vs the own audio delayed,
and a mouth that opens with loudness, ``clip(envelope_dB - max + 40, 0) / 40``; tests/test_phonetic.py checks v1
and v4). ``peak`` (offset in brackets), and ``beyond_loudness``:

========================  ===========  ==========================  ==============  ===========  =============
clip                      own          highest of 7 other tracks   delayed +5/-4   own AUC      loudness mouth
========================  ===========  ==========================  ==============  ===========  =============
v1 German anchor, 20 s    0.50 (+1)    0.19 (v4's audio)           0.53 (+6/-3)    0.86         0.53 (0)
  beyond loudness         0.37         0.16                        0.40            (59 / 66)    0.02
v2 English, 20 s          0.23 (0)     0.17 (x2's audio)           0.28 (+5/-4)    0.63         0.51 (0)
  beyond loudness         0.07         0.17                        0.11            (33 / 32)    0.03
v4 English, 10 s          0.47 (+1)    0.34 (v1's; speech: 0.25)   0.48 (+5/-4)    0.79         0.45 (0)
  beyond loudness         0.37         0.35 (v1's; speech: 0.28)   0.38            (30 / 14)    0.01
x1 + x2's audio, 30 s     0.51 (+2)    0.18 (v4's audio)           0.52 (+7/-2)    0.81         0.55 (0)
  beyond loudness         0.28         0.14                        0.27            (104 / 59)   0.01
========================  ===========  ==========================  ==============  ===========  =============

(AUC counts: open-vowel / bilabial frames. x1's own sound, x2, is itself 2 frames late, as the envelope score also
finds.) Real footage scores clearly higher with its own audio on every clip; the planted delays are found. The other
tracks' AUCs spread from 0.40 to 0.97 (few bilabial frames each), so the AUC alone does not tell own from other
audio. A loudness-driven mouth reaches the real footage's ``peak`` (and AUC) but keeps nothing beyond loudness
(0.01-0.03 against 0.28-0.37 for real lips on v1, v4, x1; v2's lips carry little beyond loudness, 0.07).
"""

from __future__ import annotations

import numpy as np

from ..flametalk.phonetic import N_PHONES, PHONE_CLASS, VISEMES, Segment, decode_phones, phone_features
from .lipsync import _highpass, _pearson

__all__ = ["expected_openness", "phonetic_sync", "phonetic_sync_of_wave"]

_CLASSES = tuple(VISEMES)


def expected_openness(segments: list[Segment], n_frames: int, fps: float) -> dict[str, np.ndarray]:
    """Per video frame (T,): ``expected`` openness, ``open`` and ``bilabial`` shares (module docstring)."""
    if n_frames < 1 or fps <= 0:
        raise ValueError(f"expected_openness: need n_frames >= 1 and fps > 0, got {n_frames}, {fps}")
    t = (np.arange(n_frames) + 0.5) / fps
    f = phone_features(segments, 0, times=t, kernel_s=1.0 / fps).astype(np.float64)
    return {"expected": f[:, -1], "open": f[:, N_PHONES + _CLASSES.index("open")],
            "bilabial": f[:, N_PHONES + _CLASSES.index("bilabial")]}


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """y[t] = x[t + k] (NaN where t + k is outside)."""
    y = np.full(x.size, np.nan)
    if k >= 0:
        y[: x.size - k] = x[k:]
    else:
        y[-k:] = x[: x.size + k]
    return y


def _auc(a: np.ndarray, b: np.ndarray) -> float:
    """P(a > b) + P(a == b) / 2 over all pairs (Mann-Whitney, from ranks)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([a, b]))
    return float((ranks[: a.size].sum() - a.size * (a.size + 1) / 2) / (a.size * b.size))


def _beyond_loudness(oh: np.ndarray, eh: np.ndarray, envh: np.ndarray) -> float:
    """Correlation of the opening with the part of the expected openness that the loudness does not predict
    (least-squares residual of ``eh`` on ``[envh, 1]``), over the frames where all three exist."""
    ok = np.isfinite(oh) & np.isfinite(eh) & np.isfinite(envh)
    if ok.sum() < 3:
        return 0.0
    design = np.stack([envh[ok], np.ones(int(ok.sum()))], 1)
    resid = eh[ok] - design @ np.linalg.lstsq(design, eh[ok], rcond=None)[0]
    return _pearson(oh[ok], resid)[0]


def phonetic_sync(opening: np.ndarray, segments: list[Segment], fps: float, max_offset: int = 15, *,
                  highpass_s: float = 0.36, envelope: np.ndarray | None = None) -> dict:
    """Phonetic sync of a clip: opening (T,) from :func:`.lipsync.mouth_opening` (NaN without a face), the phone
    segments of its speech (:func:`~gaussian_flametalk.flametalk.phonetic.decode_phones`).

    Returns ``{"score", "offset", "peak", "median", "peak_minus_median", "offsets", "correlations", "frames_used",
    "frames_without_face", "vowel_bilabial_auc", "open_frames", "bilabial_frames", "open_mean", "bilabial_mean",
    "beyond_loudness", "phone_counts"}``; ``vowel_bilabial_auc`` and the means are None when either class has no
    frame; ``beyond_loudness`` (module docstring) needs ``envelope`` (T,) from :func:`.lipsync.speech_envelope` of the
    same speech, else it is None.
    """
    o = np.asarray(opening, np.float64).reshape(-1)
    T = o.size
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0, got {max_offset}")
    if int(np.isfinite(o).sum()) < 2 * max_offset + 3:
        raise ValueError(f"phonetic_sync: only {int(np.isfinite(o).sum())} of {T} frames have a face; need at "
                         f"least {2 * max_offset + 3} for offsets of +-{max_offset} frames")
    ex = expected_openness(segments, T, fps)
    width = max(1, round(highpass_s * fps))
    width += 1 - width % 2
    oh, eh = _highpass(o, width), _highpass(ex["expected"], width)
    offsets = list(range(-max_offset, max_offset + 1))
    corr, used = [], []
    for k in offsets:
        r, n = _pearson(oh, _shift(eh, k))
        corr.append(r)
        used.append(n)
    c = np.asarray(corr)
    best = max(range(len(c)), key=lambda i: (c[i], -abs(offsets[i])))
    k = offsets[best]
    median = float(np.median(c))
    op_share, bil_share = _shift(ex["open"], k), _shift(ex["bilabial"], k)
    ok = np.isfinite(oh)
    a = oh[ok & (op_share >= 0.5)]
    b = oh[ok & (bil_share >= 0.5)]
    both = a.size > 0 and b.size > 0
    beyond = None
    if envelope is not None:
        env = np.asarray(envelope, np.float64).reshape(-1)[:T]
        env = np.pad(env, (0, T - env.size), constant_values=float(env.min(initial=0.0)))
        beyond = _beyond_loudness(oh, _shift(eh, k), _shift(_highpass(env, width), k))
    counts: dict[str, int] = {}
    for phone, s, e in segments:
        if s < T / fps:
            cls = PHONE_CLASS[phone]
            counts[cls] = counts.get(cls, 0) + 1
    return {"score": float(c[best]), "offset": k, "peak": float(c[best]), "median": median,
            "peak_minus_median": float(c[best]) - median, "offsets": offsets, "correlations": c.tolist(),
            "frames_used": used[best], "frames_without_face": int((~np.isfinite(o)).sum()),
            "vowel_bilabial_auc": _auc(a, b) if both else None, "open_frames": int(a.size),
            "bilabial_frames": int(b.size), "open_mean": float(a.mean()) if a.size else None,
            "bilabial_mean": float(b.mean()) if b.size else None, "beyond_loudness": beyond,
            "phone_counts": counts}


def phonetic_sync_of_wave(opening: np.ndarray, wave: np.ndarray, fps: float, max_offset: int = 15, **kw) -> dict:
    """:func:`phonetic_sync` of a clip and its 16 kHz speech (decoded up to one second past the last frame)."""
    from .lipsync import speech_envelope

    T = np.asarray(opening).size
    x = np.asarray(wave, np.float32)[: int(round((T / fps + 1.0) * 16000))]
    kw.setdefault("envelope", speech_envelope(x, T, fps))
    return phonetic_sync(opening, decode_phones(x), fps, max_offset, **kw)
