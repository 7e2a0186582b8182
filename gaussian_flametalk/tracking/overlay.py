"""Overlay drawing: the fitted mesh as a wireframe and the landmarks over the frames, for a person to check a fit."""

from __future__ import annotations

import numpy as np
import torch

DETECTED = (60, 220, 60)  # green: detected landmarks
FITTED = (230, 40, 40)  # red: landmarks of the fitted mesh
WIRE = (255, 255, 255)


def mesh_edges(faces: torch.Tensor, keep_vertices: torch.Tensor | None = None) -> np.ndarray:
    """Unique undirected edges (E, 2) of triangles (F, 3), optionally only those of triangles whose vertices are all
    in ``keep_vertices``."""
    f = faces
    if keep_vertices is not None:
        keep = torch.zeros(int(faces.max()) + 1, dtype=torch.bool)
        keep[keep_vertices] = True
        f = f[keep[f].all(1)]
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(dim=1).values
    return torch.unique(e, dim=0).numpy()


def draw_overlay(
    frame: np.ndarray,
    vertices2d: np.ndarray,
    visible: np.ndarray,
    edges: np.ndarray,
    detected: np.ndarray | None,
    fitted: np.ndarray,
    alpha: float = 0.35,
) -> np.ndarray:
    """One overlay frame.

    Args:
        frame: (H, W, 3) uint8 RGB.
        vertices2d: (V, 2) projected mesh vertices in pixels; visible: (V,) bool (front-facing).
        edges: (E, 2) vertex index pairs to draw (an edge is drawn when both ends are visible).
        detected: (68, 2) detected landmarks or None (no face); fitted: (68, 2) fitted landmarks.
    Returns:
        (H, W, 3) uint8 RGB.
    """
    import cv2

    img = np.ascontiguousarray(frame[..., ::-1])  # BGR for OpenCV
    wire = img.copy()
    e = edges[visible[edges].all(1)]
    segs = np.round(vertices2d[e] * 16).astype(np.int32)  # 4 fractional bits
    cv2.polylines(wire, list(segs), False, WIRE[::-1], 1, cv2.LINE_AA, shift=4)
    img = cv2.addWeighted(wire, alpha, img, 1 - alpha, 0)
    if detected is not None:
        for x, y in detected:
            cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), 2 * 16, DETECTED[::-1], -1, cv2.LINE_AA, shift=4)
    for x, y in fitted:
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), int(1.5 * 16), FITTED[::-1], -1, cv2.LINE_AA, shift=4)
    return img[..., ::-1].copy()
