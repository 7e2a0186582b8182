"""Head-model tests: the FLAME loader on a generated official-layout file, skinning invariants, landmarks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from gaussian_flametalk.headmodel import FlameModel, HeadParams, load_head_model, make_synthetic_head, save_synthetic_flame
from gaussian_flametalk.headmodel.flame_format import FlameFileError, read_flame_pickle, write_flame_pickle
from gaussian_flametalk.headmodel.landmark_embedding import LandmarkEmbeddingError, load_landmark_embedding, yaw_bins
from gaussian_flametalk.headmodel.synthetic import N_EXPRESSION, N_SHAPE, synthetic_arrays

D = torch.float64


@pytest.fixture(scope="module")
def flame_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flame")
    save_synthetic_flame(folder)
    return folder


@pytest.fixture(scope="module")
def model(flame_dir) -> FlameModel:
    return FlameModel.from_files(flame_dir / "generic_model.pkl", n_shape=N_SHAPE, n_expression=N_EXPRESSION, dtype=D)


def random_params(model, batch, seed=0, scale=0.3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.rand(*s, generator=g, dtype=D) * 2 - 1) * scale  # noqa: E731
    return {"shape": r(batch, model.n_shape) * 3, "expression": r(batch, model.n_expression) * 3, "rotation": r(batch, 3),
            "neck": r(batch, 3), "jaw": r(batch, 3).abs(), "eyes": r(batch, 6), "translation": r(batch, 3)}


# ---------------------------------------------------------------- FLAME file format

def test_generated_file_has_official_object_types(flame_dir):
    data = (flame_dir / "generic_model.pkl").read_bytes()
    assert b"chumpy.ch\nCh\n" in data and b"scipy.sparse.csc\ncsc_matrix\n" in data
    assert data[:2] == b"\x80\x02"  # protocol 2, as the official Python-2 files
    with pytest.raises(ModuleNotFoundError, match="chumpy"):
        pickle.loads(data)  # a plain unpickler needs chumpy; ours must not


def test_loader_reads_arrays_counts_and_triangles_as_written(flame_dir, model):
    arrays, embedding, _ = synthetic_arrays()
    loaded = read_flame_pickle(flame_dir / "generic_model.pkl")
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        np.testing.assert_array_equal(loaded[key], arrays[key])
    np.testing.assert_array_equal(loaded["f"], arrays["f"])
    assert loaded["shapedirs"].shape[2] == 400 and loaded["posedirs"].shape[2] == 36
    # FLAME's own vertices and faces first, then the procedural mouth interior (teeth rows, back wall)
    n_mouth = sum(len(model.regions[n]) for n in ("teeth_upper", "teeth_lower", "mouth"))
    assert n_mouth > 0 and model.n_vertices == len(arrays["v_template"]) + n_mouth
    assert torch.equal(model.template[: len(arrays["v_template"])].double(), torch.as_tensor(arrays["v_template"]))
    assert (model.n_shape, model.n_expression) == (N_SHAPE, N_EXPRESSION)
    assert torch.equal(model.faces[: len(arrays["f"])], torch.as_tensor(arrays["f"]))
    assert int(model.faces[len(arrays["f"]):].min()) >= len(arrays["v_template"])
    assert torch.equal(model.landmark_faces, torch.as_tensor(embedding.face_idx))
    assert model.parents == [-1, 0, 1, 1, 1]


def test_component_counts_are_configurable_and_bounded(flame_dir):
    m = FlameModel.from_files(flame_dir / "generic_model.pkl", n_shape=4, n_expression=7)
    assert m.shapedirs.shape[-1] == 11
    with pytest.raises(FlameFileError, match="n_expression=101"):
        FlameModel.from_files(flame_dir / "generic_model.pkl", n_shape=4, n_expression=101)


def test_missing_key_fails_naming_file_and_key(tmp_path):
    arrays, _, _ = synthetic_arrays()
    path = tmp_path / "broken.pkl"
    write_flame_pickle(path, arrays)
    raw = path.read_bytes()
    # drop 'posedirs': read the raw dict with the loader's unpickler and write it back with the official class names
    from gaussian_flametalk.headmodel import flame_format

    with open(path, "rb") as fh:
        d = flame_format._FlameUnpickler(fh, path).load()
    del d["posedirs"]
    path.write_bytes(flame_format._rename_globals(pickle.dumps(d, protocol=2), {
        (flame_format.ChumpyArray.__module__, "ChumpyArray"): ("chumpy.ch", "Ch")}))
    assert raw != path.read_bytes()
    with pytest.raises(FlameFileError, match=r"broken\.pkl.*missing key\(s\) \['posedirs'\]"):
        read_flame_pickle(path)


def test_non_flame_pickle_fails_naming_file(tmp_path):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"hello": np.zeros(3)}, protocol=2))
    with pytest.raises(FlameFileError, match=r"other\.pkl.*missing key"):
        read_flame_pickle(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(FlameFileError, match=r"other\.pkl.*not a FLAME model"):
        read_flame_pickle(path)
    path.write_bytes(pickle.dumps({"f": FlameFileError("x")}))
    with pytest.raises(FlameFileError, match=r"other\.pkl.*FlameFileError"):
        read_flame_pickle(path)  # a foreign class is refused, never instantiated
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(FlameFileError, match=r"other\.pkl.*cannot be read"):
        read_flame_pickle(path)


def test_missing_path_fails_naming_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pkl.*flame\.is\.tue\.mpg\.de"):
        read_flame_pickle(tmp_path / "nowhere.pkl")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_head_model(f"flame:{tmp_path / 'nowhere.pkl'}")


def test_wrong_shapes_fail_naming_the_key(tmp_path):
    arrays, _, _ = synthetic_arrays()
    arrays["posedirs"] = arrays["posedirs"][..., :30]
    with pytest.raises(FlameFileError, match="'posedirs' must have shape"):
        write_flame_pickle(tmp_path / "x.pkl", arrays)


def test_model_without_embedding_fails_early(tmp_path):
    arrays, _, _ = synthetic_arrays()
    write_flame_pickle(tmp_path / "generic_model.pkl", arrays)
    with pytest.raises(FileNotFoundError, match="landmark embedding"):
        FlameModel.from_files(tmp_path / "generic_model.pkl", n_shape=10, n_expression=10)


# ---------------------------------------------------------------- landmark embedding formats

def test_static_51_pkl_and_dynamic_npy_embeddings(tmp_path):
    arrays, emb, _ = synthetic_arrays()
    with open(tmp_path / "flame_static_embedding.pkl", "wb") as fh:
        pickle.dump({"lmk_face_idx": emb.face_idx[17:].astype(np.uint32), "lmk_b_coords": emb.bary[17:]}, fh, protocol=2)
    # dynamic contour: the true contour in bins 0..39 (yaw >= 0), other triangles in bins 40..78 (yaw < 0)
    dyn_f = np.repeat(emb.face_idx[None, :17], 79, 0)
    dyn_f[40:] = emb.face_idx[None, 17:34]
    dyn_b = np.repeat(emb.bary[None, :17], 79, 0)
    dyn_b[40:] = emb.bary[None, 17:34]
    np.save(tmp_path / "flame_dynamic_embedding.npy", np.array({"lmk_face_idx": dyn_f, "lmk_b_coords": dyn_b}, dtype=object))
    static = load_landmark_embedding(tmp_path / "flame_static_embedding.pkl")
    assert static.valid.sum() == 51 and not static.valid[:17].any()
    write_flame_pickle(tmp_path / "generic_model.pkl", arrays)
    m = FlameModel.from_files(tmp_path / "generic_model.pkl", n_shape=10, n_expression=10, dtype=D)
    assert m.has_dynamic_contour and m.landmark_weights[:17].sum() == 0 and m.landmark_weights[17:].min() == 1
    full = make_synthetic_head(dtype=D)
    for yaw_rot, contour_from in ((0.0, slice(0, 17)), (0.3, slice(17, 34))):  # +0.3 rad about y -> yaw -17 deg
        rot = torch.tensor([[0.0, yaw_rot, 0.0]], dtype=D)
        v = m(rotation=rot)
        lmk = m.landmarks(v, head_rotation=FlameModel.head_rotation(rot, torch.zeros_like(rot)))
        ref = full.landmarks(v)
        assert torch.allclose(lmk[:, 17:], ref[:, 17:], atol=1e-12)
        assert torch.allclose(lmk[:, :17], ref[:, contour_from], atol=1e-12)


def test_yaw_bins_layout():
    def rot_y(deg):
        a = torch.tensor(np.radians(deg), dtype=D)
        c, s = torch.cos(a), torch.sin(a)
        return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=D)[None]

    assert int(yaw_bins(rot_y(0))) == 0
    assert int(yaw_bins(rot_y(-10))) == 10  # yaw = -euler_y
    assert int(yaw_bins(rot_y(10))) == 49  # negative yaw: 39 - yaw
    assert int(yaw_bins(rot_y(80))) == 78 and int(yaw_bins(rot_y(-80))) == 39


def test_bad_embedding_files_fail_naming_file(tmp_path):
    np.save(tmp_path / "e.npy", np.array({"lmk_face_idx": np.zeros(12, int), "lmk_b_coords": np.zeros((12, 3))}, dtype=object))
    with pytest.raises(LandmarkEmbeddingError, match=r"e\.npy.*12 points"):
        load_landmark_embedding(tmp_path / "e.npy")
    np.save(tmp_path / "f.npy", np.array({"nothing": 1}, dtype=object))
    with pytest.raises(LandmarkEmbeddingError, match=r"f\.npy.*no landmark arrays"):
        load_landmark_embedding(tmp_path / "f.npy")


# ---------------------------------------------------------------- skinning invariants

def test_zero_parameters_give_the_template_exactly(model):
    v = model(shape=torch.zeros(2, model.n_shape, dtype=D))
    assert torch.allclose(v, model.template.expand(2, -1, -1), atol=1e-12, rtol=0)


def test_global_rotation_is_rigid(model):
    p = random_params(model, 1)
    base = model(shape=p["shape"], expression=p["expression"], jaw=p["jaw"])
    rot = model(shape=p["shape"], expression=p["expression"], jaw=p["jaw"], rotation=torch.tensor([[0.4, -0.7, 0.2]], dtype=D))
    d0 = torch.cdist(base[0], base[0], compute_mode="donot_use_mm_for_euclid_dist")
    d1 = torch.cdist(rot[0], rot[0], compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.allclose(d0, d1, atol=1e-10)
    assert (rot - base).abs().max() > 1e-2  # it did move


def test_jaw_rotation_moves_only_jaw_skinned_vertices(model):
    jaw = torch.tensor([[0.3, 0.05, 0.0]], dtype=D)
    moved = (model(jaw=jaw) - model(jaw=torch.zeros_like(jaw)))[0].norm(dim=-1)
    on_jaw = model.weights[:, 2] > 0
    assert moved[~on_jaw].max() < 1e-12
    assert moved[on_jaw].max() > 5e-3
    # the mouth opens: lower inner lip moves down relative to the upper
    lmk = model.landmarks(model(jaw=jaw))[0]
    lmk0 = model.landmarks(model.template[None])[0]
    gap, gap0 = lmk[62, 1] - lmk[66, 1], lmk0[62, 1] - lmk0[66, 1]
    assert gap > gap0 + 0.01


def test_expressions_are_linear(model):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, model.n_expression, generator=g, dtype=D), torch.randn(1, model.n_expression, generator=g, dtype=D)
    off = lambda e: model(expression=e) - model.template  # noqa: E731
    assert torch.allclose(off(a + 2 * b), off(a) + 2 * off(b), atol=1e-12)
    assert off(a).abs().max() > 1e-3


def test_batch_equals_per_item(model):
    p = random_params(model, 4, seed=3)
    batched = model(**p)
    single = torch.cat([model(**{k: v[i : i + 1] for k, v in p.items()}) for i in range(4)])
    assert torch.allclose(batched, single, atol=1e-12)
    assert torch.allclose(model.landmarks(batched), torch.cat([model.landmarks(single[i : i + 1]) for i in range(4)]))


def test_gradients_reach_every_parameter(model):
    p = {k: v.requires_grad_() for k, v in random_params(model, 2, seed=4).items()}
    out = model(**p)
    (out.square().sum() + model.landmarks(out).sum()).backward()
    for name, t in p.items():
        assert t.grad is not None and t.grad.abs().sum() > 0, name


def test_float32_float64_and_params_container(model, flame_dir):
    p = random_params(model, 3, seed=5)
    v64 = model(**p)
    m32 = FlameModel.from_files(flame_dir / "generic_model.pkl", n_shape=N_SHAPE, n_expression=N_EXPRESSION)
    v32 = m32(**{k: v.float() for k, v in p.items()})
    assert v32.dtype == torch.float32 and torch.allclose(v32.double(), v64, atol=1e-5)
    assert m32.double()(**p).dtype == torch.float64
    hp = HeadParams.from_numpy({k: v.numpy() for k, v in p.items()}, dtype=D)
    assert torch.equal(model.forward_params(hp), v64)
    assert torch.allclose(model.forward_params(hp[1:2]), v64[1:2], atol=1e-14)


def test_pose_parts_and_shapes_are_checked(model):
    with pytest.raises(ValueError, match="'jaw' must have shape"):
        model(jaw=torch.zeros(2, 2, dtype=D))
    with pytest.raises(ValueError, match="at least one"):
        model()


def test_regions_and_synthetic_masks(model):
    regions = model.regions
    assert set(regions) == {"face", "lips", "eyes", "scalp", "neck", "teeth_upper", "teeth_lower", "mouth"}
    for name, idx in regions.items():
        assert len(idx) > 20, name
    verts = model.template
    assert verts[regions["scalp"], 1].mean() > verts[regions["face"], 1].mean() > verts[regions["neck"], 1].mean()
    assert torch.isin(regions["lips"], regions["face"]).all()
    lmk = model.landmarks(verts[None])[0]
    # iBUG layout on the template: eyes above the nose tip above the mouth above the chin; right (0-side) at -x
    assert lmk[36:48, 1].mean() > lmk[30, 1] > lmk[48:68, 1].mean() > lmk[8, 1]
    assert lmk[0, 0] < 0 < lmk[16, 0] and lmk[36, 0] < lmk[45, 0]


def test_procedural_teeth_follow_head_and_jaw(model, flame_dir):
    """Upper teeth rigid with the head, lower teeth with the jaw, both just behind the lips; mouth=False: plain FLAME."""
    r = model.regions
    upper, lower, wall = r["teeth_upper"], r["teeth_lower"], r["mouth"]
    own = set(range(model.n_vertices - len(upper) - len(lower) - len(wall)))
    for name in ("face", "lips", "eyes", "scalp", "neck"):
        assert set(r[name].tolist()) <= own, name  # FLAME's regions hold none of the new vertices
    p = HeadParams.zeros(model, 3)
    p.expression[1] = 0.8  # an expression deforms the lips, never the teeth
    p.jaw[2, 0] = 0.3  # open the jaw
    v = model.forward_params(p)
    assert torch.allclose(v[1, upper], v[0, upper], atol=1e-7) and torch.allclose(v[1, lower], v[0, lower], atol=1e-7)
    assert torch.allclose(v[2, upper], v[0, upper], atol=1e-7)  # the jaw leaves the upper row in place
    assert (v[2, lower] - v[0, lower]).norm(dim=-1).min() > 0.005  # ... and carries the lower row down
    assert v[2, lower, 1].mean() < v[0, lower, 1].mean() - 0.005
    lmk = model.landmarks(v[:1])[0]
    assert v[0, upper, 1].mean() > v[0, lower, 1].mean()
    assert v[0, upper, 2].max() < lmk[48:68, 2].max()  # behind the lips
    assert v[0, wall, 2].max() < v[0, upper, 2].max()  # the back wall behind the teeth
    lo, hi = sorted((float(lmk[48, 0]), float(lmk[54, 0])))
    assert lo < float(v[0, upper, 0].min()) and float(v[0, upper, 0].max()) < hi  # between the mouth corners
    # a head turn moves both rows rigidly with the head
    p2 = HeadParams.zeros(model, 1)
    p2.neck[0, 1] = 0.4
    v2 = model.forward_params(p2)
    d0 = torch.cdist(v[0, upper], v[0, upper])
    assert torch.allclose(torch.cdist(v2[0, upper], v2[0, upper]), d0, atol=1e-4)  # cdist rounding
    plain = FlameModel.from_files(flame_dir / "generic_model.pkl", n_shape=10, n_expression=10, mouth=False)
    assert plain.n_vertices == len(own) and "teeth_upper" not in plain.regions


def test_derived_regions_without_masks_file(flame_dir, tmp_path):
    import shutil

    for name in ("generic_model.pkl", "landmark_embedding.npy"):
        shutil.copy(flame_dir / name, tmp_path / name)
    m = FlameModel.from_files(tmp_path / "generic_model.pkl", n_shape=10, n_expression=10)
    masks = make_synthetic_head().regions
    for name in ("eyes", "neck"):
        assert set(m.regions[name].tolist()) == set(masks[name].tolist()), name
    lips_overlap = np.intersect1d(m.regions["lips"].numpy(), masks["lips"].numpy()).size / len(masks["lips"])
    assert lips_overlap > 0.8


def test_load_head_model_specs(flame_dir, monkeypatch):
    assert load_head_model("synthetic").kind == "synthetic"
    monkeypatch.setenv("GFT_FLAME", str(flame_dir / "generic_model.pkl"))
    assert load_head_model("flame", n_shape=10, n_expression=10).n_vertices == make_synthetic_head().n_vertices
    with pytest.raises(ValueError, match="unknown head model"):
        load_head_model("smpl:/x")


def test_vertex_subset_and_landmark_shortcut_match_full_evaluation(model):
    p = random_params(model, 3, seed=7)
    full = model(**p)
    ids = torch.tensor([0, 5, 17, 400, model.n_vertices - 1])
    assert torch.allclose(model(**p, vertex_ids=ids), full[:, ids], atol=1e-14)
    assert torch.allclose(model.forward_landmarks(**p), model.landmarks(full), atol=1e-14)
