"""FlameTalk motion metrics (FDD, FFE, upper face), the "it uses the audio" ablation, and bad audio at inference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gaussian_flametalk.io.audio import SAMPLE_RATE, AudioError, save_wav
from gaussian_flametalk.flametalk.encoders import load_encoder
from gaussian_flametalk.headmodel.motion import upper_face_ids
from gaussian_flametalk.metrics.motion import face_dynamics_deviation, fourier_frequency_error
from gaussian_flametalk.flametalk.model import FlameTalk, FlameTalkArch, FlameTalkSpec
from gaussian_flametalk.flametalk.inference import TalkModel
from gaussian_flametalk.flametalk.train import load_subject_data
from gaussian_flametalk.headmodel import load_head_model, make_synthetic_head
from gaussian_flametalk.scripts.bench_talk import (BenchTalkConfig, build_parser, format_table, run_ablation,
                                                   shuffle_audio)
from gaussian_flametalk.io.subject import Subject
from test_flametalk import make_subject, speech_like

# ------------------------------------------------------------------------------------------------ metrics


def _along(norms: list[float], direction: tuple[float, float, float]) -> torch.Tensor:
    """(T, 3) displacements of the given lengths along a unit direction."""
    return torch.tensor(norms)[:, None] * torch.tensor(direction)[None]


def test_fdd_hand_computed():
    template = torch.tensor([[0.1, 0.2, 0.3], [-1.0, 0.5, 2.0]])
    # vertex 0: |motion| 0, 2, 0, 2 (std 1) in truth, 0, 1, 0, 1 (std 0.5) predicted; vertex 1: still in truth
    # (|motion| 1 throughout, std 0), |motion| 0, 3, 0, 3 predicted (std 1.5)
    true = torch.stack([_along([0, 2, 0, 2], (0, 0.6, 0.8)), _along([1, 1, 1, 1], (1, 0, 0))], dim=1) + template
    pred = torch.stack([_along([0, 1, 0, 1], (0.8, 0, -0.6)), _along([0, 3, 0, 3], (0, 1, 0))], dim=1) + template
    fdd = face_dynamics_deviation(pred, true, template)
    assert fdd.item() == pytest.approx(((1 - 0.5) + (0 - 1.5)) / 2)  # ground truth minus prediction: -0.5
    assert face_dynamics_deviation(true, true, template).item() == pytest.approx(0.0, abs=1e-7)
    # CodeTalker's script squares the norm: truth 0, 4, 0, 4 (std 2) and 1, 1, 1, 1; prediction 0, 1, 0, 1 (0.5)
    # and 0, 9, 0, 9 (4.5)
    sq = face_dynamics_deviation(pred, true, template, squared=True)
    assert sq.item() == pytest.approx(((2 - 0.5) + (0 - 4.5)) / 2)
    with pytest.raises(ValueError, match="FDD needs"):
        face_dynamics_deviation(pred, true[:3], template)


def test_ffe_hand_computed():
    """StyleSpeaker eq. 13: first 20 DFT components, squared norm of the difference, mean over N x 3 coordinates."""
    amp = 3.0
    for t, mirrored in ((40, False), (8, True)):
        true = torch.zeros(t, 1, 3)
        true[:, 0, 1] = amp * torch.cos(2 * math.pi * torch.arange(t) / t)  # bin 1 (and its mirror T - 1): A T / 2
        # T = 40: components 0..19 hold bin 1 only; T = 8 (< 20): all 8, the mirror bin 7 too
        expected = (1 + mirrored) * (amp * t / 2) ** 2 / 3
        assert fourier_frequency_error(torch.zeros_like(true), true).item() == pytest.approx(expected, rel=1e-5)
        # twice the motion differs by the motion itself: the same error as none
        assert fourier_frequency_error(2 * true, true).item() == pytest.approx(expected, rel=1e-5)
    # a constant offset c sits in component 0: |F_0| = c T, over 3 coordinates
    t = 30
    offset = torch.zeros(t, 1, 3)
    offset[:, 0, 0] = 0.5
    assert fourier_frequency_error(offset, torch.zeros_like(offset)).item() == pytest.approx((0.5 * t) ** 2 / 3)
    # motion above the 20th component does not count
    fast = torch.zeros(100, 1, 3)
    fast[:, 0, 2] = torch.cos(2 * math.pi * 30 * torch.arange(100) / 100)
    assert fourier_frequency_error(fast, torch.zeros_like(fast)).item() == pytest.approx(0.0, abs=1e-6)


def _check_upper_face(head) -> torch.Tensor:
    ids = upper_face_ids(head)
    lmk = head.landmarks(head.template[None])[0]
    nose_y = lmk[31:36, 1].mean()
    face, lips = head.regions["face"], head.regions["lips"]
    assert torch.isin(ids, face).all() and not torch.isin(ids, lips).any()
    y = head.template[:, 1]
    assert (y[ids] >= nose_y).all()
    rest = face[~torch.isin(face, ids) & ~torch.isin(face, lips)]
    assert (y[rest] < nose_y).all()  # every face vertex above the nose base is in
    assert y[ids].max() == y[face].max() and y[face].min() < nose_y  # brows/forehead in, chin out
    return ids


def test_upper_face_ids_synthetic():
    ids = _check_upper_face(make_synthetic_head())
    assert 100 < ids.numel() < 405  # part of the 405 face vertices


def test_upper_face_ids_ict(shared_dir):
    folder = shared_dir / "headmodels" / "ict-facekit" / "FaceXModel"
    if not folder.is_dir():
        pytest.skip(f"no ICT-FaceKit at {folder}")
    head = load_head_model(f"ict:{folder}")
    ids = _check_upper_face(head)
    assert ids.numel() > 1000


# ------------------------------------------------------------------------------------------------ ablation


def test_shuffle_audio_permutes_training_blocks_only(tmp_path):
    subject = make_subject(tmp_path / "S", seconds=4.0)
    data = load_subject_data(Subject.open(subject), make_synthetic_head())
    shuffled = shuffle_audio(data, seed=3)
    spf = SAMPLE_RATE // 25
    n_train = len(data.train_idx)
    assert shuffled.wave.shape == data.wave.shape and torch.equal(shuffled.motion, data.motion)
    assert torch.equal(shuffled.wave[n_train * spf:], data.wave[n_train * spf:])  # test audio untouched
    orig = data.wave[: n_train * spf].reshape(n_train, spf)
    new = shuffled.wave[: n_train * spf].reshape(n_train, spf)
    match = (new[:, None] == orig[None]).all(-1)  # (new block, original block)
    assert (match.sum(1) >= 1).all()  # every block is one of the original blocks...
    src = match.float().argmax(1)
    assert len(set(src.tolist())) == n_train  # ...each used once
    assert (src != torch.arange(n_train)).float().mean() > 0.9
    assert torch.equal(shuffle_audio(data, seed=3).wave, shuffled.wave)  # fixed


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine OpenMP's second thread makes these small steps ~5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_model_beats_mean_and_shuffled_audio(tmp_path, one_thread):
    """Issue 6: on a subject whose jaw follows its speech envelope, LVE >= 20 % below both baselines."""
    subject = make_subject(tmp_path / "S", seconds=8.0)
    cfg = BenchTalkConfig(subjects=(subject,), iterations=30, seq_frames=32, batch_size=2, progress=False,
                          checkpoint_every=10_000, window=50, overlap=10, audio_encoder="mel")
    result = run_ablation(cfg)
    s = result["subjects"]["S"]
    print("\n" + format_table(result))
    assert s["frames"] == 40
    assert s["model"]["lve_mm"] <= 0.8 * s["mean"]["lve_mm"]
    assert s["model"]["lve_mm"] <= 0.8 * s["shuffled"]["lve_mm"]
    assert s["gain_vs_mean"]["lve_mm"] >= 0.2 and s["gain_vs_shuffled"]["lve_mm"] >= 0.2
    assert s["model"]["ffe_mm2"] < s["mean"]["ffe_mm2"]  # the mean baseline has no motion spectrum at all
    assert s["mean"]["fdd_mm"] > 0  # a still face under-moves: positive FDD
    table = format_table(result)
    assert table.count("| S |") == 3 and "PASS" in table and "FAIL" not in table


def test_bench_cli_options():
    args = build_parser().parse_args(["A", "--iterations", "5", "--shuffle-seed", "4", "--audio-encoder", "mel"])
    assert [str(s) for s in args.subjects] == ["A"] and args.iterations == 5 and args.shuffle_seed == 4


# ------------------------------------------------------------------------------------------------ bad audio


def test_predict_file_rejects_unusable_audio(tmp_path):
    """Too short, corrupt, unsupported and sound-less files fail naming the file and the problem (the silent file's
    closed mouth is in test_flametalk)."""
    head = make_synthetic_head()
    enc = load_encoder("mel", dim=16).eval()
    model = FlameTalk(FlameTalkSpec(head.motion_dim, 16, head.n_vertices, FlameTalkArch(dim=32, dropout=0.0))).eval()
    talk = TalkModel(model, enc, head, head.template, torch.zeros(head.n_shape), 25.0, 50, 10)
    assert talk.predict_file(_speech(tmp_path / "ok.wav"))["jaw"].shape == (25, 3)
    short = tmp_path / "short.wav"
    save_wav(short, speech_like(1.0, 0)[0][:300])
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(_speech(tmp_path / "src.wav").read_bytes()[:30] + b"\x00garbage" * 40)
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n" * 20)
    image = tmp_path / "picture.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    cases = [(short, "shorter than 40 ms"), (corrupt, "corrupt or unsupported|no audio samples"),
             (text, "corrupt or unsupported"), (image, "has no audio stream")]
    for path, reason in cases:
        with pytest.raises(AudioError, match=rf"{path.name}: .*({reason})"):
            talk.predict_file(path)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        talk.predict_file(tmp_path / "missing.wav")


def _speech(path: Path) -> Path:
    save_wav(path, speech_like(1.0, 1)[0])
    return path
