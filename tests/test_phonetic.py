"""Phonetic audio stream (PocketSphinx phone loop) and the phonetic lip-sync score."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from gaussian_flametalk.eval.phonetic_sync import expected_openness, phonetic_sync
from gaussian_flametalk.io.audio import SAMPLE_RATE
from gaussian_flametalk.flametalk.encoders import load_encoder
from gaussian_flametalk.flametalk.phonetic import (
    N_FEATURES,
    N_PHONES,
    OPENNESS,
    PHONE_CLASS,
    PHONES,
    VISEMES,
    MelPhoneticEncoder,
    PhoneticEncoder,
    decode_phones,
    frame_labels,
    phone_features,
)

FPS, HOP = 25.0, 640
BILABIAL, OPEN = set(VISEMES["bilabial"]), set(VISEMES["open"])

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")


def _speak(text: str, pad_s: float = 0.5) -> np.ndarray:
    from gaussian_flametalk.demo_subject.subject import synthesize

    pad = np.zeros(int(pad_s * SAMPLE_RATE), np.float32)
    return np.concatenate([pad, synthesize(text), pad])


@pytest.fixture(scope="module")
def mama():
    """espeak-ng saying "mama papa, my baby" with 0.5 s of silence either side, and its phone segments."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    wave = _speak("mama papa, my baby.")
    return wave, decode_phones(wave)


def _covers(segs, duration):
    assert segs[0][1] == 0.0 and segs[-1][2] == pytest.approx(duration, abs=1e-6)
    assert all(a[2] == pytest.approx(b[1], abs=1e-9) for a, b in zip(segs, segs[1:]))  # contiguous
    assert all(p in PHONES and e > s for p, s, e in segs)


# ----------------------------------------------------------------------------------------------- inventory, grid

def test_inventory_classes_and_openness():
    assert len(PHONES) == len(set(PHONES)) == N_PHONES == 42
    assert set(PHONE_CLASS) == set(PHONES) and sum(map(len, VISEMES.values())) == N_PHONES
    assert BILABIAL == {"P", "B", "M"} and {"AA", "AE", "AH", "AO", "AW", "AY"} == OPEN
    assert all(0.0 <= v <= 1.0 for v in OPENNESS.values())
    assert max(OPENNESS[p] for p in BILABIAL) == 0.0 < min(OPENNESS[p] for p in OPEN) - 0.7
    assert OPENNESS["SIL"] == 0.0 and OPENNESS["F"] < OPENNESS["IY"] < OPENNESS["EH"] < OPENNESS["AA"]


def test_phone_features_on_the_half_frame_grid():
    segs = [("SIL", 0.0, 0.2), ("AA", 0.2, 0.4), ("M", 0.4, 0.5), ("SIL", 0.5, 0.8)]
    f = phone_features(segs, n_frames=30, fps=FPS)  # 1.2 s: past the end of the segments reads as silence
    assert f.shape == (60, N_FEATURES) and f.dtype == np.float32
    np.testing.assert_allclose(f[:, :N_PHONES].sum(1), 1.0, atol=1e-6)  # soft one-hot over phones
    np.testing.assert_allclose(f[:, N_PHONES:-1].sum(1), 1.0, atol=1e-6)  # ... and over viseme classes
    t = (np.arange(60) + 0.5) / 50  # feature k describes time (k + 0.5) / (2 fps)
    aa, m, sil = PHONES.index("AA"), PHONES.index("M"), PHONES.index("SIL")
    inside = (t > 0.25) & (t < 0.35)
    assert (f[inside, aa] == 1).all() and (f[inside, -1] == 1.0).all()  # openness of AA
    assert f[np.argmin(abs(t - 0.45)), m] == 1 and f[np.argmin(abs(t - 0.45)), -1] == 0.0
    assert (f[t > 0.6, sil] == 1).all()
    # the triangular kernel blends across a boundary: just before 0.2 s, part AA; symmetric around it
    k = int(np.argmin(abs(t - 0.19)))
    assert 0 < f[k, aa] < 0.5 and 0.5 < f[k + 1, aa] < 1
    # at 50 fps the grid has twice the rows, still one per half-frame
    assert phone_features(segs, 10, fps=50.0).shape == (20, N_FEATURES)
    phones, share = frame_labels(segs, 30, FPS)
    assert phones[5:10] == ["AA"] * 5 and phones[10] == "M" and phones[-1] == "SIL" and share[7] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------- decoding

