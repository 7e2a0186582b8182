"""Gaussian-splatting rasterizer: one API, three backends (gsplat on CUDA, a compiled multithreaded CPU kernel, a
tile-based pure-PyTorch reference anywhere).

Convention — all backends, the same as gsplat 1.5.3's ``rasterization`` in its default ``classic`` (non-antialiased)
mode with a pinhole camera, so that they agree to 1e-3 on the same scene:

* Camera: :class:`~gaussian_flametalk.geometry.camera.Camera` — OpenCV axes (x right, y down, z forward), world-to-camera
  4x4 ``viewmat``, intrinsics ``K`` in pixels, pixel ``(i, j)`` (row, column) centred at ``(j + 0.5, i + 0.5)``.
  A Gaussian is culled when its mean's camera-space z is outside ``[near, far]`` (gsplat's near_plane/far_plane).
* Gaussians: means (world), quaternions ``(w, x, y, z)`` (normalised internally), scales = standard deviations along
  the rotated axes (already activated, e.g. ``exp``), opacities in [0, 1] (already activated, e.g. ``sigmoid``).
  3D covariance ``R S S^T R^T``.
* Projection (EWA splatting): ``Sigma2d = J W Sigma W^T J^T`` with ``W`` the rotation of the viewmat and ``J`` the
  Jacobian of ``(fx x/z + cx, fy y/z + cy)``, evaluated with ``x/z`` clamped to
  ``[-cx/fx - 0.15 W/fx, (W - cx)/fx + 0.15 W/fx]`` (and likewise ``y/z``) — gsplat's and 3DGS's guard against
  Gaussians far outside the view. Then the low-pass dilation ``Sigma2d += eps2d * I`` with ``eps2d = 0.3`` (gsplat's
  default, no opacity compensation); Gaussians whose dilated determinant is not positive are culled.
* Screen-space extent: half-sizes ``r_x = ceil(k sqrt(Sigma2d_xx))``, ``r_y = ceil(k sqrt(Sigma2d_yy))`` with the
  opacity-aware ``k = min(3.33, sqrt(2 ln(255 opacity)))`` — the box outside which ``opacity * exp(-sigma) < 1/255``.
  Gaussians with opacity < 1/255 or whose box misses the image are culled (radii (0, 0), not visible). Each visible
  Gaussian is drawn in every 16x16 tile its box touches.
* Colour: with ``sh_degree=None`` the colours are used as given (any number of channels D). With ``sh_degree`` in 0..3
  they are real SH coefficients (N, K, 3) in gsplat's basis, order and constants (:mod:`.sh`), evaluated at the unit
  direction from the camera centre to the Gaussian mean, and the colour is ``max(SH + 0.5, 0)``.
* Compositing, per pixel, Gaussians sorted by camera-space depth of their means (front to back):
  ``sigma = 0.5 d^T Sigma2d^-1 d`` (``d`` = mean - pixel centre), ``alpha = min(0.999, opacity exp(-sigma))``,
  pairs with ``alpha < 1/255`` are skipped, and the pixel stops *before* the first Gaussian that would bring its
  transmittance to 1e-4 or below. ``image = sum_i c_i alpha_i T_i + T_final * background``, ``alpha = 1 - T_final``.

The numbers above are what gsplat 1.5.3's CUDA kernels and ``rasterization`` do, read from its source where its
documentation is silent or loose: the +0.5 / clamp of SH colours, the Jacobian clamp, the opacity-aware box (not a
plain 3-sigma one), the ``<=`` in the stopping rule. Its pure-PyTorch projection (``gsplat.cuda._torch_impl``) differs
from its CUDA kernel in using a fixed 3.33-sigma box.

Batching: pass a sequence of cameras (same size and planes) to render C views at once; each Gaussian tensor may be
shared by all views (leading dim N) or given per view (leading dims (C, N), e.g. per-frame deformed Gaussians).

Backends: ``gsplat`` (float32 CUDA, :mod:`.rasterize_gsplat`); ``cpu`` (float32 CPU, :mod:`.rasterize_cpu`: a C++
kernel compiled on first use, forward and analytic backward, multithreaded over tiles with
``torch.get_num_threads()`` threads or ``num_threads``); ``reference`` (any device and float dtype,
:mod:`.rasterize_ref`, the readable specification the other two are tested against). ``auto`` picks gsplat for float32
CUDA tensors, the compiled kernel for float32 CPU tensors, and the reference otherwise (float64, other devices) or,
with one warning, when the chosen compiled backend cannot be loaded.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..geometry.camera import Camera
from ..registry import Registry
from .rasterize_cpu import cpu_loadable
from .rasterize_gsplat import gsplat_loadable, gsplat_status
from .sh import MAX_SH_DEGREE, num_sh_bases

__all__ = ["RASTERIZERS", "Backend", "RenderInfo", "gsplat_status", "render", "select_backend"]

Backend = Literal["auto", "gsplat", "cpu", "reference"]
EPS2D = 0.3


@dataclass
class RenderInfo:
    """What densification and debugging need, per camera (C = 1 for a single :class:`Camera`).

    Attributes:
        means2d: (C, N, 2) projected means in pixels (meaningful where visible). When the Gaussians require grad,
            ``means2d.grad`` holds dL/d(means2d) after ``backward()`` (the screen-space gradient of 3DGS densification).
        radii: (C, N, 2) int32 half-sizes of the screen-space boxes, (0, 0) for culled Gaussians.
        depths: (C, N) camera-space z of the means.
        backend: "gsplat", "cpu" or "reference".
    """

    means2d: torch.Tensor
    radii: torch.Tensor
    depths: torch.Tensor
    backend: str

    @property
    def visible(self) -> torch.Tensor:
        """(C, N) bool: drawn in this view."""
        return (self.radii > 0).all(dim=-1)


def render(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    camera: Camera | Sequence[Camera],
    background: torch.Tensor | None = None,
    sh_degree: int | None = None,
    *,
    backend: Backend = "auto",
    eps2d: float = EPS2D,
    num_threads: int | None = None,
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, RenderInfo]:
    """Render 3D Gaussians (convention in the module docstring).

    Args:
        means: (N, 3) or (C, N, 3) world positions.
        quats: (N, 4) or (C, N, 4) rotations (w, x, y, z).
        scales: (N, 3) or (C, N, 3) standard deviations.
        opacities: (N,) or (C, N) in [0, 1].
        colors: with ``sh_degree=None``: (N, D) or (C, N, D) colours; else (N, K, 3) or (C, N, K, 3) SH coefficients,
            K >= (sh_degree + 1) ** 2.
        camera: one :class:`Camera`, or a sequence of C cameras of equal size and near/far planes.
        background: (D,) or (C, D) colour behind the Gaussians; black when None.
        sh_degree: None for plain colours, or 0..3.
        backend: "auto" (gsplat for float32 CUDA tensors when its extension loads, the compiled CPU kernel for float32
            CPU tensors when it builds, else the reference), "gsplat", "cpu" or "reference".
        eps2d: low-pass dilation added to the 2D covariances' diagonal.
        num_threads: threads of the cpu backend (default ``torch.get_num_threads()``); ignored by the others.
            The cpu backend differentiates means, quats, scales, opacities, colours / SH and the background, not the
            camera (``auto`` uses the reference when the camera requires grad) nor ``info.depths``.
        check_finite: scan the inputs for NaN / inf (a ValueError naming them); False only for a caller that renders
            many frames of inputs it has checked itself (the scan of 16 SH bands costs ~5 % of a 256 px CPU frame).
    Returns:
        image (H, W, D) and alpha (H, W, 1) for one camera, (C, H, W, D) and (C, H, W, 1) for a sequence; and the
        :class:`RenderInfo` (always with a leading camera dim).
    """
    cameras = [camera] if isinstance(camera, Camera) else list(camera)
    batched = not isinstance(camera, Camera)
    n_cams = len(cameras)
    if n_cams == 0:
        raise ValueError("render needs at least one camera")
    first = cameras[0]
    if any((c.width, c.height, c.near, c.far) != (first.width, first.height, first.near, first.far) for c in cameras):
        raise ValueError("all cameras of one render call need the same width, height, near and far")

    n_chan = _check_shapes(means, quats, scales, opacities, colors, sh_degree, n_cams)
    dtype, device = means.dtype, means.device
    viewmats = torch.stack([c.viewmat for c in cameras]).to(device=device, dtype=dtype)
    Ks = torch.stack([c.K for c in cameras]).to(device=device, dtype=dtype)
    if background is None:
        background = torch.zeros(n_chan, dtype=dtype, device=device)
    if background.shape not in ((n_chan,), (n_cams, n_chan)):
        raise ValueError(f"background must be ({n_chan},) or ({n_cams}, {n_chan}), got {tuple(background.shape)}")
    named = {
        "means": means,
        "quats": quats,
        "scales": scales,
        "opacities": opacities,
        "colors": colors,
        "background": background,
        "camera.viewmat": viewmats,
        "camera.K": Ks,
    }
    for name, t in named.items():
        if t.dtype != dtype or t.device != device:
            raise ValueError(f"{name} is {t.dtype} on {t.device}, expected {dtype} on {device} like means")
    chosen = select_backend(backend, device, dtype)
    if chosen == "cpu" and (viewmats.requires_grad or Ks.requires_grad):  # the kernel has no camera gradients
        if backend == "cpu":
            raise ValueError("the cpu backend has no camera gradients; use backend='reference' for a camera that requires grad")
        chosen = "reference"
    if check_finite:
        _check_finite(named, chosen)

    item_dims = {"means": 1, "quats": 1, "scales": 1, "opacities": 0, "colors": 1 if sh_degree is None else 2}
    geometry_shared = means.dim() == 2 and quats.dim() == 2 and scales.dim() == 2 and opacities.dim() == 1
    per_cam = {k: _per_camera(named[k], n_cams, item_dims[k]) for k in item_dims}
    rasterize_impl = RASTERIZERS.build(chosen, geometry_shared=geometry_shared, num_threads=num_threads)
    image, alpha, means2d, radii, depths = rasterize_impl(
        **per_cam,
        viewmats=viewmats,
        Ks=Ks,
        width=first.width,
        height=first.height,
        near=first.near,
        far=first.far,
        backgrounds=background.expand(n_cams, n_chan),
        sh_degree=sh_degree,
        eps2d=eps2d,
    )
    if means2d.requires_grad:
        means2d.retain_grad()
    info = RenderInfo(means2d=means2d, radii=radii, depths=depths, backend=chosen)
    if batched:
        return image, alpha, info
    return image[0], alpha[0], info


def _check_shapes(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    sh_degree: int | None,
    n_cams: int,
) -> int:
    """Validate the Gaussian tensors' shapes; returns the number of colour channels D."""
    if means.dim() not in (2, 3) or means.shape[-1] != 3:
        raise ValueError(f"means must be (N, 3) or (C, N, 3), got {tuple(means.shape)}")
    if means.dim() == 3 and means.shape[0] != n_cams:
        raise ValueError(f"means has {means.shape[0]} views but {n_cams} cameras were given")
    if not means.is_floating_point():
        raise ValueError(f"means must be floating point, got {means.dtype}")
    n = means.shape[-2]
    if sh_degree is None:
        item = (colors.shape[-1],) if colors.dim() >= 1 else ()
    else:
        if not 0 <= sh_degree <= MAX_SH_DEGREE:
            raise ValueError(f"sh_degree must be None or in 0..{MAX_SH_DEGREE}, got {sh_degree}")
        if colors.dim() < 2 or colors.shape[-1] != 3 or colors.shape[-2] < num_sh_bases(sh_degree):
            raise ValueError(
                f"SH colors must be (N, K, 3) or (C, N, K, 3) with K >= {num_sh_bases(sh_degree)}, "
                f"got {tuple(colors.shape)}"
            )
        item = tuple(colors.shape[-2:])
    for name, t, tail in (
        ("quats", quats, (4,)),
        ("scales", scales, (3,)),
        ("opacities", opacities, ()),
        ("colors", colors, item),
    ):
        if tuple(t.shape) not in ((n, *tail), (n_cams, n, *tail)):
            raise ValueError(f"{name} must be {(n, *tail)} or {(n_cams, n, *tail)}, got {tuple(t.shape)}")
    return 3 if sh_degree is not None else colors.shape[-1]


