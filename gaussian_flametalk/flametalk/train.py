"""``gft train-talk SUBJECT [SUBJECT ...]``: train FlameTalk on tracked subjects (speech -> expression + jaw).

Data: each SUBJECT's ``audio.wav`` and tracked ``params.npz``; motion = expression (+ jaw where the head model has
a jaw joint); the template (style input) is the subject's mean tracked mesh. Train/test split as the avatar's
(``Subject.split``: the last 20 % of frames, or the last 30 s, never trained on).

Training: random clips of ``seq_frames`` frames from the training frames, teacher forcing with history dropout
(each history row replaced by the mean motion with probability ``history_dropout``, which is what the parallel
inference mode sees), Adam. Loss in millimetres on the vertices of ``loss_regions``: vertex MSE + ``w_velocity``
velocity MSE (+ ``w_trend`` StyleSpeaker trend loss over ``trend_orders`` orders when > 0), against the augmented
ground truth (see :mod:`.losses`).

Outputs in OUT (default: the first SUBJECT's ``talk/``), each written atomically, ``meta.json`` last:
``checkpoint.pt`` (every ``checkpoint_every`` iterations and at the end; a re-run resumes, and continues exactly as
an uninterrupted run would), ``test/<subject>.npz`` (test frames: ``frames``, ``motion_pred``, ``motion_true``,
``expression``, ``jaw``), ``meta.json`` (config, versions, inputs, figures: test vertex error and LVE against the
mean-motion baseline, mouth-opening correlation, it/s).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import config_to_dict, package_versions
from ..headmodel import HeadModel
from ..tracking.subject import Subject, write_json
from .audio import SAMPLE_RATE, AudioError, load_audio
from .encoders import AudioEncoder, load_encoder
from .losses import (lip_vertex_error, motion_from_params, motion_to_kwargs, motion_vertices, mouth_opening,
                     trend_loss, velocity_loss, vertex_loss)
from .model import FlameTalk, FlameTalkSpec, predict

__all__ = ["TalkConfig", "TalkData", "TalkModel", "evaluate", "fit_talk", "load_subject_data", "load_talk", "main",
           "train_talk"]


@dataclass
class TalkConfig:
    """Options of ``gft train-talk``."""

    subjects: tuple[Path, ...] = field(metadata={"help": "tracked SUBJECT folders (from gft track)"})
    out: Path | None = field(default=None, metadata={"help": "output folder (default: FIRST_SUBJECT/talk)"})
    audio_encoder: str = field(default="mel", metadata={"help": "mel | wav2vec2:ID_OR_DIR | hubert:ID_OR_DIR"})
    iterations: int = field(default=3000, metadata={"help": "total training iterations (a re-run resumes)"})
    seq_frames: int = field(default=100, metadata={"help": "frames per training clip"})
    batch_size: int = field(default=4, metadata={"help": "clips per iteration"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    dim: int = field(default=64, metadata={"help": "transformer width"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    layers: int = field(default=1, metadata={"help": "decoder layers"})
    period: int = field(default=25, metadata={"help": "period p of the positional encoding and the biased mask"})
    dropout: float = field(default=0.1, metadata={"help": "transformer dropout"})
    mel_dim: int = field(default=128, metadata={"help": "mel encoder output channels"})
    history_dropout: float = field(default=0.5, metadata={"help": "probability of replacing a history row by the mean"})
    w_velocity: float = field(default=1.0, metadata={"help": "velocity loss weight"})
    w_trend: float = field(default=0.0, metadata={"help": "StyleSpeaker trend loss weight (0 = off)"})
    trend_orders: int = field(default=3, metadata={"help": "trend loss orders 1..R"})
    loss_regions: tuple[str, ...] = field(default=("face",), metadata={"help": "head-model regions in the loss"})
    window: int = field(default=100, metadata={"help": "inference window (frames)"})
    overlap: int = field(default=10, metadata={"help": "inference window overlap, cross-faded (frames)"})
    infer_mode: str = field(default="autoregressive", metadata={"help": "autoregressive | parallel"})
    checkpoint_every: int = field(default=250, metadata={"help": "checkpoint interval (iterations)"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


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
    with torch.no_grad():
        template = motion_vertices(model, motion[None], shape).mean(dim=(0, 1))
    train_idx, test_idx = subject.split()
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


def _loss_ids(model: HeadModel, regions: tuple[str, ...]) -> torch.Tensor:
    unknown = [r for r in regions if r not in model.regions]
    if unknown:
        raise ValueError(f"unknown head-model regions {unknown} (have {list(model.regions)})")
    return torch.unique(torch.cat([model.regions[r] for r in regions]))


@dataclass
class TalkModel:
    """A trained FlameTalk with what inference needs (``load_talk``)."""

    model: FlameTalk
    encoder: AudioEncoder
    head: HeadModel
    template: torch.Tensor
    shape: torch.Tensor
    fps: float
    window: int
    overlap: int

    def predict(self, wave: np.ndarray, mode: str = "autoregressive") -> np.ndarray:
        """(S,) 16 kHz -> (T, M) motion."""
        return predict(self.model, self.encoder, wave, self.template, self.fps, mode, self.window, self.overlap)

    def predict_file(self, path: str | os.PathLike, mode: str = "autoregressive") -> dict[str, np.ndarray]:
        """Any audio file -> ``expression`` (T, E) and ``jaw`` (T, 3) (zero without a jaw joint). A silent file gives
        the model's closed-mouth motion."""
        motion = torch.from_numpy(self.predict(load_audio(path, allow_silent=True), mode))
        kw = motion_to_kwargs(motion, self.head)
        return {"expression": kw["expression"].numpy(), "jaw": kw.get("jaw", torch.zeros(len(motion), 3)).numpy()}


