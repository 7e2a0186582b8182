"""PTalker (Wang et al., MM '25; ``shared/papers/000_2cf48eb447f09144.txt``, §3 and §4.1) inside FlameTalk.

With ``--ptalker`` the decoder is eq. 16, M^_{1:T} = D(E_a^c(chi), E_m^c(E_G(M_{1:T})), s), s = s_a + s_m + s_p:

- E_G, graph attention encoder (:class:`GraphAttentionEncoder`, eq. 15): every frame's motion mesh (the frame's
  expression + jaw on the head model's mean identity) on a vertex-cluster graph of the face region
  (:func:`mesh_graph`: farthest-point centres, clusters joined where a mesh edge joins them; one node per cluster,
  its centre vertex), ``gat_layers`` GAT layers -> G_{1:T}, per-node features of every frame.
- E_m^s, motion style encoder (:class:`SequenceStyleEncoder`): linear -> TCN -> transformer -> temporal mean: s_m.
- E_m^c, motion content encoder (:class:`MotionContentEncoder`): linear -> Conv1D + instance norm -> positional
  encoding -> transformer -> linear: c_{1:T}. Causal (left-padded convolution, instance-norm statistics of frames
  <= t, causal attention), so the decoder can take the content of its own generated history: in training the
  teacher-forced history (shifted ground truth, with history dropout), at inference the frames it generated before
  (autoregressive), or the mean motion (parallel mode).
- E_a^c, audio content encoder: FlameTalk's own audio path, the ``--audio-encoder`` (``hubert:ID_OR_DIR`` is the
  paper's HuBERT; offline the project's mel / mel+phonetic encoders stand in) and its linear projection: a_{1:T}
  (two 50 Hz features per frame; the losses use the mean of a frame's two).
- E_a^s, audio style encoder (:class:`AudioStyleEncoder`): the paper's two pretrained wav2vec2 networks, speaker
  identification W_s and emotion classification W_e (``--pt.speaker-encoder`` / ``--pt.emotion-encoder``, hub ids or
  local folders, nothing downloaded by default), each mean-pooled over time, concatenated, a linear map: s_a.
  Offline stand-in: a :class:`SequenceStyleEncoder` over the audio encoder's features.
- E_p^s, identity style encoder (:class:`IdentityStyleEncoder`): personalised style p = W onehot(k), common style
  e = Embedding[k]; attention with query p over {p, e}; s_p = p + attention (residual on the personalised style).
  An unseen speaker (index -1) has no one-hot (p = 0) and the common style's "unknown" row.
- C, style classifier (:class:`StyleClassifier`) on time-averaged content behind a gradient-reversal layer.

Every equation and the code that computes it:

======  ============================================================  ===========================================
eq.     term                                                          code
======  ============================================================  ===========================================
1       L_adv = CE(C(GRL(mean_t a)), y) (and the same on c)           :func:`adversarial_loss`, :func:`grad_reverse`
2, 3    L_cos = sum_k w_k (1 - cos) over (s_a,s_m),(s_a,s_p),(s_m,s_p) :func:`style_similarity_loss`
4       L_orth = ||P P^T - I||_F / B after adaptive pooling            :func:`orthogonality_loss`
5       L_Info (InfoNCE of style and content, temperature tau)        :func:`info_loss`
6, 7    L_Top-k = lambda L_a->c + (1 - lambda) L_c->a (alpha, beta, k) :func:`topk_contrastive_loss`
8       L_KL, Gaussian KL of per-dimension mean / variance            :func:`gaussian_kl_loss`
9       L_cts = L_Top-k + L_KL                                        :func:`contrastive_loss`
10      L_rec (per-frame L2 of the vertex error, mean over frames)    :func:`sequence_l2_loss`
11      L_mou (the same on the mouth (lips) vertices)                 :func:`sequence_l2_loss`
12      L_vel (the same on frame-to-frame differences)                :func:`velocity_l2_loss`
13      L_motion = a1 L_rec + a2 L_mou + a3 L_vel                      :func:`motion_loss`
14      L_all = b1 L_motion + b2 L_adv + b3 L_orth + b4 L_Info + b5    :func:`~.train.fit_talk` (its PTalker
        L_cts (+ b_cos L_cos, which eq. 14 leaves out but §3.2          step; the terms from ``_ptalker_terms``),
        defines and Table 4 ablates)                                  weights :class:`~.train.PTalkerOptions`
15      h_v' = sigma(sum_u alpha_vu W h_u)                             :class:`GraphAttentionLayer`,
                                                                      :class:`GraphAttentionEncoder`
16      M^ = D(E_a^c(chi), E_m^c(E_G(M)), s), s = s_a + s_m + s_p     :meth:`~.model.FlameTalk.forward`
======  ============================================================  ===========================================

Where the paper leaves a choice open, this code takes: E^{A->C}_ij = cos(A_i, C_j) / tau between the clips'
time-averaged audio and motion contents (eq. 6 does not define E); the top-k set of eq. 6 is over the whole row,
the positive included, as written; L_orth and L_Info are applied to (s_a, a_{1:T}) and (s_m, c_{1:T}) and summed;
L_adv averages the audio and the motion content classifiers' cross-entropies; eq. 5 is implemented as printed
(minimising it raises the InfoNCE bound of the style/content mutual information, the opposite of the paper's stated
aim; a negative ``--pt.beta-info`` turns it into a minimisation of that bound). The decoder's s_m in training comes
from another random clip of the same subject (the losses use the target clip's own s_m), as at inference, where it
comes from a reference clip; E_G sees motion on the mean identity (the project's motion is identity-free
expression + jaw), and the content encoder is causal so that eq. 16 can run autoregressively on its own output.

Shapes: B clips, T frames, M motion size, A audio feature size, d model width, N graph nodes, F node features.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..headmodel import HeadModel
from ..headmodel.motion import motion_vertices
from .encoders import TransformersEncoder
from .model import periodic_positional_encoding

__all__ = ["AudioStyleEncoder", "CausalInstanceNorm", "GraphAttentionEncoder", "GraphAttentionLayer",
           "IdentityStyleEncoder", "MotionContentEncoder", "PTalkerStyle", "SequenceStyleEncoder", "StyleClassifier",
           "TemporalConvNet", "adversarial_loss", "contrastive_loss", "farthest_point_sampling", "gaussian_kl_loss",
           "grad_reverse", "info_loss", "mesh_graph", "motion_loss", "orthogonality_loss", "sequence_l2_loss",
           "style_similarity_loss", "topk_contrastive_loss", "velocity_l2_loss"]


# ------------------------------------------------------------------------------------------- gradient reversal

class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Gradient-reversal layer GRL(x, alpha_c) (Ganin & Lempitsky 2015): identity forward, gradient multiplied by
    ``-lam`` backward. Any shape."""
    return _GradientReversal.apply(x, lam)


