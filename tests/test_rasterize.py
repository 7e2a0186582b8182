"""The reference rasterizer (CPU): analytic images, compositing order, culling, a dense brute-force ground truth,
gradients, input checks, and gsplat's conventions (its pure-PyTorch projection and SH, when gsplat is installed)."""

from __future__ import annotations

import math

import pytest
import torch

from gaussian_flametalk.avatar import render, rgb_to_sh, sh_to_color
from gaussian_flametalk.avatar import rasterize_ref
from gaussian_flametalk.avatar.rasterize_ref import ALPHA_MAX, ALPHA_MIN, T_MIN, project_gaussians
from gaussian_flametalk.geometry.camera import Camera, intrinsics

F64 = torch.float64


def axis_camera(width: int, height: int, focal: float, cx: float | None = None, cy: float | None = None) -> Camera:
    """Camera at the origin looking down +z (identity viewmat)."""
    cx = width / 2 if cx is None else cx
    cy = height / 2 if cy is None else cy
    return Camera(torch.eye(4, dtype=F64), intrinsics(focal, focal, cx, cy, dtype=F64), width, height)


def random_scene(n: int, seed: int, n_views: int = 0) -> dict[str, torch.Tensor]:
    """Gaussians around (0, 0, 2): many overlaps, sizes from sub-pixel to several tiles, opacities up to 0.98."""
    g = torch.Generator().manual_seed(seed)
    lead = (n_views,) if n_views else ()
    means = torch.randn(*lead, n, 3, generator=g, dtype=F64) * torch.tensor([0.5, 0.4, 0.3], dtype=F64)
    means[..., 2] += 2.0
    scales = torch.exp(torch.empty(*lead, n, 3, dtype=F64).uniform_(math.log(0.005), math.log(0.25), generator=g))
    colors = torch.rand(n, 3, generator=g, dtype=F64)
    return {
        "means": means,
        "quats": torch.randn(*lead, n, 4, generator=g, dtype=F64),
        "scales": scales,
        "opacities": torch.empty(*lead, n, dtype=F64).uniform_(0.05, 0.98, generator=g),
        "colors": colors,
    }


