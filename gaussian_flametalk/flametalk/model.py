"""FlameTalk: a FaceFormer-style transformer from speech features to head-model motion (expression + jaw).

Shapes: B clips, T video frames, 2T audio features (two 50 Hz features per 25 fps frame), M = head-model motion
size (``HeadModel.motion_dim``: expression coefficients, then the jaw axis-angle where the model has a jaw joint).

    feats (B, 2T, A) --audio_proj--> memory (B, 2T, d)
    history (B, T, M) (row t = motion of frame t-1, row 0 the start token) --motion_in--> O_v (B, T, d)
    template (B, V, 3) --StyleEncoder--> S (B, d);  O_sv = S + O_v;  PPE(O_sv)
    (with PTalker, ``spec.ptalker``, eq. 16 of the paper: S is replaced by s = s_a + s_m + s_p and the content codes
    c = E_m^c(E_G(history)) (B, T, d) are added, O_sv = s + O_v + c; see :mod:`.ptalker`)
    TransformerDecoder(PPE(O_sv), memory, tgt_mask = biased causal mask, memory_mask = alignment mask) (B, T, d)
    --motion_out--> motion (B, T, M)   (motion is normalised by the training set's mean/std inside the model)
    + LinearBase(raw features of frames t-W..t+W) (B, T, M)   (a closed-form ridge fit on one subject, see below)

The linear base (``arch.base_frames`` = W > 0; off by default, :class:`LinearBase`): a ridge regression from the
audio encoder's raw, unlearnt features (log-mel, phone features) of a window of frames to the motion offset from the
mean, solved on the subject's training frames with its strength chosen by cross-validation; the transformer is
trained on top of its cross-fitted predictions, so it learns what a linear map of the speech misses. Multi-subject
runs (priors) leave it unfitted (zero). Measured on the four real clips (BENCHMARKS.md) it raised the mouth-opening
correlation on three of them but the lip vertex error on all four, so it is an option, not the default.

Inference (:func:`predict`, :class:`StreamingPredictor`): audio is cut into windows of ``window`` frames overlapping
by ``overlap`` frames; each window is encoded with ``context`` frames of audio on both sides and decoded
autoregressively (each predicted frame fed back as the next history row, as trained) or in parallel (one pass with
the mean motion as history, the history-dropout case of training); overlaps are cross-faded linearly, so joins are
seamless. One-shot prediction is the streaming predictor fed the whole clip at once: streaming gives the same frames.
For a trained model, the autoregressive result Y satisfies ``Y == model(feats, style, shift(Y))`` in one pass
(the causal mask makes frame t depend only on history rows <= t); parallel mode replaces the history with the mean.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from ..config import validate
from ..headmodel import HeadModel
from ..io.audio import SAMPLE_RATE
from .encoders import AudioEncoder, frames_for_samples

__all__ = ["ARCH_FIELDS", "FlameTalk", "FlameTalkArch", "FlameTalkSpec", "LinearBase", "PTALKER_FIELDS", "PTalkerArch",
           "StreamingPredictor", "StyleEncoder", "alibi_slopes", "alignment_mask", "biased_causal_mask", "eval_mode",
           "periodic_positional_encoding",
           "predict"]


def periodic_positional_encoding(n: int, dim: int, period: int) -> torch.Tensor:
    """FaceFormer's PPE: the sinusoidal encoding of ``t mod period``. Returns (n, dim):
    PPE[t, 2i] = sin((t mod p) / 10000^(2i/dim)), PPE[t, 2i+1] = cos(same)."""
    pos = (torch.arange(n) % period).float()[:, None]
    div = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's head slopes (Press et al.; FaceFormer uses them), (H,). For H a power of two the geometric sequence
    m_h = 2^(-8 (h+1) / H), h = 0..H-1. Otherwise, with P the largest power of two below H: the P slopes of P heads,
    then every other slope of 2P heads (the 1st, 3rd, ...) for the remaining H - P heads."""
    if n_heads < 1:
        raise ValueError(f"need at least one attention head, got {n_heads}")

    def power_of_two(n: int) -> torch.Tensor:
        return torch.pow(2.0, -8.0 * torch.arange(1, n + 1).float() / n)

    p = 2 ** math.floor(math.log2(n_heads))
    if p == n_heads:
        return power_of_two(n_heads)
    return torch.cat([power_of_two(p), power_of_two(2 * p)[0::2][: n_heads - p]])


