"""PTalker (§3 of the paper): every loss term against a hand-computed case of its equation, gradient reversal, the
graph attention encoder, the causal motion content and its way into the decoder (eq. 16), the pretrained audio style
encoders offline, training on several synthetic subjects (two stages, resume across the switch, the style-space
picture), the style of an unseen subject from a reference motion clip, and the plain FlameTalk path unchanged."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gaussian_flametalk.flametalk.encoders import load_encoder
from gaussian_flametalk.headmodel.motion import mouth_opening
from gaussian_flametalk.flametalk.model import (FlameTalk, FlameTalkArch, FlameTalkSpec, PTalkerArch,
                                               StreamingPredictor, predict)
from gaussian_flametalk.flametalk.ptalker import (CausalInstanceNorm, GraphAttentionLayer, IdentityStyleEncoder,
                                                  adversarial_loss, contrastive_loss, gaussian_kl_loss, grad_reverse,
                                                  info_loss, mesh_graph, motion_loss, orthogonality_loss,
                                                  sequence_l2_loss, style_similarity_loss, topk_contrastive_loss,
                                                  velocity_l2_loss)
from gaussian_flametalk.flametalk.inference import load_reference_motion, load_talk
from gaussian_flametalk.flametalk.train import PTalkerOptions, TalkConfig, fit_talk, open_subjects, train_talk
from gaussian_flametalk.headmodel import make_synthetic_head

from test_flametalk import _tiny_transformers, make_subject, speech_like


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


def test_eq1_adversarial_cross_entropy_and_its_reversed_gradient():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    assert adversarial_loss(logits, torch.tensor([1, 0])).item() == pytest.approx((-math.log(0.75)
                                                                                   - math.log(0.25)) / 2)
    feats = torch.tensor([[0.5, -1.0]], requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    adversarial_loss(grad_reverse(feats, 2.0) @ w, torch.tensor([0])).backward()
    plain = torch.tensor([[0.5, -1.0]], requires_grad=True)
    adversarial_loss(plain @ w.detach(), torch.tensor([0])).backward()
    assert torch.allclose(feats.grad, -2.0 * plain.grad)  # the encoder ascends what the classifier descends


def test_eq3_cosine_style_similarity_over_the_three_pairs():
    s_a, s_m, s_p = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    # cos(s_a, s_m) = 0, cos(s_a, s_p) = cos(s_m, s_p) = 1 / sqrt 2
    expected = 1 * 1.0 + 2 * (1 - 1 / math.sqrt(2)) + 3 * (1 - 1 / math.sqrt(2))
    assert style_similarity_loss(s_a, s_m, s_p, (1.0, 2.0, 3.0)).item() == pytest.approx(expected, rel=1e-6)
    assert style_similarity_loss(s_p, 2 * s_p, 3 * s_p).item() == pytest.approx(0.0, abs=1e-6)


def test_eq4_procrustes_orthogonality_after_adaptive_pooling():
    # one style frame: the content is pooled to its mean (0.5, 0.5); P = c^T s = [[1, 0], [1, 0]]; PP^T - I =
    # [[0, 1], [1, 0]] -> sqrt 2; a second clip with zero content adds -I (norm^2 2): sqrt(4) / B = 1
    content = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    style = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    assert orthogonality_loss(content[:1], style[:1]).item() == pytest.approx(math.sqrt(2), rel=1e-6)
    assert orthogonality_loss(content, style).item() == pytest.approx(1.0, rel=1e-6)
    # 4 content frames pooled to the style's 2: (2, 0), (0, 3); P = sum_f c_f s_f^T = diag(2, 3); PP^T - I = diag(3, 8)
    c4 = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]]])
    s2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert orthogonality_loss(c4, s2).item() == pytest.approx(math.sqrt(73), rel=1e-6)


def test_eq5_info_loss():
    eye = torch.eye(2)  # S = I / tau: every row -log(e^(1/tau) / (e^(1/tau) + 1)) = log(1 + e^(-1/tau))
    assert info_loss(eye, eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-5)
    assert info_loss(eye, 3 * eye, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)


def test_eqs6_7_topk_bidirectional_contrastive():
    a = torch.eye(3)
    c = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    # E^{A->C}_ij = cos(a_i, c_j) = c_j[i]: [[1, .6, 0], [0, .8, 0], [0, 0, 1]]; top-2 of each row, positive included
    alpha, beta, lam, e = 2.0, 0.5, 0.25, math.exp

    def term(pos: float, top: tuple[float, float]) -> float:
        return -alpha * math.log(e(pos) / (beta * (e(top[0]) + e(top[1]))))

    a2c = (term(1, (1, .6)) + term(.8, (.8, 0)) + term(1, (1, 0))) / 3
    c2a = (term(1, (1, 0)) + term(.8, (.8, .6)) + term(1, (1, 0))) / 3  # E^{C->A} = E^T
    got = topk_contrastive_loss(a, c, k=2, alpha=alpha, beta=beta, lam=lam, temperature=1.0)
    assert got.item() == pytest.approx(lam * a2c + (1 - lam) * c2a, rel=1e-5)


def test_eqs8_9_gaussian_kl_and_the_contrastive_sum():
    a, c = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [5.0]])  # mu_a 1, var_a 1; mu_c 3, var_c 4
    kl = 0.5 * (math.log(4 / 1) + (1 + (1 - 3) ** 2) / 4 - 1)
    assert gaussian_kl_loss(a, c).item() == pytest.approx(kl, rel=1e-5)
    assert gaussian_kl_loss(c, c).item() == pytest.approx(0.0, abs=1e-6)
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    frames_a, frames_c = torch.randn(10, 3), torch.randn(10, 3)
    total = contrastive_loss(x, y, frames_a, frames_c, k=2, temperature=0.5)
    assert total.item() == pytest.approx((topk_contrastive_loss(x, y, k=2, temperature=0.5)
                                          + gaussian_kl_loss(frames_a, frames_c)).item(), rel=1e-6)


def test_eqs10_13_motion_losses():
    pred = torch.zeros(2, 2, 2, 3)  # sequence 0: frame 0 error (3, 4, 0) + 0 -> 5, frame 1 (1, 0, 0) -> 1
    pred[0, 0, 0] = torch.tensor([3.0, 4.0, 0.0])
    pred[0, 1, 0] = torch.tensor([1.0, 0.0, 0.0])
    true = torch.zeros_like(pred)
    assert sequence_l2_loss(pred, true).item() == pytest.approx((3.0 + 0.0) / 2)  # sequence 1 has no error
    # velocity: sequence 0's only step differs by (1, 0, 0) - (3, 4, 0) -> sqrt 20, summed over t = 2..T over T = 2
    assert velocity_l2_loss(pred, true).item() == pytest.approx((math.sqrt(20) / 2 + 0.0) / 2, rel=1e-6)
    total, parts = motion_loss(pred, true, torch.tensor([0, 1]), torch.tensor([1]), (1.0, 2.0, 3.0))
    assert parts["mou"].item() == 0.0 and parts["rec"].item() == pytest.approx(1.5)
    assert total.item() == pytest.approx(1.5 + 3 * math.sqrt(20) / 4, rel=1e-6)


# ------------------------------------------------------------------------------------------------ encoders

def test_mesh_graph_and_graph_attention():
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    square = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    cluster, edges, centres = mesh_graph(faces, square, 10)  # full mesh: the 5 edges, both ways
    assert torch.equal(cluster, torch.arange(4)) and torch.equal(centres, torch.arange(4)) and edges.shape == (2, 10)
    assert {tuple(e) for e in edges.T.tolist()} == {(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0), (2, 3), (3, 2),
                                                   (0, 3), (3, 0)}
    cluster, edges, centres = mesh_graph(faces, square, 2)  # centres 0 and its farthest, 2; ties go to the first
    assert centres.tolist() == [0, 2] and cluster.tolist() == [0, 0, 1, 0]
    assert {tuple(e) for e in edges.T.tolist()} == {(0, 1), (1, 0)}

    layer = GraphAttentionLayer(1, 1, heads=1)
    with torch.no_grad():
        layer.lin.weight.fill_(1.0)
        layer.att_target.zero_()
        layer.att_source.fill_(1.0)  # score_vu = LeakyReLU(h_u)
    edges = torch.tensor([[0, 1, 0, 1, 2], [1, 0, 0, 1, 2]])  # 0 <-> 1, self loops, 2 alone
    x = torch.tensor([[[0.0], [math.log(3.0)], [5.0]]])
    out = layer(x, edges)[0, :, 0]
    # node 0 and 1 attend to h = (0, ln 3) with weights (1/4, 3/4); node 2 only to itself
    assert out.tolist() == pytest.approx([0.75 * math.log(3.0)] * 2 + [5.0], rel=1e-5)


def test_causal_instance_norm():
    x = torch.tensor([[[1.0, 3.0, 2.0, 10.0]]])
    y = CausalInstanceNorm(eps=0.0)(x)[0, 0]
    # t = 1: mean 2, var 1 -> 1; t = 2: mean 2, var 2/3 -> 0; t = 3: mean 4, var 12.5 -> 6 / sqrt 12.5
    assert y[1:].tolist() == pytest.approx([1.0, 0.0, 6 / math.sqrt(12.5)], rel=1e-5)
    assert torch.allclose(CausalInstanceNorm()(x)[..., :3], CausalInstanceNorm()(x[..., :3]))


def test_identity_style_of_an_unseen_subject_ignores_the_personal_table():
    torch.manual_seed(0)
    enc = IdentityStyleEncoder(3, 8, heads=2).eval()
    subject = torch.tensor([1, -1, 2])
    before = enc(subject)
    with torch.no_grad():
        enc.personal.weight.add_(torch.randn_like(enc.personal.weight))
    after = enc(subject)
    assert not torch.allclose(before[0], after[0]) and torch.allclose(before[1], after[1])
    with torch.no_grad():
        enc.common.weight[2].add_(1.0)  # subject 2's common style
    assert torch.allclose(after[:2], enc(subject)[:2]) and not torch.allclose(after[2], enc(subject)[2])


def _ptalker_model(head, **kw) -> FlameTalk:
    torch.manual_seed(0)
    model = FlameTalk(FlameTalkSpec(head.motion_dim, 16, head.n_vertices, FlameTalkArch(dim=16, dropout=0.0),
                                    n_subjects=2, ptalker=PTalkerArch(gat_points=32, style_frames=8, **kw)),
                      head).eval()
    torch.nn.init.normal_(model.motion_out.weight, std=0.1)
    return model


def test_motion_content_reaches_the_decoder_and_is_causal():
    head = make_synthetic_head()
    model = _ptalker_model(head)
    with torch.no_grad():  # O_v = 0: the history reaches the decoder only through c = E_m^c(E_G(history))
        model.motion_in.weight.zero_()
        model.motion_in.bias.zero_()
    torch.manual_seed(1)
    feats, style = torch.randn(1, 24, 16), torch.randn(1, 16)
    hist = 0.3 * torch.randn(1, 12, head.motion_dim)
    with torch.no_grad():
        out = model(feats, style, hist)
        c = model.history_content(hist, 1, 12)
        assert torch.equal(model(feats, style, hist, c), out)
        assert (model(feats, style, hist, torch.zeros_like(c)) - out).abs().max() > 1e-3  # c_{1:T} changes M^
        later = hist.clone()
        later[:, 7] += 0.5
        moved = (model(feats, style, later) - out).abs().amax(dim=-1)[0]
        c_moved = (model.history_content(later, 1, 12) - c).abs().amax(dim=-1)[0]
    assert moved[:7].max() < 1e-5 and moved[7:].min() > 1e-4  # frame t sees history rows <= t only
    assert c_moved[:7].max() < 1e-5 and c_moved[7] > 1e-4


def test_autoregressive_generation_feeds_its_own_content_back():
    """Y = model(feats, style, shift(Y)) in one pass: the content codes came from the generated history."""
    head = make_synthetic_head()
    model = _ptalker_model(head)
    torch.manual_seed(2)
    feats, style = torch.randn(1, 20, 16), torch.randn(1, 16)
    with torch.no_grad():
        y = model.generate(feats, style, "autoregressive")
        again = model(feats, style, torch.cat([y[:, :1], y[:, :-1]], dim=1))
    assert torch.allclose(y, again, atol=1e-5)


def test_base_style_inputs_are_checked():
    head = make_synthetic_head()
    plain = FlameTalk(FlameTalkSpec(head.motion_dim, 16, head.n_vertices, FlameTalkArch(dim=16)))
    with pytest.raises(ValueError, match="without --ptalker"):
        plain.base_style(head.template[None], reference=torch.zeros(10, head.motion_dim))
    model = _ptalker_model(head)
    with pytest.raises(ValueError, match="reference motion"):
        model.base_style(head.template[None], 0)
    with torch.no_grad():
        style = model.base_style(head.template[None], None, torch.randn(20, head.motion_dim))  # 2 pieces of 8
    assert style.shape == (1, 16)
    with pytest.raises(ValueError, match="needs the head model"):
        FlameTalk(FlameTalkSpec(head.motion_dim, 16, head.n_vertices, n_subjects=2, ptalker=PTalkerArch()))


@pytest.mark.parametrize("mode", ["parallel", "autoregressive"])
def test_ptalker_streaming_equals_one_shot(mode):
    """The audio style is taken per window, so streaming still gives the one-shot frames."""
    head = make_synthetic_head()
    enc = load_encoder("mel", dim=16).eval()
    model = _ptalker_model(head)
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


def _config(subjects: tuple[Path, ...], out: Path, iterations: int, pt: dict | None = None, **kw) -> TalkConfig:
    opts = dict(subjects=subjects, out=out, iterations=iterations, seq_frames=32, batch_size=4, progress=False,
                checkpoint_every=10_000, window=50, overlap=10, model=FlameTalkArch(dim=32), mel_dim=32,
                loss_regions=("lips",), ptalker=True, infer_mode="parallel", audio_encoder="mel",
                pt=PTalkerOptions(**{"stage_switch": iterations // 2, "style_frames": 32, "gat_points": 64,
                                     **(pt or {})}))
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
    pt = dict(stage_switch=12, identity_dropout=0.5, gat_points=32)
    meta = train_talk(_config(subjects, root / "talk", 50, pt=pt, seq_frames=24))
    return root, meta, unseen


def test_multi_subject_training_learns(multi):
    root, meta, _ = multi
    history = torch.load(root / "talk" / "checkpoint.pt", weights_only=False)["history"]
    rec = [h["rec"] for h in history]
    print(f"\nL_rec {np.mean(rec[:10]):.2f} -> {np.mean(rec[-10:]):.2f} mm; "
          + ", ".join(f"{k} {np.mean([h[k] for h in history[-10:]]):.3f}" for k in
                      ("mou", "vel", "adv", "cos", "orth", "info", "cts")))
    assert np.mean(rec[-10:]) < 0.6 * np.mean(rec[:10])
    assert [h["stage"] for h in history] == [1] * 12 + [2] * 38
    pt = PTalkerOptions()
    for h in history:  # eq. 13 and eq. 14 from the logged terms
        assert h["motion"] == pytest.approx(h["rec"] + h["mou"] + h["vel"], rel=1e-5)
        expected = h["motion"] + pt.beta_adv * h["adv"] + pt.beta_orth * h["orth"] + pt.beta_info * h["info"] \
            + pt.beta_cts * h["cts"] + pt.beta_cos * h["cos"]
        assert h["loss"] == pytest.approx(expected, rel=1e-5)
    assert set(meta["test"]) == {f"S{a}" for a in AMPLITUDES}
    for name, r in meta["test"].items():
        print(f"{name}: LVE {r['lve_mm']:.2f} mm (mean-motion baseline {r['baseline_lve_mm']:.2f}), "
              f"mouth-opening correlation {r['mouth_opening_correlation']:.3f}")
        assert r["lve_mm"] < 0.8 * r["baseline_lve_mm"] and r["mouth_opening_correlation"] > 0.8
    png = root / "talk" / "style_space.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    space = meta["style_space"]
    print(f"style space: nearest-centroid accuracy {space['clip_style_accuracy']:.2f} (s_a + s_m), "
          f"{space['style_accuracy']:.2f} (s), {space['clips']} clips")
    assert space["clips"] == 4 * 5 and space["style_accuracy"] >= 0.85  # s_p separates the training subjects


@pytest.mark.parametrize("mode", ["parallel", "autoregressive"])
def test_unseen_subject_style_from_a_reference_clip(multi, mode):
    """The same speech, an identity the model never saw, motion style from a reference clip of a subject with a
    small or a large mouth amplitude (0.15 / 0.35 rad x envelope): the predicted mouth opening follows."""
    root, _, unseen = multi
    audio, _ = speech_like(6.0 if mode == "parallel" else 3.0, 99)  # autoregressive: T passes, a shorter clip
    std = {}
    refs = [("low", unseen["low"]), ("high", unseen["high"])]
    for name, ref in refs + ([("high_npz", unseen["high"] / "params.npz")] if mode == "parallel" else []):
        talk = load_talk(root / "talk", subject=unseen["low"], style_reference=ref)
        assert talk.subject_index is None  # unseen: no personal one-hot style
        motion = torch.from_numpy(talk.predict(audio, mode))
        std[name] = float(mouth_opening(talk.head, motion, talk.shape).std()) * 1000
    print(f"\n{mode}: predicted mouth-opening std {std['low']:.2f} mm with the 0.15 reference, {std['high']:.2f} mm "
          f"with the 0.35 reference (true ratio {0.35 / 0.15:.2f})")
    assert std["high"] > 1.2 * std["low"]  # 1.3 measured (50 iterations); without the reference's effect 1.0
    if mode == "parallel":
        assert std["high_npz"] == pytest.approx(std["high"], rel=1e-5)  # the same motion from a folder or an npz
    own = load_talk(root / "talk", subject=root / f"S{AMPLITUDES[0]}")
    assert own.subject_index == 0 and own.reference.shape == (160, own.model.spec.motion_dim)


def test_ptalker_checkpoints_with_the_flat_spec_load(multi, tmp_path):
    """A PTalker checkpoint saved before PTalkerArch (its fields flat beside ``ptalker: true``) loads as the same
    model."""
    root, _, _ = multi
    old = tmp_path / "talk"
    shutil.copytree(root / "talk", old)
    state = torch.load(old / "checkpoint.pt", weights_only=False)
    spec = state["spec"]
    spec.update(ptalker=True, **spec.pop("ptalker"))
    torch.save(state, old / "checkpoint.pt")
    talk, now = load_talk(old), load_talk(root / "talk")
    assert talk.model.spec == now.model.spec and talk.model.spec.ptalker == PTalkerArch(gat_points=32, style_frames=32)
    wave = speech_like(1.0, 5)[0]
    np.testing.assert_array_equal(talk.predict(wave, "parallel"), now.predict(wave, "parallel"))


def test_checkpoints_of_the_earlier_ptalker_are_refused_clearly(multi, tmp_path):
    root, _, _ = multi
    old = tmp_path / "talk"
    shutil.copytree(root / "talk", old)
    state = torch.load(old / "checkpoint.pt", weights_only=False)
    state["model"] = {("ptalker.mesh." + k[len("ptalker.graph."):] if k.startswith("ptalker.graph.") else k): v
                      for k, v in state["model"].items()}
    torch.save(state, old / "checkpoint.pt")
    with pytest.raises(ValueError, match="checkpoint.pt: trained with the earlier PTalker approximation"):
        load_talk(old)


def test_resume_across_the_stage_switch(tmp_path):
    subjects = (make_subject(tmp_path / "A", seconds=4.0, seed=1, amplitude=0.1),
                make_subject(tmp_path / "B", seconds=4.0, seed=2, amplitude=0.3))

    def cfg(out: str, n: int) -> TalkConfig:
        return _config(subjects, tmp_path / out, n, pt=dict(style_frames=16, stage_switch=2), seq_frames=16,
                       batch_size=2)

    _, head, datas = open_subjects(cfg("x", 4))
    fit_talk(datas, head, cfg("a", 4), tmp_path / "a")
    fit_talk(datas, head, cfg("b", 1), tmp_path / "b")
    one = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    flat = {**one, "spec": {**one["spec"], "ptalker": True, **one["spec"]["ptalker"]}}
    torch.save(flat, tmp_path / "b" / "checkpoint.pt")  # as saved before PTalkerArch: it resumes all the same
    fit_talk(datas, head, cfg("c", 2), tmp_path / "c")
    _, _, info = fit_talk(datas, head, cfg("b", 4), tmp_path / "b")  # resumes at 1, crosses the switch at 2
    assert info["resumed_from"] == 1 and info["iterations_run"] == 3
    a, b, c = (torch.load(tmp_path / k / "checkpoint.pt", weights_only=False) for k in "abc")
    assert [h["stage"] for h in b["history"]] == [1, 1, 2, 2]
    for key in ("loss", "rec", "adv", "cts"):
        np.testing.assert_allclose([h[key] for h in b["history"]], [h[key] for h in a["history"]], rtol=1e-4)
    # stage 1 (iterations 1, 2) froze the style encoders and trained the content side; stage 2 trained them too
    style = [k for k in one["model"] if k.split(".")[:2] in (["ptalker", g] for g in ("identity", "motion_style",
                                                                                   "audio_style"))]
    assert style and all(torch.equal(one["model"][k], c["model"][k]) for k in style)
    for k in ("ptalker.motion_content.proj.weight", "ptalker.classifier.net.0.weight", "audio_proj.weight"):
        assert not torch.equal(one["model"][k], c["model"][k])
    assert any(not torch.equal(c["model"][k], a["model"][k]) for k in style)


def test_pretrained_audio_encoders_offline(tmp_path, monkeypatch):
    """HuBERT as E_a^c and two wav2vec2 networks (speaker-ID W_s, emotion W_e) as E_a^s, from local folders with
    HF_HUB_OFFLINE=1 (tiny random models built here): training runs and s_a follows the waveform."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hubert = _tiny_transformers("hubert", tmp_path / "hubert")
    speaker = _tiny_transformers("wav2vec2", tmp_path / "sid")
    emotion = _tiny_transformers("wav2vec2", tmp_path / "er")
    subjects = (make_subject(tmp_path / "A", seconds=3.0, seed=1), make_subject(tmp_path / "B", seconds=3.0, seed=2))
    cfg = _config(subjects, tmp_path / "o", 1, pt=dict(style_frames=8, speaker_encoder=str(speaker),
                                                       emotion_encoder=str(emotion)),
                  audio_encoder=f"hubert:{hubert}", seq_frames=8, batch_size=2, model=FlameTalkArch(dim=16))
    _, head, datas = open_subjects(cfg)
    model, encoder, info = fit_talk(datas, head, cfg, tmp_path / "o")
    saved = info["spec"]["ptalker"]
    assert saved["speaker_encoder"] == str(speaker) and saved["emotion_encoder"] == str(emotion)
    style = model.ptalker.audio_style
    assert len(style.pretrained) == 2 and encoder.spec == f"hubert:{hubert}"
    torch.manual_seed(3)
    wave = torch.randn(1, 16000)
    with torch.no_grad():
        feats = encoder(wave, 25)
        s1, s2 = style(feats, wave), style(feats, torch.randn(1, 16000))
    assert s1.shape == (1, 16) and (s1 - s2).abs().max() > 1e-4
    with pytest.raises(ValueError, match="waveform"):
        style(feats, None)


