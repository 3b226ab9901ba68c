"""Rendering: camera and pose, spherical-harmonics shading, rasterizers, ``render``."""
from fitem.render.camera import (
    Camera,
    axis_angle_to_matrix,
    euler_from_matrix,
    matrix_to_axis_angle,
    rotation_matrix,
    to_camera,
    to_view,
)

__all__ = [
    "Camera",
    "axis_angle_to_matrix",
    "euler_from_matrix",
    "matrix_to_axis_angle",
    "rotation_matrix",
    "to_camera",
    "to_view",
]
