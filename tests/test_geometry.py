import math

import torch

from gaussian_flametalk.geometry import Camera, axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_quaternion, quaternion_to_matrix


def test_rotation_round_trips():
    g = torch.Generator().manual_seed(0)
    aa = torch.randn(64, 3, generator=g, dtype=torch.float64)
    aa = aa / aa.norm(dim=-1, keepdim=True) * torch.rand(64, 1, generator=g, dtype=torch.float64) * 3.0
    r = axis_angle_to_matrix(aa)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(64, dtype=torch.float64))
    assert torch.allclose(matrix_to_axis_angle(r), aa, atol=1e-9)
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(r)), r, atol=1e-12)


def test_axis_angle_known_rotation_and_smooth_gradient_at_zero():
    r = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    assert torch.allclose(r @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)
    aa = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa,))
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True),))


def test_camera_look_at_projects_target_to_centre_and_up_to_top():
    cam = Camera.look_at((0, 0, 1.0), (0, 0, 0), focal=500, width=256, height=200)
    px = cam.project(torch.tensor([[0.0, 0, 0], [0, 0.1, 0], [0.1, 0, 0]]))
    assert torch.allclose(px[0], torch.tensor([128.0, 100.0]))
    assert px[1, 1] < 100  # world up is image up
    assert torch.isclose(px[2, 0], torch.tensor(128.0 + 50.0))  # 0.1 m at 1 m with f=500 -> 50 px, to the right
    assert torch.allclose(cam.world_to_camera(torch.tensor([0.0, 0, 0])), torch.tensor([0.0, 0, 1.0]))


def test_a_resized_camera_sees_the_same_points_at_the_scaled_pixels():
    cam = Camera.look_at((0.1, 0, 1.0), (0, 0, 0), focal=500, width=256, height=200)
    small = cam.resized(64, 100)
    pts = torch.tensor([[0.0, 0, 0], [0.05, -0.1, 0.2], [-0.1, 0.1, 0]])
    # pixel centres at +0.5: the image edges scale, so pixel coordinates scale by the same factors
    assert torch.allclose(small.project(pts), cam.project(pts) * torch.tensor([64 / 256, 100 / 200]), atol=1e-4)
    assert (small.width, small.height, small.near, small.far) == (64, 100, cam.near, cam.far)
    assert torch.equal(small.viewmat, cam.viewmat) and torch.equal(cam.K[2], small.K[2])


def test_matrix_to_quaternion_has_finite_gradients_everywhere():
    q = torch.nn.functional.normalize(torch.randn(500, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    r = quaternion_to_matrix(q)
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(r)), r, atol=1e-5)
    # identity and half turns about each axis: branches whose square roots vanish must not poison the gradient
    special = torch.stack([torch.eye(3), torch.diag(torch.tensor([1.0, -1, -1])), torch.diag(torch.tensor([-1.0, 1, -1])),
                           torch.diag(torch.tensor([-1.0, -1, 1]))]).requires_grad_()
    matrix_to_quaternion(special).sum().backward()
    assert torch.isfinite(special.grad).all()
