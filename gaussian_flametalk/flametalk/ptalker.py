"""PTalker plug-ins for multi-subject FlameTalk: style and content encoders, gradient reversal, the style losses.

With ``--ptalker`` the decoder's style is no longer the template embedding S but

    s = s_a + s_m + s_p          (B, d);   O_sv = s + O_v

- s_p, personal style (:class:`IdentityStyleEncoder`): the subject's template mesh through a graph attention network
  (:class:`MeshEncoder`, graph = the head model's mesh edges between vertex clusters) gives a mesh code g, the query of
  an attention over [one-hot personal style of the training subject, a common learnt style]; s_p = g + attention.
  An unseen subject has no personal token (common style only).
- s_m, motion style (:class:`SequenceStyleEncoder`: linear -> TCN -> transformer -> mean pool) of a motion clip of
  the speaker: in training another clip of the same subject, at inference a reference clip (any length, encoded in
  pieces of ``style_frames`` frames and averaged) -- which is how an unseen subject gets its style without fine-tuning.
- s_a, audio style (the same encoder kind) of the audio features being decoded.
- The motion content encoder (:class:`MotionContentEncoder`: linear -> Conv1D + InstanceNorm -> positional encoding
  -> transformer -> linear) gives per-frame content codes c (B, T, d); a subject classifier reads them through a
  gradient-reversal layer (:func:`grad_reverse`), so the encoder learns content that carries no identity.

Losses (each a function below, formula in its docstring): adversarial (cross-entropy of the classifier behind the
gradient reversal), cosine style similarity, orthogonality of style and content, InfoNCE mutual information, top-k
bidirectional contrastive, and the KL divergence between softmax distributions of audio and motion style.

Shapes: B clips, T frames, M motion size, A audio feature size, d model width, V mesh vertices.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .model import periodic_positional_encoding

__all__ = ["GraphAttentionLayer", "IdentityStyleEncoder", "MeshEncoder", "MotionContentEncoder", "PTalkerStyle",
           "SequenceStyleEncoder", "SubjectClassifier", "TemporalConvNet", "adversarial_loss",
           "farthest_point_sampling", "grad_reverse", "infonce_loss", "mesh_graph", "orthogonality_loss",
           "style_kl_loss", "style_similarity_loss", "topk_contrastive_loss"]


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
    """Gradient-reversal layer (Ganin & Lempitsky 2015): identity forward, gradient multiplied by ``-lam`` backward.
    Any shape."""
    return _GradientReversal.apply(x, lam)


# ------------------------------------------------------------------------------------------------- losses

def adversarial_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Subject-classification cross-entropy L_adv = -1/N sum_n log softmax(z_n)[y_n]. logits (N, C), labels (N,).

    Computed on classifier logits of content codes passed through :func:`grad_reverse`: minimising it trains the
    classifier, while the reversed gradient trains the content encoder to defeat it."""
    return F.cross_entropy(logits, labels)


def style_similarity_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine style similarity L_sim = 1/B sum_b (1 - cos(a_b, b_b)) for style codes a, b (B, d) of two clips of the
    same subject."""
    return (1 - F.cosine_similarity(a, b, dim=-1)).mean()


def orthogonality_loss(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """L_orth = 1/(B T) sum_{b,t} (s_b . c_{b,t} / (|s_b| |c_{b,t}|))^2: style codes (B, d) orthogonal to the content
    codes (B, T, d) of the same clip."""
    s = F.normalize(style, dim=-1)[:, None]
    c = F.normalize(content, dim=-1)
    return ((s * c).sum(-1) ** 2).mean()


def infonce_loss(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE (a lower bound of the mutual information of x and y): with S_ij = cos(x_i, y_j) / tau,
    L = -1/N sum_i log( exp(S_ii) / sum_j exp(S_ij) ). x, y (N, d), row i of both from the same clip."""
    sim = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / temperature
    return F.cross_entropy(sim, torch.arange(len(x), device=x.device))


def topk_contrastive_loss(x: torch.Tensor, y: torch.Tensor, k: int = 3, temperature: float = 0.1) -> torch.Tensor:
    """Top-k bidirectional contrastive loss: with S_ij = cos(x_i, y_j) / tau and, per row, only the k hardest
    negatives (largest off-diagonal S), L = (L_xy + L_yx) / 2 where
    L_xy = -1/N sum_i log( exp(S_ii) / (exp(S_ii) + sum_{j in topk_{j != i} S_ij} exp(S_ij)) ) and L_yx the same on
    S^T. x, y (N, d) paired by row. Scalar (0 for N = 1)."""
    n = len(x)
    if n < 2:
        return x.new_zeros(())
    sim = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / temperature
    k = min(k, n - 1)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)

    def one_way(s: torch.Tensor) -> torch.Tensor:
        pos = s.diagonal()
        neg = s.masked_fill(eye, float("-inf")).topk(k, dim=1).values  # (N, k)
        return -(pos - torch.logsumexp(torch.cat([pos[:, None], neg], dim=1), dim=1)).mean()

    return (one_way(sim) + one_way(sim.T)) / 2


