"""Real spherical harmonics, degree 0-3, in the basis, ordering and sign convention of gsplat / 3D Gaussian Splatting.

Coefficients are stored per Gaussian as ``(K, 3)`` with ``K = (degree + 1) ** 2`` bases ordered by band ``l`` and, within
a band, by ``m = -l .. l``; each basis carries the Condon-Shortley phase, so that the band-1 bases are
``(-C1 y, C1 z, -C1 x)``. They are evaluated at the unit viewing direction from the camera centre to the Gaussian
(world coordinates). The rendered colour is ``max(SH(d) + 0.5, 0)`` (see :func:`sh_to_color`), the offset that makes a
zero coefficient vector render mid-grey and a DC-only vector render ``C0 * c0 + 0.5``.

The constants are the normalisation factors of the real spherical harmonics,
``sqrt((2l + 1) / (4 pi) * (l - |m|)! / (l + |m|)!)`` times the Legendre polynomial factors, written out per basis.
"""

from __future__ import annotations

import math

import torch

MAX_SH_DEGREE = 3

# band 0
C0 = 0.5 / math.sqrt(math.pi)  # 0.28209479...
# band 1
C1 = math.sqrt(3.0 / (4.0 * math.pi))  # 0.48860251...
# band 2: xy, yz, 3z^2 - 1, xz, x^2 - y^2
C2_XY = 0.5 * math.sqrt(15.0 / math.pi)  # 1.09254843...
C2_Z2 = 0.25 * math.sqrt(5.0 / math.pi)  # 0.31539156...
C2_X2Y2 = 0.25 * math.sqrt(15.0 / math.pi)  # 0.54627421...
# band 3
C3_A = 0.25 * math.sqrt(35.0 / (2.0 * math.pi))  # 0.59004358..., y(3x^2 - y^2) and x(x^2 - 3y^2)
C3_B = 0.5 * math.sqrt(105.0 / math.pi)  # 2.89061144..., xyz
C3_C = 0.25 * math.sqrt(21.0 / (2.0 * math.pi))  # 0.45704579..., y(5z^2 - 1) and x(5z^2 - 1)
C3_D = 0.25 * math.sqrt(7.0 / math.pi)  # 0.37317633..., z(5z^2 - 3)
C3_E = 0.25 * math.sqrt(105.0 / math.pi)  # 1.44530572..., z(x^2 - y^2)


def num_sh_bases(degree: int) -> int:
    """Number of coefficients per colour channel for an SH degree (1, 4, 9, 16)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Real SH bases at unit directions.

    Args:
        degree: 0..3.
        dirs: (..., 3) unit vectors (x, y, z).
    Returns:
        (..., (degree + 1) ** 2) basis values, gsplat's ordering.
    """
    n = num_sh_bases(degree)
    x, y, z = dirs.unbind(-1)
    bases = [torch.full_like(x, C0)]
    if degree >= 1:
        bases += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        bases += [
            C2_XY * x * y,
            -C2_XY * y * z,
            C2_Z2 * (3.0 * zz - 1.0),
            -C2_XY * x * z,
            C2_X2Y2 * (xx - yy),
        ]
    if degree >= 3:
        bases += [
            -C3_A * y * (3.0 * xx - yy),
            C3_B * x * y * z,
            -C3_C * y * (5.0 * zz - 1.0),
            C3_D * z * (5.0 * zz - 3.0),
            -C3_C * x * (5.0 * zz - 1.0),
            C3_E * z * (xx - yy),
            -C3_A * x * (xx - 3.0 * yy),
        ]
    assert len(bases) == n
    return torch.stack(bases, dim=-1)


def eval_sh(degree: int, coeffs: torch.Tensor, dirs: torch.Tensor | None) -> torch.Tensor:
    """Evaluate the SH expansion (the raw sum, without gsplat's +0.5 offset).

    Args:
        degree: bands used, 0..3; only the first ``(degree + 1) ** 2`` coefficients are read.
        coeffs: (..., K, 3) with K >= (degree + 1) ** 2.
        dirs: (..., 3) viewing directions (camera centre -> Gaussian), need not be normalised; unused (may be None)
            for degree 0.
    Returns:
        (..., 3).
    """
    n = num_sh_bases(degree)
    if coeffs.shape[-2] < n:
        raise ValueError(f"SH degree {degree} needs {n} coefficients per channel, got {coeffs.shape[-2]}")
    if degree == 0:
        return C0 * coeffs[..., 0, :]
    assert dirs is not None, "view directions are needed for SH degree > 0"
    unit = dirs / dirs.norm(dim=-1, keepdim=True)
    basis = sh_basis(degree, unit)  # (..., n)
    return (basis[..., None, :] @ coeffs[..., :n, :])[..., 0, :]


def sh_to_color(degree: int, coeffs: torch.Tensor, dirs: torch.Tensor | None) -> torch.Tensor:
    """Rendered colour of SH coefficients, gsplat's convention: ``max(eval_sh + 0.5, 0)``.

    Args and shapes as :func:`eval_sh`; returns (..., 3).
    """
    return (eval_sh(degree, coeffs, dirs) + 0.5).clamp_min(0.0)


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """DC coefficient that renders the colour ``rgb`` (inverse of :func:`sh_to_color` at degree 0, for rgb >= 0).

    Args:
        rgb: (..., 3).
    Returns:
        (..., 3) band-0 coefficients.
    """
    return (rgb - 0.5) / C0
