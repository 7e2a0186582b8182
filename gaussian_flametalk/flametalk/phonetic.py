"""Speaker-independent phone features from PocketSphinx's phone-loop decoder (no download: the en-us acoustic
model, its phone set and a phone language model ship inside the ``pocketsphinx`` wheel).

    segments = decode_phones(wave)                  # [(phone, start_s, end_s), ...] covering the whole clip
    grid = phone_features(segments, n_frames, fps)  # (2 n_frames, N_FEATURES) on the encoders' half-frame grid
    encoder = PhoneticEncoder(128)                  # AudioEncoder: wave (B, S) 16 kHz -> (B, 2 n_frames, 128)

Decoding
--------
PocketSphinx 5 in ``allphone`` mode (context-independent phones, the packaged ``en-us-phone.lm.bin`` phone
trigram, language weight 2, beams 1e-20, batch cepstral mean normalisation) labels every 10 ms frame of the audio
with one of :data:`PHONES`: the 39 CMU/ARPAbet phones of the en-us model plus ``SIL`` and the two noise units
``+NSN+`` (noise) and ``+SPN+`` (speech-like noise). Frame ``i`` is the 25.6 ms analysis window starting at sample
160 i; a segment of frames ``a..b`` is reported as ``[a/100 + 7.8 ms, (b+1)/100 + 7.8 ms)``, the span of those
window centres. A deterministic noise floor (Gaussian, std 1e-3 of full scale, about -60 dBFS, fixed seed) is added
before decoding: digital silence (synthetic speech, zero padding) otherwise throws the acoustic model off (on
espeak-ng's "mama papa" the stop closures, exact zeros, were read as silence and the p's were lost). The model is
English; other languages are decoded as the nearest English phones, which is what a mouth needs (on the German
clip v1 the phonetic sync score of :mod:`gaussian_flametalk.eval.phonetic_sync` with its own sound is 0.50, within the
English clips' 0.23-0.51: bilabials and open vowels come out where the speaker's lips close and open).

Long audio is decoded in windows of ``window_s`` (30 s) starting every ``window_s - overlap_s`` (overlap 4 s);
consecutive windows are stitched at the middle of their overlap (each window's segments clipped there), so memory
and latency stay bounded and every stitch point has at least 2 s of audio on both sides.

Features
--------
For feature ``k`` at time ``(k + 0.5) / (2 fps)`` (the encoders' half-frame grid): the 100 Hz one-hot phone labels
averaged with a triangular kernel of half-width ``kernel_s`` (40 ms; the weights of the frames whose centres lie
within it, normalised), i.e. a soft one-hot over :data:`PHONES` (42 channels), then the same weights applied to the
viseme classes of :data:`VISEMES` (12 channels) and to the expected openness of :data:`OPENNESS` (1 channel):
:data:`N_FEATURES` = 55 channels in [0, 1]. Times past the end of the audio read as silence.

Encoder and latency
-------------------
:class:`PhoneticEncoder` puts a small learnable convolution stack (like ``mel``'s) on those features. Decoding is
not differentiable and is cached per waveform (SHA-1 of the samples, LRU of ``cache_size`` entries); a waveform
handed to :meth:`PhoneticEncoder.prepare` is decoded once and any later input that is an exact piece of it (a
training crop, zero-padded at the clip's ends) takes its phones from that decoding, so training epochs never
re-decode (``gft train-talk`` would call ``prepare`` on each subject's audio; without it every new crop is
decoded once and then cached). Streaming/windowed inference (:class:`~.model.StreamingPredictor`) gives each window
``context_samples`` of audio on both sides: the decoder's lookahead ``lookahead_s`` (1 s) plus the kernel,
convolution reach and interpolation step, 18240 samples = 1.14 s (29 frames at 25 fps; ``mel``'s is 0.17 s, 5
frames). Measured on ../shared v1 and v2: decoding 4 s windows with 1 s either side labels 86-88 % of the
half-frames with the phone the whole-clip decoding gives (0.5 s: 79-83 %, 0.25 s: 77-84 %; the rest are boundary
shifts of a frame or two and substitutions between similar phones), and 8 s windows overlapping by 2 s, stitched as
above, agree with one-pass decoding on 83-90 %. The streaming latency it adds is that context (the first frames of
a ``window``-frame window come out after ``window + 29`` frames of audio instead of ``window + 5``) plus the
decoding time of a window: PocketSphinx runs at about 0.07-0.1 x real time on one CPU core (1.4-1.9 s for a 20 s
clip), 0.3-0.6 s for a 4 s window with its context.

``mel+phonetic`` (:class:`MelPhoneticEncoder`): the ``mel`` stream (PESTalk's frequency stream) and the phonetic
stream (the pretrained speech model), each ``dim`` channels, concatenated: ``2 dim`` features.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ..io.audio import SAMPLE_RATE
from .encoders import AudioEncoder, MelEncoder

__all__ = ["FRAME_OFFSET_S", "MelPhoneticEncoder", "N_FEATURES", "OPENNESS", "PHONES", "PHONE_CLASS",
           "PhoneticEncoder", "Segment", "VISEMES", "decode_phones", "frame_labels", "phone_features"]

Segment = tuple[str, float, float]

#: The phone inventory: silence, the two noise units of the en-us model, the 39 CMU/ARPAbet phones.
PHONES: tuple[str, ...] = (
    "SIL", "+NSN+", "+SPN+",
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY", "JH",
    "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH",
)
_INDEX = {p: i for i, p in enumerate(PHONES)}

#: Viseme classes (what the lips and jaw do), each a tuple of phones; every phone is in exactly one class.
VISEMES: dict[str, tuple[str, ...]] = {
    "silence": ("SIL", "+NSN+"),
    "bilabial": ("P", "B", "M"),  # lips closed
    "labiodental": ("F", "V"),  # lower lip to the upper teeth
    "dental": ("TH", "DH"),
    "alveolar": ("T", "D", "N", "L", "S", "Z"),
    "postalveolar": ("SH", "ZH", "CH", "JH"),  # lips slightly protruded
    "velar": ("K", "G", "NG", "HH"),
    "rounded": ("W", "UW", "UH", "OW", "OY"),  # lips rounded
    "rhotic": ("R", "ER"),
    "front": ("IY", "IH", "EY", "EH", "Y"),  # spread lips, mid jaw
    "open": ("AA", "AE", "AH", "AO", "AW", "AY"),  # open jaw
    "speech_noise": ("+SPN+",),
}
#: phone -> its viseme class
PHONE_CLASS: dict[str, str] = {p: c for c, ps in VISEMES.items() for p in ps}
assert sorted(PHONE_CLASS) == sorted(PHONES), "every phone in exactly one viseme class"
_CLASSES = tuple(VISEMES)
_CLASS_INDEX = {c: i for i, c in enumerate(_CLASSES)}

#: Expected mouth opening per phone, 0 (lips closed) to 1 (widest jaw), from articulatory phonetics: open vowels
#: highest, then mid and close vowels, rounded vowels and approximants, consonants with a raised jaw, labiodentals,
#: and bilabials and silence closed.
OPENNESS: dict[str, float] = {
    "SIL": 0.0, "+NSN+": 0.0, "+SPN+": 0.4,
    "P": 0.0, "B": 0.0, "M": 0.0,
    "F": 0.1, "V": 0.1,
    "TH": 0.3, "DH": 0.3,
    "T": 0.3, "D": 0.3, "N": 0.3, "L": 0.35, "S": 0.15, "Z": 0.15,
    "SH": 0.25, "ZH": 0.25, "CH": 0.25, "JH": 0.25,
    "K": 0.4, "G": 0.4, "NG": 0.35, "HH": 0.5,
    "W": 0.2, "UW": 0.3, "UH": 0.45, "OW": 0.6, "OY": 0.6,
    "R": 0.35, "ER": 0.45,
    "IY": 0.35, "IH": 0.45, "EY": 0.55, "EH": 0.65, "Y": 0.35,
    "AA": 1.0, "AE": 0.9, "AH": 0.75, "AO": 0.85, "AW": 0.9, "AY": 0.85,
}
assert sorted(OPENNESS) == sorted(PHONES)

N_PHONES, N_CLASSES = len(PHONES), len(_CLASSES)
N_FEATURES = N_PHONES + N_CLASSES + 1

FRAME_RATE = 100  # PocketSphinx frames per second
#: half the 25.6 ms analysis window minus half the 10 ms hop: where a frame's span starts after i / 100 s
FRAME_OFFSET_S = (410 / 2 - 80) / SAMPLE_RATE
NOISE_STD = 1e-3

# one-hot lookup tables: phone index -> (phone one-hot, class one-hot, openness)
_TABLE = np.zeros((N_PHONES, N_FEATURES), np.float32)
for _p, _i in _INDEX.items():
    _TABLE[_i, _i] = 1.0
    _TABLE[_i, N_PHONES + _CLASS_INDEX[PHONE_CLASS[_p]]] = 1.0
    _TABLE[_i, -1] = OPENNESS[_p]


# ------------------------------------------------------------------------------------------------ decoding

_configs: dict[tuple, object] = {}
_decoder_lock = threading.Lock()


def _decoder(lw: float, beam: float):
    """A fresh PocketSphinx decoder in allphone mode with the packaged en-us model. Fresh for every utterance: a
    reused decoder carries state from the utterances before (measured: the same clip decoded after another gave other
    phones), which would make a clip's features depend on what the process decoded earlier."""
    key = (lw, beam)
    with _decoder_lock:
        try:
            import pocketsphinx
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ImportError("the phonetic encoder needs pocketsphinx: pip install 'pocketsphinx==5.1.1'") from e
        if key not in _configs:
            model = pocketsphinx.get_model_path("en-us")
            _configs[key] = dict(hmm=f"{model}/en-us", allphone=f"{model}/en-us-phone.lm.bin", lw=lw, beam=beam,
                                 pbeam=beam, cmn="batch", loglevel="FATAL")
        return pocketsphinx.Decoder(pocketsphinx.Config(**_configs[key]))


