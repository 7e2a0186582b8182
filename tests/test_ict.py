"""ICT-FaceKit head model on the shared copy of the original FaceXModel/ folder.

Run with ``-s`` to see the measured cold and cached load times.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gaussian_flametalk.headmodel.base import REGION_NAMES, HeadModel
from gaussian_flametalk.headmodel.ict import (
    DEFAULT_DROP,
    LANDMARK_VERTICES,
    N_VERTICES,
    NEUTRAL_NAME,
    SKIN_ONLY_DROP,
    IctModel,
    folder_key,
    list_obj_files,
    parse_obj_faces,
    parse_obj_vertices,
)

SHARED = Path(os.environ.get("GFT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
ICT = SHARED / "headmodels" / "ict-facekit" / "FaceXModel"

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not (ICT / NEUTRAL_NAME).is_file(), reason=f"no ICT-FaceKit copy at {ICT}"),
]

#: iBUG 68 left/right mirror pairs.
MIRROR_PAIRS = (
    [(i, 16 - i) for i in range(8)]
    + [(17 + i, 26 - i) for i in range(5)]
    + [(31, 35), (32, 34)]
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    + [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56), (60, 64), (61, 63), (67, 65)]
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ict-cache")


@pytest.fixture(scope="module")
def cold(cache_dir):
    """The full model (drop=()) loaded into an empty cache, and the time that took."""
    t0 = time.perf_counter()
    model = IctModel(ICT, drop=(), cache_dir=cache_dir)
    return model, time.perf_counter() - t0


@pytest.fixture(scope="module")
def full(cold):
    return cold[0]


@pytest.fixture(scope="module")
def model(cold, cache_dir):
    return IctModel(ICT, cache_dir=cache_dir)  # default drop, from the cache


def expr(model: IctModel, batch: int = 1, dtype=torch.float32, **weights: float) -> torch.Tensor:
    e = torch.zeros(batch, model.n_expression, dtype=dtype)
    for name, w in weights.items():
        e[:, model.expression_index(name)] = w
    return e


def test_counts_and_names(full):
    assert isinstance(full, HeadModel)
    assert full.kind == "ict" and full.pose_parts == ("rotation",)
    assert full.n_vertices == N_VERTICES == 26719
    # 25,836 quads (2 triangles each) and 548 triangles.
    assert full.n_faces == 2 * 25836 + 548
    assert full.n_shape == 10 and full.identity_names == [f"identity{i:03d}" for i in range(10)]
    assert full.n_expression == 55 == len(full.expression_names)
    assert {"jawOpen", "eyeBlink_L", "eyeBlink_R", "mouthPucker", "cheekRaiser_L"} <= set(full.expression_names)
    assert full.expression_names == sorted(full.expression_names)
    for name, t in [("template", full.template), ("shape_basis", full.shape_basis),
                    ("expression_basis", full.expression_basis), ("landmark_bary", full.landmark_bary)]:
        assert t.dtype == torch.float32, name
    assert full.faces.dtype == torch.long and int(full.faces.min()) == 0 and int(full.faces.max()) < full.n_vertices
    # metres: a head is ~0.2-0.3 m across
    extent = (full.template.max(0).values - full.template.min(0).values).numpy()
    assert 0.15 < extent[0] < 0.35 and 0.2 < extent[1] < 0.4


def test_default_drop(full, model):
    assert DEFAULT_DROP == ("eyelashes", "eye_occlusion", "eye_blend", "lacrimal_fluid")
    assert model.n_vertices == 26719 - 2128
    assert int(model.faces.max()) < model.n_vertices
    # the dropped model is the full model restricted to the kept vertices
    assert torch.equal(model.template, full.template[model.original_index])
    kept_faces = full.faces[torch.isin(full.faces, model.original_index).all(1)]
    assert torch.equal(model.original_index[model.faces], kept_faces)
    # landmarks, regions and blend shapes follow the re-indexing
    torch.testing.assert_close(model.landmarks(model.template[None]), full.landmarks(full.template[None]))
    e = expr(model, jawOpen=0.7, eyeBlink_L=0.5)
    torch.testing.assert_close(model(expression=e), full(expression=e)[:, model.original_index])
    for name in REGION_NAMES:
        r_full = set(full.regions[name].tolist()) & set(model.original_index.tolist())
        assert set(model.original_index[model.regions[name]].tolist()) == r_full, name


def test_skin_only_drop(cold, cache_dir):
    skin = IctModel(ICT, n_shape=2, drop=SKIN_ONLY_DROP, cache_dir=cache_dir)
    assert skin.n_vertices == 9409 + 1839
    assert skin.n_shape == 2 and skin.shape_basis.shape == (2, skin.n_vertices, 3)
    assert len(skin.region_eyes) == 0 and len(skin.region_lips) > 0
    with pytest.raises(ValueError, match="face"):
        IctModel(ICT, drop=("face",), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="unknown"):
        IctModel(ICT, drop=("hair",), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="n_shape"):
        IctModel(ICT, n_shape=11, cache_dir=cache_dir)


def test_landmarks_on_face_and_plausible(full):
    lmk = full.landmarks(full.template[None])[0]
    assert lmk.shape == (68, 3) and torch.all(full.landmark_weights == 1)
    # vertex landmarks: exactly the listed vertices, all in the face region
    torch.testing.assert_close(lmk, full.template[list(LANDMARK_VERTICES)], rtol=0, atol=0)
    assert set(LANDMARK_VERTICES) <= set(full.region_face.tolist())
    assert torch.all(full.landmark_bary.sum(1) == 1) and torch.all(full.landmark_bary.max(1).values == 1)
    y = lmk[:, 1]
    eyes_y, nose_tip_y, mouth_y, chin_y = y[36:48].mean(), y[30], y[48:68].mean(), y[8]
    assert y[17:27].mean() > eyes_y > nose_tip_y > mouth_y > chin_y
    assert chin_y == y[:17].min(), "landmark 8 is the lowest contour point"
    assert lmk[0, 0] < 0 < lmk[16, 0], "landmark 0 on the subject's right (x<0), 16 on the left"
    assert lmk[36, 0] < lmk[39, 0] < 0 < lmk[42, 0] < lmk[45, 0]
    assert lmk[30, 2] == lmk[:, 2].max(), "nose tip is the frontmost landmark"
    mirror = torch.tensor([-1.0, 1.0, 1.0])
    for i, j in MIRROR_PAIRS:
        assert torch.linalg.norm(lmk[i] - lmk[j] * mirror) < 0.003, (i, j)
    for i in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
        assert abs(float(lmk[i, 0])) < 0.001, i
    print("\nICT landmarks (neutral, mm):")
    for i in (0, 8, 16, 19, 24, 30, 36, 45, 48, 51, 54, 57):
        print(f"  {i:2d}: " + " ".join(f"{1000 * float(c):7.1f}" for c in lmk[i]))


def test_regions(full):
    n = full.n_vertices
    lmk = full.landmarks(full.template[None])[0]
    face = set(full.region_face.tolist())
    for name in REGION_NAMES:
        r = full.regions[name]
        assert r.dtype == torch.long and len(r) > 0 and int(r.min()) >= 0 and int(r.max()) < n, name
        assert len(torch.unique(r)) == len(r), name
    assert full.region_face.tolist() == list(range(9409))
    lips = full.template[full.region_lips]
    assert set(full.region_lips.tolist()) <= face
    assert {48, 51, 54, 57, 62, 66} <= {LANDMARK_VERTICES.index(v) for v in full.region_lips.tolist()
                                        if v in LANDMARK_VERTICES}
    assert lips[:, 1].max() < lmk[33, 1] and lips[:, 1].min() > lmk[8, 1]  # between nose bottom and chin
    assert float(lips[:, 0].abs().max()) < float(lmk[54, 0]) + 0.004
    assert set(full.region_eyes.tolist()) >= set(range(21451, 24591))  # both eyeballs
    assert float(full.template[full.region_scalp, 1].min()) >= float(lmk[17:27, 1].mean())
    assert float(full.template[full.region_neck, 1].max()) < float(lmk[8, 1])


def test_jaw_open_moves_chin_not_forehead(full):
    rest = full(expression=expr(full))
    opened = full(expression=expr(full, jawOpen=1.0))
    chin_drop = full.landmarks(rest)[0, 8, 1] - full.landmarks(opened)[0, 8, 1]
    assert chin_drop > 0.02, f"jawOpen lowers the chin by {1000 * float(chin_drop):.1f} mm"
    face_y = full.template[full.region_face, 1]
    forehead = full.region_face[face_y > face_y.max() - 0.02]  # top 2 cm of the face area
    moved = (opened - rest)[0, forehead].norm(dim=-1).max()
    print(f"\njawOpen: chin down {1000 * float(chin_drop):.1f} mm, top 2 cm of the face area moves at most "
          f"{1e6 * float(moved):.2f} um ({len(forehead)} vertices)")
    # ICT's jawOpen fades out smoothly towards the top of the head: a few micrometres there, on the order
    # of the OBJ text precision (6 significant digits of centimetres: 1 um).
    assert moved < 1e-5


def test_expressions_linear(full):
    e1, e2 = expr(full, dtype=torch.float64, jawOpen=1.0), expr(full, dtype=torch.float64, eyeBlink_L=1.0,
                                                                 mouthSmile_R=0.5)
    t = full(expression=torch.zeros_like(e1))
    a, b = 0.3, -1.7
    lhs = full(expression=a * e1 + b * e2) - t
    rhs = a * (full(expression=e1) - t) + b * (full(expression=e2) - t)
    assert lhs.dtype == torch.float64
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)
    s = torch.zeros(1, full.n_shape, dtype=torch.float64)
    s[0, 3] = 2.0
    torch.testing.assert_close(full(shape=s) - t, 2.0 * full.shape_basis[3].double()[None], rtol=0, atol=1e-12)


def test_batch_equals_per_item(model):
    g = torch.Generator().manual_seed(0)
    b = 3
    params = dict(
        shape=torch.randn(b, model.n_shape, generator=g),
        expression=torch.rand(b, model.n_expression, generator=g),
        rotation=0.3 * torch.randn(b, 3, generator=g),
        translation=0.1 * torch.randn(b, 3, generator=g),
    )
    batched = model(**params)
    assert batched.shape == (b, model.n_vertices, 3)
    for i in range(b):
        one = model(**{k: v[i : i + 1] for k, v in params.items()})
        torch.testing.assert_close(batched[i : i + 1], one, rtol=1e-5, atol=1e-6)


def test_gradients(model):
    b = 2
    params = {
        "shape": torch.zeros(b, model.n_shape, requires_grad=True),
        "expression": torch.zeros(b, model.n_expression, requires_grad=True),
        "rotation": torch.zeros(b, 3, requires_grad=True),
        "translation": torch.zeros(b, 3, requires_grad=True),
    }
    target = torch.randn(b, 68, 3, generator=torch.Generator().manual_seed(1))
    verts = model(**params)
    (model.landmarks(verts) - target).pow(2).sum().backward()
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_rigid_pose(model):
    idx = torch.arange(0, model.n_vertices, 97)
    e = expr(model, dtype=torch.float64, jawOpen=0.4)
    base = model(expression=e)
    rot = torch.tensor([[0.3, -0.5, 0.2]], dtype=torch.float64)
    trans = torch.tensor([[0.01, -0.02, 0.5]], dtype=torch.float64)
    posed = model(expression=e, rotation=rot, translation=trans)
    torch.testing.assert_close(torch.cdist(posed[0, idx], posed[0, idx]), torch.cdist(base[0, idx], base[0, idx]))
    # rotation about the model origin, then translation
    from gaussian_flametalk.geometry.rotation import axis_angle_to_matrix

    torch.testing.assert_close(posed, base @ axis_angle_to_matrix(rot)[0].T + trans)
    with pytest.raises(ValueError, match="jaw"):
        model(expression=e, jaw=torch.ones(1, 3, dtype=torch.float64))


def test_cold_and_cached_load_times(cold, cache_dir):
    model, t_cold = cold
    files = list(cache_dir.glob("ict-facekit-*.npz"))
    assert len(files) == 1 and not list(cache_dir.glob("*.tmp"))
    neutral, identities, expressions = list_obj_files(ICT)
    t0 = time.perf_counter()
    folder_key([neutral, *identities, *expressions])
    t_key = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = IctModel(ICT, drop=(), cache_dir=cache_dir)
    t_cached = time.perf_counter() - t0
    n_obj = 1 + len(identities) + len(expressions)
    print(f"\nICT load ({n_obj} OBJ files): cold {t_cold:.2f} s, cached {t_cached:.2f} s "
          f"(of which content key {t_key:.2f} s)")
    for name in ("template", "faces", "shape_basis", "expression_basis", "landmark_faces", "region_lips"):
        assert torch.equal(getattr(again, name), getattr(model, name)), name
    assert again.expression_names == model.expression_names
    assert t_cached < 2.0


def test_cache_dir_from_env(tmp_path, monkeypatch, cache_dir):
    small = _small_folder(tmp_path / "small", n_identity=1, expressions=("jawOpen",))
    monkeypatch.setenv("GFT_CACHE", str(tmp_path / "envcache"))
    IctModel(small)
    assert len(list((tmp_path / "envcache").glob("ict-facekit-*.npz"))) == 1


def _small_folder(folder: Path, n_identity: int, expressions: tuple[str, ...]) -> Path:
    """A FaceXModel-like folder of symlinks to a few of the shared files."""
    folder.mkdir(parents=True)
    names = [NEUTRAL_NAME, *(f"identity{i:03d}.obj" for i in range(n_identity)), *(f"{e}.obj" for e in expressions)]
    for name in names:
        (folder / name).symlink_to(ICT / name)
    return folder


def test_any_number_of_identities_and_cache_key(tmp_path):
    folder = _small_folder(tmp_path / "FaceXModel", n_identity=3, expressions=("mouthClose", "eyeBlink_L", "jawOpen"))
    cache = tmp_path / "cache"
    m = IctModel(tmp_path, drop=(), cache_dir=cache)  # the repository root is accepted too
    assert m.n_shape == 3 and m.expression_names == ["eyeBlink_L", "jawOpen", "mouthClose"]
    # a changed file gives a new cache entry (the key hashes contents)
    (folder / "identity002.obj").unlink()
    (folder / "identity002.obj").write_bytes((ICT / "identity005.obj").read_bytes())
    m2 = IctModel(folder, drop=(), cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2
    assert not torch.equal(m2.shape_basis[2], m.shape_basis[2])
    assert torch.equal(m2.shape_basis[:2], m.shape_basis[:2])
    m3 = IctModel(folder, drop=(), cache_dir=cache, n_shape=1, use_cache=False)
    assert torch.equal(m3.shape_basis, m2.shape_basis[:1])


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        IctModel(tmp_path / "nowhere", cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "jawOpen.obj").symlink_to(ICT / "jawOpen.obj")
    with pytest.raises(FileNotFoundError, match=NEUTRAL_NAME):
        IctModel(tmp_path / "empty", cache_dir=tmp_path)
    # an expression OBJ with one vertex too few
    bad = _small_folder(tmp_path / "bad", n_identity=1, expressions=("jawOpen",))
    text = (ICT / "mouthClose.obj").read_text()
    lines = text.splitlines(keepends=True)
    first_v = next(i for i, line in enumerate(lines) if line.startswith("v "))
    (bad / "mouthClose.obj").write_text("".join(lines[:first_v] + lines[first_v + 1 :]))
    with pytest.raises(ValueError, match=r"mouthClose\.obj.*26718 vertices"):
        IctModel(bad, cache_dir=tmp_path / "c")
    # an unparsable number
    (bad / "mouthClose.obj").write_text(text.replace("\nv ", "\nv x", 1))
    with pytest.raises(ValueError, match=r"mouthClose\.obj"):
        IctModel(bad, cache_dir=tmp_path / "c")


def test_obj_parsing_triangulation():
    obj = b"# c\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 2 2 2 0.5 0.5 0.5\nvt 0 0\n" \
          b"f 1/1 2/1 3/1 4/1\nf 2 3 5\nf -5//1 -4//1 -3//1 -2//1 -1//1\n"
    v = parse_obj_vertices(obj)
    assert v.shape == (5, 3) and v[4].tolist() == [2, 2, 2]
    f = parse_obj_faces(obj, len(v))
    assert f.tolist() == [[0, 1, 2], [0, 2, 3], [1, 2, 4], [0, 1, 2], [0, 2, 3], [0, 3, 4]]
    # the first ICT polygon, 'f 874/1 12/2 871/3 873/4', is split along its 874-871 diagonal
    neutral = (ICT / NEUTRAL_NAME).read_bytes()
    faces = parse_obj_faces(neutral, N_VERTICES)
    assert faces[:2].tolist() == [[873, 11, 870], [873, 870, 872]]
    assert np.isin(faces, np.arange(N_VERTICES)).all()


def test_ict_landmark_shortcut_matches_full_evaluation(model):
    g = torch.Generator().manual_seed(3)
    p = {"shape": torch.randn(2, model.n_shape, generator=g), "expression": torch.rand(2, model.n_expression, generator=g),
         "rotation": torch.randn(2, 3, generator=g) * 0.2, "translation": torch.randn(2, 3, generator=g) * 0.1}
    assert torch.allclose(model.forward_landmarks(**p), model.landmarks(model(**p)), atol=1e-6)


def test_mouth_interior_regions(model):
    """Teeth split by the jaw: jawOpen carries the lower row down and leaves the upper row; gums/tongue/socket = mouth."""
    r = model.regions
    upper, lower, mouth = r["teeth_upper"], r["teeth_lower"], r["mouth"]
    assert len(upper) > 1000 and len(lower) > 1000 and len(mouth) > 1000
    assert not torch.isin(upper, lower).any()
    teeth = torch.as_tensor(model.parts["teeth"])
    assert set(torch.cat([upper, lower]).tolist()) == set(teeth.tolist())
    base = model(expression=expr(model))[0]
    opened = model(expression=expr(model, jawOpen=1.0))[0]
    move = (opened - base).norm(dim=-1)
    assert float(move[upper].max()) < 1e-4  # rigid with the head
    assert float(move[lower].min()) > 1e-3 and opened[lower, 1].mean() < base[lower, 1].mean() - 0.005  # with the jaw
    assert base[upper, 1].mean() > base[lower, 1].mean()
    lip = model.landmarks(base[None])[0]
    assert base[upper, 2].max() < lip[48:68, 2].max()  # behind the lips
