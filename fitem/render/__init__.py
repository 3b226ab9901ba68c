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
from fitem.render.interpolate import barycentrics, interpolate
from fitem.render.raster import (
    NvdiffrastRasterizer,
    RasterOutput,
    Rasterizer,
    TorchRasterizer,
    make_rasterizer,
    nvdiffrast_available,
)
from fitem.render.renderer import RenderOutput, render, render_params
from fitem.render.shading import SH_CONSTANTS, sh_basis, shade, vertex_normals

__all__ = [
    "Camera",
    "axis_angle_to_matrix",
    "euler_from_matrix",
    "matrix_to_axis_angle",
    "rotation_matrix",
    "to_camera",
    "to_view",
    "barycentrics",
    "interpolate",
    "NvdiffrastRasterizer",
    "RasterOutput",
    "Rasterizer",
    "TorchRasterizer",
    "make_rasterizer",
    "nvdiffrast_available",
    "RenderOutput",
    "render",
    "render_params",
    "SH_CONSTANTS",
    "sh_basis",
    "shade",
    "vertex_normals",
]