def _noise(n: int) -> np.ndarray:
    """The fixed noise floor, a function of the sample index only (so pieces of a clip get the same samples)."""
    period = SAMPLE_RATE * 8
    base = np.random.default_rng(12345).normal(0.0, NOISE_STD, period).astype(np.float32)
    reps = -(-n // period)
    return np.tile(base, reps)[:n]


def _decode_one(wave: np.ndarray, lw: float, beam: float) -> list[Segment]:
    """One utterance: (S,) float in [-1, 1] -> segments covering [0, S / 16000) (first start 0, last end the end)."""
    duration = wave.size / SAMPLE_RATE
    if wave.size < 410:  # shorter than one analysis window
        return [("SIL", 0.0, duration)]
    pcm = np.clip(wave + _noise(wave.size), -1.0, 1.0)
    pcm = np.round(pcm * 32767.0).astype("<i2").tobytes()
    dec = _decoder(lw, beam)
    with _decoder_lock:
        dec.start_utt()
        dec.process_raw(pcm, no_search=False, full_utt=True)
        dec.end_utt()
        raw = [(s.word, s.start_frame, s.end_frame) for s in dec.seg()]
    out: list[Segment] = []
    for word, a, b in raw:
        phone = word if word in _INDEX else "SIL"  # anything unexpected reads as silence
        start, end = a / FRAME_RATE + FRAME_OFFSET_S, (b + 1) / FRAME_RATE + FRAME_OFFSET_S
        _append(out, phone, start, end)
    return _cover(out, duration)


def _append(out: list[Segment], phone: str, start: float, end: float) -> None:
    """Append a segment, merging it into the last one when it is the same phone and they touch."""
    if end <= start:
        return
    if out and out[-1][0] == phone and start - out[-1][2] < 1e-6:
        out[-1] = (phone, out[-1][1], max(end, out[-1][2]))
    else:
        out.append((phone, start, end))


def _cover(segments: list[Segment], duration: float) -> list[Segment]:
    """Clip to [0, duration], fill gaps (before the first, after the last, between) with silence."""
    out: list[Segment] = []
    t = 0.0
    for phone, a, b in segments:
        a, b = max(a, 0.0), min(b, duration)
        if b <= a:
            continue
        if a > t + 1e-6:
            _append(out, "SIL", t, a)
        _append(out, phone, max(a, t), b)
        t = max(t, b)
    if duration > t + 1e-6:
        _append(out, "SIL", t, duration)
    return out or [("SIL", 0.0, duration)]


def decode_phones(wave: np.ndarray | torch.Tensor, *, window_s: float = 30.0, overlap_s: float = 4.0,
                  lw: float = 2.0, beam: float = 1e-20) -> list[Segment]:
    """Phone segments of 16 kHz mono speech: ``[(phone, start_s, end_s), ...]``, contiguous, covering
    ``[0, len(wave) / 16000)``, phones from :data:`PHONES`.

    Audio longer than ``window_s`` is decoded in windows overlapping by ``overlap_s``, stitched at the middles of
    the overlaps (module docstring). ``lw`` and ``beam``: PocketSphinx's language weight and (phone) beam.
    """
    x = wave.detach().float().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave, np.float32)
    x = x.reshape(-1).astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("decode_phones: the wave contains NaN or infinite samples")
    if not 0 <= overlap_s < window_s:
        raise ValueError(f"decode_phones: need 0 <= overlap_s < window_s, got {overlap_s}, {window_s}")
    win, hop = int(round(window_s * SAMPLE_RATE)), int(round((window_s - overlap_s) * SAMPLE_RATE))
    if x.size <= win:
        return _decode_one(x, lw, beam)
    out: list[Segment] = []
    cut_prev = 0.0
    start = 0
    while True:
        end = min(start + win, x.size)
        last = end >= x.size
        segs = _decode_one(x[start:end], lw, beam)
        offset = start / SAMPLE_RATE
        # this window owns [cut_prev, cut_next): the middle of the overlaps with its neighbours
        cut_next = (start + hop + end) / 2 / SAMPLE_RATE if not last else x.size / SAMPLE_RATE
        for phone, a, b in segs:
            a, b = max(a + offset, cut_prev), min(b + offset, cut_next)
            _append(out, phone, a, b)
        if last:
            break
        cut_prev, start = cut_next, start + hop
    return _cover(out, x.size / SAMPLE_RATE)


