"""FlameTalk: encoders, masks, model inference modes, training on synthetic speech-driven subjects, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gaussian_flametalk.io.audio import SAMPLE_RATE, AudioError, save_wav
from gaussian_flametalk.io.meta import META_FORMAT, StageMeta
from gaussian_flametalk.io.subject import SubjectWriter
from gaussian_flametalk.flametalk.encoders import EncoderNotFoundError, load_encoder
from gaussian_flametalk.flametalk.model import (PTALKER_FIELDS, FlameTalk, FlameTalkArch, FlameTalkSpec, LinearBase,
                                                PTalkerArch, StreamingPredictor, alibi_slopes, alignment_mask, biased_causal_mask,
                                                periodic_positional_encoding, predict)
from gaussian_flametalk.flametalk.inference import load_talk
from gaussian_flametalk.flametalk.train import TalkConfig, train_talk
from gaussian_flametalk.headmodel import HeadParams, make_synthetic_head

FPS = 25


def speech_like(seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Syllable-like audio (voiced harmonics with a random ~4 Hz envelope and pauses) and its per-frame envelope.
    Returns (S,) samples and (T,) envelope in [0, 1] at 25 fps."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    env = np.zeros(n)
    pos = 0.1
    while pos < seconds:
        dur = rng.uniform(0.12, 0.3)
        if rng.random() < 0.8:
            env += rng.uniform(0.4, 1.0) * np.exp(-0.5 * ((t - pos - dur / 2) / (dur / 4)) ** 2)
        pos += dur + rng.uniform(0.0, 0.15)
    env = np.clip(env, 0, 1)
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    carrier = sum(np.sin(k * phase) / k for k in range(1, 12)) + 0.2 * rng.standard_normal(n)
    audio = 0.3 * env * carrier / 2 + 1e-3 * rng.standard_normal(n)
    frames = int(round(seconds * FPS))
    env_f = env[: frames * (SAMPLE_RATE // FPS)].reshape(frames, -1).mean(1)
    return audio.astype(np.float32), env_f


def make_subject(root: Path, seconds: float = 24.0, seed: int = 0, amplitude: float = 0.25, audio: bool = True) -> Path:
    """A SUBJECT folder (through the SUBJECT writer; no frames) on the synthetic head: jaw opening = amplitude * speech
    envelope, one expression following it too."""
    head = make_synthetic_head()
    samples, env = speech_like(seconds, seed)
    t = len(env)
    p = HeadParams.zeros(head, t)
    p.shape[:] = torch.linspace(-0.5, 0.5, head.n_shape)
    p.jaw[:, 0] = torch.from_numpy(amplitude * env).float()
    p.expression[:, 0] = torch.from_numpy(0.8 * env).float()
    writer = SubjectWriter(root)
    writer.params(p)
    if audio:
        save_wav(writer.path("audio.wav"), samples)
    return writer.finish(StageMeta(stage="track", extra={
        "n_frames": t, "fps": FPS,
        "head_model": {"spec": "synthetic", "kind": "flame", "n_shape": head.n_shape, "n_expression": head.n_expression},
    }))


# ------------------------------------------------------------------------------------------------ encoders

def test_mel_encoder_shape_and_alignment():
    enc = load_encoder("mel", dim=16).eval()
    n_frames = 30
    wave = torch.zeros(1, n_frames * 640)
    t = 12  # a tone burst in the first half of frame 12 -> strongest at feature 24 (= 2t)
    wave[0, t * 640: t * 640 + 320] = torch.sin(torch.arange(320) * 2 * np.pi * 1000 / SAMPLE_RATE)
    assert enc(wave, n_frames).shape == (1, 2 * n_frames, 16)
    from gaussian_flametalk.flametalk.encoders import feature_times, interpolate_features

    mel, times = enc.log_mel(wave)
    grid = interpolate_features(mel, times, feature_times(n_frames, FPS))
    energy = ((grid[0] * 4 + 1).exp() - enc.floor).sum(-1)  # back to mel power
    assert int(energy.argmax()) == 2 * t
    assert energy[2 * t + 1] > 10 * energy[2 * t - 3] and energy[2 * t + 1] > 10 * energy[2 * t + 4]


def _tiny_transformers(kind: str, folder: Path) -> Path:
    import transformers

    cfg_cls = transformers.Wav2Vec2Config if kind == "wav2vec2" else transformers.HubertConfig
    model_cls = transformers.Wav2Vec2Model if kind == "wav2vec2" else transformers.HubertModel
    cfg = cfg_cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                  conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    model_cls(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_transformers_encoders_offline(kind, tmp_path):
    pytest.importorskip("transformers")
    folder = _tiny_transformers(kind, tmp_path / kind)
    enc = load_encoder(f"{kind}:{folder}")
    assert enc.dim == 32
    wave = torch.randn(2, 16000)
    feats = enc(wave, 25)
    assert feats.shape == (2, 50, 32)
    assert not any(p.requires_grad for p in enc.model.feature_extractor.parameters())
    assert any(p.requires_grad for p in enc.parameters())
    with pytest.raises(EncoderNotFoundError, match="not available.*download"):
        load_encoder(f"{kind}:nobody/no-such-model-xyz")


# ------------------------------------------------------------------------------------------------ masks

def test_masks_and_positional_encoding():
    n, h, p = 12, 4, 3
    mask = biased_causal_mask(n, h, p)
    slopes = alibi_slopes(h)
    assert torch.allclose(slopes, torch.tensor([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]))
    # six heads (not a power of two): the four slopes of 4 heads, then the 1st and 3rd of 8 heads (ALiBi / FaceFormer)
    assert torch.allclose(alibi_slopes(6), torch.tensor([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]))
    assert torch.allclose(alibi_slopes(3), torch.tensor([2 ** -4, 2 ** -8, 2 ** -2]))
    for i in range(n):
        for j in range(n):
            if j > i:
                assert torch.isinf(mask[:, i, j]).all() and (mask[:, i, j] < 0).all()
            else:
                assert torch.allclose(mask[:, i, j], -slopes * ((i - j) // p))
    align = alignment_mask(10)
    assert align.shape == (10, 20)
    for t in range(10):
        assert set(torch.nonzero(align[t] == 0).flatten().tolist()) == {2 * t, 2 * t + 1}
    pe = periodic_positional_encoding(60, 16, 25)
    assert torch.allclose(pe[5], pe[30]) and not torch.allclose(pe[5], pe[6])
    assert torch.isclose(pe[1, 0], torch.sin(torch.tensor(1.0))) and torch.isclose(pe[1, 1], torch.cos(torch.tensor(1.0)))


def _random_model(seed: int = 0) -> tuple[FlameTalk, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    head = make_synthetic_head()
    enc = load_encoder("mel", dim=16).eval()
    model = FlameTalk(FlameTalkSpec(head.motion_dim, 16, head.n_vertices, FlameTalkArch(dim=32, dropout=0.0))).eval()
    torch.nn.init.normal_(model.motion_out.weight, std=0.1)
    return model, enc, head.template


def test_autoregressive_equals_teacher_forced_pass_of_its_own_output():
    model, enc, template = _random_model()
    feats = enc(torch.randn(1, 20 * 640) * 0.1, 20)
    style = model.style(template[None])
    with torch.no_grad():
        y = model.generate(feats, style, "autoregressive")
        again = model(feats, style, torch.cat([y[:, :1], y[:, :-1]], dim=1))
        par = model.generate(feats, style, "parallel")
    assert torch.allclose(y, again, atol=1e-5)
    assert y.shape == par.shape == (1, 20, model.spec.motion_dim)


@pytest.mark.parametrize("mode", ["autoregressive", "parallel"])
def test_streaming_equals_one_shot(mode):
    model, enc, template = _random_model(1)
    audio, _ = speech_like(5.0, 3)
    one = predict(model, enc, audio, template, FPS, mode, window=40, overlap=8)
    assert one.shape[0] == 125
    stream = StreamingPredictor(model, enc, template, FPS, mode, window=40, overlap=8)
    rng = np.random.default_rng(0)
    parts, pos = [], 0
    while pos < len(audio):
        k = int(rng.integers(100, 9000))
        parts.append(stream.push(audio[pos: pos + k]))
        pos += k
    parts.append(stream.flush())
    got = np.concatenate(parts)
    assert sum(len(p) > 0 for p in parts[:-1]) >= 2  # frames come out while audio is still arriving
    np.testing.assert_allclose(got, one, atol=1e-4)


def test_linear_base_chooses_its_ridge_by_cross_validation():
    """LinearBase.fit: with a linear signal it keeps a weak ridge and recovers the map; on noise it chooses a
    strong one and stays near zero; the cross-fitted offsets predict each block without it."""
    torch.manual_seed(0)
    base = LinearBase(raw_dim=4, motion_dim=3, frames=1)  # 12 inputs
    x = torch.randn(300, 12)
    w = torch.randn(12, 3)
    y = x @ w + 0.05 * torch.randn(300, 3)
    crossed = base.fit(x, y, torch.ones(3))
    assert base.fitted and float(base.ridge) <= 10
    pred = ((x - base.x_mean) / base.x_std) @ base.weight
    assert (pred - y).pow(2).mean() < 0.01 * y.pow(2).mean()
    assert crossed.shape == y.shape and (crossed - y).pow(2).mean() < 0.02 * y.pow(2).mean()
    noise = LinearBase(4, 3, 1)
    out = noise.fit(torch.randn(60, 12), torch.randn(60, 3), torch.ones(3))
    assert float(noise.ridge) >= 100 and out.abs().mean() < 0.2  # (noise: 1 per entry)
    assert not LinearBase(4, 3, 1).fitted  # zeros until fitted: adds nothing


def _based_model(seed: int = 0) -> tuple[FlameTalk, torch.nn.Module, torch.Tensor]:
    """A random model with a linear base (random weights, marked fitted) over the mel encoder's log-mel."""
    torch.manual_seed(seed)
    head = make_synthetic_head()
    enc = load_encoder("mel", dim=16).eval()
    spec = FlameTalkSpec(head.motion_dim, 16, head.n_vertices, FlameTalkArch(dim=32, dropout=0.0, base_frames=2),
                         raw_dim=enc.raw_dim)
    model = FlameTalk(spec).eval()
    torch.nn.init.normal_(model.motion_out.weight, std=0.1)
    model.base.weight.normal_(std=0.02)
    model.base.ridge.fill_(1.0)
    return model, enc, head.template


