"""The SUBJECT folder: what ``gft track`` writes and every later stage reads.

Layout::

    SUBJECT/
      meta.json        stage, config, versions, inputs (video, crop box, head model), timings, figures
      frames/NNNNNN.jpg  the fixed crop, resized (JPEG quality 95), RGB
      masks/NNNNNN.png   foreground (person) masks, uint8 0..255
      landmarks.npz    detected landmarks (ClipLandmarks, pixels of the frames above)
      params.npz       per-frame head parameters (HeadParams fields), fitted landmarks2d, error_px
      camera.json      K, viewmat (world-to-camera), width, height, near, far, fps
      audio.wav        16 kHz mono 16-bit (absent when the video has no sound)
      overlay.mp4      mesh wireframe and landmarks over the frames, for a person to check the fit

A folder is complete when its ``meta.json`` exists: it is written last, and the folder is built under a
temporary name and renamed, so a killed run never leaves a finished-looking SUBJECT. :class:`SubjectWriter` builds
one (``gft track``, the tests' fixtures), :class:`Subject` reads one (every later stage).

The track stage's ``meta.json`` (:mod:`.meta` schema) carries, besides the common fields, ``n_frames``, ``fps``,
``resolution``, ``has_audio`` and ``head_model`` (``spec``, ``kind``, ``n_shape``, ``n_expression``) at its top level, and
the source ``video`` (path, width, height, fps, duration) and ``crop`` (x, y, size in source pixels) in ``inputs``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..geometry.camera import Camera
from ..headmodel import HeadModel, HeadParams, load_head_model
from ..atomic import atomic_write, finish_folder, save_npz, start_folder, write_json
from .media import CropBox
from .meta import StageMeta, read_meta, write_meta


def frame_name(i: int) -> str:
    return f"{i:06d}.jpg"


def mask_name(i: int) -> str:
    return f"{i:06d}.png"


def train_test_split(n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Train and test frame indices: the test split is the last 20 % of frames, or the last 30 s when the clip is
    longer than 150 s (never trained on). Returns (train_idx, test_idx)."""
    n_test = int(round(30 * fps)) if n_frames / fps > 150 else int(math.ceil(0.2 * n_frames))
    n_test = min(max(n_test, 1), n_frames - 1) if n_frames > 1 else 0
    return np.arange(n_frames - n_test), np.arange(n_frames - n_test, n_frames)


def read_frame(root: Path, i: int) -> np.ndarray:
    """Frame ``i`` of a SUBJECT folder (finished or being built): (H, W, 3) uint8 RGB."""
    import cv2

    path = Path(root) / "frames" / frame_name(i)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path}: missing or unreadable frame")
    return img[..., ::-1].copy()


def save_camera(path: Path, camera: Camera, fps: float) -> None:
    write_json(path, {
        "K": camera.K.tolist(), "viewmat": camera.viewmat.tolist(), "width": camera.width, "height": camera.height,
        "near": camera.near, "far": camera.far, "fps": fps,
        "convention": "OpenCV camera axes, world-to-camera viewmat, pixel centres at +0.5",
    })


