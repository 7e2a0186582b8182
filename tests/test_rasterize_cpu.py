"""The compiled CPU rasterizer (backend "cpu") against the PyTorch reference: images, alphas, culling and every
gradient on many scenes, its build and cache, thread counts, backend selection and the fallback without a compiler."""

from __future__ import annotations

import math
import tempfile
import warnings

import pytest
import torch

from gaussian_flametalk.avatar import rasterize, rasterize_cpu, render
from gaussian_flametalk.geometry.camera import Camera

F32, F64 = torch.float32, torch.float64
IMAGE_TOL = 1e-4  # max abs difference of images and alphas
GRAD_TOL = 1e-3  # max abs difference of a gradient relative to the reference gradient's largest entry


@pytest.fixture(scope="module", autouse=True)
def kernel_builds():
    """Every test here needs the kernel: it must build on any machine that runs the tests (CI included)."""
    ok, error = rasterize_cpu.cpu_loadable()
    assert ok, error


def scene(n: int, seed: int, n_views: int = 0, sh_degree: int | None = None, channels: int = 3, k: int = 16):
    """float32 Gaussians around (0, 0, 2): overlaps, sizes from sub-pixel to several tiles, opacities up to 0.98."""
    g = torch.Generator().manual_seed(seed)
    lead = (n_views,) if n_views else ()
    means = torch.randn(*lead, n, 3, generator=g) * torch.tensor([0.5, 0.4, 0.3])
    means[..., 2] += 2.0
    if sh_degree is None:
        colors = torch.rand(*lead, n, channels, generator=g)
    else:
        colors = torch.randn(*lead, n, k, 3, generator=g) * 0.3
        colors[..., 0, :] += 0.6
    return {
        "means": means,
        "quats": torch.randn(*lead, n, 4, generator=g),
        "scales": torch.exp(torch.empty(*lead, n, 3).uniform_(math.log(0.005), math.log(0.25), generator=g)),
        "opacities": torch.empty(*lead, n).uniform_(0.05, 0.98, generator=g),
        "colors": colors,
    }


def cameras(n_views: int, width: int = 53, height: int = 45, focal: float = 70.0) -> list[Camera]:
    return [
        Camera.look_at((0.3 * i, 0.1 - 0.05 * i, -0.5), (0.0, 0.0, 2.0), focal=focal, width=width, height=height)
        for i in range(n_views)
    ]


def run(tensors, cams, background, sh_degree, backend, dtype, **kwargs):
    """Render (batched) and backpropagate a fixed random weighting of image and alpha; returns outputs and grads."""
    leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in tensors.items()}
    bg = background.detach().to(dtype).requires_grad_()
    cams = [c.to(dtype=dtype) for c in cams]
    image, alpha, info = render(**leaves, camera=cams, background=bg, sh_degree=sh_degree, backend=backend, **kwargs)
    out = torch.cat([image, alpha], -1)
    weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(7), dtype=F64).to(dtype) - 0.3
    (out * weights).sum().backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["background"] = bg.grad
    grads["means2d"] = info.means2d.grad
    return image.detach(), alpha.detach(), info, grads


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_matches_reference(tensors, cams, background, sh_degree=None, expect_visible=1):
    """The kernel against the reference on the same float32 inputs: images, culling, means2d and all gradients.

    Images are compared with the float32 reference (a (pixel, Gaussian) pair whose alpha lies within float32 rounding
    of the 1/255 cut-off is drawn by one precision and skipped by the other, which moves that pixel by up to ~1/255,
    so float64 is no fairer a yardstick there); gradients with both the float32 and the float64 reference.
    """
    image, alpha, info, grads = run(tensors, cams, background, sh_degree, "cpu", F32)
    ref_image, ref_alpha, ref_info, ref_grads = run(tensors, cams, background, sh_degree, "reference", F32)
    exact_grads = run(tensors, cams, background, sh_degree, "reference", F64)[3]
    assert info.backend == "cpu" and ref_info.backend == "reference"
    assert image.dtype == F32 and image.shape == ref_image.shape
    assert max_diff(image, ref_image) <= IMAGE_TOL
    assert max_diff(alpha, ref_alpha) <= IMAGE_TOL
    assert torch.equal(info.radii, ref_info.radii)
    assert info.visible.sum() >= expect_visible
    vis = ref_info.visible
    assert torch.allclose(info.means2d.detach()[vis], ref_info.means2d.detach()[vis], rtol=1e-5, atol=1e-3)
    assert torch.allclose(info.depths, ref_info.depths.detach(), rtol=1e-5, atol=1e-6)
    for refs in (ref_grads, exact_grads):
        for name, ref in refs.items():
            got = grads[name]
            assert got is not None and got.shape == ref.shape, name
            scale = ref.abs().max().item()
            assert scale > 0, name
            assert max_diff(got, ref) <= GRAD_TOL * scale, (name, max_diff(got, ref) / scale)
    return image, info, grads


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scenes_several_cameras(seed: int):
    """Shared Gaussians seen by three cameras, odd image size (partial edge tiles), many depth-sorted overlaps."""
    cams = cameras(3)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7], [0.0, 0.5, 1.0]])
    image, info, _ = assert_matches_reference(scene(500, seed), cams, bg, expect_visible=3 * 400)
    assert image.shape == (3, 45, 53, 3)
    assert (image[0] - image[1]).abs().max() > 0.05  # the views differ


