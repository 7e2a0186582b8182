"""``gft train-avatar SUBJECT``: train a triangle-bound Gaussian head avatar (GaussianAvatars on one monocular video).

Target. The head Gaussians render head, hair and neck over a black background; the target is the frame with the
pixels outside the person mask set to black, and the torso (person pixels below the lowest projected vertex of the
rendered mesh) is masked out of the loss — it comes from the source frames when compositing (:mod:`.composite`).

Loss: L1 + ``w_ssim`` (1 - SSIM) over the unmasked pixels, plus GaussianAvatars' regularisers on the local
parameters: ``w_position * mean(relu(|xyz| - threshold_position))`` and
``w_scale * mean(relu(exp(log_scale) - threshold_scale))`` (both in triangle-scale units), plus
``w_alpha`` times the L1 between the rendered alpha and the person mask over the same pixels: a dark Gaussian
floating outside the person costs nothing against the black target, but would show over the background plate.
With ``random_background`` every iteration puts target and render over one random colour instead of black (the
target by the person mask, the render by its alpha), so a dark, half-transparent fringe along the outline, which
black hides, costs as much as it shows over the plate.

Optimised: the Gaussians (Adam, the 3DGS learning rates; the position rate is ``position_lr * extent`` metres per
step, converted to triangle units by the mean triangle scale, and decays exponentially to ``position_lr_final``
over the run) and the per-frame head parameters of the training frames (expression, the pose parts the
model has, translation; shape is kept), each group with its own small rate. Test frames keep their tracked
parameters and are never trained on. Adaptive density control (clone / split / prune, opacity reset) and the SH
degree follow a schedule given as fractions of ``iterations`` (:mod:`.schedule`), checked when the config is made and
resolved into absolute iterations, so a resumed run follows the same schedule as an uninterrupted one.

Outputs in SUBJECT/avatar/ (each written atomically; ``meta.json`` last, so its presence marks a finished run):
``checkpoint.pt`` (every ``checkpoint_every`` iterations and at the end; a re-run resumes from it),
``params.npz`` (the optimised per-frame sequence, HeadParams fields, same layout as the SUBJECT's),
``avatar.ply`` (3DGS layout at ``ply_frame``), ``background.png`` (the static background plate),
``test_grid.png`` (test frames: ground truth | composited render | error), ``meta.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import save_npz, save_png
from ..config import config_to_dict, resolve_device, validate
from ..geometry.camera import Camera
from ..headmodel import IBUG68_PARTS, HeadModel, HeadParams, load_head_model
from ..headmodel.base import MOUTH_REGION_NAMES
from ..io.lock import stage_lock
from ..io.meta import StageMeta, package_versions, write_meta
from ..io.subject import Subject
from ..io.training import Checkpoint, RunState, restore, run_training
from ..metrics.image import l1, psnr, silhouette_errors, ssim
from .binding import triangle_frames
from .composite import (
    static_background,
    torso_cuts,
    training_target,
)
from .gaussians import (
    BoundGaussians,
    region_triangles,
    save_ply,
)
from .rasterize import render
from .schedule import Schedule, resolve_schedule
from .strategy import DefaultStrategy

__all__ = ["AvatarConfig", "DensifyOptions", "FrameParams", "TrainData", "fit_avatar", "load_training_data", "main",
           "train_avatar"]

TUNED_POSE = ("rotation", "neck", "jaw", "eyes")
#: At most this many mouth-interior triangles carry Gaussians (:func:`avatar_triangles`).
MOUTH_MAX_TRIANGLES = 4000
#: Initial colours of the mouth-interior Gaussians (they start hidden behind the lips, so the first frame's pixels at
#: their centroids are lip colour): off-white teeth, a dark mouth.
MOUTH_INIT_COLORS = {"teeth_upper": (0.85, 0.82, 0.76), "teeth_lower": (0.85, 0.82, 0.76), "mouth": (0.12, 0.04, 0.04)}


@dataclass
class DensifyOptions:
    """Adaptive density control (``--densify.NAME``): when :class:`~.strategy.DefaultStrategy` densifies, prunes
    and resets opacities (fractions of the run, resolved by :mod:`.schedule`), and its thresholds."""

    start: float = field(default=0.1, metadata={"min": 0, "max": 1, "help": "densification starts at this fraction of "
                                                                            "the run"})
    end: float = field(default=0.5, metadata={"min": 0, "max": 1, "help": "densification ends at this fraction of the "
                                                                          "run"})
    every: int | None = field(default=None, metadata={"min": 0,
        "help": "densification interval in iterations (default: 100, less in a run too short to densify 5 times in its "
                "window; 0 = never)"})
    grad_threshold: float = field(default=2e-4, metadata={"above": 0, "help": "screen-space gradient threshold (NDC "
                                                                              "units)"})
    percent_dense: float = field(default=0.01, metadata={"above": 0, "help": "split above this fraction of the extent, "
                                                                             "else clone"})
    min_opacity: float = field(default=0.005, metadata={"min": 0, "below": 1, "help": "prune below this opacity"})
    max_size: float = field(default=0.1, metadata={"above": 0, "help": "prune above this fraction of the extent"})
    opacity_resets: int = field(default=1, metadata={"min": 0,
        "help": "opacity resets, spaced evenly inside the densification window (0 = none); the last must leave a "
                "fifth of the run to recover"})

    def __post_init__(self) -> None:
        validate(self, "densify.")  # the ranges in the fields' metadata


@dataclass
class AvatarConfig:
    """Options of ``gft train-avatar``."""

    subject: Path = field(metadata={"help": "tracked SUBJECT folder (from gft track)"})
    out: Path | None = field(default=None, metadata={"help": "output folder (default SUBJECT/avatar)"})
    head_model: str | None = field(default=None, metadata={"help": "head-model spec (default: the one tracked with)"})
    iterations: int = field(default=3000, metadata={"min": 1, "help": "total training iterations (a re-run resumes)"})
    resolution: int = field(default=256, metadata={"min": 16, "help": "training image size (frames are resized)"})
    batch_size: int = field(default=1, metadata={"min": 1, "help": "frames per iteration"})
    device: str = field(default="auto", metadata={"help": "torch device: auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    regions: tuple[str, ...] = field(default=("face", "lips", "eyes", "scalp", "neck", *MOUTH_REGION_NAMES),
                                     metadata={"help": "head-model regions whose triangles carry Gaussians (the mouth "
                                                       "regions teeth_upper, teeth_lower, mouth are skipped on a head "
                                                       "model without them)"})
    max_triangles: int = field(default=0, metadata={"min": 0, "help": "bind to at most this many triangles (random subset; 0 = all)"})
    init_scale: float = field(default=0.5, metadata={"above": 0, "help": "initial std relative to the triangle scale"})
    init_opacity: float = field(default=0.1, metadata={"above": 0, "below": 1, "help": "initial opacity"})
    extent: float = field(default=0.25, metadata={"above": 0, "help": "spatial extent of the scene (metres, head-sized)"})
    position_lr: float = field(default=1.6e-4, metadata={"min": 0, "help": "position learning rate (times extent, metres)"})
    position_lr_final: float = field(default=1.6e-6, metadata={"min": 0, "help": "final position learning rate"})
    color_lr: float = field(default=2.5e-3, metadata={"min": 0, "help": "SH DC learning rate (rest: 1/20 of it)"})
    opacity_lr: float = field(default=0.05, metadata={"min": 0, "help": "opacity learning rate"})
    scale_lr: float = field(default=0.017, metadata={"min": 0, "help": "log-scale learning rate"})
    rotation_lr: float = field(default=1e-3, metadata={"min": 0, "help": "rotation learning rate"})
    tune_params: bool = field(default=True, metadata={"help": "fine-tune the training frames' head parameters"})
    expression_lr: float = field(default=1e-3, metadata={"min": 0, "help": "per-frame expression learning rate"})
    pose_lr: float = field(default=1e-5, metadata={"min": 0, "help": "per-frame rotation/neck/jaw/eyes learning rate"})
    translation_lr: float = field(default=1e-6, metadata={"min": 0, "help": "per-frame translation learning rate"})
    w_ssim: float = field(default=0.2, metadata={"min": 0, "max": 1, "help": "weight of 1 - SSIM"})
    w_alpha: float = field(default=0.1, metadata={"min": 0, 
        "help": "weight of the L1 between the rendered alpha and the person mask (keeps dark Gaussians, invisible over "
                "the black training background, off the composited background)"})
    random_background: bool = field(default=False, metadata={
        "help": "train over a random background colour per iteration instead of black (needs the person masks)"})
    w_position: float = field(default=0.01, metadata={"min": 0, "help": "local position regulariser weight"})
    threshold_position: float = field(default=1.0, metadata={"min": 0, "help": "local |xyz| allowed without penalty"})
    w_scale: float = field(default=1.0, metadata={"min": 0, "help": "local scale regulariser weight"})
    threshold_scale: float = field(default=0.6, metadata={"min": 0, "help": "local scale allowed without penalty"})
    sh_degree: int = field(default=3, metadata={"min": 0, "max": 3, "help": "highest SH degree (0..3)"})
    sh_ramp: float = field(default=0.3, metadata={"min": 0, "max": 1, 
        "help": "fraction of the run over which the SH degree rises evenly from 0 to --sh-degree"})
    densify: DensifyOptions = field(default_factory=DensifyOptions, metadata={
        "help": "adaptive density control (3DGS clone / split / prune and opacity resets, the DefaultStrategy): "
                "--densify.NAME"})
    checkpoint_every: int = field(default=500, metadata={"min": 1, "help": "checkpoint interval (iterations)"})
    ply_frame: int = field(default=0, metadata={"min": 0, "help": "frame whose pose the PLY export takes"})
    grid_frames: int = field(default=4, metadata={"min": 1, "help": "test frames in the PNG grid"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        validate(self)
        self.device = resolve_device(self.device)
        self.schedule()  # a schedule that cannot work fails here, before any data is read

    def schedule(self) -> Schedule:
        """The run's schedule in absolute iterations (:mod:`.schedule`)."""
        d = self.densify
        return resolve_schedule(self.iterations, d.start, d.end, d.every, d.opacity_resets, self.sh_degree,
                                self.sh_ramp)