def dense_composite(proj, opacities: torch.Tensor, colors: torch.Tensor, width: int, height: int, t_min: float = T_MIN):
    """Ground truth: every pixel against every visible Gaussian, sorted by depth, same alpha and stopping rules.

    Args: proj (C views), opacities (C, N), colors (C, N, D), t_min (0 disables early termination).
    Returns colour (C, H, W, D), transmittance (C, H, W).
    """
    ys, xs = torch.meshgrid(torch.arange(height, dtype=F64), torch.arange(width, dtype=F64), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2) + 0.5
    outs, transs = [], []
    for c in range(opacities.shape[0]):
        idx = proj.visible[c].nonzero()[:, 0]
        idx = idx[torch.argsort(proj.depths[c, idx].detach(), stable=True)]
        d = proj.means2d[c, idx][None] - pix[:, None]  # (P, G, 2)
        a, b, cc = proj.conics[c, idx].unbind(-1)
        sigma = 0.5 * (a * d[..., 0] ** 2 + cc * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
        alpha = (opacities[c, idx] * torch.exp(-sigma)).clamp_max(ALPHA_MAX)
        alpha = alpha * (alpha >= ALPHA_MIN)
        prod = torch.cumprod(1 - alpha, dim=1)
        live = prod > t_min
        front = torch.cat([torch.ones_like(prod[:, :1]), prod[:, :-1]], dim=1)
        w = alpha * front * live
        outs.append((w @ colors[c, idx]).reshape(height, width, -1))
        transs.append(torch.where(live, 1 - alpha, torch.ones_like(alpha)).prod(dim=1).reshape(height, width))
    return torch.stack(outs), torch.stack(transs)


def dense_render(scene: dict[str, torch.Tensor], cams: list[Camera], background: torch.Tensor, t_min: float = T_MIN):
    """Dense counterpart of ``render`` (plain colours) for several cameras; also returns the projection."""
    n_views = len(cams)
    per_view = {  # shared (N, ...) tensors -> (C, N, ...)
        k: v if v.dim() == (2 if k == "opacities" else 3) else v.expand(n_views, *v.shape) for k, v in scene.items()
    }
    viewmats = torch.stack([c.viewmat for c in cams])
    Ks = torch.stack([c.K for c in cams])
    cam = cams[0]
    proj = project_gaussians(
        per_view["means"], per_view["quats"], per_view["scales"], per_view["opacities"], viewmats, Ks,
        cam.width, cam.height, cam.near, cam.far, 0.3,
    )
    color, trans = dense_composite(proj, per_view["opacities"], per_view["colors"], cam.width, cam.height, t_min)
    return color + trans[..., None] * background, 1 - trans[..., None], proj


def test_single_isotropic_gaussian_is_analytic():
    z, s, f, opacity = 2.0, 0.01, 200.0, 0.8
    cam = axis_camera(41, 37, f, cx=20.5, cy=18.5)  # the Gaussian sits on the centre of pixel (18, 20)
    color = torch.tensor([[0.2, 0.5, 0.9]], dtype=F64)
    bg = torch.tensor([0.1, 0.1, 0.1], dtype=F64)
    image, alpha, info = render(
        torch.tensor([[0.0, 0.0, z]], dtype=F64), torch.tensor([[1.0, 0, 0, 0]], dtype=F64),
        torch.full((1, 3), s, dtype=F64), torch.tensor([opacity], dtype=F64), color, cam, bg,
    )
    var = (f * s / z) ** 2 + 0.3  # projected variance + eps2d dilation
    ys, xs = torch.meshgrid(torch.arange(37, dtype=F64), torch.arange(41, dtype=F64), indexing="ij")
    r2 = (xs + 0.5 - 20.5) ** 2 + (ys + 0.5 - 18.5) ** 2
    expected = opacity * torch.exp(-0.5 * r2 / var)
    expected = expected * (expected >= 1 / 255)
    assert torch.allclose(alpha[..., 0], expected, atol=1e-5, rtol=0)
    assert torch.allclose(image, expected[..., None] * color + (1 - expected[..., None]) * bg, atol=1e-5, rtol=0)
    assert alpha[18, 20, 0].item() == pytest.approx(opacity, abs=1e-12)  # peak
    assert alpha[18, 21, 0].item() == pytest.approx(opacity * math.exp(-0.5 / var), abs=1e-12)  # width
    assert (expected > 0).sum() > 20 and (alpha[..., 0] == 0).sum() > 20  # the 1/255 cut-off is exercised
    assert info.means2d[0, 0].tolist() == pytest.approx([20.5, 18.5])
    assert info.radii[0, 0].tolist() == [math.ceil(math.sqrt(2 * math.log(255 * opacity) * var))] * 2


def test_two_gaussians_composite_in_depth_order():
    cam = axis_camera(32, 32, 100.0)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=F64)
    scales = torch.tensor([[0.06] * 3, [0.03] * 3], dtype=F64)
    opac = torch.tensor([0.7, 0.6], dtype=F64)
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=F64)
    red_front = torch.tensor([[0.01, 0.0, 1.5], [0.0, -0.02, 2.5]], dtype=F64)
    green_front = red_front.clone()
    green_front[:, 2] = red_front.flip(0)[:, 2]

    def draw(means, keep):
        return render(means[keep], quats[keep], scales[keep], opac[keep], colors[keep], cam)

    for means in (red_front, green_front):
        image, alpha, _ = draw(means, [0, 1])
        a0 = draw(means, [0])[1][..., 0]
        a1 = draw(means, [1])[1][..., 0]
        front, back = (0, 1) if means[0, 2] < means[1, 2] else (1, 0)
        af, ab = (a0, a1) if front == 0 else (a1, a0)
        expected = af[..., None] * colors[front] + ((1 - af) * ab)[..., None] * colors[back]
        assert torch.allclose(image, expected, atol=1e-12)
        assert torch.allclose(alpha[..., 0], 1 - (1 - af) * (1 - ab), atol=1e-12)
    first = render(red_front, quats, scales, opac, colors, cam)[0]
    second = render(green_front, quats, scales, opac, colors, cam)[0]
    assert (first - second).abs().max() > 0.1


