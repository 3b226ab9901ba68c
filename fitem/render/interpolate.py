"""Perspective-correct barycentrics at pixel centres, and attribute interpolation.

Both functions are differentiable (autograd) for a *fixed* rasterization
(``tri_id``): :func:`barycentrics` w.r.t. the screen coordinates and depths of
the vertices, :func:`interpolate` w.r.t. the attributes and the barycentrics.
Visibility (which triangle covers which pixel) is a step function and carries
no gradient.

Screen coordinates follow :mod:`fitem.render.camera`: ``screen[..., 0:2]`` is
``(u, v)`` in pixels with pixel ``(i, j)``'s centre at ``(j + 0.5, i + 0.5)``,
``screen[..., 2]`` the camera-space depth ``z`` in mm (> 0).

Perspective-correct barycentrics: with the screen-space (2-D) barycentrics
``s_k`` of the pixel centre, ``λ_k = (s_k / z_k) / Σ_j (s_j / z_j)``. They are
the weights of the surface point seen through the pixel centre, so
``Σ λ_k X_k`` is that 3-D point and ``Σ λ_k z_k`` its depth.
"""
from __future__ import annotations

import torch

from fitem.errors import ShapeError, check_shape
from fitem.render._checks import check_tensor, check_triangles, derived

__all__ = ["barycentrics", "interpolate", "covered_pixels"]


def covered_pixels(tri_id: torch.Tensor) -> torch.Tensor:
    """Flat indices ``b * H * W + i * W + j`` of the pixels with ``tri_id >= 0`` (int64, ascending)."""
    return torch.nonzero(tri_id.reshape(-1) >= 0).squeeze(1)


def _pixel_centres(pix: torch.Tensor, height: int, width: int, dtype: torch.dtype, batch: int | None = None):
    """Batch index (int64) and pixel-centre coordinates ``(u, v)`` of flat pixel indices ``b*H*W + i*W + j``.

    With ``batch == 1`` the batch index is ``None`` (all zero).
    """
    hw = height * width
    if batch is not None and batch * hw < 2**23:
        # float32 is exact here: p + 0.5 is representable and floor((p + 0.5) / n) cannot round across
        # an integer (its distance to one, 0.5 / n, exceeds the rounding error p / n * 2**-24)
        pf = pix.to(torch.float32)
        if batch > 1:
            bf = torch.add(pf, 0.5).div_(hw).floor_()
            pf.sub_(bf * hw)
            bi = bf.to(torch.int64)
        else:
            bi = None
        row = torch.add(pf, 0.5).div_(width).floor_()
        col = pf.sub_(row * width)
        return bi, col.add_(0.5).to(dtype), row.add_(0.5).to(dtype)
    p = pix
    bi = torch.div(p, hw, rounding_mode="floor")
    rem = p - bi * hw
    row = torch.div(rem, width, rounding_mode="floor")
    col = rem - row * width
    return (bi if batch != 1 else None), col.to(dtype) + 0.5, row.to(dtype) + 0.5


