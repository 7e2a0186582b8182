"""Geometry shared by every stage: rotation parameterisations and the pinhole camera."""

from .camera import Camera
from .rotation import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_matrix,
)

__all__ = [
    "Camera",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "quaternion_to_matrix",
]