def test_culled_gaussians_contribute_nothing():
    cam = axis_camera(48, 40, 80.0)
    visible = {
        "means": torch.tensor([[0.05, 0.0, 2.0]], dtype=F64),
        "quats": torch.tensor([[1.0, 0.2, 0, 0]], dtype=F64),
        "scales": torch.tensor([[0.1, 0.05, 0.02]], dtype=F64),
        "opacities": torch.tensor([0.9], dtype=F64),
        "colors": torch.tensor([[0.3, 0.6, 0.9]], dtype=F64),
    }
    culled_means = torch.tensor(
        [[0.0, 0.0, -2.0], [0.0, 0.0, 0.005], [30.0, 0.0, 2.0], [0.0, -25.0, 2.0]], dtype=F64
    )  # behind the camera (on the optical axis), in front of the near plane, right of and above the image
    n = len(culled_means)
    both = {
        "means": torch.cat([visible["means"], culled_means]),
        "quats": torch.cat([visible["quats"], torch.tensor([[1.0, 0, 0, 0]] * n, dtype=F64)]),
        "scales": torch.cat([visible["scales"], torch.full((n, 3), 0.2, dtype=F64)]),
        "opacities": torch.cat([visible["opacities"], torch.full((n,), 0.9, dtype=F64)]),
        "colors": torch.cat([visible["colors"], torch.ones(n, 3, dtype=F64)]),
    }
    bg = torch.tensor([0.2, 0.2, 0.2], dtype=F64)
    ref_image, ref_alpha, _ = render(**visible, camera=cam, background=bg)
    image, alpha, info = render(**both, camera=cam, background=bg)
    assert torch.equal(image, ref_image) and torch.equal(alpha, ref_alpha)
    assert info.visible[0].tolist() == [True] + [False] * n
    assert (info.radii[0, 1:] == 0).all()
    assert ref_alpha.max() > 0.5


def test_empty_input_renders_background():
    cam = axis_camera(20, 17, 30.0)
    bg = torch.tensor([0.25, 0.5, 0.75], dtype=F64)
    empty = [torch.zeros(0, k, dtype=F64) for k in (3, 4, 3)]
    image, alpha, info = render(*empty, torch.zeros(0, dtype=F64), torch.zeros(0, 3, dtype=F64), cam, bg)
    assert image.shape == (17, 20, 3) and torch.equal(image, bg.expand(17, 20, 3))
    assert torch.equal(alpha, torch.zeros(17, 20, 1, dtype=F64))
    assert info.means2d.shape == (1, 0, 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_dense_composite(seed: int):
    """Random scenes through several cameras (per-view Gaussians for seed 1), odd image sizes, multi-chunk tiles."""
    n_views = 2
    cams = [
        Camera.look_at((0.3 * i, 0.1, -0.5), (0.0, 0.0, 2.0), focal=70.0, width=53, height=45, dtype=F64)
        for i in range(n_views)
    ]
    scene = random_scene(400, seed, n_views=n_views if seed == 1 else 0)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]], dtype=F64)
    image, alpha, info = render(**scene, camera=cams, background=bg)
    exp_image, exp_alpha, proj = dense_render(scene, cams, bg[:, None, None, :])
    assert image.shape == (2, 45, 53, 3) and info.means2d.shape == (2, 400, 2)
    assert (image - exp_image).abs().max() < 1e-5
    assert (alpha - exp_alpha).abs().max() < 1e-5
    unterminated = dense_render(scene, cams, bg[:, None, None, :], t_min=0.0)[0]
    assert (unterminated - exp_image).abs().max() > 1e-4  # early termination matters in this scene
    assert rasterize_ref.bin_gaussians(proj, 53, 45).count.max() > 2 * rasterize_ref.CHUNK  # several depth chunks


