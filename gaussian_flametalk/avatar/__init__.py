"""Avatar: the Gaussian rasterizer (gsplat on CUDA, a pure-PyTorch reference anywhere) and, built on it, the
triangle-bound Gaussian head avatar.

Importing this package needs neither gsplat nor CUDA.
"""

from .rasterize import RenderInfo, render, select_backend
from .rasterize_gsplat import gsplat_status
from .sh import eval_sh, num_sh_bases, rgb_to_sh, sh_to_color

__all__ = [
    "RenderInfo",
    "eval_sh",
    "gsplat_status",
    "num_sh_bases",
    "render",
    "rgb_to_sh",
    "select_backend",
    "sh_to_color",
]
