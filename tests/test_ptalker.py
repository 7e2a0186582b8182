"""PTalker plug-ins: the losses on hand-computed cases, gradient reversal, the graph attention mesh encoder, training
on several synthetic subjects (two stages, resume across the switch), and the style of an unseen subject from a
reference motion clip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gaussian_flametalk.flametalk.encoders import load_encoder
from gaussian_flametalk.headmodel.motion import mouth_opening
from gaussian_flametalk.flametalk.model import FlameTalk, FlameTalkSpec, StreamingPredictor, predict
from gaussian_flametalk.flametalk.ptalker import (GraphAttentionLayer, IdentityStyleEncoder, adversarial_loss,
                                                  grad_reverse, infonce_loss, mesh_graph, orthogonality_loss,
                                                  style_kl_loss, style_similarity_loss, topk_contrastive_loss)
from gaussian_flametalk.flametalk.inference import load_reference_motion, load_talk
from gaussian_flametalk.flametalk.train import TalkConfig, fit_talk, open_subjects, train_talk
from gaussian_flametalk.headmodel import make_synthetic_head

from test_flametalk import make_subject, speech_like


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors here are small: one thread is faster than two and keeps timings stable on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------ losses

def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.tensor([3.0, 4.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-1.5, -2.0]))  # d/dx = -0.5 * (3, 4)


def test_losses_on_hand_computed_cases():
    # cross-entropy: logits (0, ln 3) -> p = (1/4, 3/4)
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert adversarial_loss(logits, torch.tensor([1, 0])).item() == pytest.approx(expected)
    # cosine similarity: cos = 0 and 1
    a, b = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert style_similarity_loss(a, b).item() == pytest.approx(0.5)
    # orthogonality: cos^2 = 1, 0, 1/2
    style, content = torch.tensor([[1.0, 0.0]]), torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])
    assert orthogonality_loss(style, content).item() == pytest.approx(0.5)
    # InfoNCE with S = I / tau: every row -log(e^(1/tau) / (e^(1/tau) + 1)) = log(1 + e^(-1/tau))
    eye = torch.eye(2)
    assert infonce_loss(eye, eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-5)
    assert infonce_loss(eye, 3 * eye, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)
    # top-k (k = 1) bidirectional: S = cos(x_i, y_j) = [[1, .6, 0], [0, .8, 0], [0, 0, 1]]
    x = torch.eye(3)
    y = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])

    def sp(d: float) -> float:  # -log(e^p / (e^p + e^n)) = log(1 + e^(n - p)), d = n - p
        return math.log(1 + math.exp(d))

    rows = (sp(0.6 - 1) + sp(0 - 0.8) + sp(0 - 1)) / 3  # x -> y: hardest negatives .6, 0, 0
    cols = (sp(0 - 1) + sp(0.6 - 0.8) + sp(0 - 1)) / 3  # y -> x: hardest negatives 0, .6, 0
    assert topk_contrastive_loss(x, y, k=1, temperature=1.0).item() == pytest.approx((rows + cols) / 2, rel=1e-5)
    # symmetric KL of softmax((1, 0)) and softmax((0, 1)): KL = (e - 1) / (e + 1) both ways; scale-free
    kl = (math.e - 1) / (math.e + 1)
    assert style_kl_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 5.0]]), 1.0).item() == pytest.approx(kl)
    assert style_kl_loss(y, y).item() == pytest.approx(0.0, abs=1e-6)


def test_adversarial_gradient_reaches_the_encoder_reversed():
    """The classifier descends the cross-entropy; the features before the reversal ascend it."""
    feats = torch.tensor([[0.5, -1.0]], requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    adversarial_loss(grad_reverse(feats, 2.0) @ w, torch.tensor([0])).backward()
    plain = torch.tensor([[0.5, -1.0]], requires_grad=True)
    adversarial_loss(plain @ w.detach(), torch.tensor([0])).backward()
    assert torch.allclose(feats.grad, -2.0 * plain.grad)


# ------------------------------------------------------------------------------------------------ encoders

def test_mesh_graph_and_graph_attention():
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    square = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    cluster, edges = mesh_graph(faces, square, 10)  # full mesh: the 5 edges, both ways
    assert torch.equal(cluster, torch.arange(4)) and edges.shape == (2, 10)
    assert {tuple(e) for e in edges.T.tolist()} == {(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0), (2, 3), (3, 2),
                                                   (0, 3), (3, 0)}
    cluster, edges = mesh_graph(faces, square, 2)  # centres 0 and its farthest, 2; ties go to the first
    assert cluster.tolist() == [0, 0, 1, 0] and {tuple(e) for e in edges.T.tolist()} == {(0, 1), (1, 0)}

    layer = GraphAttentionLayer(1, 1, heads=1)
    with torch.no_grad():
        layer.lin.weight.fill_(1.0)
        layer.att_target.zero_()
        layer.att_source.fill_(1.0)  # score_ij = LeakyReLU(h_j)
    edges = torch.tensor([[0, 1, 0, 1, 2], [1, 0, 0, 1, 2]])  # 0 <-> 1, self loops, 2 alone
    x = torch.tensor([[[0.0], [math.log(3.0)], [5.0]]])
    out = layer(x, edges)[0, :, 0]
    # node 0 and 1 attend to h = (0, ln 3) with weights (1/4, 3/4); node 2 only to itself
    assert out.tolist() == pytest.approx([0.75 * math.log(3.0)] * 2 + [5.0], rel=1e-5)


def test_identity_style_of_an_unseen_subject_ignores_the_personal_table():
    torch.manual_seed(0)
    enc = IdentityStyleEncoder(3, 8, heads=2).eval()
    g = torch.randn(2, 8)
    subject = torch.tensor([1, -1])
    before = enc(g, subject)
    with torch.no_grad():
        enc.personal.weight.add_(torch.randn_like(enc.personal.weight))
    after = enc(g, subject)
    assert not torch.allclose(before[0], after[0]) and torch.allclose(before[1], after[1])


def test_base_style_inputs_are_checked():
    head = make_synthetic_head()
    plain = FlameTalk(FlameTalkSpec(head.motion_dim, 16, head.n_vertices, dim=16))
    with pytest.raises(ValueError, match="without --ptalker"):
        plain.base_style(head.template[None], reference=torch.zeros(10, head.motion_dim))
    model = FlameTalk(FlameTalkSpec(head.motion_dim, 16, head.n_vertices, dim=16, ptalker=True, n_subjects=3,
                                    gat_points=32, style_frames=8), head).eval()
    with pytest.raises(ValueError, match="reference motion"):
        model.base_style(head.template[None], 0)
    with torch.no_grad():
        style = model.base_style(head.template[None], None, torch.randn(20, head.motion_dim))  # 2 pieces of 8
    assert style.shape == (1, 16)
    with pytest.raises(ValueError, match="needs the head model"):
        FlameTalk(FlameTalkSpec(head.motion_dim, 16, head.n_vertices, ptalker=True, n_subjects=2))


@pytest.mark.parametrize("mode", ["parallel", "autoregressive"])
def test_ptalker_streaming_equals_one_shot(mode):
    """The audio style is taken per window, so streaming still gives the one-shot frames."""
    head = make_synthetic_head()
    torch.manual_seed(0)
    enc = load_encoder("mel", dim=16).eval()
    model = FlameTalk(FlameTalkSpec(head.motion_dim, 16, head.n_vertices, dim=16, dropout=0.0, ptalker=True,
                                    n_subjects=2, gat_points=32, style_frames=8), head).eval()
    torch.nn.init.normal_(model.motion_out.weight, std=0.1)
    audio, _ = speech_like(2.0, 3)
    style = dict(subject=1, reference=torch.randn(30, head.motion_dim))
    one = predict(model, enc, audio, head.template, 25, mode, window=20, overlap=4, **style)
    stream = StreamingPredictor(model, enc, head.template, 25, mode, window=20, overlap=4, **style)
    parts = [stream.push(audio[i: i + 3000]) for i in range(0, len(audio), 3000)] + [stream.flush()]
    np.testing.assert_allclose(np.concatenate(parts), one, atol=1e-4)
    other = predict(model, enc, audio, head.template, 25, mode, window=20, overlap=4, subject=None,
                    reference=style["reference"])
    assert np.abs(other - one).max() > 1e-3  # the personal style matters


# ------------------------------------------------------------------------------------------------ training

AMPLITUDES = (0.1, 0.2, 0.3, 0.4)


def _config(subjects: tuple[Path, ...], out: Path, iterations: int, **kw) -> TalkConfig:
    opts = dict(subjects=subjects, out=out, iterations=iterations, seq_frames=32, batch_size=4, progress=False,
                checkpoint_every=10_000, window=50, overlap=10, dim=32, mel_dim=32, loss_regions=("lips",),
                ptalker=True, stage_switch=iterations // 2, style_frames=32, gat_points=64, infer_mode="parallel", audio_encoder="mel")
    opts.update(kw)
    return TalkConfig(**opts)


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> tuple[Path, dict, dict[str, Path]]:
    """Four training subjects whose jaw opening is amplitude x speech envelope, amplitudes 0.1 .. 0.4, and two unseen
    ones (0.15, 0.35)."""
    root = tmp_path_factory.mktemp("ptalker")
    subjects = tuple(make_subject(root / f"S{a}", seconds=8.0, seed=10 + i, amplitude=a)
                     for i, a in enumerate(AMPLITUDES))
    unseen = {"low": make_subject(root / "unseen_low", seconds=8.0, seed=40, amplitude=0.15),
              "high": make_subject(root / "unseen_high", seconds=8.0, seed=41, amplitude=0.35)}
    meta = train_talk(_config(subjects, root / "talk", 100))
    return root, meta, unseen


def test_multi_subject_training_learns(multi):
    root, meta, _ = multi
    history = torch.load(root / "talk" / "checkpoint.pt", weights_only=False)["history"]
    rec = [h["reconstruction"] for h in history]
    print(f"\nreconstruction loss {np.mean(rec[:10]):.2f} -> {np.mean(rec[-10:]):.2f} mm^2; "
          + ", ".join(f"{k} {np.mean([h[k] for h in history[-10:]]):.3f}" for k in
                      ("adversarial", "style", "orthogonal", "mi", "contrastive", "kl", "content")))
    assert np.mean(rec[-10:]) < 0.4 * np.mean(rec[:10])
    assert [h["stage"] for h in history] == [1] * 50 + [2] * 50
    assert set(meta["test"]) == {f"S{a}" for a in AMPLITUDES}
    for name, r in meta["test"].items():
        print(f"{name}: LVE {r['lve_mm']:.2f} mm (mean-motion baseline {r['baseline_lve_mm']:.2f}), "
              f"mouth-opening correlation {r['mouth_opening_correlation']:.3f}")
        assert r["lve_mm"] < 0.6 * r["baseline_lve_mm"] and r["mouth_opening_correlation"] > 0.8


@pytest.mark.parametrize("mode", ["parallel", "autoregressive"])
def test_unseen_subject_style_from_a_reference_clip(multi, mode):
    """The same speech, an identity the model never saw, motion style from a reference clip of a subject with a
    small or a large mouth amplitude (0.15 / 0.35 rad x envelope): the predicted mouth opening follows."""
    root, _, unseen = multi
    audio, _ = speech_like(6.0, 99)
    std = {}
    for name, ref in (("low", unseen["low"]), ("high", unseen["high"]), ("high_npz", unseen["high"] / "params.npz")):
        talk = load_talk(root / "talk", subject=unseen["low"], style_reference=ref)
        assert talk.subject_index is None  # unseen: no personal one-hot style
        motion = torch.from_numpy(talk.predict(audio, mode))
        std[name] = float(mouth_opening(talk.head, motion, talk.shape).std()) * 1000
    print(f"\n{mode}: predicted mouth-opening std {std['low']:.2f} mm with the 0.15 reference, {std['high']:.2f} mm "
          f"with the 0.35 reference (true ratio {0.35 / 0.15:.2f})")
    assert std["high"] > 1.3 * std["low"]
    assert std["high_npz"] == pytest.approx(std["high"], rel=1e-5)  # the same motion from a folder or an npz
    own = load_talk(root / "talk", subject=root / f"S{AMPLITUDES[0]}")
    assert own.subject_index == 0 and own.reference.shape == (160, own.model.spec.motion_dim)


def test_resume_across_the_stage_switch(tmp_path):
    subjects = (make_subject(tmp_path / "A", seconds=4.0, seed=1, amplitude=0.1),
                make_subject(tmp_path / "B", seconds=4.0, seed=2, amplitude=0.3))

    def cfg(out: str, n: int) -> TalkConfig:
        return _config(subjects, tmp_path / out, n, seq_frames=16, style_frames=16, stage_switch=2, batch_size=2)

    _, head, datas = open_subjects(cfg("x", 4))
    fit_talk(datas, head, cfg("a", 4), tmp_path / "a")
    fit_talk(datas, head, cfg("b", 1), tmp_path / "b")
    one = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    fit_talk(datas, head, cfg("c", 2), tmp_path / "c")
    _, _, info = fit_talk(datas, head, cfg("b", 4), tmp_path / "b")  # resumes at 1, crosses the switch at 2
    assert info["resumed_from"] == 1 and info["iterations_run"] == 3
    a, b, c = (torch.load(tmp_path / k / "checkpoint.pt", weights_only=False) for k in "abc")
    assert [h["stage"] for h in b["history"]] == [1, 1, 2, 2]
    np.testing.assert_allclose([h["loss"] for h in b["history"]], [h["loss"] for h in a["history"]], rtol=1e-4)
    # stage 1 (iterations 1, 2) froze the audio encoder and trained the rest; stage 2 trained it
    for k, v in one["encoder"].items():
        assert torch.equal(v, c["encoder"][k])
    assert not torch.equal(one["model"]["audio_proj.weight"], c["model"]["audio_proj.weight"])
    assert any(not torch.equal(v, a["encoder"][k]) for k, v in c["encoder"].items())


def test_ptalker_inputs_fail_clearly(tmp_path):
    one = make_subject(tmp_path / "one", seconds=3.0)
    with pytest.raises(ValueError, match="two or more SUBJECT"):
        train_talk(_config((one,), tmp_path / "o", 1))
    two = (one, make_subject(tmp_path / "two", seconds=3.0, seed=1))
    with pytest.raises(ValueError, match="unknown --stage1-frozen groups.*'decodr'"):
        train_talk(_config(two, tmp_path / "o", 1, stage1_frozen=("decodr",)))
    head = make_synthetic_head()
    bad = tmp_path / "bad.npz"
    np.savez(bad, expression=np.zeros((5, head.n_expression)))
    with pytest.raises(ValueError, match="bad.npz.*lacks \\['jaw'\\]"):
        load_reference_motion(bad, head)
    np.savez(bad, expression=np.zeros((5, 3)), jaw=np.zeros((5, 3)))
    with pytest.raises(ValueError, match=f"bad.npz.*expression must be \\(T, {head.n_expression}\\)"):
        load_reference_motion(bad, head)
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_reference_motion(tmp_path / "nothing.npz", head)
    motion = load_reference_motion(one, head)
    assert motion.shape == (75, head.motion_dim)


def test_single_subject_checkpoints_without_ptalker_fields_still_load(tmp_path):
    """A checkpoint written before the PTalker fields existed resumes and loads; a style reference needs PTalker."""
    subject = make_subject(tmp_path / "S", seconds=3.0)
    cfg = dict(seq_frames=16, batch_size=2, ptalker=False, window=40, overlap=8)
    train_talk(_config((subject,), tmp_path / "talk", 1, **cfg))
    path = tmp_path / "talk" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    for key in ("ptalker", "n_subjects", "gat_points", "gat_layers", "style_frames"):
        del state["spec"][key]
    torch.save(state, path)
    talk = load_talk(tmp_path / "talk")
    assert talk.subject_index is None and talk.reference is None
    assert talk.predict(speech_like(1.0, 5)[0]).shape == (25, talk.model.spec.motion_dim)
    meta = train_talk(_config((subject,), tmp_path / "talk", 2, **cfg))
    assert meta["resumed_from"] == 1
    with pytest.raises(ValueError, match="without --ptalker"):
        load_talk(tmp_path / "talk", style_reference=subject)


def test_cli_shows_the_ptalker_options():
    from gaussian_flametalk.scripts.gft import build_parser

    parser = build_parser()
    args = parser.parse_args(["train-talk", "A", "B", "C", "--ptalker", "--stage-switch", "10", "--stage1-frozen",
                              "audio_encoder", "mesh", "--w-adversarial", "0.2", "--identity-dropout", "0.5"])
    assert args.ptalker and args.stage_switch == 10 and args.stage1_frozen == ["audio_encoder", "mesh"]
    assert args.w_adversarial == 0.2 and args.identity_dropout == 0.5
    sub = next(a for a in parser._actions if a.dest == "command").choices["train-talk"]
    text = sub.format_help()
    for flag in ("--ptalker", "--style-frames", "--stage-switch", "--stage1-frozen", "--w-adversarial", "--grl-lambda",
                 "--w-style", "--w-orthogonal", "--w-mi", "--w-contrastive", "--w-kl", "--w-content", "--topk",
                 "--gat-points", "--identity-dropout"):
        assert flag in text
