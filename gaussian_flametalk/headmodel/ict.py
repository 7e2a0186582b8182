"""ICT-FaceKit (ICT Face Model Light, MIT licence): an open morphable head model.

Reads the original ``FaceXModel/`` folder of the public repository ICT-VGL/ICT-FaceKit as it is:

- ``generic_neutral_mesh.obj``: the neutral mesh (26,719 vertices, 26,384 polygons, mostly quads).
- ``identityNNN.obj``: identity modes, any number (the public model has 100), ordered by NNN.
- every other ``*.obj``: an expression blend shape named by its file stem (ARKit names with ``_L``/``_R``:
  ``jawOpen``, ``eyeBlink_L``, ...), in sorted-name order. There are no jaw, neck or eye joints: the jaw moves
  through blend shapes (``jawOpen``, ``jawLeft``, ...).

A mode's displacement is its mesh minus the neutral mesh. Coordinates are converted from the OBJ
centimetres to metres. The model's axes are ICT's own, which match the project convention: y up, z out
of the face, x to the subject's left; the origin lies inside the head, roughly midway between the ears
at the height of the tip of the nose (which is 13 cm in front of it).

Deformation::

    v = R(rotation) @ (template + sum_i shape_i * identity_i + sum_j expression_j * blendshape_j) + translation

The rigid global pose rotates about the model origin (not about a joint or the head's centroid), then
translates. Polygons are triangulated as fans from their first corner, so every quad ``a b c d`` is split
along its ``a-c`` diagonal into ``(a, b, c)`` and ``(a, c, d)`` (winding kept).

Parts. The ICT topology is a set of vertex ranges (``PARTS``, from ICT-FaceKit's README). Shells that do
not render well as Gaussians (eyelashes, eye occlusion, eye blend, lacrimal fluid: 2,128 vertices) are
dropped by default (``DEFAULT_DROP``); ``drop=()`` keeps everything, ``SKIN_ONLY_DROP`` keeps only the face
and the head-and-neck skin. Dropping removes the vertices and every polygon touching them and re-indexes
faces, landmarks and regions. ``face`` cannot be dropped (the landmarks live on it).

Landmarks: the 68 Multi-PIE (iBUG layout) vertex indices from ICT-FaceKit's README, each stored as a
triangle containing the vertex with a one-hot barycentric coordinate.

Regions (vertex index sets, computed on the neutral mesh; see :func:`ict_regions`):

- ``face``: the full face area part (original vertices 0..9408; it includes the ears and the front of the neck).
- ``lips``: face-area vertices whose frontal (x, y) projection lies inside the outer lip contour (landmarks
  48..59) or within ``LIP_MARGIN`` (3 mm) of it, and no further than 2 cm behind the rearmost lip landmark;
  this takes the red of the lips including their inner surfaces, and a thin rim of skin around them.
- ``eyes``: the eyeballs and eye sockets, plus whichever eye shells are kept (lacrimal fluid, eye blend,
  eye occlusion, eyelashes).
- ``scalp``: head-and-neck vertices at or above the brow level (mean height of landmarks 17..26).
- ``neck``: face-area and head-and-neck vertices below the chin (height of landmark 8): the back and sides
  of the neck and, from the face area, the underside of the chin and the front of the neck (so ``neck``
  overlaps ``face``).
- mouth interior (where the parts are kept): ``teeth_lower`` = teeth vertices that ``jawOpen`` moves by more than
  ``JAW_TEETH_MOTION`` (1 mm; ICT's jaw is a blend shape, and it carries the lower teeth: 2,204 of the 4,412 teeth
  vertices, the lower row), ``teeth_upper`` = the other teeth vertices (still under jawOpen: rigid with the head),
  ``mouth`` = gums, tongue and the mouth socket.

Cache. Parsing the OBJ files is slow (about 25 ms each), so the converted arrays are cached in an ``.npz``
file named by a SHA-256 key over the names, sizes and SHA-256 digests of every OBJ in the folder (and a
format version): any changed, added or removed OBJ gives a new key. The cache directory is the
``cache_dir`` argument, else ``$GFT_CACHE``, else ``~/.cache/gaussian-flametalk``; files are written
atomically (temporary name, then ``os.replace``). The cache holds the full (undropped) model with every
identity mode, so ``drop`` and ``n_shape`` do not change the key.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..atomic import save_npz
from ..geometry.rotation import axis_angle_to_matrix
from .base import MOUTH_REGION_NAMES, REGION_NAMES, HeadModel

NEUTRAL_NAME = "generic_neutral_mesh.obj"
IDENTITY_PATTERN = re.compile(r"^identity(\d+)\.obj$", re.IGNORECASE)
#: OBJ files are in centimetres; the project works in metres.
OBJ_TO_METRES = 0.01
#: Vertex count of the ICT Face Model Light topology (all parts).
N_VERTICES = 26719
#: Bump when the cache contents or their meaning change.
CACHE_VERSION = "ict-cache-v1"

#: Vertex ranges (inclusive, original indices) of the parts of the ICT topology (ICT-FaceKit README).
PARTS: dict[str, tuple[tuple[int, int], ...]] = {
    "face": ((0, 9408),),
    "head_neck": ((9409, 11247),),
    "mouth_socket": ((11248, 13293),),
    "eye_sockets": ((13294, 13677), (13678, 14061)),
    "gums_tongue": ((14062, 17038),),
    "teeth": ((17039, 21450),),
    "eyeballs": ((21451, 23020), (23021, 24590)),
    "lacrimal_fluid": ((24591, 24794), (24795, 24998)),
    "eye_blend": ((24999, 25022), (25023, 25046)),
    "eye_occlusion": ((25047, 25198), (25199, 25350)),
    "eyelashes": ((25351, 26034), (26035, 26718)),
}
#: Shells dropped by default: thin transparent or hair-like geometry that does not render well as Gaussians.
DEFAULT_DROP: tuple[str, ...] = ("eyelashes", "eye_occlusion", "eye_blend", "lacrimal_fluid")
#: Keep only the skin: face area and head-and-neck.
SKIN_ONLY_DROP: tuple[str, ...] = tuple(p for p in PARTS if p not in ("face", "head_neck"))
EYE_PARTS = ("eyeballs", "eye_sockets", "lacrimal_fluid", "eye_blend", "eye_occlusion", "eyelashes")

#: Multi-PIE / iBUG 68-point landmarks as vertex indices (0-based, original indexing; ICT-FaceKit README).
LANDMARK_VERTICES: tuple[int, ...] = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088, 3443,
    268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140, 2075, 1147,
    4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732, 5708, 5695, 2081,
    0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966,
)
#: A teeth vertex that jawOpen moves further than this (metres) is a lower tooth.
JAW_TEETH_MOTION = 1e-3
#: Lips region: margin around the outer lip contour, metres.
LIP_MARGIN = 0.003
#: Lips region: how far behind the rearmost lip landmark a lip vertex may lie, metres.
LIP_DEPTH = 0.02


class IctModel(HeadModel):
    """The ICT-FaceKit head model read from a ``FaceXModel/`` folder (see the module docstring).

    Args:
        folder: the ``FaceXModel`` folder (or the ICT-FaceKit repository root that contains it).
        n_shape: identity modes to use (the first ``n_shape`` identity files); None = all of them.
        drop: names of ``PARTS`` to remove (default ``DEFAULT_DROP``; ``()`` keeps all 26,719 vertices).
        cache_dir: where the converted-array cache lives (default ``$GFT_CACHE``, else
            ``~/.cache/gaussian-flametalk``).
        use_cache: False to always parse the OBJ files and write no cache.

    Buffers (besides the base class's): ``shape_basis`` (n_shape, V, 3) and ``expression_basis``
    (n_expression, V, 3) displacements in metres, ``original_index`` (V,) each kept vertex's index in the
    full ICT mesh. Attributes: ``parts`` (kept part name -> vertex indices, numpy), ``source`` (the folder),
    ``identity_names``.

    Raises:
        FileNotFoundError: no folder, or no ``generic_neutral_mesh.obj`` in it.
        ValueError: an OBJ that cannot be parsed or whose vertex count differs from the neutral mesh's
            (the message names the file), a neutral mesh that is not the ICT topology, a bad ``n_shape``
            or ``drop``.
    """

    kind = "ict"
    expression_bounds = (0.0, 1.0)
    pose_parts = ("rotation",)

    def __init__(
        self,
        folder: str | os.PathLike,
        n_shape: int | None = None,
        drop: tuple[str, ...] | list[str] = DEFAULT_DROP,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
    ):
        super().__init__()
        arrays = load_ict_arrays(folder, cache_dir=cache_dir, use_cache=use_cache)
        self.source = str(arrays["folder"])
        n_avail = arrays["identity"].shape[0]
        if n_shape is None:
            n_shape = n_avail
        if not 0 <= n_shape <= n_avail:
            raise ValueError(f"{self.source}: n_shape={n_shape}, but the folder has {n_avail} identity files")

        drop = tuple(drop)
        unknown = [d for d in drop if d not in PARTS]
        if unknown:
            raise ValueError(f"unknown ICT part(s) to drop {unknown}; parts are {list(PARTS)}")
        if "face" in drop:
            raise ValueError("the 'face' part cannot be dropped (the landmarks and the face region live on it)")

        neutral = arrays["neutral"]
        keep = np.ones(len(neutral), dtype=bool)
        for name in drop:
            for lo, hi in PARTS[name]:
                keep[lo : hi + 1] = False
        new_index = np.full(len(neutral), -1, dtype=np.int64)
        new_index[keep] = np.arange(int(keep.sum()))
        faces_full = arrays["faces"]
        faces = new_index[faces_full[keep[faces_full].all(axis=1)]]

        self.kind = "ict"
        self.n_shape = int(n_shape)
        self.expression_names = [str(s) for s in arrays["expression_names"]]
        self.identity_names = [str(s) for s in arrays["identity_names"][:n_shape]]
        self.n_expression = len(self.expression_names)
        self.parts = {
            name: new_index[_part_mask(name, len(neutral))]
            for name in PARTS
            if name not in drop
        }

        lmk_vertices = new_index[np.asarray(LANDMARK_VERTICES)]
        lmk_faces, lmk_bary = vertex_landmark_embedding(faces, lmk_vertices)
        names = [str(n) for n in arrays["expression_names"]]
        jaw_open = arrays["expression"][names.index("jawOpen")] if "jawOpen" in names else None
        regions_full = ict_regions(neutral, drop, jaw_open)

        f32 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        self.register_buffer("template", f32(neutral[keep]))
        self.register_buffer("faces", torch.as_tensor(faces, dtype=torch.long))
        self.register_buffer("shape_basis", f32(arrays["identity"][:n_shape][:, keep]))
        self.register_buffer("expression_basis", f32(arrays["expression"][:, keep]))
        self.register_buffer("landmark_faces", torch.as_tensor(lmk_faces, dtype=torch.long))
        self.register_buffer("landmark_bary", f32(lmk_bary))
        self.register_buffer("landmark_weights", torch.ones(len(LANDMARK_VERTICES), dtype=torch.float32))
        self.register_buffer("original_index", torch.as_tensor(np.nonzero(keep)[0], dtype=torch.long))
        for name in REGION_NAMES + MOUTH_REGION_NAMES:
            idx = new_index[np.nonzero(regions_full[name] & keep)[0]]
            self.register_buffer(f"region_{name}", torch.as_tensor(idx, dtype=torch.long))

    def _deform(self, shape, expression, rotation, neck, jaw, eyes, translation, vertex_ids=None) -> torch.Tensor:
        x = shape
        rows = slice(None) if vertex_ids is None else vertex_ids
        template = self.template[rows].to(x)
        batch, n_vertices = shape.shape[0], template.shape[0]
        offsets = shape @ self.shape_basis[:, rows].to(x).reshape(self.n_shape, n_vertices * 3)
        offsets = offsets + expression @ self.expression_basis[:, rows].to(x).reshape(self.n_expression, n_vertices * 3)
        verts = template + offsets.reshape(batch, n_vertices, 3)
        rot = axis_angle_to_matrix(rotation)  # (B, 3, 3), about the model origin
        return verts @ rot.transpose(1, 2) + translation[:, None, :]

    def expression_index(self, name: str) -> int:
        """Position of the named blend shape (e.g. ``"jawOpen"``) in the expression vector."""
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise KeyError(f"no expression '{name}' (have {self.expression_names})") from None


# ----------------------------------------------------------------------------------------------------
# Landmarks and regions


def vertex_landmark_embedding(faces: np.ndarray, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embed vertex landmarks as (triangle containing the vertex, one-hot barycentric coordinates).

    Args:
        faces: (F, 3) triangles; vertices: (L,) vertex indices.
    Returns:
        face index (L,) (the first triangle that uses the vertex) and barycentric coordinates (L, 3).
    """
    vertices = np.asarray(vertices, dtype=np.int64)
    used, first = np.unique(faces.ravel(), return_index=True)  # first corner slot using each vertex
    pos = np.searchsorted(used, vertices)
    missing = (pos >= len(used)) | (used[np.minimum(pos, len(used) - 1)] != vertices)
    if missing.any():
        raise ValueError(f"landmark vertices {vertices[missing].tolist()} belong to no triangle")
    slot = first[pos]
    tri = slot // 3
    bary = np.zeros((len(vertices), 3), dtype=np.float64)
    bary[np.arange(len(vertices)), slot % 3] = 1.0
    return tri, bary


def _part_mask(name: str, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for lo, hi in PARTS[name]:
        mask[lo : hi + 1] = True
    return mask


def ict_regions(neutral: np.ndarray, drop: tuple[str, ...] = (), jaw_open: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
    """Region masks (original indexing, (V,) bool each) on the neutral mesh (V, 3) in metres.

    Rules (documented in the module docstring): face = face area; lips = face-area vertices inside the
    outer lip contour in the frontal projection, or within ``LIP_MARGIN`` of it, and within ``LIP_DEPTH``
    behind the lip landmarks; eyes = eyeballs, eye sockets and kept eye shells; scalp = head-and-neck at or
    above the brow level; neck = face area and head-and-neck below the chin; teeth_lower = teeth moved by the
    ``jaw_open`` blend shape (V, 3) by more than ``JAW_TEETH_MOTION`` (none without it), teeth_upper = the other
    teeth; mouth = gums, tongue and mouth socket.
    """
    n = len(neutral)
    face = _part_mask("face", n)
    head_neck = _part_mask("head_neck", n)
    lmk = neutral[np.asarray(LANDMARK_VERTICES)]

    lip_poly = lmk[48:60, :2]
    cand = np.nonzero(face & (neutral[:, 2] >= lmk[48:68, 2].min() - LIP_DEPTH))[0]
    xy = neutral[cand, :2]
    on_lips = _points_in_polygon(xy, lip_poly) | (_distance_to_polygon(xy, lip_poly) <= LIP_MARGIN)
    lips = np.zeros(n, dtype=bool)
    lips[cand[on_lips]] = True

    eyes = np.zeros(n, dtype=bool)
    for part in EYE_PARTS:
        if part not in drop:
            eyes |= _part_mask(part, n)

    brow_y = lmk[17:27, 1].mean()
    chin_y = lmk[8, 1]
    scalp = head_neck & (neutral[:, 1] >= brow_y)
    neck = (head_neck | face) & (neutral[:, 1] < chin_y)
    teeth = _part_mask("teeth", n)
    moved = np.zeros(n, dtype=bool) if jaw_open is None else np.linalg.norm(jaw_open, axis=-1) > JAW_TEETH_MOTION
    mouth = _part_mask("gums_tongue", n) | _part_mask("mouth_socket", n)
    return {"face": face, "lips": lips, "eyes": eyes, "scalp": scalp, "neck": neck,
            "teeth_upper": teeth & ~moved, "teeth_lower": teeth & moved, "mouth": mouth}


def _points_in_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule: which of the (N, 2) points lie inside the closed (K, 2) polygon."""
    inside = np.zeros(len(points), dtype=bool)
    px, py = points[:, 0], points[:, 1]
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        crosses = (a[1] > py) != (b[1] > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = a[0] + (py - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
        inside ^= crosses & (px < x_at)
    return inside


def _distance_to_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance from (N, 2) points to the edges of the closed (K, 2) polygon."""
    best = np.full(len(points), np.inf)
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        ab = b - a
        t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-30), 0.0, 1.0)
        d = np.linalg.norm(points - (a + t[:, None] * ab), axis=1)
        best = np.minimum(best, d)
    return best


# ----------------------------------------------------------------------------------------------------
# Reading the folder, with a cache


def default_cache_dir() -> Path:
    """``$GFT_CACHE``, else ``~/.cache/gaussian-flametalk``."""
    env = os.environ.get("GFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gaussian-flametalk"


def resolve_folder(folder: str | os.PathLike) -> Path:
    """The ``FaceXModel`` folder: ``folder`` itself, or ``folder/FaceXModel`` for a repository root."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"{folder}: ICT-FaceKit folder not found (clone ICT-VGL/ICT-FaceKit and give its FaceXModel/ folder)"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (give ICT-FaceKit's FaceXModel/ folder)")
    if not (folder / NEUTRAL_NAME).is_file() and (folder / "FaceXModel" / NEUTRAL_NAME).is_file():
        folder = folder / "FaceXModel"
    if not (folder / NEUTRAL_NAME).is_file():
        raise FileNotFoundError(f"{folder}: no {NEUTRAL_NAME} (the neutral mesh) in this ICT-FaceKit folder")
    return folder


def list_obj_files(folder: Path) -> tuple[Path, list[Path], list[Path]]:
    """(neutral, identity files ordered by number, expression files ordered by name)."""
    objs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".obj" and p.is_file())
    identities: list[tuple[int, Path]] = []
    expressions: list[Path] = []
    for p in objs:
        if p.name == NEUTRAL_NAME:
            continue
        m = IDENTITY_PATTERN.match(p.name)
        if m:
            identities.append((int(m.group(1)), p))
        else:
            expressions.append(p)
    identities.sort()
    return folder / NEUTRAL_NAME, [p for _, p in identities], expressions


def folder_key(files: list[Path]) -> str:
    """SHA-256 over the cache version and each file's name, size and SHA-256 content digest."""

    def digest(path: Path) -> tuple[str, int, str]:
        data = path.read_bytes()
        return path.name, len(data), hashlib.sha256(data).hexdigest()

    # hashlib and file reads release the GIL: threads overlap them.
    with ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) + 1)) as pool:
        parts = list(pool.map(digest, sorted(files, key=lambda p: p.name)))
    h = hashlib.sha256(CACHE_VERSION.encode())
    for name, size, dig in parts:
        h.update(f"\n{name}\t{size}\t{dig}".encode())
    return h.hexdigest()