def _check_finite(named: dict[str, torch.Tensor], backend: str = "reference") -> None:
    """Raise ValueError naming every tensor that holds NaN or inf (one device sync; the cpu backend's own scan there)."""
    if backend == "cpu":
        from .rasterize_cpu import count_nonfinite

        finite = [count_nonfinite(t) == 0 for t in named.values()]
    else:
        finite = torch.stack([torch.isfinite(t).all() for t in named.values()]).tolist()
    bad = [name for name, ok in zip(named, finite) if not ok]
    if bad:
        raise ValueError(f"render input contains NaN or inf: {', '.join(bad)}")


def _per_camera(t: torch.Tensor, n_cams: int, item_dims: int) -> torch.Tensor:
    """(N, *item) or (C, N, *item) -> (C, N, *item) (a broadcast view when shared)."""
    if t.dim() == item_dims + 2:
        return t
    return t.expand(n_cams, *t.shape)


RASTERIZERS = Registry("rasterizer backend", "backend")


def _loadable(check) -> tuple[bool | None, str]:
    ok, error = check()
    return (True, "loads") if ok else (False, str(error))


def _gsplat_available() -> tuple[bool | None, str]:
    if not torch.cuda.is_available():
        return None, "no CUDA GPU here (gsplat renders only with CUDA)"
    return _loadable(gsplat_loadable)