def style_kl_loss(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric KL divergence between the distributions over code channels p = softmax(x^ / tau), q = softmax(y^ / tau)
    of the unit-length codes x^ = x / |x|, y^ = y / |y|: L = 1/N sum_n (KL(p_n || q_n) + KL(q_n || p_n)) / 2,
    KL(p || q) = sum_c p_c log(p_c / q_c). x, y (N, d)."""
    lp = F.log_softmax(F.normalize(x, dim=-1) / temperature, dim=-1)
    lq = F.log_softmax(F.normalize(y, dim=-1) / temperature, dim=-1)
    kl_pq = (lp.exp() * (lp - lq)).sum(-1)
    kl_qp = (lq.exp() * (lq - lp)).sum(-1)
    return ((kl_pq + kl_qp) / 2).mean()


# ------------------------------------------------------------------------------------------- mesh encoder

def farthest_point_sampling(points: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (n,) of points (V, 3) chosen greedily, each the farthest from those chosen before; starts at 0."""
    chosen = torch.zeros(n, dtype=torch.long)
    dist = (points - points[0]).norm(dim=1)
    for i in range(1, n):
        chosen[i] = dist.argmax()
        dist = torch.minimum(dist, (points - points[chosen[i]]).norm(dim=1))
    return chosen


def mesh_graph(faces: torch.Tensor, vertices: torch.Tensor, n_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A coarse graph of a mesh: ``n_points`` farthest-point centres, every vertex in the cluster of its nearest
    centre, two clusters joined where a mesh edge joins their vertices (the full mesh when n_points >= V).

    Args: faces (F, 3) long; vertices (V, 3).
    Returns: cluster (V,) long in [0, n), edges (2, E) long (both directions, no self loops, unique).
    """
    vertices = vertices.detach().float().cpu()
    faces = faces.cpu()
    if n_points >= len(vertices):
        cluster = torch.arange(len(vertices))
    else:
        centres = farthest_point_sampling(vertices, n_points)
        cluster = torch.cdist(vertices, vertices[centres]).argmin(dim=1)
    pairs = cluster[faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)]
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    edges = torch.unique(torch.cat([pairs, pairs.flip(1)]), dim=0).T
    return cluster, edges.contiguous()


class GraphAttentionLayer(nn.Module):
    """A graph attention layer (GAT, Velickovic et al. 2018) with H heads: for node i and neighbours j (self included),
    a_ij = softmax_j LeakyReLU(u . W h_i + v . W h_j), h'_i = concat over heads of sum_j a_ij W h_j.
    x (B, N, F_in), edges (2, E) rows (source j, target i) -> (B, N, H * F_out)."""

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


class MeshEncoder(nn.Module):
    """Template mesh (B, V, 3) -> mesh code g (B, d) by graph attention on the head model's mesh.

    The head model's template is pooled into ``n_points`` clusters (:func:`mesh_graph`); node features are the
    cluster centroid of the subject's template relative to the mesh centroid (decimetres) and its offset from the
    head model's template (centimetres); ``layers`` GAT layers (ELU between), mean and max pooling, a linear map.
    """

    def __init__(self, faces: torch.Tensor, template: torch.Tensor, dim: int, n_points: int = 256, layers: int = 2,
                 heads: int = 4, hidden: int = 16) -> None:
        super().__init__()
        cluster, edges = mesh_graph(faces, template, n_points)
        n = int(cluster.max()) + 1
        loops = torch.arange(n).expand(2, -1)
        self.register_buffer("cluster", cluster, persistent=False)
        self.register_buffer("edges", torch.cat([edges, loops], dim=1), persistent=False)
        self.register_buffer("counts", torch.bincount(cluster, minlength=n).clamp_min(1).float(), persistent=False)
        self.register_buffer("base", self.centroids(template.detach().float().cpu()[None])[0], persistent=False)
        self.layers = nn.ModuleList(GraphAttentionLayer(6 if i == 0 else heads * hidden, hidden, heads)
                                    for i in range(layers))
        self.out = nn.Linear(2 * heads * hidden, dim)

    def centroids(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) -> cluster centroids (B, N, 3)."""
        sums = vertices.new_zeros(vertices.shape[0], len(self.counts), 3).index_add(1, self.cluster, vertices)
        return sums / self.counts.to(vertices)[:, None]

    def forward(self, template: torch.Tensor) -> torch.Tensor:
        c = self.centroids(template)
        x = torch.cat([(c - c.mean(dim=1, keepdim=True)) * 10.0, (c - self.base.to(c)) * 100.0], dim=-1)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.edges)
            if i + 1 < len(self.layers):
                x = F.elu(x)
        return self.out(torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=-1))


