"""FLAME (Li et al. 2017): the method's head model, loaded from the official files users bring.

5023 vertices and 9976 triangles in the official files; shape (<= 300) and expression (<= 100)
components; pose = global rotation, neck, jaw and two eyes (5 joints, linear blend skinning with
pose correctives). Landmarks come from an embedding file (see ``landmark_embedding``), regions from
the official ``FLAME_masks.pkl`` when present, else from skinning weights and landmarks.

Mouth interior. FLAME has a hole between the lips and nothing behind it, so an open mouth shows the inside of the
back of the head. ``FlameModel(..., mouth=True)`` (the default) appends procedural geometry built from the template's
inner-lip landmarks (:func:`mouth_geometry`): an upper and a lower row of teeth, each a curved strip following a
dental arch a few millimetres behind the inner lips, and a curved back wall (the ``mouth`` region: the dark cavity)
behind them. The upper teeth are skinned to the neck joint only (rigid with the head), the lower teeth to the jaw
joint only, the back wall from the neck joint at its top to the jaw joint at its bottom; identity shape directions
are copied from the nearest lip vertex, expression directions and pose correctives are zero (teeth do not deform).
The new vertices and faces come after FLAME's own, so landmark embeddings and masks keep their indices; they form
the regions ``teeth_upper``, ``teeth_lower`` and ``mouth`` and are removed from the other regions.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..geometry.rotation import axis_angle_to_matrix
from .base import MOUTH_REGION_NAMES, REGION_NAMES, HeadModel, barycentric_points, vertex_normals
from .flame_format import SHAPE_BLOCK, FlameFileError, read_flame_pickle
from .landmark_embedding import LandmarkEmbedding, load_landmark_embedding, merge_embeddings, yaw_bins
from .lbs import lbs

#: Embedding files looked for beside the model file when none are given, in order of preference.
EMBEDDING_NAMES = (
    "landmark_embedding.npy",
    "flame_static_embedding.pkl",
    "flame_static_embedding_68.pkl",
    "flame_dynamic_embedding.npy",
)
MASKS_NAME = "FLAME_masks.pkl"
#: Our region name -> FLAME_masks.pkl keys.
MASK_KEYS = {
    "face": ("face",),
    "lips": ("lips",),
    "eyes": ("left_eyeball", "right_eyeball"),
    "scalp": ("scalp",),
    "neck": ("neck",),
}


class FlameModel(HeadModel):
    """A FLAME-format head model (official FLAME, or the synthetic head written in FLAME's layout).

    ``dtype`` is the precision the arrays are stored in (``.to(dtype)`` later converts, but cannot restore
    precision lost by storing in float32).
    """

    pose_parts = ("rotation", "neck", "jaw", "eyes")

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        embedding: LandmarkEmbedding,
        n_shape: int = 300,
        n_expression: int = 100,
        regions: dict[str, np.ndarray] | None = None,
        kind: str = "flame",
        source: str = "<arrays>",
        dtype: torch.dtype = torch.float32,
        mouth: bool = True,
    ):
        super().__init__()
        mouth_regions = {name: np.zeros(0, dtype=np.int64) for name in MOUTH_REGION_NAMES}
        n_own = len(arrays["v_template"])
        if mouth:
            arrays, mouth_regions = add_mouth_geometry(arrays, embedding)
        n_dirs = arrays["shapedirs"].shape[2]
        n_expr_avail = max(n_dirs - SHAPE_BLOCK, 0)
        if not 0 <= n_shape <= min(SHAPE_BLOCK, n_dirs):
            raise FlameFileError(f"{source}: n_shape={n_shape}, but the file has {min(SHAPE_BLOCK, n_dirs)} shape components")
        if not 0 <= n_expression <= n_expr_avail:
            raise FlameFileError(f"{source}: n_expression={n_expression}, but the file has {n_expr_avail} expression components")
        embedding.check_faces(len(arrays["f"]), source)
        self.kind = kind
        self.source = source
        self.n_file_vertices = n_own  # the file's own vertices (the mouth geometry added here comes after them)
        self.n_shape = n_shape
        self.n_expression = n_expression
        self.expression_names = [f"expr{i:03d}" for i in range(n_expression)]
        self.parents = [-1] + [int(p) for p in arrays["kintree_table"][0, 1:]]
        if len(self.parents) != 5:
            raise FlameFileError(f"{source}: FLAME has 5 joints (root, neck, jaw, eyes), the file has {len(self.parents)}")

        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731
        sd = arrays["shapedirs"]
        dirs = np.concatenate([sd[..., :n_shape], sd[..., SHAPE_BLOCK : SHAPE_BLOCK + n_expression]], axis=-1)
        self.register_buffer("template", f32(arrays["v_template"]))
        self.register_buffer("faces", torch.as_tensor(arrays["f"], dtype=torch.long))
        self.register_buffer("shapedirs", f32(dirs))
        self.register_buffer("posedirs", f32(arrays["posedirs"]))
        j_reg = np.asarray(arrays["J_regressor"], dtype=np.float64)
        self.register_buffer("joint_template", f32(j_reg @ arrays["v_template"]))
        self.register_buffer("joint_dirs", f32(np.einsum("jv,vck->jck", j_reg, dirs)))
        self.register_buffer("weights", f32(arrays["weights"]))
        self.register_buffer("landmark_faces", torch.as_tensor(embedding.face_idx, dtype=torch.long))
        self.register_buffer("landmark_bary", f32(embedding.bary))
        self.register_buffer("landmark_weights", f32(embedding.valid))
        self.has_dynamic_contour = embedding.dynamic_face_idx is not None
        if self.has_dynamic_contour:
            self.register_buffer("dynamic_faces", torch.as_tensor(embedding.dynamic_face_idx, dtype=torch.long))
            self.register_buffer("dynamic_bary", f32(embedding.dynamic_bary))
        if regions is None:
            regions = derive_regions(self)
        for name in REGION_NAMES:
            idx = np.asarray(regions[name], dtype=np.int64)
            self.register_buffer(f"region_{name}", torch.as_tensor(idx[idx < n_own], dtype=torch.long))
        for name in MOUTH_REGION_NAMES:
            self.register_buffer(f"region_{name}", torch.as_tensor(mouth_regions[name], dtype=torch.long))

    @classmethod
    def from_files(
        cls,
        model_path: str | os.PathLike,
        n_shape: int = 300,
        n_expression: int = 100,
        landmark_paths: tuple[str | os.PathLike, ...] = (),
        masks_path: str | os.PathLike | None = None,
        kind: str = "flame",
        dtype: torch.dtype = torch.float32,
        mouth: bool = True,
    ) -> "FlameModel":
        """Load an official FLAME 2020/2023 pickle, its landmark embedding(s) and optional region masks.

        Embedding and masks files default to the known names beside the model file.
        """
        model_path = Path(model_path)
        arrays = read_flame_pickle(model_path)
        if not landmark_paths:
            landmark_paths = tuple(p for n in EMBEDDING_NAMES if (p := model_path.parent / n).is_file())
            if not landmark_paths:
                raise FileNotFoundError(
                    f"{model_path}: no landmark embedding beside it (looked for {', '.join(EMBEDDING_NAMES)}); "
                    "get landmark_embedding.npy (DECA/EMOCA) or flame_static_embedding.pkl (FLAME site) and put it there"
                )
        embedding = merge_embeddings([load_landmark_embedding(p) for p in landmark_paths])
        if masks_path is None and (model_path.parent / MASKS_NAME).is_file():
            masks_path = model_path.parent / MASKS_NAME
        regions = load_flame_masks(masks_path, len(arrays["v_template"])) if masks_path is not None else None
        return cls(arrays, embedding, n_shape, n_expression, regions, kind=kind, source=str(model_path), dtype=dtype,
                   mouth=mouth)

    def _deform(self, shape, expression, rotation, neck, jaw, eyes, translation, vertex_ids=None) -> torch.Tensor:
        x = shape
        coeffs = torch.cat([shape, expression], dim=1)
        pose = torch.stack([rotation, neck, jaw, eyes[:, :3], eyes[:, 3:]], dim=1)  # (B, 5, 3)
        rows = slice(None) if vertex_ids is None else vertex_ids
        verts = lbs(
            coeffs, pose, self.template[rows].to(x), self.shapedirs[rows].to(x), self.posedirs[rows].to(x),
            self.joint_template.to(x), self.joint_dirs.to(x), self.parents, self.weights[rows].to(x),
        )
        return verts + translation[:, None, :]

    def landmarks(self, vertices: torch.Tensor, head_rotation: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V, 3) -> (B, 68, 3). With a dynamic contour embedding and ``head_rotation`` (B, 3) axis-angle of
        global rotation composed with the neck (see :meth:`head_rotation`), the contour follows the head's yaw."""
        lmk = super().landmarks(vertices)
        if not self.has_dynamic_contour or head_rotation is None:
            return lmk
        bins = yaw_bins(head_rotation)
        tri = self.faces[self.dynamic_faces[bins]]  # (B, 17, 3)
        bary = self.dynamic_bary[bins].to(vertices)  # (B, 17, 3)
        corners = torch.gather(vertices, 1, tri.reshape(len(bins), -1, 1).expand(-1, -1, 3)).reshape(*tri.shape, 3)
        contour = (corners * bary[..., None]).sum(-2)
        return torch.cat([contour, lmk[:, 17:]], dim=1)

    @staticmethod
    def head_rotation(rotation: torch.Tensor, neck: torch.Tensor) -> torch.Tensor:
        """(B, 3) global and neck axis-angles -> (B, 3, 3) rotation of the head (for the dynamic contour)."""
        return axis_angle_to_matrix(rotation) @ axis_angle_to_matrix(neck)


#: Segments along the dental arch of each procedural row.
MOUTH_SEGMENTS = 16
#: Neck (head) and jaw joint indices in FLAME's kinematic tree.
NECK_JOINT, JAW_JOINT = 1, 2


def mouth_geometry(lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Procedural teeth rows and mouth back wall from the 68 template landmarks (metres, y up, z towards the camera).

    The arch: x = x0 + W sin t, z = z0 - D (1 - cos t) for t in [-pi/2, pi/2], with x0 the mouth centre, W 0.95 of
    the half distance between the inner mouth corners (60, 64), z0 3 mm behind the rearmost inner lip point (60..67)
    and D = 0.9 W. With h = 0.35 of the outer lip height (51 to 57) and the lip line y0 (the mean height of the inner
    lip points 62 and 66), the upper row spans y0 - 0.3 h .. y0 + h, the lower row y0 - h .. y0 + 0.2 h, 1.5 mm
    behind the upper (an overbite: the rows overlap when the mouth is closed). The back wall follows the same arch 0.6 W
    further back, from 1.6 row heights above the lip line to 1.6 below, in three rows of vertices.

    Returns:
        vertices (N, 3), faces (M, 3) indexing them, local vertex index sets per region (teeth_upper, teeth_lower,
        mouth), and the jaw share of each vertex's skinning (N,) in [0, 1] (the rest on the neck joint).
    """
    left, right = lmk[60], lmk[64]
    x0 = 0.5 * (left[0] + right[0])
    W = 0.95 * 0.5 * abs(right[0] - left[0])
    D = 0.9 * W
    z0 = lmk[60:68, 2].min() - 0.003
    y0 = 0.5 * (lmk[62, 1] + lmk[66, 1])
    h = 0.35 * abs(lmk[51, 1] - lmk[57, 1])
    t = np.linspace(-np.pi / 2, np.pi / 2, MOUTH_SEGMENTS + 1)
    ax, az = x0 + W * np.sin(t), z0 - D * (1.0 - np.cos(t))

    verts, faces, jaw, regions = [], [], [], {}

    def strip(name: str, heights: list[float], back: float, jaw_share: list[float]) -> None:
        start = sum(len(v) for v in verts)
        rows = [np.stack([ax, np.full_like(ax, y0 + y), az - back], axis=1) for y in heights]
        verts.append(np.concatenate(rows))
        jaw.append(np.repeat(np.asarray(jaw_share, dtype=np.float64), len(ax)))
        n = len(ax)
        for r in range(len(heights) - 1):
            for i in range(MOUTH_SEGMENTS):
                a, b = start + r * n + i, start + r * n + i + 1
                c, d = a + n, b + n
                faces.extend([(a, c, b), (b, c, d)])
        regions[name] = np.arange(start, start + len(heights) * n)

    strip("teeth_upper", [h, 0.35 * h, -0.3 * h], 0.0, [0.0, 0.0, 0.0])  # overbite: the upper row in front,
    strip("teeth_lower", [0.2 * h, -0.4 * h, -h], 0.0015, [1.0, 1.0, 1.0])  # overlapping the lower when closed
    strip("mouth", [1.6 * h, 0.0, -1.6 * h], 0.6 * W, [0.0, 0.5, 1.0])
    return np.concatenate(verts), np.asarray(faces, dtype=np.int64), regions, np.concatenate(jaw)


def add_mouth_geometry(arrays: dict[str, np.ndarray], embedding: LandmarkEmbedding
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """FLAME arrays with :func:`mouth_geometry` appended (module docstring), and the new regions (global indices)."""
    template = np.asarray(arrays["v_template"], dtype=np.float64)
    faces = np.asarray(arrays["f"], dtype=np.int64)
    tri = torch.as_tensor(faces)[torch.as_tensor(embedding.face_idx, dtype=torch.long)]
    lmk = barycentric_points(torch.as_tensor(template)[None], tri, torch.as_tensor(embedding.bary))[0].numpy()
    verts, new_faces, local, jaw = mouth_geometry(lmk)
    n0, n = len(template), len(verts)
    out = dict(arrays)
    out["v_template"] = np.concatenate([template, verts]).astype(np.asarray(arrays["v_template"]).dtype)
    out["f"] = np.concatenate([faces, new_faces + n0])
    sd = np.asarray(arrays["shapedirs"])
    lips = np.linalg.norm(template[:, None] - lmk[None, 48:68], axis=-1).min(1).argsort()[:1]
    nearest = np.full(n, lips[0])
    new_sd = np.zeros((n, 3, sd.shape[2]), dtype=sd.dtype)
    k = min(SHAPE_BLOCK, sd.shape[2])
    new_sd[..., :k] = sd[nearest, :, :k]  # identity moves the teeth with the mouth; expressions do not
    out["shapedirs"] = np.concatenate([sd, new_sd])
    pd = np.asarray(arrays["posedirs"])
    out["posedirs"] = np.concatenate([pd, np.zeros((n, *pd.shape[1:]), dtype=pd.dtype)])
    jr = np.asarray(arrays["J_regressor"])
    out["J_regressor"] = np.concatenate([jr, np.zeros((jr.shape[0], n), dtype=jr.dtype)], axis=1)
    w = np.asarray(arrays["weights"])
    new_w = np.zeros((n, w.shape[1]), dtype=w.dtype)
    new_w[:, NECK_JOINT] = 1.0 - jaw
    new_w[:, JAW_JOINT] = jaw
    out["weights"] = np.concatenate([w, new_w])
    return out, {name: idx + n0 for name, idx in local.items()}


def load_flame_masks(path: str | os.PathLike, n_vertices: int) -> dict[str, np.ndarray]:
    """Regions from the official ``FLAME_masks.pkl`` (a pickled dict: region name -> vertex indices)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FLAME masks file not found")
    with open(path, "rb") as fh:
        masks = pickle.load(fh, encoding="latin1")
    if not isinstance(masks, dict):
        raise FlameFileError(f"{path}: expected a dict of vertex index arrays, found {type(masks).__name__}")
    regions = {}
    for ours, keys in MASK_KEYS.items():
        missing = [k for k in keys if k not in masks]
        if missing:
            raise FlameFileError(f"{path}: masks file lacks {missing}")
        idx = np.unique(np.concatenate([np.asarray(masks[k]).reshape(-1) for k in keys]).astype(np.int64))
        if idx.size and (idx.min() < 0 or idx.max() >= n_vertices):
            raise FlameFileError(f"{path}: region '{ours}' indexes vertices outside the mesh")
        regions[ours] = idx
    return regions


def derive_regions(model: FlameModel) -> dict[str, np.ndarray]:
    """Regions when no masks file is given, from skinning weights and the template's landmarks.

    eyes: vertices skinned mostly to an eye joint; neck: skinned partly to the root joint, or below the chin and
    not on the jaw; lips: within 0.35 of the
    mouth width of a lip landmark; face: front-facing vertices between the face contour's sides, from the
    chin to above the brows; scalp: the rest above the brows.
    """
    with torch.no_grad():
        v = model.template[None]
        lmk = model.landmarks(v)[0].numpy()
        normals = vertex_normals(v, model.faces)[0].numpy()
    verts = model.template.numpy()
    dominant = model.weights.numpy().argmax(1)
    eyes = np.isin(dominant, (3, 4))
    weights = model.weights.numpy()
    valid = model.landmark_weights.numpy() > 0
    mouth_w = np.linalg.norm(lmk[54] - lmk[48])
    lips_d = np.linalg.norm(verts[:, None] - lmk[None, 48:68], axis=-1).min(1)
    lips = (lips_d < 0.35 * mouth_w) & ~eyes
    brow_y = lmk[17:27, 1].max()
    nose_len = np.linalg.norm(lmk[27] - lmk[33])
    x_lo, x_hi = (lmk[0, 0], lmk[16, 0]) if valid[0] and valid[16] else (lmk[36, 0] - nose_len, lmk[45, 0] + nose_len)
    x_lo, x_hi = min(x_lo, x_hi), max(x_lo, x_hi)
    chin_y = lmk[8, 1] if valid[8] else lmk[57, 1] - 0.5 * nose_len
    neck = ((weights[:, 0] > 0.01) | ((verts[:, 1] < chin_y - 0.1 * nose_len) & (dominant != 2))) & ~eyes
    face = (
        (verts[:, 0] > x_lo) & (verts[:, 0] < x_hi) & (verts[:, 1] > chin_y) & (verts[:, 1] < brow_y + 0.6 * nose_len)
        & (normals[:, 2] > 0.2) & ~eyes & ~neck
    )
    scalp = (verts[:, 1] > brow_y) & ~face & ~eyes & ~neck
    return {name: np.flatnonzero(m) for name, m in
            {"face": face | lips, "lips": lips, "eyes": eyes, "scalp": scalp, "neck": neck}.items()}