@pytest.mark.parametrize("mode", ["autoregressive", "parallel"])
def test_streaming_with_a_linear_base_equals_one_shot_and_the_base_adds(mode):
    model, enc, template = _based_model(2)
    audio, _ = speech_like(4.0, 5)
    one = predict(model, enc, audio, template, FPS, mode, window=30, overlap=6)
    stream = StreamingPredictor(model, enc, template, FPS, mode, window=30, overlap=6)
    parts = [stream.push(audio[i: i + 3000]) for i in range(0, len(audio), 3000)] + [stream.flush()]
    np.testing.assert_allclose(np.concatenate(parts), one, atol=1e-4)
    model.base.ridge.zero_()  # unfitted: the transformer alone
    without = predict(model, enc, audio, template, FPS, mode, window=30, overlap=6)
    assert np.abs(one - without).mean() > 1e-3


# ------------------------------------------------------------------------------------------------ training

def _config(subject: Path, out: Path, iterations: int, **kw) -> TalkConfig:
    opts = dict(subjects=(subject,), out=out, iterations=iterations, seq_frames=40, batch_size=4, progress=False,
                checkpoint_every=10_000, window=50, overlap=10, audio_encoder="mel")
    opts.update(kw)
    return TalkConfig(**opts)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("talk")
    subject = make_subject(root / "S", seconds=16.0)
    meta = train_talk(_config(subject, root / "talk", 100))
    return root, meta


