"""A small procedural head in FLAME's exact format, for tests and the demo. It is not FLAME.

About 2,700 vertices: an ellipsoidal head on a neck, a nose, brows, a mouth slit whose lower lip is
skinned to a jaw joint, and two eyeballs on eye joints; 10 shape and 10 expression components made of
smooth displacement fields (head width/height/depth, nose, jaw, brows...; smile, pucker, brow raise,
blinks...), small pose correctives, a 68-point iBUG landmark embedding and region masks. It can be
written as an official-layout FLAME pickle (shapedirs padded to 300 shape + 100 expression columns,
chumpy objects, a sparse joint regressor) with a ``landmark_embedding.npy`` and ``FLAME_masks.pkl``
beside it, so the FLAME loader is exercised end to end on the same object types as the real files.

Coordinates: metres, y up, z out of the face, x to the subject's left; joints 0 root (neck base),
1 neck, 2 jaw, 3 left eye, 4 right eye.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from .flame import EMBEDDING_NAMES, MASKS_NAME, FlameModel
from .flame_format import SHAPE_BLOCK, write_flame_pickle
from .landmark_embedding import LandmarkEmbedding

CM = 0.01
N_SHAPE = 10
N_EXPRESSION = 10
EXPRESSION_NAMES = (
    "smile", "pucker", "brow_raise", "brow_lower", "blink_left", "blink_right",
    "cheek_puff", "mouth_stretch", "upper_lip_raise", "lower_lip_down",
)
SHAPE_NAMES = (
    "width", "height", "depth", "nose", "jaw_width", "brow_ridge", "chin", "cheeks", "forehead", "neck",
)

_RX, _RY, _RZ = 7.5 * CM, 10.0 * CM, 9.0 * CM  # head ellipsoid radii
_HEAD_ROWS, _NECK_ROWS, _COLS = 34, 10, 56
_EYE_R = 1.15 * CM
_EYE_CENTRES = np.array([[3.2, 2.0, 6.9], [-3.2, 2.0, 6.9]]) * CM  # left (+x), right


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _bump(p: np.ndarray, centre, sigma) -> np.ndarray:
    """Anisotropic Gaussian bump (V,) of points p (V,3) around centre with per-axis sigma (metres)."""
    d = (p - np.asarray(centre) * CM) / (np.asarray(sigma, dtype=float) * CM)
    return np.exp(-0.5 * (d * d).sum(-1))


def _front_z(x: float, y: float) -> float:
    """z of the bare ellipsoid's front surface at (x, y) (metres)."""
    s = 1 - (x / _RX) ** 2 - (y / _RY) ** 2
    return _RZ * np.sqrt(max(s, 0.0))


def _relief(p: np.ndarray) -> np.ndarray:
    """Outward (z) relief of the face: nose, brows, chin, eye sockets (metres, (V,))."""
    front = _smoothstep(0.0, 4 * CM, p[:, 2])
    nose = 2.2 * CM * _bump(p, (0, -0.3, 9), (0.9, 1.9, 3))
    brows = 0.5 * CM * (_bump(p, (3.2, 3.6, 7), (1.8, 0.6, 3)) + _bump(p, (-3.2, 3.6, 7), (1.8, 0.6, 3)))
    chin = 0.6 * CM * _bump(p, (0, -8.0, 6), (2.5, 1.2, 4))
    lips = 0.4 * CM * _bump(p, (0, -4.5, 8), (2.3, 1.0, 3))
    sockets = -1.1 * CM * (_bump(p, (3.2, 2.0, 7), (1.3, 1.0, 3)) + _bump(p, (-3.2, 2.0, 7), (1.3, 1.0, 3)))
    return front * (nose + brows + chin + lips + sockets)