def test_per_view_gaussians():
    cams = cameras(2)
    assert_matches_reference(scene(400, 3, n_views=2), cams, torch.tensor([0.2, 0.4, 0.6]), expect_visible=600)


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_each_sh_degree(sh_degree: int):
    """SH coefficients (K = 16 stored, the first (degree + 1)^2 used), view-dependent colour, clamp at 0 exercised."""
    tensors = scene(300, 10 + sh_degree, sh_degree=sh_degree)
    _, _, grads = assert_matches_reference(tensors, cameras(2), torch.tensor([0.3, 0.3, 0.3]), sh_degree=sh_degree)
    used = (sh_degree + 1) ** 2
    assert (grads["colors"][:, used:] == 0).all()
    assert grads["colors"][:, used - 1].abs().max() > 0


def test_sh_per_view():
    tensors = scene(300, 20, n_views=2, sh_degree=3)
    assert_matches_reference(tensors, cameras(2), torch.tensor([0.5, 0.1, 0.2]), sh_degree=3)


@pytest.mark.parametrize("channels", [1, 5])
def test_plain_colours_with_other_channel_counts(channels: int):
    bg = torch.linspace(0.1, 0.9, channels)
    image, _, _ = assert_matches_reference(scene(300, 30 + channels, channels=channels), cameras(2), bg)
    assert image.shape[-1] == channels


def test_degenerate_off_screen_huge_and_tiny_gaussians():
    """Flat and point-like (zero scales), unnormalised quaternions, huge (whole image) and tiny Gaussians, opacities at
    the cut-off and near 1 (the 0.999 clamp), off-screen ones (beside, behind, past far, before near, whose Jacobian is
    clamped but whose box still reaches the image), all mixed into one random scene."""
    base = scene(200, 40)
    extra_means = torch.tensor([
        [0.0, 0.0, 2.0], [0.1, 0.05, 1.8], [0.2, -0.1, 2.2],  # flat, point, unnormalised quaternion
        [0.0, 0.0, 3.0], [0.05, 0.02, 2.5],  # huge, tiny
        [0.0, 0.1, 2.1], [-0.1, 0.0, 1.9], [0.15, 0.1, 2.05],  # opacity 1/255, just above, 0.9999
        [30.0, 0.0, 2.0], [0.0, -25.0, 2.0], [0.0, 0.0, -2.0], [0.0, 0.1, -0.497], [0.0, 0.0, 2e10],  # culled
        [2.2, 0.0, 2.0], [0.0, 1.8, 2.0],  # centre outside the image (and the Jacobian clamp), box reaching in
    ])
    n = len(extra_means)
    extra_scales = torch.full((n, 3), 0.05)
    extra_scales[0] = torch.tensor([0.1, 0.08, 0.0])
    extra_scales[1] = 0.0
    extra_scales[3] = 1.5
    extra_scales[4] = 1e-5
    extra_scales[13] = torch.tensor([1.2, 0.3, 0.3])
    extra_scales[14] = torch.tensor([0.3, 1.0, 0.3])
    extra_quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * n)
    extra_quats[2] = torch.tensor([3.0, -1.0, 2.0, 0.5])
    extra_opac = torch.full((n,), 0.6)
    extra_opac[3] = 0.3
    extra_opac[5] = 1.0 / 255.0 * 0.999
    extra_opac[6] = 1.0 / 255.0 * 1.5
    extra_opac[7] = 0.9999
    tensors = {
        "means": torch.cat([base["means"], extra_means]),
        "quats": torch.cat([base["quats"], extra_quats]),
        "scales": torch.cat([base["scales"], extra_scales]),
        "opacities": torch.cat([base["opacities"], extra_opac]),
        "colors": torch.cat([base["colors"], torch.rand(n, 3, generator=torch.Generator().manual_seed(1))]),
    }
    cams = cameras(2)
    _, info, grads = assert_matches_reference(tensors, cams, torch.tensor([0.1, 0.1, 0.1]))
    vis = info.visible
    assert not vis[:, 200 + 5].any() and vis[:, 200 + 6].all()  # the opacity cut-off
    assert not vis[:, [208, 209, 210, 212]].any() and not vis[0, 211]  # beside, above, behind, past far, before near
    assert vis[:, 200 + 13].all() and vis[:, 200 + 14].all()  # off-centre but reaching in
    x = info.means2d.detach()[:, 213, 0]
    assert ((x < -0.15 * cams[0].width) | (x > 1.15 * cams[0].width)).all()  # beyond the Jacobian clamp
    assert (grads["means"][[208, 209, 210, 212]] == 0).all()


