"""Compiled CPU backend: the convention of :mod:`gaussian_flametalk.avatar.rasterize` in C++ (float32, multithreaded).

The kernel (``csrc/rasterize_cpu.cpp``; the library also carries the triangle-binding kernel ``csrc/bind_cpu.cpp`` that
:mod:`.binding` uses) does the whole forward pass — EWA projection with the
Jacobian clamp and ``eps2d`` dilation, SH evaluation, tile binning with a per-tile depth sort, front-to-back
compositing with early termination — and its analytic backward, on raw float32 buffers: threads over Gaussians for
the projection and over 16x16 tiles for the compositing (each tile's pixel rows as SIMD lanes; the backward writes
one gradient record per (tile, Gaussian) pair and reduces them per Gaussian, so no atomics and the results do not
depend on the thread count). Two autograd functions wrap
it: :class:`_Project` (means, quats, scales, SH -> means2d, conics, colours) and :class:`_Composite` (screen-space
Gaussians -> image and transmittance), so that ``means2d`` is an intermediate tensor whose retained ``.grad`` is the
screen-space gradient densification uses, exactly as with the reference.

Build: on first use the source is compiled with the system C++ compiler (``$CXX``, else ``c++``, ``g++`` or
``clang++``) into ``$GFT_CACHE/cpu-rasterizer`` (default ``~/.cache/gaussian-flametalk/cpu-rasterizer``; a folder in
the temporary directory when that is not writable), named by a
hash of the source, flags and compiler, and loaded with :mod:`ctypes`. It has a plain C ABI and includes neither
Python nor torch headers, so it compiles in a few seconds, needs no ninja or pybind11, and one build serves every torch
version. Threads are ``std::thread`` (``torch.get_num_threads()`` of them unless told otherwise), not OpenMP: the
build works with compilers without OpenMP and never loads a second OpenMP runtime beside torch's.
:func:`cpu_loadable` reports whether it works; :mod:`.rasterize` falls back to the reference with one warning when not.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from ..atomic import atomic_write

CSRC = Path(__file__).parent / "csrc"
#: the translation units of the one library (rasterizer + triangle binding); the headers they include are hashed too
SOURCES = (CSRC / "rasterize_cpu.cpp", CSRC / "bind_cpu.cpp")
HEADERS = (CSRC / "parallel.h",)
ABI_VERSION = 3
TILE_SIZE = 16
# -fno-math-errno and -fno-trapping-math let the compiler inline sqrt and turn masked lanes into selects (results
# unchanged); -ffp-contract=off keeps every float operation individually rounded, so the forward and the backward
# compute bitwise the same alphas and hence the same cut-off decisions. No -ffast-math (reordered sums, no NaN
# handling) and no -march=native (a cached build could be loaded on another CPU of a shared home directory): the
# compositing loops get an AVX2 variant through target_clones, picked when the library loads (x86-64 Linux).
CXX_FLAGS = (
    "-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
)
BUILD_TIMEOUT_S = 300

__all__ = ["cache_dir", "cpu_loadable", "cpu_status", "load_library", "rasterize"]


def cache_dir() -> Path:
    """Where the compiled kernel is kept: ``$GFT_CACHE/cpu-rasterizer`` or ``~/.cache/gaussian-flametalk/cpu-rasterizer``."""
    root = os.environ.get("GFT_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "gaussian-flametalk"
    return base / "cpu-rasterizer"


def _build_dir() -> Path:
    """:func:`cache_dir` when it can be created and written, else a per-user folder in the system's temporary dir."""
    user = os.getuid() if hasattr(os, "getuid") else "user"
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"gaussian-flametalk-{user}" / "cpu-rasterizer"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    raise RuntimeError(f"no writable folder for the compiled CPU rasterizer (tried {cache_dir()} and the temp dir)")