def _surface() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Head-and-neck surface: vertices (N,3), faces (F,3), per-vertex row index, and the mouth slit info."""
    rows_y, rows_rx, rows_rz, rows_zc = [], [], [], []
    phis = np.linspace(0, np.pi, _HEAD_ROWS + 2)[1:-1]  # exclude the poles
    phis = phis[np.cos(phis) * _RY > -8.6 * CM]  # stop at chin level
    for phi in phis:
        rows_y.append(_RY * np.cos(phi))
        rows_rx.append(_RX * np.sin(phi))
        rows_rz.append(_RZ * np.sin(phi))
        rows_zc.append(0.0)
    for t in np.linspace(0, 1, _NECK_ROWS + 1)[1:]:  # neck: from the last head ring to a cylinder
        y = rows_y[-1] + t * (-18 * CM - rows_y[-1])
        rows_y.append(y)
        rows_rx.append((1 - t) * rows_rx[len(phis) - 1] + t * 5.0 * CM)
        rows_rz.append((1 - t) * rows_rz[len(phis) - 1] + t * 5.0 * CM)
        rows_zc.append(t * -1.0 * CM)
    n_rows, n_head_rows = len(rows_y), len(phis)
    theta = 2 * np.pi * np.arange(_COLS) / _COLS  # theta=0 faces +z (front)
    grid = np.zeros((n_rows, _COLS, 3))
    for r in range(n_rows):
        grid[r, :, 0] = rows_rx[r] * np.sin(theta)
        grid[r, :, 1] = rows_y[r]
        grid[r, :, 2] = rows_zc[r] + rows_rz[r] * np.cos(theta)
    verts = [np.array([[0.0, _RY, 0.0]]), grid.reshape(-1, 3)]
    idx = 1 + np.arange(n_rows * _COLS).reshape(n_rows, _COLS)
    row_of = np.concatenate([[-1], np.repeat(np.arange(n_rows), _COLS)])

    # Mouth slit on the head row nearest y = -4.5 cm, across the front columns: the lower lip gets its own copies.
    mouth_row = int(np.argmin(np.abs(np.array(rows_y[:n_head_rows]) + 4.5 * CM)))
    ang = np.degrees(np.arctan2(np.sin(theta), np.cos(theta)))
    slit_cols = np.flatnonzero(np.abs(ang) < 24.0)
    slit_cols = slit_cols[np.argsort(ang[slit_cols])]  # the two end columns stay shared (the mouth corners)
    inner = slit_cols[1:-1]
    lower_idx = idx[mouth_row].copy()
    n0 = 1 + n_rows * _COLS
    lower_idx[inner] = n0 + np.arange(len(inner))
    verts.append(grid[mouth_row, inner])
    row_of = np.concatenate([row_of, np.full(len(inner), mouth_row)])

    faces = [np.stack([np.zeros(_COLS, int), idx[0, (np.arange(_COLS) + 1) % _COLS], idx[0]], 1)]  # top fan
    for r in range(n_rows - 1):
        top = lower_idx if r == mouth_row else idx[r]
        c0, c1 = np.arange(_COLS), (np.arange(_COLS) + 1) % _COLS
        a, b, c, d = top[c0], top[c1], idx[r + 1, c1], idx[r + 1, c0]
        # outward orientation: counter-clockwise seen from outside
        faces += [np.stack([a, d, c], 1), np.stack([a, c, b], 1)]
    verts = np.concatenate(verts)
    verts[:, 2] += _relief(verts)
    info = {"mouth_row": mouth_row, "lower_lip": lower_idx[inner], "upper_lip": idx[mouth_row, inner],
            "n_head_rows": n_head_rows, "rows_y": np.array(rows_y)}
    return verts, np.concatenate(faces), row_of, info


def _eyeball(centre: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """UV sphere (vertices (N,3), faces (F,3) with indices offset)."""
    n_lat, n_lon = 8, 12
    lat = np.linspace(0, np.pi, n_lat + 2)[1:-1]
    lon = 2 * np.pi * np.arange(n_lon) / n_lon
    ring = np.stack(
        [np.outer(np.sin(lat), np.sin(lon)), np.repeat(np.cos(lat)[:, None], n_lon, 1), np.outer(np.sin(lat), np.cos(lon))],
        -1,
    ).reshape(-1, 3)
    verts = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]]) * _EYE_R + centre
    idx = 1 + np.arange(n_lat * n_lon).reshape(n_lat, n_lon)
    c0, c1 = np.arange(n_lon), (np.arange(n_lon) + 1) % n_lon
    faces = [np.stack([np.zeros(n_lon, int), idx[0, c1], idx[0, c0]], 1)]
    for r in range(n_lat - 1):
        faces += [np.stack([idx[r, c0], idx[r, c1], idx[r + 1, c1]], 1), np.stack([idx[r, c0], idx[r + 1, c1], idx[r + 1, c0]], 1)]
    bottom = n_lat * n_lon + 1
    faces.append(np.stack([np.full(n_lon, bottom), idx[-1, c0], idx[-1, c1]], 1))
    return verts, np.concatenate(faces) + offset


def _ray_hits(origins: np.ndarray, direction: np.ndarray, verts: np.ndarray, faces: np.ndarray):
    """First hit of rays (L,3) along one direction with the mesh: face index (L,), barycentrics (L,3)."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    e1, e2 = b - a, c - a
    pvec = np.cross(direction, e2)
    det = (e1 * pvec).sum(-1)
    ok = np.abs(det) > 1e-14
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    f_out, b_out = np.zeros(len(origins), int), np.zeros((len(origins), 3))
    for i, o in enumerate(origins):
        tvec = o - a
        u = (tvec * pvec).sum(-1) * inv
        q = np.cross(tvec, e1)
        v = (direction * q).sum(-1) * inv
        t = (e2 * q).sum(-1) * inv
        hit = ok & (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9) & (t > 0)
        if not hit.any():
            raise RuntimeError(f"synthetic head: landmark ray {i} misses the mesh")
        f = int(np.flatnonzero(hit)[np.argmin(t[hit])])
        f_out[i], b_out[i] = f, (1 - u[f] - v[f], u[f], v[f])
    return f_out, b_out


