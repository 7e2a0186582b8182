"""Fitting a head model to per-frame 2D landmarks of a monocular clip, batched over all frames.

Camera: fixed for the clip, at ``(0, 0, camera_distance)`` in the head model's world looking down -z (world
y up is image up), so a zero-rotation head faces it; intrinsics ``K`` with one focal length ``f`` and the
principal point at the image centre (the crop is square and fixed). The head moves by its per-frame
rotation and translation.

Stages (each a full-batch solve over every frame at once; only the landmark vertices are evaluated):
1. rigid, Levenberg-Marquardt: focal length, shared shape, per-frame rotation and translation, on the
   landmarks expressions barely move (RIGID_LANDMARKS) — with expressions free they would absorb the
   perspective cue. Focal length and face depth trade off along a long flat valley that first-order
   methods crawl along (and that any noticeable prior bends): Gauss-Newton steps cross it, so the priors
   can stay very weak;
2. full, Levenberg-Marquardt: shared shape and per-frame rotation, translation, expression, jaw and neck
   on all landmarks, with priors on expression, jaw and neck (focal kept);
3. smooth, L-BFGS from stage 2: the same unknowns with temporal smoothness added — of the rigidly moving
   head and of the non-rigid motion, both measured on 3D landmark positions rather than on parameters (a
   prior on rotation angles would trade rotation against face depth, a deeper face turned less looking
   the same, and shrink every head turn);
4. eyes, L-BFGS from stage 3 (models with blink components): only the eye components (blinks, squint, wide, gaze),
   refitted to the eye landmarks with the lids re-scaled to the model's lid travel (:func:`rescale_eyelids`), with
   the same priors and smoothness; the rest stays as fitted to the detections.
A photometric refinement through the differentiable rasterizer would plug in after that (it takes and returns a
:class:`LandmarkFit`).

Levenberg-Marquardt uses the problem's structure: per-frame unknowns are independent given the shared
ones, so the normal equations are solved with the Schur complement of the per-frame blocks, and the
Jacobian columns come from forward-mode derivatives (one per unknown of a frame, for all frames at once).

Losses are in units of the clip's distance between the eye centres (IOD), so weights do not depend on resolution, and
every term is an average over landmarks (a smoothness weight of 1 trades one IOD of acceleration for one
IOD of landmark residual):
landmark residuals are divided by the median detected IOD in pixels, and a pseudo-Huber penalty
``s^2 (sqrt(1 + r^2 / s^2) - 1)`` with ``s = robust_scale`` bounds the pull of outliers. Each landmark is
weighted by its detection confidence times the model's landmark weight (0 for points the model lacks).
Frames without a detected face have zero landmark weight: smoothness and priors carry them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..geometry.camera import Camera, intrinsics
from ..geometry.rotation import axis_angle_to_matrix
from ..headmodel.base import (IBUG68_PARTS, POSE_DIMS, HeadModel, HeadParams, blink_components, eye_axis,
                              eye_components, eye_openness)

#: iBUG points that expressions barely move (upper contour, nose, eye corners): the rigid stage fits only these.
RIGID_LANDMARKS = (0, 1, 2, 14, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)

#: iBUG points (brows, nose, eyes) that get a per-clip offset in head coordinates with ``--landmark-offsets``: where
#: a detector puts them and where the head model's landmark embedding puts them differ by a constant that the fit
#: otherwise explains with constant expressions (../shared v1 with ICT-FaceKit: cheekPuff, noseSneer and eyeLookUp at
#: 1.0, eyeWide at 0.6-0.8 in every frame, the fitted eye 15 % narrower than the detected one). Not the contour and
#: lips: a talking clip's mean mouth is open, and an offset there would become its closed mouth.
OFFSET_LANDMARKS = tuple(range(IBUG68_PARTS["brow_right"].start, IBUG68_PARTS["eye_left"].stop))

#: :func:`~gaussian_flametalk.headmodel.eye_openness` of a detector's closed eye (mediapipe on ../shared v1: 0.04-0.07
#: at the deepest blink; a head model's lid points meet closer, ICT-FaceKit's at 0.04)
DETECTED_CLOSED_EYE = 0.05


@dataclass
class FitConfig:
    """Options of the landmark fitter (also ``gft track`` options)."""

    focal_init: float | None = field(default=None, metadata={"above": 0, "help": "initial focal length in pixels of the crop (default: 2.0 x crop size)"})
    optimize_focal: bool = field(default=True, metadata={"help": "estimate the focal length (else keep focal_init)"})
    camera_distance: float = field(default=1.0, metadata={"above": 0, "help": "camera z in the head model's world (metres)"})
    rigid_iters: int = field(default=50, metadata={"min": 0, "help": "Levenberg-Marquardt iterations of the rigid stage"})
    full_iters: int = field(default=20, metadata={"min": 0, "help": "Levenberg-Marquardt iterations of the full stage"})
    smooth_iters: int = field(default=100, metadata={"min": 0, "help": "L-BFGS iterations of the smoothing stage"})
    robust_scale: float = field(default=0.05, metadata={"above": 0, "help": "pseudo-Huber scale of landmark residuals, in inter-ocular distances"})
    w_shape: float = field(default=1e-7, metadata={"min": 0, "help": "prior weight on shape coefficients"})
    w_expression: float = field(default=1e-5, metadata={"min": 0, "help": "prior weight on expression coefficients"})
    w_expression_l1: float = field(default=0.0, metadata={"min": 0, "help": "sparsity (L1) prior weight on expression coefficients, per frame: the sum of the blend-shape weights (|x| for unbounded models); prefers few active components to many that cancel (../shared v4 with ICT-FaceKit: 1e-5 halves the summed weights and takes mouthStretch off mouthPucker, but raises the landmark error 2.45 -> 2.55 %% IOD and the lips' depth motion; off)"})
    w_symmetry: float = field(default=0.0, metadata={"min": 0, "help": "prior weight on the squared difference of each left/right pair of expression components (*_L / *_R; gaze components excluded). On the ../shared clips with ICT-FaceKit 1e-4 cuts the mean |L - R| 3-4x at +0.00-0.03 %% IOD landmark error; FlameTalk's test LVE x mean expression fell on v1 / v2 / x1 and rose on v4 (BENCHMARKS.md), so off"})
    w_smooth_expression: float = field(default=0.0, metadata={"min": 0, "help": "smoothing stage: weight of the acceleration of the expression coefficients themselves (changes of the landmark-invisible combination from frame to frame; ../shared v4: 1e-3 cuts the lips' frame-to-frame acceleration by a third at +0.01 %% IOD landmark error, but with --w-symmetry 1e-4 FlameTalk scored worse on v4 and x1 than without it; off)"})
    w_jaw_neck: float = field(default=1e-3, metadata={"min": 0, "help": "prior weight on jaw and neck rotations (radians)"})
    w_focal: float = field(default=1e-6, metadata={"min": 0, "help": "prior weight on log(focal / focal_init)"})
    w_smooth_rigid: float = field(default=0.5, metadata={"min": 0, "help": "weight of the acceleration of the rigidly moving head's 3D landmarks (IODs per frame^2)"})
    w_smooth_motion: float = field(default=0.05, metadata={"min": 0, "help": "weight of the acceleration of the non-rigid 3D landmark motion (IODs per frame^2)"})
    landmark_offsets: bool = field(default=False, metadata={"help": "fit per-clip offsets of the brow, nose and eye landmarks from the model's embedding (on ../shared v1 they take the constant eye and nose components out of the expressions; not yet measured with the eye stage, so off)"})
    w_landmark_offset: float = field(default=1e-4, metadata={"min": 0, "help": "with --landmark-offsets: prior weight on the offsets (IODs)"})
    eyelid_travel: bool = field(default=True, metadata={"help": "re-scale the detected eyelids to the head model's lid travel, relative to the clip's open eyes (models with blink components)"})


@dataclass
class LandmarkFit:
    """Per-frame head parameters and the clip's camera.

    Attributes:
        params: HeadParams over T frames (shape repeated on every frame).
        camera: the fixed Camera (viewmat, K, width, height).
        landmarks2d: (T, 68, 2) fitted landmarks projected to pixels.
        error_px: (T,) mean weighted reprojection error per frame in pixels (NaN where nothing was observed).
        iod_px: median detected inter-ocular distance in pixels.
        losses: final loss of each stage.
    """

    params: HeadParams
    camera: Camera
    landmarks2d: torch.Tensor
    error_px: torch.Tensor
    iod_px: float
    losses: dict[str, float]


def clip_camera(focal: torch.Tensor | float, width: int, height: int, distance: float, dtype=torch.float32, device="cpu") -> Camera:
    """The fixed tracking camera (see module docstring)."""
    cam = Camera.look_at((0.0, 0.0, distance), (0.0, 0.0, 0.0), 1.0, width, height, dtype=dtype, device=device)
    f = float(focal) if not torch.is_tensor(focal) else focal.detach().item()
    cam.K = intrinsics(f, f, width / 2, height / 2, dtype=dtype, device=device)
    return cam


def project(points: torch.Tensor, focal: torch.Tensor, width: int, height: int, distance: float) -> torch.Tensor:
    """Differentiable projection of world points (..., 3) by the tracking camera -> (..., 2) pixels."""
    x, y, z = points.unbind(-1)
    depth = distance - z
    return torch.stack([focal * x / depth + width / 2, -focal * y / depth + height / 2], dim=-1)


def _eye_centre_distance(points68: torch.Tensor) -> torch.Tensor:
    """(..., 68, D) -> (...,) distance between the eye centres (the fitter's internal length unit, "IOD" below)."""
    return (points68[..., 36:42, :].mean(-2) - points68[..., 42:48, :].mean(-2)).norm(dim=-1)


def model_eye_openness(model: HeadModel, dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu") -> tuple[float, float] | None:
    """:func:`eye_openness` of the neutral template's landmarks (front view) with the blink components at 0 and at 1,
    averaged over the eyes; None for a model without blink components (FLAME). ``dtype``/``device``: the model's."""
    blinks = blink_components(model)
    if not blinks:
        return None
    expr = torch.zeros(2, model.n_expression, dtype=dtype, device=device)
    expr[1, blinks] = 1.0
    with torch.no_grad():
        lmk = model.forward_landmarks(shape=torch.zeros(2, model.n_shape, dtype=dtype, device=device), expression=expr)
    opened, closed = eye_openness(lmk[..., :2]).mean(-1).tolist()
    return opened, closed


def rescale_eyelids(points: torch.Tensor, observed: torch.Tensor, model_open: float, model_closed: float,
                    detected_closed: float = DETECTED_CLOSED_EYE) -> torch.Tensor:
    """Detected iBUG points (T, 68, 2) with each eye's lid points moved across the eye's axis so that its openness
    maps the clip's open eye (the median over the ``observed`` (T,) frames) to ``model_open`` and a closed eye
    (``detected_closed``) to ``model_closed``, linearly in between: a detector's and a head model's lid points need not
    open equally far (mediapipe on v1: 0.23 open, 0.05 closed; ICT-FaceKit's template 0.32 and 0.04), and the fit
    then reads a blink as a partial one. The corners and each lid pair's mid-points stay where they were detected."""
    out = points.clone()
    opening = eye_openness(points)  # (T, 2)
    for e, part in enumerate(("eye_right", "eye_left")):
        i = IBUG68_PARTS[part].start
        base = float(opening[observed, e].median()) if observed.any() else model_open
        if base <= detected_closed + 1e-3:
            continue  # no open eye to calibrate against (closed or squinting throughout)
        frac = ((opening[:, e] - detected_closed) / (base - detected_closed)).clamp(0.0, 1.5)
        target = model_closed + frac * (model_open - model_closed)  # (T,)
        c0, width, normal = eye_axis(points, part)
        for up, low in ((i + 1, i + 5), (i + 2, i + 4)):
            du, dl = ((points[:, up] - c0) * normal).sum(-1), ((points[:, low] - c0) * normal).sum(-1)
            mid, gap = 0.5 * (du + dl), du - dl
            sign = torch.where(gap >= 0, 1.0, -1.0).to(gap)
            new_gap = sign * target * width
            out[:, up] = points[:, up] + (mid + 0.5 * new_gap - du)[:, None] * normal
            out[:, low] = points[:, low] + (mid - 0.5 * new_gap - dl)[:, None] * normal
    return out


def symmetric_pairs(model: HeadModel) -> list[tuple[int, int]]:
    """Index pairs (left, right) of the expression components named ``*_L`` / ``*_R`` (ARKit's naming, ICT-FaceKit),
    gaze (``eyeLook*``) excluded: the eyes turn together, so one eye's "in" is the other's "out". Empty for models
    without such names (FLAME)."""
    names = list(model.expression_names)
    return [(i, names.index(n[:-2] + "_R")) for i, n in enumerate(names)
            if n.endswith("_L") and n[:-2] + "_R" in names and not n.startswith("eyeLook")]


def _pseudo_huber(r2: torch.Tensor, s: float) -> torch.Tensor:
    """Quadratic below ``s``, linear above: outliers pull with bounded force, convergence from afar is kept."""
    return s * s * (torch.sqrt(1 + r2 / (s * s)) - 1)


def _accel(x: torch.Tensor) -> torch.Tensor:
    """Squared norm of the second difference over time (dim 0), averaged over frames and over points if x is
    (T, P, D); zero for fewer than 3 frames."""
    if x.shape[0] < 3:
        return x.new_zeros(())
    d2 = x[2:] - 2 * x[1:-1] + x[:-2]
    return d2.square().sum(-1).mean()


FRAME_PARTS = ("rotation", "translation_iod", "expression", "jaw", "neck")


class _Problem:
    """The unknowns of a clip (``values``: name -> tensor) and the loss."""

    def __init__(self, model: HeadModel, target: torch.Tensor, weight: torch.Tensor, width: int, height: int, cfg: FitConfig):
        self.model, self.cfg, self.width, self.height = model, cfg, width, height
        T = target.shape[0]
        dt, dev = target.dtype, target.device
        self.target, self.weight = target, weight
        self.rigid_mask = torch.zeros(68, dtype=torch.bool, device=dev)
        self.rigid_mask[list(RIGID_LANDMARKS)] = True
        self.all_mask = torch.ones(68, dtype=torch.bool, device=dev)
        self.eye_mask = torch.zeros(68, dtype=torch.bool, device=dev)
        self.eye_mask[IBUG68_PARTS["eye_right"].start: IBUG68_PARTS["eye_left"].stop] = True
        self.eye_columns = torch.as_tensor(eye_components(model), dtype=torch.long, device=dev)
        self.pairs = torch.as_tensor(symmetric_pairs(model), dtype=torch.long, device=dev).reshape(-1, 2)
        observed = weight.sum(1) > 0
        iod = _eye_centre_distance(target)[observed]
        self.iod_px = float(iod.median()) if iod.numel() else float(min(width, height)) / 4
        with torch.no_grad():
            template_lmk = model.forward_landmarks(shape=torch.zeros(1, model.n_shape, dtype=dt, device=dev))[0]
        self.iod_model = float(_eye_centre_distance(template_lmk))
        self.focal_init = cfg.focal_init or 2.0 * max(width, height)
        expr0 = 0.0 if model.expression_bounds is None else min(max(0.0, model.expression_bounds[0]), model.expression_bounds[1])
        self.values: dict[str, torch.Tensor] = {
            "shape": torch.zeros(1, model.n_shape, dtype=dt, device=dev),
            "log_focal": torch.tensor(math.log(self.focal_init), dtype=dt, device=dev),
            "expression": torch.full((T, model.n_expression), expr0, dtype=dt, device=dev),
            # translation is solved for in inter-ocular units, so all unknowns have similar scales
            "translation_iod": self._init_translation(template_lmk, observed) / self.iod_model,
            # per-clip offsets of OFFSET_LANDMARKS in head coordinates (IODs), flat: one prior term per coordinate
            "landmark_offset": torch.zeros(1, 3 * len(OFFSET_LANDMARKS), dtype=dt, device=dev),
        }
        self.offset_index = torch.as_tensor(OFFSET_LANDMARKS, device=dev)
        for name in ("rotation", "neck", "jaw"):
            if name in model.pose_parts:
                self.values[name] = torch.zeros(T, POSE_DIMS[name], dtype=dt, device=dev)

    def _init_translation(self, template_lmk: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Place the template so its landmark centroid and size match each frame's detections (gaps interpolated)."""
        f, D = self.focal_init, self.cfg.camera_distance
        centre_px = self.target.mean(1)  # (T, 2)
        iod_px = _eye_centre_distance(self.target).clamp_min(1e-3)
        c3 = template_lmk.mean(0)
        depth = f * self.iod_model / iod_px  # distance of the face from the camera
        t = torch.stack([
            (centre_px[:, 0] - self.width / 2) * depth / f - c3[0],
            -(centre_px[:, 1] - self.height / 2) * depth / f - c3[1],
            D - depth - c3[2],
        ], dim=1)
        if observed.any() and not observed.all():
            frames = np.arange(len(t))
            obs = observed.nonzero()[:, 0].cpu().numpy()
            for k in range(3):
                t[:, k] = torch.as_tensor(np.interp(frames, obs, t[obs, k].cpu().numpy()), dtype=t.dtype, device=t.device)
        return t

    def frame_parts(self, stage: str) -> list[str]:
        parts = ("rotation", "translation_iod") if stage == "rigid" else FRAME_PARTS
        return [p for p in parts if p in self.values]

    @staticmethod
    def raw_expression(v: dict[str, torch.Tensor], columns: torch.Tensor) -> torch.Tensor:
        """(T, E) unclamped expression: ``expression`` with the ``eye_expression`` columns of the eye stage put in."""
        e = v["expression"]
        return e.index_copy(1, columns, v["eye_expression"]) if "eye_expression" in v else e

    def params(self, v: dict[str, torch.Tensor]) -> HeadParams:
        T = v["expression"].shape[0]
        zeros = lambda n: v["expression"].new_zeros(T, n)  # noqa: E731
        b = self.model.expression_bounds
        expression = self.raw_expression(v, self.eye_columns)
        return HeadParams(
            shape=v["shape"].expand(T, -1),
            expression=expression if b is None else expression.clamp(*b),
            rotation=v.get("rotation", zeros(3)), neck=v.get("neck", zeros(3)), jaw=v.get("jaw", zeros(3)),
            eyes=zeros(6), translation=v["translation_iod"] * self.iod_model,
        )

    def landmarks3d(self, params: HeadParams, offset: torch.Tensor, rigid_only: bool = False,
                    local_only: bool = False) -> torch.Tensor:
        """(T, 68, 3) landmarks of ``params`` with the per-clip ``offset`` (1, 3 K) of OFFSET_LANDMARKS (IODs, turned
        with the head); ``rigid_only`` drops expression and jaw (the rigidly moving head), ``local_only`` drops
        rotation, neck and translation (the non-rigid motion in head coordinates)."""
        kw = {k: v for k, v in params.as_kwargs().items() if k in ("shape", "expression", "translation") or k in self.model.pose_parts}
        drop = ("expression", "jaw") if rigid_only else ("rotation", "neck", "translation") if local_only else ()
        for k in drop:
            if k in kw:
                kw[k] = torch.zeros_like(kw[k])
        lmk = self.model.forward_landmarks(**kw)
        if not self.cfg.landmark_offsets:  # the offsets stay zero: nothing to add on this hot path
            return lmk
        shift = offset.reshape(-1, 3) * self.iod_model  # (K, 3)
        shift = torch.einsum("tij,kj->tki", axis_angle_to_matrix(kw["rotation"]), shift) if "rotation" in kw \
            else shift.expand(lmk.shape[0], -1, -1)
        return lmk.index_add(1, self.offset_index, shift)

    def residuals(self, v: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """(T, K, 2) reprojection residuals of the masked landmarks, in inter-ocular distances."""
        pred = project(self.landmarks3d(self.params(v), v["landmark_offset"])[:, mask], v["log_focal"].exp(),
                       self.width, self.height, self.cfg.camera_distance)
        return (pred - self.target[:, mask]) / self.iod_px

    def data_weight(self, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Landmark mask (68,) bool and normalised weights (T, K) of a stage's data term."""
        mask = {"rigid": self.rigid_mask, "eyes": self.eye_mask}.get(stage, self.all_mask)
        w = self.weight[:, mask]
        return mask, w / w.sum().clamp_min(1e-12)

    def priors(self, stage: str) -> list[tuple[str, float, float]]:
        """Quadratic priors ``weight * mean over frames of |value - centre|^2`` as (part, weight, centre)."""
        if stage == "eyes":  # only the eye components move in it
            return [("eye_expression", self.cfg.w_expression, 0.0)]
        out = [("shape", self.cfg.w_shape, 0.0), ("log_focal", self.cfg.w_focal, math.log(self.focal_init))]
        if stage != "rigid":
            out.append(("expression", self.cfg.w_expression, 0.0))
            out.append(("landmark_offset", self.cfg.w_landmark_offset, 0.0))
            out += [(n, self.cfg.w_jaw_neck, 0.0) for n in ("jaw", "neck") if n in self.values]
        return out

    def loss(self, v: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Data + priors, plus temporal smoothness in the "smooth" and "eyes" stages."""
        cfg = self.cfg
        mask, w = self.data_weight(stage)
        loss = (w * _pseudo_huber(self.residuals(v, mask).square().sum(-1), cfg.robust_scale)).sum()
        for name, weight, centre in self.priors(stage):
            x = v[name] - centre
            loss = loss + weight * (x.square().sum() if x.dim() < 2 else x.square().sum(1).mean())
        if stage != "rigid":
            loss = loss + self.expression_priors(self.params(v).expression)
        if stage in ("smooth", "eyes"):
            b = self.model.expression_bounds
            if b is not None:  # keep the raw values near the feasible box so clamping does not stall them
                raw = self.raw_expression(v, self.eye_columns)
                loss = loss + (raw - raw.clamp(*b)).square().sum(1).mean()
            p = self.params(v)
            o = v["landmark_offset"]
            loss = loss + cfg.w_smooth_rigid * _accel(self.landmarks3d(p, o, rigid_only=True) / self.iod_model)
            loss = loss + cfg.w_smooth_motion * _accel(self.landmarks3d(p, o, local_only=True) / self.iod_model)
            if cfg.w_smooth_expression > 0:
                loss = loss + cfg.w_smooth_expression * _accel(p.expression)
        return loss

    def expression_priors(self, expression: torch.Tensor) -> torch.Tensor:
        """The sparsity and left/right priors on (T, E) expression coefficients (means over frames)."""
        cfg, loss = self.cfg, expression.new_zeros(())
        if cfg.w_expression_l1 > 0:
            loss = loss + cfg.w_expression_l1 * expression.abs().sum(1).mean()
        if cfg.w_symmetry > 0 and self.pairs.numel():
            d = expression[:, self.pairs[:, 0]] - expression[:, self.pairs[:, 1]]
            loss = loss + cfg.w_symmetry * d.square().sum(1).mean()
        return loss

    def reprojection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected landmarks (T,68,2) and mean weighted error per frame in pixels (T,)."""
        v = self.values
        with torch.no_grad():
            pred = project(self.landmarks3d(self.params(v), v["landmark_offset"]), v["log_focal"].exp(), self.width,
                           self.height, self.cfg.camera_distance)
            err = (pred - self.target).norm(dim=-1)
            per_frame = (self.weight * err).sum(1) / self.weight.sum(1)
        return pred, per_frame


def _solve_lm(problem: _Problem, stage: str, shared: list[str], iters: int, progress: bool) -> float:
    """Levenberg-Marquardt over the stage's per-frame parts and the ``shared`` parts (see module docstring).

    Robust weights by iteratively reweighted least squares (pseudo-Huber); expression bounds by projection.
    """
    from torch.func import jvp, vmap

    cfg, v0 = problem.cfg, problem.values
    frame = problem.frame_parts(stage)
    sizes_x = [v0[n].shape[1] for n in frame]
    sizes_s = [v0[n].numel() for n in shared]
    T = v0["translation_iod"].shape[0]
    mask, w = problem.data_weight(stage)

    def split(x: torch.Tensor, sh: torch.Tensor) -> dict[str, torch.Tensor]:
        v = dict(v0)
        v.update(zip(frame, x.split(sizes_x, 1)))
        v.update({n: t.reshape(v0[n].shape) for n, t in zip(shared, sh.split(sizes_s))})
        return v

    # box constraints (blend-shape weights in [0, 1]) on the expression columns, as per-column bounds
    lo_x = torch.full((sum(sizes_x),), -math.inf, dtype=w.dtype, device=w.device)
    hi_x = torch.full_like(lo_x, math.inf)
    b = problem.model.expression_bounds
    if b is not None and "expression" in frame:
        i = frame.index("expression")
        lo_x[sum(sizes_x[:i]) : sum(sizes_x[: i + 1])] = b[0]
        hi_x[sum(sizes_x[:i]) : sum(sizes_x[: i + 1])] = b[1]
    bounded = bool(torch.isfinite(lo_x).any())

    # quadratic priors as diagonal Hessians and centres, per frame (scaled by 1/T: they are frame means) and shared
    hx = torch.zeros(sum(sizes_x), dtype=w.dtype, device=w.device)
    cx = torch.zeros_like(hx)
    hs = torch.zeros(sum(sizes_s), dtype=w.dtype, device=w.device)
    cs = torch.zeros_like(hs)
    for name, weight, centre in problem.priors(stage):
        if name in frame:
            i = frame.index(name)
            sl = slice(sum(sizes_x[:i]), sum(sizes_x[: i + 1]))
            hx[sl], cx[sl] = 2 * weight / T, centre
        elif name in shared:
            i = shared.index(name)
            sl = slice(sum(sizes_s[:i]), sum(sizes_s[: i + 1]))
            hs[sl], cs[sl] = 2 * weight, centre

    # the sparsity prior's gradient (the weights' signs; +1 inside a box that starts at 0) and the left/right prior's
    # Hessian, a coupling inside each frame's block, on the expression columns: the loss's own derivatives (the
    # quadratic priors above enter the step with half theirs, hx / 2; the accepted steps decrease the true loss)
    l1_x = torch.zeros_like(hx)
    sym_x = torch.zeros(len(hx), len(hx), dtype=w.dtype, device=w.device)
    if "expression" in frame:
        o = sum(sizes_x[: frame.index("expression")])
        n_e = sizes_x[frame.index("expression")]
        l1_x[o: o + n_e] = cfg.w_expression_l1 / T
        if cfg.w_symmetry > 0:
            for i, j in problem.pairs.tolist():
                for r_, c_, sgn in ((i, i, 1.0), (j, j, 1.0), (i, j, -1.0), (j, i, -1.0)):
                    sym_x[o + r_, o + c_] += sgn * 2 * cfg.w_symmetry / T
    signed_l1 = not (b is not None and b[0] >= 0)  # unbounded (or negative) weights: |x| has the sign's gradient

    x = torch.cat([v0[n] for n in frame], 1).detach()
    sh = torch.cat([v0[n].reshape(-1) for n in shared]).detach() if shared else torch.zeros(0, dtype=w.dtype, device=w.device)
    residual = lambda xx, ss: problem.residuals(split(xx, ss), mask)  # noqa: E731
    with torch.no_grad():
        best = float(problem.loss(split(x, sh), stage))
    lam = 1e-3
    bar = tqdm(total=iters, desc=f"fit {stage}", unit="it", disable=not progress, leave=False)
    for _ in range(iters):
        with torch.no_grad():
            r = residual(x, sh)  # (T, K, 2)
        # one tangent per unknown of a frame, set in every frame at once (frames are independent), all tangents
        # evaluated in one batched forward-mode pass
        eye_x = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)[:, None, :].expand(-1, T, -1)
        jx = vmap(lambda t: jvp(lambda a: residual(a, sh), (x,), (t,))[1])(eye_x)  # (n_x, T, K, 2)
        jx = jx.permute(1, 2, 3, 0).flatten(1, 2)  # (T, 2K, n_x)
        if sh.numel():
            eye_s = torch.eye(sh.numel(), dtype=x.dtype, device=x.device)
            js = vmap(lambda t: jvp(lambda b: residual(x, b), (sh,), (t,))[1])(eye_s).permute(1, 2, 3, 0).flatten(1, 2)
        else:
            js = jx.new_zeros(T, jx.shape[1], 0)  # (T, 2K, n_s)
        irls = 1.0 / torch.sqrt(1 + r.square().sum(-1) / cfg.robust_scale**2)  # pseudo-Huber psi(r)/r
        wr = (w * irls).repeat_interleave(2, dim=1)[..., None]  # (T, 2K, 1)
        rf = r.flatten(1)[..., None]
        U = jx.transpose(1, 2) @ (wr * jx) + torch.diag(hx / 2)
        W = jx.transpose(1, 2) @ (wr * js)
        V = (js.transpose(1, 2) @ (wr * js)).sum(0) + torch.diag(hs / 2)
        gx = (jx.transpose(1, 2) @ (wr * rf))[..., 0] + hx / 2 * (x - cx)
        gs = (js.transpose(1, 2) @ (wr * rf)).sum(0)[:, 0] + hs / 2 * (sh - cs)
        if cfg.w_expression_l1 > 0:
            gx = gx + (l1_x * torch.where(x < 0, -1.0, 1.0).to(x) if signed_l1 else l1_x)
        if cfg.w_symmetry > 0:
            U = U + sym_x
            gx = gx + x @ sym_x
        if bounded:  # projected Newton: unknowns held at a bound by their gradient are frozen for this step
            active = ((x <= lo_x) & (gx > 0)) | ((x >= hi_x) & (gx < 0))  # (T, n_x)
            keep = (~active).to(x.dtype)
            U = U * keep[:, :, None] * keep[:, None, :] + torch.diag_embed(active.to(x.dtype))
            W = W * keep[:, :, None]
            gx = gx * keep
        improvement = 0.0
        for _attempt in range(12):
            Ui = torch.linalg.inv(U + lam * torch.diag_embed(U.diagonal(dim1=1, dim2=2) + 1e-12))
            UiW = Ui @ W
            schur = V + lam * torch.diag(V.diagonal() + 1e-12) - (W.transpose(1, 2) @ UiW).sum(0)
            rhs = gs - (UiW.transpose(1, 2) @ gx[..., None]).sum(0)[:, 0]
            ds = torch.linalg.solve(schur, rhs) if sh.numel() else rhs
            dx = (Ui @ gx[..., None])[..., 0] - (UiW @ ds[:, None])[..., 0]
            x_new, sh_new = torch.maximum(torch.minimum(x - dx, hi_x), lo_x), sh - ds
            with torch.no_grad():
                c_new = float(problem.loss(split(x_new, sh_new), stage))
            if c_new < best:
                improvement, best = best - c_new, c_new
                x, sh, lam = x_new, sh_new, max(lam / 3, 1e-9)
                break
            lam *= 5
        bar.update(1)
        bar.set_postfix(loss=f"{best:.3e}")
        if improvement <= 1e-9 * best:
            break
    bar.close()
    problem.values = {k: t.detach() for k, t in split(x, sh).items()}
    return best


def _fill_unobserved(problem: _Problem) -> None:
    """Per-frame unknowns of frames without any observed landmark, linearly interpolated from the observed frames
    (nearest at the ends); the data cannot move them, and the smoothing stage starts from there."""
    observed = (problem.weight.sum(1) > 0).cpu().numpy()
    if observed.all() or not observed.any():
        return
    frames = np.arange(len(observed))
    for name in problem.frame_parts("full"):
        v = problem.values[name].cpu().numpy().copy()
        for k in range(v.shape[1]):
            v[~observed, k] = np.interp(frames[~observed], frames[observed], v[observed, k])
        problem.values[name] = torch.as_tensor(v, dtype=problem.values[name].dtype, device=problem.values[name].device)


def _solve_lbfgs(problem: _Problem, stage: str, parts: list[str], iters: int, progress: bool) -> float:
    """L-BFGS (strong Wolfe line search) over ``parts``, all frames at once."""
    v = {k: t.detach().clone().requires_grad_(k in parts) for k, t in problem.values.items()}
    opt = torch.optim.LBFGS([v[k] for k in parts], lr=1.0, max_iter=iters, history_size=30,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-14)
    bar = tqdm(total=iters, desc=f"fit {stage}", unit="it", disable=not progress, leave=False)
    state = {"loss": float("nan")}

    def closure():
        opt.zero_grad()
        loss = problem.loss(v, stage)
        loss.backward()
        state["loss"] = float(loss.detach())
        bar.set_postfix(loss=f"{state['loss']:.3e}")
        return loss

    opt.step(closure)
    bar.update(iters)
    bar.close()
    problem.values = {k: t.detach() for k, t in v.items()}
    return state["loss"]


def fit_landmarks(
    model: HeadModel,
    landmarks: torch.Tensor,
    confidence: torch.Tensor,
    width: int,
    height: int,
    config: FitConfig | None = None,
    progress: bool = True,
) -> LandmarkFit:
    """Fit ``model`` to a clip's 2D landmarks.

    Args:
        model: any head model (its dtype/device are those of ``landmarks``).
        landmarks: (T, 68, 2) detected iBUG landmarks in pixels.
        confidence: (T, 68) per-point weights in [0, 1]; zero rows for frames without a face.
        width, height: image size in pixels.
    Returns:
        LandmarkFit.
    """
    cfg = config or FitConfig()
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be (T, 68, 2), got {tuple(landmarks.shape)}")
    if not torch.isfinite(landmarks[confidence > 0]).all():
        raise ValueError("landmarks contain NaN or inf where confidence > 0")
    weight = confidence * model.landmark_weights.to(confidence)[None]
    if weight.sum() <= 0:
        raise ValueError("no landmark has positive confidence: nothing to fit")
    target = torch.where(confidence[..., None] > 0, landmarks, torch.zeros_like(landmarks))
    problem = _Problem(model, target, weight, width, height, cfg)
    losses = {
        "rigid": _solve_lm(problem, "rigid", ["shape"] + (["log_focal"] if cfg.optimize_focal else []), cfg.rigid_iters, progress),
    }
    _fill_unobserved(problem)
    shared = ["shape"] + (["landmark_offset"] if cfg.landmark_offsets else [])  # else the offsets stay zero
    losses["full"] = _solve_lm(problem, "full", shared, cfg.full_iters, progress)
    _fill_unobserved(problem)
    losses["smooth"] = _solve_lbfgs(problem, "smooth", shared + problem.frame_parts("smooth"), cfg.smooth_iters,
                                    progress)
    lids = model_eye_openness(model, landmarks.dtype, landmarks.device) if cfg.eyelid_travel else None
    if lids is not None and problem.eye_columns.numel():
        # stage 4, the eyes: only the eye components, refitted to the eye landmarks with the lids re-scaled to the
        # model's travel; everything else as fitted to the detections (re-scaling before the whole fit moved the
        # mouth components too: FlameTalk's test LVE on v2 went from 0.91x to 1.08x the mean baseline)
        problem.target = rescale_eyelids(target, weight.sum(1) > 0, *lids)
        problem.values["eye_expression"] = problem.values["expression"][:, problem.eye_columns].clone()
        losses["eyes"] = _solve_lbfgs(problem, "eyes", ["eye_expression"], cfg.smooth_iters, progress)
        problem.values["expression"] = problem.raw_expression(problem.values, problem.eye_columns)
        del problem.values["eye_expression"]
    pred, err = problem.reprojection()
    params = HeadParams(**{k: t.detach().clone() for k, t in problem.params(problem.values).as_kwargs().items()})
    camera = clip_camera(problem.values["log_focal"].exp(), width, height, cfg.camera_distance,
                         dtype=landmarks.dtype, device=landmarks.device)
    return LandmarkFit(params, camera, pred, err, problem.iod_px, losses)
