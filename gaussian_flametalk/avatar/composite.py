"""Compositing rendered heads into whole frames.

The head Gaussians render head, hair and neck with alpha over a black background (a premultiplied colour). The torso
and the background come from a source frame in which the *head region* (the person mask off the torso, slightly
dilated) is replaced by a static background plate estimated over the clip:

    keep   = torso_keep(cut)                      0 on the torso, 1 a ramp away from it, linear in between
    plate  = source * (1 - region) + static * region      region: 0 on the torso and in the ramp
    output = keep * head + (1 - keep * alpha) * plate

Torso cut (:class:`TorsoCut`, :func:`torso_cuts`): the image row of the lowest projected vertex of the rendered
mesh, but no lower than ``NECK_SPAN`` face heights below the chin (:func:`torso_cut_rows`), and below the chin the
sides beyond the neck column (``NECK_HALF_WIDTH`` jaw widths either side of the chin): person-mask pixels there are
shoulders, collar and torso, not the avatar's job (where the shoulders rise to the chin, as on ../shared x1, a row
alone left them to the head Gaussians, which drew them a few pixels off). Beside the neck column the torso begins
right under the jaw outline (landmarks 0-16), at most ``SHOULDER_RISE`` face heights above the chin, and at that
height beyond the outline's ends: a shoulder or collar that leans up past the chin row next to the jaw (x1) is torso
too, while the face above the outline and the ears, which end higher, stay head. The head's colour and alpha are
trusted only where the loss trained them, so the same ``keep`` ramp (``TORSO_RAMP`` of the image height) weighs the
person pixels in the training loss (:func:`training_target`) and the head in the composite: on the torso the output
is the source frame (collar, shoulders and shirt untouched, no smear of untrained head alpha), inside the ramp the
rendered neck fades into the source neck, beyond it the render is used as trained.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..geometry.camera import Camera

__all__ = ["CHIN_MARGIN", "NECK_HALF_WIDTH", "NECK_SPAN", "SHOULDER_RISE", "TORSO_RAMP", "TorsoCut",
           "chin_rows", "composite", "head_region", "static_background", "torso_cut_rows", "torso_cuts", "torso_keep",
           "training_target"]

#: The torso cut lies at most this many face heights (brows to chin) below the chin (:func:`torso_cut_rows`).
NECK_SPAN = 0.2
#: In a driven frame the cut stays at least this many face heights below the driven chin (an opened jaw is never
#: faded into the source frame's chin).
CHIN_MARGIN = 0.1
#: Height of the fade from the rendered neck to the source torso above the torso cut, as a fraction of the image.
TORSO_RAMP = 0.04
#: Below the chin the head keeps a column this many jaw widths (landmarks 0-16) either side of the chin; the person
#: pixels beyond it (shoulders) are torso.
NECK_HALF_WIDTH = 0.4
#: Beside the neck column the torso begins under the jaw outline, but at most this many face heights above the chin
#: (the ears end higher: on the ../shared clips the line passes below their lobes).
SHOULDER_RISE = 0.3


@dataclass(frozen=True)
class TorsoCut:
    """Where the torso begins in one frame (pixels, image coordinates).

    ``row``: person pixels below it are torso. ``neck_top``, ``neck_x``, ``neck_half``: below ``neck_top`` the person
    pixels farther than ``neck_half`` from column ``neck_x`` are torso too (``neck_top`` None: the row alone).
    ``jaw``: the jaw outline as (x, y) points from one ear to the other; beside the neck column the torso begins
    under it, but at most ``rise`` pixels above ``neck_top`` and never below it (``jaw`` empty and ``rise`` 0: at
    ``neck_top``).
    """

    row: float
    neck_top: float | None = None
    neck_x: float = 0.0
    neck_half: float = 0.0
    jaw: tuple[tuple[float, float], ...] = ()
    rise: float = 0.0

    def lowered_to(self, row: float, neck_top: float) -> TorsoCut:
        """The cut kept at or below ``row`` and its neck top at or below ``neck_top``, the jaw outline moved down with
        the neck top (a driven jaw opened wider than the source's stays whole)."""
        if self.neck_top is None:
            return replace(self, row=max(self.row, row))
        drop = max(neck_top - self.neck_top, 0.0)
        return replace(self, row=max(self.row, row), neck_top=self.neck_top + drop,
                       jaw=tuple((x, y + drop) for x, y in self.jaw))

    def side_top(self, x: np.ndarray) -> np.ndarray:
        """(W,) rows where the torso begins beside the neck column at the (W,) columns ``x`` (needs ``neck_top``):
        the lowest point of the jaw outline above each column, held between ``neck_top - rise`` and ``neck_top``."""
        under = np.full(x.shape, -np.inf)
        for (x0, y0), (x1, y1) in zip(self.jaw, self.jaw[1:]):
            lo, hi = min(x0, x1), max(x0, x1)
            on = (x >= lo) & (x <= hi)
            t = (x[on] - x0) / (x1 - x0) if x1 != x0 else 0.5
            under[on] = np.maximum(under[on], y0 + t * (y1 - y0))
        return np.clip(under, self.neck_top - self.rise, self.neck_top)


def static_background(
    n_frames: int,
    frame: Callable[[int], np.ndarray],
    mask: Callable[[int], np.ndarray],
    max_samples: int = 60,
    threshold: float = 0.5,
) -> np.ndarray:
    """Per-pixel temporal median of the pixels outside the person mask; pixels the person always covers are
    inpainted (OpenCV Telea) from their surroundings.

    Args:
        n_frames: clip length; frame(i) -> (H, W, 3) uint8; mask(i) -> (H, W) float person mask.
        max_samples: frames used, evenly spaced over the clip.
        threshold: mask values at or above it are person.
    Returns:
        (H, W, 3) uint8.
    """
    import cv2

    idx = np.unique(np.linspace(0, n_frames - 1, min(max_samples, n_frames)).round().astype(int))
    stack = np.stack([frame(i).astype(np.float32) for i in idx])
    person = np.stack([mask(i) >= threshold for i in idx])
    stack[person] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: always covered by the person
        med = np.nanmedian(stack, axis=0)
    hole = np.isnan(med[..., 0])
    out = np.nan_to_num(med).round().clip(0, 255).astype(np.uint8)
    if hole.any():
        out = cv2.inpaint(out, hole.astype(np.uint8) * 255, 5, cv2.INPAINT_TELEA)
    return out


def chin_rows(landmarks: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 68, 3) landmarks -> (B,) image rows of the chin (landmark 8) and (B,) face heights (brows to chin), px."""
    lmk = camera.to(landmarks.device, landmarks.dtype).project(landmarks)[..., 1]
    chin = lmk[:, 8]
    return chin, (chin - lmk[:, 17:27].mean(dim=1)).abs()


def torso_cut_rows(vertices: torch.Tensor, camera: Camera, landmarks: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V, 3) rendered mesh vertices -> (B,) image row (pixels, float) of the torso cut: the lowest projected
    vertex, but with the (B, 68, 3) ``landmarks`` no lower than ``NECK_SPAN`` face heights (brows to chin) below the
    chin. A head model's neck (ICT-FaceKit's reaches the collarbones) often ends below the frame or on the shirt; the
    person pixels under the visible neck are collar, shoulders and torso, which the head Gaussians cannot follow
    (they would render a blurred shirt, and the background plate would show beside it)."""
    cam = camera.to(vertices.device, vertices.dtype)
    cut = cam.project(vertices)[..., 1].amax(dim=-1)
    if landmarks is not None:
        chin, height = chin_rows(landmarks.to(vertices), cam)
        cut = torch.minimum(cut, chin + NECK_SPAN * height)
    return cut


def torso_cuts(vertices: torch.Tensor, camera: Camera, landmarks: torch.Tensor) -> list[TorsoCut]:
    """(B, V, 3) rendered mesh vertices and (B, 68, 3) landmarks -> B :class:`TorsoCut`: the row of
    :func:`torso_cut_rows`, the neck column from the chin down, ``NECK_HALF_WIDTH`` jaw widths either side of the
    chin, and beside it the jaw outline (landmarks 0-16) with its ``SHOULDER_RISE`` limit."""
    cam = camera.to(vertices.device, vertices.dtype)
    rows = torso_cut_rows(vertices, cam, landmarks)
    lmk = cam.project(landmarks.to(vertices))
    _, height = chin_rows(landmarks.to(vertices), cam)
    jaw = lmk[:, 0:17]
    half = NECK_HALF_WIDTH * (jaw[..., 0].amax(dim=1) - jaw[..., 0].amin(dim=1))
    return [TorsoCut(float(r), float(c[1]), float(c[0]), float(h), tuple(map(tuple, j)), SHOULDER_RISE * float(fh))
            for r, c, h, j, fh in zip(rows.tolist(), lmk[:, 8].tolist(), half.tolist(), jaw.tolist(),
                                      height.tolist())]


def torso_keep(cut: TorsoCut, height: int, width: int, ramp: float = TORSO_RAMP) -> np.ndarray:
    """(H, W) float32 weight of the head render: 0 on the torso of ``cut`` (at and below its row; below its neck top
    beyond the neck column, from :meth:`TorsoCut.side_top` down), 1 a ramp of ``ramp * height``
    pixels away from it, linear in between (pixel centres)."""
    span = max(ramp * height, 1.0)
    y = np.arange(height, dtype=np.float32)[:, None] + 0.5
    x = np.arange(width, dtype=np.float32)[None, :] + 0.5
    keep = np.clip((cut.row - y) / span, 0.0, 1.0)
    if cut.neck_top is not None:
        side = np.clip((np.abs(x - cut.neck_x) - cut.neck_half) / span + 1.0, 0.0, 1.0)
        side = side * np.clip((y - cut.side_top(x[0])[None, :]) / span, 0.0, 1.0)
        keep = keep * (1.0 - side)
    return np.ascontiguousarray(np.broadcast_to(keep, (height, width)), dtype=np.float32)


def training_target(
    frame: np.ndarray, mask: np.ndarray, cut: TorsoCut, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The head avatar's training target and loss weight for one frame.

    Args:
        frame: (H, W, 3) uint8; mask: (H, W) person mask in [0, 1]; cut: the torso cut; background: (3,) in [0, 1].
    Returns:
        target (H, W, 3) float32 = frame over ``background`` by the mask; weight (H, W) float32 in [0, 1]: on person
        pixels the :func:`torso_keep` ramp (0 on the torso below the cut, as much as the composite uses the head
        there), elsewhere 1 (background pixels stay black and transparent everywhere, also beside the torso).
    """
    m = mask.astype(np.float32)[..., None]
    target = frame.astype(np.float32) / 255.0 * m + background.astype(np.float32) * (1.0 - m)
    keep = torso_keep(cut, *mask.shape)
    weight = np.where(mask >= 0.5, keep, 1.0)
    return target, weight.astype(np.float32)


def head_region(mask: np.ndarray, cut: TorsoCut, dilate: int) -> np.ndarray:
    """(H, W) float32 region of the source frame the avatar replaces: person off the torso, dilated by ``dilate``
    pixels (feathered by a small blur), where the head is kept whole only (past the :func:`torso_keep` ramp), so the
    dilation never reaches over the collar or the shoulders (there the source frame stays) and the ramp blends the
    render with the source frame alone (mixing in the plate, inpainted where the body always is, drew a light band
    across the shirt)."""
    import cv2

    keep = torso_keep(cut, *mask.shape)
    region = ((mask >= 0.5) & (keep > 0.0)).astype(np.uint8)
    if dilate > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        region = cv2.dilate(region, kernel)
        region = cv2.GaussianBlur(region.astype(np.float32), (0, 0), max(dilate / 2, 0.5))
    # the plate only where the head is whole: in the ramp the rendered neck fades into the source's own, never the plate
    return np.clip(region.astype(np.float32), 0.0, 1.0) * (keep >= 1.0)


def composite(
    head: np.ndarray, alpha: np.ndarray, source: np.ndarray, region: np.ndarray, static: np.ndarray,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """One whole frame.

    Args:
        head: (H, W, 3) float premultiplied head colour (rendered over black); alpha: (H, W, 1) or (H, W).
        source: (H, W, 3) uint8 source frame; region: (H, W) head region (:func:`head_region`); static: (H, W, 3)
        uint8 background plate; keep: (H, W) weight of the head render (:func:`torso_keep`; None = 1 everywhere).
    Returns:
        (H, W, 3) uint8.
    """
    a = alpha.reshape(*alpha.shape[:2], 1).astype(np.float32)
    h = head.astype(np.float32)
    if keep is not None:
        k = keep[..., None].astype(np.float32)
        a, h = a * k, h * k
    r = region[..., None].astype(np.float32)
    plate = source.astype(np.float32) / 255.0 * (1.0 - r) + static.astype(np.float32) / 255.0 * r
    out = h + (1.0 - a) * plate
    return (out.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)