def test_large_image_many_tiles_matches_reference():
    """A denser scene on a 130x97 image: hundreds of Gaussians per tile, early termination everywhere."""
    tensors = scene(3000, 50)
    tensors["opacities"] = tensors["opacities"].clamp_min(0.5)
    cams = cameras(1, width=130, height=97, focal=160.0)
    image, info, _ = assert_matches_reference(tensors, cams, torch.tensor([1.0, 0.0, 0.0]))
    _, alpha, _ = render(**tensors, camera=cams[0], backend="cpu")
    assert (alpha > 1 - 1e-3).float().mean() > 0.3  # much of the image is opaque: transmittance hit the stop


def test_empty_and_fully_culled_render_background():
    bg = torch.tensor([0.25, 0.5, 0.75])
    cam = cameras(1, 20, 17)[0]
    empty = render(torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3), cam, bg,
                   backend="cpu")
    assert empty[2].backend == "cpu" and torch.equal(empty[0], bg.expand(17, 20, 3))
    assert torch.equal(empty[1], torch.zeros(17, 20, 1))
    behind = scene(10, 0)
    behind["means"][:, 2] = -1.0
    image, alpha, info = render(**behind, camera=cam, background=bg, backend="cpu")
    assert torch.equal(image, bg.expand(17, 20, 3)) and not info.visible.any()


def test_thread_counts_give_identical_results():
    """The kernel is deterministic: one thread, two, four and torch's setting produce bitwise the same outputs."""
    tensors, cams, bg = scene(400, 60), cameras(2), torch.tensor([0.2, 0.2, 0.2])
    results = [run(tensors, cams, bg, None, "cpu", F32, num_threads=t) for t in (1, 2, 4, None)]
    for image, alpha, _, grads in results[1:]:
        assert torch.equal(image, results[0][0]) and torch.equal(alpha, results[0][1])
        for name, g in grads.items():
            assert torch.equal(g, results[0][3][name]), name
    with pytest.raises(ValueError, match="num_threads"):
        render(**tensors, camera=cams, backend="cpu", num_threads=-1)


def test_means2d_grad_for_densification():
    """``info.means2d.grad`` is dL/d(pixel position) of each view, zero where not drawn, as the reference gives it."""
    tensors = scene(300, 70)
    tensors["means"][:20, 0] += 40.0  # off-screen
    _, _, info, grads = run(tensors, cameras(2), torch.zeros(3), None, "cpu", F32)
    g = info.means2d.grad
    assert g.shape == (2, 300, 2)
    assert (g[~info.visible] == 0).all() and g[info.visible].abs().sum() > 0
    assert not info.visible[:, :20].any()


def test_auto_picks_the_kernel_for_float32_cpu_and_the_reference_for_float64():
    tensors, cam = scene(20, 80), cameras(1)[0]
    assert render(**tensors, camera=cam)[2].backend == "cpu"
    f64 = {k: v.double() for k, v in tensors.items()}
    assert render(**f64, camera=cam.to(dtype=F64))[2].backend == "reference"
    with pytest.raises(ValueError, match="cpu backend needs float32 CPU tensors"):
        render(**f64, camera=cam.to(dtype=F64), backend="cpu")
    assert rasterize.select_backend("cpu", torch.device("cpu"), F32) == "cpu"
    cam_grad = Camera(cam.viewmat.clone().requires_grad_(), cam.K, cam.width, cam.height)  # no camera gradients here
    assert render(**tensors, camera=cam_grad)[2].backend == "reference"
    with pytest.raises(ValueError, match="no camera gradients"):
        render(**tensors, camera=cam_grad, backend="cpu")


