"""One rasterizer interface, two backends: pure PyTorch (reference, CPU default) and nvdiffrast (CUDA).

A :class:`Rasterizer` is built once per mesh topology, device and image size
(:func:`make_rasterizer`) and then called every iteration with the projected
vertices. Both backends return the same frozen :class:`RasterOutput`.

Input: ``screen (B, N, 3)`` from :meth:`fitem.render.camera.Camera.project`:
``(u, v)`` in pixels (pixel ``(i, j)``'s centre at ``(j + 0.5, i + 0.5)``; u
right, v down) and the camera-space depth ``z`` in mm.

Rules (both backends):

- **Coverage**: a pixel belongs to a triangle when its *centre* is inside the
  triangle with vertices snapped to 1/16 pixel (``subpixel_bits``, as GPU
  rasterizers and nvdiffrast do; the snapped edge tests are then exact in
  floating point for triangles up to ~256 px). Pixel centres exactly on an edge
  use a consistent tie rule (torch backend: a symbolic perturbation, i.e. the
  top-left rule in image coordinates), so on a shared edge no pixel is covered
  twice or dropped. Barycentrics and depth are those of the unsnapped triangle
  at the pixel centre (slightly outside [0, 1] within 1/32 pixel of an edge).
- **Depth test**: the nearest surface at the pixel centre wins
  (perspective-correct depth).
- **Back-face culling**: triangles whose outward normal (counter-clockwise from
  outside, right-hand rule) points away from the camera are dropped. For points
  in front of the camera the screen-space signed area
  ``A = (u1 - u0)(v2 - v0) - (u2 - u0)(v1 - v0)`` has the sign of
  ``n_cam · P0`` (n_cam the outward normal in camera space, P0 a vertex), so a
  triangle faces the camera exactly when ``A < 0`` (u right, v down). Degenerate
  triangles (``A = 0`` after snapping) are dropped as well.
- **Clipping**: a triangle with any vertex at ``z <= near`` or ``z >= far`` (mm)
  or any non-finite coordinate is dropped whole; triangles partly outside the
  image are clipped to it. Nothing in frame gives an empty output
  (``tri_id == -1`` everywhere).
"""
from __future__ import annotations

import abc
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from fitem._malloc import tune_malloc
from fitem.errors import ConfigError, RasterizerUnavailableError, ShapeError
from fitem.render._checks import check_tensor, check_triangles
from fitem.render.interpolate import _bary_core, _pixel_centres, _soa, covered_pixels

__all__ = [
    "RasterOutput",
    "Rasterizer",
    "TorchRasterizer",
    "NvdiffrastRasterizer",
    "make_rasterizer",
    "nvdiffrast_available",
    "DEFAULT_NEAR",
    "DEFAULT_FAR",
    "DEFAULT_SUBPIXEL_BITS",
    "snap_to_subpixels",
]

logger = logging.getLogger(__name__)

#: Default clip planes in mm (the defaults of :class:`fitem.render.camera.Camera`).
DEFAULT_NEAR = 10.0
DEFAULT_FAR = 10000.0

#: Vertices are snapped to 1 / 2**bits of a pixel for coverage, as GPU rasterizers do (nvdiffrast's
#: CudaRaster: 4 bits, relative to the image centre, round half to even).
DEFAULT_SUBPIXEL_BITS = 4

_BACKENDS = ("auto", "torch", "nvdiffrast")


@dataclass(frozen=True)
class RasterOutput:
    """What a rasterizer returns (same type for every backend).

    Attributes:
        tri_id: ``(B, H, W)`` int64 index of the visible triangle (row of
            ``triangles``) per pixel, ``-1`` where no triangle covers the pixel centre.
        bary: ``(B, H, W, 3)`` perspective-correct barycentric weights of the
            triangle's three vertices, in the column order of ``triangles``
            (sum 1); zeros where empty.
        depth: ``(B, H, W)`` camera-space depth z in mm at the pixel centre,
            ``+inf`` where empty.
        pixels: optional ``(P,)`` int64 flat indices ``b*H*W + i*W + j`` of the
            covered pixels, ascending (the rasterizers fill it; ``None`` means
            "compute from ``tri_id``" -- see :meth:`covered`).
    """

    tri_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    pixels: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def covered(self) -> torch.Tensor:
        """``(P,)`` flat indices of the covered pixels (``pixels`` or computed from ``tri_id``)."""
        return self.pixels if self.pixels is not None else covered_pixels(self.tri_id)

    @property
    def mask(self) -> torch.Tensor:
        """``(B, H, W)`` bool: pixels covered by a triangle."""
        return self.tri_id >= 0

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return (int(self.tri_id.shape[1]), int(self.tri_id.shape[2]))


