"""Mouth interior: an avatar trained with the default regions shows teeth and a dark cavity when the mouth opens,
never the background (FLAME-format synthetic head with its procedural teeth rows and back wall)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from gaussian_flametalk.avatar.gaussians import N_REST, BoundGaussians, region_triangles
from gaussian_flametalk.avatar.sh import rgb_to_sh
from gaussian_flametalk.avatar.train import (AvatarConfig, DensifyOptions, TrainData, avatar_triangles, fit_avatar,
                                             render_frames)
from gaussian_flametalk.geometry.camera import Camera
from gaussian_flametalk.headmodel import HeadParams, make_synthetic_head
from gaussian_flametalk.io.subject import train_test_split

SIZE = 64
GREEN = torch.tensor([0.0, 1.0, 0.0])


def _camera():
    """Close on the lower face (about 9 cm across at the lips), so the mouth is tens of pixels wide."""
    return Camera.look_at((0, -0.06, 0.45), (0, -0.06, 0), focal=SIZE * 0.37 / 0.09, width=SIZE, height=SIZE)


def _clip(model, n=40):
    """Ground truth: skin-coloured Gaussians on the head, white teeth, a dark back wall; the jaw opens and closes."""
    g = torch.Generator().manual_seed(0)
    tri = region_triangles(model.faces, model.regions, ())
    t = tri.numel()
    rgb = 0.55 + 0.15 * torch.rand(t, 3, generator=g)
    rgb[:, 0] += 0.2
    inside = {k: torch.zeros(model.n_vertices, dtype=torch.bool) for k in ("teeth_upper", "teeth_lower", "mouth")}
    for k, m in inside.items():
        m[model.regions[k]] = True
    faces = model.faces[tri]
    rgb[(inside["teeth_upper"] | inside["teeth_lower"])[faces].all(1)] = torch.tensor([0.95, 0.93, 0.9])
    rgb[inside["mouth"][faces].all(1)] = torch.tensor([0.08, 0.02, 0.02])
    gt = BoundGaussians(
        tri, model.n_faces, xyz=torch.zeros(t, 3), rotation=torch.tensor([[1.0, 0, 0, 0]]).repeat(t, 1),
        log_scale=torch.full((t, 3), math.log(0.4)), opacity=torch.full((t,), 4.0),
        sh_dc=rgb_to_sh(rgb.clamp(0, 1))[:, None], sh_rest=torch.zeros(t, N_REST, 3),
    )
    p = HeadParams.zeros(model, n)
    p.jaw[:, 0] = 0.15 * (1 - torch.cos(torch.arange(n, dtype=torch.float32) * 2 * math.pi / 10))
    with torch.no_grad():
        img, alpha, _ = render_frames(gt, model, p, _camera(), 0)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), (alpha > 0.5).to(torch.uint8) * 255, p


def _mouth_mask(model, params):
    """(H, W) bool: pixels inside the inner-lip contour (landmarks 60..67), eroded by a pixel."""
    with torch.no_grad():
        lmk = _camera().project(model.landmarks(model.forward_params(params)))[0].numpy()
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mask, [np.round(lmk[60:68] * 4).astype(np.int32)], 1, shift=2)
    return cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0


def test_open_mouth_shows_teeth_and_dark_interior(tmp_path):
    model = make_synthetic_head()
    assert {"teeth_upper", "teeth_lower", "mouth"} <= set(model.regions)
    cfg = AvatarConfig(subject=tmp_path, progress=False, iterations=100, resolution=SIZE, sh_degree=0,
                       densify=DensifyOptions(every=0, opacity_resets=0), checkpoint_every=10**6, tune_params=False)
    assert {"teeth_upper", "teeth_lower", "mouth"} <= set(cfg.regions)  # on by default
    tri = avatar_triangles(model, cfg.regions)
    assert tri.numel() > region_triangles(model.faces, model.regions, ("face", "lips", "eyes", "scalp", "neck")).numel()
    images, masks, params = _clip(model)
    n = images.shape[0]
    tr, te = train_test_split(n, 25.0)
    # with the person masks, as load_training_data gives them: the alpha term makes the dark cavity opaque
    data = TrainData(images, torch.ones(n, SIZE, SIZE, 1, dtype=torch.bool), params, _camera(), tr, te, masks)
    fit = fit_avatar(data, model, cfg, tmp_path / "avatar")

    wide = HeadParams.zeros(model, 1)
    wide.jaw[0, 0] = 0.3  # the widest opening of the clip
    mask = _mouth_mask(model, wide)
    assert mask.sum() > 30  # the mouth is open in this frame
    with torch.no_grad():
        img, alpha, _ = render_frames(fit.gaussians, model, wide, _camera(), fit.sh_degree)
    over_green = (img[0] + (1 - alpha[0]) * GREEN).clamp(0, 1).numpy()[mask]
    a = alpha[0, ..., 0].numpy()[mask]
    dark, teeth, background = _classes(over_green)
    truth = images[int(params.jaw[:, 0].argmax())].float().numpy()[mask] / 255.0
    dark_gt, teeth_gt, _ = _classes(truth)
    print(f"\nopen mouth: {mask.sum()} px, alpha {a.mean():.3f}, dark {dark.mean():.2f} (truth {dark_gt.mean():.2f}), "
          f"teeth {teeth.mean():.2f} (truth {teeth_gt.mean():.2f}), background {background.mean():.2f}")
    assert (dark_gt | teeth_gt).mean() > 0.4  # the check itself: the true open mouth (lip rim aside) is cavity, teeth
    assert a.mean() > 0.95  # opaque: the plate never shows through the mouth
    assert background.mean() < 0.02
    assert (dark | teeth).mean() > (dark_gt | teeth_gt).mean() - 0.1  # teeth or dark cavity, not grey
    assert dark.mean() > 0.15 and teeth.mean() > 0.1  # both are there
    # control: without the Gaussians on the mouth-interior triangles the plate shows through (what this guards)
    inner = torch.zeros(model.n_vertices, dtype=torch.bool)
    for k in ("teeth_upper", "teeth_lower", "mouth"):
        inner[model.regions[k]] = True
    on_mouth = inner[model.faces[fit.gaussians.parent]].all(1)
    assert on_mouth.any()
    with torch.no_grad():
        fit.gaussians.opacity[on_mouth] = -30.0
        img, alpha, _ = render_frames(fit.gaussians, model, wide, _camera(), fit.sh_degree)
    _, _, holes = _classes((img[0] + (1 - alpha[0]) * GREEN).clamp(0, 1).numpy()[mask])
    assert holes.mean() > 0.2


def _classes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) colours in [0, 1] -> dark cavity, teeth (bright, unsaturated), green background masks."""
    dark = rgb.max(axis=1) < 0.35
    teeth = (rgb.min(axis=1) > 0.65) & (rgb.max(axis=1) - rgb.min(axis=1) < 0.2)
    background = (rgb[:, 1] > rgb[:, 0] + 0.25) & (rgb[:, 1] > rgb[:, 2] + 0.25)
    return dark, teeth, background


def test_mouth_box_bounds_the_lips_with_a_margin_inside_the_image():
    """`mouth_box` (the mouth-box PSNR's region) bounds the lip landmarks with a quarter of their size as margin,
    clipped to the image."""
    from gaussian_flametalk.avatar.train import mouth_box

    xy = torch.tensor([[[10.0, 20.0], [30.0, 28.0]], [[-4.0, 50.0], [12.0, 70.0]]])  # two frames, two points each
    assert mouth_box(xy, 64, 64).tolist() == [[5, 18, 35, 30], [0, 45, 16, 64]]
