"""``gft train-talk SUBJECT [SUBJECT ...]``: train FlameTalk on tracked subjects (speech -> expression + jaw).

Data: each SUBJECT's ``audio.wav`` and tracked ``params.npz``; motion = expression (+ jaw where the head model has
a jaw joint); the template (style input) is the subject's mean tracked mesh. Train/test split as the avatar's
(``Subject.split``: the last 20 % of frames, or the last 30 s, never trained on).

Training: random clips of ``seq_frames`` frames from the training frames, teacher forcing with history dropout
(each history row replaced by the mean motion with probability ``history_dropout``, which is what the parallel
inference mode sees), Adam. Loss in millimetres on the vertices of ``loss_regions``: vertex MSE + ``w_velocity``
velocity MSE (+ ``w_trend`` StyleSpeaker trend loss over ``trend_orders`` orders when > 0), against the augmented
ground truth (see :mod:`.losses`).

PTalker (``--ptalker``, two or more SUBJECTs; the paper's §3 as :mod:`.ptalker` maps it, options ``--pt.*`` in
:class:`PTalkerOptions`): the decoder is eq. 16, D(a_{1:T}, c_{1:T}, s) with s = s_a + s_m + s_p: s_m from another
random clip (``style_frames`` frames) of the same subject, s_p from the subject's one-hot identity (hidden with
probability ``identity_dropout``, which trains the unseen-subject path), s_a from the clip's audio, c_{1:T} the motion
content of the teacher-forced history through E_G and E_m^c. The loss is eq. 14, b1 L_motion (eq. 13: eqs. 10-12 on
the ``loss_regions`` vertices, the mouth term on the lips) + b2 L_adv + b3 L_orth + b4 L_Info + b5 L_cts, plus
b_cos L_cos (eq. 3). Two stages (§4.1): before iteration ``stage_switch`` the groups in ``stage1_frozen`` (default:
the style encoders) are frozen, so only the content side and the classifier learn against each other; from it on
everything trains (a resumed run is in the stage its iteration says). Training ends with a style-space picture,
``style_space.png`` (PCA of per-clip style codes coloured by subject, as the paper's Fig. 4).

A prior (``--init PRIOR``, issue 15): a run on several SUBJECTs is a reusable prior; ``gft train-talk NEW --init
PRIOR`` starts from its weights (model and audio encoder; same head model, audio encoder and architecture
``--model.*``, else a refusal naming the file) with NEW's own motion mean and spread (the prior maps speech to motion
in normalised units, the statistics are the person's) and adapts for ``iterations`` (default 80: about 2 CPU minutes
on a loaded 2-core machine). Test-split predictions are kept in the subject's tracked distribution (``--project``, see
:mod:`.projection`; the setting is saved and is :func:`~.inference.load_talk`'s default).

Two options for few-second subjects, measured on the real clips and off by default (BENCHMARKS.md): a linear base
under the transformer (``--model.base-frames W``: a ridge regression from the encoder's raw features, fitted in closed
form on one subject, :func:`fit_linear_base`; the transformer learns the rest) and early stopping on a held-out slice
of the training frames (``--val-share``, :func:`select_iterations`).

The test split is predicted from its own audio, decoded on its own (``encoder.prepare(wave, alone=True)``), as
``gft drive`` decodes a speech file.

Outputs in OUT (default: the first SUBJECT's ``talk/``), each written atomically, ``meta.json`` last:
``checkpoint.pt`` (every ``checkpoint_every`` iterations and at the end; a re-run resumes, and continues exactly as
an uninterrupted run would), ``test/<subject>.npz`` (test frames: ``frames``, ``motion_pred``, ``motion_true``,
``expression``, ``jaw``), with ``--ptalker`` ``style_space.png``, ``meta.json`` (the :mod:`~gaussian_flametalk.io.meta`
schema: config, versions, inputs, outputs, timings with it/s, figures with the final training loss; per subject under
``test``: test vertex error and LVE against the mean-motion baseline, mouth-opening correlation).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..atomic import save_figure, save_npz, write_json
from ..config import config_to_dict, flag_name, resolve_device, validate
from ..headmodel import HeadModel
from ..io.lock import stage_lock
from ..io.meta import StageMeta, package_versions, write_meta
from ..io.subject import Subject
from ..io.training import Checkpoint, RunState, restore, run_training
from ..io.audio import SAMPLE_RATE, AudioError, load_audio
from .encoders import AudioEncoder, load_encoder
from .inference import subject_template
from ..headmodel.motion import motion_from_params, motion_to_kwargs, motion_vertices, mouth_opening
from ..metrics.motion import lip_vertex_error
from .losses import trend_loss, velocity_loss, vertex_loss
from .model import ARCH_FIELDS, FlameTalk, FlameTalkArch, FlameTalkSpec, PTalkerArch, eval_mode, predict
from .projection import MotionProjector
from .ptalker import (adversarial_loss, contrastive_loss, info_loss, motion_loss, orthogonality_loss,
                      style_similarity_loss)

__all__ = ["PTalkerOptions", "STAGE_GROUPS", "TalkConfig", "TalkData", "evaluate_talk", "fit_talk", "load_subject_data",
           "main", "style_space", "train_talk"]

#: Parameter groups ``--stage1-frozen`` can name: the audio encoder, the decoder (everything of FlameTalk outside the
#: PTalker encoders) and the PTalker submodules.
STAGE_GROUPS = ("audio_encoder", "decoder", "graph", "identity", "motion_style", "motion_content", "audio_style",
                "classifier")


@dataclass
class PTalkerOptions(PTalkerArch):
    """PTalker's options (``--pt.NAME``, used with ``--ptalker``): the model's own fields (:class:`~.model.PTalkerArch`,
    saved in the spec: ``--pt.style-frames``, ``--pt.gat-points``, ``--pt.gat-layers``, ``--pt.speaker-encoder``,
    ``--pt.emotion-encoder``), then the training options; the weights carry the paper's symbols."""

    identity_dropout: float = field(default=0.3, metadata={"min": 0, "max": 1, "help": "probability of hiding a clip's "
                                                                   "one-hot identity (trains the unseen-subject path)"})
    stage_switch: int = field(default=200, metadata={"min": 0, "help": "iteration where stage 2 (everything trainable) "
                                                                       "starts"})
    stage1_frozen: tuple[str, ...] = field(default=("identity", "motion_style", "audio_style"), metadata={
        "help": f"parameter groups frozen in stage 1 ({', '.join(STAGE_GROUPS)}); default the style encoders"})
    alpha_rec: float = field(default=1.0, metadata={"min": 0, "help": "eq. 13 a1: reconstruction L_rec"})
    alpha_mou: float = field(default=1.0, metadata={"min": 0, "help": "eq. 13 a2: mouth L_mou"})
    alpha_vel: float = field(default=1.0, metadata={"min": 0, "help": "eq. 13 a3: velocity L_vel"})
    beta_motion: float = field(default=1.0, metadata={"min": 0, "help": "eq. 14 b1: L_motion"})
    beta_adv: float = field(default=0.1, metadata={"min": 0, "help": "eq. 14 b2: adversarial L_adv"})
    beta_orth: float = field(default=0.1, metadata={"min": 0, "help": "eq. 14 b3: orthogonality L_orth"})
    beta_info: float = field(default=0.1, metadata={"help": "eq. 14 b4: L_Info (eq. 5 as printed; minimising it raises "
                                                            "the InfoNCE bound of style/content information, a "
                                                            "negative b4 lowers it)"})
    beta_cts: float = field(default=0.1, metadata={"min": 0, "help": "eq. 14 b5: L_cts = L_Top-k + L_KL"})
    beta_cos: float = field(default=0.1, metadata={"min": 0, "help": "style similarity L_cos (eq. 3; not in eq. 14)"})
    cos_weights: tuple[float, ...] = field(default=(1.0, 1.0, 1.0), metadata={
        "help": "eq. 3 w1 w2 w3: (s_a, s_m), (s_a, s_p), (s_m, s_p)"})
    grl_alpha: float = field(default=1.0, metadata={"min": 0, "help": "alpha_c, the gradient-reversal strength "
                                                                      "(eq. 1)"})
    tau: float = field(default=0.1, metadata={"above": 0, "help": "temperature of L_Info and of the similarities of "
                                                                  "L_Top-k"})
    topk: int = field(default=3, metadata={"min": 1, "help": "k of L_Top-k (eq. 6)"})
    topk_alpha: float = field(default=1.0, metadata={"min": 0, "help": "eq. 6 alpha (positive weight)"})
    topk_beta: float = field(default=1.0, metadata={"above": 0, "help": "eq. 6 beta (negative weight)"})
    topk_lambda: float = field(default=0.5, metadata={"min": 0, "max": 1, "help": "eq. 7 lambda (audio->content "
                                                                              "share)"})

    def __post_init__(self) -> None:
        unknown = [g for g in self.stage1_frozen if g not in STAGE_GROUPS]
        if unknown:
            raise ValueError(f"unknown --pt.stage1-frozen groups {unknown} (choose from {', '.join(STAGE_GROUPS)})")
        if len(self.cos_weights) != 3:
            raise ValueError(f"--pt.cos-weights takes three weights w1 w2 w3 (got {len(self.cos_weights)})")
        validate(self, "pt.")  # the ranges in the fields' metadata