def test_plain_flametalk_is_unchanged(tmp_path):
    """The template-style path is bit for bit what it was before PTalker was rebuilt: the loss history of this run
    was recorded with the previous code (commit fa4efad)."""
    subjects = (make_subject(tmp_path / "A", seconds=4.0, seed=1, amplitude=0.1),
                make_subject(tmp_path / "B", seconds=4.0, seed=2, amplitude=0.3))
    cfg = TalkConfig(subjects=subjects, out=tmp_path / "o", iterations=6, seq_frames=16, batch_size=2, progress=False,
                     checkpoint_every=10_000, model=FlameTalkArch(dim=16), mel_dim=16, loss_regions=("lips",),
                     audio_encoder="mel", device="cpu")
    _, head, datas = open_subjects(cfg)
    _, _, info = fit_talk(datas, head, cfg, tmp_path / "o")
    recorded = [5.281896591186523, 24.534181594848633, 7.600529193878174, 34.1715202331543, 39.69076156616211,
                24.452011108398438]
    np.testing.assert_allclose([h["loss"] for h in info["history"]], recorded, rtol=1e-5)


def test_ptalker_inputs_fail_clearly(tmp_path):
    one = make_subject(tmp_path / "one", seconds=3.0)
    with pytest.raises(ValueError, match="two or more SUBJECT"):
        train_talk(_config((one,), tmp_path / "o", 1))
    with pytest.raises(ValueError, match="unknown --pt.stage1-frozen groups.*'decodr'"):
        PTalkerOptions(stage1_frozen=("decodr",))
    with pytest.raises(ValueError, match="--pt.cos-weights takes three"):
        PTalkerOptions(cos_weights=(1.0, 1.0))
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
    for key in ("ptalker", "n_subjects"):  # a plain spec's PTalker fields (flat then, nested in PTalkerArch now)
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
    from gaussian_flametalk.config import dataclass_from_args
    from gaussian_flametalk.scripts.gft import build_parser

    parser = build_parser()
    args = parser.parse_args(["train-talk", "A", "B", "C", "--ptalker", "--pt.stage-switch", "10",
                              "--pt.stage1-frozen", "audio_encoder", "graph", "--pt.beta-adv", "0.2",
                              "--pt.identity-dropout", "0.5", "--pt.cos-weights", "1", "0.5", "0.25"])
    cfg = dataclass_from_args(TalkConfig, args)
    assert cfg.ptalker and cfg.pt.stage_switch == 10 and cfg.pt.stage1_frozen == ("audio_encoder", "graph")
    assert cfg.pt.beta_adv == 0.2 and cfg.pt.identity_dropout == 0.5 and cfg.pt.cos_weights == (1.0, 0.5, 0.25)
    args = parser.parse_args(["train-talk", "A", "B", "--ptalker", "--pt.gat-points", "32", "--pt.gat-layers", "1",
                              "--pt.style-frames", "8", "--pt.speaker-encoder", "sid"])
    pt = dataclass_from_args(TalkConfig, args).pt  # the model's fields, as the spec saves them
    assert pt.arch() == PTalkerArch(style_frames=8, gat_points=32, gat_layers=1, speaker_encoder="sid")
    sub = next(a for a in parser._actions if a.dest == "command").choices["train-talk"]
    text = sub.format_help()
    for flag in ("--ptalker", "--pt.style-frames", "--pt.stage-switch", "--pt.stage1-frozen", "--pt.beta-adv",
                 "--pt.grl-alpha", "--pt.beta-cos", "--pt.beta-orth", "--pt.beta-info", "--pt.beta-cts", "--pt.topk",
                 "--pt.topk-alpha", "--pt.topk-beta", "--pt.topk-lambda", "--pt.alpha-mou", "--pt.gat-points",
                 "--pt.identity-dropout", "--pt.speaker-encoder", "--pt.emotion-encoder"):
        assert flag in text