def test_training_learns_mouth_motion_from_audio(trained):
    root, meta = trained
    r = meta["test"]["S"]
    print(f"\ntest vertex error {r['vertex_error_mm']:.3f} mm vs mean baseline {r['baseline_vertex_error_mm']:.3f}; "
          f"LVE {r['lve_mm']:.3f} vs {r['baseline_lve_mm']:.3f}; corr {r['mouth_opening_correlation']:.3f}; "
          f"{meta['timings']['iterations_per_s']:.2f} it/s")
    assert r["vertex_error_mm"] < 0.6 * r["baseline_vertex_error_mm"]
    assert r["lve_mm"] < 0.6 * r["baseline_lve_mm"]
    assert r["mouth_opening_correlation"] > 0.5
    with np.load(root / "talk" / "test" / "S.npz") as z:
        assert z["motion_pred"].shape == z["motion_true"].shape == (80, 13) and z["jaw"].shape == (80, 3)
    saved = json.loads((root / "talk" / "meta.json").read_text())
    assert saved["stage"] == "train-talk" and saved["iterations_run"] == 100 and saved["format"] == META_FORMAT
    assert saved["outputs"] == ["checkpoint.pt", "test/S.npz"] and saved["figures"]["final_train_loss"] > 0


def test_windowed_joins_are_seamless_and_silence_closes_the_mouth(trained):
    root, _ = trained
    talk = load_talk(root / "talk")
    audio, _ = speech_like(12.0, 7)
    motion = talk.predict(audio)
    assert motion.shape == (300, 13)
    step = np.abs(np.diff(motion, axis=0)).max(axis=1)  # (T-1,) largest change between consecutive frames
    joins = [s + talk.overlap - 1 for s in range(talk.window - talk.overlap, 300, talk.window - talk.overlap)]
    joins += [s - 1 for s in range(talk.window - talk.overlap, 300, talk.window - talk.overlap)]
    joins = [j for j in joins if 0 <= j < len(step)]
    assert step[joins].max() <= 1.5 * np.percentile(step, 95)
    silent = root / "silent.wav"
    save_wav(silent, np.zeros(3 * SAMPLE_RATE, np.float32))
    closed = talk.predict_file(silent)
    jaw_speech = motion[:, -3]
    assert closed["jaw"].shape == (75, 3)
    assert np.abs(closed["jaw"][:, 0]).mean() < 0.5 * np.abs(jaw_speech).mean()


