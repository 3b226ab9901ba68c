"""Analytic Jacobians of the rendered image with respect to the face parameters.

The chain rule, per vertex first and per pixel second::

    pixel colour  I_p = Σ_k λ_k(p; u, v, z of the triangle's vertices) · col_k
    vertex colour col = albedo ⊙ (sh_basis(R n) @ light)        (Gouraud shading)
    screen        (u, v, z) = project(FLIP R X + t)
    vertex        X = mean + S c_shape + E c_expression,  n = normalised Σ_faces cross(...)

:func:`vertex_jacobians` builds ``∂(u, v, z)/∂θ`` and ``∂col/∂θ`` for every
vertex (``(N, 3, P)`` each, P = free parameters of a :class:`~fitem.params.ParamLayout`),
keeping the dependence of the normals on shape and expression (shading is the
main cue to shape). :func:`pixel_jacobian` combines them for a set of covered
pixels through the perspective-correct barycentrics. The photometric term
accumulates ``JᵀJ`` and ``Jᵀr`` in pixel chunks and never holds the whole J.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fitem.models.morphable import ModelTensors
from fitem.params import FaceParams, ParamLayout
from fitem.render.camera import FLIP, Camera, rotation_matrix
from fitem.render.shading import sh_basis

__all__ = ["VertexState", "VertexJacobians", "vertex_state", "vertex_jacobians", "pixel_values_and_jacobian",
           "rotation_derivatives", "pixel_barycentrics"]


@dataclass(frozen=True)
class VertexState:
    """Per-vertex forward quantities of one face (no batch dimension)."""

    vertices: torch.Tensor  # (N, 3) model space, mm
    albedo: torch.Tensor  # (N, 3)
    rotation: torch.Tensor  # (3, 3)
    cam: torch.Tensor  # (N, 3) camera space
    screen: torch.Tensor  # (N, 3) u, v (px), z (mm)
    face_cross: torch.Tensor  # (T, 3) unnormalised face normals (model space)
    normal_raw: torch.Tensor  # (N, 3) Σ of incident face crosses
    normals: torch.Tensor  # (N, 3) unit, model space
    normals_view: torch.Tensor  # (N, 3) unit, view space
    sh: torch.Tensor  # (N, 9) SH basis at the view normals
    shading: torch.Tensor  # (N, 3)
    colours: torch.Tensor  # (N, 3) albedo * shading


@dataclass(frozen=True)
class VertexJacobians:
    """``screen``: ∂(u, v, z)/∂θ, ``colour``: ∂(r, g, b)/∂θ; both ``(N, 3, P)``."""

    screen: torch.Tensor
    colour: torch.Tensor


def rotation_derivatives(euler: torch.Tensor) -> torch.Tensor:
    """``(3, 3, 3)``: ``[a]`` = ∂R/∂angle_a for R = rotation_matrix(euler) (pitch, yaw, roll)."""
    jac = torch.func.jacfwd(rotation_matrix)(euler)  # (3, 3, 3 angles)
    return jac.permute(2, 0, 1).contiguous()


def vertex_state(mt: ModelTensors, params: FaceParams, camera: Camera) -> VertexState:
    """Forward pass of one (unbatched) face, keeping what the Jacobians need."""
    x = (
        mt.shape_mean + mt.expression_mean
        + torch.einsum("nck,k->nc", mt.shape_basis, params.shape)
        + torch.einsum("nck,k->nc", mt.expression_basis, params.expression)
    )
    albedo = mt.colour_mean + torch.einsum("nck,k->nc", mt.colour_basis, params.colour)
    rot = rotation_matrix(params.rotation)
    flip = torch.tensor(FLIP, dtype=x.dtype, device=x.device)
    cam = (x @ rot.T) * flip + params.translation
    screen = camera.project(cam)
    tri = mt.triangles
    xa, xb, xc = x[tri[:, 0]], x[tri[:, 1]], x[tri[:, 2]]
    face_cross = torch.linalg.cross(xb - xa, xc - xa, dim=-1)
    normal_raw = torch.zeros_like(x)
    for j in range(3):  # out of place, so torch.func transforms can trace it
        normal_raw = normal_raw.index_add(0, tri[:, j], face_cross)
    norm = normal_raw.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    normals = normal_raw / norm
    normals_view = normals @ rot.T
    sh = sh_basis(normals_view)
    shading = sh @ params.light
    return VertexState(x, albedo, rot, cam, screen, face_cross, normal_raw, normals, normals_view, sh, shading,
                       albedo * shading)


def _geometry_blocks(mt: ModelTensors, layout: ParamLayout) -> list[tuple[slice, torch.Tensor]]:
    blocks = []
    if "shape" in layout.names and mt.shape_basis.shape[-1]:
        blocks.append((layout.slice("shape"), mt.shape_basis))
    if "expression" in layout.names and mt.expression_basis.shape[-1]:
        blocks.append((layout.slice("expression"), mt.expression_basis))
    return blocks


def vertex_jacobians(
    mt: ModelTensors,
    params: FaceParams,
    layout: ParamLayout,
    camera: Camera,
    state: VertexState | None = None,
    *,
    vertex_index: torch.Tensor | None = None,
    with_colour: bool = True,
) -> VertexJacobians:
    """Analytic per-vertex Jacobians for the free blocks of ``layout``.

    Args:
        mt: the model's tensors (device/dtype of the computation).
        params: current parameters of one face (no batch dimension).
        layout: which blocks are free, and their column offsets in P.
        camera: the pinhole camera.
        state: the forward pass from :func:`vertex_state` (computed if None).
        vertex_index: optional ``(M,)`` subset of vertices (e.g. landmarks) for
            the screen Jacobian; colour Jacobians need all vertices' normals and
            are only computed when ``vertex_index`` is None.
        with_colour: compute the colour Jacobian too.

    Returns:
        :class:`VertexJacobians` with ``(N or M, 3, P)`` tensors (``colour`` is
        an empty tensor when not computed).
    """
    st = state if state is not None else vertex_state(mt, params, camera)
    dtype, device = st.vertices.dtype, st.vertices.device
    P = layout.size
    idx = vertex_index
    x = st.vertices if idx is None else st.vertices[idx]
    cam = st.cam if idx is None else st.cam[idx]
    n = x.shape[0]
    flip = torch.tensor(FLIP, dtype=dtype, device=device)
    frot = flip[:, None] * st.rotation  # FLIP @ R

    # ∂C/∂θ (camera space), then ∂(u, v, z)/∂C.
    dcam = torch.zeros(n, 3, P, dtype=dtype, device=device)
    for sl, basis in _geometry_blocks(mt, layout):
        b = basis if idx is None else basis[idx]
        dcam[:, :, sl] = torch.einsum("ij,njk->nik", frot, b)
    drot = rotation_derivatives(params.rotation) if "rotation" in layout.names else None
    if drot is not None:
        dcam[:, :, layout.slice("rotation")] = torch.einsum("aij,nj->nia", drot, x) * flip[None, :, None]
    if "translation" in layout.names:
        dcam[:, :, layout.slice("translation")] = torch.eye(3, dtype=dtype, device=device)
    z = cam[:, 2]
    f = camera.focal
    dproj = torch.zeros(n, 3, 3, dtype=dtype, device=device)
    dproj[:, 0, 0] = f / z
    dproj[:, 0, 2] = -f * cam[:, 0] / z**2
    dproj[:, 1, 1] = f / z
    dproj[:, 1, 2] = -f * cam[:, 1] / z**2
    dproj[:, 2, 2] = 1.0
    dscreen = torch.bmm(dproj, dcam)

    if idx is not None or not with_colour:
        return VertexJacobians(dscreen, torch.empty(0, dtype=dtype, device=device))

    N = st.vertices.shape[0]
    dcol = torch.zeros(N, 3, P, dtype=dtype, device=device)
    albedo, shading = st.albedo, st.shading
    if "colour" in layout.names and mt.colour_basis.shape[-1]:
        dcol[:, :, layout.slice("colour")] = shading[:, :, None] * mt.colour_basis
    if "light" in layout.names:
        sl = layout.slice("light")  # light (9, 3) flattened row-major: column k*3 + c
        lj = torch.zeros(N, 3, 9, 3, dtype=dtype, device=device)
        for c in range(3):
            lj[:, c, :, c] = albedo[:, c : c + 1] * st.sh
        dcol[:, :, sl] = lj.reshape(N, 3, 27)

    need_normals = drot is not None or _geometry_blocks(mt, layout)
    if need_normals:
        # ∂shading_c/∂m (view normal): Σ_k L_kc ∂B_k/∂m.
        dsh = torch.func.vmap(torch.func.jacfwd(sh_basis))(st.normals_view).to(dtype)  # (N, 9, 3)
        dshade_dm = torch.einsum("nkm,kc->ncm", dsh, params.light)  # (N, 3c, 3m)
        dcol_dm = albedo[:, :, None] * dshade_dm  # (N, 3c, 3m)
        if drot is not None:
            dm = torch.einsum("aij,nj->nia", drot, st.normals)  # (N, 3m, 3a)
            dcol[:, :, layout.slice("rotation")] = torch.bmm(dcol_dm, dm)
        geo = _geometry_blocks(mt, layout)
        if geo:
            # ∂n/∂ñ = (I - n nᵀ)/|ñ|, then m = R n.
            nrm = st.normal_raw.norm(dim=-1).clamp_min(1e-12)
            proj = (torch.eye(3, dtype=dtype, device=device) - st.normals[:, :, None] * st.normals[:, None, :])
            dcol_draw = torch.bmm(dcol_dm, st.rotation.expand(N, 3, 3)) @ proj / nrm[:, None, None]  # (N,3c,3)
            tri = mt.triangles
            xa, xb, xc = st.vertices[tri[:, 0]], st.vertices[tri[:, 1]], st.vertices[tri[:, 2]]
            e1, e2 = xb - xa, xc - xa
            for sl, basis in geo:
                ba, bb, bc = basis[tri[:, 0]], basis[tri[:, 1]], basis[tri[:, 2]]
                de1, de2 = bb - ba, bc - ba  # (T, 3, K)
                k = basis.shape[-1]
                dcross = torch.linalg.cross(de1, e2[:, :, None].expand(-1, -1, k), dim=1) + torch.linalg.cross(
                    e1[:, :, None].expand(-1, -1, k), de2, dim=1
                )
                draw = torch.zeros(N, 3, k, dtype=dtype, device=device)
                for j in range(3):
                    draw.index_add_(0, tri[:, j], dcross)
                dcol[:, :, sl] = torch.bmm(dcol_draw, draw)
    return VertexJacobians(dscreen, dcol)


def _cross2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def pixel_barycentrics(screen: torch.Tensor, vid: torch.Tensor, pixel_uv: torch.Tensor) -> torch.Tensor:
    """Perspective-correct barycentrics ``(M, 3)`` of pixel centres ``(M, 2)`` in triangles ``vid (M, 3)``."""
    scr = screen[vid]
    rel = scr[..., :2] - pixel_uv[:, None, :]
    w = torch.stack([_cross2(rel[:, (k + 1) % 3], rel[:, (k + 2) % 3]) for k in range(3)], dim=1)
    h = w / w.sum(dim=1, keepdim=True) / scr[..., 2]
    return h / h.sum(dim=1, keepdim=True)


def pixel_values_and_jacobian(
    state: VertexState,
    jac: VertexJacobians,
    triangles: torch.Tensor,
    pixel_tri: torch.Tensor,
    pixel_uv: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered colours and their Jacobian at covered pixels.

    Args:
        state, jac: from :func:`vertex_state` / :func:`vertex_jacobians`.
        triangles: ``(T, 3)`` long.
        pixel_tri: ``(M,)`` triangle id of each pixel (all ≥ 0).
        pixel_uv: ``(M, 2)`` pixel-centre coordinates ``(j + 0.5, i + 0.5)``.

    Returns:
        ``(values (M, 3), J (M, 3, P))``. Barycentrics are the perspective-correct
        ones of the rasterizers; their derivatives w.r.t. the three vertices'
        ``(u, v, z)`` are analytic.
    """
    vid = triangles[pixel_tri]  # (M, 3)
    scr = state.screen[vid]  # (M, 3j, 3)
    q = scr[..., :2]
    z = scr[..., 2]
    rel = q - pixel_uv[:, None, :]  # q_j - p
    # Screen-space barycentrics s_k = w_k / D, w_k = cross2(q_{k+1} - p, q_{k+2} - p).
    w = torch.stack([_cross2(rel[:, (k + 1) % 3], rel[:, (k + 2) % 3]) for k in range(3)], dim=1)  # (M, 3)
    D = w.sum(dim=1, keepdim=True)
    s = w / D
    h = s / z
    H = h.sum(dim=1, keepdim=True)
    lam = h / H  # (M, 3)

    M = pixel_tri.shape[0]
    dtype, device = lam.dtype, lam.device
    # ∂w_k/∂q_j (M, 3k, 3j, 2)
    dw = torch.zeros(M, 3, 3, 2, dtype=dtype, device=device)
    for k in range(3):
        a = rel[:, (k + 1) % 3]
        b = rel[:, (k + 2) % 3]
        dw[:, k, (k + 1) % 3, 0] = b[:, 1]
        dw[:, k, (k + 1) % 3, 1] = -b[:, 0]
        dw[:, k, (k + 2) % 3, 0] = -a[:, 1]
        dw[:, k, (k + 2) % 3, 1] = a[:, 0]
    dD = dw.sum(dim=1, keepdim=True)  # (M, 1, 3j, 2)
    ds = (dw - s[:, :, None, None] * dD) / D[:, :, None, None]  # (M, 3k, 3j, 2)
    dh_q = ds / z[:, :, None, None]
    Hh = H[:, :, None, None]
    dlam_q = (dh_q - lam[:, :, None, None] * dh_q.sum(dim=1, keepdim=True)) / Hh  # (M, 3k, 3j, 2)
    # ∂λ_k/∂z_j = (-δ_kj s_k / z_k² + λ_k s_j / z_j²) / H
    sz2 = s / z**2  # (M, 3)
    dlam_z = (-torch.diag_embed(sz2) + lam[:, :, None] * sz2[:, None, :]) / H[:, :, None]  # (M, 3k, 3j)
    dlam = torch.cat([dlam_q, dlam_z[..., None]], dim=-1)  # (M, 3k, 3j, 3d)

    col = state.colours[vid]  # (M, 3k, 3c)
    values = torch.einsum("mk,mkc->mc", lam, col)
    g = torch.einsum("mkc,mkjd->mcjd", col, dlam)  # (M, 3c, 3j, 3d)
    jscr = jac.screen[vid]  # (M, 3j, 3d, P)
    jcol = jac.colour[vid]  # (M, 3k, 3c, P)
    J = torch.einsum("mcjd,mjdp->mcp", g, jscr) + torch.einsum("mk,mkcp->mcp", lam, jcol)
    return values, J