def _frame_onehots(segments: list[Segment], duration: float) -> np.ndarray:
    """(N, N_FEATURES) rows of :data:`_TABLE` for the 100 Hz frames whose centres (i + 0.5) / 100 s lie in
    [0, duration) (frames past the last segment read as silence)."""
    n = max(int(np.ceil(duration * FRAME_RATE)), 1)
    idx = np.zeros(n, np.int64)  # SIL
    centres = (np.arange(n) + 0.5) / FRAME_RATE
    starts = np.array([s[1] for s in segments])
    pos = np.searchsorted(starts, centres, side="right") - 1
    labels = np.array([_INDEX[s[0]] for s in segments])
    ends = np.array([s[2] for s in segments])
    ok = (pos >= 0) & (centres < ends[np.maximum(pos, 0)])
    idx[ok] = labels[pos[ok]]
    return _TABLE[idx]


def phone_features(segments: list[Segment], n_frames: int, fps: float = 25.0, kernel_s: float = 0.04,
                   times: np.ndarray | None = None) -> np.ndarray:
    """(2 n_frames, N_FEATURES) soft one-hot phones, viseme classes and expected openness on the half-frame grid
    (or at ``times`` seconds): the 100 Hz labels averaged with a triangular kernel of half-width ``kernel_s``."""
    t = (np.arange(2 * n_frames) + 0.5) / (2 * fps) if times is None else np.asarray(times, np.float64)
    end = max([s[2] for s in segments] + [0.0])
    onehot = _frame_onehots(segments, max(end, float(t.max(initial=0.0)) + kernel_s + 0.01))
    n = onehot.shape[0]
    half = max(kernel_s * FRAME_RATE, 0.5)  # in frames
    reach = int(np.ceil(half))
    c = t * FRAME_RATE - 0.5  # position in frame indices
    base = np.floor(c).astype(np.int64)
    out = np.zeros((t.size, N_FEATURES), np.float32)
    total = np.zeros(t.size, np.float64)
    for d in range(-reach, reach + 2):
        j = base + d
        w = np.maximum(0.0, 1.0 - np.abs(j - c) / half)
        w = np.where((j >= 0) & (j < n), w, 0.0)
        out += w[:, None].astype(np.float32) * onehot[np.clip(j, 0, n - 1)]
        total += w
    silence = _TABLE[_INDEX["SIL"]]
    empty = total <= 0
    out[~empty] /= total[~empty, None].astype(np.float32)
    out[empty] = silence
    return out