def test_fresh_build_into_an_empty_cache(tmp_path, monkeypatch):
    """Compiles the source (as on a fresh machine) into $GFT_CACHE, loads it, and reuses it the second time."""
    monkeypatch.setenv("GFT_CACHE", str(tmp_path))
    first = rasterize_cpu._build_and_load()
    assert first.built_now and first.path.is_file() and first.path.parent == tmp_path / "cpu-rasterizer"
    assert first.lib.gft_abi_version() == rasterize_cpu.ABI_VERSION
    second = rasterize_cpu._build_and_load()
    assert not second.built_now and second.path == first.path
    assert [p.name for p in (tmp_path / "cpu-rasterizer").iterdir()] == [first.path.name]  # no temporary left over


def test_unloadable_cached_build_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GFT_CACHE", str(tmp_path))
    path = rasterize_cpu.library_path(rasterize_cpu.find_compiler())
    path.write_bytes(b"not a shared library")
    loaded = rasterize_cpu._build_and_load()
    assert loaded.built_now and loaded.lib.gft_abi_version() == rasterize_cpu.ABI_VERSION


def test_unwritable_cache_falls_back_to_the_temp_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GFT_CACHE", str(blocker))
    folder = rasterize_cpu._build_dir()
    assert folder.is_dir() and str(folder).startswith(tempfile.gettempdir()) and blocker not in folder.parents


def test_no_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GFT_CACHE", str(tmp_path))
    monkeypatch.setattr(rasterize_cpu, "find_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C.. compiler found"):
        rasterize_cpu._build_and_load()
    monkeypatch.setattr(rasterize_cpu, "find_compiler", lambda: ["false"])
    with pytest.raises(RuntimeError):
        rasterize_cpu._build_and_load()
    monkeypatch.setattr(rasterize_cpu, "find_compiler", lambda: [str(tmp_path / "no-such-c++")])
    with pytest.raises(RuntimeError, match="cannot be run"):
        rasterize_cpu._build_and_load()


def test_failed_compile_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text('extern "C" int gft_abi_version() { return }\n')
    monkeypatch.setenv("GFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rasterize_cpu, "SOURCES", (broken,))
    with pytest.raises(RuntimeError, match="compiling the CPU rasterizer failed"):
        rasterize_cpu._build_and_load()
    assert list((tmp_path / "cache" / "cpu-rasterizer").iterdir()) == []


@pytest.fixture
def broken_kernel(monkeypatch):
    """The kernel cannot be built in this process (as without a compiler); restores the real one afterwards."""

    def fail():
        raise RuntimeError("no C++ compiler found (set $CXX, or install g++ or clang++)")

    monkeypatch.setattr(rasterize_cpu, "_build_and_load", fail)
    monkeypatch.setattr(rasterize, "_cpu_fallback_warned", False)
    rasterize_cpu._cached_load.cache_clear()
    yield
    rasterize_cpu._cached_load.cache_clear()


def test_fallback_to_the_reference_warns_once(broken_kernel):
    tensors, cam = scene(50, 90), cameras(1)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = render(**tensors, camera=cam)
        explicit = render(**tensors, camera=cam, backend="cpu")
        again = render(**tensors, camera=cam)
    fallback = [w for w in caught if "compiled CPU rasterizer is unavailable" in str(w.message)]
    assert len(fallback) == 1, [str(w.message) for w in caught]
    assert "no C++ compiler found" in str(fallback[0].message) and "reference" in str(fallback[0].message)
    assert auto[2].backend == explicit[2].backend == again[2].backend == "reference"
    ref = render(**tensors, camera=cam, backend="reference")
    assert torch.equal(auto[0], ref[0])
    ok, error = rasterize_cpu.cpu_loadable()
    assert not ok and "no C++ compiler" in error
    assert rasterize_cpu.cpu_status()["available"] is False


def test_doctor_reports_the_fallback(broken_kernel):
    from gaussian_flametalk.scripts import doctor

    check = doctor.check_cpu_rasterizer()
    assert check.ok is False and "reference" in check.detail and "no C++ compiler" in check.detail


def test_doctor_reports_the_compiled_kernel():
    from gaussian_flametalk.scripts import doctor

    check = doctor.check_cpu_rasterizer()
    assert check.ok is True and "compiled kernel" in check.detail and check.info["library"].endswith(".so")


def test_cpu_status_reports_the_library():
    status = rasterize_cpu.cpu_status()
    assert status["available"] is True and status["error"] is None
    assert str(status["library"]).endswith(".so") and status["compiler"]