def read_params(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                ) -> HeadParams:
    """HeadParams from an npz with the HeadParams fields (a SUBJECT's or an avatar's ``params.npz``, a drive's
    parameter sequence); other arrays in it are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: parameter file not found")
    with np.load(path) as z:
        missing = [k for k in HeadParams.NAMES if k not in z.files]
        if missing:
            raise ValueError(f"{path}: lacks the head parameters {missing}")
        return HeadParams.from_numpy({k: z[k] for k in HeadParams.NAMES}, dtype=dtype, device=device)


def read_camera(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                ) -> tuple[Camera, float | None]:
    """A ``camera.json`` as :func:`save_camera` writes it: the camera and the frame rate (None if it has none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    c = json.loads(path.read_text())
    camera = Camera(torch.tensor(c["viewmat"], dtype=dtype, device=device),
                    torch.tensor(c["K"], dtype=dtype, device=device), int(c["width"]), int(c["height"]),
                    float(c["near"]), float(c["far"]))
    return camera, (float(c["fps"]) if c.get("fps") is not None else None)


@dataclass
class Subject:
    """A tracked SUBJECT folder (read-only view)."""

    root: Path
    meta: dict

    @classmethod
    def open(cls, root: str | os.PathLike) -> Subject:
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            partial = " (an interrupted run left it unfinished: run gft track again)" if root.is_dir() else ""
            raise FileNotFoundError(f"{root}: not a tracked SUBJECT folder, no meta.json{partial}")
        meta = read_meta(meta_path)
        if meta.get("stage") != "track":
            raise ValueError(f"{root}: meta.json is not from gft track (stage {meta.get('stage')!r})")
        missing = [k for k in ("n_frames", "fps", "head_model") if k not in meta]
        if missing:
            raise ValueError(f"{meta_path}: lacks {missing}: not a SUBJECT written by this version of gft track")
        return cls(root, meta)

    @property
    def crop(self) -> CropBox | None:
        """The crop box in the source video's pixels (None for a SUBJECT not cut from a video)."""
        c = self.meta.get("inputs", {}).get("crop")
        return CropBox(**c) if c else None

    @property
    def video(self) -> dict | None:
        """The source video's path, width, height, fps and duration (None when unknown)."""
        return self.meta.get("inputs", {}).get("video")

    @property
    def n_frames(self) -> int:
        return int(self.meta["n_frames"])

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def audio_path(self) -> Path | None:
        p = self.root / "audio.wav"
        return p if p.is_file() else None

    def frame(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return read_frame(self.root, i)

    def mask(self, i: int) -> np.ndarray:
        """(H, W) float32 in 0..1."""
        import cv2

        m = cv2.imread(str(self.root / "masks" / mask_name(i)), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise FileNotFoundError(f"{self.root / 'masks' / mask_name(i)}: missing or unreadable mask")
        return m.astype(np.float32) / 255.0

    def params(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> HeadParams:
        path = self.root / "params.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from the SUBJECT folder")
        return read_params(path, dtype, device)

    def camera(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Camera:
        path = self.root / "camera.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from the SUBJECT folder")
        return read_camera(path, dtype, device)[0]

    def head_model(self) -> HeadModel:
        """The head model the subject was tracked with (``meta.json`` keeps its spec and component counts)."""
        hm = self.meta["head_model"]
        return load_head_model(hm["spec"], n_shape=hm["n_shape"], n_expression=hm["n_expression"])

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        return train_test_split(self.n_frames, self.fps)


class SubjectWriter:
    """Builds a SUBJECT folder under ``ROOT.partial`` and renames it to ``ROOT`` in :meth:`finish`.

    ``resume=True`` keeps what an interrupted run left in ``ROOT.partial`` (the caller decides what it reuses);
    otherwise the partial folder starts empty. Nothing at ``ROOT`` is touched before :meth:`finish`.
    """

    def __init__(self, root: str | os.PathLike, resume: bool = False) -> None:
        self.root = Path(root)
        self.work = start_folder(self.root, resume)
        (self.work / "frames").mkdir(parents=True, exist_ok=True)
        (self.work / "masks").mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """Where file ``name`` goes in the folder being built (audio.wav, landmarks.npz, overlay.mp4, ...)."""
        return self.work / name

    def frame(self, i: int, rgb: np.ndarray, quality: int = 95) -> None:
        """Frame ``i``: (H, W, 3) uint8 RGB, stored as JPEG."""
        import cv2

        with atomic_write(self.work / "frames" / frame_name(i), ".jpg") as tmp:
            if not cv2.imwrite(str(tmp), np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]):
                raise OSError(f"{tmp}: could not write the frame")

    def mask(self, i: int, mask: np.ndarray) -> None:
        """Person mask ``i``: (H, W) float in 0..1 or uint8 0..255, stored as 8-bit PNG."""
        import cv2

        m = np.asarray(mask)
        if m.dtype != np.uint8:
            m = np.round(np.clip(m, 0.0, 1.0) * 255).astype(np.uint8)
        with atomic_write(self.work / "masks" / mask_name(i), ".png") as tmp:
            if not cv2.imwrite(str(tmp), m):
                raise OSError(f"{tmp}: could not write the mask")

    def read_frame(self, i: int) -> np.ndarray:
        return read_frame(self.work, i)

    def params(self, params: HeadParams, **extra: np.ndarray) -> None:
        """params.npz: the HeadParams fields (float32) and any extra per-frame arrays."""
        arrays = {k: v.astype(np.float32) for k, v in params.to_numpy().items()}
        save_npz(self.work / "params.npz", **arrays, **extra)

    def camera(self, camera: Camera, fps: float) -> None:
        save_camera(self.work / "camera.json", camera, fps)

    def finish(self, meta: StageMeta) -> Path:
        """Write meta.json (last), replace any old ``ROOT`` and rename the folder into place. Returns ``ROOT``."""
        for key in ("n_frames", "fps", "head_model"):
            if key not in meta.extra:
                raise ValueError(f"a SUBJECT's meta.json needs {key!r}")
        write_meta(self.work / "meta.json", meta)
        return finish_folder(self.root)