@dataclass
class TalkConfig:
    """Options of ``gft train-talk``."""

    subjects: tuple[Path, ...] = field(metadata={"help": "tracked SUBJECT folders (from gft track)"})
    out: Path | None = field(default=None, metadata={"help": "output folder (default: FIRST_SUBJECT/talk)"})
    audio_encoder: str = field(default="mel+phonetic", metadata={
        "help": "mel | phonetic | mel+phonetic | wav2vec2:ID_OR_DIR | hubert:ID_OR_DIR"})
    iterations: int = field(default=80, metadata={"min": 1, 
        "help": "total training iterations (a re-run resumes); the default is the adaptation of a prior (--init) to "
                "a new subject, measured in BENCHMARKS.md; train a prior on several SUBJECTs longer"})
    seq_frames: int = field(default=50, metadata={"min": 2, "help": "frames per training clip"})
    batch_size: int = field(default=4, metadata={"min": 1, "help": "clips per iteration"})
    lr: float = field(default=1e-3, metadata={"above": 0, "help": "Adam learning rate"})
    model: FlameTalkArch = field(default_factory=FlameTalkArch, metadata={
        "help": "the FlameTalk decoder's architecture (--model.NAME; saved with the weights)"})
    mel_dim: int = field(default=128, metadata={"min": 1, "help": "mel encoder output channels"})
    history_dropout: float = field(default=0.5, metadata={"min": 0, "max": 1, "help": "probability of replacing a history row by the mean"})
    w_velocity: float = field(default=1.0, metadata={"min": 0, "help": "velocity loss weight"})
    w_trend: float = field(default=0.0, metadata={"min": 0, "help": "StyleSpeaker trend loss weight (0 = off)"})
    trend_orders: int = field(default=3, metadata={"min": 1, "help": "trend loss orders 1..R"})
    loss_regions: tuple[str, ...] = field(default=("face",), metadata={"help": "head-model regions in the loss"})
    window: int = field(default=100, metadata={"min": 2, "help": "inference window (frames)"})
    overlap: int = field(default=10, metadata={"min": 0, "help": "inference window overlap, cross-faded (frames)"})
    infer_mode: Literal["autoregressive", "parallel"] = field(default="parallel", metadata={
        "help": "test-split inference: autoregressive (each prediction fed back) or parallel (one pass, mean history)"})
    project: Literal["none", "clip", "pca"] = field(default="pca", metadata={
        "help": "keep predictions in the subject's tracked distribution: clip to the head model's box (tracked range "
                "where it has none), pca = clip + projection onto the training motion's principal subspace; applied "
                "to the test-split scores and saved as the inference default"})
    pca_variance: float = field(default=0.95, metadata={"above": 0, "max": 1, "help": "--project pca: fraction of the training motion's "
                                                                "variance the kept components explain"})
    val_share: float = field(default=0.0, metadata={"min": 0, "below": 1, "help":
        "early stopping (one subject): hold out this share of the training frames (the last ones), train on the rest "
        "to --iterations, scoring the held-out LVE every --val-every iterations (and before the first), then train "
        "on all training frames for the best count (0: off)"})
    val_every: int = field(default=10, metadata={"min": 1, "help": "--val-share: scoring interval (iterations)"})
    init: Path | None = field(default=None, metadata={
        "help": "start from the weights of a prior (a gft train-talk folder or its checkpoint.pt, trained on other "
                "subjects with the same head model and audio encoder) and adapt it to the SUBJECTs"})
    checkpoint_every: int = field(default=250, metadata={"min": 1, "help": "checkpoint interval (iterations)"})
    device: str = field(default="auto", metadata={"help": "torch device: auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    ptalker: bool = field(default=False, metadata={"help": "PTalker (2+ SUBJECTs): style/content disentanglement and "
                                                           "three-level alignment, the --pt.* options"})
    pt: PTalkerOptions = field(default_factory=PTalkerOptions, metadata={"help": "PTalker (--ptalker) options"})

    def __post_init__(self) -> None:
        validate(self)
        if not 0 < self.pca_variance <= 1:
            raise ValueError(f"--pca-variance must be in (0, 1] (got {self.pca_variance})")
        self.device = resolve_device(self.device)


