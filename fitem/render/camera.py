"""Pinhole camera and rigid pose.

Conventions (the contract every other module follows):

- **Model space**: mm, +y up, +z out of the face, +x to the viewer's right.
- **Pose**: Euler angles ``(pitch, yaw, roll)`` in radians, applied to the
  model as ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (pitch about x first). Zero
  rotation is a frontal face. ``rotation_matrix`` / ``euler_from_matrix`` /
  ``axis_angle_*`` convert.
- **View space** ``= R @ X``: the rotated face, still +y up, +z towards the
  camera. Normals for lighting live here, so SH light is fixed to the viewer.
- **Camera space** (OpenCV): ``X_cam = FLIP @ R @ X + t`` with
  ``FLIP = diag(1, -1, -1)``: +x right, +y down, +z forward (depth). A face at
  the default translation ``(0, 0, 1000)`` mm is 1 m in front of the camera.
- **Pixels**: continuous coordinates where the image spans ``[0, W] × [0, H]``,
  pixel ``(row i, col j)`` has its centre at ``(u, v) = (j + 0.5, i + 0.5)``.
  ``u = f * x / z + cx``, ``v = f * y / z + cy``; the default principal point is
  the image centre ``(W / 2, H / 2)``.
- **Clip space** (nvdiffrast/OpenGL): ``x_ndc = 2 u / W - 1``,
  ``y_ndc = 2 v / H - 1`` (so nvdiffrast's output row 0 is image row 0),
  ``w = z``, and depth mapped from ``[near, far]`` to ``[-1, 1]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fitem.errors import ConfigError, ShapeError

__all__ = [
    "Camera",
    "FLIP",
    "DEFAULT_FOCAL_224",
    "rotation_matrix",
    "euler_from_matrix",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "to_view",
    "to_camera",
]

#: Focal length in pixels at a 224-pixel image (Deep3DFaceRecon / FOCUS convention).
DEFAULT_FOCAL_224 = 1015.0

FLIP = (1.0, -1.0, -1.0)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: focal length and principal point in pixels, image size.

    Example:
        >>> cam = Camera.default(224)       # f = 1015 px, centre (112, 112)
        >>> uvz = cam.project(vertices_cam) # (..., N, 3): u, v in pixels, z in mm
    """

    focal: float
    cx: float
    cy: float
    width: int
    height: int
    near: float = 10.0
    far: float = 10000.0

    def __post_init__(self) -> None:
        if not (self.width > 0 and self.height > 0):
            raise ConfigError(f"camera image size must be positive, got {self.width}x{self.height}")
        if not (math.isfinite(self.focal) and self.focal > 0):
            raise ConfigError(f"camera focal length must be a positive number of pixels, got {self.focal}")
        if not (0 < self.near < self.far):
            raise ConfigError(f"camera clip planes need 0 < near < far, got near={self.near}, far={self.far}")

    @staticmethod
    def default(size: int | tuple[int, int] = 224, focal: float | None = None) -> "Camera":
        """The field's default camera: ``f = 1015 * size / 224`` px, principal point at the centre.

        ``size`` is an int (square) or ``(height, width)``.
        """
        h, w = (size, size) if isinstance(size, int) else size
        f = DEFAULT_FOCAL_224 * min(h, w) / 224.0 if focal is None else float(focal)
        return Camera(focal=f, cx=w / 2.0, cy=h / 2.0, width=int(w), height=int(h))

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    def scaled(self, factor: float) -> "Camera":
        """The same camera for an image resized by ``factor``."""
        return Camera(self.focal * factor, self.cx * factor, self.cy * factor,
                      int(round(self.width * factor)), int(round(self.height * factor)), self.near, self.far)

    def intrinsics(self) -> "torch.Tensor":
        """The 3×3 matrix K (float64) in this module's pixel convention."""
        return torch.tensor([[self.focal, 0.0, self.cx], [0.0, self.focal, self.cy], [0.0, 0.0, 1.0]],
                            dtype=torch.float64)

    def project(self, points_cam: torch.Tensor) -> torch.Tensor:
        """Camera-space points ``(..., 3)`` → ``(..., 3)`` of ``(u, v, z)``: pixels and depth in mm."""
        if points_cam.shape[-1] != 3:
            raise ShapeError(f"points_cam: expected shape (..., 3), got {tuple(points_cam.shape)}")
        z = points_cam[..., 2]
        u = self.focal * points_cam[..., 0] / z + self.cx
        v = self.focal * points_cam[..., 1] / z + self.cy
        return torch.stack([u, v, z], dim=-1)

    def to_clip(self, points_cam: torch.Tensor) -> torch.Tensor:
        """Camera-space points ``(..., 3)`` → clip coordinates ``(..., 4)`` for nvdiffrast."""
        x, y, z = points_cam.unbind(-1)
        xc = (2.0 * self.focal / self.width) * x + (2.0 * self.cx / self.width - 1.0) * z
        yc = (2.0 * self.focal / self.height) * y + (2.0 * self.cy / self.height - 1.0) * z
        n, f = self.near, self.far
        zc = (f + n) / (f - n) * z - 2.0 * f * n / (f - n)
        return torch.stack([xc, yc, zc, z], dim=-1)


