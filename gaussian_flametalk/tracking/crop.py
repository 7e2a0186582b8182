"""One fixed square crop around the head for a whole clip (never a per-frame crop: that alone makes wobble).

The crop rule (:func:`crop_from_detections`), in units of ``h``, the median over the clip of the face height
measured from the 68 landmarks (brow top to chin, iBUG points 17-26 to 8):

1. Per-frame face boxes: the tight box of the 68 points (or the given boxes). Frames without a face (NaN) are
   ignored. Outliers are dropped as misdetections: a frame whose box centre is further from the median centre
   than ``max(median distance + 6 robust std (1.4826 MAD), 0.5 h)``, or whose box height is outside
   ``[0.6, 1.6] x`` the median.
2. The union of the remaining boxes (so every genuine frame's face is inside), grown into a *head* box:
   ``top`` (default 1.2 h) above the highest brow for forehead and hair (brow to top of the skull is about
   0.8 h in adults with the mouth closed; h itself grows by 10-20 % when the mouth opens, and hair adds more),
   ``bottom`` (0.3 h) below the lowest chin for the chin and neck, ``side`` (0.4 h) left and right of the jaw
   points for ears and hair.
3. The square: side = ``max(head width, head height)``, centred on the head box, rounded to whole, even pixels.
4. Fitting it to the frame: the square is shifted (not shrunk) to lie inside the frame where it fits; a square
   larger than the frame's shorter side is shrunk towards that side as long as it still holds the face union
   with the minimal margins (0.55 h above, 0.15 h below and at the sides), and otherwise extends past the border
   (:func:`~gaussian_flametalk.io.media.iter_frames` pads it). Shifting never moves the minimal box out.
   So an already head-cropped 512x512 video keeps (almost) its own framing instead of getting black borders,
   while a portrait 1080x1920 video gets a square around the head.

:func:`scan_faces` is the cheap detection pass that feeds the rule: the detector runs on frames sampled at a
few fps (10 by default: a 5 fps scan of v2 missed a quick nod) and shrunk so the longer side is about 640 px, and the boxes come back in source pixels.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io.media import CropBox

if TYPE_CHECKING:
    from .landmarks import LandmarkDetector

__all__ = ["CropBox", "CropMargin", "FaceScan", "crop_from_detections", "find_crop", "scan_faces"]


@dataclass(frozen=True)
class CropMargin:
    """Margins around the union of the face boxes, in units of the median face height (brow to chin)."""

    top: float = 1.2
    bottom: float = 0.3
    side: float = 0.4

    def scaled(self, f: float) -> CropMargin:
        return CropMargin(self.top * f, self.bottom * f, self.side * f)


_MIN_MARGIN = CropMargin(top=0.55, bottom=0.15, side=0.15)


def _boxes_from(detections: np.ndarray) -> np.ndarray:
    """(T,4) boxes or (T,K,2) points -> (T,4) float64 x0,y0,x1,y1 (NaN rows for frames without a face)."""
    d = np.asarray(detections, dtype=np.float64)
    if d.ndim == 3 and d.shape[-1] == 2:
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(d).all(axis=(1, 2))
        boxes = np.full((d.shape[0], 4), np.nan)
        if valid.any():
            dv = d[valid]
            boxes[valid] = np.concatenate([dv.min(axis=1), dv.max(axis=1)], axis=1)
        return boxes
    if d.ndim == 2 and d.shape[1] == 4:
        return d
    raise ValueError(f"detections must be (T,4) boxes or (T,K,2) points, got shape {d.shape}")


def _inlier_boxes(boxes: np.ndarray) -> np.ndarray:
    """Drop rows with NaN and misdetections (centre or height far from the clip's median) -> (N,4)."""
    b = boxes[np.isfinite(boxes).all(axis=1)]
    b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    if len(b) == 0:
        return b
    c = 0.5 * (b[:, :2] + b[:, 2:])
    h = b[:, 3] - b[:, 1]
    h_med = float(np.median(h))
    c_med = np.median(c, axis=0)
    dist = np.linalg.norm(c - c_med, axis=1)
    mad = float(np.median(np.abs(dist - np.median(dist))))
    keep = (dist <= max(6.0 * 1.4826 * mad + float(np.median(dist)), 0.5 * h_med)) & (h >= 0.6 * h_med) & (h <= 1.6 * h_med)
    return b[keep]


def crop_from_detections(detections: np.ndarray, frame_w: int, frame_h: int,
                         margin: CropMargin | float = CropMargin(), fit_frame: bool = True) -> CropBox:
    """One square crop for the whole clip from per-frame detections (rule in the module docstring).

    Args:
        detections: (T,68,2) iBUG-68 points or (T,4) boxes x0,y0,x1,y1, in source pixels; NaN for no face.
            With boxes, their height stands for the brow-to-chin face height.
        frame_w, frame_h: the source frame size (after rotation).
        margin: a :class:`CropMargin`, or a float that scales the default margins.
        fit_frame: shift/shrink the square towards the frame (step 4); False keeps the ideal square.

    Raises ValueError when no frame has a usable detection.
    """
    if not isinstance(margin, CropMargin):
        margin = CropMargin().scaled(float(margin))
    boxes = _inlier_boxes(_boxes_from(detections))
    if len(boxes) == 0:
        raise ValueError("no face detection to place the crop on")
    h = float(np.median(boxes[:, 3] - boxes[:, 1]))
    ux0, uy0 = boxes[:, 0].min(), boxes[:, 1].min()
    ux1, uy1 = boxes[:, 2].max(), boxes[:, 3].max()
    hx0, hx1 = ux0 - margin.side * h, ux1 + margin.side * h
    hy0, hy1 = uy0 - margin.top * h, uy1 + margin.bottom * h
    size = max(hx1 - hx0, hy1 - hy0)
    cx, cy = 0.5 * (hx0 + hx1), 0.5 * (hy0 + hy1)
    # minimal box that must stay inside the crop
    mx0, mx1 = ux0 - _MIN_MARGIN.side * h, ux1 + _MIN_MARGIN.side * h
    my0, my1 = uy0 - _MIN_MARGIN.top * h, uy1 + _MIN_MARGIN.bottom * h
    min_size = max(mx1 - mx0, my1 - my0)
    if fit_frame and size > min(frame_w, frame_h):
        size = max(float(min(frame_w, frame_h)), min_size)
    size_i = max(2, int(math.ceil(size / 2.0)) * 2)
    x = cx - size_i / 2.0
    y = cy - size_i / 2.0
    if fit_frame:
        x = _fit_axis(x, size_i, frame_w, mx0, mx1)
        y = _fit_axis(y, size_i, frame_h, my0, my1)
    return CropBox(int(round(x)), int(round(y)), size_i)


def _fit_axis(start: float, size: int, extent: int, need0: float, need1: float) -> float:
    """Shift a 1-D interval [start, start+size] inside [0, extent] when it fits, keeping [need0, need1] covered."""
    if size <= extent:
        start = min(max(start, 0.0), extent - size)
    lo, hi = need1 - size, need0  # start must be in [lo, hi] to cover the needed interval
    if lo <= hi:
        start = min(max(start, lo), hi)
    else:  # cannot cover it all: centre on it
        start = 0.5 * (need0 + need1) - size / 2.0
    return start


# ----------------------------------------------------------------------------------------------- scanning

@dataclass
class FaceScan:
    """Result of :func:`scan_faces`, all in source pixels (after rotation).

    times: (N,) seconds; boxes: (N,4) x0,y0,x1,y1 of the 68 points (NaN where no face);
    points68: (N,68,2) (NaN where no face); n_faces: (N,) int.
    """

    times: np.ndarray
    boxes: np.ndarray
    points68: np.ndarray
    n_faces: np.ndarray
    frame_w: int
    frame_h: int
    seconds: float = 0.0

    @property
    def found(self) -> np.ndarray:
        return self.n_faces > 0


def scan_faces(path: str | os.PathLike, detector: LandmarkDetector, sample_fps: float = 10.0, max_side: int = 640,
               progress: bool = True) -> FaceScan:
    """Run ``detector`` on frames of ``path`` sampled at ``sample_fps``, shrunk so the longer side is at most
    ``max_side`` (never enlarged), and return the detections mapped back to source pixels.

    When a frame shows several faces, the one nearest the previous frame's face (else the largest) is kept.
    """
    import time

    from tqdm.auto import tqdm

    from .landmarks import pick_face
    from ..io.media import iter_frames, output_size, probe_video

    path = Path(path)
    info = probe_video(path)
    out_w, out_h = output_size(info, max_side=max_side)
    sx, sy = info.width / out_w, info.height / out_h
    detector.reset()
    times: list[float] = []
    boxes: list[np.ndarray] = []
    pts: list[np.ndarray] = []
    counts: list[int] = []
    prev = None
    t0 = time.perf_counter()
    total = int(math.ceil(info.duration * sample_fps)) if math.isfinite(info.duration) else None
    frames = iter_frames(path, fps=sample_fps, max_side=max_side, info=info)
    for i, frame in enumerate(tqdm(frames, total=total, desc=f"scan {path.name}", unit="frame", disable=not progress)):
        faces = detector.detect(frame)
        times.append(i / sample_fps)
        counts.append(len(faces))
        face = pick_face(faces, prev)
        if face is None:
            pts.append(np.full((68, 2), np.nan, np.float32))
            boxes.append(np.full(4, np.nan, np.float32))
            continue
        prev = face
        p = face.points68 * np.array([sx, sy], np.float32)
        pts.append(p)
        boxes.append(np.concatenate([p.min(0), p.max(0)]).astype(np.float32))
    detector.reset()
    return FaceScan(times=np.asarray(times, np.float64), boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                    points68=np.asarray(pts, np.float32).reshape(-1, 68, 2), n_faces=np.asarray(counts, np.int64),
                    frame_w=info.width, frame_h=info.height, seconds=time.perf_counter() - t0)


def find_crop(path: str | os.PathLike, detector: LandmarkDetector, sample_fps: float = 10.0, max_side: int = 640,
              margin: CropMargin | float = CropMargin(), progress: bool = True) -> tuple[CropBox, FaceScan]:
    """:func:`scan_faces` then :func:`crop_from_detections`; raises NoFaceError when no sampled frame has a face."""
    from .landmarks import NoFaceError

    scan = scan_faces(path, detector, sample_fps=sample_fps, max_side=max_side, progress=progress)
    if not scan.found.any():
        raise NoFaceError(f"{path}: no face found in any of the {len(scan.times)} frames sampled at {sample_fps:g} fps")
    return crop_from_detections(scan.points68, scan.frame_w, scan.frame_h, margin=margin), scan