@dataclass
class TalkData:
    """One subject's training material.

    wave (S,) 16 kHz float32; motion (T, M); shape (n_shape,); template (V, 3) mean tracked mesh;
    train_idx / test_idx frame indices; fps; name.
    """

    wave: torch.Tensor
    motion: torch.Tensor
    shape: torch.Tensor
    template: torch.Tensor
    train_idx: np.ndarray
    test_idx: np.ndarray
    fps: float
    name: str


def load_subject_data(subject: Subject, model: HeadModel) -> TalkData:
    """Audio and motion of a SUBJECT; fails early with the folder and the problem."""
    if subject.audio_path is None:
        raise AudioError(f"{subject.root}: the SUBJECT has no audio.wav (its video had no sound): FlameTalk needs speech")
    wave = load_audio(subject.audio_path)
    params = subject.params()
    n_audio = int(round(wave.size * subject.fps / SAMPLE_RATE))
    if n_audio < 0.9 * subject.n_frames:
        raise AudioError(f"{subject.audio_path}: {wave.size / SAMPLE_RATE:.2f} s of audio for {subject.n_frames} frames "
                         f"({subject.n_frames / subject.fps:.2f} s): audio and frames do not match")
    motion = motion_from_params(params, model)
    shape = params.shape.mean(0)
    train_idx, test_idx = subject.split()
    template = subject_template(model, motion, shape, train_idx)
    return TalkData(torch.from_numpy(wave), motion, shape, template, train_idx, test_idx, subject.fps,
                    subject.root.name)


def audio_clip(wave: torch.Tensor, start: int, end: int, context: int, fps: float) -> torch.Tensor:
    """Samples of frames [start - context, end + context), zero outside the clip: (S',)."""
    spf = SAMPLE_RATE / fps
    a, b = int(round((start - context) * spf)), int(round((end + context) * spf))
    out = wave.new_zeros(b - a)
    lo, hi = max(a, 0), min(b, wave.numel())
    if hi > lo:
        out[lo - a: hi - a] = wave[lo:hi]
    return out


def _context_frames(encoder: AudioEncoder, fps: float) -> int:
    samples = encoder.context_samples if encoder.context_samples is not None else SAMPLE_RATE
    return int(math.ceil(samples * fps / SAMPLE_RATE))


def loss_vertex_ids(model: HeadModel, regions: tuple[str, ...]) -> torch.Tensor:
    unknown = [r for r in regions if r not in model.regions]
    if unknown:
        raise ValueError(f"unknown head-model regions {unknown} (have {list(model.regions)})")
    return torch.unique(torch.cat([model.regions[r] for r in regions]))