@needs_espeak
def test_decoding_finds_bilabials_in_mama_papa_and_silence_in_silence(mama):
    wave, segs = mama
    _covers(segs, wave.size / SAMPLE_RATE)
    speech = [(p, s, e) for p, s, e in segs if p != "SIL"]
    start, end = speech[0][1], speech[-1][2]
    assert 0.4 < start < 0.65 and wave.size / SAMPLE_RATE - 0.7 < end  # silence before, speech after 0.5 s
    phones = [p for p, _, _ in speech]
    assert sum(p in BILABIAL for p in phones) >= 4, phones  # m-m p-p m b
    assert sum(p in OPEN for p in phones) >= 3, phones
    f = phone_features(segs, int(wave.size / HOP), FPS)
    t = (np.arange(len(f)) + 0.5) / 50
    assert (f[t < 0.4, PHONES.index("SIL")] > 0.99).all()  # the leading silence is silence
    assert f[(t > 0.6) & (t < 2.2), -1].max() >= 0.9  # somewhere an open vowel
    # a silent clip decodes to silence only
    assert {p for p, _, _ in decode_phones(np.zeros(SAMPLE_RATE, np.float32))} == {"SIL"}


@needs_espeak
def test_phonetic_encoder_shapes_cache_and_save_reload(mama, tmp_path):
    wave, _ = mama
    n = wave.size // HOP
    enc = load_encoder("phonetic", dim=16).eval()
    assert isinstance(enc, PhoneticEncoder) and enc.spec == "phonetic" and enc.dim == 16
    batch = torch.from_numpy(np.stack([wave[: n * HOP], np.zeros(n * HOP, np.float32)]))
    with torch.no_grad():
        out = enc(batch, n, FPS)
    assert out.shape == (2, 2 * n, 16) and torch.isfinite(out).all()
    assert enc.decodes == 2
    with torch.no_grad():
        again = enc(batch, n, FPS)
    assert enc.decodes == 2 and torch.equal(again, out)  # cached: no second decoding
    # save / reload exactly as train-talk does (spec + dim, then the state dict)
    torch.save({"audio_encoder": enc.spec, "encoder": enc.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    back = load_encoder(state["audio_encoder"], 16).eval()
    back.load_state_dict(state["encoder"])
    with torch.no_grad():
        torch.testing.assert_close(back(batch, n, FPS), out)
    assert back.init_config()["lookahead_s"] == enc.init_config()["lookahead_s"]
    # mel+phonetic: two streams of dim channels each, and the same round trip
    both = load_encoder("mel+phonetic", dim=8).eval()
    assert isinstance(both, MelPhoneticEncoder) and both.dim == 16 and both.spec == "mel+phonetic"
    assert both.context_samples == max(both.mel.context_samples, both.phonetic.context_samples)
    with torch.no_grad():
        feats = both(batch, n, FPS)
    back2 = load_encoder("mel+phonetic", 8).eval()
    back2.load_state_dict(both.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back2(batch, n, FPS), feats)
    assert feats.shape == (2, 2 * n, 16)
    with pytest.raises(ValueError, match="takes no argument"):
        load_encoder("phonetic:foo")


@needs_espeak
def test_prepared_clip_serves_training_crops_without_decoding():
    from gaussian_flametalk.flametalk.train import audio_clip

    wave = _speak("Peter picked a peck of pickled peppers. Bob bought a map of Paris.", 0.3)
    enc = PhoneticEncoder(8)
    whole = enc.prepare(wave)
    assert enc.decodes == 1
    n_frames = wave.size // HOP
    ctx = int(np.ceil(enc.context_samples / HOP))
    w = torch.from_numpy(wave)
    for s in (0, 7, n_frames - 30):  # crops at the start (zero-padded), inside, at the end (zero-padded)
        crop = audio_clip(w, s, s + 30, ctx, FPS)
        got = enc.features(crop[None], 30 + 2 * ctx, FPS)[0, 2 * ctx: 2 * (ctx + 30)].numpy()
        t = (np.arange(60) + 0.5) / 50 + s / FPS
        ref = phone_features(whole, 0, times=np.minimum(t, wave.size / SAMPLE_RATE - 1e-3), kernel_s=enc.kernel_s)
        np.testing.assert_allclose(got[t < wave.size / SAMPLE_RATE - 0.05], ref[t < wave.size / SAMPLE_RATE - 0.05],
                                   atol=1e-6)
    assert enc.decodes == 1  # every crop came from the prepared clip
    enc.features(torch.from_numpy(wave[:HOP * 20] * 0.5)[None], 20, FPS)  # not a piece of it: decoded
    assert enc.decodes == 2


@needs_espeak
def test_streaming_with_the_phonetic_encoder():
    """One-shot prediction is the streaming predictor fed at once; streamed chunks give the same frames, the first
    ones after about window + context frames of audio (the latency the phonetic lookahead adds)."""
    from gaussian_flametalk.flametalk.model import FlameTalk, FlameTalkArch, FlameTalkSpec, StreamingPredictor, predict
    from gaussian_flametalk.headmodel import make_synthetic_head

    torch.manual_seed(0)
    head = make_synthetic_head()
    enc = PhoneticEncoder(16).eval()
    model = FlameTalk(FlameTalkSpec(head.motion_dim, 16, head.n_vertices, FlameTalkArch(dim=32, dropout=0.0))).eval()
    torch.nn.init.normal_(model.motion_out.weight, std=0.1)
    wave = _speak("My mother bought a bag of apples.", 0.3)
    one = predict(model, enc, wave, head.template, FPS, "parallel", window=40, overlap=8)
    stream = StreamingPredictor(model, enc, head.template, FPS, "parallel", window=40, overlap=8)
    assert stream.context == int(np.ceil(enc.context_samples / HOP)) == 29  # 1.16 s at 25 fps
    got, first_at, pos = [], None, 0
    while pos < wave.size:
        frames = stream.push(wave[pos: pos + 1600])
        pos += 1600
        if len(frames) and first_at is None:
            first_at = pos
        got.append(frames)
    got.append(stream.flush())
    np.testing.assert_allclose(np.concatenate(got), one, atol=1e-4)
    assert first_at is not None and first_at <= (40 + stream.context) * HOP + 1600


def test_long_audio_is_decoded_in_windows_that_agree_with_whole_decoding(german):
    wave, segs = german["wave"], german["segments"]
    windowed = decode_phones(wave, window_s=6.0, overlap_s=2.0)  # three stitches in 12 s
    _covers(windowed, wave.size / SAMPLE_RATE)
    n = wave.size // HOP
    a = phone_features(segs, n, FPS)
    b = phone_features(windowed, n, FPS)
    same_phone = (a[:, :N_PHONES].argmax(1) == b[:, :N_PHONES].argmax(1)).mean()
    same_class = (a[:, N_PHONES:-1].argmax(1) == b[:, N_PHONES:-1].argmax(1)).mean()
    assert same_phone > 0.75 and same_class > 0.8, (same_phone, same_class)
    assert np.corrcoef(a[:, -1], b[:, -1])[0, 1] > 0.8  # the openness channel


# ----------------------------------------------------------------------------------------------- the sync score

def _synthetic_track(seed: int, seconds: float = 16.0):
    """Random phone segments (70-200 ms) and a mouth opening that follows their openness (plus noise)."""
    rng = np.random.default_rng(seed)
    segs, t = [], 0.0
    speech = [p for p in PHONES if p not in ("SIL", "+NSN+", "+SPN+")]
    while t < seconds:
        d = rng.uniform(0.07, 0.2)
        segs.append((str(rng.choice(speech)) if rng.random() > 0.1 else "SIL", t, min(t + d, seconds)))
        t += d
    T = int(seconds * FPS)
    ex = expected_openness(segs, T, FPS)["expected"]
    opening = 0.05 + 0.3 * np.convolve(ex, np.hanning(3) / np.hanning(3).sum(), "same") + rng.normal(0, 0.02, T)
    return segs, opening


def _shift_segments(segs, frames):
    dt = frames / FPS
    return [(p, s + dt, e + dt) for p, s, e in segs]


def test_phonetic_sync_finds_planted_delay_and_rejects_other_phones():
    segs, opening = _synthetic_track(0)
    own = phonetic_sync(opening, segs, FPS)
    assert own["offset"] == 0 and own["peak"] > 0.7 and own["score"] == own["peak"]
    assert own["vowel_bilabial_auc"] > 0.9 and own["open_frames"] > 10 and own["bilabial_frames"] > 3
    assert own["open_mean"] > own["bilabial_mean"]
    for k in (-4, 3, 7):  # sound late by k frames
        late = phonetic_sync(opening, _shift_segments(segs, k), FPS)
        assert late["offset"] == k and late["peak"] > 0.7
    # beyond loudness: a loudness that follows the openness only in part (plus its own syllable rhythm)
    rng = np.random.default_rng(5)
    ex = expected_openness(segs, opening.size, FPS)["expected"]
    loudness = 0.6 * ex + 0.4 * np.convolve(rng.random(opening.size), np.hanning(5), "same")
    assert phonetic_sync(opening, segs, FPS, envelope=loudness)["beyond_loudness"] > 0.5  # lips follow the phones
    gamed = phonetic_sync(loudness, segs, FPS, envelope=loudness)  # a mouth that opens with loudness
    assert gamed["offset"] == 0 and gamed["peak"] > 0.5 and abs(gamed["beyond_loudness"]) < 1e-6
    assert own["beyond_loudness"] is None  # no envelope given
    other = phonetic_sync(opening, _synthetic_track(1)[0], FPS)
    assert other["peak"] < 0.3 and other["peak_minus_median"] < own["peak_minus_median"] - 0.4
    silent = phonetic_sync(opening, [("SIL", 0.0, 16.0)], FPS)
    assert silent["peak"] == 0.0 and silent["vowel_bilabial_auc"] is None
    holed = opening.copy()
    holed[50:80] = np.nan
    res = phonetic_sync(holed, segs, FPS)
    assert res["offset"] == 0 and res["frames_without_face"] == 30
    with pytest.raises(ValueError, match="have a face"):
        phonetic_sync(np.full(400, np.nan), segs, FPS)


def test_eval_reports_the_phonetic_score():
    from gaussian_flametalk.eval.evaluate import _phonetic_sync
    from gaussian_flametalk.eval.report import summary_rows

    rng = np.random.default_rng(0)
    pts = rng.uniform(100, 300, (60, 68, 2))
    res = _phonetic_sync(pts, rng.normal(0, 0.05, 60 * HOP).astype(np.float32), FPS, 15)
    assert {"score", "offset", "peak", "peak_minus_median", "vowel_bilabial_auc", "beyond_loudness"} <= set(res)
    assert isinstance(res["beyond_loudness"], float)
    rows = dict(summary_rows([{"lipsync": {"phonetic": res}}]))
    assert "phonetic sync peak" in rows and "phonetic sync offset (frames)" in rows
    assert "unavailable" in _phonetic_sync(pts[:10], np.zeros(10 * HOP, np.float32), FPS, 15)


# ----------------------------------------------------------------------------------------------- real clips

def _clip(path, seconds: float):
    from gaussian_flametalk.eval.lipsync import mouth_opening
    from gaussian_flametalk.io.audio import load_audio
    from gaussian_flametalk.tracking.landmarks import MediapipeDetector, detect_clip

    from gaussian_flametalk.io.media import iter_frames
    with MediapipeDetector(max_num_faces=1) as det:
        clip = detect_clip(iter_frames(path, fps=FPS, duration=seconds), det, progress=False)
    opening = mouth_opening(clip.points68.astype(np.float64))
    wave = load_audio(path)[: len(opening) * HOP]
    return opening, wave


def _fit(wave: np.ndarray, n: int) -> np.ndarray:
    return np.pad(wave[:n], (0, max(n - wave.size, 0)))


def _delay(wave: np.ndarray, frames: int) -> np.ndarray:
    k = frames * HOP
    return np.concatenate([np.zeros(k, wave.dtype), wave])[: wave.size]


@pytest.fixture(scope="module")
def german(shared_dir):
    """The first 12 s of the German news anchor (v1): mouth opening at 25 fps, sound, its phone segments."""
    opening, wave = _clip(shared_dir / "data" / "videos" / "v1_german_news_anchor_20s.mp4", 12.0)
    return {"opening": opening, "wave": wave, "segments": decode_phones(wave)}


def test_german_clip_own_sound_beats_english_speech_and_delay_is_found(german, shared_dir):
    from gaussian_flametalk.eval.lipsync import speech_envelope
    from gaussian_flametalk.io.audio import load_audio

    opening, wave = german["opening"], german["wave"]
    assert len(opening) == 300
    phones = [p for p, _, _ in german["segments"]]
    assert sum(p in BILABIAL for p in phones) >= 10 and sum(p in OPEN for p in phones) >= 10  # German as English
    own = phonetic_sync(opening, german["segments"], FPS)
    assert abs(own["offset"]) <= 1 and own["peak"] > 0.35 and own["vowel_bilabial_auc"] > 0.7
    other = load_audio(shared_dir / "data" / "speech" / "s6_musetalk_eng_male_60s.wav")
    foreign = phonetic_sync(opening, decode_phones(_fit(other, wave.size)), FPS)
    assert foreign["peak"] < own["peak"] - 0.15, (foreign["peak"], own["peak"])
    late = phonetic_sync(opening, decode_phones(_delay(wave, 5)), FPS)
    assert abs(late["offset"] - 5) <= 1 and late["peak"] > own["peak"] - 0.1
    # a mouth that opens with loudness matches the phones about as well, but nothing beyond the loudness
    env = speech_envelope(wave, len(opening), FPS)
    loud = np.maximum(env - env.max() + 40, 0) / 40
    real = phonetic_sync(opening, german["segments"], FPS, envelope=env)
    gamed = phonetic_sync(loud, german["segments"], FPS, envelope=env)
    assert gamed["peak"] > 0.35 and real["beyond_loudness"] > 0.25 > 0.1 > gamed["beyond_loudness"], (real, gamed)


def test_english_clip_own_sound_beats_other_speech(shared_dir):
    from gaussian_flametalk.io.audio import load_audio

    opening, wave = _clip(shared_dir / "data" / "videos" / "v4_trump_oval_office_10s.mp4", 10.0)
    own = phonetic_sync(opening, decode_phones(wave), FPS)
    assert abs(own["offset"]) <= 1 and own["peak"] > 0.35
    others = sorted((shared_dir / "data" / "speech").glob("*"))
    assert others
    for path in others:
        other = phonetic_sync(opening, decode_phones(_fit(load_audio(path), wave.size)), FPS)
        assert other["peak"] < own["peak"] - 0.15, (path.name, other["peak"], own["peak"])


@needs_espeak
def test_decoding_does_not_depend_on_what_was_decoded_before():
    """A clip's phones are the same whether it is the process's first decoding or comes after others (a reused
    PocketSphinx decoder carried state between utterances: the demo subject's test audio then gave other phones)."""
    from gaussian_flametalk.flametalk.phonetic import decode_phones

    a = _speak("Peter bought a big blue bottle of milk for mama.")
    b = _speak("She sells sea shells by the sea shore, surely.")
    first = decode_phones(a)
    decode_phones(b)
    decode_phones(b[: b.size // 2])
    assert decode_phones(a) == first


@needs_espeak
def test_offline_prediction_decodes_the_whole_speech_once():
    """TalkModel.predict knows the whole speech: one decoding serves every window (as training's prepared clips do),
    and the clip is released afterwards."""
    from gaussian_flametalk.flametalk.inference import TalkModel
    from gaussian_flametalk.flametalk.model import FlameTalk, FlameTalkArch, FlameTalkSpec, predict
    from gaussian_flametalk.headmodel import make_synthetic_head

    torch.manual_seed(0)
    head = make_synthetic_head()
    enc = PhoneticEncoder(16).eval()
    model = FlameTalk(FlameTalkSpec(head.motion_dim, 16, head.n_vertices, FlameTalkArch(dim=32, dropout=0.0))).eval()
    wave = _speak("Peter picked a peck of pickled peppers. Bob bought a map of Paris.", 0.3)
    talk = TalkModel(model, enc, head, head.template, torch.zeros(head.n_shape), FPS, window=40, overlap=8)
    got = talk.predict(wave, "parallel")
    assert enc.decodes == 1 and not enc._sources  # one decoding for the 4 windows; nothing kept
    assert got.shape == (int(round(wave.size / HOP)), head.motion_dim)
    fresh = PhoneticEncoder(16).eval()
    fresh.load_state_dict(enc.state_dict())
    fresh.prepare(wave)
    np.testing.assert_allclose(got, predict(model, fresh, wave, head.template, FPS, "parallel", window=40, overlap=8),
                               atol=1e-5)


def test_zero_padding_is_silence_and_a_test_split_is_decoded_alone(shared_dir):
    """A window's zero padding beyond the audio (the first and last windows of a stream, a test split predicted on its
    own) is not decoded with the audio: it reads as silence and the audio's phones are those it has alone (decoded
    with it, v4's 2 s test split kept the whole clip's phone on 44 % of its frames, 52 % alone). ``prepare(alone=
    True)`` decodes a piece of a prepared clip by itself, and that decoding serves its windows."""
    from gaussian_flametalk.io.audio import load_audio

    wave = load_audio(shared_dir / "data" / "videos" / "v4_trump_oval_office_10s.mp4")
    piece = wave[8 * SAMPLE_RATE:]  # v4's test split: its last 2 s
    pad = np.zeros(int(1.16 * SAMPLE_RATE), np.float32)
    enc = PhoneticEncoder(8)
    padded = enc.segments(np.concatenate([pad, piece, pad]))
    alone = decode_phones(piece)
    _covers(padded, (2 * pad.size + piece.size) / SAMPLE_RATE)
    labels, _ = frame_labels(padded, 29 + 50 + 29, FPS)  # the padding is 29 frames either side
    assert set(labels[:29]) == set(labels[-29:]) == {"SIL"}
    assert labels[29: 79] == frame_labels(alone, 50, FPS)[0]
    # a piece of a prepared clip: by default its windows take the whole clip's phones; alone, its own
    enc = PhoneticEncoder(8)
    whole = enc.prepare(wave)
    as_piece = enc.segments(piece)
    assert as_piece != alone and [p for p, _, _ in as_piece] == [p for p, a, b in whole if b > 8.0]
    assert enc.prepare(piece, alone=True) == alone
    window = np.concatenate([pad, piece[: SAMPLE_RATE]])  # its first window, zero padding before it
    labels, _ = frame_labels(enc.segments(window), window.size // HOP, FPS)
    want, _ = frame_labels(alone, SAMPLE_RATE // HOP, FPS)
    assert labels[29:] == want[: len(labels) - 29]
    enc.release(piece)