# ------------------------------------------------------------------------------------------------- losses

def adversarial_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 1, L_adv = CE(y^, y) = -1/N sum_n log softmax(y^_n)[y_n]. logits (N, C), labels (N,).

    The logits are the classifier's on time-averaged content behind :func:`grad_reverse`: minimising L_adv trains
    the classifier, the reversed gradient trains the content encoder to defeat it."""
    return F.cross_entropy(logits, labels)


def style_similarity_loss(s_a: torch.Tensor, s_m: torch.Tensor, s_p: torch.Tensor,
                          weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Eqs. 2-3, L_cos = w1 (1 - cos(s_a, s_m)) + w2 (1 - cos(s_a, s_p)) + w3 (1 - cos(s_m, s_p)), cos(x, y) =
    x . y / (|x| |y|), averaged over the batch. s_a, s_m, s_p (B, d)."""
    w1, w2, w3 = weights
    one = lambda x, y: (1 - F.cosine_similarity(x, y, dim=-1)).mean()  # noqa: E731
    return w1 * one(s_a, s_m) + w2 * one(s_a, s_p) + w3 * one(s_m, s_p)


def orthogonality_loss(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Eq. 4, the modified Procrustes loss L_orth = ||P P^T - I||_F / B.

    Content C (B, F_c, D_c) and style S (B, F_s, D_s) are adaptive-average-pooled to F = min(F_c, F_s) frames; P
    (B, D_c, D_s) is the batch-wise inner product P_b = C_b^T S_b (summed over the F frames); I the D_c x D_c identity;
    the Frobenius norm is over the whole (B, D_c, D_c) tensor. A (B, d) style is one frame (F_s = 1)."""
    if style.dim() == 2:
        style = style[:, None]
    f = min(content.shape[1], style.shape[1])
    pool = lambda x: F.adaptive_avg_pool1d(x.transpose(1, 2), f)  # noqa: E731  (B, D, F)
    p = pool(content) @ pool(style).transpose(1, 2)  # (B, D_c, D_s)
    eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
    return torch.linalg.vector_norm(p @ p.transpose(1, 2) - eye) / p.shape[0]


def info_loss(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Eq. 5, L_Info = -1/B sum_i log( exp(sim(x_i, y_i) / tau) / sum_j exp(sim(x_i, y_j) / tau) ), sim the cosine
    similarity. x (style), y (content, time-averaged) (B, d), row i of both from clip i."""
    sim = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / temperature
    return F.cross_entropy(sim, torch.arange(len(x), device=x.device))


def topk_contrastive_loss(a: torch.Tensor, c: torch.Tensor, k: int = 3, alpha: float = 1.0, beta: float = 1.0,
                          lam: float = 0.5, temperature: float = 0.1) -> torch.Tensor:
    """Eqs. 6-7, the top-k bidirectional contrastive loss, as written:

        L_a->c = 1/B sum_i -alpha log( exp(E_ii) / (beta sum_{j in Top-k(E_i)} exp(E_ij)) ),  E = E^{A->C}
        L_c->a = the same with E^{C->A} = (E^{A->C})^T,     L_Top-k = lambda L_a->c + (1 - lambda) L_c->a

    with E^{A->C}_ij = cos(a_i, c_j) / tau, Top-k(E_i) the k largest entries of row i (the positive included when it
    is among them; k is capped at B). a (audio content), c (motion content) (B, d), paired by row."""
    k = min(k, len(a))
    e = F.normalize(a, dim=-1) @ F.normalize(c, dim=-1).T / temperature

    def one_way(s: torch.Tensor) -> torch.Tensor:
        top = torch.logsumexp(s.topk(k, dim=1).values, dim=1)
        return (-alpha * (s.diagonal() - math.log(beta) - top)).mean()

    return lam * one_way(e) + (1 - lam) * one_way(e.T)


def gaussian_kl_loss(a: torch.Tensor, c: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 8, KL from the audio to the motion content distribution, each a diagonal Gaussian of its per-dimension
    mean mu and (population) variance sigma^2 over the samples:
    L_KL = 1/2 sum_d [ log(sigma_c,d^2 / sigma_a,d^2) + (sigma_a,d^2 + (mu_a,d - mu_c,d)^2) / sigma_c,d^2 - 1 ].
    a, c (N, D) samples (the frames of a batch); ``eps`` is added to the variances."""
    va, vc = a.var(dim=0, unbiased=False) + eps, c.var(dim=0, unbiased=False) + eps
    ma, mc = a.mean(dim=0), c.mean(dim=0)
    return 0.5 * (torch.log(vc / va) + (va + (ma - mc) ** 2) / vc - 1).sum()


def contrastive_loss(a: torch.Tensor, c: torch.Tensor, a_frames: torch.Tensor, c_frames: torch.Tensor,
                     **topk: float) -> torch.Tensor:
    """Eq. 9, L_cts = L_Top-k(a, c) + L_KL(a_frames, c_frames): clip-level contents a, c (B, d) for the contrastive
    part, per-frame contents (N, d) for the distributions. ``topk``: :func:`topk_contrastive_loss`'s options."""
    return topk_contrastive_loss(a, c, **topk) + gaussian_kl_loss(a_frames, c_frames)


def sequence_l2_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Eqs. 10 / 11, (1/N) sum_n (1/T_n) sum_t ||d_n,t - d^_n,t||_2: the Euclidean norm of frame t's whole vertex
    error (all V x 3 coordinates), averaged over frames and sequences. pred, true (B, T, V, 3) -> scalar."""
    return (pred - true).flatten(2).norm(dim=-1).mean()


def velocity_l2_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Eq. 12, (1/N) sum_n (1/T_n) sum_{t>=2} ||(d_t - d_t-1) - (d^_t - d^_t-1)||_2 (the sum over t = 2..T divided by
    T, as written). pred, true (B, T, V, 3) -> scalar."""
    diff = (pred[:, 1:] - pred[:, :-1]) - (true[:, 1:] - true[:, :-1])
    return diff.flatten(2).norm(dim=-1).sum(dim=1).mean() / pred.shape[1]


def motion_loss(pred: torch.Tensor, true: torch.Tensor, face: torch.Tensor, mouth: torch.Tensor,
                alphas: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 13, L_motion = a1 L_rec + a2 L_mou + a3 L_vel on vertices pred, true (B, T, V, 3) (mm): L_rec and L_vel
    on the vertices ``face`` (K,) indexes among the V, L_mou on ``mouth`` (K',). Returns (L_motion, {"rec", "mou",
    "vel"})."""
    p, t = pred[:, :, face], true[:, :, face]
    terms = {"rec": sequence_l2_loss(p, t), "mou": sequence_l2_loss(pred[:, :, mouth], true[:, :, mouth]),
             "vel": velocity_l2_loss(p, t)}
    return alphas[0] * terms["rec"] + alphas[1] * terms["mou"] + alphas[2] * terms["vel"], terms


# ------------------------------------------------------------------------------------------- graph encoder

def farthest_point_sampling(points: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (n,) of points (V, 3) chosen greedily, each the farthest from those chosen before; starts at 0."""
    chosen = torch.zeros(n, dtype=torch.long)
    dist = (points - points[0]).norm(dim=1)
    for i in range(1, n):
        chosen[i] = dist.argmax()
        dist = torch.minimum(dist, (points - points[chosen[i]]).norm(dim=1))
    return chosen


def mesh_graph(faces: torch.Tensor, vertices: torch.Tensor, n_points: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A coarse graph of a mesh: ``n_points`` farthest-point centres, every vertex in the cluster of its nearest
    centre, two clusters joined where a mesh edge joins their vertices (the full mesh when n_points >= V).

    Args: faces (F, 3) long; vertices (V, 3).
    Returns: cluster (V,) long in [0, n), edges (2, E) long (both directions, no self loops, unique), centres (n,)
    the vertex index of each cluster's centre.
    """
    vertices = vertices.detach().float().cpu()
    faces = faces.cpu()
    if n_points >= len(vertices):
        centres = cluster = torch.arange(len(vertices))
    else:
        centres = farthest_point_sampling(vertices, n_points)
        cluster = torch.cdist(vertices, vertices[centres]).argmin(dim=1)
    pairs = cluster[faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)]
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    edges = torch.unique(torch.cat([pairs, pairs.flip(1)]), dim=0).T
    return cluster, edges.contiguous(), centres


class GraphAttentionLayer(nn.Module):
    """Eq. 15 without its nonlinearity (the caller applies sigma): a GAT layer (Velickovic et al. 2018) with H heads.
    For node v and neighbours u (self included), alpha_vu = softmax_u LeakyReLU(q . W h_v + k . W h_u),
    h'_v = concat over heads of sum_u alpha_vu W h_u (+ bias). x (B, N, F_in), edges (2, E) rows (source u,
    target v) -> (B, N, H * F_out)."""

    def __init__(self, in_dim: int, out_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.out_dim = heads, out_dim
        self.lin = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.att_target = nn.Parameter(torch.empty(heads, out_dim))
        self.att_source = nn.Parameter(torch.empty(heads, out_dim))
        self.bias = nn.Parameter(torch.zeros(heads * out_dim))
        nn.init.xavier_uniform_(self.att_target)
        nn.init.xavier_uniform_(self.att_source)

    def forward(self, x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.lin(x).view(b, n, self.heads, self.out_dim)
        src, dst = edges[0], edges[1]
        score = F.leaky_relu((h * self.att_target).sum(-1)[:, dst] + (h * self.att_source).sum(-1)[:, src], 0.2)
        peak = score.new_full((b, n, self.heads), float("-inf")).scatter_reduce(
            1, dst[None, :, None].expand_as(score), score.detach(), "amax")
        w = (score - peak[:, dst]).exp()  # (B, E, H)
        alpha = w / w.new_zeros(b, n, self.heads).index_add(1, dst, w)[:, dst]
        out = h.new_zeros(b, n, self.heads, self.out_dim).index_add(1, dst, alpha[..., None] * h[:, src])
        return out.reshape(b, n, -1) + self.bias


class GraphAttentionEncoder(nn.Module):
    """E_G: per-frame motion meshes -> G_{1:T}. motion (B, T, M) (raw, not normalised) -> (B, T, N * F).

    The graph: the head model's face region pooled into ``n_points`` clusters (:func:`mesh_graph`), one node per
    cluster at its centre vertex, plus self loops. Node features of frame t: the node's neutral position relative to
    the face centroid (decimetres) and its displacement in frame t (millimetres), the frame's motion applied to the
    head model's mean identity (so the graph sees speaking motion, not face shape). ``layers`` GAT layers (eq. 15,
    sigma = ELU after each); G_t is the concatenation of the N nodes' F features (the style and content encoders'
    first linear layer compresses it, as the paper describes). ``head`` is used, not owned: it is no submodule and
    its weights are not in the state dict.
    """

    def __init__(self, head: HeadModel, n_points: int = 128, layers: int = 2, heads: int = 4, hidden: int = 8) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"the graph attention encoder needs at least one layer (--pt.gat-layers {layers})")
        region = head.regions["face"].cpu()
        template = head.template.detach().float().cpu()
        local = torch.full((head.n_vertices,), -1, dtype=torch.long)
        local[region] = torch.arange(len(region))
        faces = local[head.faces.cpu()]
        faces = faces[(faces >= 0).all(dim=1)]
        _, edges, centres = mesh_graph(faces, template[region], n_points)
        n = len(centres)
        self._head = (head,)
        self.register_buffer("vertex_ids", region[centres], persistent=False)
        self.register_buffer("edges", torch.cat([edges, torch.arange(n).expand(2, -1)], dim=1), persistent=False)
        base = template[region[centres]]
        self.register_buffer("base", base, persistent=False)
        self.register_buffer("position", (base - base.mean(dim=0)) * 10.0, persistent=False)
        self.layers = nn.ModuleList(GraphAttentionLayer(6 if i == 0 else heads * hidden, hidden, heads)
                                    for i in range(layers))
        self.n_nodes, self.out_dim = n, n * heads * hidden

    def vertices(self, motion: torch.Tensor) -> torch.Tensor:
        """The node vertices (B, T, N, 3) of motion (B, T, M) on the mean identity, in metres."""
        head = self._head[0]
        dev = head.template.device
        shape = torch.zeros(head.n_shape, device=dev)
        return motion_vertices(head, motion.to(dev, torch.float32), shape, self.vertex_ids.to(dev)).to(motion)

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        b, t, _ = motion.shape
        v = self.vertices(motion)
        x = torch.cat([self.position.to(v).expand(b, t, -1, -1), (v - self.base.to(v)) * 1000.0], dim=-1)
        x = x.flatten(0, 1)  # (B T, N, 6)
        for layer in self.layers:
            x = F.elu(layer(x, self.edges))
        return x.reshape(b, t, -1)


# ------------------------------------------------------------------------------------------- sequence encoders

class TemporalConvNet(nn.Module):
    """Residual dilated 1-D convolutions over time: x <- x + GELU(Conv1d_dilation(x)), dilations 1, 2, 4, ...
    (B, T, d) -> (B, T, d), same length."""

    def __init__(self, dim: int, layers: int = 2, kernel: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2 * 2 ** i, dilation=2 ** i)
                                   for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.transpose(1, 2)
        for conv in self.convs:
            y = y + F.gelu(conv(y))
        return y.transpose(1, 2)


class SequenceStyleEncoder(nn.Module):
    """A clip's style code: linear -> TCN (style tokens) -> transformer encoder layer -> temporal mean pooling.
    (B, T, F) -> (B, d). E_m^s (F = N * F_G, the graph features) and the offline E_a^s (F = A, audio features)."""

    def __init__(self, in_dim: int, dim: int, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.tcn = TemporalConvNet(dim)
        self.transformer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.tcn(self.proj(x))).mean(dim=1)


class CausalInstanceNorm(nn.Module):
    """Instance normalisation over time with the statistics of frames <= t: y_t = (x_t - mean_{<=t}) /
    sqrt(var_{<=t} + eps) per clip and channel (no affine), so frame t never sees a later frame. (B, C, T)."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = torch.arange(1, x.shape[2] + 1, device=x.device, dtype=x.dtype)
        mean = x.cumsum(dim=2) / n
        var = ((x * x).cumsum(dim=2) / n - mean ** 2).clamp_min(0)
        return (x - mean) / torch.sqrt(var + self.eps)