def evaluate_talk(model: FlameTalk, encoder: AudioEncoder, head: HeadModel, data: TalkData, cfg: TalkConfig,
             ids: torch.Tensor, mode: str, subject: int | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Predict the test frames from their audio and score them (mm) against the tracked motion and against the
    training-mean baseline. A PTalker model takes its motion style from the subject's training frames and its
    personal style from training-subject index ``subject`` (None: as an unseen subject).
    Returns (figures, predicted motion (T_test, M))."""
    device = next(model.parameters()).device
    a, b = int(data.test_idx[0]), int(data.test_idx[-1]) + 1
    spf = SAMPLE_RATE / data.fps
    wave = data.wave[int(round(a * spf)): int(round(b * spf))].numpy()
    reference = data.motion[data.train_idx] if model.spec.ptalker else None
    # the test audio is new speech, decoded on its own as TalkModel.predict (gft drive) decodes a speech file: not
    # as windows padded with zeros, nor as pieces of the whole clip the training prepared
    encoder.prepare(wave, alone=True)
    try:
        pred = predict(model, encoder, wave, data.template.to(device), data.fps, mode, cfg.window, cfg.overlap,
                       subject=subject, reference=reference)
    finally:
        encoder.release(wave)
    pred = MotionProjector.fit(data.motion[data.train_idx], head, cfg.project, cfg.pca_variance)(pred)
    n = min(len(pred), b - a)
    pred_t = torch.from_numpy(pred[:n])
    true = data.motion[a: a + n]
    base = data.motion[data.train_idx].mean(0).expand(n, -1)
    lips = head.regions["lips"]
    with torch.no_grad():
        vp, vt, vb = (motion_vertices(head, m[None], data.shape)[0] * 1000 for m in (pred_t, true, base))
        op, ot = mouth_opening(head, pred_t, data.shape), mouth_opening(head, true, data.shape)
    corr = float(np.corrcoef(op.numpy(), ot.numpy())[0, 1]) if op.std() > 0 and ot.std() > 0 else 0.0
    figures = {
        "frames": n,
        "vertex_error_mm": float((vp - vt)[:, ids].norm(dim=-1).mean()),
        "baseline_vertex_error_mm": float((vb - vt)[:, ids].norm(dim=-1).mean()),
        "lve_mm": float(lip_vertex_error(vp[:, lips], vt[:, lips])),
        "baseline_lve_mm": float(lip_vertex_error(vb[:, lips], vt[:, lips])),
        "mouth_opening_correlation": corr,
    }
    return figures, pred[:n]


def _check_ptalker(datas: list[TalkData], cfg: TalkConfig) -> None:
    if len(datas) < 2:
        raise ValueError(f"--ptalker learns speaking styles across subjects: give two or more SUBJECT folders "
                         f"(got {len(datas)})")


def _stage_groups(model: FlameTalk, encoder: AudioEncoder) -> dict[str, list[torch.nn.Parameter]]:
    """The trainable parameters of each of :data:`STAGE_GROUPS` (the ones frozen for good, e.g. a wav2vec2 CNN,
    stay out)."""
    inner = {id(p) for p in model.ptalker.parameters()}
    groups = {"audio_encoder": list(encoder.parameters()),
              "decoder": [p for p in model.parameters() if id(p) not in inner],
              **{name: list(module.parameters()) for name, module in model.ptalker.named_children()}}
    return {name: [p for p in ps if p.requires_grad] for name, ps in groups.items()}


def _ptalker_terms(model: FlameTalk, feats: torch.Tensor, waves: torch.Tensor, motion: torch.Tensor,
                   history: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor, shown: torch.Tensor,
                   fps: float, opts: PTalkerOptions) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """PTalker's style, content and disentanglement / alignment losses of a batch (eqs. 1-9).

    Args: feats (B, 2T, A) audio features; waves (B, S) their audio; motion (B, T, M) the target clips; history
    (B, T, M) the decoder's teacher-forced history; reference (B, T_r, M) other clips of the same subjects; labels
    (B,) subject indices; shown (B,) the same with hidden identities -1.
    Returns: style s = s_a + s_m(reference) + s_p (B, d), content c_{1:T} (B, T, d) of the history, and the
    unweighted terms "adv", "cos", "orth", "info", "cts" (scalars).
    """
    pt = model.ptalker
    b, t = motion.shape[:2]
    content = model.history_content(history, b, t)  # c_{1:T} = E_m^c(E_G(M))
    audio = model.audio_proj(feats).unflatten(1, (-1, 2)).mean(dim=2)  # a_{1:T} = E_a^c(chi), a frame's two features
    s_m = pt.clip_style(motion)  # the target clip's motion style (the losses' s_m)
    s_a = pt.audio_style(feats, waves, fps)
    s_p = pt.identity(shown)
    a_c, c_c = audio.mean(dim=1), content.mean(dim=1)  # time-averaged contents
    terms = {
        "adv": (adversarial_loss(pt.classifier(a_c, opts.grl_alpha), labels)
                + adversarial_loss(pt.classifier(c_c, opts.grl_alpha), labels)) / 2,
        "cos": style_similarity_loss(s_a, s_m, s_p, tuple(opts.cos_weights)),
        "orth": orthogonality_loss(audio, s_a) + orthogonality_loss(content, s_m),
        "info": info_loss(s_a, a_c, opts.tau) + info_loss(s_m, c_c, opts.tau),
        "cts": contrastive_loss(a_c, c_c, audio.flatten(0, 1), content.flatten(0, 1), k=opts.topk,
                                alpha=opts.topk_alpha, beta=opts.topk_beta, lam=opts.topk_lambda,
                                temperature=opts.tau),
    }
    return s_a + pt.clip_style(reference) + s_p, content, terms


def _clip_style_codes(model: FlameTalk, encoder: AudioEncoder, d: TalkData, k: int, frames: int, ctx: int,
                      clips: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Style codes of up to ``clips`` consecutive training clips of ``frames`` frames of subject ``d`` (training index
    k): (s_a + s_m (n, d), s = s_a + s_m + s_p (n, d))."""
    device = next(model.parameters()).device
    n = max(min(clips, len(d.train_idx) // frames), 1)
    size = min(frames, len(d.train_idx))
    out_clip, out_full = [], []
    for i in range(n):
        s = int(d.train_idx[i * size])
        wave = audio_clip(d.wave, s, s + size, ctx, d.fps).to(device)[None]
        feats = encoder(wave, size + 2 * ctx, d.fps)[:, 2 * ctx: 2 * (ctx + size)]
        s_am = model.ptalker.audio_style(feats, wave, d.fps) + model.ptalker.clip_style(
            d.motion[s: s + size][None].to(device))
        out_clip.append(s_am)
        out_full.append(s_am + model.ptalker.identity(torch.tensor([k], device=device)))
    return torch.cat(out_clip), torch.cat(out_full)


def style_space(model: FlameTalk, encoder: AudioEncoder, datas: list[TalkData], path: Path, clips: int = 8
                ) -> dict[str, float]:
    """The paper's Fig. 4 for a PTalker model: per-clip style codes of every training subject (up to ``clips``
    clips of ``style_frames`` training frames each) projected on their first two principal components, coloured by
    subject, two panels: s_a + s_m (what the clip itself gives) and s = s_a + s_m + s_p. Written to ``path`` (PNG).
    Returns the leave-one-out nearest-centroid accuracy of the subject in each space (1 = the subjects' clips cluster
    apart), as ``{"clip_style_accuracy", "style_accuracy", "clips"}``."""
    from matplotlib.figure import Figure  # no pyplot: save_figure draws on an Agg canvas

    ctx = _context_frames(encoder, datas[0].fps)
    with torch.no_grad(), eval_mode(model, encoder):
        codes = [_clip_style_codes(model, encoder, d, k, model.spec.ptalker.style_frames, ctx, clips)
                 for k, d in enumerate(datas)]
    labels = np.concatenate([np.full(len(c[0]), k) for k, c in enumerate(codes)])
    fig = Figure(figsize=(10, 4.5))
    result: dict[str, float] = {"clips": int(len(labels))}
    for j, (key, title) in enumerate((("clip_style_accuracy", "s_a + s_m (from the clip)"),
                                      ("style_accuracy", "s = s_a + s_m + s_p"))):
        x = torch.cat([c[j] for c in codes]).cpu().numpy().astype(np.float64)
        xc = x - x.mean(axis=0)
        u, sv, _ = np.linalg.svd(xc, full_matrices=False)
        xy = u[:, :2] * sv[:2]
        hits = 0
        for i in range(len(x)):
            others = np.arange(len(x)) != i
            cents = {k: x[others & (labels == k)].mean(axis=0) for k in np.unique(labels[others])}
            hits += int(min(cents, key=lambda k: np.linalg.norm(x[i] - cents[k])) == labels[i])
        result[key] = hits / len(x)
        ax = fig.add_subplot(1, 2, j + 1)
        for k, d in enumerate(datas):
            ax.scatter(xy[labels == k, 0], xy[labels == k, 1], s=30, label=d.name)
        ax.set_title(f"{title}\nnearest-centroid accuracy {result[key]:.2f}")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=8)
    fig.suptitle("PTalker style space: per-clip codes, PCA, coloured by subject")
    fig.tight_layout()
    save_figure(fig, path)
    return result


def read_prior(path: str | Path, spec: FlameTalkSpec, cfg: TalkConfig, head: HeadModel) -> dict:
    """The checkpoint of a ``--init`` prior (a ``gft train-talk`` folder or its ``checkpoint.pt``), checked against
    the run it starts: same head model (kind, motion size, vertex count), same audio encoder, same architecture.
    Every refusal names the file and what differs."""
    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"--init {path}: no prior checkpoint there (give a gft train-talk folder or its "
                                f"checkpoint.pt)")
    try:
        state = Checkpoint(file).read("cpu")
    except ValueError as e:
        raise ValueError(f"--init: {e}") from None
    if not isinstance(state, dict) or "model" not in state or "spec" not in state:
        raise ValueError(f"--init {file}: not a FlameTalk checkpoint (no model weights or spec)")
    prior = FlameTalkSpec.from_dict(state["spec"])
    if state.get("head_model") != head.kind or prior.motion_dim != spec.motion_dim \
            or prior.n_vertices != spec.n_vertices:
        raise ValueError(f"--init {file}: the prior drives the {state.get('head_model')} head model (motion size "
                         f"{prior.motion_dim}, {prior.n_vertices} vertices), the SUBJECTs were tracked with "
                         f"{head.kind} (motion size {spec.motion_dim}, {spec.n_vertices} vertices): use a prior "
                         f"trained with the same head model")
    if state.get("audio_encoder") != cfg.audio_encoder or state.get("encoder_dim") != cfg.mel_dim:
        raise ValueError(f"--init {file}: the prior was trained with --audio-encoder {state.get('audio_encoder')} "
                         f"(--mel-dim {state.get('encoder_dim')}), this run uses {cfg.audio_encoder} (--mel-dim "
                         f"{cfg.mel_dim}): give the prior's encoder")
    if prior.ptalker or spec.ptalker:
        raise ValueError(f"--init {file}: priors are plain FlameTalk models (no --ptalker, neither in the prior nor "
                         f"in the adaptation)")
    # the linear base is fitted per subject, not taken from the prior: its window and input size may differ
    diff = [f"{flag_name(k, 'model.')} {getattr(prior.arch, k)} vs {getattr(spec.arch, k)}" for k in ARCH_FIELDS
            if getattr(prior.arch, k) != getattr(spec.arch, k) and k != "base_frames"]
    saved, mine = prior.to_dict(), spec.to_dict()
    diff += [f"{k} {saved[k]} vs {mine[k]}" for k in mine if k not in ("arch", "raw_dim") and saved[k] != mine[k]]
    if diff:
        raise ValueError(f"--init {file}: the prior's architecture differs ({', '.join(diff)}; prior vs this run): "
                         f"use the prior's --model.* options")
    return state


@torch.no_grad()
def fit_linear_base(model: FlameTalk, encoder: AudioEncoder, head: HeadModel, datas: list[TalkData]
                    ) -> list[torch.Tensor] | None:
    """Fit the model's linear base (:class:`~.model.LinearBase`) on one subject's training frames, in closed form:
    the raw features of the whole clip (zero audio beyond its ends, as windowed inference sees it), the targets the
    training motion minus the model's motion mean, errors weighed by each coordinate's face-vertex displacement.
    Returns per subject the (T, M) offsets the transformer is trained on top of: on the training frames the
    cross-fitted ones (each block predicted without itself, so the transformer learns what the base misses on unseen
    audio, not on the frames it was fitted to), zero elsewhere. None when the model has no base."""
    if model.base is None or len(datas) != 1:
        return None
    from .projection import _vertex_scale

    d = datas[0]
    device = model.motion_mean.device
    n = d.motion.shape[0]
    ctx = max(_context_frames(encoder, d.fps), model.base.frames)
    wave = audio_clip(d.wave, 0, n, ctx, d.fps).to(device)
    with eval_mode(encoder):
        raw = encoder.raw_features(wave[None], n + 2 * ctx, d.fps)
    x = model.base.inputs(raw.to(model.base.weight))[0, ctx: ctx + n]
    idx = torch.as_tensor(np.asarray(d.train_idx), dtype=torch.long, device=device)
    offsets = d.motion.to(device)[idx] - model.motion_mean
    crossed = model.base.fit(x[idx], offsets, _vertex_scale(head, model.motion_mean).to(device))
    out = torch.zeros(n, d.motion.shape[1], device=device)
    out[idx] = crossed.to(out)
    return [out]


def fit_talk(datas: list[TalkData], head: HeadModel, cfg: TalkConfig, out_dir: Path
             ) -> tuple[FlameTalk, AudioEncoder, dict]:
    """The training loop: initialise (or resume from ``out_dir/checkpoint.pt``), train to ``cfg.iterations`` and
    checkpoint. With ``cfg.ptalker`` the subjects' order in ``datas`` is their one-hot identity. With
    ``cfg.val_share`` (one subject, no PTalker) the iteration count is first chosen by early stopping
    (:func:`select_iterations`, kept in ``out_dir/selection.json``, so a re-run reuses it).
    Returns (model, encoder, info with history, iterations run, seconds, resumed_from; with early stopping
    ``selection``: the held-out scores and the count chosen)."""
    if cfg.val_share > 0 and len(datas) == 1 and not cfg.ptalker:
        selection = select_iterations(datas[0], head, cfg, out_dir)
        model, encoder, info = _fit(datas, head, cfg, out_dir, iterations=selection["iterations"])
        return model, encoder, {**info, "selection": selection}
    return _fit(datas, head, cfg, out_dir)


def select_iterations(d: TalkData, head: HeadModel, cfg: TalkConfig, out_dir: Path) -> dict:
    """Early stopping for one subject: train on its training frames without the last ``cfg.val_share`` of them (at
    least one frame each way) up to ``cfg.iterations``, score the held-out frames as the test split is scored
    (:func:`evaluate_talk`: parallel or ``cfg.infer_mode`` prediction from their audio, ``cfg.project``, LVE) before
    the first iteration and every ``cfg.val_every``; the count with the lowest held-out LVE (the smaller on ties) is
    the one to train all training frames for. Written to ``out_dir/selection.json`` (reused when its settings match)
    and returned: ``{"iterations", "scores": {count: lve_mm}, "held_out_frames", ...}``."""
    n = len(d.train_idx)
    n_val = min(max(int(round(cfg.val_share * n)), 1), n - 2)
    key = {"iterations_max": cfg.iterations, "val_share": cfg.val_share, "val_every": cfg.val_every,
           "held_out_frames": n_val, "seed": cfg.seed, "init": str(cfg.init) if cfg.init is not None else None}
    path = Path(out_dir) / "selection.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if {k: saved.get(k) for k in key} == key:
            return saved
    split = dataclasses.replace(d, train_idx=d.train_idx[: n - n_val], test_idx=d.train_idx[n - n_val:])
    host = head if str(cfg.device) == "cpu" else copy.deepcopy(head).cpu()
    ids = loss_vertex_ids(host, cfg.loss_regions)
    scores: dict[int, float] = {}

    def score(it: int, model: FlameTalk, encoder: AudioEncoder) -> None:
        if it % cfg.val_every == 0 or it == cfg.iterations:
            figures, _ = evaluate_talk(model, encoder, host, split, cfg, ids, cfg.infer_mode)
            scores[it] = figures["lve_mm"]

    run_cfg = dataclasses.replace(cfg, val_share=0.0, checkpoint_every=10 ** 9)
    with tempfile.TemporaryDirectory(prefix="gft_select_") as tmp:  # its checkpoint is not kept
        _fit([split], head, run_cfg, Path(tmp), on_step=score)
    best = min(scores, key=lambda k: (scores[k], k))
    result = {**key, "iterations": best, "scores": {str(k): v for k, v in sorted(scores.items())}}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return result


def _fit(datas: list[TalkData], head: HeadModel, cfg: TalkConfig, out_dir: Path, *, on_step=None,
         iterations: int | None = None) -> tuple[FlameTalk, AudioEncoder, dict]:
    """:func:`fit_talk`'s loop, to ``iterations`` (default ``cfg.iterations``); ``on_step(count, model, encoder)``
    after every update and once before the first (count 0), for a fresh run."""
    iterations = cfg.iterations if iterations is None else iterations
    if cfg.ptalker:
        _check_ptalker(datas, cfg)
    device = torch.device(cfg.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    encoder = load_encoder(cfg.audio_encoder, cfg.mel_dim).to(device)
    for d in datas:
        encoder.prepare(d.wave)
    pt = cfg.pt
    spec = FlameTalkSpec(head.motion_dim, encoder.dim, head.n_vertices, cfg.model, len(datas) if cfg.ptalker else 0,
                         pt.arch() if cfg.ptalker else None, encoder.raw_dim if cfg.model.base_frames else 0)
    model = FlameTalk(spec, head if cfg.ptalker else None).to(device)
    model.set_motion_stats(torch.cat([d.motion[d.train_idx] for d in datas]).to(device))
    params = [p for p in list(model.parameters()) + list(encoder.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    groups = _stage_groups(model, encoder) if cfg.ptalker else {}

    def set_stage(it: int) -> int:
        """Freeze the stage-1 groups before ``stage_switch``, unfreeze them from it on; returns the stage."""
        stage = 1 if it < pt.stage_switch else 2
        for name in pt.stage1_frozen:
            for p in groups[name]:
                p.requires_grad_(stage == 2)
        return stage

    ckpt = Checkpoint(ckpt_path, {"spec": spec.to_dict(), "audio_encoder": cfg.audio_encoder,
                                  "encoder_dim": cfg.mel_dim, "head_model": head.kind},
                      normalize={"spec": lambda saved: FlameTalkSpec.from_dict(saved).to_dict()})  # older specs
    state = ckpt.read(device)
    objects = {"model": model, "encoder": encoder, "optimizer": optimizer}
    if state is None and cfg.init is not None:  # a fresh run from a prior: its weights (and motion statistics)
        prior = read_prior(cfg.init, spec, cfg, head)
        # a prior's linear base is never fitted (multi-subject runs leave it at zero): the new subject's is fitted
        # below, so a prior with another base window (or from before the base) is as good
        weights = {k: v for k, v in prior["model"].items() if not k.startswith("base.")}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or any(not k.startswith("base.") for k in missing):
            raise ValueError(f"--init {cfg.init}: the prior's weights do not fit this model (missing {missing}, "
                             f"unexpected {unexpected})")
        encoder.load_state_dict(prior["encoder"])
        # the prior predicts motion in normalised units (speech -> mouth, shared); the mean and spread are the
        # person's: this subject's training statistics from the start, as for a model trained on it alone
        model.set_motion_stats(torch.cat([d.motion[d.train_idx] for d in datas]).to(device))
    run = restore(state, objects, gen) if state is not None else RunState()
    resumed_from, start = run.resumed_from, run.iteration
    bases = fit_linear_base(model, encoder, head, datas) if len(datas) == 1 else None

    ids = loss_vertex_ids(head, cfg.loss_regions).to(device)
    if cfg.ptalker:  # eq. 13's vertices: the loss regions and the mouth (lips), positions in their union
        union = torch.unique(torch.cat([ids, head.regions["lips"].to(device)]))
        rec_pos, mouth_pos = torch.searchsorted(union, ids), torch.searchsorted(union, head.regions["lips"].to(device))
    for d in datas:
        if len(d.train_idx) < 2:
            raise ValueError(f"{d.name}: too few training frames ({len(d.train_idx)})")
    ctx = _context_frames(encoder, datas[0].fps)
    model.train()
    encoder.train()

    def step(it: int) -> dict:
        stage = set_stage(it) if cfg.ptalker else None
        feats, motion, hist, shapes, refs, labels, waves, base = [], [], [], [], [], [], [], []
        for _ in range(cfg.batch_size):
            si = int(torch.randint(len(datas), (1,), generator=gen))
            d = datas[si]
            n_train = len(d.train_idx)
            length = min(cfg.seq_frames, n_train)
            s = int(torch.randint(n_train - length + 1, (1,), generator=gen))
            wave = audio_clip(d.wave, s, s + length, ctx, d.fps).to(device)
            feats.append(encoder(wave[None], length + 2 * ctx, d.fps)[0, 2 * ctx: 2 * (ctx + length)])
            m = d.motion[s: s + length].to(device)
            if bases is not None:
                base.append(bases[si][s: s + length])
            h = torch.cat([m[:1], m[:-1]])
            drop = torch.rand(length, 1, generator=gen).to(device) < cfg.history_dropout
            hist.append(torch.where(drop, model.motion_mean.expand_as(h), h))
            motion.append(m)
            shapes.append(d)
            if cfg.ptalker:  # the motion-style clip: another random clip of the same subject's training frames
                r_len = min(pt.style_frames, n_train)
                r = int(torch.randint(n_train - r_len + 1, (1,), generator=gen))
                refs.append(d.motion[r: r + r_len].to(device))
                labels.append(si)
                waves.append(wave)
        lengths = {len(m) for m in motion}
        if len(lengths) > 1:  # subjects with fewer training frames than seq_frames: crop to the shortest
            k = min(lengths)
            feats, motion, hist = [f[: 2 * k] for f in feats], [m[:k] for m in motion], [h[:k] for h in hist]
            base = [b[:k] for b in base]
        templates = torch.stack([d.template for d in shapes]).to(device)
        terms: dict[str, torch.Tensor] = {}
        if cfg.ptalker:
            r_len = min(len(r) for r in refs)
            truth = torch.tensor(labels, device=device)
            hidden = (torch.rand(len(labels), generator=gen) < pt.identity_dropout).to(device)
            w_len = min(len(w) for w in waves)
            style, content, terms = _ptalker_terms(
                model, torch.stack(feats), torch.stack([w[:w_len] for w in waves]), torch.stack(motion),
                torch.stack(hist), torch.stack([r[:r_len] for r in refs]), truth, torch.where(hidden, -1, truth),
                datas[0].fps, pt)
            pred = model(torch.stack(feats), style, torch.stack(hist), content)
            return _ptalker_update(pred, motion, shapes, terms, stage)
        else:
            style = model.style(templates)
        pred = model(torch.stack(feats), style, torch.stack(hist), base=torch.stack(base) if base else None)
        loss = pred.new_zeros(())
        for i, d in enumerate(shapes):
            vp = motion_vertices(head, pred[i: i + 1], d.shape.to(device), ids) * 1000
            vt = motion_vertices(head, motion[i][None], d.shape.to(device), ids) * 1000
            li = vertex_loss(vp, vt) + cfg.w_velocity * velocity_loss(vp, vt)
            if cfg.w_trend > 0:
                li = li + cfg.w_trend * trend_loss(vp, vt, cfg.trend_orders)
            loss = loss + li / len(shapes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(it + 1, model, encoder)
        return {"loss": float(loss.item())}

    def _ptalker_update(pred: torch.Tensor, motion: list[torch.Tensor], shapes: list[TalkData],
                        terms: dict[str, torch.Tensor], stage: int) -> dict:
        """Eq. 14 on a PTalker batch, one optimiser step; the history row."""
        vp = torch.cat([motion_vertices(head, pred[i: i + 1], d.shape.to(device), union) for i, d in enumerate(shapes)])
        vt = torch.cat([motion_vertices(head, m[None], d.shape.to(device), union) for m, d in zip(motion, shapes)])
        l_motion, parts = motion_loss(vp * 1000, vt * 1000, rec_pos, mouth_pos, (pt.alpha_rec, pt.alpha_mou,
                                                                                pt.alpha_vel))
        weights = {"adv": pt.beta_adv, "orth": pt.beta_orth, "info": pt.beta_info, "cts": pt.beta_cts,
                   "cos": pt.beta_cos}
        loss = pt.beta_motion * l_motion + sum(weights[k] * v for k, v in terms.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.item()), "stage": stage, "motion": float(l_motion.item()),
                **{k: float(v.item()) for k, v in {**parts, **terms}.items()}}

    if on_step is not None and start == 0:
        on_step(0, model, encoder)
    run = run_training(ckpt, run, iterations, step, lambda: objects, gen, checkpoint_every=cfg.checkpoint_every,
                       extra=lambda it: {"config": config_to_dict(cfg)}, desc="train-talk", progress=cfg.progress)
    if cfg.ptalker:
        set_stage(pt.stage_switch)  # leave every group trainable
    model.eval()
    encoder.eval()
    return model, encoder, {"history": run.history, "iterations_run": max(iterations - start, 0),
                            "train_seconds": run.train_seconds, "resumed_from": resumed_from, "spec": spec.to_dict()}


def open_subjects(cfg: TalkConfig) -> tuple[list[Subject], HeadModel, list[TalkData]]:
    """Open and check every SUBJECT (one head model, one frame rate, audio present) before training anything."""
    if not cfg.subjects:
        raise ValueError("give at least one SUBJECT folder")
    subjects = [Subject.open(s) for s in cfg.subjects]
    specs = {s.meta["head_model"]["spec"] for s in subjects}
    if len(specs) > 1:
        raise ValueError(f"the SUBJECTs were tracked with different head models {sorted(specs)}: train one per model")
    fps = {s.fps for s in subjects}
    if len(fps) > 1:
        raise ValueError(f"the SUBJECTs have different frame rates {sorted(fps)}")
    head = subjects[0].head_model().to(cfg.device)
    datas = [load_subject_data(s, head.cpu()) for s in subjects]
    return subjects, head.to(cfg.device), datas


def train_talk(cfg: TalkConfig) -> dict:
    """The stage: train, evaluate on every subject's test split, write OUT (one writer at a time:
    :func:`~gaussian_flametalk.io.lock.stage_lock`). Returns the meta dict."""
    subjects, head, datas = open_subjects(cfg)
    out = Path(cfg.out) if cfg.out is not None else subjects[0].root / "talk"
    with stage_lock(out, "train-talk"):
        return _train_talk(cfg, subjects, head, datas, out)


def _train_talk(cfg: TalkConfig, subjects: list[Subject], head: HeadModel, datas: list[TalkData], out: Path) -> dict:
    (out / "meta.json").unlink(missing_ok=True)  # the run is not finished until meta.json is rewritten
    model, encoder, info = fit_talk(datas, head, cfg, out)
    head = head.cpu()
    model, encoder = model.cpu(), encoder.cpu()
    ids = loss_vertex_ids(head, cfg.loss_regions)
    (out / "test").mkdir(exist_ok=True)
    results = {}
    for k, (subject, d) in enumerate(zip(subjects, datas)):
        name = d.name if [x.name for x in datas].count(d.name) == 1 else f"{k}_{d.name}"
        t0 = time.perf_counter()
        figures, pred = evaluate_talk(model, encoder, head, d, cfg, ids, cfg.infer_mode, k if cfg.ptalker else None)
        figures["predict_seconds"] = time.perf_counter() - t0
        kw = motion_to_kwargs(torch.from_numpy(pred), head)
        frames = d.test_idx[: len(pred)]
        save_npz(out / "test" / f"{name}.npz", frames=frames, motion_pred=pred, motion_true=d.motion[frames].numpy(),
                 expression=kw["expression"].numpy(), jaw=kw.get("jaw", torch.zeros(len(pred), 3)).numpy())
        results[name] = {"subject": str(subject.root), **figures}
    space = style_space(model, encoder, datas, out / "style_space.png") if cfg.ptalker else None
    fresh = info["resumed_from"] is None
    return write_meta(out / "meta.json", StageMeta(
        stage="train-talk", config=config_to_dict(cfg), versions=package_versions("transformers"),
        inputs={"init": str(cfg.init) if cfg.init is not None else None},
        outputs=["checkpoint.pt", *(f"test/{name}.npz" for name in results), *(["style_space.png"] if space else [])],
        timings={"train_s": info["train_seconds"],
                 "iterations_per_s": info["iterations_run"] / max(info["train_seconds"], 1e-9) if fresh else None},
        figures={"final_train_loss": info["history"][-1]["loss"] if info["history"] else None},
        extra={"subjects": [str(s.root) for s in subjects], "head_model": subjects[0].meta["head_model"],
               "fps": datas[0].fps, "spec": info["spec"], "iterations": cfg.iterations,
               "iterations_run": info["iterations_run"], "resumed_from": info["resumed_from"], "test": results,
               **({"selection": info["selection"]} if "selection" in info else {}),
               **({"style_space": space} if space is not None else {})}))


def main(cfg: TalkConfig) -> int:
    meta = train_talk(cfg)
    for name, r in meta["test"].items():
        print(f"{name}: test vertex error {r['vertex_error_mm']:.3f} mm (mean-motion baseline "
              f"{r['baseline_vertex_error_mm']:.3f}), LVE {r['lve_mm']:.3f} mm (baseline {r['baseline_lve_mm']:.3f}), "
              f"mouth-opening correlation {r['mouth_opening_correlation']:.3f}")
    return 0
