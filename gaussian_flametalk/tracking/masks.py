"""Foreground (person) masks with mediapipe's bundled selfie-segmentation model (offline).

``model_selection=0`` (the default here) is mediapipe's *general* model: a 256x256 square input, which matches
the square head crops the tracker produces; ``1`` is the *landscape* model (144x256 input, a little faster,
meant for wide video-call frames). The mask covers the whole person: hair, face, neck and torso.

The segmenter also marks background objects with a person-like texture (on ../shared v4, the flag and its eagle
beside the head: about 215 of 65,536 pixels per 256x256 frame). The avatar cannot render them, and as part of the
head's target they cost v4's head-over-black PSNR 2 dB. :func:`largest_component` keeps the person: in a tracked
head crop it is always the largest connected region.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from .landmarks import DetectorUnavailableError

__all__ = ["ForegroundSegmenter", "iter_masks", "largest_component", "segment_clip"]


def largest_component(mask: np.ndarray, threshold: float = 0.5, margin: int = 3) -> np.ndarray:
    """Keep the largest connected region of a soft mask.

    Args:
        mask: (H, W) float in [0, 1]. threshold: values at or above it are foreground when finding the regions
            (8-connected). margin: pixels around the kept region whose soft values are kept too (its feathered edge).
    Returns:
        (H, W) float32: ``mask`` inside the largest region dilated by ``margin``, 0 elsewhere (``mask`` unchanged
        when it has at most one region).
    """
    import cv2

    m = np.asarray(mask, np.float32)
    hard = (m >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hard, connectivity=8)
    if n <= 2:  # background and at most one region
        return m
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    keep = (labels == biggest).astype(np.uint8)
    if margin > 0:
        keep = cv2.dilate(keep, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1)))
    return m * keep


class ForegroundSegmenter:
    """Person/foreground probability per pixel: ``segment(frame uint8 (H,W,3) RGB) -> (H,W) float32 in 0..1``."""

    name = "mediapipe-selfie"

    def __init__(self, model_selection: int = 0, components: str = "largest") -> None:
        """``components``: "largest" keeps the largest connected region of each mask (:func:`largest_component`),
        "all" returns the segmenter's mask as it is."""
        if model_selection not in (0, 1):
            raise ValueError(f"model_selection must be 0 (general, 256x256) or 1 (landscape), got {model_selection}")
        if components not in ("largest", "all"):
            raise ValueError(f"components must be 'largest' or 'all', got {components!r}")
        self.components = components
        try:
            import mediapipe as mp
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise DetectorUnavailableError(
                "foreground masks need the mediapipe package: pip install mediapipe==0.10.21") from e
        self.model_selection = model_selection
        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)

    def segment(self, frame: np.ndarray) -> np.ndarray:
        f = np.asarray(frame)
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image (H,W,3), got {f.dtype} {f.shape}")
        if self._seg is None:
            raise RuntimeError("ForegroundSegmenter is closed")
        mask = self._seg.process(np.ascontiguousarray(f)).segmentation_mask
        if mask is None:  # pragma: no cover - mediapipe returns a mask for every image
            return np.zeros(f.shape[:2], np.float32)
        mask = np.clip(np.asarray(mask, np.float32), 0.0, 1.0)
        return largest_component(mask) if self.components == "largest" else mask

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    def __enter__(self) -> ForegroundSegmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_masks(frames: Iterable[np.ndarray], segmenter: ForegroundSegmenter | None = None, progress: bool = True,
               total: int | None = None) -> Iterator[np.ndarray]:
    """Yield one (H,W) float32 mask in 0..1 per frame (a segmenter is made, and closed, when none is given)."""
    from tqdm.auto import tqdm

    own = segmenter is None
    seg = segmenter or ForegroundSegmenter()
    try:
        for frame in tqdm(frames, total=total, desc="masks", unit="frame", disable=not progress):
            yield seg.segment(frame)
    finally:
        if own:
            seg.close()


def segment_clip(frames: Iterable[np.ndarray], segmenter: ForegroundSegmenter | None = None, progress: bool = True,
                 total: int | None = None) -> np.ndarray:
    """Masks of a whole clip as uint8 (T,H,W), 0..255 (``round(255 * p)``; a quarter the memory of float32)."""
    out = [np.round(m * 255.0).astype(np.uint8) for m in iter_masks(frames, segmenter, progress, total)]
    if not out:
        return np.zeros((0, 0, 0), np.uint8)
    return np.stack(out)