def test_early_stopping_chooses_the_count_on_held_out_training_frames(tmp_path):
    """--val-share: the last share of the training frames scored every --val-every iterations (and before the
    first), the best count trained on all of them; kept in selection.json, which a re-run reuses."""
    subject = make_subject(tmp_path / "S", seconds=8.0)
    meta = train_talk(_config(subject, tmp_path / "t", 10, val_share=0.25, val_every=5, batch_size=2, seq_frames=20))
    sel = meta["selection"]
    assert set(sel["scores"]) == {"0", "5", "10"} and sel["held_out_frames"] == 40  # 25 % of 160 training frames
    assert sel["iterations"] == int(min(sel["scores"], key=lambda k: (sel["scores"][k], int(k))))
    assert meta["iterations_run"] == sel["iterations"] and meta["iterations"] == 10
    stamp = (tmp_path / "t" / "selection.json").stat().st_mtime_ns
    again = train_talk(_config(subject, tmp_path / "t", 10, val_share=0.25, val_every=5, batch_size=2, seq_frames=20))
    assert (tmp_path / "t" / "selection.json").stat().st_mtime_ns == stamp and again["selection"] == sel
    assert again["iterations_run"] == 0  # nothing left to train


def test_resume_continues_exactly(tmp_path):
    subject = make_subject(tmp_path / "S", seconds=6.0)
    train_talk(_config(subject, tmp_path / "a", 6, batch_size=2))
    train_talk(_config(subject, tmp_path / "b", 3, batch_size=2))
    resumed = train_talk(_config(subject, tmp_path / "b", 6, batch_size=2))
    assert resumed["resumed_from"] == 3 and resumed["iterations_run"] == 3
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert b["iteration"] == 6 and len(b["history"]) == 6
    np.testing.assert_allclose([h["loss"] for h in b["history"]], [h["loss"] for h in a["history"]], rtol=1e-4)