def test_gradients_match_dense_composite():
    cam = Camera.look_at((0.1, 0.1, -0.4), (0.0, 0.0, 2.0), focal=60.0, width=37, height=29, dtype=F64)
    scene = {k: v.requires_grad_() for k, v in random_scene(150, 3).items()}
    bg = torch.tensor([0.3, 0.1, 0.6], dtype=F64, requires_grad=True)
    weights = torch.rand(29, 37, 4, generator=torch.Generator().manual_seed(5), dtype=F64)

    def loss(image, alpha):
        return (torch.cat([image, alpha], -1) * weights).sum()

    image, alpha, info = render(**scene, camera=cam, background=bg)
    grads = torch.autograd.grad(loss(image, alpha), [*scene.values(), bg])
    exp_image, exp_alpha, _ = dense_render(scene, [cam], bg)
    exp_grads = torch.autograd.grad(loss(exp_image[0], exp_alpha[0]), [*scene.values(), bg])
    for name, g, e in zip([*scene, "background"], grads, exp_grads):
        assert torch.allclose(g, e, rtol=1e-7, atol=1e-9), name
        assert e.abs().max() > 0, name


def test_means2d_grad_is_retained():
    cam = Camera.look_at((0.0, 0.0, -0.5), (0.0, 0.0, 2.0), focal=60.0, width=32, height=32, dtype=F64)
    scene = {k: v.requires_grad_() for k, v in random_scene(50, 4).items()}
    image, _, info = render(**scene, camera=cam)
    image.sum().backward()
    g = info.means2d.grad
    assert g is not None and g.shape == (1, 50, 2)
    assert (g[0, ~info.visible[0]] == 0).all() and g[0, info.visible[0]].abs().sum() > 0


def _tiny_scene(sh: int | None) -> tuple[dict[str, torch.Tensor], Camera]:
    cam = Camera.look_at((0.2, -0.1, -0.3), (0.0, 0.0, 2.0), focal=30.0, width=19, height=17, dtype=F64)
    g = torch.Generator().manual_seed(11)
    n = 4
    colors = (
        torch.rand(n, 3, generator=g, dtype=F64)
        if sh is None
        else torch.cat([rgb_to_sh(torch.rand(n, 1, 3, generator=g, dtype=F64) * 0.4 + 0.4),
                        torch.randn(n, (sh + 1) ** 2 - 1, 3, generator=g, dtype=F64) * 0.1], dim=1)
    )
    scene = {
        "means": torch.randn(n, 3, generator=g, dtype=F64) * 0.15 + torch.tensor([0.0, 0.0, 2.0], dtype=F64),
        "quats": torch.randn(n, 4, generator=g, dtype=F64),
        "scales": torch.empty(n, 3, dtype=F64).uniform_(0.04, 0.12, generator=g),
        "opacities": torch.empty(n, dtype=F64).uniform_(0.3, 0.9, generator=g),
        "colors": colors,
    }
    return scene, cam