class Rasterizer(abc.ABC):
    """Interface: built once per mesh topology / device / image size, called per frame.

    Args:
        triangles: ``(T, 3)`` int64 vertex indices, counter-clockwise from outside.
        image_size: ``(H, W)`` in pixels.
        device: where the rasterizer runs (default: the device of ``triangles``).
        near, far: clip planes in mm (defaults as :class:`~fitem.render.camera.Camera`).
        subpixel_bits: coverage (and culling) use vertex positions snapped to
            ``1 / 2**bits`` pixel (:func:`snap_to_subpixels`), like GPU rasterizers;
            4 (the default) matches nvdiffrast. ``None``: no snapping. The
            barycentrics and depth are always those of the unsnapped triangle.

    Attributes:
        backend: ``"torch"`` or ``"nvdiffrast"``.

    Example:
        >>> rast = make_rasterizer(triangles, (224, 224))              # doctest: +SKIP
        >>> out = rast.rasterize(camera.project(vertices_cam))         # doctest: +SKIP
    """

    backend: str = "abstract"

    def __init__(
        self,
        triangles: torch.Tensor,
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        *,
        near: float = DEFAULT_NEAR,
        far: float = DEFAULT_FAR,
        subpixel_bits: int | None = DEFAULT_SUBPIXEL_BITS,
    ) -> None:
        check_triangles(triangles)
        if triangles.shape[0] == 0:
            raise ShapeError("triangles: expected at least one triangle, got shape (0, 3)")
        lo = int(triangles.min())
        if lo < 0:
            raise ConfigError(f"triangles contain negative vertex index {lo}; 0-based indices expected")
        try:
            h, w = (int(image_size[0]), int(image_size[1]))
            if len(image_size) != 2:
                raise TypeError
        except (TypeError, ValueError, IndexError):
            raise ConfigError(f"image_size must be (height, width), got {image_size!r}") from None
        if h <= 0 or w <= 0:
            raise ConfigError(f"image_size must be positive, got {h}x{w}")
        if h * w > 2**31:
            raise ConfigError(f"image_size {h}x{w} is too large (at most 2**31 pixels)")
        if not (0.0 < near < far):
            raise ConfigError(f"clip planes need 0 < near < far, got near={near}, far={far}")
        if subpixel_bits is not None and not (isinstance(subpixel_bits, int) and 0 <= subpixel_bits <= 8):
            raise ConfigError(f"subpixel_bits must be an int in [0, 8] or None, got {subpixel_bits!r}")
        self.subpixel_bits = subpixel_bits
        # "cuda" → "cuda:<current>": tensors made on "cuda" report their index, and must compare equal
        self.device = _normalise_cuda(torch.device(device) if device is not None else triangles.device)
        self.triangles = triangles.to(self.device).contiguous()
        self.n_triangles = int(triangles.shape[0])
        self.min_vertices = int(triangles.max()) + 1
        self.height, self.width = h, w
        self.near, self.far = float(near), float(far)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return (self.height, self.width)

    def _check_screen(self, screen: torch.Tensor) -> None:
        check_tensor("screen", screen)
        if screen.dim() != 3 or screen.shape[-1] != 3:
            raise ShapeError(f"screen: expected shape (B, N, 3) of (u, v, z), got {tuple(screen.shape)}")
        if screen.shape[1] < self.min_vertices:
            raise ShapeError(
                f"screen: the triangles index up to vertex {self.min_vertices - 1}, so expected at least "
                f"{self.min_vertices} vertices, got {screen.shape[1]}; build the rasterizer for this mesh"
            )
        if screen.device != self.device:
            raise ShapeError(
                f"screen is on {screen.device} but this rasterizer was built for {self.device}; "
                "move the tensors or build the rasterizer on that device"
            )

    @abc.abstractmethod
    def rasterize(self, screen: torch.Tensor) -> RasterOutput:
        """Rasterize ``screen (B, N, 3)`` = ``(u, v)`` pixels, ``z`` mm → :class:`RasterOutput` (no grad)."""

    def front_facing(self, screen: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` bool: triangles kept by culling and clipping (front-facing, near < z < far, finite)."""
        v = screen.detach()[:, self.triangles]  # (B, T, 3, 3)
        x, y, z = v.unbind(-1)
        x = snap_to_subpixels(x, self.width, self.subpixel_bits)
        y = snap_to_subpixels(y, self.height, self.subpixel_bits)
        area = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (x[..., 2] - x[..., 0]) * (y[..., 1] - y[..., 0])
        return (area < 0) & (z.amin(-1) > self.near) & (z.amax(-1) < self.far) & torch.isfinite(x + y).all(-1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(backend={self.backend!r}, triangles={self.n_triangles}, "
                f"image_size={self.image_size}, device={self.device})")


def snap_to_subpixels(coord: torch.Tensor, size: int, bits: int | None) -> torch.Tensor:
    """Snap pixel coordinates to ``1 / 2**bits`` pixel, relative to the image centre ``size / 2``.

    ``size / 2 + round(2**bits * (coord - size / 2)) / 2**bits`` with round half to
    even: what nvdiffrast's CudaRaster does (4 bits) before its exact integer
    coverage test. ``bits=None`` returns ``coord`` unchanged.

    Example:
        >>> snap_to_subpixels(torch.tensor([10.2, 10.22]), 64, 4)
        tensor([10.1875, 10.2500])
    """
    if bits is None:
        return coord
    scale = float(1 << bits)
    centre = size / 2.0
    return torch.round((coord - centre) * scale) / scale + centre


def _empty(b: int, h: int, w: int, dtype: torch.dtype, dev: torch.device) -> RasterOutput:
    return RasterOutput(
        tri_id=torch.full((b, h, w), -1, dtype=torch.int64, device=dev),
        bary=torch.zeros(b, h, w, 3, dtype=dtype, device=dev),
        depth=torch.full((b, h, w), float("inf"), dtype=dtype, device=dev),
        pixels=torch.zeros(0, dtype=torch.int64, device=dev),
    )


# --------------------------------------------------------------------------------------------------
# PyTorch backend
# --------------------------------------------------------------------------------------------------


class TorchRasterizer(Rasterizer):
    """Pure-PyTorch, vectorised rasterizer (CPU or CUDA tensors); the reference backend.

    Algorithm per frame:

    0. per vertex: snapped ``(u, v)`` and ``1 / z`` (a vertex outside
       ``(near, far)`` or not finite is marked NaN, dropping its triangles);
    1. per triangle (one table for all, gathered with int32 indices): cull / clip, the range of pixel
       centres inside its screen bounding box (clipped to the image) and a size
       class per side (1, 2, 3, 4, 6, 8, 12, 16, ... pixel centres); classes are
       merged into groups where that saves work;
    2. per group, every triangle tests the same small ``kx × ky`` grid of
       candidate pixels at once, laid out ``(kx * ky, K)`` so that every
       operation broadcasts per-triangle rows (no per-candidate gathers); the
       largest group runs in place over the whole table (masked) when that is
       cheaper than compacting it;
    3. coverage by edge functions. Each edge is evaluated from its lower-index
       endpoint, so the two triangles sharing an edge compute exactly opposite
       values; a pixel centre exactly on an edge belongs to the triangle whose
       inward edge normal ``n`` has ``n_x > 0`` or ``(n_x == 0 and n_y > 0)`` (a
       symbolic perturbation of the pixel centre), so along a shared edge no
       pixel is covered twice or dropped;
    4. a key ``(float32 bits of 1/z) << id_bits | triangle id`` per covered
       candidate is reduced per pixel with ``scatter_reduce(amax)``: the nearest
       surface wins, exactly in float32 (ties: the larger triangle id);
    5. the winners' perspective-correct barycentrics and depth are recomputed
       exactly with :func:`fitem.render.interpolate.barycentrics`' formula.

    On the CPU, building one also applies :func:`fitem._malloc.tune_malloc`
    (once per process): without it glibc page-faults the per-frame temporaries
    back in, about a third of a 512² frame.

    Example:
        >>> from fitem.render.meshes import icosphere
        >>> from fitem.render.camera import Camera, to_camera
        >>> v, tri = icosphere(3, radius=50.0)
        >>> cam = Camera.default(64)
        >>> rast = TorchRasterizer(tri, cam.image_size)
        >>> out = rast.rasterize(cam.project(to_camera(v[None], torch.zeros(1, 3), torch.tensor([[0., 0, 1000]]))))
        >>> out.tri_id.shape, bool(out.mask[0, 32, 32]), bool(out.mask[0, 0, 0])
        (torch.Size([1, 64, 64]), True, False)
    """

    backend = "torch"

    def __init__(
        self,
        triangles: torch.Tensor,
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        *,
        near: float = DEFAULT_NEAR,
        far: float = DEFAULT_FAR,
        subpixel_bits: int | None = DEFAULT_SUBPIXEL_BITS,
    ) -> None:
        super().__init__(triangles, image_size, device, near=near, far=far, subpixel_bits=subpixel_bits)
        if self.device.type == "cpu":
            tune_malloc()  # per-frame temporaries would otherwise be page-faulted in (see fitem._malloc)
        # Internally each triangle's vertices are rotated cyclically (orientation kept) so that vertex 0
        # has the lowest index. Every edge is evaluated from its lower-index endpoint -- the same point
        # for both triangles that share it -- which is v0 for edges 1 and 2, and for edge 0 (v1 -> v2)
        # the lower-index one of v1 and v2 (``ref``), gathered as a fourth vertex.
        tri = self.triangles
        shift = torch.argmin(tri, dim=1)
        cols = (torch.arange(3, device=tri.device).unsqueeze(0) + shift.unsqueeze(1)) % 3
        rot = torch.gather(tri, 1, cols)
        ref = torch.minimum(rot[:, 1], rot[:, 2])
        self._tri_rot4 = torch.cat([rot, ref.unsqueeze(1)], 1).contiguous()  # (T, 4): v0 v1 v2 ref
        self._tri_t32 = tri.t().to(torch.int32).contiguous()  # (3, T) in the triangles' own column order
        self._index_cache: dict = {}
        self._plan_cache: dict = {}
        # bounding-box size classes (pixel centres per side): 1, 2, 3, 4, 6, 8, 12, 16, 24, ...
        caps = [1, 2, 3, 4]
        while caps[-1] < max(self.height, self.width):
            caps += [caps[-2] * 2, caps[-1] * 2]
        self._caps = caps
        # lookup (x count - 1) * H + (y count - 1) -> 1 + size class (x class * 64 + y class); the box
        # is clipped to the image, so both counts are below the image size. Above 2**22 pixels (16 MB of
        # table) one lookup per side instead.
        cx = self._class_lut(self.width).to(torch.int32)
        cy = self._class_lut(self.height).to(torch.int32)
        if self.width * self.height <= _LUT2D_MAX:
            self._lut_cls = (cx.view(-1, 1) * 64 + cy.view(1, -1) + 1).reshape(-1).to(self.device)
            self._lut_xy = None
        else:
            self._lut_cls = None
            self._lut_xy = ((cx * 64 + 1).to(self.device), cy.to(self.device))
        self._id_bits = max(1, (self.n_triangles - 1).bit_length())
        if self._id_bits > 32:
            raise ConfigError(f"too many triangles ({self.n_triangles}); at most 2**32 are supported")

    def _class_lut(self, size: int) -> torch.Tensor:
        n = torch.arange(1, size + 1)
        caps = torch.tensor(self._caps)
        return torch.searchsorted(caps, n)  # first cap >= n

    def _vertex_index(self, batch: int, n_vertices: int) -> torch.Tensor:
        """``(4 * B * T,)`` columns of the ``(C, B * N)`` vertex table: vertex k (v0 v1 v2 ref) of triangle t
        in batch item b, int32 where it fits (``index_select`` is faster with int32 indices)."""
        key = ("vertex", batch, n_vertices)
        if key not in self._index_cache:
            off = (torch.arange(batch, device=self.device) * n_vertices).view(1, batch, 1)
            idx = (self._tri_rot4.t().unsqueeze(1) + off).reshape(-1)  # (4, B, T)
            if batch * n_vertices < 2**31:
                idx = idx.to(torch.int32)
            if len(self._index_cache) > 16:
                self._index_cache.clear()
            self._index_cache[key] = idx.contiguous()
        return self._index_cache[key]

    @torch.no_grad()
    def rasterize(self, screen: torch.Tensor) -> RasterOutput:
        """Rasterize ``screen (B, N, 3)`` → :class:`RasterOutput` (no gradient; see module rules)."""
        self._check_screen(screen)
        s = screen.detach()
        b, n = s.shape[:2]
        h, w = self.height, self.width
        t = self.n_triangles
        bt = b * t
        dtype, dev = s.dtype, s.device

        # --- per vertex: snapped (x, y) and 1 / z. A vertex outside (near, far) or not finite gets
        # x = NaN, which drops every triangle that uses it (NaN fails every test below).
        soa = _soa(s)
        vert = torch.empty(3, b * n, dtype=dtype, device=dev)
        vert[0] = snap_to_subpixels(soa[0], w, self.subpixel_bits)
        vert[1] = snap_to_subpixels(soa[1], h, self.subpixel_bits)
        torch.reciprocal(soa[2], out=vert[2])
        zmin, zmax, total = torch.stack([soa[2].amin(), soa[2].amax(), soa[:2].sum()]).tolist()
        clean = zmin > self.near and zmax < self.far and math.isfinite(total)
        if not clean:
            bad = (soa[2] <= self.near) | (soa[2] >= self.far) | ~torch.isfinite(soa[0] + soa[1])
            vert[0].masked_fill_(bad, float("nan"))

        # --- per triangle (all B*T), one table: rows G = x0 x1 x2 xr | y0 y1 y2 yr | 1/z0 1/z1 1/z2 -
        # (vertices in the rotated order, r = the reference endpoint of edge 0), then D = dx1 dy1 dx2
        # dy2 (v1 - v0, v2 - v0), A (twice the area, > 0 for front faces), j0 i0 (first pixel centre of
        # the clipped box) nx ny (pixel centres per side - 1; < 0: none), gathered per group in one call.
        table = torch.empty(_ROWS, bt, dtype=dtype, device=dev)
        torch.index_select(vert, 1, self._vertex_index(b, n), out=table[:12].view(3, 4 * bt))
        x0, x1, x2 = table[0], table[1], table[2]
        y0, y1, y2 = table[4], table[5], table[6]
        dx1, dy1, dx2, dy2, area, j0, i0, nx, ny = table[12:]
        torch.sub(x1, x0, out=dx1)
        torch.sub(y1, y0, out=dy1)
        torch.sub(x2, x0, out=dx2)
        torch.sub(y2, y0, out=dy2)
        torch.mul(dx2, dy1, out=area).sub_(torch.mul(dx1, dy2, out=nx))
        _centre_range(table[0:3], w, j0, nx)
        _centre_range(table[4:7], h, i0, ny)
        if not clean:  # dropped triangles' NaN must not reach index arithmetic
            for row in (j0, i0, nx, ny):
                row.nan_to_num_(nan=-1.0)
            j0.clamp_(min=0.0)
            i0.clamp_(min=0.0)
        # kept <=> A > 0 and nx >= 0 and ny >= 0 (NaN propagates through minimum -> dropped)
        keep = torch.minimum(nx, ny).add_(0.5)
        keep = torch.minimum(keep, area, out=keep) > 0
        # dropped triangles may be tested in place (masked) below: keep their 1 / A finite (kept ones
        # have A >= 2**-8 after snapping; without snapping, NaN / inf are replaced there instead)
        finite = clean and self.subpixel_bits is not None
        if finite:
            area.clamp_(min=_MIN_AREA)
        # 1 + size class from a lookup table (0 = dropped)
        if self._lut_cls is not None:
            cx = torch.clamp(nx, 0.0, w - 1.0)
            cls = torch.clamp(ny, 0.0, h - 1.0).add_(cx, alpha=h).to(torch.int32)
            cls = self._lut_cls.index_select(0, cls)
        else:
            cls = self._lut_xy[0].index_select(0, torch.clamp(nx, 0.0, w - 1.0).to(torch.int32))
            cls += self._lut_xy[1].index_select(0, torch.clamp(ny, 0.0, h - 1.0).to(torch.int32))
        cls.mul_(keep)
        counts = torch.bincount(cls, minlength=1)[1:]
        present = torch.nonzero(counts).squeeze(1)
        if present.numel() == 0:
            return _empty(b, h, w, dtype, dev)
        present_list, count_list = present.tolist(), counts[present].tolist()
        groups = self._plan(present_list, count_list)
        if len(groups) > 1 and any(len(members) > 1 for members, _, _ in groups):
            lut = torch.full((64 * 64 + 1,), -1, dtype=torch.int32, device=dev)
            for gi, (members, _, _) in enumerate(groups):
                lut[torch.tensor(members, device=dev) + 1] = gi
            gid = lut.index_select(0, cls)
        else:
            gid = None

        buf = torch.full((b * h * w,), -1, dtype=torch.int64, device=dev)
        # the largest group runs over the whole table, masked, when that is cheaper than compacting it
        # (measured: compaction ~1.8 and the per-triangle set-up ~1 candidate test per triangle; the
        # masked run pays ~0.3 more per candidate)
        count_of = dict(zip(present_list, count_list))
        sizes = [sum(count_of[c] for c in members) for members, _, _ in groups]
        big = max(range(len(groups)), key=lambda g: sizes[g])
        for gi, (members, kx, ky) in enumerate(groups):
            if len(groups) == 1:
                sel = keep
            else:
                sel = gid == gi if gid is not None else cls == members[0] + 1
            if gi == big and sizes[gi] * (2.8 + kx * ky) > bt * (1.3 + kx * ky):
                self._candidates(buf, table, None, kx, ky, b, sel, finite=finite)
            else:
                idx = torch.nonzero(sel).squeeze(1)  # into B*T
                self._candidates(buf, table.index_select(1, idx), idx, kx, ky, b)

        # keys -> triangle ids; a pixel is covered when some inside candidate set it (key >= 2**id_bits)
        covered = buf >= (1 << self._id_bits)
        tri_flat = torch.where(covered, buf & ((1 << self._id_bits) - 1), -1)
        pix = torch.nonzero(covered).squeeze(1)
        return _finish(soa, self._tri_t32, tri_flat, pix, b, h, w)

    def _all_index(self, batch: int) -> torch.Tensor:
        """``arange(B * T)`` (cached)."""
        key = ("all", batch)
        if key not in self._index_cache:
            self._index_cache[key] = torch.arange(batch * self.n_triangles, device=self.device)
        return self._index_cache[key]

    def _plan(self, present: list[int], counts: list[int]) -> list[tuple[list[int], int, int]]:
        """Group size classes into candidate grids: ``[(class ids, kx, ky)]``.

        Each group costs a fixed number of tensor operations plus work per
        candidate; classes are merged greedily (a merged group uses the largest
        grid of its members) while that lowers ``_GROUP_COST + candidates``.
        Plans are cached by the classes present and their counts to within ~20 %.
        """
        if len(present) == 1:
            c = present[0]
            return [([c], self._caps[c // 64], self._caps[c % 64])]
        key = (tuple(present), tuple(int(4 * math.log2(k)) for k in counts))
        plan = self._plan_cache.get(key)
        if plan is not None:
            return plan
        caps = self._caps
        members = [[c] for c in present]
        kx = np.array([caps[c // 64] for c in present], dtype=np.int64)
        ky = np.array([caps[c % 64] for c in present], dtype=np.int64)
        k = np.array(counts, dtype=np.int64)
        while len(k) > 1:
            mx, my, mk = np.maximum.outer(kx, kx), np.maximum.outer(ky, ky), np.add.outer(k, k)
            single = kx * ky * k
            gain = single[:, None] + single[None, :] + _GROUP_COST - mx * my * mk
            np.fill_diagonal(gain, -1)
            i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
            if gain[i, j] <= 0:
                break
            i, j = min(i, j), max(i, j)
            members[i] += members[j]
            kx[i], ky[i], k[i] = mx[i, j], my[i, j], mk[i, j]
            del members[j]
            kx, ky, k = np.delete(kx, j), np.delete(ky, j), np.delete(k, j)
        plan = [(m, int(a), int(b)) for m, a, b in zip(members, kx, ky)]
        if len(self._plan_cache) > 256:
            self._plan_cache.clear()
        self._plan_cache[key] = plan
        return plan

    def _candidates(self, buf: torch.Tensor, f: torch.Tensor, idx: torch.Tensor | None, kx: int, ky: int,
                    batch: int, mask: torch.Tensor | None = None, finite: bool = True) -> None:
        """Test a ``kx × ky`` grid of candidate pixels for each triangle of one group.

        ``f (_ROWS, K)``: the table rows of the group's K triangles, ``idx (K,)`` their index into B*T;
        or ``idx=None``: ``f`` is the whole table and ``mask (B*T,)`` selects the group; ``finite``:
        every masked-out triangle's coordinates are finite.
        Candidates are laid out ``(kx * ky, K)``, so every operation runs along the triangles.
        """
        h, w, t = self.height, self.width, self.n_triangles
        dtype, dev = f.dtype, f.device
        x0, x1, x2, xr, y0, y1, y2, yr, iz0, iz1, iz2, _ = f[:12]
        dx1, dy1, dx2, dy2, area, j0, i0, nx, ny = f[12:]
        if idx is None:
            idx = self._all_index(batch)
        if batch > 1:  # split into batch item and triangle
            bidx = torch.div(idx, t, rounding_mode="floor")
            tid = idx - bidx * t
            boff = bidx * (h * w)
        else:
            tid, boff = idx, None
        # candidate pixel indices; beyond the triangle's own box they are clamped onto its last
        # column / row: they repeat a pixel already tested, which the amax reduction makes harmless.
        # (Candidate-sized temporaries are updated in place: on the CPU, allocating a fresh ~1 MB
        # tensor per operation costs as much as the arithmetic.)
        if kx > 1:
            ox = torch.arange(kx, device=dev, dtype=dtype).repeat(ky).unsqueeze(1)  # (kx*ky, 1)
            jx = torch.minimum(ox, nx).add_(j0)
            if mask is not None:  # masked-out triangles may have nx < 0: keep the indices in the image
                jx.clamp_(min=0.0)
        else:
            jx = j0  # a view of the table: never modified in place
        if ky > 1:
            oy = torch.arange(ky, device=dev, dtype=dtype).repeat_interleave(kx).unsqueeze(1)
            iy = torch.minimum(oy, ny).add_(i0)
            if mask is not None:
                iy.clamp_(min=0.0)
        else:
            iy = i0
        # Edge k runs from v_{k+1} to v_{k+2}. Culling left only A > 0 triangles, where
        # w_k = dy (u - l_x) - dx (v - l_y) > 0 inside, l the edge's lower-index endpoint (see __init__):
        # both triangles of an edge compute exactly opposite values, and a centre exactly on a vertex
        # gives exactly 0. A centre exactly on an edge is decided by moving it by (2**-60, 2**-120)
        # pixels (a symbolic perturbation): the threshold ``thr`` is far under the rounding of any
        # non-zero w_k, exactly opposite for the neighbour, and non-zero for any non-degenerate edge.
        # Edges 1 and 2 use (dx, dy) = -(v2 - v0) and v1 - v0 (negation is exact), so
        # w_1 = dv dx2 - du dy2 and w_2 = du dy1 - dv dx1 with (du, dv) = p - v0.
        dx0, dy0 = x2 - x1, y2 - y1
        thr0 = torch.add(dx0, dy0, alpha=-_EPS_RATIO).mul_(_EPS2)
        thr1 = torch.add(dy2, dx2, alpha=-_EPS_RATIO_INV).mul_(_EPS1)  # -(dx2 EPS2 - dy2 EPS1)
        thr2 = torch.add(dx1, dy1, alpha=-_EPS_RATIO).mul_(_EPS2)
        full = (kx * ky, f.shape[1]) if kx * ky > 1 else (f.shape[1],)
        u = (jx + 0.5).expand(full).contiguous()
        v = (iy + 0.5).expand(full).contiguous()
        w0 = (u - xr).mul_(dy0)
        tmp = (v - yr).mul_(dx0)
        w0.sub_(tmp)
        du0, dv0 = u.sub_(x0), v.sub_(y0)  # edges 1 and 2 start or end at v0, their lower-index end
        w1 = (dv0 * dx2).sub_(torch.mul(du0, dy2, out=tmp))
        w2 = du0.mul_(dy1).sub_(torch.mul(dv0, dx1, out=tmp))
        inside = w0 > thr0
        inside &= w1 > thr1
        inside &= w2 > thr2
        if mask is not None:
            inside &= mask
        # inverse depth at the pixel: 1/z0 + (s1 (1/z1 - 1/z0) + s2 (1/z2 - 1/z0)) with s_k = w_k / A
        inv_a = torch.reciprocal(area)
        q1 = (iz1 - iz0).mul_(inv_a)
        q2 = (iz2 - iz0).mul_(inv_a)
        invz = torch.addcmul(iz0, w1, q1, out=w0).addcmul_(w2, q2).to(torch.float32)
        # outside candidates get 1/z = 0: key = tid < 2**id_bits, which never marks a pixel as covered
        if finite:
            invz.mul_(inside)
        else:  # masked-out triangles with NaN vertices: replace their NaN as well
            invz = torch.where(inside, invz, 0.0)
        key = torch.add(tid, invz.view(torch.int32).to(torch.int64), alpha=1 << self._id_bits)
        pix = torch.add(jx, iy, alpha=w).to(torch.int64)  # exact: < H * W <= 2**24 in float32
        if boff is not None:
            pix += boff
        buf.scatter_reduce_(0, pix.reshape(-1), key.reshape(-1), reduce="amax", include_self=True)


#: Rows of the per-triangle table (see TorchRasterizer.rasterize).
_ROWS = 21

#: Fixed cost of one candidate group, in candidate-pixel tests (a group runs ~60 tensor operations).
_GROUP_COST = 30000

#: Symbolic-perturbation offsets of the pixel centre (see TorchRasterizer._candidates):
#: thr = dx EPS2 - dy EPS1 = (dx - dy EPS1 / EPS2) EPS2 (scaling by a power of two is exact).
_EPS1 = 2.0**-60
_EPS2 = 2.0**-120
_EPS_RATIO = _EPS1 / _EPS2
_EPS_RATIO_INV = _EPS2 / _EPS1

#: Largest image (pixels) with one joint size-class lookup table (int32: 16 MB).
_LUT2D_MAX = 2**22

#: Floor of the (doubled) triangle areas of dropped triangles; a kept snapped triangle has A >= 2**-8.
_MIN_AREA = 2.0**-20


def _centre_range(coords: torch.Tensor, size: int, first: torch.Tensor, count: torch.Tensor) -> None:
    """Pixel-centre range inside ``[min, max]`` of ``coords (3, K)``, clipped to ``[0, size)``.

    Centres sit at ``index + 0.5``; writes the first index (as a float, clamped
    into ``[0, size - 1]``) into ``first`` and last - first into ``count``
    (negative when empty; NaN stays NaN).
    """
    a0, a1, a2 = coords  # (minimum / maximum chains: ~5x faster than aminmax over dim 0 on the CPU)
    lo = torch.minimum(a0, a1)
    torch.minimum(lo, a2, out=lo)
    hi = torch.maximum(a0, a1)
    torch.maximum(hi, a2, out=hi)
    torch.ceil(lo.sub_(0.5).clamp_(min=0.0), out=first)
    torch.sub(hi.sub_(0.5).clamp_(max=size - 1.0).floor_(), first, out=count)
    first.clamp_(max=size - 1.0)


def _finish(soa: torch.Tensor, tri_t32: torch.Tensor, tri_flat: torch.Tensor, pix: torch.Tensor, b: int, h: int,
            w: int) -> RasterOutput:
    """Exact perspective-correct barycentrics and depth of the winning triangle at each covered pixel.

    ``soa (3, B*N)`` the unsnapped screen coordinates (:func:`_soa`), ``tri_t32 (3, T)`` the
    triangles' vertex columns (int32), ``tri_flat (B*H*W,)`` triangle ids (-1 empty), ``pix (P,)``
    the covered pixels.
    """
    dtype, dev = soa.dtype, soa.device
    n = soa.shape[1] // b
    tp = tri_flat.index_select(0, pix)
    bi, px, py = _pixel_centres(pix, h, w, dtype, b)
    if b * n < 2**31:
        rows = torch.empty(3, pix.shape[0], dtype=torch.int32, device=dev)
        for k in range(3):
            torch.index_select(tri_t32[k], 0, tp, out=rows[k])
        if bi is not None:
            rows += (bi * n).to(torch.int32)
    else:
        rows = tri_t32.to(torch.int64).index_select(1, tp)
        if bi is not None:
            rows += bi * n
    coords = soa.index_select(1, rows.reshape(-1)).view(3, 3, -1)
    lam, z = _bary_core(coords, px, py)
    bary = torch.zeros(b * h * w, 3, dtype=dtype, device=dev)
    for k in range(3):
        bary[:, k].scatter_(0, pix, lam[k])
    depth = torch.full((b * h * w,), float("inf"), dtype=dtype, device=dev)
    depth.scatter_(0, pix, (lam[0] * z[0]).addcmul_(lam[1], z[1]).addcmul_(lam[2], z[2]))
    return RasterOutput(tri_id=tri_flat.view(b, h, w), bary=bary.view(b, h, w, 3), depth=depth.view(b, h, w),
                        pixels=pix)


# --------------------------------------------------------------------------------------------------
# nvdiffrast backend
# --------------------------------------------------------------------------------------------------

_NVDR_VERDICT: dict[str, tuple[bool, str]] = {}


def _import_nvdiffrast():
    try:
        import nvdiffrast.torch as dr  # noqa: PLC0415  (lazy: optional GPU dependency)
    except ImportError as exc:
        raise RasterizerUnavailableError(
            "nvdiffrast is not installed; install the 'gpu' extra (pip install 'fitem[gpu]', which pulls "
            "diffrp-nvdiffrast and ninja) on a machine with CUDA, or use backend='torch'"
        ) from exc
    return dr


def _create_context(device: torch.device):
    """A ``RasterizeCudaContext`` on ``device`` or :class:`RasterizerUnavailableError` saying why not."""
    if device.type != "cuda":
        raise RasterizerUnavailableError(
            f"nvdiffrast needs a CUDA device, got {device}; use backend='torch' (or 'auto') on the CPU"
        )
    if not torch.cuda.is_available():
        raise RasterizerUnavailableError(
            "nvdiffrast needs CUDA but torch.cuda.is_available() is False (CPU-only PyTorch build or no GPU); "
            "use backend='torch'"
        )
    dr = _import_nvdiffrast()
    try:
        _load_plugin()
        return dr, dr.RasterizeCudaContext(device=device)
    except Exception as exc:  # compile / driver failures surface as various exception types
        raise RasterizerUnavailableError(
            f"nvdiffrast could not create a CUDA rasterizer context on {device} ({type(exc).__name__}: {exc}); "
            "its CUDA code compiles on first use and needs nvcc, ninja and a CUDA build of PyTorch. "
            "Use backend='torch' instead"
        ) from exc


def _load_plugin() -> None:
    """Build (first use) and load nvdiffrast's CUDA plugin, also under PyTorch ≥ 2.x.

    nvdiffrast's loader builds the plugin with ``torch.utils.cpp_extension`` and then
    calls ``importlib.import_module(name)``; PyTorch's loader no longer registers the
    built module in ``sys.modules`` nor puts its folder on ``sys.path``, so that import
    fails with ``ModuleNotFoundError`` after a good build (seen on an H200 with torch
    2.11+cu130). Here the built module is loaded from its build folder, registered, and
    nvdiffrast's loader is asked again.
    """
    import sys  # noqa: PLC0415

    from nvdiffrast.torch import ops  # noqa: PLC0415  (lazy: optional GPU dependency)
    from torch.utils import cpp_extension  # noqa: PLC0415

    try:
        ops._get_plugin(gl=False)
    except ModuleNotFoundError as exc:
        name = exc.name or ""
        if not name.startswith("nvdiffrast_plugin"):
            raise
        build = cpp_extension._get_build_directory(name, False)
        sys.modules[name] = cpp_extension._import_module_from_library(name, build, True)
        ops._get_plugin(gl=False)


def _normalise_cuda(dev: torch.device) -> torch.device:
    """``cuda`` → ``cuda:<current>`` when CUDA is available (so verdicts and contexts are per GPU)."""
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def nvdiffrast_available(device: torch.device | str | None = None) -> bool:
    """Whether nvdiffrast can rasterize on ``device`` (default ``cuda``); probed once per device, cached.

    The probe creates a ``RasterizeCudaContext`` (which compiles nvdiffrast's CUDA
    code on first use) and rasterizes one triangle.
    """
    dev = _normalise_cuda(torch.device(device) if device is not None else torch.device("cuda"))
    key = str(dev)
    if key not in _NVDR_VERDICT:
        try:
            dr, ctx = _create_context(dev)
            pos = torch.tensor([[[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 1.0]]],
                               device=dev)
            tri = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=dev)
            rast, _ = dr.rasterize(ctx, pos, tri, (8, 8), grad_db=False)
            if not bool((rast[..., 3] > 0).any()):
                raise RasterizerUnavailableError("nvdiffrast rasterized nothing in its self-test")
            _NVDR_VERDICT[key] = (True, "ok")
        except RasterizerUnavailableError as exc:
            _NVDR_VERDICT[key] = (False, str(exc))
        except Exception as exc:  # a broken CUDA setup can fail in many ways; record why
            _NVDR_VERDICT[key] = (False, f"nvdiffrast self-test failed: {type(exc).__name__}: {exc}")
    return _NVDR_VERDICT[key][0]


class NvdiffrastRasterizer(Rasterizer):
    """nvdiffrast (CUDA) backend: ``RasterizeCudaContext`` created once here and reused.

    Screen coordinates are turned into clip coordinates consistent with
    :meth:`fitem.render.camera.Camera.to_clip`: ``x_ndc = 2u/W - 1``,
    ``y_ndc = 2v/H - 1`` (nvdiffrast's row 0 = image row 0), ``w = z`` and depth
    mapped from ``[near, far]`` to ``[-1, 1]``. nvdiffrast does not cull, so
    the triangles that :class:`TorchRasterizer` would drop (back-facing, outside
    ``(near, far)``, non-finite) are removed before rasterizing (range mode, one
    range per batch item) and the ids are mapped back. nvdiffrast's output
    ``(u, v, z/w, id + 1)`` gives the weights ``(u, v, 1 - u - v)`` of the
    triangle's vertices 0, 1, 2; depth is ``Σ λ_k z_k``.

    Raises:
        RasterizerUnavailableError: no CUDA, nvdiffrast missing, or its context fails.
    """

    backend = "nvdiffrast"

    def __init__(
        self,
        triangles: torch.Tensor,
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        *,
        near: float = DEFAULT_NEAR,
        far: float = DEFAULT_FAR,
        subpixel_bits: int | None = DEFAULT_SUBPIXEL_BITS,
    ) -> None:
        if subpixel_bits != DEFAULT_SUBPIXEL_BITS:
            raise ConfigError(f"nvdiffrast always snaps to 1/16 pixel (subpixel_bits={DEFAULT_SUBPIXEL_BITS}), "
                              f"got subpixel_bits={subpixel_bits!r}")
        dev = torch.device(device) if device is not None else (
            triangles.device if isinstance(triangles, torch.Tensor) and triangles.device.type == "cuda"
            else torch.device("cuda"))
        dev = _normalise_cuda(dev)
        dr, ctx = _create_context(dev)  # raises RasterizerUnavailableError before anything touches CUDA
        super().__init__(triangles, image_size, dev, near=near, far=far, subpixel_bits=subpixel_bits)
        self._dr, self._ctx = dr, ctx
        self._tri32 = self.triangles.to(torch.int32)
        self._tri_t32 = self._tri32.t().contiguous()  # (3, T) for the barycentrics

    @torch.no_grad()
    def rasterize(self, screen: torch.Tensor) -> RasterOutput:
        """Rasterize ``screen (B, N, 3)`` on the GPU → :class:`RasterOutput` (no gradient)."""
        self._check_screen(screen)
        s = screen.detach()
        b, n = s.shape[:2]
        h, w = self.height, self.width
        t = self.n_triangles
        keep = self.front_facing(s)  # (B, T)
        counts = keep.sum(1).to("cpu", torch.int32)
        if int(counts.sum()) == 0:
            return _empty(b, h, w, s.dtype, s.device)
        sel = torch.nonzero(keep.reshape(-1)).squeeze(1)  # ascending: batch-major
        bid = torch.div(sel, t, rounding_mode="floor")
        tri = self._tri32[sel % t] + (bid * n).to(torch.int32).unsqueeze(1)
        starts = torch.cumsum(counts, 0) - counts
        ranges = torch.stack([starts, counts], 1).to(torch.int32)
        empty = torch.nonzero(counts == 0).squeeze(1)
        if empty.numel():  # batch items with nothing to draw get one degenerate triangle (draws nothing)
            dummy = (empty.to(s.device, torch.int32) * n).unsqueeze(1).expand(-1, 3)
            ranges[empty, 0] = len(sel) + torch.arange(len(empty), dtype=torch.int32)
            ranges[empty, 1] = 1
            tri = torch.cat([tri, dummy])
        tri = tri.contiguous()
        ranges = ranges.contiguous()
        u, v, z = s.to(torch.float32).unbind(-1)
        nf = self.near, self.far
        zc = (nf[1] + nf[0]) / (nf[1] - nf[0]) * z - 2.0 * nf[1] * nf[0] / (nf[1] - nf[0])
        pos = torch.stack([(2.0 * u / w - 1.0) * z, (2.0 * v / h - 1.0) * z, zc, z], -1)
        pos = pos.reshape(b * n, 4).contiguous()
        rast, _ = self._dr.rasterize(self._ctx, pos, tri, (h, w), ranges=ranges, grad_db=False)
        ids = _float_to_triidx(rast[..., 3]).reshape(-1)  # 1-based into `tri`, 0 = empty
        covered = (ids > 0) & (ids <= len(sel))
        orig = sel[(ids - 1).clamp(0, len(sel) - 1)] % t
        tri_flat = torch.where(covered, orig, torch.full_like(orig, -1))
        # nvdiffrast decides coverage and the depth test; barycentrics and depth come from the same exact
        # formula as the PyTorch backend's (nvdiffrast's own clamp b0, b1 to [0, 1], which differs from
        # the exact value on pixels that snapping covers: on 1.5-3 % of pixels, by up to 0.04 on
        # triangles of >= 1 px², measured on an H200)
        return _finish(_soa(s), self._tri_t32, tri_flat, covered_pixels(tri_flat), b, h, w)


def _float_to_triidx(x: torch.Tensor) -> torch.Tensor:
    """nvdiffrast's float-encoded triangle ids (exact integers up to 2**24, bit-offset above) → int64."""
    small = x.to(torch.int64)
    big = x.view(torch.int32).to(torch.int64) - 0x4A800000
    return torch.where(x <= 16777216.0, small, big)


# --------------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------------


def make_rasterizer(
    triangles: torch.Tensor,
    image_size: tuple[int, int],
    backend: str = "auto",
    device: torch.device | str | None = None,
    *,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
    subpixel_bits: int | None = DEFAULT_SUBPIXEL_BITS,
) -> Rasterizer:
    """Build a rasterizer once for a mesh topology, image size and device.

    Args:
        triangles: ``(T, 3)`` int64, counter-clockwise from outside.
        image_size: ``(H, W)``.
        backend: ``"auto"`` (nvdiffrast when the device is CUDA and nvdiffrast
            works there — probed once per device and cached — else torch),
            ``"torch"`` or ``"nvdiffrast"``.
        device: default: the device of ``triangles``.
        near, far: clip planes in mm (use the camera's).
        subpixel_bits: vertex snapping for coverage (see :class:`Rasterizer`); 4 matches nvdiffrast.

    Returns:
        A :class:`Rasterizer`; its ``backend`` attribute records the choice
        (also logged at INFO level).

    Raises:
        ConfigError: unknown backend, bad image size.
        RasterizerUnavailableError: ``backend="nvdiffrast"`` where it cannot run.

    Example:
        >>> from fitem.render.meshes import icosphere
        >>> _, tri = icosphere(1)
        >>> make_rasterizer(tri, (64, 64), backend="torch").backend
        'torch'
    """
    if backend not in _BACKENDS:
        raise ConfigError(f"unknown rasterizer backend {backend!r}; choose one of {list(_BACKENDS)}")
    dev = torch.device(device) if device is not None else (
        triangles.device if isinstance(triangles, torch.Tensor) else torch.device("cpu"))
    kw = dict(near=near, far=far, subpixel_bits=subpixel_bits)
    if backend == "torch":
        rast: Rasterizer = TorchRasterizer(triangles, image_size, dev, **kw)
        reason = "requested"
    elif backend == "nvdiffrast":
        rast = NvdiffrastRasterizer(triangles, image_size, dev, **kw)
        reason = "requested"
    elif dev.type == "cuda" and nvdiffrast_available(dev):
        dev = _normalise_cuda(dev)
        rast = NvdiffrastRasterizer(triangles, image_size, dev, **kw)
        reason = "auto: CUDA device and nvdiffrast work"
    else:
        rast = TorchRasterizer(triangles, image_size, dev, **kw)
        if dev.type != "cuda":
            reason = f"auto: device {dev} is not CUDA"
        else:
            why = _NVDR_VERDICT.get(str(_normalise_cuda(dev)), (False, "?"))[1]
            reason = f"auto: nvdiffrast unavailable ({why})"
    logger.info("rasterizer backend %s on %s, %dx%d (%s)", rast.backend, rast.device, rast.height, rast.width,
                reason)
    return rast