def find_compiler() -> list[str] | None:
    """The C++ compiler command: ``$CXX`` if set, else the first of c++, g++, clang++ on PATH; None if none."""
    if os.environ.get("CXX"):
        return os.environ["CXX"].split()
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _compiler_id(cmd: list[str]) -> str:
    try:
        out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"the C++ compiler {' '.join(cmd)!r} cannot be run ({exc}); set $CXX or install g++") from exc
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} --version failed: {out.stderr.strip()[:200]}")
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


def library_path(compiler: list[str]) -> Path:
    """The cache file the current source builds to with ``compiler``."""
    key = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        key.update(path.read_bytes())
    key.update(" ".join(CXX_FLAGS).encode())
    key.update(_compiler_id(compiler).encode())
    key.update(f"{platform.system()}-{platform.machine()}-abi{ABI_VERSION}".encode())
    return _build_dir() / f"gft_rasterize_cpu_{key.hexdigest()[:16]}.so"


def _build(compiler: list[str], target: Path) -> None:
    """Compile the kernel to ``target`` atomically (a temporary name, then a rename: parallel builds are harmless)."""
    with atomic_write(target, ".so") as tmp:
        cmd = [*compiler, *CXX_FLAGS, *map(str, SOURCES), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling the CPU rasterizer failed ({' '.join(cmd)}):\n{proc.stderr.strip()[-2000:]}")


@dataclass
class _Loaded:
    lib: ctypes.CDLL
    path: Path
    compiler: str
    built_now: bool


def _build_and_load() -> _Loaded:
    """Compile the kernel if its cached build is missing, then load it; raises with the reason when that fails."""
    missing = [str(p) for p in (*SOURCES, *HEADERS) if not p.is_file()]
    if missing:
        raise RuntimeError(f"the CPU rasterizer's source is missing ({', '.join(missing)})")
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set $CXX, or install g++ or clang++)")
    path = library_path(compiler)
    built_now = not path.is_file()
    if built_now:
        _build(compiler, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        if built_now:
            raise
        _build(compiler, path)  # a cached build that no longer loads (e.g. a changed system library): rebuild it once
        built_now = True
        lib = ctypes.CDLL(str(path))
    if lib.gft_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{path} has ABI {lib.gft_abi_version()}, expected {ABI_VERSION}")
    _declare(lib)
    return _Loaded(lib, path, " ".join(compiler), built_now)


def _declare(lib: ctypes.CDLL) -> None:
    P, I64, I32, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.gft_project_forward.restype = I64
    lib.gft_project_forward.argtypes = [
        I64, I64, P, I64, P, I64, P, I64, P, I64, P, I64, I64, I32,  # C, N, Gaussians, SH
        P, P, I32, I32, F32, F32, F32,  # cameras, size, planes, eps2d
        P, P, P, P, P, P, I32,  # outputs, threads
    ]
    lib.gft_bin_fill.restype = None
    lib.gft_bin_fill.argtypes = [I64, I64, P, P, P, I32, I32, P, P, I32]
    lib.gft_composite_forward.restype = None
    lib.gft_composite_forward.argtypes = [I64, I64, I32, P, P, P, P, I64, P, I64, P, I32, I32, P, P, P, P, P, P, I32]
    lib.gft_composite_backward.restype = None
    lib.gft_composite_backward.argtypes = [
        I64, I64, I32, P, P, P, P, I64, P, I64, P, I32, I32, P, P,  # as the forward
        P, P, P, P,  # trans, ncontrib, grad image, grad alpha
        P, P, P, P, P, I32,  # outputs, threads
    ]
    lib.gft_bind_forward.restype = None
    lib.gft_bind_forward.argtypes = [I64, I64, P, P, I64, P, P, P, P, P, P, P, I32]
    lib.gft_count_nonfinite.restype = I64
    lib.gft_count_nonfinite.argtypes = [P, I64, I32]
    lib.gft_project_backward.restype = None
    lib.gft_project_backward.argtypes = [
        I64, I64, P, I64, P, I64, P, I64, P, I64, I64, I32,  # C, N, Gaussians, SH
        P, P, I32, I32, F32,  # cameras, size, eps2d
        P, P, P, P, P,  # radii, colours, grads in
        P, P, P, P, I32,  # grads out, threads
    ]


@functools.lru_cache(maxsize=1)
def _cached_load() -> tuple[_Loaded | None, str | None]:
    try:
        return _build_and_load(), None
    except Exception as exc:  # no compiler, a failed compile, an unloadable library: all mean "use the reference"
        return None, f"{type(exc).__name__}: {exc}"


def cpu_loadable() -> tuple[bool, str | None]:
    """(whether the compiled kernel works here, why not); builds (seconds) and loads it once per process."""
    loaded, error = _cached_load()
    return loaded is not None, error


def load_library() -> ctypes.CDLL:
    """The loaded kernel; raises RuntimeError with the reason when it cannot be built or loaded."""
    loaded, error = _cached_load()
    if loaded is None:
        raise RuntimeError(f"the compiled CPU rasterizer is unavailable: {error}")
    return loaded.lib


def cpu_status(build: bool = True) -> dict[str, object]:
    """For ``gft doctor``: available (bool | None when not tried), library, compiler, built_now, cache, error."""
    status: dict[str, object] = {"available": None, "library": None, "compiler": None, "built_now": False,
                                 "cache": str(cache_dir()), "error": None, "threads": torch.get_num_threads()}
    compiler = find_compiler()
    status["compiler"] = " ".join(compiler) if compiler else None
    if not build and _cached_load.cache_info().currsize == 0:
        return status
    loaded, error = _cached_load()
    status["available"] = loaded is not None
    status["error"] = error
    if loaded is not None:
        status.update(library=str(loaded.path), compiler=loaded.compiler, built_now=loaded.built_now)
    return status


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _per_view(t: torch.Tensor, n_views: int) -> tuple[torch.Tensor, int]:
    """(C, N, *item) tensor -> (contiguous float32 buffer, per-view stride in elements: 0 when shared by all views)."""
    t = t.detach()
    if n_views > 1 and t.stride(0) == 0:
        return t[0].contiguous(), 0
    t = t.contiguous()
    return t, t[0].numel() if n_views > 0 and t.shape[0] > 0 else 0


@dataclass(frozen=True)
class _Settings:
    n_views: int
    n: int
    width: int
    height: int
    near: float
    far: float
    eps2d: float
    sh_degree: int  # -1 for plain colours
    threads: int


class _Project(torch.autograd.Function):
    """means, quats, scales (, SH coefficients) -> means2d, conics, SH colours; plus depths, radii and the tile lists."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, coeffs, viewmats, Ks, cfg: _Settings):
        lib = load_library()
        C, N = cfg.n_views, cfg.n
        m, m_vs = _per_view(means, C)
        q, q_vs = _per_view(quats, C)
        s, s_vs = _per_view(scales, C)
        o, o_vs = _per_view(opacities, C)
        viewmats, Ks = viewmats.detach().contiguous(), Ks.detach().contiguous()
        if coeffs is not None:
            k, k_vs = _per_view(coeffs, C)
            coeffs_k = coeffs.shape[-2]
        else:
            k, k_vs, coeffs_k = None, 0, 0
        opts = dict(dtype=torch.float32)
        means2d = torch.empty(C, N, 2, **opts)
        conics = torch.empty(C, N, 3, **opts)
        depths = torch.empty(C, N, **opts)
        radii = torch.empty(C, N, 2, dtype=torch.int32)
        colors = torch.empty(C, N, 3, **opts) if coeffs is not None else torch.empty(0, **opts)
        tiles = C * math_ceil_div(cfg.width, TILE_SIZE) * math_ceil_div(cfg.height, TILE_SIZE)
        offsets = torch.empty(tiles + 1, dtype=torch.int64)
        n_pairs = lib.gft_project_forward(
            C, N, _ptr(m), m_vs, _ptr(q), q_vs, _ptr(s), s_vs, _ptr(o), o_vs, _ptr(k), k_vs, coeffs_k, cfg.sh_degree,
            _ptr(viewmats), _ptr(Ks), cfg.width, cfg.height, cfg.near, cfg.far, cfg.eps2d,
            _ptr(means2d), _ptr(conics), _ptr(depths), _ptr(radii), _ptr(colors) if coeffs is not None else None,
            _ptr(offsets), cfg.threads,
        )
        ids = torch.empty(n_pairs, dtype=torch.int32)
        lib.gft_bin_fill(C, N, _ptr(means2d), _ptr(radii), _ptr(depths), cfg.width, cfg.height, _ptr(offsets),
                         _ptr(ids), cfg.threads)
        ctx.cfg = cfg
        ctx.strides = (m_vs, q_vs, s_vs, k_vs, coeffs_k)
        ctx.save_for_backward(m, q, s, k, viewmats, Ks, radii, colors)
        ctx.mark_non_differentiable(depths, radii, offsets, ids)
        return means2d, conics, colors, depths, radii, offsets, ids

    @staticmethod
    @once_differentiable
    def backward(ctx, g_means2d, g_conics, g_colors, *_):
        lib = load_library()
        cfg = ctx.cfg
        C, N = cfg.n_views, cfg.n
        m, q, s, k, viewmats, Ks, radii, colors = ctx.saved_tensors
        m_vs, q_vs, s_vs, k_vs, coeffs_k = ctx.strides
        zeros = functools.partial(torch.zeros, dtype=torch.float32)
        g_means2d = zeros(C, N, 2) if g_means2d is None else g_means2d.contiguous()
        g_conics = zeros(C, N, 3) if g_conics is None else g_conics.contiguous()
        has_sh = cfg.sh_degree >= 0
        if has_sh:
            g_colors = zeros(C, N, 3) if g_colors is None else g_colors.contiguous()
        out_means = torch.empty(C, N, 3)
        out_quats = torch.empty(C, N, 4)
        out_scales = torch.empty(C, N, 3)
        out_coeffs = torch.empty(C, N, coeffs_k, 3) if has_sh else None
        lib.gft_project_backward(
            C, N, _ptr(m), m_vs, _ptr(q), q_vs, _ptr(s), s_vs, _ptr(k), k_vs, coeffs_k, cfg.sh_degree,
            _ptr(viewmats), _ptr(Ks), cfg.width, cfg.height, cfg.eps2d,
            _ptr(radii), _ptr(colors) if has_sh else None, _ptr(g_means2d), _ptr(g_conics),
            _ptr(g_colors) if has_sh else None, _ptr(out_means), _ptr(out_quats), _ptr(out_scales), _ptr(out_coeffs),
            cfg.threads,
        )
        return out_means, out_quats, out_scales, None, out_coeffs, None, None, None


def count_nonfinite(t: torch.Tensor, threads: int | None = None) -> int:
    """Number of NaN / inf entries of a float32 CPU tensor (a multithreaded scan, no temporary tensor)."""
    if t.dtype != torch.float32 or t.device.type != "cpu":
        raise ValueError(f"count_nonfinite needs a float32 CPU tensor, got {t.dtype} on {t.device}")
    t = t.detach()
    if t.dim() > 0 and t.shape[0] > 1 and t.stride(0) == 0:
        t = t[0]
    t = t.contiguous()
    return int(load_library().gft_count_nonfinite(_ptr(t), t.numel(), threads or torch.get_num_threads()))


class _Composite(torch.autograd.Function):
    """Screen-space Gaussians (C, N, ...), tile lists and backgrounds (C, D) -> image (C, H, W, D), alpha (C, H, W)."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, backgrounds, radii, offsets, ids, cfg: _Settings):
        lib = load_library()
        C, N = cfg.n_views, cfg.n
        means2d, conics = means2d.detach().contiguous(), conics.detach().contiguous()
        o, o_vs = _per_view(opacities, C)
        col, c_vs = _per_view(colors, C)
        bg = backgrounds.detach().contiguous()
        D = colors.shape[-1]
        image = torch.empty(C, cfg.height, cfg.width, D)
        alpha = torch.empty(C, cfg.height, cfg.width, 1)
        trans = torch.empty(C, cfg.height, cfg.width)
        ncontrib = torch.empty(C, cfg.height, cfg.width, dtype=torch.int32)
        lib.gft_composite_forward(
            C, N, D, _ptr(means2d), _ptr(conics), _ptr(radii), _ptr(o), o_vs, _ptr(col), c_vs, _ptr(bg),
            cfg.width, cfg.height, _ptr(offsets), _ptr(ids), _ptr(image), _ptr(alpha), _ptr(trans), _ptr(ncontrib),
            cfg.threads,
        )
        ctx.cfg = cfg
        ctx.strides = (o_vs, c_vs, D)
        ctx.save_for_backward(means2d, conics, radii, o, col, bg, offsets, ids, trans, ncontrib)
        return image, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, g_image, g_alpha):
        lib = load_library()
        cfg = ctx.cfg
        C, N = cfg.n_views, cfg.n
        o_vs, c_vs, D = ctx.strides
        means2d, conics, radii, o, col, bg, offsets, ids, trans, ncontrib = ctx.saved_tensors
        g_image = torch.zeros(C, cfg.height, cfg.width, D) if g_image is None else g_image.contiguous()
        g_alpha = torch.zeros(C, cfg.height, cfg.width, 1) if g_alpha is None else g_alpha.contiguous()
        out_means2d = torch.empty(C, N, 2)
        out_conics = torch.empty(C, N, 3)
        out_opac = torch.empty(C, N)
        out_colors = torch.empty(C, N, D)
        out_bg = torch.empty(C, D)
        lib.gft_composite_backward(
            C, N, D, _ptr(means2d), _ptr(conics), _ptr(radii), _ptr(o), o_vs, _ptr(col), c_vs, _ptr(bg),
            cfg.width, cfg.height, _ptr(offsets), _ptr(ids), _ptr(trans), _ptr(ncontrib), _ptr(g_image), _ptr(g_alpha),
            _ptr(out_means2d), _ptr(out_conics), _ptr(out_opac), _ptr(out_colors), _ptr(out_bg), cfg.threads,
        )
        return out_means2d, out_conics, out_opac, out_colors, out_bg, None, None, None, None