def test_the_flat_spec_of_older_checkpoints_loads():
    """Specs saved before FlameTalkArch held the architecture at the top level, and before PTalkerArch the PTalker
    fields beside ``ptalker: bool``: they load as the same spec."""
    flat = {"motion_dim": 53, "audio_dim": 16, "n_vertices": 900, "dim": 32, "heads": 2, "layers": 1, "ff_mult": 2,
            "period": 25, "dropout": 0.0, "ptalker": False, "n_subjects": 0, "gat_points": 256, "gat_layers": 2,
            "style_frames": 50, "speaker_encoder": "", "emotion_encoder": ""}
    spec = FlameTalkSpec.from_dict(flat)
    # (and before the linear base they had none: base_frames 0, not today's default)
    assert spec == FlameTalkSpec(53, 16, 900, FlameTalkArch(dim=32, heads=2, dropout=0.0, base_frames=0))
    assert spec.to_dict()["arch"] == {**{k: flat[k] for k in ("dim", "heads", "layers", "ff_mult", "period",
                                                              "dropout")}, "base_frames": 0}
    assert FlameTalkSpec.from_dict(spec.to_dict()) == spec  # the nested form saved now
    oldest = {"motion_dim": 53, "audio_dim": 16, "n_vertices": 900, "dim": 64}  # fields it lacks: the defaults
    assert FlameTalkSpec.from_dict(oldest) == FlameTalkSpec(53, 16, 900, FlameTalkArch(base_frames=0))
    with pytest.raises(ValueError, match="both a nested and a flat"):
        FlameTalkSpec.from_dict({**spec.to_dict(), "dim": 32})
    with pytest.raises(ValueError, match=r"--model\.dim 30 is not a multiple of --model\.heads 4"):
        FlameTalkArch(dim=30)
    # PTalker specs saved before PTalkerArch: its fields flat beside ptalker=True, the architecture flat (before
    # FlameTalkArch) or nested (after it)
    pt_flat = {"ptalker": True, "n_subjects": 2, "gat_points": 32, "gat_layers": 1, "style_frames": 8,
               "speaker_encoder": "sid", "emotion_encoder": ""}
    want = FlameTalkSpec(53, 16, 900, FlameTalkArch(dim=32, heads=2, dropout=0.0, base_frames=0), n_subjects=2,
                         ptalker=PTalkerArch(style_frames=8, gat_points=32, gat_layers=1, speaker_encoder="sid"))
    assert FlameTalkSpec.from_dict({**flat, **pt_flat}) == want
    assert FlameTalkSpec.from_dict({**spec.to_dict(), **pt_flat}) == want
    assert want.to_dict()["ptalker"] == {k: pt_flat[k] for k in PTALKER_FIELDS} and spec.to_dict()["ptalker"] is None
    assert FlameTalkSpec.from_dict(want.to_dict()) == want  # the nested form saved now
    with pytest.raises(ValueError, match="both nested and flat PTalker fields"):
        FlameTalkSpec.from_dict({**want.to_dict(), "gat_points": 16})
    with pytest.raises(TypeError, match="PTalkerArch or None"):
        FlameTalkSpec(53, 16, 900, ptalker=True)
    with pytest.raises(ValueError, match=r"--pt\.gat-points: 1 is out of range"):
        PTalkerArch(gat_points=1)


def test_a_checkpoint_with_the_flat_spec_resumes_and_loads(tmp_path):
    subject = make_subject(tmp_path / "S", seconds=4.0)
    cfg = dict(batch_size=2, seq_frames=16, model=FlameTalkArch(dim=16, heads=2, base_frames=0))  # as then
    train_talk(_config(subject, tmp_path / "t", 2, **cfg))
    path = tmp_path / "t" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    spec = state["spec"]
    spec.update(spec.pop("arch"))  # as written before FlameTalkArch
    torch.save(state, path)
    talk = load_talk(tmp_path / "t")
    assert talk.model.spec.arch == FlameTalkArch(dim=16, heads=2, base_frames=0) and talk.model.base is None
    assert train_talk(_config(subject, tmp_path / "t", 3, **cfg))["resumed_from"] == 2


def test_bad_subjects_fail_clearly(tmp_path):
    mute = make_subject(tmp_path / "mute", seconds=3.0, audio=False)
    with pytest.raises(AudioError, match="mute.*no audio.wav"):
        train_talk(_config(mute, tmp_path / "o", 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*not a tracked SUBJECT"):
        train_talk(_config(tmp_path / "empty", tmp_path / "o", 1))


def test_cli_has_train_talk():
    from gaussian_flametalk.scripts.gft import build_parser

    args = build_parser().parse_args(["train-talk", "A", "B", "--iterations", "5", "--audio-encoder", "mel"])
    assert [str(s) for s in args.subjects] == ["A", "B"] and args.iterations == 5


def test_template_comes_from_the_training_frames_only(tmp_path):
    from gaussian_flametalk.flametalk.train import load_subject_data
    from gaussian_flametalk.headmodel.motion import motion_from_params, motion_vertices
    from gaussian_flametalk.io.subject import Subject

    root = make_subject(tmp_path / "S", seconds=2.0)
    subject = Subject.open(root)
    head = subject.head_model()
    data = load_subject_data(subject, head)
    params = subject.params()
    motion, shape = motion_from_params(params, head), params.shape.mean(0)
    with torch.no_grad():
        train_mean = motion_vertices(head, motion[data.train_idx][None], shape).mean(dim=(0, 1))
        all_mean = motion_vertices(head, motion[None], shape).mean(dim=(0, 1))
    torch.testing.assert_close(data.template, train_mean)
    assert (all_mean - train_mean).abs().max() > 0  # the test split would have changed it