@dataclass
class TrainData:
    """Everything the training loop reads, in memory.

    Attributes:
        targets: (T, H, W, 3) uint8 training targets (frames over the black background).
        weights: (T, H, W, 1) loss weights: uint8 (255 = 1; 0 on the torso, the :func:`.composite.torso_keep` ramp
            above it) or bool.
        params: tracked HeadParams of the T frames.
        camera: the camera at (W, H).
        train_idx, test_idx: frame indices (the test frames are never trained on).
        masks: (T, H, W, 1) uint8 person masks (255 = person), the silhouette the rendered alpha should match where
            the weight is on; None = no silhouette loss.
    """

    targets: torch.Tensor
    weights: torch.Tensor
    params: HeadParams
    camera: Camera
    train_idx: np.ndarray
    test_idx: np.ndarray
    masks: torch.Tensor | None = None

    def batch(self, idx: torch.Tensor, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, 3) float targets and (B, H, W, 1) float weights of frames ``idx``."""
        t = self.targets[idx].to(device).float() / 255.0
        w = self.weights[idx].to(device).float()
        return t, w / 255.0 if self.weights.dtype == torch.uint8 else w

    def silhouette(self, idx: torch.Tensor, device: torch.device | str) -> torch.Tensor | None:
        """(B, H, W, 1) float person masks in [0, 1] of frames ``idx`` (None without masks)."""
        return None if self.masks is None else self.masks[idx].to(device).float() / 255.0


class FrameParams(nn.Module):
    """Per-frame head parameters: the tuned parts as parameters (one row per frame), the rest fixed."""

    def __init__(self, params: HeadParams, tuned: tuple[str, ...]) -> None:
        super().__init__()
        self.tuned = tuned
        for name in HeadParams.NAMES:
            value = getattr(params, name).detach().clone()
            if name in tuned:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def gather(self, idx: torch.Tensor | np.ndarray) -> HeadParams:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.shape.device)
        return HeadParams(**{n: getattr(self, n)[idx] for n in HeadParams.NAMES})

    def all(self) -> HeadParams:
        return HeadParams(**{n: getattr(self, n).detach() for n in HeadParams.NAMES})


def avatar_triangles(model: HeadModel, names: tuple[str, ...]) -> torch.Tensor:
    """Triangles carrying Gaussians: those in the regions ``names`` (:func:`.gaussians.region_triangles`); a mouth
    region the head model lacks is skipped, any other unknown region is an error. The mouth interior, mostly hidden
    and finely meshed (ICT: 18,668 triangles of teeth, gums, tongue and socket), keeps every k-th of its own triangles,
    at most ``MOUTH_MAX_TRIANGLES`` (densification fills in where the pictures need more)."""
    have = model.regions
    names = tuple(n for n in names if n in have or n not in MOUTH_REGION_NAMES)
    mouth = tuple(n for n in names if n in MOUTH_REGION_NAMES)
    rest = tuple(n for n in names if n not in MOUTH_REGION_NAMES)
    if not mouth or not rest:
        return region_triangles(model.faces, have, names)
    outer = region_triangles(model.faces, have, rest)
    inner = region_triangles(model.faces, have, mouth)
    inner = inner[~torch.isin(inner, outer)]
    stride = max(1, math.ceil(inner.numel() / MOUTH_MAX_TRIANGLES))
    return torch.cat([outer, inner[::stride]]).sort().values


def tuned_parts(model: HeadModel) -> tuple[str, ...]:
    """Head parameters fine-tuned per frame: expression, the pose parts the model has, translation."""
    return ("expression", *[p for p in TUNED_POSE if p in model.pose_parts], "translation")


# ----------------------------------------------------------------------------------------------------------------
# Data


def scaled_camera(camera: Camera, size: int) -> Camera:
    """The camera resized to ``size`` x ``size`` (intrinsics scaled; a square image is assumed)."""
    if camera.width != camera.height:
        raise ValueError(f"avatar training needs square frames, got {camera.width}x{camera.height}")
    return camera.resized(size, size)


MOUTH_LANDMARKS = (*IBUG68_PARTS["lips_outer"], *IBUG68_PARTS["lips_inner"])


def mouth_box(xy: torch.Tensor, width: int, height: int, pad: float = 0.25) -> torch.Tensor:
    """Boxes around the mouth: the lip landmarks' bounding box widened by ``pad`` of its size on every side (lips,
    teeth and mouth interior), clipped to the image.

    Args:
        xy: (..., 20, 2) projected iBUG lip landmarks (:data:`MOUTH_LANDMARKS`) in pixels.
    Returns:
        (..., 4) int64 ``x0, y0, x1, y1`` (end exclusive; empty when x1 <= x0 or y1 <= y0).
    """
    lo, hi = xy.min(dim=-2).values, xy.max(dim=-2).values
    margin = pad * (hi - lo)
    x0y0 = (lo - margin).floor().clamp_min(0).long()
    x1y1 = (hi + margin).ceil().long()
    x1y1 = torch.minimum(x1y1, torch.tensor([width, height], device=xy.device))
    return torch.cat([x0y0, x1y1], dim=-1)


@torch.no_grad()
def posed_vertices(model: HeadModel, params: HeadParams, chunk: int = 64) -> torch.Tensor:
    """(T, V, 3) meshes of all frames, evaluated in chunks."""
    return torch.cat([model.forward_params(params[i:i + chunk]) for i in range(0, params.batch, chunk)])


def check_tracked_with(model: HeadModel, subject: Subject, params: HeadParams) -> None:
    """Raise a ValueError naming the SUBJECT files when ``model`` is not the head model the subject was tracked with."""
    hm = subject.meta.get("head_model", {})
    if hm.get("kind") and hm["kind"] != model.kind:
        raise ValueError(f"{subject.root / 'meta.json'}: tracked with a {hm['kind']!r} head model, got {model.kind!r}")
    for name, dim in (("shape", model.n_shape), ("expression", model.n_expression)):
        if getattr(params, name).shape[1] != dim:
            raise ValueError(
                f"{subject.root / 'params.npz'}: '{name}' has {getattr(params, name).shape[1]} components but the "
                f"head model has {dim}: not the head model this subject was tracked with"
            )


def load_training_data(subject: Subject, model: HeadModel, triangles: torch.Tensor, size: int) -> TrainData:
    """Read every frame and mask of a SUBJECT (failing early on a missing one), resize to ``size`` and build the
    training targets and loss masks (:func:`.composite.training_target`)."""
    import cv2

    params = subject.params()
    camera = scaled_camera(subject.camera(), size)
    used = torch.unique(model.faces[triangles])
    verts = posed_vertices(model, params)
    cuts = torso_cuts(verts[:, used], camera, model.landmarks(verts))
    del verts
    black = np.zeros(3, dtype=np.float32)
    targets, weights, masks = [], [], []
    for i in range(subject.n_frames):
        frame = cv2.resize(subject.frame(i), (size, size), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(subject.mask(i), (size, size), interpolation=cv2.INTER_AREA)
        t, w = training_target(frame, mask, cuts[i], black)
        targets.append(torch.from_numpy((t * 255.0).round().astype(np.uint8)))
        weights.append(torch.from_numpy((w * 255.0).round().astype(np.uint8))[..., None])
        masks.append(torch.from_numpy((mask * 255.0).round().astype(np.uint8))[..., None])
    train_idx, test_idx = subject.split()
    return TrainData(torch.stack(targets), torch.stack(weights), params, camera, train_idx, test_idx,
                     torch.stack(masks))


# ----------------------------------------------------------------------------------------------------------------
# Training


@torch.no_grad()
def _init_colors(data: TrainData, model: HeadModel, triangles: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(T, 3) colours of the first training frame's target at the projected triangle centroids."""
    i = int(data.train_idx[0])
    verts = posed_vertices(model, data.params[i:i + 1].to(device))
    centroids = triangle_frames(verts, model.faces[triangles]).origin[0]
    uv = data.camera.to(device).project(centroids).round().long().cpu()
    h, w = data.targets.shape[1:3]
    uv[:, 0].clamp_(0, w - 1)
    uv[:, 1].clamp_(0, h - 1)
    colors = (data.targets[i, uv[:, 1], uv[:, 0]].float() / 255.0).to(device)
    regions = model.regions
    for name, rgb in MOUTH_INIT_COLORS.items():
        if name in regions:
            inside = torch.zeros(model.n_vertices, dtype=torch.bool, device=device)
            inside[regions[name].to(device)] = True
            on = inside[model.faces[triangles].to(device)].all(dim=1)
            colors[on] = torch.tensor(rgb, dtype=colors.dtype, device=device)
    return colors