def _landmark_xy(mouth_y: float) -> np.ndarray:
    """Frontal (x, y) of the 68 iBUG points in metres; the subject's right (iBUG 0, 36-41) is at -x."""
    m = mouth_y / CM
    a = np.radians(180 + 11.25 * np.arange(17))
    contour = np.stack([6.6 * np.cos(a), 1.5 + 10.0 * np.sin(a) * 0.99], 1)
    t = np.linspace(0, 1, 5)
    brow_r = np.stack([-5.5 + 4.3 * t, 3.4 + 0.5 * np.sin(np.pi * t)], 1)
    brow_l = np.stack([1.2 + 4.3 * t, 3.4 + 0.5 * np.sin(np.pi * t)], 1)[::1]
    bridge = np.stack([np.zeros(4), np.linspace(2.0, -1.2, 4)], 1)
    nose = np.array([[-1.5, -1.9], [-0.8, -2.1], [0, -2.2], [0.8, -2.1], [1.5, -1.9]])
    eye_r = np.array([[-4.6, 2.0], [-3.7, 2.45], [-2.7, 2.45], [-1.8, 2.0], [-2.7, 1.6], [-3.7, 1.6]])
    eye_l = np.array([[1.8, 2.0], [2.7, 2.45], [3.7, 2.45], [4.6, 2.0], [3.7, 1.6], [2.7, 1.6]])
    lips_o = np.array([[-2.5, 0], [-1.6, 0.6], [-0.6, 0.9], [0, 0.8], [0.6, 0.9], [1.6, 0.6],
                       [2.5, 0], [1.6, -0.7], [0.6, -1.0], [0, -1.1], [-0.6, -1.0], [-1.6, -0.7]])
    lips_i = np.array([[-2.2, 0], [-0.8, 0.15], [0, 0.15], [0.8, 0.15], [2.2, 0], [0.8, -0.15], [0, -0.15], [-0.8, -0.15]])
    lips = np.concatenate([lips_o, lips_i]) + [0, m]
    return np.concatenate([contour, brow_r, brow_l, bridge, nose, eye_r, eye_l, lips]) * CM


