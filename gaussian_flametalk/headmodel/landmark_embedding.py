"""FLAME landmark embeddings: landmarks as barycentric points on mesh triangles.

Reads the common file formats users have next to their FLAME model:
- ``landmark_embedding.npy`` (DECA/EMOCA style): a pickled dict with ``static_lmk_faces_idx`` (51,),
  ``static_lmk_bary_coords`` (51,3), optionally ``full_lmk_faces_idx`` (1,68) / ``full_lmk_bary_coords``
  (1,68,3) and ``dynamic_lmk_faces_idx`` (79,17) / ``dynamic_lmk_bary_coords`` (79,17,3);
- ``flame_static_embedding.pkl`` (FLAME/RingNet style): ``lmk_face_idx`` (51 or 68,) and
  ``lmk_b_coords`` (51 or 68, 3);
- ``flame_dynamic_embedding.npy``: ``lmk_face_idx`` (79,17) and ``lmk_b_coords`` (79,17,3);
- the same keys in an ``.npz``.
A 51-point embedding covers iBUG points 17-67 (no face contour); the contour comes from a 68-point
or dynamic embedding when one is given.

Dynamic contour: the 17 contour points depend on the head's yaw (bins of 1 degree, 79 bins, as the
common FLAME tracking code lays them out: bin = yaw for yaw in 0..39, bin = 39 - yaw for yaw in
-39..-1, where yaw is minus the Y Euler angle of the global-and-neck rotation in degrees).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import GftError


class LandmarkEmbeddingError(GftError, ValueError):
    """A landmark embedding file that cannot be used; the message names the file and the problem."""


@dataclass
class LandmarkEmbedding:
    """iBUG-68 landmarks as (triangle, barycentric) pairs.

    Attributes:
        face_idx: (68,) triangle index per landmark (0 where undefined).
        bary: (68, 3) barycentric coordinates.
        valid: (68,) bool, False where the embedding defines no point (the contour of a 51-point file).
        dynamic_face_idx: (79, 17) contour triangles per yaw bin, or None.
        dynamic_bary: (79, 17, 3), or None.
    """

    face_idx: np.ndarray
    bary: np.ndarray
    valid: np.ndarray
    dynamic_face_idx: np.ndarray | None = None
    dynamic_bary: np.ndarray | None = None

    def check_faces(self, n_faces: int, path: str | os.PathLike) -> None:
        for name, idx in (("static", self.face_idx), ("dynamic", self.dynamic_face_idx)):
            if idx is not None and idx.size and (idx.min() < 0 or idx.max() >= n_faces):
                raise LandmarkEmbeddingError(f"{path}: {name} landmark triangles index outside the mesh's {n_faces} faces")


def load_landmark_embedding(path: str | os.PathLike) -> LandmarkEmbedding:
    """Read any of the formats in the module docstring (several files: see :func:`merge_embeddings`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: landmark embedding not found (it ships with FLAME, DECA or EMOCA: landmark_embedding.npy or "
            "flame_static_embedding.pkl)"
        )
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        elif path.suffix == ".npy":
            data = np.load(path, allow_pickle=True, encoding="latin1")
            data = data.item() if data.dtype == object and data.shape == () else data
        else:
            with open(path, "rb") as fh:
                data = pickle.load(fh, encoding="latin1")
    except Exception as exc:
        raise LandmarkEmbeddingError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise LandmarkEmbeddingError(f"{path}: expected a dict of landmark arrays, found {type(data).__name__}")
    return _parse(data, path)


def _parse(data: dict, path: Path) -> LandmarkEmbedding:
    face_idx = np.zeros(68, dtype=np.int64)
    bary = np.zeros((68, 3))
    valid = np.zeros(68, dtype=bool)
    dyn_f = dyn_b = None

    def put(f: np.ndarray, b: np.ndarray, what: str) -> None:
        f = np.asarray(f).reshape(-1).astype(np.int64)
        b = np.asarray(b, dtype=np.float64).reshape(-1, 3)
        if len(f) != len(b):
            raise LandmarkEmbeddingError(f"{path}: {what} has {len(f)} triangles but {len(b)} barycentric rows")
        if len(f) == 68:
            face_idx[:], bary[:], valid[:] = f, b, True
        elif len(f) == 51:
            face_idx[17:], bary[17:], valid[17:] = f, b, True
        else:
            raise LandmarkEmbeddingError(f"{path}: {what} has {len(f)} points; expected 51 or 68 (iBUG layout)")

    if "full_lmk_faces_idx" in data:
        put(data["full_lmk_faces_idx"], data["full_lmk_bary_coords"], "full_lmk_faces_idx")
    elif "static_lmk_faces_idx" in data:
        put(data["static_lmk_faces_idx"], data["static_lmk_bary_coords"], "static_lmk_faces_idx")
    if "dynamic_lmk_faces_idx" in data:
        dyn_f, dyn_b = data["dynamic_lmk_faces_idx"], data["dynamic_lmk_bary_coords"]
    if "lmk_face_idx" in data:
        f = np.asarray(data["lmk_face_idx"])
        if f.ndim == 2:
            dyn_f, dyn_b = f, data["lmk_b_coords"]
        else:
            put(f, data["lmk_b_coords"], "lmk_face_idx")
    if dyn_f is not None:
        dyn_f = np.asarray(dyn_f).astype(np.int64)
        dyn_b = np.asarray(dyn_b, dtype=np.float64)
        if dyn_f.shape != (79, 17) or dyn_b.shape != (79, 17, 3):
            raise LandmarkEmbeddingError(
                f"{path}: dynamic contour embedding must be (79, 17) triangles and (79, 17, 3) coordinates, "
                f"got {dyn_f.shape} and {dyn_b.shape}"
            )
    if not valid.any() and dyn_f is None:
        raise LandmarkEmbeddingError(
            f"{path}: no landmark arrays found (keys {sorted(data)}); expected e.g. static_lmk_faces_idx or lmk_face_idx"
        )
    return LandmarkEmbedding(face_idx, bary, valid, dyn_f, dyn_b)


def merge_embeddings(embeddings: list[LandmarkEmbedding]) -> LandmarkEmbedding:
    """Combine e.g. a static 51-point file and a dynamic contour file (later files fill what earlier lack)."""
    out = LandmarkEmbedding(np.zeros(68, np.int64), np.zeros((68, 3)), np.zeros(68, bool))
    for e in embeddings:
        fill = e.valid & ~out.valid
        out.face_idx[fill], out.bary[fill], out.valid[fill] = e.face_idx[fill], e.bary[fill], True
        if e.dynamic_face_idx is not None and out.dynamic_face_idx is None:
            out.dynamic_face_idx, out.dynamic_bary = e.dynamic_face_idx, e.dynamic_bary
    return out


def yaw_bins(head_rotation: torch.Tensor) -> torch.Tensor:
    """Dynamic-contour bin per frame. head_rotation (B, 3, 3) (global @ neck) -> (B,) long in 0..78."""
    r = head_rotation
    euler_y = torch.atan2(-r[:, 2, 0], torch.sqrt(r[:, 0, 0] ** 2 + r[:, 1, 0] ** 2))
    yaw = torch.round(torch.rad2deg(-euler_y)).clamp(-39, 39).long()
    return torch.where(yaw >= 0, yaw, 39 - yaw)
