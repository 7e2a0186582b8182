"""FlameTalk priors (``--init``), the projection into the subject's tracked distribution, and the defaults (issue 15)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_flametalk import make_subject  # noqa: E402

from gaussian_flametalk.flametalk.inference import load_talk  # noqa: E402
from gaussian_flametalk.flametalk.projection import MotionProjector  # noqa: E402
from gaussian_flametalk.flametalk.model import FlameTalkArch  # noqa: E402
from gaussian_flametalk.flametalk.train import TalkConfig, train_talk  # noqa: E402
from gaussian_flametalk.headmodel import make_synthetic_head  # noqa: E402


def _cfg(subjects, out, iterations, **kw) -> TalkConfig:
    opts = dict(subjects=tuple(subjects), out=out, iterations=iterations, seq_frames=30, batch_size=2,
                progress=False, checkpoint_every=10_000, window=50, overlap=10, model=FlameTalkArch(dim=32),
                mel_dim=32, audio_encoder="mel")
    opts.update(kw)
    return TalkConfig(**opts)


def _history(folder: Path) -> list[float]:
    return [h["loss"] for h in torch.load(folder / "checkpoint.pt", weights_only=False)["history"]]


@pytest.fixture(scope="module")
def prior(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prior")
    subjects = [make_subject(root / f"S{i}", seconds=8.0, seed=i, amplitude=0.2 + 0.05 * i) for i in range(2)]
    train_talk(_cfg(subjects, root / "prior", 40))
    return root, root / "prior"


def test_init_loads_the_prior_and_adapts(prior, tmp_path):
    root, folder = prior
    new = make_subject(tmp_path / "NEW", seconds=6.0, seed=5, amplitude=0.3)
    meta = train_talk(_cfg([new], tmp_path / "adapt", 12, init=folder))
    scratch = train_talk(_cfg([new], tmp_path / "scratch", 12))
    adapted, fresh = _history(tmp_path / "adapt"), _history(tmp_path / "scratch")
    # the prior already knows speech -> mouth: it starts well below a fresh model and keeps falling
    assert adapted[0] < 0.8 * fresh[0]
    assert np.mean(adapted[-4:]) < np.mean(adapted[:4])
    assert meta["config"]["init"] == str(folder)
    # the weights came from the prior (the step from it is small), not from a fresh initialisation
    p = torch.load(folder / "checkpoint.pt", weights_only=False)["model"]
    a = torch.load(tmp_path / "adapt" / "checkpoint.pt", weights_only=False)["model"]
    s = torch.load(tmp_path / "scratch" / "checkpoint.pt", weights_only=False)["model"]
    w = "motion_out.weight"
    assert (a[w] - p[w]).norm() < (s[w] - p[w]).norm()
    # the checkpoint.pt itself is accepted too
    train_talk(_cfg([new], tmp_path / "adapt2", 1, init=folder / "checkpoint.pt"))


def test_init_refuses_a_mismatched_prior_naming_the_file(prior, tmp_path):
    root, folder = prior
    new = make_subject(tmp_path / "NEW", seconds=4.0, seed=6)
    with pytest.raises(ValueError, match=r"prior.*checkpoint\.pt.*--audio-encoder mel.*phonetic"):
        train_talk(_cfg([new], tmp_path / "a", 1, init=folder, audio_encoder="phonetic"))
    with pytest.raises(ValueError, match=r"checkpoint\.pt.*architecture differs.*--model\.dim 32 vs 16"):
        train_talk(_cfg([new], tmp_path / "b", 1, init=folder, model=FlameTalkArch(dim=16)))
    state = torch.load(folder / "checkpoint.pt", weights_only=False)
    state["head_model"] = "ict"
    state["spec"] = {**state["spec"], "motion_dim": 55, "n_vertices": 999}
    bad = tmp_path / "other_head.pt"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"other_head\.pt.*ict head model.*same head model"):
        train_talk(_cfg([new], tmp_path / "c", 1, init=bad))
    with pytest.raises(FileNotFoundError, match="nowhere.*no prior checkpoint"):
        train_talk(_cfg([new], tmp_path / "d", 1, init=tmp_path / "nowhere"))


def test_the_linear_base_is_fitted_per_subject_never_taken_from_a_prior(prior, tmp_path):
    """--model.base-frames: a prior (several subjects) leaves its linear base unfitted, adapting it fits the new
    subject's own; a prior without a base (the default, base_frames 0) adapts with one too."""
    root, folder = prior
    based = FlameTalkArch(dim=32, base_frames=2)
    meta = train_talk(_cfg([root / "S0", root / "S1"], tmp_path / "p", 2, model=based))
    assert meta["spec"]["arch"]["base_frames"] == 2 and meta["spec"]["raw_dim"] == 80  # mel: 80 log-mel bands
    assert not load_talk(tmp_path / "p").model.base.fitted
    new = make_subject(tmp_path / "NEW", seconds=6.0, seed=7, amplitude=0.3)
    for prior_folder, out in ((tmp_path / "p", "a"), (folder, "b")):
        train_talk(_cfg([new], tmp_path / out, 2, init=prior_folder, model=based))
        base = load_talk(tmp_path / out).model.base
        assert base.fitted and float(base.ridge) in base.LAMBDAS
    assert load_talk(folder).model.base is None  # the default: no base