def math_ceil_div(a: int, b: int) -> int:
    return -(-a // b)


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
    num_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The compiled CPU backend of :func:`gaussian_flametalk.avatar.rasterize.render`, on per-camera float32 tensors.

    Arguments and returns as :func:`gaussian_flametalk.avatar.rasterize_ref.rasterize`, plus ``num_threads`` (default
    ``torch.get_num_threads()``). ``depths`` carries no gradient here.
    """
    for name, t in (("means", means), ("viewmats", viewmats)):
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"the cpu backend needs float32 CPU tensors, got {name} as {t.dtype} on {t.device}")
    n_views, n = opacities.shape
    threads = int(num_threads) if num_threads else torch.get_num_threads()
    if threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    cfg = _Settings(n_views, n, int(width), int(height), float(near), float(far), float(eps2d),
                    -1 if sh_degree is None else int(sh_degree), threads)
    coeffs = colors if sh_degree is not None else None
    means2d, conics, sh_colors, depths, radii, offsets, ids = _Project.apply(
        means, quats, scales, opacities, coeffs, viewmats, Ks, cfg
    )
    image, alpha = _Composite.apply(
        means2d, conics, opacities, sh_colors if sh_degree is not None else colors, backgrounds, radii, offsets, ids,
        cfg,
    )
    return image, alpha, means2d, radii, depths
