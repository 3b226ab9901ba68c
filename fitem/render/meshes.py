"""Synthetic meshes with known geometry, for tests, benchmarks and examples.

All meshes follow the model conventions of :mod:`fitem.models.morphable`:
millimetres, +y up, +z towards the viewer, triangles ``(T, 3)`` int64 wound
counter-clockwise seen from outside (``cross(v1 - v0, v2 - v0)`` points out).
"""
from __future__ import annotations

import math

import torch

from fitem.errors import ConfigError

__all__ = ["icosphere", "grid_plane", "face_like_mesh"]


def icosphere(subdivisions: int = 3, radius: float = 1.0, dtype: torch.dtype = torch.float32) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """A geodesic sphere centred at the origin: ``(vertices (N, 3), triangles (T, 3))``.

    ``N = 10 * 4**s + 2`` and ``T = 20 * 4**s`` for ``s`` subdivisions (s=3: 642 / 1280,
    s=4: 2562 / 5120). Vertices lie exactly on the sphere; normals point outwards.

    Example:
        >>> v, f = icosphere(2, radius=50.0)
        >>> v.shape, f.shape
        (torch.Size([162, 3]), torch.Size([320, 3]))
    """
    if subdivisions < 0 or subdivisions > 8:
        raise ConfigError(f"icosphere: subdivisions must be in [0, 8], got {subdivisions}")
    t = (1.0 + math.sqrt(5.0)) / 2.0
    verts = [
        (-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0),
        (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
        (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1),
    ]
    faces = [
        (0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11),
        (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6), (7, 1, 8),
        (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9),
        (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1),
    ]
    v = torch.tensor(verts, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    f = torch.tensor(faces, dtype=torch.int64)
    for _ in range(subdivisions):
        e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], dim=0)  # (3T, 2), edge k of all faces
        e_sorted = torch.sort(e, dim=1).values
        uniq, inv = torch.unique(e_sorted, dim=0, return_inverse=True)
        mid = v[uniq[:, 0]] + v[uniq[:, 1]]
        mid = mid / mid.norm(dim=1, keepdim=True)
        m = inv.reshape(3, -1) + v.shape[0]  # midpoints of edges 01, 12, 20
        v = torch.cat([v, mid], dim=0)
        a, b, c = f.unbind(1)
        m01, m12, m20 = m.unbind(0)
        f = torch.cat([
            torch.stack([a, m01, m20], 1), torch.stack([b, m12, m01], 1),
            torch.stack([c, m20, m12], 1), torch.stack([m01, m12, m20], 1),
        ], dim=0)
    # orient outwards (the base list above is outward already; make it a guarantee)
    n = torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=1)
    inward = (n * v[f].mean(1)).sum(1) < 0
    f[inward] = f[inward][:, [0, 2, 1]]
    return (v * radius).to(dtype), f


def grid_plane(nx: int, ny: int, width: float, height: float, dtype: torch.dtype = torch.float32) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """A flat ``width × height`` rectangle in the z = 0 plane, centred at the origin, facing +z.

    ``(nx + 1) * (ny + 1)`` vertices, ``2 * nx * ny`` triangles.

    Example:
        >>> v, f = grid_plane(1, 1, 10.0, 10.0)
        >>> f.tolist()
        [[0, 1, 3], [0, 3, 2]]
    """
    if nx < 1 or ny < 1:
        raise ConfigError(f"grid_plane: need at least one cell per side, got {nx}x{ny}")
    xs = torch.linspace(-width / 2, width / 2, nx + 1, dtype=torch.float64)
    ys = torch.linspace(-height / 2, height / 2, ny + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    v = torch.stack([xx, yy, torch.zeros_like(xx)], -1).reshape(-1, 3)
    idx = torch.arange((nx + 1) * (ny + 1)).reshape(ny + 1, nx + 1)
    p00, p10 = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1)
    p01, p11 = idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
    f = torch.cat([torch.stack([p00, p10, p11], 1), torch.stack([p00, p11, p01], 1)], 0)
    order = torch.arange(f.shape[0]).reshape(2, -1).t().reshape(-1)  # interleave the two halves per cell
    return v.to(dtype), f[order]


def face_like_mesh(
    n_vertices: int = 35000,
    half_width: float = 75.0,
    half_height: float = 95.0,
    depth: float = 60.0,
    nose: float = 25.0,
    noise: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A face-sized open surface: an elliptical cap with a nose, about ``n_vertices`` vertices.

    A height field ``z = depth * sqrt(1 - s² - t²) + nose bump`` over the ellipse
    ``(x / half_width)² + (y / half_height)² <= 1`` (mm), regularly triangulated,
    so it has the size, density and front-facing structure of a BFM-style face
    crop (7k / 28k / 35k / 53k vertices are typical model sizes). ``noise``
    (mm) jitters every vertex (seeded) to make the mesh irregular.

    Returns:
        ``(vertices (N, 3), triangles (T, 3))``, ``T ≈ 2N``.

    Example:
        >>> v, f = face_like_mesh(7000)
        >>> 6500 < v.shape[0] < 7500
        True
    """
    if n_vertices < 16:
        raise ConfigError(f"face_like_mesh: n_vertices must be at least 16, got {n_vertices}")
    # points of a k×k grid on [-1, 1]² inside the unit disc ≈ (π/4) k²
    k = max(4, int(round(math.sqrt(4.0 * n_vertices / math.pi))))
    s = torch.linspace(-1.0, 1.0, k, dtype=torch.float64)
    tt, ss = torch.meshgrid(s, s, indexing="ij")  # rows: t (y), columns: s (x)
    inside = ss**2 + tt**2 <= 1.0
    index = torch.full((k, k), -1, dtype=torch.int64)
    index[inside] = torch.arange(int(inside.sum()))
    r2 = (ss**2 + tt**2).clamp(max=1.0)
    z = depth * torch.sqrt(1.0 - r2) + nose * torch.exp(-((ss / 0.12) ** 2 + ((tt + 0.05) / 0.25) ** 2))
    v = torch.stack([half_width * ss, half_height * tt, z - depth], -1)[inside]
    if noise > 0:
        g = torch.Generator().manual_seed(seed)
        v = v + noise * torch.randn(v.shape, generator=g, dtype=torch.float64)
    p00, p10, p01, p11 = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    t1 = torch.stack([p00, p10, p11], -1).reshape(-1, 3)
    t2 = torch.stack([p00, p11, p01], -1).reshape(-1, 3)
    f = torch.cat([t1, t2], 0)
    f = f[(f >= 0).all(1)]
    return v.to(dtype), f
