"""Analytic Jacobians of the rendered image with respect to the face parameters.

The chain rule, per vertex first and per pixel second::

    pixel colour  I_p = Σ_k λ_k(p; u, v, z of the triangle's vertices) · col_k
    vertex colour col = albedo ⊙ (sh_basis(R n) @ light)        (Gouraud shading)
    screen        (u, v, z) = project(FLIP R X + t)
    vertex        X = mean + S c_shape + E c_expression,  n = normalised Σ_faces cross(...)

:func:`vertex_jacobians` builds ``∂(u, v, z)/∂θ`` and ``∂col/∂θ`` for every
vertex (``(N, 3, P)`` each, P = free parameters of a :class:`~fitem.params.ParamLayout`),
keeping the dependence of the normals on shape and expression (shading is the
main cue to shape), and :func:`pixel_values_and_jacobian` combines them for a set
of covered pixels through the perspective-correct barycentrics (the landmark term
and the tests use this path).

The photometric term goes pixel first instead (:func:`pixel_factors`,
:func:`pixel_jacobian`): per vertex it keeps only 3×3 factors and the basis rows
``[B; N B]`` (N the sparse normal operator), and applies each pixel's chain-rule
coefficients to them in one sparse product, so no ``(N, ·, P)`` tensor is formed
(a BFM-sized linearisation took 161 ms per call before, about 70 ms after). Both paths give the
same J (tested in float64).
The photometric term accumulates ``JᵀJ`` and ``Jᵀr`` in pixel chunks and never holds
the whole J.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from fitem.models.morphable import ModelTensors
from fitem.params import FaceParams, ParamLayout
from fitem.render.camera import FLIP, Camera, rotation_matrix
from fitem.render.shading import SH_CONSTANTS, sh_basis

__all__ = ["VertexState", "VertexJacobians", "vertex_state", "vertex_jacobians", "pixel_values_and_jacobian",
           "PixelFactors", "pixel_factors", "pixel_jacobian", "rotation_derivatives", "pixel_barycentrics",
           "NormalOperator", "normal_operator", "sh_basis_derivative"]


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
    """``screen``: ∂(u, v, z)/∂θ, ``colour``: ∂(r, g, b)/∂θ; both ``(N, 3, P)``.

    ``stacked`` is ``(N, 6, P)`` = both along dim 1 (when both exist; the screen and
    colour tensors are views into it).
    """

    screen: torch.Tensor
    colour: torch.Tensor
    stacked: torch.Tensor | None = None


def _axis_rotations(euler: torch.Tensor):
    p, y, r = euler.unbind(-1)
    cp, sp, cy, sy, cr, sr = torch.cos(p), torch.sin(p), torch.cos(y), torch.sin(y), torch.cos(r), torch.sin(r)
    one, zero = torch.ones_like(p), torch.zeros_like(p)

    def m(*e):
        return torch.stack(e).reshape(3, 3)

    rx, drx = m(one, zero, zero, zero, cp, -sp, zero, sp, cp), m(zero, zero, zero, zero, -sp, -cp, zero, cp, -sp)
    ry, dry = m(cy, zero, sy, zero, one, zero, -sy, zero, cy), m(-sy, zero, cy, zero, zero, zero, -cy, zero, -sy)
    rz, drz = m(cr, -sr, zero, sr, cr, zero, zero, zero, one), m(-sr, -cr, zero, cr, -sr, zero, zero, zero, zero)
    return rx, ry, rz, drx, dry, drz


def rotation_derivatives(euler: torch.Tensor) -> torch.Tensor:
    """``(3, 3, 3)``: ``[a]`` = ∂R/∂angle_a for ``R = Rz(roll) Ry(yaw) Rx(pitch)`` (see fitem.render.camera)."""
    rx, ry, rz, drx, dry, drz = _axis_rotations(euler)
    return torch.stack([rz @ ry @ drx, rz @ dry @ rx, drz @ ry @ rx])


def sh_basis_derivative(normals: torch.Tensor) -> torch.Tensor:
    """``(N, 9, 3)``: ∂ sh_basis(n)_k / ∂n (analytic; matches :func:`fitem.render.shading.sh_basis`)."""
    x, y, z = normals.unbind(-1)
    c = SH_CONSTANTS
    zero = torch.zeros_like(x)
    rows = [
        (zero, zero, zero),
        (zero, zero + c[1], zero),
        (zero, zero, zero + c[2]),
        (zero + c[3], zero, zero),
        (c[4] * y, c[4] * x, zero),
        (zero, c[5] * z, c[5] * y),
        (zero, zero, 6.0 * c[6] * z),
        (c[7] * z, zero, c[7] * x),
        (2.0 * c[8] * x, -2.0 * c[8] * y, zero),
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def _apply_basis(basis: torch.Tensor, coefficients: torch.Tensor, transposed: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """``(N, 3, K) @ (K,) -> (N, 3)`` as one matrix-vector product (on the ``(K, 3N)``
    copy ``transposed`` when there is one: it streams through memory in order)."""
    n, _, k = basis.shape
    if k == 0:
        return torch.zeros(n, 3, dtype=basis.dtype, device=basis.device)
    if transposed is not None:
        return torch.mv(transposed.t(), coefficients).reshape(n, 3)
    return torch.mv(basis.reshape(3 * n, k), coefficients).reshape(n, 3)


def vertex_state(mt: ModelTensors, params: FaceParams, camera: Camera) -> VertexState:
    """Forward pass of one (unbatched) face, keeping what the Jacobians need."""
    x = mt.shape_mean + mt.expression_mean + _apply_basis(mt.shape_basis, params.shape, mt.shape_basis_t) + (
        _apply_basis(mt.expression_basis, params.expression, mt.expression_basis_t))
    albedo = mt.colour_mean + _apply_basis(mt.colour_basis, params.colour, mt.colour_basis_t)
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


def _projection_derivative(cam: torch.Tensor, focal: float) -> torch.Tensor:
    """``∂(u, v, z)/∂C`` ``(n, 3, 3)`` of the pinhole projection at camera-space points ``cam (n, 3)``."""
    z = cam[:, 2]
    dproj = torch.zeros(cam.shape[0], 3, 3, dtype=cam.dtype, device=cam.device)
    dproj[:, 0, 0] = focal / z
    dproj[:, 0, 2] = -focal * cam[:, 0] / z**2
    dproj[:, 1, 1] = focal / z
    dproj[:, 1, 2] = -focal * cam[:, 1] / z**2
    dproj[:, 2, 2] = 1.0
    return dproj


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
        vertex_index: optional ``(M,)`` subset of vertices (e.g. those of the
            sampled pixels' triangles, or landmarks): rows are computed for these
            only (normals still see every neighbour).
        with_colour: compute the colour Jacobian too.

    Returns:
        :class:`VertexJacobians` with ``(N or M, 3, P)`` tensors (``colour`` is
        an empty tensor when not computed).
    """
    st = state if state is not None else vertex_state(mt, params, camera)
    dtype, device = st.vertices.dtype, st.vertices.device
    idx = vertex_index
    x = st.vertices if idx is None else st.vertices[idx]
    cam = st.cam if idx is None else st.cam[idx]
    n = x.shape[0]
    flip = torch.tensor(FLIP, dtype=dtype, device=device)
    frot = flip[:, None] * st.rotation  # FLIP @ R
    dproj = _projection_derivative(cam, camera.focal)
    colour = with_colour

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t if idx is None else t[idx]
    geo = _geometry_blocks(mt, layout)
    geo_named = [("shape" if b is mt.shape_basis else "expression", b) for _, b in geo]
    drot = rotation_derivatives(params.rotation) if "rotation" in layout.names else None

    dcol_dm = dcol_draw = dgeo = None
    if colour and (drot is not None or geo):
        # ∂shading_c/∂m (view normal) = Σ_k L_kc ∂B_k/∂m; colour = albedo · shading.
        dsh = sh_basis_derivative(rows(st.normals_view))  # (n, 9, 3)
        dcol_dm = rows(st.albedo)[:, :, None] * torch.einsum("nkm,kc->ncm", dsh, params.light)  # (n, 3c, 3m)
        if geo:
            # ∂n/∂ñ = (I - n nᵀ)/|ñ|, m = R n; ∂ñ/∂X through the sparse normal operator.
            normals = rows(st.normals)
            nrm = rows(st.normal_raw).norm(dim=-1).clamp_min(1e-12)
            proj = torch.eye(3, dtype=dtype, device=device) - normals[:, :, None] * normals[:, None, :]
            dcol_draw = torch.bmm(dcol_dm @ st.rotation, proj) / nrm[:, None, None]  # (n, 3c, 3)
            op = normal_operator(mt.triangles, st.vertices.shape[0])
            matrix = op.matrix(st.vertices, idx)  # (3n, 3N) sparse
            dgeo = {name: _bmm3(dcol_draw, (matrix @ b.reshape(-1, b.shape[-1])).reshape(-1, 3, b.shape[-1]))
                    for name, b in geo_named}

    n_rows = 6 if colour else 3
    parts = []
    for name, size in zip(layout.names, layout.sizes):
        if size == 0:
            continue
        part = torch.zeros(n, n_rows, size, dtype=dtype, device=device) if name in ("colour", "light") else None
        if name in ("shape", "expression"):
            basis = mt.shape_basis if name == "shape" else mt.expression_basis
            b = basis if idx is None else basis[idx]
            scr = _bmm3(dproj @ frot, b)
            if colour:
                part = torch.cat([scr, dgeo[name]], dim=1)
            else:
                part = scr
        elif name == "rotation":
            dcam = torch.einsum("aij,nj->nia", drot, x) * flip[None, :, None]  # (n, 3, 3a)
            scr = torch.bmm(dproj, dcam)
            if colour:
                dm = torch.einsum("aij,nj->nia", drot, rows(st.normals))  # (n, 3m, 3a)
                part = torch.cat([scr, torch.bmm(dcol_dm, dm)], dim=1)
            else:
                part = scr
        elif name == "translation":
            part = torch.cat([dproj, torch.zeros(n, 3, 3, dtype=dtype, device=device)], dim=1) if colour else dproj
        elif name == "colour" and colour:
            part[:, 3:] = rows(st.shading)[:, :, None] * rows(mt.colour_basis)
        elif name == "light" and colour:
            lj = part[:, 3:].view(n, 3, 9, 3)  # light (9, 3) flattened row-major: column k*3 + c
            for c in range(3):
                lj[:, c, :, c] = rows(st.albedo)[:, c : c + 1] * rows(st.sh)
        parts.append(part)
    stacked = torch.cat(parts, dim=-1) if parts else torch.zeros(n, n_rows, 0, dtype=dtype, device=device)
    if not colour:
        return VertexJacobians(stacked, torch.empty(0, dtype=dtype, device=device))
    return VertexJacobians(stacked[:, :3], stacked[:, 3:], stacked)