def _check_angles(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] != 3:
        raise ShapeError(f"{name}: expected shape (..., 3), got {tuple(t.shape)}")


def rotation_matrix(euler: torch.Tensor) -> torch.Tensor:
    """Euler angles ``(..., 3)`` = (pitch, yaw, roll) rad → ``(..., 3, 3)`` ``Rz(roll) Ry(yaw) Rx(pitch)``."""
    _check_angles("euler", euler)
    p, y, r = euler.unbind(-1)
    cp, sp, cy, sy, cr, sr = torch.cos(p), torch.sin(p), torch.cos(y), torch.sin(y), torch.cos(r), torch.sin(r)
    one, zero = torch.ones_like(p), torch.zeros_like(p)
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(*p.shape, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*p.shape, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(*p.shape, 3, 3)
    return rz @ ry @ rx


def euler_from_matrix(rot: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rotation_matrix` (yaw in [-pi/2, pi/2])."""
    if rot.shape[-2:] != (3, 3):
        raise ShapeError(f"rot: expected shape (..., 3, 3), got {tuple(rot.shape)}")
    yaw = torch.asin(torch.clamp(-rot[..., 2, 0], -1.0, 1.0))
    pitch = torch.atan2(rot[..., 2, 1], rot[..., 2, 2])
    roll = torch.atan2(rot[..., 1, 0], rot[..., 0, 0])
    return torch.stack([pitch, yaw, roll], dim=-1)


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Axis-angle ``(..., 3)`` (direction = axis, norm = angle in rad) → ``(..., 3, 3)`` (Rodrigues)."""
    _check_angles("axis_angle", aa)
    theta = aa.norm(dim=-1, keepdim=True)
    small = theta < 1e-8
    k = aa / torch.where(small, torch.ones_like(theta), theta)
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    K = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(*kx.shape, 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(*kx.shape, 3, 3)
    s = torch.sin(theta)[..., None]
    c = torch.cos(theta)[..., None]
    return eye + s * K + (1 - c) * (K @ K)


def matrix_to_axis_angle(rot: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` → axis-angle ``(..., 3)`` (angles in [0, pi))."""
    if rot.shape[-2:] != (3, 3):
        raise ShapeError(f"rot: expected shape (..., 3, 3), got {tuple(rot.shape)}")
    cos = ((rot[..., 0, 0] + rot[..., 1, 1] + rot[..., 2, 2]) - 1) / 2
    theta = torch.acos(torch.clamp(cos, -1.0, 1.0))
    w = torch.stack([rot[..., 2, 1] - rot[..., 1, 2], rot[..., 0, 2] - rot[..., 2, 0],
                     rot[..., 1, 0] - rot[..., 0, 1]], dim=-1)
    s = torch.sin(theta)[..., None]
    scale = torch.where(s.abs() < 1e-8, torch.full_like(s, 0.5), theta[..., None] / (2 * s))
    return w * scale


def to_view(vertices: torch.Tensor, euler: torch.Tensor) -> torch.Tensor:
    """Model-space ``(..., N, 3)`` → view space ``R @ X`` (rotation only, +y up, +z to camera)."""
    rot = rotation_matrix(euler)
    return vertices @ rot.transpose(-1, -2)


def to_camera(vertices: torch.Tensor, euler: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Model-space ``(..., N, 3)`` → OpenCV camera space ``FLIP @ R @ X + t`` (mm)."""
    flip = torch.tensor(FLIP, dtype=vertices.dtype, device=vertices.device)
    return to_view(vertices, euler) * flip + translation.unsqueeze(-2)