def _optimizer(gaussians: BoundGaussians, frames: FrameParams, cfg: AvatarConfig, k_mean: float) -> torch.optim.Adam:
    groups = [
        {"params": [gaussians.xyz], "lr": _position_lr(cfg, 0, k_mean), "name": "xyz"},
        {"params": [gaussians.rotation], "lr": cfg.rotation_lr, "name": "rotation"},
        {"params": [gaussians.log_scale], "lr": cfg.scale_lr, "name": "log_scale"},
        {"params": [gaussians.opacity], "lr": cfg.opacity_lr, "name": "opacity"},
        {"params": [gaussians.sh_dc], "lr": cfg.color_lr, "name": "sh_dc"},
        {"params": [gaussians.sh_rest], "lr": cfg.color_lr / 20.0, "name": "sh_rest"},
    ]
    if cfg.tune_params:
        rates = {"expression": cfg.expression_lr, "translation": cfg.translation_lr}
        for name in frames.tuned:
            groups.append({"params": [getattr(frames, name)], "lr": rates.get(name, cfg.pose_lr), "name": f"frame_{name}"})
    return torch.optim.Adam(groups, lr=0.0, eps=1e-15)


def _position_lr(cfg: AvatarConfig, it: int, k_mean: float) -> float:
    """Position rate in triangle-scale units, decayed exponentially over the whole run (as 3DGS does)."""
    t = min(it / max(cfg.iterations, 1), 1.0)
    lr = math.exp((1 - t) * math.log(cfg.position_lr) + t * math.log(cfg.position_lr_final))
    return lr * cfg.extent / k_mean