def synthetic_arrays(seed: int = 0) -> tuple[dict[str, np.ndarray], LandmarkEmbedding, dict[str, np.ndarray]]:
    """Build the synthetic head.

    Returns:
        FLAME-layout arrays (shapedirs (V,3,400) with N_SHAPE then N_EXPRESSION used columns of each
        block), the landmark embedding and FLAME_masks-style regions (name -> vertex indices).
    """
    rng = np.random.default_rng(seed)
    head_v, head_f, row_of, info = _surface()
    n_head = len(head_v)
    eye_l_v, eye_l_f = _eyeball(_EYE_CENTRES[0], n_head)
    eye_r_v, eye_r_f = _eyeball(_EYE_CENTRES[1], n_head + len(eye_l_v))
    verts = np.concatenate([head_v, eye_l_v, eye_r_v])
    faces = np.concatenate([head_f, eye_l_f, eye_r_f])
    n_v = len(verts)
    eye_l = np.arange(n_head, n_head + len(eye_l_v))
    eye_r = np.arange(n_head + len(eye_l_v), n_v)
    is_head = np.zeros(n_v, bool)
    is_head[:n_head] = True
    row_of = np.concatenate([row_of, np.full(n_v - n_head, -2)])
    neck_rows = row_of[:n_head] >= info["n_head_rows"]
    is_neck = np.zeros(n_v, bool)
    is_neck[:n_head] = neck_rows
    mouth_y = info["rows_y"][info["mouth_row"]]

    # Skinning weights over joints root, neck, jaw, eye_l, eye_r.
    weights = np.zeros((n_v, 5))
    y, z = verts[:, 1], verts[:, 2]
    w_jaw = _smoothstep(mouth_y, mouth_y - 1.2 * CM, y) * _smoothstep(-1.0 * CM, 4.0 * CM, z) * (is_head & ~is_neck)
    w_jaw[info["lower_lip"]] = 1.0
    w_jaw[info["upper_lip"]] = 0.0
    neck_t = _smoothstep(-17 * CM, info["rows_y"][info["n_head_rows"] - 1], y)
    weights[:, 1] = np.where(is_neck, neck_t, 1.0 - w_jaw)
    weights[:, 0] = np.where(is_neck, 1.0 - neck_t, 0.0)
    weights[:, 2] = w_jaw
    weights[:n_head][~is_head[:n_head]] = 0
    weights[eye_l] = [0, 0, 0, 1, 0]
    weights[eye_r] = [0, 0, 0, 0, 1]

    # Joint regressor: uniform weights over vertex sets whose centroids are the joints.
    j_reg = np.zeros((5, n_v))
    last_ring = np.flatnonzero(row_of == row_of.max())
    neck_ring = np.flatnonzero(row_of == info["n_head_rows"])
    jaw_row = int(np.argmin(np.abs(info["rows_y"][: info["n_head_rows"]] + 1.5 * CM)))
    side = np.flatnonzero((row_of == jaw_row) & (np.abs(verts[:, 2] + 1.0 * CM) < 2.0 * CM))
    for j, ids in enumerate((last_ring, neck_ring, side, eye_l, eye_r)):
        j_reg[j, ids] = 1.0 / len(ids)

    # Shape components (about 1 cm per unit coefficient at their peak).
    p = verts
    head_only = (is_head & ~is_neck).astype(float)
    lower = _smoothstep(mouth_y + 1 * CM, mouth_y - 3 * CM, y) * head_only
    front = _smoothstep(0.0, 5 * CM, z)
    shape = np.zeros((n_v, 3, N_SHAPE))
    shape[:, 0, 0] = p[:, 0] / _RX * CM * head_only
    shape[:, 1, 1] = p[:, 1] / _RY * CM * head_only
    shape[:, 2, 2] = p[:, 2] / _RZ * CM * head_only
    shape[:, 2, 3] = _bump(p, (0, -0.3, 9), (0.9, 1.9, 3)) * CM
    shape[:, 0, 4] = p[:, 0] / _RX * lower * CM
    shape[:, 2, 5] = (_bump(p, (3.2, 3.6, 7), (1.8, 0.6, 3)) + _bump(p, (-3.2, 3.6, 7), (1.8, 0.6, 3))) * CM
    shape[:, 1, 6] = -_bump(p, (0, -8.0, 6), (2.5, 1.5, 4)) * CM
    shape[:, 0, 7] = np.sign(p[:, 0]) * (_bump(p, (4.5, -2, 5), (2, 2, 3)) + _bump(p, (-4.5, -2, 5), (2, 2, 3))) * CM
    shape[:, 2, 8] = _smoothstep(4 * CM, 9 * CM, y) * front * CM
    shape[:, [0, 2], 9] = (p[:, [0, 2]] - [0, -1 * CM]) / (5 * CM) * is_neck[:, None] * CM
    for ids in (eye_l, eye_r):  # eyeballs move rigidly with the face around them
        shape[ids] = shape[ids].mean(0, keepdims=True)

    # Expression components (about 5 mm per unit coefficient at their peak).
    mm5 = 0.5 * CM
    m = mouth_y / CM
    expr = np.zeros((n_v, 3, N_EXPRESSION))
    corners = [_bump(p, (s * 2.5, m, 7), (1.0, 1.0, 3)) for s in (1, -1)]
    for s, b in zip((1, -1), corners):
        expr[:, :, 0] += b[:, None] * np.array([0.4 * s, 0.8, -0.4]) * mm5
        expr[:, :, 7] += b[:, None] * np.array([1.0 * s, 0.0, -0.2]) * mm5
    lips_b = _bump(p, (0, m, 8), (2.2, 1.0, 3))
    expr[:, 0, 1] = -p[:, 0] / (2.5 * CM) * lips_b * mm5
    expr[:, 2, 1] = lips_b * mm5
    for s in (1, -1):
        brow = _bump(p, (s * 3.2, 3.6, 7), (2.0, 0.8, 3))
        expr[:, 1, 2] += brow * mm5
        expr[:, 1, 3] -= brow * mm5
        expr[:, 0, 3] -= s * _bump(p, (s * 1.8, 3.4, 7), (1.0, 0.8, 3)) * 0.5 * mm5
        lid = _bump(p, (s * 3.2, 2.6, 7.5), (1.4, 0.5, 2)) * head_only
        expr[:, 1, 4 if s == 1 else 5] -= lid * mm5
        expr[:, :, 6] += (_bump(p, (s * 4.0, m + 1.5, 6), (1.6, 1.6, 3)))[:, None] * np.array([0.5 * s, 0, 0.8]) * mm5
    expr[:, 1, 8] = _bump(p, (0, m + 0.5, 8), (1.6, 0.5, 3)) * (y > mouth_y - 1e-9) * mm5
    expr[:, 1, 9] = -_bump(p, (0, m - 0.7, 8), (1.8, 0.6, 3)) * (w_jaw > 0.5) * mm5
    expr[info["upper_lip"], 1, 9] = 0.0
    expr[np.concatenate([eye_l, eye_r])] = 0.0

    shapedirs = np.zeros((n_v, 3, SHAPE_BLOCK + 100))
    shapedirs[..., :N_SHAPE] = shape
    shapedirs[..., SHAPE_BLOCK : SHAPE_BLOCK + N_EXPRESSION] = expr

    # Pose correctives: small fields inside each joint's skinned region (none for the rigid eyes).
    posedirs = np.zeros((n_v, 3, 36))
    normals_dir = np.zeros_like(verts)
    normals_dir[:n_head] = (verts[:n_head] - [0, 0, -1 * CM]) / np.linalg.norm(verts[:n_head] - [0, 0, -1 * CM], axis=1, keepdims=True)
    for block, w in ((0, weights[:, 1] * weights[:, 0] * 4), (1, weights[:, 2] * (1 - weights[:, 2]) * 4)):
        coeffs = rng.normal(0, 1, 9)
        posedirs[:, :, block * 9 : block * 9 + 9] = (w[:, None] * normals_dir)[..., None] * coeffs * 0.5 * CM

    # Landmarks: rays along -z through the frontal layout onto the head surface (not the eyeballs).
    xy = _landmark_xy(mouth_y)
    origins = np.concatenate([xy, np.full((68, 1), 0.5)], 1)
    head_faces = np.flatnonzero(faces.max(1) < n_head)
    f_local, bary = _ray_hits(origins, np.array([0.0, 0.0, -1.0]), verts, faces[head_faces])
    embedding = LandmarkEmbedding(head_faces[f_local], bary, np.ones(68, bool))

    # Regions.
    lmk = (verts[faces[embedding.face_idx]] * bary[..., None]).sum(1)
    mouth_w = np.linalg.norm(lmk[54] - lmk[48])
    lips = is_head & (np.linalg.norm(verts[:, None] - lmk[None, 48:68], axis=-1).min(1) < 0.35 * mouth_w) & ~is_neck
    brow_y = lmk[17:27, 1].max()
    face = (
        is_head & ~is_neck & (np.abs(verts[:, 0]) < np.abs(lmk[0, 0])) & (verts[:, 1] < brow_y + 2.5 * CM)
        & (verts[:, 2] > 3.0 * CM)
    )
    scalp = is_head & ~is_neck & ~face & (verts[:, 1] > brow_y)
    masks = {
        "face": np.flatnonzero(face | lips), "lips": np.flatnonzero(lips), "left_eyeball": eye_l,
        "right_eyeball": eye_r, "scalp": np.flatnonzero(scalp), "neck": np.flatnonzero(is_neck),
    }
    arrays = {
        "v_template": verts, "f": faces.astype(np.int64), "shapedirs": shapedirs, "posedirs": posedirs,
        "J_regressor": j_reg, "kintree_table": np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "weights": weights, "J": j_reg @ verts,
    }
    arrays["kintree_table"][0, 0] = 4294967295  # the official files store the root's parent as uint32 -1
    return arrays, embedding, masks