class MotionContentEncoder(nn.Module):
    """E_m^c: per-frame content codes c_{1:T}: linear -> Conv1D (left-padded) + instance norm
    (:class:`CausalInstanceNorm`: removes each clip's per-channel offset and scale, i.e. style) + GELU -> sinusoidal
    positional encoding -> transformer encoder layer with causal attention -> linear. (B, T, F) -> (B, T, d); frame
    t depends on input frames <= t only."""

    def __init__(self, in_dim: int, dim: int, heads: int = 4, dropout: float = 0.1, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.proj = nn.Linear(in_dim, dim)
        self.conv = nn.Conv1d(dim, dim, kernel)
        self.norm = CausalInstanceNorm()
        self.transformer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(self.proj(x).transpose(1, 2), (self.kernel - 1, 0))
        y = F.gelu(self.norm(self.conv(y))).transpose(1, 2)
        t = y.shape[1]
        y = y + periodic_positional_encoding(t, y.shape[2], t).to(y)  # period = length: the plain encoding
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=y.device), diagonal=1)
        return self.out(self.transformer(y, src_mask=causal))


class AudioStyleEncoder(nn.Module):
    """E_a^s: audio style s_a (B, d).

    With pretrained networks (``speaker`` = W_s, ``emotion`` = W_e: wav2vec2 hub ids or local folders, loaded through
    transformers, CNN feature extractors frozen): each network's last hidden states mean-pooled over time,
    concatenated, a linear map; input the clip's waveform (B, S) at 16 kHz. Without any (the offline stand-in): a
    :class:`SequenceStyleEncoder` over the audio encoder's features (B, 2T, A)."""

    def __init__(self, audio_dim: int, dim: int, heads: int, dropout: float, speaker: str = "", emotion: str = ""
                 ) -> None:
        super().__init__()
        ids = [i for i in (speaker, emotion) if i]
        self.pretrained = nn.ModuleList(TransformersEncoder("wav2vec2", i) for i in ids)
        if ids:
            self.out = nn.Linear(sum(p.dim for p in self.pretrained), dim)
        else:
            self.standin = SequenceStyleEncoder(audio_dim, dim, heads, dropout)

    def forward(self, feats: torch.Tensor, wave: torch.Tensor | None, fps: float = 25.0) -> torch.Tensor:
        if not len(self.pretrained):
            return self.standin(feats)
        if wave is None:
            raise ValueError("the pretrained audio style encoders need the waveform of the clip")
        n = max(feats.shape[1] // 2, 1)
        return self.out(torch.cat([p(wave, n, fps).mean(dim=1) for p in self.pretrained], dim=-1))


class IdentityStyleEncoder(nn.Module):
    """E_p^s: s_p = p + Attn(query p, keys/values [p, e]) (B, d), with the personalised style p = W onehot(k) (a linear
    layer, no bias) and the common style e = Embedding[k] (looked up by the subject index). Index -1 (an unseen
    subject, or one hidden in training) has no one-hot (p = 0) and looks up the last row, the learnt "unknown"
    common style."""

    def __init__(self, n_subjects: int, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.n_subjects = n_subjects
        self.personal = nn.Linear(n_subjects, dim, bias=False)
        self.common = nn.Embedding(n_subjects + 1, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, subject: torch.Tensor) -> torch.Tensor:
        known = subject >= 0
        onehot = F.one_hot(subject.clamp_min(0), self.n_subjects).float() * known[:, None]
        p = self.personal(onehot.to(self.personal.weight))
        e = self.common(torch.where(known, subject, self.n_subjects))
        tokens = torch.stack([p, e], dim=1)  # (B, 2, d)
        att, _ = self.attn(p[:, None], tokens, tokens, need_weights=False)
        return p + att[:, 0]


class StyleClassifier(nn.Module):
    """C: which training subject a time-averaged content code comes from, behind GRL(., alpha_c).
    (B, d) -> logits (B, n_subjects)."""

    def __init__(self, dim: int, n_subjects: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, n_subjects))

    def forward(self, content: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
        return self.net(grad_reverse(content, lam))


class PTalkerStyle(nn.Module):
    """The PTalker encoders of a FlameTalk model (its ``ptalker`` submodule): ``graph`` (E_G), ``motion_style``
    (E_m^s), ``motion_content`` (E_m^c), ``audio_style`` (E_a^s), ``identity`` (E_p^s), ``classifier`` (C).

    Args: motion_dim M, audio_dim A, dim d, heads, dropout, n_subjects (training subjects, the one-hot size), head
    (the head model: its face mesh is E_G's graph, its motion -> vertex map E_G's input), gat_points / gat_layers,
    style_frames (piece length for reference clips), speaker / emotion (pretrained E_a^s networks; "" = none).
    """

    def __init__(self, motion_dim: int, audio_dim: int, dim: int, heads: int, dropout: float, n_subjects: int,
                 head: HeadModel, gat_points: int = 128, gat_layers: int = 2, style_frames: int = 50,
                 speaker: str = "", emotion: str = "") -> None:
        super().__init__()
        if n_subjects < 1:
            raise ValueError(f"PTalker needs at least one training subject (n_subjects={n_subjects})")
        self.style_frames = style_frames
        self.graph = GraphAttentionEncoder(head, gat_points, gat_layers)
        self.motion_style = SequenceStyleEncoder(self.graph.out_dim, dim, heads, dropout)
        self.motion_content = MotionContentEncoder(self.graph.out_dim, dim, heads, dropout)
        self.audio_style = AudioStyleEncoder(audio_dim, dim, heads, dropout, speaker, emotion)
        self.identity = IdentityStyleEncoder(n_subjects, dim, heads)
        self.classifier = StyleClassifier(dim, n_subjects)

    def content(self, motion: torch.Tensor) -> torch.Tensor:
        """c_{1:T} = E_m^c(E_G(M)) (B, T, d) of raw motion (B, T, M); causal in t."""
        return self.motion_content(self.graph(motion))

    def clip_style(self, motion: torch.Tensor) -> torch.Tensor:
        """s_m = E_m^s(E_G(M)) (B, d) of raw motion clips (B, T, M)."""
        return self.motion_style(self.graph(motion))

    def reference_style(self, motion: torch.Tensor) -> torch.Tensor:
        """s_m (1, d) of a raw reference clip (T, M) of any length: the mean of the motion styles of its consecutive
        pieces of ``style_frames`` frames (a shorter last piece is dropped unless it is the only one)."""
        n = max(len(motion) // self.style_frames, 1)
        size = min(self.style_frames, len(motion))
        pieces = motion[: n * size].reshape(n, size, motion.shape[-1])
        return self.clip_style(pieces).mean(dim=0, keepdim=True)
