"""gsplat and the reference rasterizer agree on the GPU (skipped without CUDA; gsplat is imported only inside tests).

Covered: images, alphas and gradients (means, quats, scales, opacities, colours / SH, background, screen-space
means) against the reference for plain colours and SH degrees 0-3, a batch of cameras over shared Gaussians, and
per-camera Gaussians (C, N, ...). Agreement: images and alphas to 1e-3, except that float32 rounding (gsplat's
fast-math exp, our polynomial form of the Mahalanobis term) may move a (pixel, Gaussian) pair across the
alpha = 1/255 cut-off, which changes that pixel by at most 1/255; such pixels must stay rare. Gradients to 1e-2,
relative to each gradient's norm.
"""

from __future__ import annotations

import pytest
import torch

from gaussian_flametalk.avatar import gsplat_status, render
from gaussian_flametalk.geometry.camera import Camera
from gaussian_flametalk.scripts.bench_render import head_scene

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module", autouse=True)
def _gsplat_installed():
    pytest.importorskip("gsplat")


def assert_images_agree(ours: torch.Tensor, ref: torch.Tensor) -> None:
    diff = (ours - ref).abs()
    assert diff.max() <= 1.0 / 255.0 + 1e-3, diff.max()
    assert (diff > 1e-3).float().mean() <= 1e-4, (diff > 1e-3).sum()


def assert_grads_agree(ours: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    assert ref.norm() > 0, name
    assert (ours - ref).norm() <= 1e-2 * ref.norm(), (name, ((ours - ref).norm() / ref.norm()).item())


def cameras(size: int, n: int) -> list[Camera]:
    """n square views of the head scene from slightly different positions."""
    return [
        Camera.look_at((0.25 * i, 0.05 * i, -1.0), (0.0, 0.0, 0.0), focal=2.0 * size, width=size, height=size).to("cuda")
        for i in range(n)
    ]


def render_both(tensors: dict[str, torch.Tensor], cams, sh_degree: int | None, background: torch.Tensor):
    """Image, alpha, info and gradients (of a fixed random weighting of image and alpha) from each backend."""
    results = {}
    for backend in ("gsplat", "reference"):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in tensors.items()}
        bg = background.detach().clone().requires_grad_()
        image, alpha, info = render(**leaves, camera=cams, background=bg, sh_degree=sh_degree, backend=backend)
        assert info.backend == backend
        weights = torch.rand(image.shape[:-1] + (image.shape[-1] + 1,), generator=torch.Generator().manual_seed(0))
        (torch.cat([image, alpha], -1) * weights.to("cuda")).sum().backward()
        grads = {k: v.grad for k, v in leaves.items()} | {"background": bg.grad, "means2d": info.means2d.grad}
        results[backend] = (image.detach(), alpha.detach(), info, grads)
    return results["gsplat"], results["reference"]


def test_gsplat_extension_loads():
    status = gsplat_status(build=True)
    assert status["extension"], status["error"]


@pytest.mark.parametrize(("sh_degree", "n_coeffs"), [(None, None), (0, 1), (1, 16), (2, 9), (3, 16)],
                         ids=["colors", "sh0-exact", "sh1-of-16", "sh2-exact", "sh3"])
def test_gsplat_matches_reference_shared_gaussians(sh_degree: int | None, n_coeffs: int | None):
    """Plain colours and every SH degree 0-3, with exactly (degree + 1)^2 coefficients and with more (as during
    training, where the degree ramps up while the avatar keeps all 16)."""
    tensors, _ = head_scene(3000, 128, seed=1, device="cuda")
    if sh_degree is None:
        tensors["colors"] = torch.rand(3000, 3, generator=torch.Generator().manual_seed(2)).to("cuda")
    else:
        tensors["colors"] = tensors["colors"][:, :n_coeffs].contiguous()
    cams = cameras(128, 2)
    background = torch.tensor([0.2, 0.4, 0.6], device="cuda")
    (g_img, g_alpha, g_info, g_grads), (r_img, r_alpha, r_info, r_grads) = render_both(
        tensors, cams, sh_degree, background
    )
    assert g_img.shape == r_img.shape == (2, 128, 128, 3)
    assert_images_agree(g_img, r_img)
    assert_images_agree(g_alpha, r_alpha)
    assert (g_info.radii != r_info.radii).any(-1).float().mean() <= 1e-3
    assert torch.allclose(g_info.means2d[g_info.visible], r_info.means2d[g_info.visible], atol=1e-3)
    for name in r_grads:
        assert_grads_agree(g_grads[name], r_grads[name], name)
    if sh_degree is not None and n_coeffs > (sh_degree + 1) ** 2:  # coefficients above the degree get no gradient
        assert not g_grads["colors"][:, (sh_degree + 1) ** 2:].any()


def test_gsplat_matches_reference_per_frame_gaussians():
    """Per-camera geometry ((C, N, 3) means, e.g. per-frame deformed avatars) goes through gsplat's batch dims."""
    tensors, _ = head_scene(2000, 96, seed=3, device="cuda")
    g = torch.Generator().manual_seed(4)
    offsets = (torch.randn(3, 1, 3, generator=g) * 0.01).to("cuda")
    tensors["means"] = tensors["means"] + offsets  # (3, N, 3)
    cams = cameras(96, 3)
    background = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.2, 0.1]], device="cuda")
    (g_img, g_alpha, g_info, g_grads), (r_img, r_alpha, r_info, r_grads) = render_both(tensors, cams, 3, background)
    assert g_img.shape == r_img.shape == (3, 96, 96, 3)
    assert g_info.means2d.shape == r_info.means2d.shape == (3, 2000, 2)
    assert_images_agree(g_img, r_img)
    assert_images_agree(g_alpha, r_alpha)
    for name in r_grads:
        assert_grads_agree(g_grads[name], r_grads[name], name)


def test_auto_picks_gsplat_for_cuda_float32():
    tensors, cam = head_scene(100, 64, device="cuda")
    assert render(**tensors, camera=cam, sh_degree=3)[2].backend == "gsplat"
