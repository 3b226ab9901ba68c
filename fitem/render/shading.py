"""Per-vertex normals and Lambertian spherical-harmonics (SH) shading.

Conventions:

- Triangles are wound counter-clockwise seen from outside (see
  :mod:`fitem.models.morphable`), so the right-hand-rule normal
  ``cross(v1 - v0, v2 - v0)`` points out of the surface.
- Normals used for lighting are in **view space** (``R @ n``, +y up, +z towards
  the camera; see :mod:`fitem.render.camera`), so the light is fixed to the
  viewer.
- Light: 9 real SH coefficients (bands 0..2) per RGB channel, ``(..., 9, 3)``.
  The basis functions are ordered ``[1, y, z, x, xy, yz, 3z²-1, xz, x²-y²]``
  and :data:`SH_CONSTANTS` already includes both the SH normalisation and the
  Lambertian (clamped-cosine) band factors ``A0 = π, A1 = 2π/3, A2 = π/4``
  (Ramamoorthi & Hanrahan 2001), so the irradiance is simply
  ``sh_basis(n) @ light``. With ``light[0, :] = fitem.params.AMBIENT_LIGHT``
  and the other bands zero, the shading is 0.8 everywhere.
"""
from __future__ import annotations

import math
import warnings

import torch

from fitem.errors import ShapeError, check_shape
from fitem.render._checks import check_triangles, check_vertices, derived

__all__ = [
    "SH_NORMALISATION",
    "SH_LAMBERT_BANDS",
    "SH_CONSTANTS",
    "NORMAL_EPS",
    "face_normals",
    "vertex_normals",
    "sh_basis",
    "shade",
]

#: Real SH normalisation constants for ``[1, y, z, x, xy, yz, 3z²-1, xz, x²-y²]``
#: (0.282095, 0.488603 ×3, 1.092548, 1.092548, 0.315392, 1.092548, 0.546274).
SH_NORMALISATION: tuple[float, ...] = (
    0.5 * math.sqrt(1.0 / math.pi),
    math.sqrt(3.0 / (4.0 * math.pi)),
    math.sqrt(3.0 / (4.0 * math.pi)),
    math.sqrt(3.0 / (4.0 * math.pi)),
    0.5 * math.sqrt(15.0 / math.pi),
    0.5 * math.sqrt(15.0 / math.pi),
    0.25 * math.sqrt(5.0 / math.pi),
    0.5 * math.sqrt(15.0 / math.pi),
    0.25 * math.sqrt(15.0 / math.pi),
)

#: Lambertian band factors per basis function: A0 = π, A1 = 2π/3, A2 = π/4.
SH_LAMBERT_BANDS: tuple[float, ...] = (math.pi,) + (2.0 * math.pi / 3.0,) * 3 + (math.pi / 4.0,) * 5

#: ``SH_NORMALISATION[i] * SH_LAMBERT_BANDS[i]``: the constants :func:`sh_basis` multiplies by.
SH_CONSTANTS: tuple[float, ...] = tuple(c * a for c, a in zip(SH_NORMALISATION, SH_LAMBERT_BANDS))

#: Normals are ``n / max(|n|, NORMAL_EPS)`` (``torch.nn.functional.normalize`` semantics).
NORMAL_EPS = 1e-12