@RASTERIZERS.register("gsplat", help="gsplat's CUDA kernels (float32 CUDA tensors)", available=_gsplat_available)
def _gsplat(arg: str | None, geometry_shared: bool = False, num_threads: int | None = None):
    from .rasterize_gsplat import rasterize

    return functools.partial(rasterize, geometry_shared=geometry_shared)


@RASTERIZERS.register("cpu", help="the compiled multithreaded CPU kernel (float32 CPU tensors)",
                      available=lambda: _loadable(cpu_loadable))
def _cpu(arg: str | None, geometry_shared: bool = False, num_threads: int | None = None):
    from .rasterize_cpu import rasterize

    return functools.partial(rasterize, num_threads=num_threads)


@RASTERIZERS.register("reference", help="the tile-based PyTorch reference (any device and dtype; the specification)")
def _reference(arg: str | None, geometry_shared: bool = False, num_threads: int | None = None):
    from .rasterize_ref import rasterize

    return rasterize


_cpu_fallback_warned = False


def select_backend(backend: Backend, device: torch.device, dtype: torch.dtype) -> Literal["gsplat", "cpu", "reference"]:
    """Resolve ``backend`` for tensors on ``device`` with ``dtype``.

    "auto" picks gsplat for float32 CUDA tensors when its CUDA extension loads (compiling it the first time, which can
    take minutes), the compiled CPU kernel for float32 CPU tensors when it builds (seconds, once per machine), else the
    reference. "gsplat" raises when it cannot be used; "cpu" raises for tensors it cannot take (not float32 on the
    CPU) and falls back to the reference, with one warning per process, when the kernel cannot be built or loaded.
    """
    if backend == "reference":
        return "reference"
    if backend not in ("auto", "gsplat", "cpu"):
        raise ValueError(f"backend must be 'auto', 'gsplat', 'cpu' or 'reference', got {backend!r}")
    if backend == "cpu" or (backend == "auto" and device.type == "cpu"):
        if device.type != "cpu" or dtype != torch.float32:
            if backend == "cpu":
                raise ValueError(f"the cpu backend needs float32 CPU tensors, got {dtype} on {device}")
            return "reference"
        ok, error = cpu_loadable()
        if ok:
            return "cpu"
        _warn_cpu_fallback(error)
        return "reference"
    if device.type != "cuda" or dtype != torch.float32:
        if backend == "gsplat":
            raise ValueError(f"the gsplat backend needs float32 CUDA tensors, got {dtype} on {device}")
        return "reference"
    ok, error = gsplat_loadable()
    if ok:
        return "gsplat"
    if backend == "gsplat":
        raise RuntimeError(f"gsplat cannot be used: {error}")
    warnings.warn(f"gsplat unavailable ({error}); using the much slower reference rasterizer", stacklevel=3)
    return "reference"


def _warn_cpu_fallback(error: str | None) -> None:
    global _cpu_fallback_warned
    if _cpu_fallback_warned:
        return
    _cpu_fallback_warned = True
    warnings.warn(
        f"the compiled CPU rasterizer is unavailable ({error}); rendering with the PyTorch reference instead, which is "
        "about 10x slower (gft doctor shows the details)",
        RuntimeWarning,
        stacklevel=4,
    )
