"""The pinhole camera every stage uses.

Convention (the rasterizer's too, see ``avatar.rasterize``): OpenCV camera axes (x right, y down,
z forward), a world-to-camera 4x4 ``viewmat``, intrinsics ``K`` in pixels with pixel centres at
integer + 0.5 (the centre of the top-left pixel is (0.5, 0.5)), and near/far clipping planes on
camera-space depth z.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Camera:
    """One view.

    Attributes:
        viewmat: (4, 4) world-to-camera transform.
        K: (3, 3) intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
        width, height: image size in pixels.
        near, far: clipping planes on camera-space z (same defaults as gsplat).
    """

    viewmat: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    near: float = 0.01
    far: float = 1e10

    @classmethod
    def look_at(
        cls,
        eye: tuple[float, float, float],
        target: tuple[float, float, float],
        focal: float,
        width: int,
        height: int,
        up: tuple[float, float, float] = (0.0, 1.0, 0.0),
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> "Camera":
        """A camera at ``eye`` looking at ``target`` with world ``up`` pointing up in the image."""
        eye_t = torch.tensor(eye, dtype=torch.float64)
        fwd = torch.tensor(target, dtype=torch.float64) - eye_t
        fwd = fwd / fwd.norm()
        down = -torch.tensor(up, dtype=torch.float64)
        right = torch.linalg.cross(down, fwd)
        right = right / right.norm()
        down = torch.linalg.cross(fwd, right)
        r = torch.stack([right, down, fwd])  # rows: camera axes in world coordinates
        viewmat = torch.eye(4, dtype=torch.float64)
        viewmat[:3, :3] = r
        viewmat[:3, 3] = -r @ eye_t
        return cls(
            viewmat=viewmat.to(dtype=dtype, device=device),
            K=intrinsics(focal, focal, width / 2, height / 2, dtype=dtype, device=device),
            width=width,
            height=height,
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Camera":
        return Camera(
            self.viewmat.to(device=device, dtype=dtype),
            self.K.to(device=device, dtype=dtype),
            self.width,
            self.height,
            self.near,
            self.far,
        )

    def resized(self, width: int, height: int) -> "Camera":
        """The same view for the image resized to ``width`` x ``height``: the first row of ``K`` (fx, cx) scaled by
        ``width / self.width``, the second (fy, cy) by ``height / self.height``."""
        K = self.K.clone()
        K[0] *= width / self.width
        K[1] *= height / self.height
        return Camera(self.viewmat, K, width, height, self.near, self.far)

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) world points -> (..., 3) camera-space points."""
        return points @ self.viewmat[:3, :3].T + self.viewmat[:3, 3]

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) world points -> (..., 2) pixel coordinates (x, y)."""
        return project_points(self.world_to_camera(points), self.K)


def intrinsics(
    fx: float, fy: float, cx: float, cy: float, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(3, 3) pinhole intrinsics matrix."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def project_points(points_cam: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Perspective projection.

    Args:
        points_cam: (..., 3) camera-space points (z > 0 in front of the camera).
        K: (3, 3), or (..., 3, 3) whose batch dims broadcast against the points' (use K[:, None] for (B,3,3) with (B,N,3)).
    Returns:
        (..., 2) pixel coordinates.
    """
    uvw = (K @ points_cam[..., None])[..., 0]
    return uvw[..., :2] / uvw[..., 2:3]