def biased_causal_mask(n: int, n_heads: int, period: int) -> torch.Tensor:
    """Additive self-attention bias (H, n, n): B[h, i, j] = -m_h * floor((i - j) / period) for j <= i, -inf for
    j > i (no attention to the future)."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    dist = torch.div(i - j, period, rounding_mode="floor").float()
    bias = -alibi_slopes(n_heads)[:, None, None] * dist[None]
    return bias.masked_fill((j > i)[None], float("-inf"))


def alignment_mask(n_frames: int, n_audio: int | None = None) -> torch.Tensor:
    """Additive audio-motion alignment mask (n_frames, n_audio): 0 where audio feature k belongs to frame t
    (k = 2t or 2t + 1), -inf elsewhere."""
    n_audio = 2 * n_frames if n_audio is None else n_audio
    t = torch.arange(n_frames)[:, None]
    k = torch.arange(n_audio)[None, :]
    return torch.zeros(n_frames, n_audio).masked_fill(k // 2 != t, float("-inf"))


class StyleEncoder(nn.Module):
    """Template mesh -> identity embedding S: a linear map of the centred positions of ``n_points`` vertices.
    (B, V, 3) -> (B, d)."""

    def __init__(self, n_vertices: int, dim: int, n_points: int = 512) -> None:
        super().__init__()
        ids = torch.linspace(0, n_vertices - 1, min(n_points, n_vertices)).round().long()
        self.register_buffer("vertex_ids", ids)
        self.proj = nn.Linear(3 * ids.numel(), dim)

    def forward(self, template: torch.Tensor) -> torch.Tensor:
        pts = template[:, self.vertex_ids]
        pts = pts - pts.mean(dim=1, keepdim=True)
        return self.proj(pts.flatten(1) * 10.0)  # metres -> decimetres, so the inputs are of order one


@dataclass
class FlameTalkArch:
    """The decoder's architecture: ``gft train-talk``'s ``--model.*`` options, and part of every saved
    :class:`FlameTalkSpec`."""

    dim: int = field(default=64, metadata={"min": 1, "help": "transformer width (a multiple of --model.heads)"})
    heads: int = field(default=4, metadata={"min": 1, "help": "attention heads"})
    layers: int = field(default=1, metadata={"min": 1, "help": "decoder layers"})
    ff_mult: int = field(default=2, metadata={"min": 1, "help": "feed-forward width, in multiples of --model.dim"})
    period: int = field(default=25, metadata={"min": 1, "help": "period p of the positional encoding and the biased "
                                                                "mask"})
    dropout: float = field(default=0.1, metadata={"min": 0, "below": 1, "help": "transformer dropout"})
    base_frames: int = field(default=0, metadata={"min": 0, "help": "linear base (LinearBase): half-width in frames "
                                                                    "of the raw-feature window it regresses motion "
                                                                    "on (0: no base, the default: measured in "
                                                                    "BENCHMARKS.md, it lost on all four real clips)"})

    def __post_init__(self) -> None:
        validate(self, "model.")  # the ranges in the fields' metadata
        if self.dim % self.heads:
            raise ValueError(f"--model.dim {self.dim} is not a multiple of --model.heads {self.heads}")


#: the architecture fields, which specs saved before :class:`FlameTalkArch` (flat dicts) held at the top level
ARCH_FIELDS = tuple(f.name for f in fields(FlameTalkArch))


@dataclass
class PTalkerArch:
    """What a PTalker FlameTalk is built from besides :class:`FlameTalkArch`: the part of ``gft train-talk``'s
    ``--pt.*`` options (:class:`~.train.PTalkerOptions` inherits these fields) that a PTalker :class:`FlameTalkSpec`
    saves as its ``ptalker``."""

    style_frames: int = field(default=50, metadata={"min": 2, "help": "frames of a motion-style clip (training: "
                                                                      "another clip of the subject; inference: pieces "
                                                                      "of the reference)"})
    gat_points: int = field(default=128, metadata={"min": 2, "help": "E_G graph nodes (face-region vertex clusters)"})
    gat_layers: int = field(default=2, metadata={"min": 1, "help": "E_G graph attention layers"})
    speaker_encoder: str = field(default="", metadata={
        "help": "E_a^s speaker-identification network W_s: a wav2vec2 hub id or local folder (e.g. "
                "superb/wav2vec2-base-superb-sid); '' with no --pt.emotion-encoder either: the offline stand-in over "
                "the audio encoder's features"})
    emotion_encoder: str = field(default="", metadata={
        "help": "E_a^s emotion network W_e: a wav2vec2 hub id or local folder (e.g. superb/wav2vec2-base-superb-er)"})

    def __post_init__(self) -> None:
        validate(self, "pt.")  # the ranges in the fields' metadata

    def arch(self) -> PTalkerArch:
        """These fields alone (a :class:`~.train.PTalkerOptions` holds the training options besides them)."""
        return PTalkerArch(**{f.name: getattr(self, f.name) for f in fields(PTalkerArch)})


#: the PTalker fields, which specs saved before :class:`PTalkerArch` held at the top level beside ``ptalker: bool``
PTALKER_FIELDS = tuple(f.name for f in fields(PTalkerArch))


@dataclass
class FlameTalkSpec:
    """Everything a FlameTalk is built from (saved in checkpoints, :meth:`to_dict` / :meth:`from_dict`): the sizes
    the data gives (``n_subjects``: PTalker's training subjects, 0 without), the architecture, and with PTalker its
    :class:`PTalkerArch` (``ptalker``; None: a plain FlameTalk)."""

    motion_dim: int
    audio_dim: int
    n_vertices: int
    arch: FlameTalkArch = field(default_factory=FlameTalkArch)
    n_subjects: int = 0
    ptalker: PTalkerArch | None = None
    raw_dim: int = 0  # channels of the audio encoder's raw features (the linear base's input; 0: none)

    def __post_init__(self) -> None:
        if self.ptalker is not None and not isinstance(self.ptalker, PTalkerArch):
            raise TypeError(f"FlameTalkSpec.ptalker is a PTalkerArch or None, got {self.ptalker!r} (the older flat "
                            f"form with ptalker=True is read by FlameTalkSpec.from_dict)")

    def to_dict(self) -> dict:
        """The saved form: the fields, the architecture as a nested dict under ``arch``, the PTalker fields as one
        under ``ptalker`` (None without)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> FlameTalkSpec:
        """A spec from its saved form, or from the flat forms of checkpoints written before: the architecture
        (``dim``, ``heads``, ...) beside ``motion_dim`` (before :class:`FlameTalkArch`), the PTalker fields
        (``gat_points``, ...) beside ``ptalker: bool`` (before :class:`PTalkerArch`; with ``ptalker`` false they are
        unused and dropped); fields a saved spec lacks take their defaults."""
        saved = dict(saved)
        arch = saved.pop("arch", None)
        flat = {k: saved.pop(k) for k in ARCH_FIELDS if k in saved}
        if arch is not None and flat:
            raise ValueError(f"a FlameTalk spec with both a nested and a flat architecture ({sorted(flat)})")
        # specs from before the linear base have none (base_frames 0), whatever today's default is
        arch = FlameTalkArch(**{"base_frames": 0, **(arch if arch is not None else flat)})
        ptalker = saved.pop("ptalker", None)
        flat = {k: saved.pop(k) for k in PTALKER_FIELDS if k in saved}
        if isinstance(ptalker, dict):
            if flat:
                raise ValueError(f"a FlameTalk spec with both nested and flat PTalker fields ({sorted(flat)})")
            ptalker = PTalkerArch(**ptalker)
        elif ptalker is not None and not isinstance(ptalker, PTalkerArch):  # the flat form: a bool
            ptalker = PTalkerArch(**flat) if ptalker else None
        return cls(**saved, arch=arch, ptalker=ptalker)


@contextmanager
def eval_mode(*modules: nn.Module):
    """Run a block with ``modules`` in eval mode (no dropout), restoring each one's mode afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class LinearBase(nn.Module):
    """A closed-form linear regressor from the audio encoder's raw features to motion, under the transformer.

    Per frame t: the raw features of its two half-frames averaged (R channels), those of frames t-W..t+W stacked
    (R (2W+1) inputs), standardised by the training frames' mean and spread, times ``weight`` (R (2W+1), M): a motion
    offset from the mean (motion units). :meth:`fit` solves ridge regression on one subject's training frames, the
    ridge strength chosen by contiguous K-fold cross-validation on them (so with too little signal it chooses a
    strong ridge and the base stays near zero). Buffers, not parameters: the optimiser never moves it; unfitted
    (zeros) it adds nothing, as in multi-subject runs (priors), whose people do not share one linear map. The
    transformer then learns what the base leaves (trained on its cross-fitted predictions, see
    :func:`~.train.fit_talk`)."""

    #: ridge strengths tried by :meth:`fit` (on standardised inputs and vertex-scaled targets)
    LAMBDAS = (1.0, 10.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5, 1e6)

    def __init__(self, raw_dim: int, motion_dim: int, frames: int) -> None:
        super().__init__()
        self.frames = frames
        n = raw_dim * (2 * frames + 1)
        self.register_buffer("x_mean", torch.zeros(n))
        self.register_buffer("x_std", torch.ones(n))
        self.register_buffer("weight", torch.zeros(n, motion_dim))
        self.register_buffer("ridge", torch.zeros(()))  # the chosen strength (0: not fitted)

    @property
    def fitted(self) -> bool:
        return bool(self.ridge > 0)

    def inputs(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, 2T, R) raw features -> (B, T, R (2W+1)) stacked frame features (window edges repeat the end frames:
        callers give the frames context beyond the ones they keep)."""
        x = raw.unflatten(1, (-1, 2)).mean(dim=2)  # (B, T, R)
        w = self.frames
        if w:
            pad = torch.cat([x[:, :1].expand(-1, w, -1), x, x[:, -1:].expand(-1, w, -1)], dim=1)
            x = torch.cat([pad[:, k: k + x.shape[1]] for k in range(2 * w + 1)], dim=-1)
        return x

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, 2T, R) -> (B, T, M) motion offsets from the mean."""
        x = (self.inputs(raw) - self.x_mean) / self.x_std
        return x @ self.weight

    @torch.no_grad()
    def fit(self, x: torch.Tensor, offsets: torch.Tensor, scale: torch.Tensor, folds: int = 5) -> torch.Tensor:
        """Fit on a subject's training frames: ``x`` (N, R (2W+1)) stacked inputs (:meth:`inputs`), ``offsets`` (N, M)
        their motion minus the mean, ``scale`` (M,) the vertex displacement per motion unit (errors are weighed in
        face-vertex space, as the projection does). Returns the cross-fitted offsets (N, M): each of ``folds``
        contiguous blocks predicted by the ridge fitted on the others at the chosen strength."""
        x, y = x.double(), (offsets * scale).double()
        n = len(x)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-3)
        xs = (x - mean) / std
        blocks = [b for b in torch.tensor_split(torch.arange(n), min(folds, n)) if len(b)]

        def solver(rows: torch.Tensor):
            u, sv, vh = torch.linalg.svd(xs[rows], full_matrices=False)
            uty = u.T @ y[rows]
            return lambda lam: vh.T @ ((sv / (sv ** 2 + lam))[:, None] * uty)

        solvers = [solver(torch.cat([o for o in blocks if o is not b])) for b in blocks] if len(blocks) > 1 else []
        errors = [sum(float(((xs[b] @ f(lam) - y[b]) ** 2).sum()) for b, f in zip(blocks, solvers))
                  for lam in self.LAMBDAS]
        lam = self.LAMBDAS[int(np.argmin(errors))] if solvers else self.LAMBDAS[-1]
        crossed = torch.zeros_like(y)
        for b, f in zip(blocks, solvers):
            crossed[b] = xs[b] @ f(lam)
        weight = solver(torch.arange(n))(lam)
        self.x_mean.copy_(mean.to(self.x_mean))
        self.x_std.copy_(std.to(self.x_std))
        self.weight.copy_((weight / scale.double()).to(self.weight))
        self.ridge.fill_(lam)
        return (crossed / scale.double()).to(offsets.dtype)


class FlameTalk(nn.Module):
    """The FlameTalk decoder (see the module docstring). ``head`` (the head model: its mesh is the PTalker mesh
    encoder's graph) is needed only with ``spec.ptalker``."""

    def __init__(self, spec: FlameTalkSpec, head: HeadModel | None = None) -> None:
        super().__init__()
        self.spec = spec
        arch = spec.arch
        d = arch.dim
        self.audio_proj = nn.Linear(spec.audio_dim, d)
        if spec.ptalker:
            from .ptalker import PTalkerStyle  # it imports this module

            if head is None:
                raise ValueError("a PTalker FlameTalk needs the head model (its mesh is the mesh encoder's graph)")
            pt = spec.ptalker
            self.ptalker = PTalkerStyle(spec.motion_dim, spec.audio_dim, d, arch.heads, arch.dropout,
                                        spec.n_subjects, head, pt.gat_points, pt.gat_layers, pt.style_frames,
                                        pt.speaker_encoder, pt.emotion_encoder)
        else:
            self.style = StyleEncoder(spec.n_vertices, d)
        self.motion_in = nn.Linear(spec.motion_dim, d)
        layer = nn.TransformerDecoderLayer(d, arch.heads, arch.ff_mult * d, arch.dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, arch.layers)
        self.motion_out = nn.Linear(d, spec.motion_dim)
        nn.init.zeros_(self.motion_out.weight)
        nn.init.zeros_(self.motion_out.bias)
        self.register_buffer("motion_mean", torch.zeros(spec.motion_dim))
        self.register_buffer("motion_std", torch.ones(spec.motion_dim))
        self.base = (LinearBase(spec.raw_dim, spec.motion_dim, arch.base_frames)
                     if spec.raw_dim > 0 and arch.base_frames > 0 and not spec.ptalker else None)

    def base_motion(self, raw: torch.Tensor | None) -> torch.Tensor | None:
        """The linear base's motion offsets (B, T, M) for raw features (B, 2T, R), None without a fitted base."""
        if self.base is None or not self.base.fitted or raw is None:
            return None
        return self.base(raw.to(self.base.weight))

    def set_motion_stats(self, motion: torch.Tensor) -> None:
        """Normalise by the mean/std of training motion (N, M)."""
        self.motion_mean.copy_(motion.mean(0))
        self.motion_std.copy_(motion.std(0).clamp_min(1e-4))

    def normalise(self, motion: torch.Tensor) -> torch.Tensor:
        """(..., M) motion in units of the training motion's mean and std."""
        return (motion - self.motion_mean) / self.motion_std

    def base_style(self, template: torch.Tensor, subject: int | None = None, reference: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """The speaker's style before the audio, (B, d) for templates (B, V, 3): S of the template, or with PTalker
        s_p + s_m: s_p of training-subject index ``subject`` (None: an unseen subject), s_m of the ``reference``
        motion clip (T, M) of the speaker (required)."""
        if not self.spec.ptalker:
            if subject is not None or reference is not None:
                raise ValueError("this FlameTalk was trained without --ptalker: it takes no subject index or style "
                                 "reference")
            return self.style(template)
        if reference is None:
            raise ValueError("a PTalker FlameTalk needs a reference motion clip (T, M) of the speaker for its style")
        if reference.ndim != 2 or reference.shape[1] != self.spec.motion_dim or len(reference) == 0:
            raise ValueError(f"reference motion must be (T, {self.spec.motion_dim}) with T >= 1, got "
                             f"{tuple(reference.shape)}")
        b = template.shape[0]
        idx = torch.full((b,), -1 if subject is None else int(subject), dtype=torch.long, device=template.device)
        return self.ptalker.identity(idx) + self.ptalker.reference_style(reference.to(template))

    def window_style(self, base: torch.Tensor, feats: torch.Tensor, wave: torch.Tensor | None = None,
                     fps: float = 25.0) -> torch.Tensor:
        """The style that decodes features (B, 2T, A): ``base`` (B, d), plus with PTalker the audio style s_a of the
        features or (pretrained audio style encoders) of their waveform ``wave`` (B, S) at 16 kHz."""
        return base + self.ptalker.audio_style(feats, wave, fps) if self.spec.ptalker else base

    def history_input(self, history: torch.Tensor | None, b: int, t: int) -> torch.Tensor:
        """The decoder's normalised history (B, T, M): row 0 the start token (the mean motion), rows t >= 1 the motion
        of frame t - 1; all the mean motion when ``history`` is None."""
        if history is None:
            return self.motion_mean.new_zeros(b, t, self.spec.motion_dim)
        hist = self.normalise(history)
        return torch.cat([hist.new_zeros(b, 1, hist.shape[2]), hist[:, 1:]], dim=1)

    def history_content(self, history: torch.Tensor | None, b: int, t: int) -> torch.Tensor:
        """PTalker's motion content c_{1:T} = E_m^c(E_G(.)) of the decoder's history (:meth:`history_input`, back in
        motion units): (B, T, d); c_t depends on history rows <= t only."""
        return self.ptalker.content(self.motion_mean + self.motion_std * self.history_input(history, b, t))

    def forward(self, feats: torch.Tensor, style: torch.Tensor, history: torch.Tensor | None,
                content: torch.Tensor | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
        """One parallel pass.

        Args:
            feats: (B, 2T, A) aligned audio features. style: (B, d), :meth:`window_style` of :meth:`base_style`.
            history: (B, T, M) motion of frames t-1 (row 0 is replaced by the start token); None = the mean motion.
            content: PTalker only, (B, T, d) :meth:`history_content` of ``history`` when the caller has it already
                (None: computed here).
            base: (B, T, M) the linear base's offsets (:meth:`base_motion`), added to the output (None: none).
        Returns:
            (B, T, M) motion.
        """
        b, n2, _ = feats.shape
        t = n2 // 2
        hist = self.history_input(history, b, t).to(feats)
        x = self.motion_in(hist) + style[:, None]  # O_sv = S + O_v
        if self.spec.ptalker:  # eq. 16: the motion content of the history goes into the decoder too
            x = x + (self.history_content(history, b, t) if content is None else content)
        x = x + periodic_positional_encoding(t, self.spec.arch.dim, self.spec.arch.period).to(x)
        tgt_mask = biased_causal_mask(t, self.spec.arch.heads, self.spec.arch.period).to(x).repeat(b, 1, 1)
        mem_mask = alignment_mask(t, n2).to(x)
        h = self.decoder(x, self.audio_proj(feats), tgt_mask=tgt_mask, memory_mask=mem_mask)
        out = self.motion_mean + self.motion_std * self.motion_out(h)
        return out if base is None else out + base.to(out)

    @torch.no_grad()
    def generate(self, feats: torch.Tensor, style: torch.Tensor, mode: str = "autoregressive",
                 base: torch.Tensor | None = None) -> torch.Tensor:
        """Motion for (B, 2T, A) features without ground truth: ``autoregressive`` (T passes, each prediction fed
        back) or ``parallel`` (one pass, mean-motion history). Returns (B, T, M). With PTalker the motion content of
        the generated history is fed back too; E_G works frame by frame, so each history row's graph features are
        computed once and kept. ``base``: the linear base's offsets (B, T, M) (:meth:`base_motion`)."""
        if mode == "parallel":
            return self(feats, style, None, base=base)
        if mode != "autoregressive":
            raise ValueError(f"unknown inference mode '{mode}' (autoregressive or parallel)")
        b, t = feats.shape[0], feats.shape[1] // 2
        history = feats.new_zeros(b, t, self.spec.motion_dim)
        out = history.clone()
        graph: list[torch.Tensor] = []  # PTalker: E_G of history rows 0..i
        for i in range(t):
            content = None
            if self.spec.ptalker:
                row = self.history_input(history[:, : i + 1], b, i + 1)[:, i:]
                graph.append(self.ptalker.graph(self.motion_mean + self.motion_std * row))
                content = self.ptalker.motion_content(torch.cat(graph, dim=1))
            step = self(feats[:, : 2 * (i + 1)], style, history[:, : i + 1], content,
                        None if base is None else base[:, : i + 1])
            out[:, i] = step[:, i]
            if i + 1 < t:
                history[:, i + 1] = step[:, i]
        return out


class StreamingPredictor:
    """Audio chunks in, motion frames out: ``push(samples) -> (k, M)`` final frames, ``flush() -> (rest, M)``.

    Windows of ``window`` frames start every ``window - overlap`` frames; a window is decoded once its audio plus
    ``context`` frames beyond it has arrived (so the latency is about ``(window + context) / fps``); frames are
    returned once no later window overlaps them. Audio is 16 kHz mono float32. ``subject`` and ``reference`` are the
    PTalker style inputs of :meth:`FlameTalk.base_style` (the audio style is taken per window).
    """

    def __init__(self, model: FlameTalk, encoder: AudioEncoder, template: torch.Tensor, fps: float = 25.0,
                 mode: str = "autoregressive", window: int = 100, overlap: int = 10, context: int | None = None, *,
                 subject: int | None = None, reference: torch.Tensor | None = None) -> None:
        if not 0 <= overlap < window:
            raise ValueError(f"overlap ({overlap}) must be in [0, window={window})")
        self.model, self.encoder, self.fps, self.mode = model, encoder, fps, mode
        self.window, self.overlap = window, overlap
        spf = SAMPLE_RATE / fps
        ctx_samples = encoder.context_samples if encoder.context_samples is not None else SAMPLE_RATE
        self.context = int(math.ceil(ctx_samples / spf)) if context is None else context
        if model.base is not None:  # the linear base's window reaches that far beyond a frame
            self.context = max(self.context, model.base.frames)
        self.spf = spf
        with torch.no_grad(), eval_mode(model):
            self.style = model.base_style(template.reshape(1, -1, 3).to(self._param()), subject, reference)
        self.audio = np.zeros(0, np.float32)  # samples from self.audio_start on
        self.audio_start = 0
        self.n_samples = 0
        self.next_start = 0  # first frame of the next window to decode
        self.emitted = 0  # frames returned so far
        self.pending = np.zeros((0, model.spec.motion_dim), np.float32)  # blended frames emitted..., not yet final
        self.done = False

    def _param(self) -> torch.Tensor:
        return next(self.model.parameters())

    def _samples(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) of the stream, zero outside the audio received."""
        out = np.zeros(b - a, np.float32)
        lo, hi = max(a, self.audio_start), min(b, self.audio_start + self.audio.size)
        if hi > lo:
            out[lo - a: hi - a] = self.audio[lo - self.audio_start: hi - self.audio_start]
        return out

    def _decode(self, start: int, end: int) -> np.ndarray:
        c = self.context
        a, b = int(round((start - c) * self.spf)), int(round((end + c) * self.spf))
        wave = torch.from_numpy(self._samples(a, b))[None].to(self._param())
        with torch.no_grad(), eval_mode(self.model, self.encoder):
            feats = self.encoder(wave, end - start + 2 * c, self.fps)[:, 2 * c: 2 * (c + end - start)]
            base = None
            if self.model.base is not None and self.model.base.fitted:  # over the context too, then cropped
                base = self.model.base_motion(self.encoder.raw_features(wave, end - start + 2 * c, self.fps))
                base = base[:, c: c + end - start]
            motion = self.model.generate(feats, self.model.window_style(self.style, feats, wave, self.fps),
                                         self.mode, base)[0]
        return motion.float().cpu().numpy()

    def _blend(self, start: int, motion: np.ndarray, first: bool, last: bool) -> None:
        """Add a decoded window (frames start..start+len) into ``pending`` with linear cross-fade ramps."""
        n, o = motion.shape[0], self.overlap
        w = np.ones(n, np.float32)
        if not first:
            k = min(o, n)
            w[:k] = (np.arange(k) + 1) / (o + 1)
        if not last:
            k = min(o, n)
            w[n - k:] = np.minimum(w[n - k:], (o - np.arange(o - k, o)) / (o + 1))
        off = start - self.emitted
        need = off + n - self.pending.shape[0]
        if need > 0:
            self.pending = np.concatenate([self.pending, np.zeros((need, motion.shape[1]), np.float32)])
        self.pending[off: off + n] += w[:, None] * motion

    def _take(self, upto: int) -> np.ndarray:
        k = max(upto - self.emitted, 0)
        out, self.pending = self.pending[:k], self.pending[k:]
        self.emitted += k
        keep = int(round((self.next_start - self.context) * self.spf)) - self.audio_start
        if keep > 0:
            self.audio, self.audio_start = self.audio[keep:], self.audio_start + keep
        return out

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed (n,) samples; returns the (k, M) frames that became final (k may be 0)."""
        if self.done:
            raise RuntimeError("push after flush: start a new StreamingPredictor")
        samples = np.asarray(samples, np.float32).reshape(-1)
        self.audio = np.concatenate([self.audio, samples])
        self.n_samples += samples.size
        while (self.next_start + self.window + self.context) * self.spf <= self.n_samples:
            s = self.next_start
            self._blend(s, self._decode(s, s + self.window), first=s == 0, last=False)
            self.next_start = s + self.window - self.overlap
        return self._take(self.next_start)

    def flush(self) -> np.ndarray:
        """End of the audio: decode the remaining windows; returns the last (k, M) frames."""
        if self.done:
            return np.zeros((0, self.model.spec.motion_dim), np.float32)
        self.done = True
        total = frames_for_samples(self.n_samples, self.fps)
        while True:
            s = self.next_start
            e = min(s + self.window, total)
            self._blend(s, self._decode(s, e), first=s == 0, last=e >= total)
            self.next_start = s + self.window - self.overlap
            if e >= total:
                break
        return self._take(total)


def predict(model: FlameTalk, encoder: AudioEncoder, wave: np.ndarray, template: torch.Tensor, fps: float = 25.0,
            mode: str = "autoregressive", window: int = 100, overlap: int = 10, *, subject: int | None = None,
            reference: torch.Tensor | None = None) -> np.ndarray:
    """Motion (T, M) for a whole clip (S,) 16 kHz, T = round(S fps / 16000): windowed, cross-faded. ``subject`` and
    ``reference``: PTalker style inputs (:meth:`FlameTalk.base_style`)."""
    stream = StreamingPredictor(model, encoder, template, fps, mode, window, overlap, subject=subject,
                                reference=reference)
    return np.concatenate([stream.push(wave), stream.flush()])