# ------------------------------------------------------------------------------------------- style encoders

class IdentityStyleEncoder(nn.Module):
    """Personal style s_p (B, d) = g + Attn(query g, keys/values [e_k, c]): e_k = W onehot(k), the personal style of
    training subject k; c a common learnt style; g the mesh code (B, d). Subject index -1 (unseen, or hidden in
    training) masks e_k out, leaving the common style."""

    def __init__(self, n_subjects: int, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.n_subjects = n_subjects
        self.personal = nn.Linear(n_subjects, dim, bias=False)
        self.common = nn.Parameter(torch.randn(dim) * 0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, mesh_code: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        known = subject >= 0
        onehot = F.one_hot(subject.clamp_min(0), self.n_subjects).to(mesh_code) * known[:, None].to(mesh_code)
        tokens = torch.stack([self.personal(onehot), self.common.expand_as(mesh_code)], dim=1)  # (B, 2, d)
        ignore = torch.stack([~known, torch.zeros_like(known)], dim=1)
        att, _ = self.attn(mesh_code[:, None], tokens, tokens, key_padding_mask=ignore, need_weights=False)
        return mesh_code + att[:, 0]


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
    """A clip's style: linear -> TCN -> transformer encoder layer -> mean over time. (B, T, F) -> (B, d).
    The motion style encoder (F = M, motion normalised) and the audio style encoder (F = A, 2T audio features)."""

    def __init__(self, in_dim: int, dim: int, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.tcn = TemporalConvNet(dim)
        self.transformer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.tcn(self.proj(x))).mean(dim=1)


class MotionContentEncoder(nn.Module):
    """Per-frame content codes: linear -> Conv1D + InstanceNorm (removes each clip's per-channel offset and scale, the
    style) + GELU -> sinusoidal positional encoding -> transformer encoder layer -> linear. (B, T, M) -> (B, T, d)."""

    def __init__(self, motion_dim: int, dim: int, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Linear(motion_dim, dim)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)
        self.norm = nn.InstanceNorm1d(dim)
        self.transformer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True)
        self.out = nn.Linear(dim, dim)

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm(self.conv(self.proj(motion).transpose(1, 2)))).transpose(1, 2)
        t = x.shape[1]
        x = x + periodic_positional_encoding(t, x.shape[2], t).to(x)  # period = length: the plain encoding
        return self.out(self.transformer(x))


class SubjectClassifier(nn.Module):
    """Which training subject a content code comes from, behind a gradient-reversal layer.
    (..., d) -> logits (..., n_subjects)."""

    def __init__(self, dim: int, n_subjects: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, n_subjects))

    def forward(self, content: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
        return self.net(grad_reverse(content, lam))


class PTalkerStyle(nn.Module):
    """All PTalker encoders of a FlameTalk model (its ``ptalker`` submodule).

    Args: motion_dim M, audio_dim A, dim d, heads, dropout, n_subjects (training subjects, the one-hot size),
    faces (F, 3) and template (V, 3) of the head model (the mesh graph), gat_points / gat_layers (mesh encoder),
    style_frames (piece length for reference clips).
    """

    def __init__(self, motion_dim: int, audio_dim: int, dim: int, heads: int, dropout: float, n_subjects: int,
                 faces: torch.Tensor, template: torch.Tensor, gat_points: int = 256, gat_layers: int = 2,
                 style_frames: int = 50) -> None:
        super().__init__()
        if n_subjects < 1:
            raise ValueError(f"PTalker needs at least one training subject (n_subjects={n_subjects})")
        self.style_frames = style_frames
        self.mesh = MeshEncoder(faces, template, dim, gat_points, gat_layers)
        self.identity = IdentityStyleEncoder(n_subjects, dim, heads)
        self.motion_style = SequenceStyleEncoder(motion_dim, dim, heads, dropout)
        self.motion_content = MotionContentEncoder(motion_dim, dim, heads, dropout)
        self.audio_style = SequenceStyleEncoder(audio_dim, dim, heads, dropout)
        self.classifier = SubjectClassifier(dim, n_subjects)

    def personal_style(self, template: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        """s_p (B, d) of templates (B, V, 3) and subject indices (B,) (-1: unseen)."""
        return self.identity(self.mesh(template), subject)

    def reference_style(self, motion: torch.Tensor) -> torch.Tensor:
        """s_m (1, d) of a normalised reference clip (T, M) of any length: the mean of the motion styles of its
        consecutive pieces of ``style_frames`` frames (a shorter last piece is dropped unless it is the only one)."""
        n = max(len(motion) // self.style_frames, 1)
        size = min(self.style_frames, len(motion))
        pieces = motion[: n * size].reshape(n, size, motion.shape[-1])
        return self.motion_style(pieces).mean(dim=0, keepdim=True)