def render_frames(
    gaussians: BoundGaussians, model: HeadModel, params: HeadParams, camera: Camera, sh_degree: int
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Render B frames over black: image (B, H, W, 3), alpha (B, H, W, 1), RenderInfo."""
    return render_vertices(gaussians, model.forward_params(params), model.faces, camera, sh_degree)


def render_vertices(
    gaussians: BoundGaussians, verts: torch.Tensor, faces: torch.Tensor, camera: Camera, sh_degree: int,
    appearance: tuple[torch.Tensor, torch.Tensor] | None = None, check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Render posed meshes (B, V, 3) over black: image (B, H, W, 3), alpha (B, H, W, 1), RenderInfo.

    ``appearance``: ``gaussians.appearance()`` computed once by a caller that renders many frames without gradients;
    ``check_finite``: as :func:`~.rasterize.render`'s (False for a caller that checked the avatar and meshes itself).
    """
    means, quats, scales = gaussians.pose(verts, faces)
    opac, sh = appearance if appearance is not None else gaussians.appearance()
    bg = torch.zeros(3, dtype=means.dtype, device=means.device)
    return render(means, quats, scales, opac, sh, [camera] * verts.shape[0], bg, sh_degree, check_finite=check_finite)


def regularisers(gaussians: BoundGaussians, cfg: AvatarConfig) -> torch.Tensor:
    """GaussianAvatars' position and scale penalties on the local parameters (a scalar)."""
    pos = torch.relu(gaussians.xyz.norm(dim=-1) - cfg.threshold_position).mean()
    scl = torch.relu(torch.exp(gaussians.log_scale) - cfg.threshold_scale).mean()
    return cfg.w_position * pos + cfg.w_scale * scl


@torch.no_grad()
def evaluate_avatar(
    gaussians: BoundGaussians, model: HeadModel, data: TrainData, idx: np.ndarray, sh_degree: int, device: str
) -> dict[str, float]:
    """Mean PSNR / SSIM / L1 over frames ``idx`` (tracked parameters, unmasked pixels only), and ``mouth_psnr``: the
    PSNR inside :func:`mouth_box` of the posed mesh (lips, teeth and mouth interior: the region a talking avatar is
    judged by). With person masks, ``edge_alpha`` and ``outside_alpha``: :func:`~..metrics.image.silhouette_errors`
    of the rendered alpha against the mask (in a band of 1 % of the image size along the outline; beyond it)."""
    out = {"psnr": [], "ssim": [], "l1": [], "mouth_psnr": [], "edge_alpha": [], "outside_alpha": []}
    radius = max(1, round(0.01 * data.camera.width))
    camera = data.camera.to(device)
    for i in idx:
        verts = model.forward_params(data.params[int(i):int(i) + 1].to(device))
        img, alpha, _ = render_vertices(gaussians, verts, model.faces, camera, sh_degree)
        t, w = data.batch(torch.tensor([int(i)]), device)
        mask = data.silhouette(torch.tensor([int(i)]), device)
        if mask is not None:
            sil = silhouette_errors(alpha, mask, w, radius)
            out["edge_alpha"].append(sil["edge"])
            out["outside_alpha"].append(sil["outside"])
        out["psnr"].append(psnr(img, t, w))
        out["ssim"].append(ssim(img, t, w).item())
        out["l1"].append(l1(img, t, w).item())
        x0, y0, x1, y1 = mouth_box(camera.project(model.landmarks(verts)[0, list(MOUTH_LANDMARKS)]), camera.width,
                                   camera.height).tolist()
        if x1 > x0 and y1 > y0:
            box = (slice(None), slice(y0, y1), slice(x0, x1))
            out["mouth_psnr"].append(psnr(img[box], t[box], w[box]))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in out.items()}


