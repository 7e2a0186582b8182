"""gsplat backend: maps the convention of :mod:`gaussian_flametalk.avatar.rasterize` onto ``gsplat.rasterization``.

gsplat (1.5.3) is imported inside :func:`rasterize` only, so this module imports without gsplat or CUDA.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
from pathlib import Path

import torch

TILE_SIZE = 16


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near: float,
    far: float,
    backgrounds: torch.Tensor,
    sh_degree: int | None,
    eps2d: float,
    geometry_shared: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gsplat backend of :func:`gaussian_flametalk.avatar.rasterize.render`, on per-camera float32 CUDA tensors.

    Args:
        means (C, N, 3), quats (C, N, 4), scales (C, N, 3), opacities (C, N): Gaussians per camera.
        colors: (C, N, D), or (C, N, K, 3) SH coefficients when ``sh_degree`` is not None.
        viewmats (C, 4, 4), Ks (C, 3, 3), width, height, near, far: the cameras.
        backgrounds: (C, D).
        sh_degree, eps2d: as in ``render``.
        geometry_shared: means, quats, scales and opacities are the same for every camera (broadcast views), so
            gsplat projects them once per camera from one copy; otherwise each camera is its own gsplat batch entry.
    Returns:
        image (C, H, W, D), alpha (C, H, W, 1), means2d (C, N, 2), radii (C, N, 2), depths (C, N).
    """
    from gsplat import rasterization

    common = dict(
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        sh_degree=sh_degree,
        packed=False,
        tile_size=TILE_SIZE,
        render_mode="RGB",
        rasterize_mode="classic",
    )
    if geometry_shared:
        image, alpha, meta = rasterization(
            means[0], quats[0], scales[0], opacities[0], colors, viewmats, Ks, backgrounds=backgrounds, **common
        )
        return image, alpha, meta["means2d"], meta["radii"], meta["depths"]
    # one batch entry per camera: gsplat's outputs gain a camera dim of 1
    image, alpha, meta = rasterization(
        means,
        quats,
        scales,
        opacities,
        colors[:, None],
        viewmats[:, None],
        Ks[:, None],
        backgrounds=backgrounds[:, None],
        **common,
    )
    means2d = _grad_exposing_view(meta["means2d"], meta["means2d"].shape[:1] + meta["means2d"].shape[2:])
    return image[:, 0], alpha[:, 0], means2d, meta["radii"][:, 0], meta["depths"][:, 0]


def _grad_exposing_view(consumed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A detached reshape of ``consumed`` whose ``.grad`` receives (accumulates) ``consumed``'s gradient."""
    view = consumed.detach().reshape(shape)
    if consumed.requires_grad:

        def deposit(grad: torch.Tensor) -> None:
            view.grad = grad.reshape(shape) if view.grad is None else view.grad + grad.reshape(shape)

        consumed.register_hook(deposit)
    return view


def gsplat_status(build: bool = False) -> dict[str, object]:
    """Report on gsplat without compiling anything unless ``build`` is True.

    Returns a dict:
        importable (bool), version (str | None), cuda (bool: torch sees a GPU),
        cuda_home (str | None: the CUDA toolkit torch would compile with),
        prebuilt (bool: gsplat ships a compiled extension), jit_cached (bool: a JIT build of it is in torch's extension
        cache), extension (bool | None: whether the CUDA extension loads; None when not tried), error (str | None).
    With ``build=True`` the extension is imported, which JIT-compiles it first when neither prebuilt nor cached
    (minutes; needs the CUDA toolkit). Without it the extension is only reported when this process already loaded it.
    """
    from torch.utils import cpp_extension

    status: dict[str, object] = {
        "importable": False,
        "version": None,
        "cuda": torch.cuda.is_available(),
        "cuda_home": cpp_extension.CUDA_HOME,
        "prebuilt": False,
        "jit_cached": False,
        "extension": None,
        "error": None,
    }
    try:
        import gsplat
    except Exception as exc:  # not installed, or broken by its own imports
        status["error"] = f"{type(exc).__name__}: {exc} (pip install gsplat==1.5.3)"
        return status
    status["importable"] = True
    status["version"] = importlib.metadata.version("gsplat")
    package = Path(gsplat.__file__).parent
    status["prebuilt"] = any(package.glob("csrc*.so")) or any(package.glob("csrc*.pyd"))
    cache = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    status["jit_cached"] = any(cache.glob("gsplat_cuda/gsplat_cuda.so")) or any(cache.glob("*/gsplat_cuda/gsplat_cuda.so"))
    if build or "gsplat.cuda._backend" in sys.modules:
        try:
            from gsplat.cuda import _backend

            status["extension"] = _backend._C is not None
            if _backend._C is None:
                status["error"] = "gsplat's CUDA extension is not available (no CUDA toolkit found to compile it)"
        except Exception as exc:  # a failed compile surfaces as anything from OSError to RuntimeError
            status["extension"] = False
            status["error"] = f"gsplat's CUDA extension failed to load: {type(exc).__name__}: {exc}"
    return status


@functools.lru_cache(maxsize=1)
def gsplat_loadable() -> tuple[bool, str | None]:
    """(whether gsplat's CUDA extension loads, why not); loads (maybe compiles) it once per process."""
    status = gsplat_status(build=True)
    return bool(status["extension"]), status["error"]