def _bary_core(c: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> tuple[list, list]:
    """Perspective-correct barycentrics from vertex coordinates ``c (3 coords, 3 vertices, P)``.

    Returns ``([λ0, λ1, λ2], [z0, z1, z2])``, each ``(P,)``. ``λ_k ∝ e_k / z_k`` with
    ``e_k = cross(v_{k+2} - v_{k+1}, p - v_{k+1})`` (the 2-D edge function opposite
    vertex k, proportional to the screen-space barycentric ``s_k``).
    """
    x, y, z = c[0], c[1], c[2]
    if torch.is_grad_enabled() and (c.requires_grad or px.requires_grad or py.requires_grad):
        q = []
        for k in range(3):
            a, b = (k + 1) % 3, (k + 2) % 3
            e = (x[b] - x[a]) * (py - y[a]) - (y[b] - y[a]) * (px - x[a])
            q.append(e / z[k])
        den = q[0] + q[1] + q[2]
        den = den + (den == 0).to(den.dtype)  # degenerate (never for rasterized triangles): avoid 0/0
        return [q[0] / den, q[1] / den, q[2] / den], [z[0], z[1], z[2]]
    # the same arithmetic without autograd, updating temporaries in place (fewer large allocations)
    q = []
    tmp = None
    for k in range(3):
        a, b = (k + 1) % 3, (k + 2) % 3
        e = (x[b] - x[a]).mul_(py - y[a])
        tmp = torch.sub(y[b], y[a], out=tmp).mul_(px - x[a])
        q.append(e.sub_(tmp).div_(z[k]))
    den = torch.add(q[0], q[1], out=tmp).add_(q[2])
    den += den == 0
    return [q[0].div_(den), q[1].div_(den), q[2].div_(den)], [z[0], z[1], z[2]]


def _vertex_rows(triangles: torch.Tensor, tri_flat: torch.Tensor, pix: torch.Tensor, bi: torch.Tensor | None,
                 n_vertices: int) -> torch.Tensor:
    """``(3, P)`` rows of ``(B * N)``-flattened vertex arrays: vertex k of the triangle at each pixel."""
    tri_t = derived(triangles, ("transposed", str(triangles.device)), lambda: triangles.t().contiguous())
    tp = tri_flat.index_select(0, pix)
    rows = torch.empty(3, pix.shape[0], dtype=torch.int64, device=pix.device)
    for k in range(3):  # three 1-D gathers: much faster than gathering (P, 3) rows and transposing
        torch.index_select(tri_t[k], 0, tp, out=rows[k])
    if bi is not None:
        rows += bi * n_vertices
    return rows


def _soa(x: torch.Tensor) -> torch.Tensor:
    """``(B, N, C)`` → contiguous ``(C, B * N)`` (differentiable; ``stack`` of the channels is ~3x faster
    than a transposing ``contiguous()`` on the CPU)."""
    b, n, c = x.shape
    return torch.stack(x.unbind(-1)).reshape(c, b * n)


def _gather_soa(soa: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``soa (C, B*N)``, ``rows (3, P)`` → ``(C, 3, P)``."""
    return soa.index_select(1, rows.reshape(-1)).view(soa.shape[0], 3, -1)


def _gather_coords(screen: torch.Tensor, triangles: torch.Tensor, tri_flat: torch.Tensor, pix: torch.Tensor,
                   bi: torch.Tensor | None) -> torch.Tensor:
    """``(3 coords, 3 vertices, P)`` screen coordinates of the triangles at pixels ``pix`` (differentiable)."""
    return _gather_soa(_soa(screen), _vertex_rows(triangles, tri_flat, pix, bi, screen.shape[1]))


def _weighted(g: torch.Tensor, lam) -> torch.Tensor:
    """``Σ_k λ_k g[:, k]`` for ``g (C, 3, P)`` and ``λ`` three ``(P,)`` tensors → ``(P, C)``."""
    # in-place accumulation into the fresh product is autograd-safe (mul saves its inputs, not its output)
    return torch.stack([(g[c, 0] * lam[0]).addcmul_(g[c, 1], lam[1]).addcmul_(g[c, 2], lam[2])
                        for c in range(g.shape[0])], 1)


def barycentrics(screen: torch.Tensor, triangles: torch.Tensor, tri_id: torch.Tensor) -> torch.Tensor:
    """Perspective-correct barycentrics at the pixel centres, recomputed for a given ``tri_id``.

    Args:
        screen: ``(B, N, 3)`` float: ``(u, v)`` pixels and camera depth ``z`` in mm.
        triangles: ``(T, 3)`` int64.
        tri_id: ``(B, H, W)`` int64 triangle index per pixel, ``-1`` where empty.

    Returns:
        ``(B, H, W, 3)`` weights of the triangle's vertices in the column order of
        ``triangles`` (they sum to 1), zeros where ``tri_id < 0``. Differentiable
        w.r.t. ``screen`` (autograd).

    Example:
        >>> raster = rasterizer.rasterize(screen)                      # doctest: +SKIP
        >>> bary = barycentrics(screen, triangles, raster.tri_id)      # doctest: +SKIP
    """
    check_tensor("screen", screen)
    if screen.dim() != 3 or screen.shape[-1] != 3:
        raise ShapeError(f"screen: expected shape (B, N, 3), got {tuple(screen.shape)}")
    check_triangles(triangles, screen.shape[1])
    _check_tri_id(tri_id, screen.shape[0])
    b, h, w = tri_id.shape
    pix = covered_pixels(tri_id)
    bi, px, py = _pixel_centres(pix, h, w, screen.dtype, b)
    lam, _ = _bary_core(_gather_coords(screen, triangles, tri_id.reshape(-1), pix, bi), px, py)
    out = torch.zeros(b * h * w, 3, dtype=screen.dtype, device=screen.device)
    return out.index_copy(0, pix, torch.stack(lam, 1)).view(b, h, w, 3)


def interpolate(
    attr: torch.Tensor, triangles: torch.Tensor, tri_id: torch.Tensor, bary: torch.Tensor
) -> torch.Tensor:
    """Interpolate per-vertex attributes at the pixels: ``Σ_k bary_k * attr[triangles[tri_id, k]]``.

    Args:
        attr: ``(B, N, C)`` per-vertex attributes (colours, normals, ...).
        triangles: ``(T, 3)`` int64.
        tri_id: ``(B, H, W)`` int64, ``-1`` where empty.
        bary: ``(B, H, W, 3)`` weights (e.g. :attr:`RasterOutput.bary` or :func:`barycentrics`).

    Returns:
        ``(B, H, W, C)``, zeros where ``tri_id < 0`` (whatever ``bary`` holds
        there). Differentiable w.r.t. ``attr`` and ``bary``.

    Example:
        >>> colours = interpolate(vertex_colours, triangles, raster.tri_id, raster.bary)  # doctest: +SKIP
    """
    check_tensor("attr", attr)
    if attr.dim() != 3:
        raise ShapeError(f"attr: expected shape (B, N, C), got {tuple(attr.shape)}")
    b, n, c = attr.shape
    check_triangles(triangles, n)
    _check_tri_id(tri_id, b)
    h, w = tri_id.shape[1:]
    check_tensor("bary", bary)
    check_shape("bary", bary, (b, h, w, 3))
    pix = covered_pixels(tri_id)
    bi, _, _ = _pixel_centres(pix, h, w, attr.dtype, b)
    rows = _vertex_rows(triangles, tri_id.reshape(-1), pix, bi, n)
    lam = bary.reshape(-1, 3).index_select(0, pix).to(attr.dtype)
    vals = _weighted(_gather_soa(_soa(attr), rows), lam.unbind(1))
    out = torch.zeros(b * h * w, c, dtype=attr.dtype, device=attr.device)
    return out.index_copy(0, pix, vals).view(b, h, w, c)


def _check_tri_id(tri_id: torch.Tensor, batch: int) -> None:
    if not isinstance(tri_id, torch.Tensor):
        raise ShapeError(f"tri_id: expected a torch.Tensor, got {type(tri_id).__name__}")
    if tri_id.dim() != 3 or tri_id.shape[0] != batch:
        raise ShapeError(f"tri_id: expected shape ({batch}, H, W), got {tuple(tri_id.shape)}")
    if tri_id.dtype != torch.int64:
        raise ShapeError(f"tri_id: expected dtype torch.int64, got {tri_id.dtype}")
