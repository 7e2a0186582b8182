"""PLY export in the 3D Gaussian Splatting layout, and the round trip back to a bound avatar."""

import torch

from gaussian_flametalk.avatar.gaussians import (
    FIELDS,
    BoundGaussians,
    load_ply,
    read_ply,
    save_ply,
)
from gaussian_flametalk.headmodel import make_synthetic_head

STANDARD = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _avatar(model):
    g = torch.Generator().manual_seed(3)
    parent = torch.randint(model.n_faces, (700,), generator=g)
    n = parent.numel()
    return BoundGaussians(parent, model.n_faces, xyz=torch.randn(n, 3, generator=g), rotation=torch.randn(n, 4, generator=g),
                          log_scale=torch.randn(n, 3, generator=g), opacity=torch.randn(n, generator=g),
                          sh_dc=torch.randn(n, 1, 3, generator=g), sh_rest=torch.randn(n, 15, 3, generator=g))


def test_ply_round_trip(tmp_path):
    model = make_synthetic_head()
    avatar = _avatar(model)
    verts = model(jaw=torch.tensor([[0.2, 0.0, 0.0]]))[0]
    path = save_ply(tmp_path / "avatar.ply", avatar, verts, model.faces, frame=7)
    rec, comments = read_ply(path)
    names = list(rec.dtype.names)
    assert names[: len(STANDARD)] == STANDARD
    assert "parent_triangle" in names
    assert any("frame 7" in c for c in comments)
    # world values are those of the posed frame
    with torch.no_grad():
        means, _quats, scales, _, _ = avatar.world(verts[None], model.faces)
    assert torch.allclose(torch.from_numpy(rec["x"].copy()), means[0, :, 0])
    assert torch.allclose(torch.from_numpy(rec["scale_1"].copy()), torch.log(scales[0, :, 1]), atol=1e-5)
    assert torch.allclose(torch.from_numpy(rec["opacity"].copy()), avatar.opacity.detach())
    back = load_ply(path)
    assert torch.equal(back.parent, avatar.parent) and back.n_faces == avatar.n_faces
    for f in FIELDS:
        assert torch.equal(getattr(back, f).detach(), getattr(avatar, f).detach()), f
    assert not (tmp_path / ".avatar.ply.tmp").exists()