@pytest.mark.parametrize("sh", [None, 0, 2])
def test_gradcheck(sh: int | None):
    scene, cam = _tiny_scene(sh)
    names = list(scene)
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=F64)

    def fn(*tensors):
        image, alpha, _ = render(*tensors, cam, bg, sh_degree=sh)
        return image, alpha

    inputs = tuple(scene[k].clone().requires_grad_() for k in names)
    assert fn(*inputs)[1].max() > 0.5
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("bad", ["means", "quats", "scales", "opacities", "colors", "background", "camera.K"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_input_is_named(bad: str, value: float):
    scene, cam = _tiny_scene(None)
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=F64)
    if bad == "background":
        bg[1] = value
    elif bad == "camera.K":
        cam = Camera(cam.viewmat, cam.K.clone(), cam.width, cam.height)
        cam.K[0, 0] = value
    else:
        scene[bad].view(-1)[0] = value
    with pytest.raises(ValueError, match=rf"NaN or inf: {bad.replace('.', '[.]')}$"):
        render(**scene, camera=cam, background=bg)


def test_shape_and_backend_errors():
    scene, cam = _tiny_scene(None)
    with pytest.raises(ValueError, match="scales"):
        render(**{**scene, "scales": scene["scales"][:, :2]}, camera=cam)
    with pytest.raises(ValueError, match="gsplat backend needs float32 CUDA"):
        render(**scene, camera=cam, backend="gsplat")
    assert render(**scene, camera=cam, backend="auto")[2].backend == "reference"


def test_sh_degree0_is_view_independent_and_rgb_roundtrips():
    rgb = torch.tensor([[0.1, 0.5, 0.9]], dtype=F64)
    dirs = torch.randn(5, 3, dtype=F64)
    coeffs = rgb_to_sh(rgb)[:, None, :].expand(5, 1, 3)
    assert torch.allclose(sh_to_color(0, coeffs, dirs), rgb.expand(5, 3))


def test_sh_and_projection_match_gsplat_pytorch_reference():
    """gsplat's own pure-PyTorch projection and SH (CPU) agree with ours: the convention is the same."""
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    g = torch.Generator().manual_seed(2)
    dirs = torch.randn(200, 3, generator=g, dtype=F64)
    coeffs = torch.randn(200, 16, 3, generator=g, dtype=F64)
    for degree in range(4):
        ours = sh_to_color(degree, coeffs, dirs) - 0.5
        theirs = torch_impl._spherical_harmonics(degree, dirs, coeffs)
        assert torch.allclose(ours.clamp_min(-0.5), theirs.clamp_min(-0.5), atol=1e-12), degree

    cams = [Camera.look_at((0.4 * i, 0.0, -0.5), (0.0, 0.0, 2.0), focal=90.0, width=64, height=48, dtype=F64)
            for i in range(2)]
    scene = random_scene(300, 6)
    viewmats, Ks = torch.stack([c.viewmat for c in cams]), torch.stack([c.K for c in cams])
    covars = rasterize_ref.covariance_3d(scene["quats"], scene["scales"])
    radii, means2d, depths, conics, _ = torch_impl._fully_fused_projection(
        scene["means"], covars, viewmats, Ks, 64, 48, eps2d=0.3
    )
    proj = project_gaussians(scene["means"].expand(2, 300, 3), scene["quats"].expand(2, 300, 4),
                             scene["scales"].expand(2, 300, 3), torch.full((2, 300), 1.01, dtype=F64), viewmats, Ks,
                             64, 48, 0.01, 1e10, 0.3)
    vis = proj.visible
    assert vis.sum() > 100
    assert torch.allclose(proj.means2d[vis], means2d[vis], atol=1e-9)
    assert torch.allclose(proj.conics[vis], conics[vis], rtol=1e-9, atol=1e-12)
    assert torch.allclose(proj.depths, depths)
    # gsplat's PyTorch projection lacks the CUDA kernel's opacity-aware extent and always uses 3.33 sigma, which ours
    # uses too once sqrt(2 ln(255 opacity)) >= 3.33, i.e. opacity >= 1.0007: identical boxes and culling
    assert torch.equal(proj.radii, radii)


def test_package_render_is_the_rasterizer_after_every_avatar_module_is_imported():
    import importlib
    import pkgutil

    import gaussian_flametalk.avatar as avatar

    for mod in pkgutil.iter_modules(avatar.__path__):
        importlib.import_module(f"gaussian_flametalk.avatar.{mod.name}")
    assert callable(avatar.render)  # no submodule may shadow the public function