def _csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix without invariant checks (the callers build valid ones)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, size=size, check_invariants=False)


class NormalOperator:
    """The linear map ``dX (N, 3, K) ↦ dñ (N, 3, K)`` of unnormalised vertex normals at a mesh state.

    ``ñ_i = Σ_{faces f ∋ i} cross(X_b - X_a, X_c - X_a)``, so
    ``dñ_i = Σ_{f ∋ i} Σ_{v ∈ f} [E_{f,v}]× dX_v`` with the edge opposite each corner
    ``E_a = X_c - X_b``, ``E_b = X_a - X_c``, ``E_c = X_b - X_a``. The 3×3 blocks of
    vertex pairs ``(i, v)`` sharing a face are summed into one sparse CSR matrix
    ``(3N, 3N)``; its structure depends on the triangles only and is built once.
    """

    # skew(e) entries: (row, col, component of e, sign)
    _SKEW = ((0, 1, 2, -1.0), (0, 2, 1, 1.0), (1, 0, 2, 1.0), (1, 2, 0, -1.0), (2, 0, 1, -1.0), (2, 1, 0, 1.0))

    def __init__(self, triangles: torch.Tensor, n_vertices: int) -> None:
        tri = triangles.long()
        device = tri.device
        T = tri.shape[0]
        # Entries (f, i-slot, v-slot): vertex i of face f receives skew(E_{f,v}) dX_v.
        i_idx = tri[:, :, None].expand(T, 3, 3)
        v_idx = tri[:, None, :].expand(T, 3, 3)
        key = (i_idx * n_vertices + v_idx).reshape(-1)
        pairs, inverse = torch.unique(key, return_inverse=True)
        self.inverse = inverse  # (9T,) entry → pair
        self.n_pairs = pairs.numel()
        pi, pv = pairs // n_vertices, pairs % n_vertices
        rows = torch.stack([3 * pi + r for r, _, _, _ in self._SKEW], dim=1).reshape(-1)
        cols = torch.stack([3 * pv + c for _, c, _, _ in self._SKEW], dim=1).reshape(-1)
        order = torch.argsort(rows * (3 * n_vertices) + cols)
        self.order = order
        self.cols = cols[order]
        counts = torch.bincount(rows, minlength=3 * n_vertices)
        self.crow = torch.cat([torch.zeros(1, dtype=torch.long, device=device), counts.cumsum(0)])
        component = torch.tensor([c for _, _, c, _ in self._SKEW], device=device)
        sign = torch.tensor([s for _, _, _, s in self._SKEW], device=device)
        # Each CSR entry (in CSR order) is sign · (Σ of its pair's edges)[component].
        self.entry_pair = order // 6
        self.entry_component = component[order % 6]
        self.entry_sign = sign[order % 6]
        # Each (f, i, v) entry's edge E_{f,v} = X[head] - X[tail], and the vertex i receiving it.
        corner = torch.arange(3, device=device)
        self.edge_head = tri[:, (corner + 2) % 3][:, None, :].expand(T, 3, 3).reshape(-1)
        self.edge_tail = tri[:, (corner + 1) % 3][:, None, :].expand(T, 3, 3).reshape(-1)
        self.entry_vertex = i_idx.reshape(-1)
        self.triangles = tri
        self.n = n_vertices

    def matrix(self, vertices: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The sparse CSR ``(3N, 3N)`` matrix at ``vertices`` ``(N, 3)``, or only the
        3 rows of each vertex in ``rows`` (``(3R, 3N)``; only the faces around those
        vertices are visited)."""
        entries = None
        if rows is not None:
            wanted = torch.zeros(self.n, dtype=torch.bool, device=vertices.device)
            wanted[rows] = True
            entries = torch.nonzero(wanted[self.entry_vertex]).reshape(-1)
        head = self.edge_head if entries is None else self.edge_head[entries]
        tail = self.edge_tail if entries is None else self.edge_tail[entries]
        inverse = self.inverse if entries is None else self.inverse[entries]
        ent = vertices[head] - vertices[tail]  # (E, 3) edge opposite each entry's v
        s = torch.zeros(self.n_pairs, 3, dtype=vertices.dtype, device=vertices.device).index_add_(0, inverse, ent)
        crow, cols = self.crow, self.cols
        pick = None
        n_rows = 3 * self.n
        if rows is not None:
            sel = (3 * rows[:, None] + torch.arange(3, device=rows.device)).reshape(-1)
            starts, counts = crow[sel], crow[sel + 1] - crow[sel]
            crow = torch.cat([torch.zeros(1, dtype=crow.dtype, device=crow.device), counts.cumsum(0)])
            total = int(crow[-1])
            pick = torch.repeat_interleave(starts - crow[:-1], counts, output_size=total) + torch.arange(
                total, device=crow.device)
            cols, n_rows = cols[pick], sel.numel()
        pair = self.entry_pair if pick is None else self.entry_pair[pick]
        comp = self.entry_component if pick is None else self.entry_component[pick]
        sign = self.entry_sign if pick is None else self.entry_sign[pick]
        vals = s.reshape(-1)[pair * 3 + comp] * sign.to(s.dtype)
        return _csr(crow, cols, vals, (n_rows, 3 * self.n))

    def apply(self, vertices: torch.Tensor, d_vertices: torch.Tensor, rows: torch.Tensor | None = None
              ) -> torch.Tensor:
        """``dñ`` ``(N, 3, K)`` (or ``(R, 3, K)`` for the vertices ``rows``) for vertex
        perturbations ``d_vertices`` ``(N, 3, K)``."""
        k = d_vertices.shape[-1]
        out = self.matrix(vertices, rows) @ d_vertices.reshape(3 * self.n, k)
        return out.reshape(-1, 3, k)


_NORMAL_OPERATORS: dict = {}


def normal_operator(triangles: torch.Tensor, n_vertices: int) -> NormalOperator:
    """The cached :class:`NormalOperator` of a mesh topology."""
    key = (triangles.data_ptr(), tuple(triangles.shape), str(triangles.device), n_vertices)
    op = _NORMAL_OPERATORS.get(key)
    if op is None:
        if len(_NORMAL_OPERATORS) > 8:
            _NORMAL_OPERATORS.clear()
        op = _NORMAL_OPERATORS[key] = NormalOperator(triangles, n_vertices)
    return op


def _bmm3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (N, R, 3) @ b (N, 3, K)`` as three broadcast multiply-adds (faster than bmm for tiny R)."""
    return a[:, :, 0:1] * b[:, None, 0, :] + a[:, :, 1:2] * b[:, None, 1, :] + a[:, :, 2:3] * b[:, None, 2, :]


def _cross2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def pixel_barycentrics(screen: torch.Tensor, vid: torch.Tensor, pixel_uv: torch.Tensor) -> torch.Tensor:
    """Perspective-correct barycentrics ``(M, 3)`` of pixel centres ``(M, 2)`` in triangles ``vid (M, 3)``."""
    scr = screen[vid]
    rel = scr[..., :2] - pixel_uv[:, None, :]
    w = torch.stack([_cross2(rel[:, (k + 1) % 3], rel[:, (k + 2) % 3]) for k in range(3)], dim=1)
    h = w / w.sum(dim=1, keepdim=True) / scr[..., 2]
    return h / h.sum(dim=1, keepdim=True)


def _pixel_terms(state: VertexState, vid: torch.Tensor, pixel_uv: torch.Tensor):
    """Perspective-correct barycentrics ``λ (M, 3)`` of pixel centres in triangles ``vid (M, 3)``,
    the pixel colours ``(M, 3)`` and ``g = ∂I_c/∂(u, v, z)_j`` ``(M, 3c, 3j, 3d)``."""
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

    M = vid.shape[0]
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
    g = torch.einsum("mkc,mkjd->mcjd", col, dlam)  # (M, 3c, 3j, 3d): ∂I_c/∂(u, v, z)_j
    return lam, values, g


def pixel_values_and_jacobian(
    state: VertexState,
    jac: VertexJacobians,
    triangles: torch.Tensor,
    pixel_tri: torch.Tensor,
    pixel_uv: torch.Tensor,
    *,
    jacobian_vid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered colours and their Jacobian at covered pixels.

    Args:
        state, jac: from :func:`vertex_state` / :func:`vertex_jacobians`.
        triangles: ``(T, 3)`` long.
        pixel_tri: ``(M,)`` triangle id of each pixel (all ≥ 0).
        pixel_uv: ``(M, 2)`` pixel-centre coordinates ``(j + 0.5, i + 0.5)``.
        jacobian_vid: ``(M, 3)`` rows of ``jac`` for the triangles' vertices when
            ``jac`` holds a vertex subset (default: the vertex indices themselves).

    Returns:
        ``(values (M, 3), J (M, 3, P))``. Barycentrics are the perspective-correct
        ones of the rasterizers; their derivatives w.r.t. the three vertices'
        ``(u, v, z)`` are analytic.
    """
    vid = triangles[pixel_tri]  # (M, 3)
    lam, values, g = _pixel_terms(state, vid, pixel_uv)
    M = pixel_tri.shape[0]
    dtype, device = lam.dtype, lam.device
    # One gather of the stacked per-vertex Jacobian [∂(u, v, z); ∂(r, g, b)] (N, 6, P).
    coef = torch.zeros(M, 3, 3, 6, dtype=dtype, device=device)
    coef[..., :3] = g
    eye = torch.eye(3, dtype=dtype, device=device)
    coef[..., 3:] = lam[:, None, :, None] * eye[None, :, None, :]
    stacked = jac.stacked if jac.stacked is not None else torch.cat([jac.screen, jac.colour], dim=1)
    N, _, P = stacked.shape
    # J = C @ S with C a sparse (3M, 6N) matrix of 18 entries per row (3 vertices × 6 rows of the
    # stacked per-vertex Jacobian S): cheaper than gathering S per pixel.
    jv = vid if jacobian_vid is None else jacobian_vid
    cols = (jv[:, None, :, None] * 6 + torch.arange(6, device=device)).expand(M, 3, 3, 6).reshape(-1)
    crow = torch.arange(3 * M + 1, device=device) * 18
    C = _csr(crow, cols, coef.reshape(-1), (3 * M, 6 * N))
    J = (C @ stacked.reshape(6 * N, P)).reshape(M, 3, P)
    return values, J


@dataclass(frozen=True)
class PixelFactors:
    """Per-vertex factors of the photometric Jacobian for the vertices ``used`` of a set of pixels.

    Unlike :class:`VertexJacobians`, nothing here is ``(N, ·, P)``: the linear blocks
    (shape, expression, colour) stay as basis rows, and :func:`pixel_jacobian` applies
    each pixel's small chain-rule coefficients to them, so the per-vertex Jacobian is
    never formed.
    """

    layout: ParamLayout
    used: torch.Tensor  # (n,) vertex ids
    dscreen: torch.Tensor  # (n, 3, 3) ∂(u, v, z)/∂X
    geo_names: tuple[str, ...]  # free shape / expression blocks, in layout order
    geo: torch.Tensor | None  # (n, 6, Kg): [∂X/∂θ; ∂ñ/∂θ] of the geo blocks (basis rows, normal operator)
    dcol_draw: torch.Tensor | None  # (n, 3c, 3) ∂col/∂ñ (raw model-space normal)
    pose_names: tuple[str, ...]  # free rotation / translation blocks
    pose_screen: torch.Tensor | None  # (n, 3, Pp) ∂(u, v, z)/∂pose
    pose_colour: torch.Tensor | None  # (n, 3, Pp) ∂col/∂pose
    colour_basis: torch.Tensor | None  # (n, 3, Kc) when colour is free
    shading: torch.Tensor  # (n, 3)
    albedo: torch.Tensor  # (n, 3)
    sh: torch.Tensor  # (n, 9)


def pixel_factors(
    mt: ModelTensors,
    params: FaceParams,
    layout: ParamLayout,
    camera: Camera,
    state: VertexState,
    used: torch.Tensor,
) -> PixelFactors:
    """The per-vertex factors of :func:`pixel_jacobian` for the vertices ``used`` ``(n,)``."""
    st = state
    dtype, device = st.vertices.dtype, st.vertices.device
    x, cam = st.vertices[used], st.cam[used]
    n = used.numel()
    flip = torch.tensor(FLIP, dtype=dtype, device=device)
    dproj = _projection_derivative(cam, camera.focal)
    dscreen = dproj @ (flip[:, None] * st.rotation)  # ∂(u, v, z)/∂X = ∂proj/∂C · FLIP · R

    geo = [(name, mt.shape_basis if name == "shape" else mt.expression_basis)
           for name in ("shape", "expression") if name in layout.names and layout.sizes[layout.names.index(name)]]
    pose_names = tuple(name for name in ("rotation", "translation") if name in layout.names)
    dcol_dm = None
    if geo or "rotation" in pose_names:
        # ∂shading_c/∂m (view normal) = Σ_k L_kc ∂B_k/∂m; colour = albedo · shading.
        dsh = sh_basis_derivative(st.normals_view[used])  # (n, 9, 3)
        dcol_dm = st.albedo[used][:, :, None] * torch.einsum("nkm,kc->ncm", dsh, params.light)  # (n, 3c, 3m)
    geo_t = dcol_draw = None
    if geo:
        # ∂n/∂ñ = (I - n nᵀ)/|ñ|, m = R n; ∂ñ/∂X through the sparse normal operator.
        normals = st.normals[used]
        nrm = st.normal_raw[used].norm(dim=-1).clamp_min(1e-12)
        proj = torch.eye(3, dtype=dtype, device=device) - normals[:, :, None] * normals[:, None, :]
        dcol_draw = torch.bmm(dcol_dm @ st.rotation, proj) / nrm[:, None, None]  # (n, 3c, 3)
        matrix = normal_operator(mt.triangles, st.vertices.shape[0]).matrix(st.vertices, used)  # (3n, 3N)
        parts = []
        for _, b in geo:
            k = b.shape[-1]
            parts.append(torch.cat([b[used], (matrix @ b.reshape(-1, k)).reshape(n, 3, k)], dim=1))
        geo_t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    pose_screen = pose_colour = None
    if pose_names:
        ps, pc = [], []
        if "rotation" in pose_names:
            drot = rotation_derivatives(params.rotation)
            dcam = torch.einsum("aij,nj->nia", drot, x) * flip[None, :, None]  # (n, 3, 3a)
            ps.append(torch.bmm(dproj, dcam))
            pc.append(torch.bmm(dcol_dm, torch.einsum("aij,nj->nia", drot, st.normals[used])))
        if "translation" in pose_names:
            ps.append(dproj)
            pc.append(torch.zeros(n, 3, 3, dtype=dtype, device=device))
        pose_screen, pose_colour = torch.cat(ps, dim=-1), torch.cat(pc, dim=-1)
    return PixelFactors(
        layout=layout, used=used, dscreen=dscreen, geo_names=tuple(name for name, _ in geo), geo=geo_t,
        dcol_draw=dcol_draw, pose_names=pose_names, pose_screen=pose_screen, pose_colour=pose_colour,
        colour_basis=mt.colour_basis[used] if "colour" in layout.names else None,
        shading=st.shading[used], albedo=st.albedo[used], sh=st.sh[used],
    )


def pixel_jacobian(
    state: VertexState,
    factors: PixelFactors,
    triangles: torch.Tensor,
    pixel_tri: torch.Tensor,
    pixel_uv: torch.Tensor,
    local_vid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered colours and their Jacobian at covered pixels, pixel first.

    ``∂I_p/∂θ = Σ_k g_k ∂(u, v, z)_k/∂θ + λ_k ∂col_k/∂θ`` over the triangle's corners
    k. For a linear block (``X = … + B θ``), ``∂(u, v, z)_k/∂θ = D_k B_k`` and
    ``∂col_k/∂θ = (∂col_k/∂ñ) (N B)_k``, so each pixel needs only two 3×3 coefficient
    matrices per corner, applied to the stacked rows ``[B; N B]`` of its corners by
    one sparse product: the ``(N, 6, P)`` per-vertex Jacobian of
    :func:`pixel_values_and_jacobian` is never built. Same result, same arguments
    plus:

    Args:
        factors: :func:`pixel_factors` for (at least) the pixels' vertices.
        local_vid: ``(M, 3)`` rows of ``factors`` for each pixel's triangle corners.

    Returns:
        ``(values (M, 3), J (M, 3, P))`` with P = ``factors.layout.size``.
    """
    vid = triangles[pixel_tri]
    lam, values, g = _pixel_terms(state, vid, pixel_uv)
    M = vid.shape[0]
    n = factors.used.numel()
    dtype, device = lam.dtype, lam.device
    blocks: dict[str, torch.Tensor] = {}
    if factors.geo is not None:
        # Per pixel and corner k: [g_k D_k | λ_k ∂col_k/∂ñ] (3c × 6), a sparse (3M, 6n) matrix.
        coef = torch.empty(M, 3, 3, 6, dtype=dtype, device=device)  # (m, c, k, 6)
        coef[..., :3] = torch.einsum("mcjd,mjdx->mcjx", g, factors.dscreen[local_vid])
        coef[..., 3:] = lam[:, None, :, None] * factors.dcol_draw[local_vid].transpose(1, 2)
        cols = (local_vid[:, None, :, None] * 6 + torch.arange(6, device=device)).expand(M, 3, 3, 6).reshape(-1)
        crow = torch.arange(3 * M + 1, device=device) * 18
        kg = factors.geo.shape[-1]
        Jg = (_csr(crow, cols, coef.reshape(-1), (3 * M, 6 * n)) @ factors.geo.reshape(6 * n, kg)).reshape(M, 3, kg)
        start = 0
        for name in factors.geo_names:
            size = factors.layout.sizes[factors.layout.names.index(name)]
            blocks[name] = Jg[..., start:start + size]
            start += size
    if factors.pose_screen is not None:
        Jp = torch.einsum("mcjd,mjdp->mcp", g, factors.pose_screen[local_vid]) + torch.einsum(
            "mk,mkcp->mcp", lam, factors.pose_colour[local_vid])
        start = 0
        for name in factors.pose_names:
            blocks[name] = Jp[..., start:start + 3]
            start += 3
    if factors.colour_basis is not None and factors.colour_basis.shape[-1]:
        # ∂I_c/∂θ_colour = Σ_k λ_k shading_kc B_kc: a sparse (3M, 3n) matrix of 3 entries per row.
        kc = factors.colour_basis.shape[-1]
        w = (lam[:, :, None] * factors.shading[local_vid]).transpose(1, 2)  # (m, c, k)
        cols = (local_vid[:, None, :] * 3 + torch.arange(3, device=device)[None, :, None]).reshape(-1)
        crow = torch.arange(3 * M + 1, device=device) * 3
        blocks["colour"] = (_csr(crow, cols, w.reshape(-1), (3 * M, 3 * n))
                            @ factors.colour_basis.reshape(3 * n, kc)).reshape(M, 3, kc)
    if "light" in factors.layout.names:
        # light (9, 3) flattened row-major: column l*3 + c holds Σ_k λ_k albedo_kc sh_kl for channel c.
        a = torch.einsum("mk,mkc,mkl->mcl", lam, factors.albedo[local_vid], factors.sh[local_vid])  # (m, c, l)
        Jl = torch.zeros(M, 3, 9, 3, dtype=dtype, device=device)
        for c in range(3):
            Jl[:, c, :, c] = a[:, c]
        blocks["light"] = Jl.reshape(M, 3, 27)
    parts = []
    for name, size in zip(factors.layout.names, factors.layout.sizes):
        if size == 0:
            continue
        parts.append(blocks[name] if name in blocks else torch.zeros(M, 3, size, dtype=dtype, device=device))
    J = torch.cat(parts, dim=-1) if parts else torch.zeros(M, 3, 0, dtype=dtype, device=device)
    return values, J