def test_projection_keeps_predictions_in_the_training_distribution():
    head = make_synthetic_head()
    rng = np.random.default_rng(0)
    n, m = 200, head.motion_dim
    z = torch.from_numpy(rng.uniform(0, 1, (n, 2))).float()
    train = torch.zeros(n, m)
    train[:, 0] = 0.6 * z[:, 0]  # two expressions moving together, a third alone, the jaw with the first
    train[:, 1] = 0.3 * z[:, 0]
    train[:, 2] = 0.5 * z[:, 1]
    train[:, -3] = 0.02 * z[:, 0]
    planted = train[:5].clone()
    planted[0, 0] = 7.0  # far out of range
    planted[1, 5] = -3.0  # a coordinate the subject never moved
    planted[2, 1] = planted[2, 0] + 0.3  # off the subspace of the correlated pair
    clip = MotionProjector.fit(train, head, "clip")
    lo, hi = train.min(0).values, train.max(0).values
    width = hi - lo
    out = clip(planted)
    assert (out >= lo - 0.1 * width - 1e-6).all() and (out <= hi + 0.1 * width + 1e-6).all()
    assert out[1, 5].abs() < 1e-5
    pca = MotionProjector.fit(train, head, "pca", variance=0.9999)  # two directions carry it all
    assert pca.components == 2
    out = pca(planted)
    assert (out >= lo - 0.1 * width - 1e-6).all() and (out <= hi + 0.1 * width + 1e-6).all()
    # projected rows are combinations of the training directions: the pair keeps its 2:1 ratio
    c = out[:, 0] - pca.mean[0]
    np.testing.assert_allclose(out[:, 1] - pca.mean[1], 0.5 * c, atol=2e-3)
    # training frames are (nearly) unchanged; "none" is the identity; numpy in -> numpy out
    assert (pca(train) - train).abs().max() < 1e-3
    assert torch.equal(MotionProjector.fit(train, head, "none")(planted), planted)
    assert isinstance(pca(planted.numpy()), np.ndarray)
    # a head model with a box (ICT blend-shape weights): the box, not the tracked range
    boxed = make_synthetic_head()
    boxed.expression_bounds = (0.0, 1.0)
    out = MotionProjector.fit(train, boxed, "clip")(planted)
    assert out[0, 0] == 1.0 and out[1, 5] == 0.0
    with pytest.raises(ValueError, match="unknown projection"):
        MotionProjector.fit(train, head, "box")


def test_defaults_and_the_saved_projection(prior, tmp_path):
    root, folder = prior
    cfg = TalkConfig(subjects=(Path("S"),))
    assert (cfg.iterations, cfg.seq_frames, cfg.project, cfg.pca_variance, cfg.infer_mode, cfg.audio_encoder) == DEFAULTS
    assert cfg.init is None
    with pytest.raises(ValueError, match="pca-variance"):
        TalkConfig(subjects=(Path("S"),), pca_variance=0.0)
    saved = json.loads((folder / "meta.json").read_text())["config"]
    assert saved["project"] == cfg.project
    talk = load_talk(folder)
    assert talk.projector is not None and talk.projector.mode == cfg.project
    raw = load_talk(folder, project="none")
    rng = np.random.default_rng(1)
    wave = (0.1 * rng.standard_normal(16000 * 2)).astype(np.float32)
    motion, unprojected = talk.predict(wave), raw.predict(wave)
    np.testing.assert_allclose(motion, talk.projector(unprojected), atol=1e-5)
    with pytest.raises(ValueError, match="unknown projection"):
        load_talk(folder, project="box")


#: The defaults of ``gft train-talk`` chosen by the leave-one-subject-out ablation (BENCHMARKS.md).
DEFAULTS = (80, 50, "pca", 0.95, "parallel", "mel+phonetic")


def test_cli_has_init_and_project():
    from gaussian_flametalk.scripts.gft import build_parser

    args = build_parser().parse_args(["train-talk", "NEW", "--init", "PRIOR", "--project", "clip",
                                      "--pca-variance", "0.8"])
    assert str(args.init) == "PRIOR" and args.project == "clip" and args.pca_variance == 0.8
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-talk", "NEW", "--project", "box"])
