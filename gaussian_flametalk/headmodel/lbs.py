"""Linear blend skinning with pose correctives (the SMPL/FLAME formulation), as small functional kernels.

    v_shaped = template + shapedirs . coeffs
    joints   = J_regressor . v_shaped   (= J_regressor . template + (J_regressor . shapedirs) . coeffs)
    v_posed  = v_shaped + posedirs . (R_j - I) for j >= 1
    v        = sum_j w_vj * A_j(pose, joints) . v_posed
"""

from __future__ import annotations

import torch

from ..geometry.rotation import axis_angle_to_matrix


def blend_shapes(coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Linear blend shapes. coeffs (B, K), dirs (V, 3, K) -> offsets (B, V, 3)."""
    return torch.einsum("bk,vck->bvc", coeffs, dirs)


def pose_feature(rotmats: torch.Tensor) -> torch.Tensor:
    """Pose-corrective features: (R_j - I) flattened row-major for every joint but the root.

    rotmats (B, J, 3, 3) -> (B, (J-1)*9).
    """
    eye = torch.eye(3, dtype=rotmats.dtype, device=rotmats.device)
    return (rotmats[:, 1:] - eye).flatten(1)


def chain_transforms(rotmats: torch.Tensor, joints: torch.Tensor, parents: list[int]) -> torch.Tensor:
    """Skinning transforms of a kinematic tree.

    Each joint rotates about its rest location; transforms are composed from the root outwards and
    the rest pose is removed, so that a zero pose gives identity transforms.

    Args:
        rotmats: (B, J, 3, 3) local joint rotations.
        joints: (B, J, 3) rest joint locations.
        parents: length J, parents[0] = -1, parents[j] < j.
    Returns:
        (B, J, 4, 4) transforms taking rest-pose points to posed points.
    """
    batch, n_joints = joints.shape[:2]
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.zeros(batch, n_joints, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rotmats
    local[..., :3, 3] = rel
    local[..., 3, 3] = 1.0
    world = [local[:, 0]]
    for j in range(1, n_joints):
        world.append(world[parents[j]] @ local[:, j])
    world_t = torch.stack(world, dim=1)  # (B, J, 4, 4): joint frames in the posed world
    # Remove the rest location: A_j x = R_j^w (x - J_j) + t_j^w
    offset = world_t[..., :3, :3] @ joints[..., None]
    out = world_t.clone()
    out[..., :3, 3] = world_t[..., :3, 3] - offset[..., 0]
    return out


def skin(vertices: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Blend per-joint transforms. vertices (B, V, 3), weights (V, J), transforms (B, J, 4, 4) -> (B, V, 3).

    Blends the deviations from identity, ``v + sum_j w_j (A_j - I) v``, which equals ``sum_j w_j A_j v``
    for weights summing to one and keeps a zero pose exact even when stored weights sum to 1 +- eps.
    """
    eye = torch.eye(3, 4, dtype=transforms.dtype, device=transforms.device)
    blended = torch.einsum("vj,bjrc->bvrc", weights, transforms[..., :3, :] - eye)  # (B, V, 3, 4)
    return vertices + (blended[..., :3] @ vertices[..., None])[..., 0] + blended[..., 3]


def lbs(
    coeffs: torch.Tensor,
    pose_axis_angle: torch.Tensor,
    template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor,
    joint_template: torch.Tensor,
    joint_dirs: torch.Tensor,
    parents: list[int],
    weights: torch.Tensor,
) -> torch.Tensor:
    """The full model, on all vertices or on any subset of them (pass the subset's rows).

    Joints are linear in the coefficients, so they come from the regressed template joints and the
    regressed blend shapes (``joint_template = J_regressor @ template``, ``joint_dirs = J_regressor . shapedirs``)
    without evaluating every vertex.

    Args:
        coeffs: (B, K) identity and expression coefficients, concatenated to match shapedirs.
        pose_axis_angle: (B, J, 3) per-joint axis-angle rotations.
        template: (V, 3); shapedirs: (V, 3, K); posedirs: (V, 3, (J-1)*9); weights: (V, J) — all rows of the
        same V vertices; joint_template: (J, 3); joint_dirs: (J, 3, K); parents: length J.
    Returns:
        posed vertices (B, V, 3).
    """
    v_shaped = template + blend_shapes(coeffs, shapedirs)
    joints = joint_template + blend_shapes(coeffs, joint_dirs)
    rotmats = axis_angle_to_matrix(pose_axis_angle)
    v_posed = v_shaped + blend_shapes(pose_feature(rotmats), posedirs)
    return skin(v_posed, weights, chain_transforms(rotmats, joints, parents))
