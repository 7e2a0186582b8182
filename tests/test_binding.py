"""Binding of Gaussians to mesh triangles: they follow the mesh, scale with it, and densified children keep their
parent's triangle."""

import math

import torch

from gaussian_flametalk.avatar.binding import local_to_world, triangle_frames
from gaussian_flametalk.avatar.gaussians import (
    FIELDS,
    BoundGaussians,
    DensifyStats,
    densify_and_prune,
    region_triangles,
)
from gaussian_flametalk.headmodel import HeadParams, make_synthetic_head


def _random_avatar(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    tri = torch.arange(model.n_faces)
    t = tri.numel()
    return BoundGaussians(
        tri, model.n_faces, xyz=torch.randn(t, 3, generator=g) * 0.3, rotation=torch.randn(t, 4, generator=g),
        log_scale=torch.randn(t, 3, generator=g) * 0.2 - 0.7, opacity=torch.randn(t, generator=g),
        sh_dc=torch.randn(t, 1, 3, generator=g), sh_rest=torch.zeros(t, 15, 3),
    )


def test_frames_orthonormal_and_identity_local():
    model = make_synthetic_head()
    verts = model(jaw=torch.tensor([[0.2, 0.0, 0.0]]))
    fr = triangle_frames(verts, model.faces)
    eye = fr.rotation.transpose(-1, -2) @ fr.rotation
    assert torch.allclose(eye, torch.eye(3).expand_as(eye), atol=1e-5)
    assert torch.allclose(torch.det(fr.rotation), torch.ones(1), atol=1e-5)
    # a Gaussian at local zero with identity rotation sits at the centroid, aligned with the triangle
    n = model.n_faces
    means, _quats, scales = local_to_world(fr, torch.arange(n), torch.zeros(n, 3), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                                          torch.zeros(n, 3))
    assert torch.allclose(means, fr.origin, atol=1e-6)
    assert torch.allclose(scales, fr.scale[..., None].expand(-1, -1, 3), atol=1e-7)


def test_jaw_moves_exactly_jaw_gaussians():
    model = make_synthetic_head()
    avatar = _random_avatar(model)
    p = HeadParams.zeros(model, 2)
    p.jaw[1, 0] = 0.3
    with torch.no_grad():
        means, _quats, _scales, _, _ = avatar.world(model.forward_params(p), model.faces)
    moved = (means[1] - means[0]).norm(dim=-1) > 1e-6
    jaw_vertex = model.weights[:, 2] > 0
    jaw_triangle = jaw_vertex[model.faces].any(dim=1)
    assert jaw_triangle.any() and (~jaw_triangle).any()
    assert torch.equal(moved, jaw_triangle[avatar.parent])


def test_world_scale_follows_triangle_size():
    model = make_synthetic_head()
    avatar = _random_avatar(model, seed=1)
    verts = model(jaw=torch.tensor([[0.1, 0.0, 0.0]]))
    with torch.no_grad():
        m1, q1, s1, _, _ = avatar.world(verts, model.faces)
        m2, q2, s2, _, _ = avatar.world(2.0 * verts, model.faces)
        c1 = triangle_frames(verts, model.faces).origin[:, avatar.parent]
    assert torch.allclose(s2, 2.0 * s1, rtol=1e-5)
    assert torch.allclose(m2 - 2.0 * c1, 2.0 * (m1 - c1), atol=1e-6)  # offsets from the centroid double
    assert torch.allclose(q1, q2, atol=1e-5)


def test_world_is_differentiable_in_head_parameters():
    model = make_synthetic_head()
    avatar = _random_avatar(model)
    jaw = torch.tensor([[0.1, 0.0, 0.0]], requires_grad=True)
    means, quats, scales, _, _ = avatar.world(model(jaw=jaw), model.faces)
    (means.sum() + quats.sum() + scales.sum()).backward()
    assert jaw.grad is not None and jaw.grad.abs().sum() > 0


def test_densified_children_keep_parent_triangle_and_no_triangle_empties():
    model = make_synthetic_head()
    tri = region_triangles(model.faces, model.regions, ("face", "lips"))
    avatar = BoundGaussians.init(tri, model.n_faces, scale=0.5)
    with torch.no_grad():
        avatar.log_scale[::2] += math.log(20.0)  # half large (split), half small (clone)
        avatar.opacity[1::4] = -10.0  # some transparent (pruned)
    opt = torch.optim.Adam([{"params": [getattr(avatar, f)], "lr": 1e-3, "name": f} for f in FIELDS])
    # one step so Adam has state to carry over
    sum(getattr(avatar, f).sum() for f in FIELDS).backward()
    opt.step()
    before_parent = avatar.parent.clone()
    stats = DensifyStats(len(avatar), "cpu")
    hot = torch.zeros(len(avatar), dtype=torch.bool)
    hot[::3] = True
    stats.grad[hot] = 1.0
    stats.count[hot] = 1.0
    face_scale = triangle_frames(model.template[None], model.faces).scale[0]
    g = torch.Generator().manual_seed(0)
    counts = densify_and_prune(avatar, opt, stats, face_scale, grad_threshold=0.5, size_threshold=0.01,
                               min_opacity=0.005, max_size=1.0, generator=g)
    assert counts["cloned"] > 0 and counts["split"] > 0 and counts["pruned"] > 0
    # every triangle still has a Gaussian; parents only from the original set
    assert torch.equal(avatar.covered_triangles(), torch.unique(before_parent))
    # children: per triangle the count grew by 1 for a clone, by 1 for a split (2 children - parent)
    counts_before = torch.bincount(before_parent, minlength=model.n_faces)
    counts_after = torch.bincount(avatar.parent, minlength=model.n_faces)
    assert (counts_after >= 1)[tri].all()
    assert counts_after.sum() == len(avatar) and (counts_after - counts_before).max() >= 1
    # the optimizer holds the new tensors with matching state
    for group in opt.param_groups:
        p = group["params"][0]
        assert p is getattr(avatar, group["name"]) and p.shape[0] == len(avatar)
        assert opt.state[p]["exp_avg"].shape == p.shape


def test_compiled_binding_matches_the_reference():
    """The compiled kernel (drive, evaluation) equals triangle_frames + local_to_world on posed meshes, batched."""
    from gaussian_flametalk.avatar.binding import bind, bind_compiled

    model = make_synthetic_head()
    g = torch.Generator().manual_seed(3)
    verts = model(jaw=torch.tensor([[0.25, 0.0, 0.0], [0.0, 0.0, 0.0]]),
                  expression=torch.randn(2, model.n_expression, generator=g) * 0.5)
    n = 3 * model.n_faces
    parent = torch.randint(0, model.n_faces, (n,), generator=g)
    xyz = torch.randn(n, 3, generator=g) * 0.5
    quats = torch.randn(n, 4, generator=g)
    log_scales = torch.randn(n, 3, generator=g) * 0.3 - 0.5
    ref = local_to_world(triangle_frames(verts, model.faces), parent, xyz, quats, log_scales)
    for threads in (1, 2):
        out = bind_compiled(verts, model.faces, parent, xyz, quats, log_scales, num_threads=threads)
        for name, a, b in zip(("means", "quats", "scales"), ref, out):
            assert a.shape == b.shape, name
            diff = (a - b).abs().amax(dim=-1)
            if name == "quats":  # q and -q are the same rotation: a triangle with w ~ 0 may take either sign
                diff = torch.minimum(diff, (a + b).abs().amax(dim=-1))
            assert diff.max() <= 1e-5 * max(1.0, float(a.abs().max())), name
    # bind: the kernel without gradients, the reference (differentiable) with them
    with torch.no_grad():
        assert torch.equal(bind(verts, model.faces, parent, xyz, quats, log_scales)[0], out[0])
    v = verts.clone().requires_grad_(True)
    means = bind(v, model.faces, parent, xyz, quats, log_scales)[0]
    assert means.grad_fn is not None and torch.allclose(means, ref[0], atol=1e-6)