@dataclass
class AvatarFit:
    """What :func:`fit_avatar` returns."""

    gaussians: BoundGaussians
    params: HeadParams  # all frames: optimised training rows, tracked test rows
    sh_degree: int
    test: dict[str, float]
    history: list[dict]
    iterations_run: int
    train_seconds: float
    resumed_from: int | None


def fit_avatar(data: TrainData, model: HeadModel, cfg: AvatarConfig, out_dir: Path) -> AvatarFit:
    """The training loop: initialise (or resume from ``out_dir/checkpoint.pt``), train to ``cfg.iterations``,
    checkpoint every ``cfg.checkpoint_every`` iterations and at the end (:mod:`gaussian_flametalk.io.training`), and
    evaluate on the test frames.

    Args:
        data: frames, masks, tracked parameters, camera and split (:func:`load_training_data` or built in memory).
        model: the head model (on ``cfg.device``).
        cfg: options; out_dir: where the checkpoint lives (created).
    """
    device = torch.device(cfg.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device)
    faces = model.faces
    camera = data.camera.to(device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    ref_verts = posed_vertices(model, data.params[data.train_idx].to(device))
    face_scale = triangle_frames(ref_verts.mean(dim=0, keepdim=True), faces).scale[0]
    triangles = avatar_triangles(model, cfg.regions)
    if triangles.numel() == 0:
        raise ValueError(f"no triangle lies in the regions {cfg.regions}")
    if 0 < cfg.max_triangles < triangles.numel():
        triangles = triangles[torch.randperm(triangles.numel(), generator=gen)[: cfg.max_triangles].sort().values.to(device)]
    k_mean = float(face_scale[triangles].mean())

    frames = FrameParams(data.params.to(device), tuned_parts(model) if cfg.tune_params else ())
    ckpt = Checkpoint(out_dir / "checkpoint.pt", {"n_vertices": model.n_vertices, "n_faces": model.n_faces})
    state = ckpt.read(device)
    if state is not None:
        gaussians = BoundGaussians.from_tensors(state["gaussians"], model.n_faces).to(device)
    else:
        colors = _init_colors(data, model, triangles, device)
        gaussians = BoundGaussians.init(triangles, model.n_faces, colors, cfg.init_scale, cfg.init_opacity).to(device)
    optimizer = _optimizer(gaussians, frames, cfg, k_mean)
    schedule = cfg.schedule()
    d = cfg.densify
    strategy = DefaultStrategy(schedule, face_scale, d.grad_threshold, d.percent_dense * cfg.extent, d.min_opacity,
                               d.max_size * cfg.extent)
    stats = strategy.initialize_state(gaussians)
    run = restore(state, {"frames": frames, "optimizer": optimizer, "stats": stats}, gen) if state else RunState()
    train_idx = torch.as_tensor(data.train_idx, dtype=torch.long)

    def step(it: int) -> dict | None:
        for group in optimizer.param_groups:
            if group["name"] == "xyz":
                group["lr"] = _position_lr(cfg, it, k_mean)
        sel = train_idx[torch.randint(len(train_idx), (cfg.batch_size,), generator=gen)]
        target, weight = data.batch(sel, device)
        image, alpha, info = render_frames(gaussians, model, frames.gather(sel), camera, schedule.sh_degree(it))
        silhouette = data.silhouette(sel, device)
        if cfg.random_background and silhouette is not None:
            bg = torch.rand(3, generator=gen).to(device)
            target = target + (1 - silhouette) * bg
            image = image + (1 - alpha) * bg
        photo = (1 - cfg.w_ssim) * l1(image, target, weight) + cfg.w_ssim * (1 - ssim(image, target, weight))
        loss = photo + regularisers(gaussians, cfg)
        if silhouette is not None and cfg.w_alpha > 0:
            loss = loss + cfg.w_alpha * l1(alpha, silhouette, weight)
        optimizer.zero_grad(set_to_none=True)
        strategy.step_pre_backward(info)
        loss.backward()
        strategy.step_post_backward(stats, info, it, camera.width, camera.height)
        optimizer.step()
        strategy.step_post_update(gaussians, optimizer, stats, it, gen)
        done = it + 1
        if done % 10 and done != cfg.iterations:
            return None
        return {"loss": float(loss.item()), "psnr": psnr(image, target, weight), "n": len(gaussians),
                "sh": schedule.sh_degree(it)}

    resumed_from = run.resumed_from
    start = run.iteration
    run = run_training(
        ckpt, run, cfg.iterations, step,
        lambda: {"gaussians": gaussians.tensors(), "frames": frames, "optimizer": optimizer, "stats": stats}, gen,
        checkpoint_every=cfg.checkpoint_every, extra=lambda it: {"sh_degree": schedule.sh_degree(max(it, 1) - 1),
                                                                 "config": config_to_dict(cfg)},
        desc="train-avatar", progress=cfg.progress)
    deg = schedule.sh_degree(max(cfg.iterations, start, 1) - 1)
    test = evaluate_avatar(gaussians, model, data, data.test_idx, deg, str(device))
    return AvatarFit(gaussians, frames.all(), deg, test, run.history, max(cfg.iterations - start, 0),
                     run.train_seconds, resumed_from)


# ----------------------------------------------------------------------------------------------------------------
# The stage


def open_subject(cfg: AvatarConfig) -> tuple[Subject, HeadModel, HeadParams]:
    """The SUBJECT, its head model (checked against the tracking) and tracked parameters; clear errors on bad input."""
    subject = Subject.open(cfg.subject)
    for name in ("params.npz", "camera.json"):
        if not (subject.root / name).is_file():
            raise FileNotFoundError(f"{subject.root / name}: missing from the SUBJECT folder")
    params = subject.params()
    if params.batch != subject.n_frames:
        raise ValueError(f"{subject.root / 'params.npz'}: {params.batch} frames, meta.json says {subject.n_frames}")
    hm = subject.meta["head_model"]
    spec = cfg.head_model or hm["spec"]
    model = load_head_model(spec, n_shape=hm["n_shape"], n_expression=hm["n_expression"])
    check_tracked_with(model, subject, params)
    return subject, model, params


def save_grid(path: Path, rows: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """PNG grid, one row per frame: ground truth | render | error (|difference| x4), uint8 (H, W, 3) inputs."""
    import cv2

    lines = []
    for gt, rendered in rows:
        err = np.clip(np.abs(gt.astype(np.int16) - rendered.astype(np.int16)).mean(axis=-1) * 4, 0, 255).astype(np.uint8)
        lines.append(np.concatenate([gt, rendered, cv2.applyColorMap(err, cv2.COLORMAP_INFERNO)[..., ::-1]], axis=1))
    save_png(path, np.concatenate(lines, axis=0))


def train_avatar(cfg: AvatarConfig) -> dict:
    """Run the stage on ``cfg.subject``; returns the meta.json dict (see the module docstring for the outputs)."""
    t_start = time.perf_counter()
    subject, model, _params = open_subject(cfg)
    out = Path(cfg.out) if cfg.out is not None else subject.root / "avatar"
    with stage_lock(out, "train-avatar"):  # one writer at a time
        return _train_avatar(cfg, subject, model, out, t_start)


def _train_avatar(cfg: AvatarConfig, subject: Subject, model: HeadModel, out: Path, t_start: float) -> dict:
    import cv2

    from .sequence import AvatarRenderer

    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # unfinished until rewritten
    model = model.to(cfg.device)
    triangles = avatar_triangles(model, cfg.regions).cpu()
    t0 = time.perf_counter()
    data = load_training_data(subject, model.cpu(), triangles, cfg.resolution)
    static = static_background(subject.n_frames, subject.frame, subject.mask)
    save_png(out / "background.png", static)
    t_load = time.perf_counter() - t0

    result = fit_avatar(data, model, cfg, out)
    device = torch.device(cfg.device)
    model = model.to(device)
    final = result.params
    save_npz(out / "params.npz", **final.to_numpy())
    frame = min(max(cfg.ply_frame, 0), subject.n_frames - 1)
    with torch.no_grad():
        verts = model.forward_params(final[frame:frame + 1].to(device))[0]
    save_ply(out / "avatar.ply", result.gaussians, verts, model.faces, frame)

    renderer = AvatarRenderer(subject, result.gaussians, model, static, result.sh_degree, cfg.resolution, device)
    pick = data.test_idx[np.unique(np.linspace(0, len(data.test_idx) - 1, max(cfg.grid_frames, 1)).round().astype(int))]
    rows = []
    for i in pick:
        rendered = renderer.frame(data.params[int(i):int(i) + 1].to(device), int(i))
        gt = cv2.resize(subject.frame(int(i)), (cfg.resolution, cfg.resolution), interpolation=cv2.INTER_AREA)
        rows.append((gt, rendered))
    save_grid(out / "test_grid.png", rows)

    ips = result.iterations_run / result.train_seconds if result.train_seconds > 0 and result.iterations_run else None
    return write_meta(out / "meta.json", StageMeta(
        stage="train-avatar", config=config_to_dict(cfg), versions=package_versions("gsplat"),
        inputs={"subject": str(subject.root.resolve()), "head_model": subject.meta["head_model"],
                "n_vertices": model.n_vertices, "n_faces": model.n_faces, "n_frames": subject.n_frames,
                "train_frames": len(data.train_idx), "test_frames": len(data.test_idx)},
        outputs=["checkpoint.pt", "params.npz", "avatar.ply", "background.png", "test_grid.png"],
        timings={"load_s": t_load, "train_s": result.train_seconds, "total_s": time.perf_counter() - t_start,
                 "iterations_per_s": ips, "device": str(device)},
        figures={"test_psnr": result.test["psnr"], "test_ssim": result.test["ssim"], "test_l1": result.test["l1"],
                 "test_mouth_psnr": result.test["mouth_psnr"], "test_edge_alpha": result.test["edge_alpha"],
                 "test_outside_alpha": result.test["outside_alpha"],
                 "n_gaussians": len(result.gaussians), "sh_degree": result.sh_degree,
                 "final_train_loss": result.history[-1]["loss"] if result.history else None},
        extra={"resumed_from": result.resumed_from, "schedule": asdict(cfg.schedule())}))


def main(cfg: AvatarConfig) -> int:
    meta = train_avatar(cfg)
    f = meta["figures"]
    print(f"test PSNR {f['test_psnr']:.2f} dB, SSIM {f['test_ssim']:.4f}, {f['n_gaussians']} Gaussians, "
          f"{meta['timings']['train_s']:.0f} s training; wrote {Path(cfg.out or Path(cfg.subject) / 'avatar')}")
    return 0
