"""The landmark fitter against ground truth: synthetic head, random shape, smooth random motion, known camera."""

from __future__ import annotations

import torch

from gaussian_flametalk.geometry.rotation import axis_angle_to_matrix
from gaussian_flametalk.headmodel import FlameModel, make_synthetic_head
from gaussian_flametalk.tracking.fit import FitConfig, fit_landmarks, project

D = torch.float64
SIZE, F_TRUE, DIST = 256, 640.0, 1.0


def _smooth(n: int, dim: int, scale: float, seed: int, every: int) -> torch.Tensor:
    """Smooth random curves: random knots every ``every`` frames, smoothstep between them. (n, dim)."""
    g = torch.Generator().manual_seed(seed)
    knots = torch.randn(n // every + 2, dim, generator=g, dtype=D)
    t = torch.linspace(0, len(knots) - 1.001, n, dtype=D)
    i = t.floor().long()
    a = (t - i)[:, None]
    a = a * a * (3 - 2 * a)
    return (knots[i] * (1 - a) + knots[i + 1] * a) * scale


def _sequence(model, n: int, seed: int = 0):
    """Talking-head-like ground truth: head pose changing over ~1 s, expression and jaw at speech rate."""
    g = torch.Generator().manual_seed(seed)
    jaw = torch.zeros(n, 3, dtype=D)
    jaw[:, 0] = _smooth(n, 1, 0.12, seed + 2, every=4)[:, 0].abs() + 0.02
    return dict(
        shape=(torch.randn(1, model.n_shape, generator=g, dtype=D) * 0.7).expand(n, -1),
        expression=_smooth(n, model.n_expression, 0.8, seed + 1, every=5),
        jaw=jaw,
        rotation=_smooth(n, 3, 1.0, seed + 3, every=25) * torch.tensor([0.15, 0.35, 0.08], dtype=D),
        neck=_smooth(n, 3, 0.05, seed + 4, every=25),
        translation=_smooth(n, 3, 0.01, seed + 5, every=25) + torch.tensor([0.0, 0.0, 0.1], dtype=D),
    )


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle of the relative rotation between rotation matrices (..., 3, 3)."""
    rel = a.transpose(-1, -2) @ b
    return torch.rad2deg(torch.acos(((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)))


def test_fit_recovers_ground_truth_from_noisy_landmarks():
    model = make_synthetic_head(dtype=D)
    n = 80
    truth = _sequence(model, n)
    clean = project(model.forward_landmarks(**truth), torch.tensor(F_TRUE, dtype=D), SIZE, SIZE, DIST)
    noisy = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(9), dtype=D)  # 1 px noise
    res = fit_landmarks(model, noisy, torch.ones(n, 68, dtype=D), SIZE, SIZE, FitConfig(camera_distance=DIST), progress=False)
    p = res.params
    rmse = (res.landmarks2d - clean).norm(dim=-1).square().mean().sqrt()
    focal_err = abs(float(res.camera.K[0, 0]) / F_TRUE - 1)
    head = _angle_deg(FlameModel.head_rotation(p.rotation, p.neck), FlameModel.head_rotation(truth["rotation"], truth["neck"]))
    jaw = _angle_deg(axis_angle_to_matrix(p.jaw), axis_angle_to_matrix(truth["jaw"]))
    print(f"\nfit on ground truth ({n} frames, 1 px noise): landmark RMSE {rmse:.2f} px vs clean, "
          f"focal error {100 * focal_err:.1f} %, head rotation error mean {head.mean():.2f} max {head.max():.2f} deg, "
          f"jaw error mean {jaw.mean():.2f} max {jaw.max():.2f} deg")
    assert rmse <= 1.5
    assert focal_err <= 0.05
    assert head.mean() <= 2.0 and head.max() <= 4.0
    assert jaw.mean() <= 2.0
    assert res.error_px.shape == (n,) and torch.isfinite(res.error_px).all()


def test_frames_without_a_face_are_carried_by_their_neighbours():
    model = make_synthetic_head(dtype=D)
    n = 40
    truth = _sequence(model, n, seed=1)
    clean = project(model.forward_landmarks(**truth), torch.tensor(F_TRUE, dtype=D), SIZE, SIZE, DIST)
    conf = torch.ones(n, 68, dtype=D)
    conf[18:23] = 0.0  # five frames with no detection
    noisy = clean.clone()
    noisy[18:23] = 0.0  # whatever a missing detection holds must not matter
    res = fit_landmarks(model, noisy, conf, SIZE, SIZE, FitConfig(focal_init=F_TRUE, optimize_focal=False), progress=False)
    assert torch.isnan(res.error_px[18:23]).all()  # nothing observed there
    gap = (res.landmarks2d[18:23] - clean[18:23]).norm(dim=-1).mean()
    assert gap < 3.0, f"gap frames are {gap:.2f} px off"
    assert (res.landmarks2d[:18] - clean[:18]).norm(dim=-1).mean() < 0.5


def test_bad_inputs_fail_clearly():
    model = make_synthetic_head(dtype=D)
    import pytest

    with pytest.raises(ValueError, match=r"\(T, 68, 2\)"):
        fit_landmarks(model, torch.zeros(3, 51, 2, dtype=D), torch.ones(3, 51, dtype=D), SIZE, SIZE)
    with pytest.raises(ValueError, match="nothing to fit"):
        fit_landmarks(model, torch.zeros(3, 68, 2, dtype=D), torch.zeros(3, 68, dtype=D), SIZE, SIZE)


def test_eyelids_are_rescaled_to_the_model_travel_relative_to_the_open_eye():
    from gaussian_flametalk.headmodel import eye_openness
    from gaussian_flametalk.tracking.fit import DETECTED_CLOSED_EYE, rescale_eyelids

    n = 20
    pts = torch.zeros(n, 68, 2, dtype=D)
    opening = torch.full((n,), 0.23, dtype=D)
    opening[5] = DETECTED_CLOSED_EYE  # a blink
    opening[6] = 0.14  # half way
    for start, x0 in ((36, 100.0), (42, 160.0)):  # eye corners 40 px apart, lids symmetric about the axis
        pts[:, start] = torch.tensor([x0, 120.0], dtype=D)
        pts[:, start + 3] = torch.tensor([x0 + 40, 120.0], dtype=D)
        for up, low, x in ((1, 5, 13.0), (2, 4, 27.0)):
            pts[:, start + up, 0] = pts[:, start + low, 0] = x0 + x
            pts[:, start + up, 1] = 120.0 - 20 * opening
            pts[:, start + low, 1] = 120.0 + 20 * opening
    out = rescale_eyelids(pts, torch.ones(n, dtype=torch.bool), model_open=0.32, model_closed=0.04)
    got = eye_openness(out)
    assert torch.allclose(got[0], torch.tensor([0.32, 0.32], dtype=D), atol=1e-6)  # the clip's open eye: the model's
    assert torch.allclose(got[5], torch.tensor([0.04, 0.04], dtype=D), atol=1e-6)  # a closed eye: the model's closed
    frac = (0.14 - DETECTED_CLOSED_EYE) / (0.23 - DETECTED_CLOSED_EYE)
    assert torch.allclose(got[6], torch.full((2,), 0.04 + frac * 0.28, dtype=D), atol=1e-6)
    corners = [36, 39, 42, 45]
    assert torch.equal(out[:, corners], pts[:, corners])  # corners and everything but the lids stay
    others = [i for i in range(68) if i not in range(36, 48)]
    assert torch.equal(out[:, others], pts[:, others])


def test_landmark_offsets_take_a_constant_embedding_mismatch():
    """Detections whose brows, nose and eyes sit a constant ~3 mm from the model's landmarks (a detector and a
    landmark embedding that disagree): with --landmark-offsets the mesh itself stays nearer the truth."""
    from gaussian_flametalk.tracking.fit import OFFSET_LANDMARKS

    model = make_synthetic_head(dtype=D)
    n = 60
    truth = _sequence(model, n, seed=2)
    planted = torch.zeros(68, 3, dtype=D)
    idx = list(OFFSET_LANDMARKS)
    planted[idx, :2] = torch.randn(len(idx), 2, generator=torch.Generator().manual_seed(4), dtype=D) * 0.003
    rot = axis_angle_to_matrix(truth["rotation"])  # the offsets turn with the head
    seen = project(model.forward_landmarks(**truth) + torch.einsum("tij,kj->tki", rot, planted),
                   torch.tensor(F_TRUE, dtype=D), SIZE, SIZE, DIST)
    clean = project(model.forward_landmarks(**truth), torch.tensor(F_TRUE, dtype=D), SIZE, SIZE, DIST)
    err = {}
    for on in (True, False):
        cfg = FitConfig(focal_init=F_TRUE, optimize_focal=False, camera_distance=DIST, landmark_offsets=on,
                        eyelid_travel=False)
        p = fit_landmarks(model, seen, torch.ones(n, 68, dtype=D), SIZE, SIZE, cfg, progress=False).params
        mesh = project(model.forward_landmarks(**{k: getattr(p, k) for k in ("shape", "expression", "jaw", "neck",
                                                                             "rotation", "translation")}),
                       torch.tensor(F_TRUE, dtype=D), SIZE, SIZE, DIST)
        err[on] = float((mesh - clean).norm(dim=-1).mean())
    print(f"\nmesh landmark error vs the truth: {err[True]:.3f} px with the offsets, {err[False]:.3f} px without")
    assert err[True] < 0.8 * err[False]


def test_the_eye_stage_moves_only_the_eye_components():
    """The eyelid re-scaling refits the eye components alone: every other unknown is the fit without it, to the bit
    (re-scaling the lids before the whole fit also moved the mouth: FlameTalk's LVE on v2 went 0.91x -> 1.08x)."""
    from gaussian_flametalk.headmodel import eye_components

    model = make_synthetic_head(dtype=D)
    n = 40
    truth = _sequence(model, n, seed=3)
    seen = project(model.forward_landmarks(**truth), torch.tensor(F_TRUE, dtype=D), SIZE, SIZE, DIST)
    fits = {on: fit_landmarks(model, seen, torch.ones(n, 68, dtype=D), SIZE, SIZE,
                              FitConfig(focal_init=F_TRUE, optimize_focal=False, camera_distance=DIST,
                                        eyelid_travel=on), progress=False).params for on in (True, False)}
    eyes = eye_components(model)
    others = [i for i in range(model.n_expression) if i not in eyes]
    assert eyes and torch.equal(fits[True].expression[:, others], fits[False].expression[:, others])
    for name in ("rotation", "translation", "jaw", "neck", "shape"):
        assert torch.equal(getattr(fits[True], name), getattr(fits[False], name)), name
    assert not torch.equal(fits[True].expression[:, eyes], fits[False].expression[:, eyes])


def _redundant_blendshape_head():
    """The synthetic head as a blend-shape model (weights in [0, 1], as ICT-FaceKit's) with one component that is the
    sum of two others (``combo`` = smile + mouth_stretch, on every vertex): the landmarks see x_smile + x_combo and
    x_stretch + x_combo, so a fit is free to spread one shape over three components, as a real landmark fit spreads
    a mouth over antagonists (../shared clips: mouthStretch and mouthPucker both at 0.4-0.8)."""
    from gaussian_flametalk.headmodel import FlameModel as _Flame
    from gaussian_flametalk.headmodel.flame_format import SHAPE_BLOCK
    from gaussian_flametalk.headmodel.synthetic import EXPRESSION_NAMES, N_EXPRESSION, N_SHAPE, synthetic_arrays

    arrays, embedding, masks = synthetic_arrays(0)
    e = SHAPE_BLOCK
    arrays["shapedirs"][..., e + 9] = arrays["shapedirs"][..., e + 0] + arrays["shapedirs"][..., e + 7]
    regions = {"face": masks["face"], "lips": masks["lips"], "scalp": masks["scalp"], "neck": masks["neck"],
               "eyes": masks["left_eyeball"]}
    model = _Flame(arrays, embedding, N_SHAPE, N_EXPRESSION, regions, kind="synthetic", source="synthetic", dtype=D)
    model.expression_names = list(EXPRESSION_NAMES[:9]) + ["combo"]
    model.expression_bounds = (0.0, 1.0)
    return model


def test_sparsity_prior_takes_a_redundant_shape_off_its_parts():
    """Truth: the combined shape moves, its two parts stay at 0 (plus other components, some at 0). With the L2 prior
    alone the fit spreads the combined shape over its parts; the L1 prior takes most of that weight off them at no
    cost in landmark error. (It also shrinks the other weights: the parameter error as a whole is not lower here, and
    on the real clips the L1 prior raised the landmark error, so it is an option, off by default.)"""
    model = _redundant_blendshape_head()
    n = 50
    truth = _sequence(model, n, seed=4)
    expr = (_smooth(n, model.n_expression, 0.5, 11, every=5) + 0.1).clamp(0.0, 1.0)
    expr[:, [0, 7]] = 0.0  # the combined shape's parts are off
    expr[:, 9] = 0.2 + 0.5 * _smooth(n, 1, 1.0, 12, every=4)[:, 0].sigmoid()  # the combined shape on, 0.2-0.7
    truth["expression"] = expr
    truth["jaw"] = truth["jaw"] * 0
    clean = project(model.forward_landmarks(**truth), torch.tensor(F_TRUE, dtype=D), SIZE, SIZE, DIST)
    noisy = clean + 0.5 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(5), dtype=D)
    out = {}
    for l1 in (0.0, 1e-5):
        cfg = FitConfig(focal_init=F_TRUE, optimize_focal=False, camera_distance=DIST, eyelid_travel=False,
                        w_expression_l1=l1)
        res = fit_landmarks(model, noisy, torch.ones(n, 68, dtype=D), SIZE, SIZE, cfg, progress=False)
        e = res.params.expression
        out[l1] = dict(
            param=float((e - expr).square().mean().sqrt()),
            spread=float(e[:, [0, 7]].sum(1).mean()),  # weight put on the parts (truth: 0)
            lmk=float((res.landmarks2d - clean).norm(dim=-1).mean()),
        )
    l2, l1 = out[0.0], out[1e-5]
    print(f"\nL2 only: {l2}\nwith L1: {l1}")
    assert l2["spread"] > 0.1, "the redundant shape is not spread by the L2 fit: the test sees nothing"
    assert l1["spread"] < 0.5 * l2["spread"]
    assert l1["lmk"] < l2["lmk"] + 0.05  # the landmark fit is as good (px)


