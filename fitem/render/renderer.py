"""``render``: pose → project → rasterize → barycentrics → shade (Gouraud) → interpolate.

The composition (each step a documented function of its own):

1. ``to_camera`` (:mod:`fitem.render.camera`): model space → OpenCV camera space;
2. ``camera.project``: → ``screen (B, N, 3)`` = ``(u, v)`` pixels and depth ``z`` mm;
3. ``rasterizer.rasterize(screen)``: which triangle covers each pixel (no gradient);
4. :func:`~fitem.render.interpolate.barycentrics`: perspective-correct
   barycentrics recomputed *differentiably* from ``screen`` for that fixed
   ``tri_id``;
5. per-vertex normals in view space (:func:`~fitem.render.shading.vertex_normals`
   of the model-space mesh, rotated by ``R``), per-vertex colours as
   :func:`~fitem.render.shading.shade` computes them (Gouraud: shade per
   vertex, then interpolate);
6. :func:`~fitem.render.interpolate.interpolate` the colours at the pixels.

For a fixed rasterization the image is differentiable (autograd) w.r.t. the
vertices (through the barycentrics *and* the normals), the albedo, the light,
the pose and the colour transform.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fitem.errors import ConfigError, ShapeError
from fitem.render._checks import check_finite, check_tensor
from fitem.render.camera import Camera, rotation_matrix, to_camera
from fitem.render.interpolate import (
    _bary_core,
    _gather_soa,
    _pixel_centres,
    _soa,
    _vertex_rows,
    _weighted,
)
from fitem.render.raster import Rasterizer, RasterOutput
from fitem.render.shading import _shade_cf, vertex_normals

__all__ = ["RenderOutput", "render", "render_params"]


@dataclass(frozen=True)
class RenderOutput:
    """Everything :func:`render` computed (always with a leading batch dimension).

    Attributes:
        image: ``(B, H, W, 3)`` rendered colours (not clipped), zeros outside the face.
        region: ``(B, H, W)`` bool, pixels covered by the face (``raster.mask``).
        raster: the :class:`~fitem.render.raster.RasterOutput` used (its ``bary``
            is the rasterizer's, without gradient).
        screen: ``(B, N, 3)`` projected vertices: ``(u, v)`` pixels, depth ``z`` mm.
        vertex_colours: ``(B, N, 3)`` shaded per-vertex colours.
        normals_view: ``(B, N, 3)`` unit vertex normals in view space.
        bary: ``(B, H, W, 3)`` the barycentrics used for the image (differentiable
            w.r.t. the vertices and pose when those require grad).
    """

    image: torch.Tensor
    region: torch.Tensor
    raster: RasterOutput
    screen: torch.Tensor
    vertex_colours: torch.Tensor
    normals_view: torch.Tensor
    bary: torch.Tensor


def _batch(name: str, t, base_dims: int, batch: int | None, dtype, device) -> torch.Tensor:
    """Add a leading batch dimension to an unbatched input and broadcast a batch of 1."""
    check_tensor(name, t)
    if not t.dtype.is_floating_point:
        raise ShapeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if t.dim() == base_dims:
        t = t.unsqueeze(0)
    if t.dim() != base_dims + 1:
        raise ShapeError(f"{name}: expected {base_dims} dims (unbatched) or {base_dims + 1} (batched), "
                         f"got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] != batch:
        if t.shape[0] != 1:
            raise ShapeError(f"{name}: batch size {t.shape[0]} does not match the batch size {batch}")
        t = t.expand(batch, *t.shape[1:])
    return t.to(dtype=dtype, device=device)


def render(
    vertices: torch.Tensor,
    albedo: torch.Tensor,
    light: torch.Tensor,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    camera: Camera,
    rasterizer: Rasterizer,
    *,
    gain: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
    raster: RasterOutput | None = None,
) -> RenderOutput:
    """Render a shaded mesh (Lambertian SH, Gouraud) through a pinhole camera.

    Args:
        vertices: ``(B, N, 3)`` model-space positions in mm (or ``(N, 3)``).
        albedo: ``(B, N, 3)`` per-vertex RGB reflectance in [0, 1] (or ``(N, 3)``).
        light: ``(B, 9, 3)`` SH light (or ``(9, 3)``), see :mod:`fitem.render.shading`.
        rotation: ``(B, 3)`` Euler angles (pitch, yaw, roll) in radians (or ``(3,)``).
        translation: ``(B, 3)`` camera-space translation in mm (or ``(3,)``).
        camera: the :class:`~fitem.render.camera.Camera`; its image size must
            match the rasterizer's.
        rasterizer: built once for the mesh's triangles (:func:`make_rasterizer`).
        gain, offset: optional per-channel colour transform ``(B, 3)`` / ``(3,)``:
            ``colour = gain * albedo * shading + offset``.
        raster: reuse a rasterization (e.g. to keep visibility fixed while
            differentiating); by default the mesh is rasterized here.

    Batching: unbatched inputs get a leading batch dimension, and inputs with
    batch size 1 (or unbatched) are broadcast to the largest batch size among
    the inputs (e.g. one mesh under B poses). The output always has the batch
    dimension. Everything follows ``vertices``' dtype and device.

    Returns:
        :class:`RenderOutput`.

    Raises:
        ShapeError: wrong shapes or dtypes. InvalidInputError: NaN / infinite
        vertices. ConfigError: camera and rasterizer image sizes differ.

    Example:
        >>> from fitem.render import Camera, make_rasterizer, render
        >>> from fitem.render.meshes import icosphere
        >>> from fitem.params import AMBIENT_LIGHT
        >>> v, tri = icosphere(3, radius=80.0)
        >>> cam = Camera.default(64)
        >>> rast = make_rasterizer(tri, cam.image_size, backend="torch")
        >>> light = torch.zeros(9, 3); light[0] = AMBIENT_LIGHT
        >>> out = render(v, torch.full_like(v, 0.5), light, torch.zeros(3), torch.tensor([0., 0, 1000]), cam, rast)
        >>> out.image.shape, round(float(out.image[0, 32, 32, 0]), 3)
        (torch.Size([1, 64, 64, 3]), 0.4)
    """
    check_tensor("vertices", vertices)
    if vertices.dim() not in (2, 3) or vertices.shape[-1] != 3:
        raise ShapeError(f"vertices: expected shape (B, N, 3) or (N, 3), got {tuple(vertices.shape)}")
    check_finite("vertices", vertices)
    n = vertices.shape[-2]
    dtype, dev = vertices.dtype, vertices.device
    # the batch size: the largest leading dimension among the batched inputs
    inputs = {"vertices": (vertices, 2), "albedo": (albedo, 2), "light": (light, 2), "rotation": (rotation, 1),
              "translation": (translation, 1), "gain": (gain, 1), "offset": (offset, 1)}
    b = 1
    for name, (t, base) in inputs.items():
        if t is None:
            continue
        check_tensor(name, t)
        if t.dim() == base + 1 and t.shape[0] != 1:
            if b != 1 and t.shape[0] != b:
                raise ShapeError(f"{name}: batch size {t.shape[0]} does not match the other inputs' batch size {b}")
            b = int(t.shape[0])
    vertices = _batch("vertices", vertices, 2, b, dtype, dev)
    albedo = _batch("albedo", albedo, 2, b, dtype, dev)
    if albedo.shape[1:] != (n, 3):
        raise ShapeError(f"albedo: expected shape ({b}, {n}, 3) to match the vertices, got {tuple(albedo.shape)}")
    light = _batch("light", light, 2, b, dtype, dev)
    if light.shape[1:] != (9, 3):
        raise ShapeError(f"light: expected shape ({b}, 9, 3), got {tuple(light.shape)}")
    rotation = _batch("rotation", rotation, 1, b, dtype, dev)
    translation = _batch("translation", translation, 1, b, dtype, dev)
    for name, t in (("rotation", rotation), ("translation", translation)):
        if t.shape[1] != 3:
            raise ShapeError(f"{name}: expected shape ({b}, 3) or (3,), got {tuple(t.shape)}")
    if gain is not None:
        gain = _batch("gain", gain, 1, b, dtype, dev)
    if offset is not None:
        offset = _batch("offset", offset, 1, b, dtype, dev)
    if not isinstance(camera, Camera):
        raise ConfigError(f"camera: expected a fitem.render.Camera, got {type(camera).__name__}")
    if not isinstance(rasterizer, Rasterizer):
        raise ConfigError(f"rasterizer: expected a fitem.render.Rasterizer, got {type(rasterizer).__name__}; "
                          "build one with make_rasterizer(triangles, camera.image_size)")
    if tuple(camera.image_size) != tuple(rasterizer.image_size):
        raise ConfigError(
            f"camera image size {camera.image_size} differs from the rasterizer's {rasterizer.image_size}; "
            "build the rasterizer with make_rasterizer(triangles, camera.image_size)"
        )
    triangles = rasterizer.triangles
    if n < rasterizer.min_vertices:
        raise ShapeError(f"vertices: the rasterizer's triangles index {rasterizer.min_vertices} vertices, "
                         f"got {n}; build the rasterizer for this mesh")

    screen = camera.project(to_camera(vertices, rotation, translation))
    if raster is None:
        raster = rasterizer.rasterize(screen)
    elif raster.tri_id.shape != (b, *rasterizer.image_size):
        raise ShapeError(f"raster: expected tri_id of shape {(b, *rasterizer.image_size)}, "
                         f"got {tuple(raster.tri_id.shape)}")
    h, w = rasterizer.image_size
    tri_flat = raster.tri_id.reshape(-1)
    pix = raster.covered()
    bi, px, py = _pixel_centres(pix, h, w, dtype, b)
    rows = _vertex_rows(triangles, tri_flat, pix, bi, n)  # (3, P) rows of the (B*N) vertex arrays
    if screen.requires_grad:  # recompute the barycentrics differentiably (same formula as the rasterizer's)
        lam, _ = _bary_core(_gather_soa(_soa(screen), rows), px, py)
        bary = torch.zeros(b * h * w, 3, dtype=dtype, device=dev).index_copy(0, pix, torch.stack(lam, 1))
        bary = bary.view(b, h, w, 3)
    else:
        bary = raster.bary.to(dtype)
        flat, pix3 = bary.reshape(-1), pix * 3
        lam = [flat.index_select(0, pix3 + k) for k in range(3)]  # 1-D gathers (row gathers are slow)
    normals_view = vertex_normals(vertices, triangles) @ rotation_matrix(rotation).transpose(-1, -2)
    # shading channels-first (B, 3, N): the same arithmetic as shade(), without interleaving copies
    colours_cf = _shade_cf(torch.stack(albedo.unbind(-1), 1), normals_view, light, gain, offset)
    colours = colours_cf.transpose(1, 2)
    soa = colours_cf[0] if b == 1 else colours_cf.transpose(0, 1).reshape(3, b * n)
    vals = _weighted(_gather_soa(soa, rows), lam)
    image = torch.zeros(b * h * w, 3, dtype=dtype, device=dev).index_copy(0, pix, vals).view(b, h, w, 3)
    return RenderOutput(
        image=image,
        region=raster.mask,
        raster=raster,
        bary=bary,
        screen=screen,
        vertex_colours=colours,
        normals_view=normals_view,
    )


def render_params(model, params, camera: Camera, rasterizer: Rasterizer, **kwargs) -> RenderOutput:
    """Render a :class:`~fitem.models.MorphableModel` instance for :class:`~fitem.params.FaceParams`.

    ``model.instance(params.shape, params.expression, params.colour)`` then
    :func:`render` with the light and pose blocks; ``kwargs`` go to :func:`render`
    (``gain``, ``offset``, ``raster``).

    Example:
        >>> params = FaceParams.for_model(model)                                  # doctest: +SKIP
        >>> rast = make_rasterizer(model.tensors().triangles, camera.image_size)  # doctest: +SKIP
        >>> out = render_params(model, params, camera, rast)                      # doctest: +SKIP
    """
    vertices, albedo = model.instance(params.shape, params.expression, params.colour)
    return render(vertices, albedo, params.light, params.rotation, params.translation, camera, rasterizer,
                  **kwargs)