def frame_labels(segments: list[Segment], n_frames: int, fps: float) -> tuple[list[str], np.ndarray]:
    """Per video frame: the phone covering most of the frame ``[t/fps, (t+1)/fps)`` and the share of the frame it
    covers, (T,). Frames past the audio read as SIL with share 1."""
    phones, share = [], np.ones(n_frames)
    starts = np.array([s[1] for s in segments])
    for t in range(n_frames):
        a, b = t / fps, (t + 1) / fps
        i0 = max(int(np.searchsorted(starts, a, side="right")) - 1, 0)
        best, best_len = "SIL", 0.0
        i = i0
        while i < len(segments) and segments[i][1] < b:
            length = min(b, segments[i][2]) - max(a, segments[i][1])
            if length > best_len:
                best, best_len = segments[i][0], length
            i += 1
        if best_len > 0:
            phones.append(best)
            share[t] = best_len * fps
        else:
            phones.append("SIL")
    return phones, share


# ------------------------------------------------------------------------------------------------ encoders

def _wave_key(x: np.ndarray) -> str:
    return hashlib.sha1(x.tobytes()).hexdigest()


class PhoneticEncoder(AudioEncoder):
    """PocketSphinx phone features (:func:`phone_features`) + a convolution stack to ``dim`` channels."""

    def __init__(self, dim: int = 128, layers: int = 2, kernel: int = 5, kernel_s: float = 0.04,
                 lookahead_s: float = 1.0, window_s: float = 30.0, overlap_s: float = 4.0,
                 cache_size: int = 4096) -> None:
        super().__init__()
        self.dim, self.spec = dim, "phonetic"
        self.kernel_s, self.lookahead_s = kernel_s, lookahead_s
        self.window_s, self.overlap_s = window_s, overlap_s
        convs: list[nn.Module] = []
        for i in range(layers):
            convs += [nn.Conv1d(N_FEATURES if i == 0 else dim, dim, kernel, padding=kernel // 2), nn.GELU()]
        self.convs = nn.Sequential(*convs[:-1])
        # decoder lookahead + kernel + convolution reach (in 50 Hz steps) + one step
        self.context_samples = int(round((lookahead_s + kernel_s) * SAMPLE_RATE)) + \
            (layers * (kernel // 2) + 1) * SAMPLE_RATE // 50
        self.raw_dim = N_FEATURES
        self.cache_size = cache_size
        self._cache: OrderedDict[str, list[Segment]] = OrderedDict()
        self._sources: list[tuple[np.ndarray, list[Segment]]] = []
        self.decodes = 0  # how many waveforms were actually decoded (the rest came from the caches)

    def init_config(self) -> dict:
        """The arguments that rebuild this encoder (``load_encoder(spec, dim)`` uses the defaults)."""
        return {"dim": self.dim, "kernel_s": self.kernel_s, "lookahead_s": self.lookahead_s,
                "window_s": self.window_s, "overlap_s": self.overlap_s}

    # ------------------------------------------------------------------ phones of a waveform
    def prepare(self, wave: np.ndarray | torch.Tensor, *, alone: bool = False) -> list[Segment]:
        """Decode a whole clip once; later inputs that are exact pieces of it reuse that decoding (the clip prepared
        last first). ``alone``: decode it by itself, not as a piece of a clip prepared before."""
        x = self._as_numpy(wave)
        if alone:
            segs = self._decode(x)
            self.decodes += 1
            self._sources = [(src, sg) for src, sg in self._sources if not (src.size == x.size and
                                                                             np.array_equal(src, x))]
        else:
            segs = self.segments(x)
        if not any(src.size == x.size and np.array_equal(src, x) for src, _ in self._sources):
            self._sources.insert(0, (x.copy(), segs))  # the newest first: the speech being predicted now
        return segs

    def release(self, wave: np.ndarray | torch.Tensor) -> None:
        """Forget a prepared clip (its decoding stays in the LRU cache)."""
        x = self._as_numpy(wave)
        self._sources = [(src, segs) for src, segs in self._sources if not (src.size == x.size and
                                                                              np.array_equal(src, x))]

    @staticmethod
    def _as_numpy(wave) -> np.ndarray:
        if isinstance(wave, torch.Tensor):
            wave = wave.detach().float().cpu().numpy()
        return np.ascontiguousarray(np.asarray(wave, np.float32).reshape(-1))

    def _from_source(self, x: np.ndarray) -> list[Segment] | None:
        """Segments of ``x`` when it is a piece of a prepared clip (zeros beyond the clip's ends), else None."""
        nz = np.flatnonzero(x)
        if nz.size < 64:
            return None
        j = int(nz[0])
        probe = x[j: j + 16]
        for src, segs in self._sources:
            if src.size < probe.size:
                continue
            m = src.size - probe.size + 1
            hit = src[:m] == probe[0]
            for i in range(1, probe.size):  # positions where all 16 samples match (vectorised)
                hit &= src[i: m + i] == probe[i]
            for c in np.flatnonzero(hit)[:64]:
                o = int(c) - j  # sample of src at x[0]
                lo, hi = max(o, 0), min(o + x.size, src.size)
                if hi <= lo or not np.array_equal(x[lo - o: hi - o], src[lo:hi]):
                    continue
                if np.any(x[: lo - o]) or np.any(x[hi - o:]):
                    continue
                shift = o / SAMPLE_RATE
                piece = [(p, a - shift, b - shift) for p, a, b in segs]
                return _cover(piece, x.size / SAMPLE_RATE)
        return None

    def _decode(self, x: np.ndarray) -> list[Segment]:
        """Decode (S,): exact zeros before the first and after the last non-zero sample are a window's padding beyond
        the audio (the context of the first and last windows of a stream), not sound: the audio between is decoded
        alone and the padding reads as silence. Decoded with it, the padding (seconds of the noise floor around 2 s of
        speech) skews the decoder's cepstral mean and turns into phones (on v4's 2 s test split, 44 % of the frames
        got the phone the whole clip's decoding gives, 52 % without the padding)."""
        nz = np.flatnonzero(x)
        if nz.size == 0:
            return [("SIL", 0.0, x.size / SAMPLE_RATE)]
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        if lo == 0 and hi == x.size:
            return decode_phones(x, window_s=self.window_s, overlap_s=self.overlap_s)
        shift = lo / SAMPLE_RATE
        inner = decode_phones(x[lo:hi], window_s=self.window_s, overlap_s=self.overlap_s)
        return _cover([(p, a + shift, b + shift) for p, a, b in inner], x.size / SAMPLE_RATE)

    def segments(self, wave: np.ndarray | torch.Tensor) -> list[Segment]:
        """Phone segments of one waveform (S,), from the caches or decoded."""
        x = self._as_numpy(wave)
        key = _wave_key(x)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        segs = self._from_source(x) if self._sources else None
        if segs is None:
            segs = self._decode(x)
            self.decodes += 1
        self._cache[key] = segs
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return segs

    def features(self, wave: torch.Tensor, n_frames: int, fps: float = 25.0) -> torch.Tensor:
        """(B, S) -> (B, 2 n_frames, N_FEATURES) phone features (no learnable part)."""
        rows = [phone_features(self.segments(w), n_frames, fps, self.kernel_s) for w in wave]
        return torch.from_numpy(np.stack(rows)).to(wave.device)

    def raw_features(self, wave: torch.Tensor, n_frames: int, fps: float = 25.0) -> torch.Tensor:
        return self.features(wave, n_frames, fps).to(next(self.parameters()).dtype)

    def forward(self, wave: torch.Tensor, n_frames: int, fps: float = 25.0) -> torch.Tensor:
        grid = self.raw_features(wave, n_frames, fps)
        return self.convs(grid.transpose(1, 2)).transpose(1, 2)


class MelPhoneticEncoder(AudioEncoder):
    """``mel`` and ``phonetic`` streams of ``dim`` channels each, concatenated (``2 dim`` features)."""

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        self.mel, self.phonetic = MelEncoder(dim), PhoneticEncoder(dim)
        self.dim, self.spec = 2 * dim, "mel+phonetic"
        self.context_samples = max(self.mel.context_samples, self.phonetic.context_samples)
        self.raw_dim = self.mel.raw_dim + self.phonetic.raw_dim

    def prepare(self, wave: np.ndarray | torch.Tensor, *, alone: bool = False) -> list[Segment]:
        return self.phonetic.prepare(wave, alone=alone)

    def release(self, wave: np.ndarray | torch.Tensor) -> None:
        self.phonetic.release(wave)

    def forward(self, wave: torch.Tensor, n_frames: int, fps: float = 25.0) -> torch.Tensor:
        return torch.cat([self.mel(wave, n_frames, fps), self.phonetic(wave, n_frames, fps)], dim=-1)

    def raw_features(self, wave: torch.Tensor, n_frames: int, fps: float = 25.0) -> torch.Tensor:
        """Log-mel and phone features side by side: (B, 2 n_frames, 80 + 55)."""
        return torch.cat([self.mel.raw_features(wave, n_frames, fps),
                          self.phonetic.raw_features(wave, n_frames, fps)], dim=-1)