def test_symmetric_pairs_and_their_prior():
    """*_L / *_R components pair up (gaze excluded). A head whose smile is split into a left and a right half (by the
    side of the face each vertex is on), a symmetric smile seen through noisy landmarks: the left/right prior brings
    the halves' weights together (2 px noise lets them drift apart without it) at no cost in landmark error. (On this
    synthetic head the halves' error against the truth is dominated by other components and is not lower with the
    prior: 0.51 vs 0.53 at 1e-4.)"""
    from gaussian_flametalk.headmodel import FlameModel as _Flame
    from gaussian_flametalk.headmodel.flame_format import SHAPE_BLOCK
    from gaussian_flametalk.headmodel.synthetic import EXPRESSION_NAMES, N_EXPRESSION, N_SHAPE, synthetic_arrays
    from gaussian_flametalk.tracking.fit import symmetric_pairs

    class Named:
        expression_names = ["eyeLookIn_L", "eyeLookIn_R", "mouthSmile_L", "jawOpen", "mouthSmile_R", "cheekPuff_L"]

    assert symmetric_pairs(Named()) == [(2, 4)]
    arrays, embedding, masks = synthetic_arrays(0)
    e = SHAPE_BLOCK
    left = arrays["v_template"][:, 0] >= 0  # the head's left (+x)
    smile = arrays["shapedirs"][..., e + 0].copy()
    arrays["shapedirs"][..., e + 0] = smile * left[:, None]
    arrays["shapedirs"][..., e + 8] = smile * ~left[:, None]
    regions = {"face": masks["face"], "lips": masks["lips"], "scalp": masks["scalp"], "neck": masks["neck"],
               "eyes": masks["left_eyeball"]}
    model = _Flame(arrays, embedding, N_SHAPE, N_EXPRESSION, regions, kind="synthetic", source="synthetic", dtype=D)
    model.expression_names = ["smile_L"] + list(EXPRESSION_NAMES[1:8]) + ["smile_R", EXPRESSION_NAMES[9]]
    assert symmetric_pairs(model) == [(0, 8)]
    n = 50
    truth = _sequence(model, n, seed=6)
    smile_w = _smooth(n, 1, 0.8, 13, every=4)[:, 0]
    truth["expression"] = torch.zeros(n, model.n_expression, dtype=D)
    truth["expression"][:, 0] = truth["expression"][:, 8] = smile_w  # the two halves together, the rest at rest
    clean = project(model.forward_landmarks(**truth), torch.tensor(F_TRUE, dtype=D), SIZE, SIZE, DIST)
    noisy = clean + 2.0 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(7), dtype=D)
    w = 1e-3
    gap, lmk = {}, {}
    for weight in (0.0, w):
        cfg = FitConfig(focal_init=F_TRUE, optimize_focal=False, camera_distance=DIST, eyelid_travel=False,
                        w_symmetry=weight)
        res = fit_landmarks(model, noisy, torch.ones(n, 68, dtype=D), SIZE, SIZE, cfg, progress=False)
        x = res.params.expression
        gap[weight] = float((x[:, 0] - x[:, 8]).abs().mean())
        lmk[weight] = float((res.landmarks2d - clean).norm(dim=-1).mean())
    print(f"\n|smile_L - smile_R|: {gap[0.0]:.4f} without the prior, {gap[w]:.4f} with it; landmark error vs the "
          f"clean points {lmk[0.0]:.3f} / {lmk[w]:.3f} px")
    assert gap[0.0] > 0.05, "the halves do not drift apart without the prior: the test sees nothing"
    assert gap[w] < 0.4 * gap[0.0]
    assert lmk[w] < lmk[0.0] + 0.05
