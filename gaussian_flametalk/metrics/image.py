"""Image losses and metrics: masked L1, SSIM (11x11 Gaussian window, sigma 1.5), PSNR, and the silhouette figures of
a rendered alpha against a mask (the error in a band along the mask's outline, the alpha outside it).

Images are (B, H, W, C) floats in [0, 1]; weights are (B, H, W, 1) in [0, 1] (1 = counted), or None (all pixels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["boundary_band", "l1", "psnr", "silhouette_errors", "ssim", "ssim_map"]

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, H, W, C) values weighted by (B, H, W, 1) (over every element when weight is None)."""
    if weight is None:
        return values.mean()
    w = weight.expand_as(values)
    return (values * w).sum() / w.sum().clamp_min(1e-8)


def l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean absolute error, a scalar."""
    return _weighted_mean((pred - target).abs(), weight)


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """(size,) normalised 1-D Gaussian; the 2-D window is its outer product with itself."""
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (zero padding at the borders, as 3D Gaussian Splatting).

    The Gaussian blur is applied as two 1-D passes (rows, then columns): with zero padding that is exactly the 2-D
    convolution with the outer-product window, at 2 x 11 instead of 121 taps.

    Args:
        pred, target: (B, H, W, C).
    Returns:
        (B, H, W, C) SSIM values.
    """
    x, y = pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    c = x.shape[1]
    g = _gaussian_window(window, sigma, x)
    row = g.view(1, 1, 1, window).expand(5 * c, 1, 1, window).contiguous()
    col = g.view(1, 1, window, 1).expand(5 * c, 1, window, 1).contiguous()
    pad = window // 2
    # the five blurred maps in one grouped convolution pass each way
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    blurred = F.conv2d(F.conv2d(stack, row, padding=(0, pad), groups=5 * c), col, padding=(pad, 0), groups=5 * c)
    mu_x, mu_y, xx, yy, xy = blurred.split(c, dim=1)
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (num / den).permute(0, 2, 3, 1)


def ssim(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean SSIM, a scalar."""
    return _weighted_mean(ssim_map(pred, target), weight)


def psnr(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    """PSNR in dB for a peak of 1 over the weighted mean squared error."""
    mse = _weighted_mean((pred.detach() - target.detach()) ** 2, weight).item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W, 1) max over the (2 radius + 1)² square around each pixel."""
    x = mask.permute(0, 3, 1, 2)
    return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius).permute(0, 2, 3, 1)


def boundary_band(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W, 1) bool: pixels within ``radius`` pixels (chessboard distance) of the outline of ``mask > 0.5``.

    Args:
        mask: (B, H, W, 1) in [0, 1].
    """
    inside = (mask > 0.5).float()
    return (_dilate(inside, radius) - (1 - _dilate(1 - inside, radius))) > 0.5


def silhouette_errors(alpha: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None,
                      radius: int = 3) -> dict[str, float]:
    """How a rendered silhouette meets a mask.

    ``edge``: mean |alpha - mask| over the pixels within ``radius`` of the mask's outline (jagged or frayed outlines
    raise it); ``outside``: mean alpha over the pixels farther than ``radius`` outside the mask (floaters).

    Args:
        alpha, mask: (B, H, W, 1) in [0, 1]; weight: (B, H, W, 1) or None (pixels with weight 0 are not counted).
    """
    keep = torch.ones_like(mask) if weight is None else (weight > 0).to(mask.dtype)
    band = boundary_band(mask, radius).to(mask.dtype) * keep
    far = (1 - _dilate((mask > 0.5).to(mask.dtype), radius)) * keep
    edge = _weighted_mean((alpha - mask).abs(), band)
    outside = _weighted_mean(alpha, far)
    return {"edge": float(edge), "outside": float(outside)}