def evaluate(model: FlameTalk, encoder: AudioEncoder, head: HeadModel, data: TalkData, cfg: TalkConfig,
             ids: torch.Tensor, mode: str) -> tuple[dict[str, float], np.ndarray]:
    """Predict the test frames from their audio and score them (mm) against the tracked motion and against the
    training-mean baseline. Returns (figures, predicted motion (T_test, M))."""
    device = next(model.parameters()).device
    a, b = int(data.test_idx[0]), int(data.test_idx[-1]) + 1
    spf = SAMPLE_RATE / data.fps
    wave = data.wave[int(round(a * spf)): int(round(b * spf))].numpy()
    pred = predict(model, encoder, wave, data.template.to(device), data.fps, mode, cfg.window, cfg.overlap)
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


def fit_talk(datas: list[TalkData], head: HeadModel, cfg: TalkConfig, out_dir: Path
             ) -> tuple[FlameTalk, AudioEncoder, dict]:
    """The training loop: initialise (or resume from ``out_dir/checkpoint.pt``), train to ``cfg.iterations`` and
    checkpoint. Returns (model, encoder, info with history, iterations run, seconds, resumed_from)."""
    from tqdm.auto import tqdm

    device = torch.device(cfg.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    encoder = load_encoder(cfg.audio_encoder, cfg.mel_dim).to(device)
    spec = FlameTalkSpec(head.motion_dim, encoder.dim, head.n_vertices, cfg.dim, cfg.heads, cfg.layers, 2,
                         cfg.period, cfg.dropout)
    model = FlameTalk(spec).to(device)
    model.set_motion_stats(torch.cat([d.motion[d.train_idx] for d in datas]).to(device))
    params = [p for p in list(model.parameters()) + list(encoder.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    start, resumed_from, history, elapsed = 0, None, [], 0.0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state["spec"] != asdict(spec) or state["audio_encoder"] != cfg.audio_encoder:
            raise ValueError(f"{ckpt_path}: made with another architecture or audio encoder ({state['spec']}, "
                             f"{state['audio_encoder']}); delete it or use another --out")
        model.load_state_dict(state["model"])
        encoder.load_state_dict(state["encoder"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = resumed_from = int(state["iteration"])
        history, elapsed = state["history"], float(state["train_seconds"])

    def checkpoint(it: int, seconds: float) -> None:
        tmp = ckpt_path.with_name(f".{ckpt_path.name}.tmp")
        torch.save({"iteration": it, "model": model.state_dict(), "encoder": encoder.state_dict(),
                    "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "history": history, "train_seconds": seconds,
                    "spec": asdict(spec), "audio_encoder": cfg.audio_encoder, "config": config_to_dict(cfg),
                    "head_model": head.kind}, tmp)
        os.replace(tmp, ckpt_path)

    ids = _loss_ids(head, cfg.loss_regions).to(device)
    for d in datas:
        if len(d.train_idx) < 2:
            raise ValueError(f"{d.name}: too few training frames ({len(d.train_idx)})")
    ctx = _context_frames(encoder, datas[0].fps)
    model.train()
    encoder.train()
    bar = tqdm(total=cfg.iterations, initial=min(start, cfg.iterations), desc="train-talk", unit="it",
               disable=not cfg.progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    for it in range(start, cfg.iterations):
        feats, motion, hist, shapes = [], [], [], []
        for _ in range(cfg.batch_size):
            d = datas[int(torch.randint(len(datas), (1,), generator=gen))]
            n_train = len(d.train_idx)
            length = min(cfg.seq_frames, n_train)
            s = int(torch.randint(n_train - length + 1, (1,), generator=gen))
            wave = audio_clip(d.wave, s, s + length, ctx, d.fps).to(device)
            feats.append(encoder(wave[None], length + 2 * ctx, d.fps)[0, 2 * ctx: 2 * (ctx + length)])
            m = d.motion[s: s + length].to(device)
            h = torch.cat([m[:1], m[:-1]])
            drop = torch.rand(length, 1, generator=gen).to(device) < cfg.history_dropout
            hist.append(torch.where(drop, model.motion_mean.expand_as(h), h))
            motion.append(m)
            shapes.append(d)
        lengths = {len(m) for m in motion}
        if len(lengths) > 1:  # subjects with fewer training frames than seq_frames: crop to the shortest
            k = min(lengths)
            feats, motion, hist = [f[: 2 * k] for f in feats], [m[:k] for m in motion], [h[:k] for h in hist]
        style = model.style(torch.stack([d.template for d in shapes]).to(device))
        pred = model(torch.stack(feats), style, torch.stack(hist))
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
        done = it + 1
        history.append({"iteration": done, "loss": float(loss.item())})
        bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.update(1)
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            checkpoint(done, elapsed + time.perf_counter() - t0)
    bar.close()
    run = max(cfg.iterations - start, 0)
    elapsed += time.perf_counter() - t0
    if not ckpt_path.is_file():
        checkpoint(start, elapsed)
    model.eval()
    encoder.eval()
    return model, encoder, {"history": history, "iterations_run": run, "train_seconds": elapsed,
                            "resumed_from": resumed_from, "spec": asdict(spec)}


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
    """The stage: train, evaluate on every subject's test split, write OUT. Returns the meta dict."""
    subjects, head, datas = open_subjects(cfg)
    out = Path(cfg.out) if cfg.out is not None else subjects[0].root / "talk"
    (out / "meta.json").unlink(missing_ok=True)  # the run is not finished until meta.json is rewritten
    model, encoder, info = fit_talk(datas, head, cfg, out)
    head = head.cpu()
    model, encoder = model.cpu(), encoder.cpu()
    ids = _loss_ids(head, cfg.loss_regions)
    (out / "test").mkdir(exist_ok=True)
    results = {}
    for k, (subject, d) in enumerate(zip(subjects, datas)):
        name = d.name if [x.name for x in datas].count(d.name) == 1 else f"{k}_{d.name}"
        t0 = time.perf_counter()
        figures, pred = evaluate(model, encoder, head, d, cfg, ids, cfg.infer_mode)
        figures["predict_seconds"] = time.perf_counter() - t0
        kw = motion_to_kwargs(torch.from_numpy(pred), head)
        frames = d.test_idx[: len(pred)]
        tmp = out / "test" / f".{name}.tmp.npz"
        np.savez(tmp, frames=frames, motion_pred=pred, motion_true=d.motion[frames].numpy(),
                 expression=kw["expression"].numpy(),
                 jaw=kw.get("jaw", torch.zeros(len(pred), 3)).numpy())
        os.replace(tmp, out / "test" / f"{name}.npz")
        results[name] = {"subject": str(subject.root), **figures}
    meta = {
        "stage": "train-talk",
        "config": config_to_dict(cfg),
        "versions": package_versions("transformers"),
        "subjects": [str(s.root) for s in subjects],
        "head_model": subjects[0].meta["head_model"],
        "fps": datas[0].fps,
        "spec": info["spec"],
        "iterations": cfg.iterations,
        "iterations_run": info["iterations_run"],
        "resumed_from": info["resumed_from"],
        "train_seconds": info["train_seconds"],
        "it_per_s": info["iterations_run"] / max(info["train_seconds"], 1e-9) if info["resumed_from"] is None else None,
        "final_loss": info["history"][-1]["loss"] if info["history"] else None,
        "test": results,
    }
    write_json(out / "meta.json", meta)
    return meta


def load_talk(folder: str | os.PathLike, subject: str | os.PathLike | None = None, device: str = "cpu") -> TalkModel:
    """A trained FlameTalk from a ``talk/`` folder, driving the identity of ``subject`` (default: the first SUBJECT
    it was trained on)."""
    folder = Path(folder)
    meta_path, ckpt_path = folder / "meta.json", folder / "checkpoint.pt"
    if not meta_path.is_file() or not ckpt_path.is_file():
        raise FileNotFoundError(f"{folder}: not a finished gft train-talk folder (no meta.json or checkpoint.pt)")
    import json

    meta = json.loads(meta_path.read_text())
    state = torch.load(ckpt_path, map_location=device, weights_only=False)
    subj = Subject.open(subject if subject is not None else meta["subjects"][0])
    head = subj.head_model()
    encoder = load_encoder(state["audio_encoder"], state["config"]["mel_dim"]).to(device)
    encoder.load_state_dict(state["encoder"])
    model = FlameTalk(FlameTalkSpec(**state["spec"])).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    encoder.eval()
    params = subj.params()
    motion = motion_from_params(params, head)
    shape = params.shape.mean(0)
    with torch.no_grad():
        template = motion_vertices(head, motion[None], shape).mean(dim=(0, 1))
    cfg = meta["config"]
    return TalkModel(model, encoder, head, template.to(device), shape, float(meta["fps"]), cfg["window"],
                     cfg["overlap"])


def main(cfg: TalkConfig) -> int:
    meta = train_talk(cfg)
    for name, r in meta["test"].items():
        print(f"{name}: test vertex error {r['vertex_error_mm']:.3f} mm (mean-motion baseline "
              f"{r['baseline_vertex_error_mm']:.3f}), LVE {r['lve_mm']:.3f} mm (baseline {r['baseline_lve_mm']:.3f}), "
              f"mouth-opening correlation {r['mouth_opening_correlation']:.3f}")
    return 0
