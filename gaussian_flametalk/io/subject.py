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
temporary name and renamed, so a killed run never leaves a finished-looking SUBJECT.
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


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def save_camera(path: Path, camera: Camera, fps: float) -> None:
    write_json(path, {
        "K": camera.K.tolist(), "viewmat": camera.viewmat.tolist(), "width": camera.width, "height": camera.height,
        "near": camera.near, "far": camera.far, "fps": fps,
        "convention": "OpenCV camera axes, world-to-camera viewmat, pixel centres at +0.5",
    })


@dataclass
class Subject:
    """A tracked SUBJECT folder (read-only view)."""

    root: Path
    meta: dict

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Subject":
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            partial = " (an interrupted run left it unfinished: run gft track again)" if root.is_dir() else ""
            raise FileNotFoundError(f"{root}: not a tracked SUBJECT folder, no meta.json{partial}")
        meta = json.loads(meta_path.read_text())
        if meta.get("stage") != "track":
            raise ValueError(f"{root}: meta.json is not from gft track (stage {meta.get('stage')!r})")
        return cls(root, meta)

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
        with np.load(self.root / "params.npz") as z:
            return HeadParams.from_numpy({k: z[k] for k in HeadParams.NAMES}, dtype=dtype, device=device)

    def camera(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Camera:
        c = json.loads((self.root / "camera.json").read_text())
        return Camera(torch.tensor(c["viewmat"], dtype=dtype, device=device), torch.tensor(c["K"], dtype=dtype, device=device),
                      int(c["width"]), int(c["height"]), float(c["near"]), float(c["far"]))

    def head_model(self) -> HeadModel:
        """The head model the subject was tracked with (``meta.json`` keeps its spec and component counts)."""
        hm = self.meta["head_model"]
        return load_head_model(hm["spec"], n_shape=hm["n_shape"], n_expression=hm["n_expression"])

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        return train_test_split(self.n_frames, self.fps)
