"""Compositing rendered heads into whole frames.

The head Gaussians render head, hair and neck with alpha over a black background (a premultiplied colour). The torso
and the background come from a source frame in which the *head region* (the person mask above the torso cut, slightly
dilated) is replaced by a static background plate estimated over the clip:

    keep   = torso_keep(cut)                      1 above the ramp, 0 below the cut, linear in between
    plate  = source * (1 - region) + static * region      region: 0 from the top of the ramp down
    output = keep * head + (1 - keep * alpha) * plate

Torso cut: the image row of the lowest projected vertex of the rendered mesh, but no lower than ``NECK_SPAN`` face
heights below the chin (:func:`torso_cut_rows`); person-mask pixels below it are torso (not the avatar's job). The head's colour and alpha are trusted only where the loss trained them, so the same ``keep``
ramp (``TORSO_RAMP`` of the image height, ending at the cut) weighs the person pixels in the training loss
(:func:`training_target`) and the head in the composite: below the cut the output is the source frame (collar,
neckline and torso untouched, no smear of untrained head alpha), inside the ramp the rendered neck fades into the
source neck, above it the render is used as trained.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from ..geometry.camera import Camera

__all__ = ["CHIN_MARGIN", "NECK_SPAN", "TORSO_RAMP", "chin_rows", "composite", "head_region", "static_background", "torso_cut_rows", "torso_keep",
           "training_target"]

#: The torso cut lies at most this many face heights (brows to chin) below the chin (:func:`torso_cut_rows`).
NECK_SPAN = 0.2
#: In a driven frame the cut stays at least this many face heights below the driven chin (an opened jaw is never
#: faded into the source frame's chin).
CHIN_MARGIN = 0.1
#: Height of the fade from the rendered neck to the source torso above the torso cut, as a fraction of the image.
TORSO_RAMP = 0.04


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


def _below(cut: np.ndarray | float, height: int, width: int) -> np.ndarray:
    """(H, W) bool: pixel centres below row ``cut``."""
    return np.broadcast_to((np.arange(height) + 0.5)[:, None] > float(cut), (height, width))


def torso_keep(cut: float, height: int, width: int, ramp: float = TORSO_RAMP) -> np.ndarray:
    """(H, W) float32 weight of the head render: 1 above ``cut - ramp * height``, 0 at and below the cut row,
    linear in between (pixel centres)."""
    y = np.arange(height, dtype=np.float32) + 0.5
    span = max(ramp * height, 1.0)
    k = np.clip((float(cut) - y) / span, 0.0, 1.0)
    return np.ascontiguousarray(np.broadcast_to(k[:, None], (height, width)), dtype=np.float32)


def training_target(
    frame: np.ndarray, mask: np.ndarray, cut: float, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The head avatar's training target and loss weight for one frame.

    Args:
        frame: (H, W, 3) uint8; mask: (H, W) person mask in [0, 1]; cut: torso cut row; background: (3,) in [0, 1].
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


def head_region(mask: np.ndarray, cut: float, dilate: int) -> np.ndarray:
    """(H, W) float32 region of the source frame the avatar replaces: person above the cut, dilated by ``dilate``
    pixels (feathered by a small blur), above the :func:`torso_keep` ramp only, so the dilation never reaches over
    the collar below the cut (there the source frame stays) and the ramp blends the render with the source frame
    alone (mixing in the plate, inpainted where the body always is, drew a light band across the shirt)."""
    import cv2

    region = ((mask >= 0.5) & ~_below(cut, *mask.shape)).astype(np.uint8)
    if dilate > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        region = cv2.dilate(region, kernel)
        region = cv2.GaussianBlur(region.astype(np.float32), (0, 0), max(dilate / 2, 0.5))
    # the plate only above the ramp: inside it the rendered neck fades into the source's own, never into the plate
    return np.clip(region.astype(np.float32), 0.0, 1.0) * (torso_keep(cut, *mask.shape) >= 1.0)


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
