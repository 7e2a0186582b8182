"""Interop: VHAP's export layout round trip (export -> import gives the same parameters, camera and images; train-avatar
and train-talk run on the import) and the avatar PLY read by plyfile with the fields common splat viewers read."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from gaussian_flametalk.avatar.gaussians import BoundGaussians, save_ply
from gaussian_flametalk.avatar.train import AvatarConfig, DensifyOptions, train_avatar
from gaussian_flametalk.flametalk.model import FlameTalkArch
from gaussian_flametalk.flametalk.train import TalkConfig, train_talk
from gaussian_flametalk.headmodel import make_synthetic_head, save_synthetic_flame
from gaussian_flametalk.interop.vhap import (
    ExportVhapConfig,
    ImportVhapConfig,
    VhapFormatError,
    export_vhap,
    import_vhap,
    read_vhap,
)
from gaussian_flametalk.io.audio import save_wav
from gaussian_flametalk.io.subject import Subject
from gaussian_flametalk.scripts.gft import main as gft_main
from test_avatar import make_subject
from test_flametalk import speech_like

N = 20
FRAME_KEYS = {"timestep_index", "timestep_index_original", "timestep_id", "camera_index", "camera_id", "cx", "cy",
              "fl_x", "fl_y", "h", "w", "camera_angle_x", "camera_angle_y", "transform_matrix", "file_path",
              "fg_mask_path", "flame_param_path"}


@pytest.fixture(scope="module")
def flame_subject(tmp_path_factory):
    """A synthetic SUBJECT (FLAME-format head) with sound, and the synthetic head saved as a FLAME pickle."""
    tmp = tmp_path_factory.mktemp("interop")
    root = make_subject(tmp / "S", n=N, size=64)
    save_wav(root / "audio.wav", speech_like(N / 25.0, seed=5)[0])
    return root, save_synthetic_flame(tmp / "flame")


def test_export_layout_and_round_trip(flame_subject, tmp_path):
    root, flame_pkl = flame_subject
    subject = Subject.open(root)
    out = export_vhap(ExportVhapConfig(subject=root, out=tmp_path / "vhap", background="keep", progress=False))
    db = json.loads((out / "transforms.json").read_text())
    assert len(db["frames"]) == N and db["timestep_indices"] == list(range(N)) and db["camera_indices"] == [0]
    assert FRAME_KEYS <= set(db["frames"][0])
    train = json.loads((out / "transforms_train.json").read_text())
    test = json.loads((out / "transforms_test.json").read_text())
    assert len(train["frames"]) == 16 and len(test["frames"]) == 4 and test["frames"][0]["timestep_index"] == 16
    assert json.loads((out / "transforms_val.json").read_text())["frames"] == []
    with np.load(out / "flame_param" / "00003.npz") as z:
        assert {k: z[k].shape for k in z.files} == {"shape": (10,), "expr": (1, 10), "rotation": (1, 3),
                                                    "neck_pose": (1, 3), "jaw_pose": (1, 3), "eyes_pose": (1, 6),
                                                    "translation": (1, 3),
                                                    "static_offset": (1, make_synthetic_head().n_file_vertices, 3)}
        assert not z["static_offset"].any()
    with np.load(out / "canonical_flame_param.npz") as z:
        assert z["jaw_pose"][0, 0] == pytest.approx(0.3) and not z["expr"].any()
    # images and masks are the SUBJECT's, losslessly
    png = cv2.imread(str(out / db["frames"][5]["file_path"]))[..., ::-1]
    assert np.array_equal(png, subject.frame(5))
    assert np.array_equal(cv2.imread(str(out / db["frames"][5]["fg_mask_path"]), cv2.IMREAD_GRAYSCALE),
                          np.round(subject.mask(5) * 255).astype(np.uint8))
    # the camera in VHAP's convention: camera-to-world, OpenGL axes (y up, looking down -z); project the landmarks
    # that way by hand and compare with the project's own (OpenCV) projection
    model = make_synthetic_head()
    params = subject.params()
    lmk = model.landmarks(model.forward_params(params[:3])).double()
    w2c_gl = np.linalg.inv(np.array(db["frames"][0]["transform_matrix"]))
    p = lmk.numpy() @ w2c_gl[:3, :3].T + w2c_gl[:3, 3]
    assert (p[..., 2] < 0).all()  # in front of an OpenGL camera
    f = db["frames"][0]
    uv = np.stack([f["cx"] + f["fl_x"] * p[..., 0] / -p[..., 2], f["cy"] - f["fl_y"] * p[..., 1] / -p[..., 2]], -1)
    assert np.allclose(uv, subject.camera(dtype=torch.float64).project(lmk).numpy(), atol=1e-6)

    # import: the same parameters, camera and (up to the SUBJECT's JPEG re-encoding) images
    back = import_vhap(ImportVhapConfig(folder=out, out=tmp_path / "S2", head_model=f"flame:{flame_pkl}",
                                        audio=root / "audio.wav", progress=False))
    again = Subject.open(back)
    assert again.n_frames == N and again.meta["head_model"]["kind"] == "flame" and again.audio_path is not None
    for k, v in params.to_numpy().items():
        assert np.array_equal(again.params().to_numpy()[k], v), k
    cam, cam2 = subject.camera(), again.camera()
    assert torch.allclose(cam.viewmat, cam2.viewmat, atol=1e-6) and torch.allclose(cam.K, cam2.K)
    for i in (0, 11, N - 1):
        mse = np.mean((again.frame(i).astype(float) - subject.frame(i).astype(float)) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 36, i  # SubjectWriter's JPEG (quality 95) of the exported PNG
        assert np.array_equal(again.mask(i), subject.mask(i))
    # the FLAME file the user gives gives the same mesh as the SUBJECT's own head model
    assert torch.allclose(again.head_model().forward_params(params[:2]), model.forward_params(params[:2]), atol=1e-6)
    # the stages run on it
    meta = train_avatar(AvatarConfig(subject=back, iterations=4, resolution=64, progress=False, regions=(),
                                     sh_degree=0, densify=DensifyOptions(every=0, opacity_resets=0), grid_frames=1))
    assert np.isfinite(meta["figures"]["test_psnr"])
    talk = train_talk(TalkConfig(subjects=(back,), iterations=2, seq_frames=8, batch_size=1,
                                 model=FlameTalkArch(dim=16, heads=2), mel_dim=16, audio_encoder="mel",
                                 progress=False, window=16, overlap=4))
    assert (back / "talk" / "checkpoint.pt").is_file() and talk["stage"] == "train-talk"


def test_white_background_non_square_and_cli(flame_subject, tmp_path):
    root, flame_pkl = flame_subject
    out = tmp_path / "vhap"
    assert gft_main(["export-vhap", str(root), "--out", str(out), "--no-progress"]) == 0
    subject = Subject.open(root)
    white = cv2.imread(str(out / "images" / "00002_00.png"))[..., ::-1]
    m = subject.mask(2)
    assert (white[m == 0] == 255).all() and np.array_equal(white[m == 1], subject.frame(2)[m == 1])
    # a 56 x 64 export (crop 4 columns each side) is padded back to a square, the principal point shifted
    db = json.loads((out / "transforms.json").read_text())
    for f in db["frames"]:
        for key in ("file_path", "fg_mask_path"):
            img = cv2.imread(str(out / f[key]), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(out / f[key]), img[:, 4:60])
        f["w"], f["cx"] = 56, f["cx"] - 4
    (out / "transforms.json").write_text(json.dumps(db))
    assert gft_main(["import-vhap", str(out), "--out", str(tmp_path / "S3"), "--head-model", f"flame:{flame_pkl}",
                     "--no-progress"]) == 0
    sq = Subject.open(tmp_path / "S3")
    assert sq.meta["resolution"] == 64 and sq.frame(0).shape == (64, 64, 3) and sq.audio_path is None
    assert torch.allclose(sq.camera().K, subject.camera().K)
    assert (sq.mask(0)[:, :4] == 0).all()


def test_bad_input(flame_subject, tmp_path, capsys):
    root, flame_pkl = flame_subject
    with pytest.raises(VhapFormatError, match="transforms.json: missing"):
        read_vhap(tmp_path)
    out = export_vhap(ExportVhapConfig(subject=root, out=tmp_path / "vhap", progress=False))
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    with np.load(broken / "flame_param" / "00004.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "expr"}
    np.savez(broken / "flame_param" / "00004.npz", **arrays)
    assert gft_main(["import-vhap", str(broken), "--out", str(tmp_path / "X"), "--head-model",
                     f"flame:{flame_pkl}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "00004.npz: lacks ['expr']" in err[0]
    assert not (tmp_path / "X").exists()
    with pytest.raises(FileExistsError, match="vhap: exists"):
        export_vhap(ExportVhapConfig(subject=root, out=out, progress=False))
    with pytest.raises(FileExistsError, match="S: exists"):
        import_vhap(ImportVhapConfig(folder=out, out=root, head_model=f"flame:{flame_pkl}", progress=False))
    with pytest.raises(ValueError, match="audio.wav: 0.80 s of sound for 20 frames at 10 fps"):
        import_vhap(ImportVhapConfig(folder=out, out=tmp_path / "Y", head_model=f"flame:{flame_pkl}",
                                     audio=root / "audio.wav", fps=10.0, progress=False))
    np.savez(tmp_path / "short.npz", **Subject.open(root).params()[:5].to_numpy())
    with pytest.raises(ValueError, match="short.npz: 5 frames of parameters for a SUBJECT of 20"):
        export_vhap(ExportVhapConfig(subject=root, out=tmp_path / "o", params=tmp_path / "short.npz", progress=False))
    # static offsets are dropped, said and recorded
    with np.load(out / "flame_param" / "00000.npz") as z:
        arrays = dict(z)
    arrays["static_offset"] = np.full((1, 5, 3), 0.002)
    np.savez(out / "flame_param" / "00000.npz", **arrays)
    sub = Subject.open(import_vhap(ImportVhapConfig(folder=out, out=tmp_path / "Z", head_model=f"flame:{flame_pkl}",
                                                    progress=False)))
    assert sub.meta["figures"]["dropped_offset_m"] == pytest.approx(0.002)
    assert "offsets up to 2.0 mm dropped" in capsys.readouterr().err


# The fields common 3D Gaussian Splatting viewers read from a PLY's "vertex" element (all float32): the original
# 3DGS SIBR viewer and its training code (x y z nx ny nz f_dc_0..2 f_rest_0..44 opacity scale_0..2 rot_0..3, in that
# order), antimatter15/splat's and SuperSplat's PLY loaders (x y z, f_dc_*, opacity as a logit, scale_* as logs,
# rot_* as an unnormalised w-first quaternion; f_rest_* optional), gsplat's and nerfstudio's exporters (the same names).
VIEWER_FIELDS = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
                 + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def test_avatar_ply_reads_with_plyfile_as_splat_viewers_do(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    model = make_synthetic_head()
    g = torch.Generator().manual_seed(1)
    parent = torch.randint(model.n_faces, (500,), generator=g)
    avatar = BoundGaussians(parent, model.n_faces, xyz=0.1 * torch.randn(500, 3, generator=g),
                            rotation=torch.randn(500, 4, generator=g), log_scale=torch.randn(500, 3, generator=g) - 3,
                            opacity=torch.randn(500, generator=g), sh_dc=torch.randn(500, 1, 3, generator=g),
                            sh_rest=0.1 * torch.randn(500, 15, 3, generator=g))
    verts = model(jaw=torch.tensor([[0.1, 0.0, 0.0]]))[0]
    path = save_ply(tmp_path / "avatar.ply", avatar, verts, model.faces)
    ply = plyfile.PlyData.read(str(path))
    assert ply.elements[0].name == "vertex" and len(ply.elements) == 1 and not ply.text  # binary, one element
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    assert names[: len(VIEWER_FIELDS)] == VIEWER_FIELDS
    assert all(vertex[n].dtype == np.float32 for n in VIEWER_FIELDS) and vertex.count == 500
    # what a viewer computes from them: positions on the posed mesh, colours 0.5 + C0 * f_dc, sigmoid opacity,
    # exp scales, a normalised quaternion
    with torch.no_grad():
        means, quats, scales, opac, sh = avatar.world(verts[None], model.faces)
    xyz = np.stack([vertex[n] for n in "xyz"], -1)
    assert np.allclose(xyz, means[0].numpy(), atol=1e-6)
    assert np.allclose(1 / (1 + np.exp(-vertex["opacity"])), opac.numpy(), atol=1e-6)
    assert np.allclose(np.exp(np.stack([vertex[f"scale_{i}"] for i in range(3)], -1)), scales[0].numpy(), rtol=1e-4)
    q = np.stack([vertex[f"rot_{i}"] for i in range(4)], -1)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    qq = (quats[0] / quats[0].norm(dim=-1, keepdim=True)).numpy()
    assert np.allclose(np.abs((q * qq).sum(-1)), 1.0, atol=1e-5)
    assert np.allclose(np.stack([vertex[f"f_dc_{i}"] for i in range(3)], -1), sh[:, 0].numpy(), atol=1e-6)