def face_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Unnormalised face normals ``cross(v1 - v0, v2 - v0)`` (length = twice the triangle area).

    Args:
        vertices: ``(B, N, 3)`` or ``(N, 3)`` float positions (any unit, mm in fitem).
        triangles: ``(T, 3)`` int64 vertex indices, counter-clockwise from outside.

    Returns:
        ``(B, T, 3)`` or ``(T, 3)`` (matching ``vertices``), pointing outwards.

    Example:
        >>> v = torch.tensor([[0., 0, 0], [1, 0, 0], [0, 1, 0]])
        >>> face_normals(v, torch.tensor([[0, 1, 2]]))
        tensor([[0., 0., 1.]])
    """
    check_vertices("vertices", vertices)
    check_triangles(triangles, vertices.shape[-2])
    batched = vertices.dim() == 3
    fx, fy, fz = _face_normals_soa(vertices if batched else vertices.unsqueeze(0), triangles)
    out = torch.stack([fx, fy, fz], dim=-1)
    return out if batched else out[0]


def _face_normals_soa(vertices: torch.Tensor, triangles: torch.Tensor):
    """Components ``(B, T)`` each of ``cross(v1 - v0, v2 - v0)`` for ``vertices (B, N, 3)``."""
    b, n = vertices.shape[:2]
    t = triangles.shape[0]
    soa = torch.stack(vertices.unbind(-1)).reshape(3, b * n)  # (3, B*N), contiguous
    idx = derived(triangles, ("vertex_index", b, n, str(vertices.device)),
                  lambda: (triangles.t().unsqueeze(1) + (torch.arange(b, device=triangles.device) * n).view(1, b, 1))
                  .reshape(-1).to(vertices.device))
    g = soa.index_select(1, idx).view(3, 3, b, t)  # [coord, vertex, batch, triangle]
    x, y, z = g[0], g[1], g[2]
    ax, ay, az = x[1] - x[0], y[1] - y[0], z[1] - z[0]
    bx, by, bz = x[2] - x[0], y[2] - y[0], z[2] - z[0]
    return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


def _incidence(triangles: torch.Tensor, n_vertices: int, dtype: torch.dtype, device: torch.device):
    """Sparse CSR vertex-face incidence ``(N, T)`` (1 where vertex i is a corner of face t) and its
    transpose ``(T, N)``, cached per triangle tensor."""

    def build():
        t = triangles.shape[0]
        rows = triangles.t().reshape(-1).to(device)
        cols = torch.arange(t, device=device).repeat(3)
        vals = torch.ones(3 * t, dtype=dtype, device=device)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the mm used here is stable
            warnings.simplefilter("ignore", UserWarning)
            inc = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n_vertices, t)).coalesce()
            inc_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), vals, (t, n_vertices)).coalesce()
            return inc.to_sparse_csr(), inc_t.to_sparse_csr()

    return derived(triangles, ("incidence", n_vertices, dtype, str(device)), build)


class _SparseProduct(torch.autograd.Function):
    """``S @ x`` for a constant sparse ``S`` whose transpose is given (autograd's own backward
    would transpose ``S`` on every call)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor, s_t: torch.Tensor) -> torch.Tensor:
        ctx.s_t = s_t
        return s @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.s_t @ grad, None, None


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals.

    ``n_i = m_i / max(|m_i|, NORMAL_EPS)`` with ``m_i`` the sum over the faces
    incident to vertex ``i`` of the *unnormalised* ``cross(v1 - v0, v2 - v0)``
    (so each face counts with twice its area). Right-hand rule: outward for
    counter-clockwise-from-outside winding. A vertex in no triangle gets ``0``.
    The sum is a sparse (vertex × face incidence) matrix product, cached per
    triangle tensor.

    Args:
        vertices: ``(B, N, 3)`` or ``(N, 3)`` float positions.
        triangles: ``(T, 3)`` int64.

    Returns:
        Unit normals with the shape of ``vertices``; differentiable.

    Example:
        >>> v = torch.tensor([[0., 0, 0], [1, 0, 0], [0, 1, 0]])
        >>> vertex_normals(v, torch.tensor([[0, 1, 2]]))[0]
        tensor([0., 0., 1.])
    """
    check_vertices("vertices", vertices)
    check_triangles(triangles, vertices.shape[-2])
    batched = vertices.dim() == 3
    v = vertices if batched else vertices.unsqueeze(0)
    n = v.shape[1]
    inc, inc_t = _incidence(triangles, n, v.dtype, v.device)
    # (N, B) per component: sum of the incident faces' cross products
    comps = _face_normals_soa(v, triangles)
    if v.shape[0] == 1:
        mx, my, mz = (_SparseProduct.apply(c[0], inc, inc_t).unsqueeze(1) for c in comps)
    else:
        mx, my, mz = (_SparseProduct.apply(c.t().contiguous(), inc, inc_t) for c in comps)
    # |m| clamped at NORMAL_EPS (clamping the square keeps the gradient finite at m = 0)
    norm = torch.sqrt((mx * mx + my * my + mz * mz).clamp_min(NORMAL_EPS * NORMAL_EPS))
    out = torch.stack([mx / norm, my / norm, mz / norm], dim=-1).transpose(0, 1)  # (B, N, 3)
    return out if batched else out[0]


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """Lambertian-convolved real SH basis, bands 0..2, of unit normals.

    ``(..., 3)`` → ``(..., 9)``: ``SH_CONSTANTS * [1, y, z, x, xy, yz, 3z²-1, xz, x²-y²]``.
    The irradiance of a normal under SH light ``L (9, 3)`` is ``sh_basis(n) @ L``.

    Example:
        >>> from fitem.params import AMBIENT_LIGHT
        >>> light = torch.zeros(9, 3); light[0] = AMBIENT_LIGHT
        >>> sh_basis(torch.tensor([[0., 0., 1.]])) @ light
        tensor([[0.8000, 0.8000, 0.8000]])
    """
    if normals.shape[-1:] != (3,):
        raise ShapeError(f"normals: expected shape (..., 3), got {tuple(normals.shape)}")
    if not normals.dtype.is_floating_point:
        raise ShapeError(f"normals: expected a floating-point tensor, got {normals.dtype}")
    x, y, z = normals.unbind(-1)
    c = SH_CONSTANTS
    return torch.stack(
        [
            torch.full_like(x, c[0]),
            c[1] * y,
            c[2] * z,
            c[3] * x,
            c[4] * (x * y),
            c[5] * (y * z),
            c[6] * (3.0 * z * z - 1.0),
            c[7] * (x * z),
            c[8] * (x * x - y * y),
        ],
        dim=-1,
    )


def _sh_basis_cf(normals: torch.Tensor) -> torch.Tensor:
    """:func:`sh_basis` channels-first: normals ``(B, N, 3)`` → ``(B, 9, N)`` (no interleaving copy)."""
    x, y, z = normals.unbind(-1)
    c = SH_CONSTANTS
    return torch.stack(
        [torch.full_like(x, c[0]), c[1] * y, c[2] * z, c[3] * x, c[4] * (x * y), c[5] * (y * z),
         c[6] * (3.0 * z * z - 1.0), c[7] * (x * z), c[8] * (x * x - y * y)],
        dim=1,
    )


def _shade_cf(albedo_cf: torch.Tensor, normals_view: torch.Tensor, light: torch.Tensor,
              gain: torch.Tensor | None, offset: torch.Tensor | None) -> torch.Tensor:
    """:func:`shade` channels-first: ``albedo_cf (B, 3, N)`` → colours ``(B, 3, N)`` (inputs already checked)."""
    colour = albedo_cf * torch.bmm(light.transpose(1, 2), _sh_basis_cf(normals_view))
    if gain is not None:
        colour = colour * gain.unsqueeze(2)
    if offset is not None:
        colour = colour + offset.unsqueeze(2)
    return colour


def shade(
    albedo: torch.Tensor,
    normals_view: torch.Tensor,
    light: torch.Tensor,
    gain: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lambertian SH shading per vertex (or per pixel): ``albedo * (sh_basis(n) @ light)``.

    With a colour transform: ``gain * albedo * (sh_basis(n) @ light) + offset``
    (per channel).

    Args:
        albedo: ``(B, N, 3)`` RGB reflectance, [0, 1].
        normals_view: ``(B, N, 3)`` unit normals in view space.
        light: ``(B, 9, 3)`` SH coefficients (bands 0..2 × RGB).
        gain: optional ``(B, 3)`` per-channel gain.
        offset: optional ``(B, 3)`` per-channel offset.

    Returns:
        ``(B, N, 3)`` colours (not clipped); differentiable in every input.

    Example:
        >>> from fitem.params import AMBIENT_LIGHT
        >>> light = torch.zeros(1, 9, 3); light[:, 0] = AMBIENT_LIGHT
        >>> n = torch.tensor([[[0., 0., 1.]]]); a = torch.full((1, 1, 3), 0.5)
        >>> shade(a, n, light)
        tensor([[[0.4000, 0.4000, 0.4000]]])
    """
    check_shape("albedo", albedo, (None, None, 3))
    b, n = albedo.shape[:2]
    check_shape("normals_view", normals_view, (b, n, 3))
    check_shape("light", light, (b, 9, 3))
    irradiance = torch.bmm(sh_basis(normals_view), light)  # (B, N, 3)
    colour = albedo * irradiance
    if gain is not None:
        check_shape("gain", gain, (b, 3))
        colour = colour * gain.unsqueeze(1)
    if offset is not None:
        check_shape("offset", offset, (b, 3))
        colour = colour + offset.unsqueeze(1)
    return colour