def load_ict_arrays(
    folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None, use_cache: bool = True
) -> dict:
    """The full ICT model as arrays, from the cache when it is current, else parsed (and cached).

    Returns a dict: ``folder`` (Path), ``neutral`` (V, 3) float32 metres, ``faces`` (F, 3) int64 triangles,
    ``identity`` (S, V, 3) and ``expression`` (E, V, 3) float32 displacements in metres,
    ``identity_names`` and ``expression_names`` (file stems).
    """
    folder = resolve_folder(folder)
    neutral_path, identity_paths, expression_paths = list_obj_files(folder)
    if not use_cache:
        arrays = parse_ict_folder(neutral_path, identity_paths, expression_paths)
        arrays["folder"] = folder
        return arrays

    key = folder_key([neutral_path, *identity_paths, *expression_paths])
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_file = cache_dir / f"ict-facekit-{key[:40]}.npz"
    arrays = _read_cache(cache_file, key)
    if arrays is None:
        arrays = parse_ict_folder(neutral_path, identity_paths, expression_paths)
        _write_cache(cache_file, key, arrays)
    arrays["folder"] = folder
    return arrays


_CACHE_KEYS = ("neutral", "faces", "identity", "expression", "identity_names", "expression_names")


def _read_cache(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return {k: z[k] for k in _CACHE_KEYS}
    except Exception as exc:  # a damaged cache file is rebuilt, never fatal
        warnings.warn(f"{path}: unreadable ICT cache ({exc}); rebuilding it", stacklevel=3)
        return None


def _write_cache(path: Path, key: str, arrays: dict) -> None:
    try:
        save_npz(path, key=np.array(key), **{k: arrays[k] for k in _CACHE_KEYS})
    except OSError as exc:
        warnings.warn(f"could not write the ICT cache {path}: {exc}", stacklevel=3)


def parse_ict_folder(neutral_path: Path, identity_paths: list[Path], expression_paths: list[Path]) -> dict:
    """Parse the OBJ files (no cache). See :func:`load_ict_arrays` for the result."""
    data = neutral_path.read_bytes()
    neutral_cm = parse_obj_vertices(data, neutral_path)
    n = len(neutral_cm)
    if n != N_VERTICES:
        raise ValueError(
            f"{neutral_path}: has {n} vertices, the ICT Face Model Light topology has {N_VERTICES} "
            "(its parts, landmarks and regions are defined on that topology)"
        )
    faces = parse_obj_faces(data, n, neutral_path)

    def displacements(paths: list[Path]) -> np.ndarray:
        out = np.empty((len(paths), n, 3), dtype=np.float32)
        for i, p in enumerate(paths):
            verts = parse_obj_vertices(p.read_bytes(), p)
            if len(verts) != n:
                raise ValueError(f"{p}: has {len(verts)} vertices, the neutral mesh {NEUTRAL_NAME} has {n}")
            out[i] = (verts - neutral_cm) * OBJ_TO_METRES
        return out

    return {
        "neutral": (neutral_cm * OBJ_TO_METRES).astype(np.float32),
        "faces": faces,
        "identity": displacements(identity_paths),
        "expression": displacements(expression_paths),
        "identity_names": np.array([p.stem for p in identity_paths], dtype=str),
        "expression_names": np.array([p.stem for p in expression_paths], dtype=str),
    }


_V_LINE = re.compile(rb"^v[ \t]+([^\n]*)", re.MULTILINE)
_FIRST_V_LINE = re.compile(rb"^v[ \t]", re.MULTILINE)
_NOT_V_LINE = re.compile(rb"\n(?!v[ \t])")
_F_LINE = re.compile(rb"^f[ \t]+([^\n]*)", re.MULTILINE)
_SLASH_REFS = re.compile(rb"/[^\s]*")


def _numbers(text: bytes, path: Path, what: str) -> np.ndarray:
    """Whitespace-separated numbers -> float64 array; anything unparsable raises ValueError naming the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            return np.fromstring(text, dtype=np.float64, sep=" ")
        except (DeprecationWarning, ValueError) as exc:
            raise ValueError(f"{path}: cannot parse the OBJ {what} ({exc})") from None


def parse_obj_vertices(data: bytes, path: Path | str = "<obj>") -> np.ndarray:
    """The ``v`` lines of an OBJ file's bytes as an (N, 3) float64 array (extra columns, e.g. colours, ignored)."""
    path = Path(path)
    data = data.replace(b"\r\n", b"\n") if b"\r" in data else data
    n = data.count(b"\nv ") + data.count(b"\nv\t") + (1 if data[:2] in (b"v ", b"v\t") else 0)
    if n == 0:
        raise ValueError(f"{path}: no vertices ('v' lines) in this OBJ file")
    # Fast path: the vertex lines form one block (true of every ICT file); else gather them by regex.
    start = _FIRST_V_LINE.search(data).start()
    end_match = _NOT_V_LINE.search(data, start)
    block = data[start : end_match.start() if end_match else len(data)]
    if block.count(b"\n") + 1 == n:
        text = block.replace(b"v", b" ")
    else:
        text = b" ".join(_V_LINE.findall(data))
    nums = _numbers(text, path, "vertices")
    if nums.size == 3 * n:
        return nums.reshape(n, 3)
    # Lines with extra columns (w, or vertex colours): take the first three numbers of each line.
    rows = [line.split()[:3] for line in _V_LINE.findall(data)]
    if any(len(r) < 3 for r in rows):
        raise ValueError(f"{path}: a 'v' line with fewer than 3 numbers; every vertex needs x y z")
    return _numbers(b" ".join(b" ".join(r) for r in rows), path, "vertices").reshape(n, 3)


def parse_obj_faces(data: bytes, n_vertices: int, path: Path | str = "<obj>") -> np.ndarray:
    """The ``f`` lines of an OBJ file's bytes as (F, 3) int64 triangles (0-based).

    Polygons are split as fans from their first corner: quad ``a b c d`` -> ``(a, b, c), (a, c, d)``.
    Texture/normal references (``a/t/n``) are ignored; negative (relative) indices are resolved.
    """
    path = Path(path)
    data = data.replace(b"\r\n", b"\n") if b"\r" in data else data
    rows = _SLASH_REFS.sub(b"", b"\n".join(_F_LINE.findall(data))).split(b"\n")
    if not rows or rows == [b""]:
        raise ValueError(f"{path}: no faces ('f' lines) in this OBJ file")
    counts = np.array([len(r.split()) for r in rows], dtype=np.int64)
    if counts.min() < 3:
        raise ValueError(f"{path}: a face with fewer than 3 corners")
    idx = _numbers(b" ".join(rows), path, "faces")
    if idx.size != counts.sum() or np.any(idx != np.round(idx)):
        raise ValueError(f"{path}: cannot parse the OBJ faces (non-integer vertex references)")
    idx = idx.astype(np.int64)
    if np.any(idx == 0):
        raise ValueError(f"{path}: face vertex index 0 (OBJ indices start at 1)")
    idx = np.where(idx > 0, idx - 1, n_vertices + idx)
    if idx.min() < 0 or idx.max() >= n_vertices:
        raise ValueError(f"{path}: a face references a vertex outside 1..{n_vertices}")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    tris, poly_of, fan_of = [], [], []
    for k in range(1, int(counts.max()) - 1):  # k-th fan triangle of a polygon: corners 0, k, k+1
        polys = np.nonzero(counts >= k + 2)[0]
        o = offsets[polys]
        tris.append(np.stack([idx[o], idx[o + k], idx[o + k + 1]], axis=1))
        poly_of.append(polys)
        fan_of.append(np.full(len(polys), k))
    order = np.lexsort((np.concatenate(fan_of), np.concatenate(poly_of)))  # polygon order, then fan order
    return np.concatenate(tris)[order]