def make_synthetic_head(seed: int = 0, dtype: torch.dtype = torch.float32) -> FlameModel:
    """The synthetic head as a model (kind "synthetic", 10 shape and 10 expression components)."""
    arrays, embedding, masks = synthetic_arrays(seed)
    regions = {
        "face": masks["face"], "lips": masks["lips"], "scalp": masks["scalp"], "neck": masks["neck"],
        "eyes": np.concatenate([masks["left_eyeball"], masks["right_eyeball"]]),
    }
    model = FlameModel(arrays, embedding, N_SHAPE, N_EXPRESSION, regions, kind="synthetic", source="synthetic", dtype=dtype)
    model.expression_names = list(EXPRESSION_NAMES)
    return model


def save_synthetic_flame(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write the synthetic head as FLAME-format files: generic_model.pkl, landmark_embedding.npy, FLAME_masks.pkl.

    Returns the model path. Load it with ``FlameModel.from_files(path, n_shape=10, n_expression=10)``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays, embedding, masks = synthetic_arrays(seed)
    path = folder / "generic_model.pkl"
    write_flame_pickle(path, arrays)
    # DECA-style embedding: 51 static points plus the full 68 (as landmark_embedding.npy holds them).
    emb = {
        "static_lmk_faces_idx": embedding.face_idx[17:], "static_lmk_bary_coords": embedding.bary[17:],
        "full_lmk_faces_idx": embedding.face_idx[None], "full_lmk_bary_coords": embedding.bary[None],
    }
    with atomic_write(folder / EMBEDDING_NAMES[0], ".npy") as tmp:
        np.save(tmp, np.array(emb, dtype=object), allow_pickle=True)
    with atomic_write(folder / MASKS_NAME) as tmp:
        tmp.write_bytes(pickle.dumps(masks, protocol=2))
    return path
