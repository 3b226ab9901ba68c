"""Pictures shared by the CLI, notebooks and docs: overlays, side-by-sides, contact sheets, mesh views,
EM history and uncertainty maps.

Image helpers return uint8 RGB arrays (``(H, W, 3)``) so that the CLI can write them with
:func:`fitem._files.png_bytes` and notebooks can show them with ``plt.imshow``. matplotlib is imported
inside the functions that need it (never at package import), so ``import fitem`` works without a display.

Example:
    >>> import fitem, fitem.viz as viz, skimage.data           # doctest: +SKIP
    >>> img = skimage.data.astronaut()                          # doctest: +SKIP
    >>> res = fitem.fit(img)                                    # doctest: +SKIP
    >>> viz.side_by_side([img, res.overlay(img)], titles=["input", "mask"])  # doctest: +SKIP
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from fitem.errors import InvalidInputError, ShapeError

__all__ = [
    "to_uint8",
    "mask_overlay",
    "side_by_side",
    "contact_sheet",
    "draw_points",
    "crop_box",
    "mesh_view",
    "plot_em_history",
    "uncertainty_image",
    "show_uncertainty",
]

_WHITE = 255


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] or uint8 RGB → uint8 RGB (other dtypes are clipped to [0, 1] first).

    Example:
        >>> to_uint8(np.full((2, 2, 3), 0.5)).dtype
        dtype('uint8')
    """
    img = np.asarray(image)
    if img.dtype == np.uint8:
        return img
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any of (H, W), (H, W, 1), (H, W, 3), (H, W, 4), bool/uint8/float → uint8 (H, W, 3)."""
    img = to_uint8(np.asarray(image))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, -1)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ShapeError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {np.shape(image)}")
    return np.ascontiguousarray(img)


def mask_overlay(image: np.ndarray, mask: np.ndarray, occlusion: np.ndarray | None = None,
                 alpha: float = 0.45) -> np.ndarray:
    """The image with ``mask`` tinted green and ``occlusion`` tinted red.

    Args:
        image: ``(H, W, 3)`` uint8 or float [0, 1] RGB.
        mask: ``(H, W)`` bool, e.g. :attr:`FitResult.mask` (visible face).
        occlusion: ``(H, W)`` bool or None, e.g. :attr:`FitResult.occlusion`.
        alpha: tint strength in [0, 1].

    Returns:
        uint8 ``(H, W, 3)``.

    Example:
        >>> mask_overlay(np.zeros((4, 4, 3)), np.eye(4, dtype=bool))[0, 0]
        array([ 18,  99,  27], dtype=uint8)
    """
    out = to_uint8(image).astype(np.float32)
    green = np.array([40, 220, 60], np.float32)
    red = np.array([235, 40, 40], np.float32)
    m = np.asarray(mask, bool)
    if m.shape != out.shape[:2]:
        raise ShapeError(f"mask: expected shape {out.shape[:2]} (the image's), got {m.shape}")
    out[m] = (1 - alpha) * out[m] + alpha * green
    if occlusion is not None:
        o = np.asarray(occlusion, bool)
        if o.shape != out.shape[:2]:
            raise ShapeError(f"occlusion: expected shape {out.shape[:2]} (the image's), got {o.shape}")
        out[o] = (1 - alpha) * out[o] + alpha * red
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _fit_text(text: str, width: int, height: int) -> tuple[float, int]:
    """cv2 Hershey font scale and thickness so that ``text`` fits a ``width × height`` strip."""
    import cv2

    scale = max(0.3, height / 34.0)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if tw > width - 4:
        scale *= (width - 4) / max(tw, 1)
    return max(scale, 0.2), 1


def _title_strip(text: str, width: int, height: int) -> np.ndarray:
    import cv2

    strip = np.full((height, width, 3), _WHITE, np.uint8)
    if text:
        scale, thick = _fit_text(text, width, height)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        org = (max(2, (width - tw) // 2), (height + th) // 2)
        cv2.putText(strip, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return strip


def _as_list(images: tuple) -> list:
    if len(images) == 1 and isinstance(images[0], (list, tuple)):
        return list(images[0])
    return list(images)


def side_by_side(*images: np.ndarray | Sequence[np.ndarray], titles: Sequence[str] | None = None,
                 height: int | None = None, gap: int = 4) -> np.ndarray:
    """Images resized to one height and joined left to right with a white gap, optionally titled.

    Args:
        images: the panels, as separate arguments or one list: ``(H, W)``/``(H, W, 3)``/``(H, W, 4)``,
            uint8, bool or float [0, 1].
        titles: one short ASCII caption per panel (drawn above it), or None.
        height: common panel height in pixels (default: the tallest panel's).
        gap: white pixels between panels.

    Returns:
        uint8 ``(height [+ title strip], W_total, 3)``.

    Example:
        >>> side_by_side([np.zeros((10, 20, 3)), np.ones((5, 5))], gap=2).shape
        (10, 32, 3)
    """
    import cv2

    ims = [_rgb(i, f"images[{k}]") for k, i in enumerate(_as_list(images))]
    if not ims:
        raise InvalidInputError("side_by_side needs at least one image")
    if titles is not None and len(titles) != len(ims):
        raise InvalidInputError(f"side_by_side: {len(ims)} images but {len(titles)} titles")
    h = int(height or max(i.shape[0] for i in ims))
    resized = [i if i.shape[0] == h else
               cv2.resize(i, (max(1, round(i.shape[1] * h / i.shape[0])), h), interpolation=cv2.INTER_AREA)
               for i in ims]
    if titles is not None:
        strip_h = max(16, round(0.11 * h))
        resized = [np.concatenate([_title_strip(str(t), im.shape[1], strip_h), im], axis=0)
                   for t, im in zip(titles, resized)]
    parts = []
    for k, im in enumerate(resized):
        if k:
            parts.append(np.full((im.shape[0], gap, 3), _WHITE, np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=1)


def contact_sheet(images: Sequence[np.ndarray], ncols: int, *, cell: int | tuple[int, int] = 160,
                  titles: Sequence[str] | None = None, gap: int = 4) -> np.ndarray:
    """A grid of images, each scaled to fit a ``cell`` (aspect kept, centred on white), row by row.

    Args:
        images: ``(H, W[, 3|4])`` images (uint8, bool or float [0, 1]); any sizes.
        ncols: panels per row (≥ 1).
        cell: cell size in pixels, an int (square) or ``(height, width)``.
        titles: one short ASCII caption per image, drawn above it, or None.
        gap: white pixels between cells.

    Returns:
        uint8 ``(rows · (cell_h [+ strip]) + (rows - 1) · gap, ncols · cell_w + (ncols - 1) · gap, 3)``
        with ``rows = ceil(len(images) / ncols)``; empty cells stay white.

    Example:
        >>> contact_sheet([np.zeros((8, 8))] * 5, ncols=2, cell=10, gap=1).shape
        (32, 21, 3)
    """
    import cv2

    ims = [_rgb(i, f"images[{k}]") for k, i in enumerate(images)]
    if not ims:
        raise InvalidInputError("contact_sheet needs at least one image")
    if not isinstance(ncols, (int, np.integer)) or isinstance(ncols, bool) or ncols < 1:
        raise InvalidInputError(f"contact_sheet: ncols must be an integer ≥ 1, got {ncols!r}")
    if titles is not None and len(titles) != len(ims):
        raise InvalidInputError(f"contact_sheet: {len(ims)} images but {len(titles)} titles")
    ch, cw = (cell, cell) if isinstance(cell, (int, np.integer)) else (int(cell[0]), int(cell[1]))
    if ch < 1 or cw < 1:
        raise InvalidInputError(f"contact_sheet: cell must be positive, got {cell!r}")
    strip_h = max(16, round(0.11 * ch)) if titles is not None else 0
    rows = math.ceil(len(ims) / ncols)
    ncols = int(min(ncols, len(ims)))
    H = rows * (ch + strip_h) + (rows - 1) * gap
    W = ncols * cw + (ncols - 1) * gap
    sheet = np.full((H, W, 3), _WHITE, np.uint8)
    for k, im in enumerate(ims):
        r, c = divmod(k, ncols)
        y0, x0 = r * (ch + strip_h + gap), c * (cw + gap)
        if titles is not None:
            sheet[y0:y0 + strip_h, x0:x0 + cw] = _title_strip(str(titles[k]), cw, strip_h)
        s = min(ch / im.shape[0], cw / im.shape[1])
        nh, nw = max(1, round(im.shape[0] * s)), max(1, round(im.shape[1] * s))
        small = cv2.resize(im, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        oy, ox = y0 + strip_h + (ch - nh) // 2, x0 + (cw - nw) // 2
        sheet[oy:oy + nh, ox:ox + nw] = small
    return sheet


def draw_points(image: np.ndarray, points: np.ndarray, colour=(255, 0, 0), radius: int = 2) -> np.ndarray:
    """Draw ``(K, 2)`` continuous pixel coordinates (centre of pixel j at j + 0.5) as dots (uint8 copy).

    Example:
        >>> draw_points(np.zeros((9, 9, 3)), np.array([[4.5, 4.5]]))[4, 4]
        array([255,   0,   0], dtype=uint8)
    """
    import cv2

    out = to_uint8(image).copy()
    for x, y in np.asarray(points, np.float64):
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(out, (int(round(x - 0.5)), int(round(y - 0.5))), radius, colour, -1, lineType=cv2.LINE_AA)
    return out


def crop_box(region: np.ndarray, margin: float = 0.3, square: bool = True) -> tuple[slice, slice]:
    """Row and column slices around the True pixels of ``region``, grown by ``margin`` × their extent.

    Args:
        region: ``(H, W)`` bool, e.g. :attr:`FitResult.face_region`.
        margin: extra space on each side as a fraction of the box's larger side.
        square: make the box square (before clipping to the image).

    Returns:
        ``(rows, cols)`` slices clipped to the image; the whole image if ``region`` is empty.

    Example:
        >>> r = np.zeros((10, 10), bool); r[4:6, 4:6] = True
        >>> crop_box(r, margin=0.5)
        (slice(3, 7, None), slice(3, 7, None))
    """
    reg = np.asarray(region, bool)
    if reg.ndim != 2:
        raise ShapeError(f"region: expected shape (H, W), got {reg.shape}")
    if not reg.any():
        return slice(0, reg.shape[0]), slice(0, reg.shape[1])
    ys, xs = np.nonzero(reg)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    hh, hw = (y1 - y0) / 2, (x1 - x0) / 2
    if square:
        hh = hw = max(hh, hw)
    grow = margin * 2 * max(hh, hw)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    rows = slice(int(max(0, np.floor(cy - hh - grow))), int(min(reg.shape[0], np.ceil(cy + hh + grow))))
    cols = slice(int(max(0, np.floor(cx - hw - grow))), int(min(reg.shape[1], np.ceil(cx + hw + grow))))
    return rows, cols


# --------------------------------------------------------------- rendering helpers
def _rasterize(screen: np.ndarray, triangles: np.ndarray, shape: tuple[int, int], near: float, far: float):
    """Rasterize ``(N, 3)`` (u, v, z) with fitem's pure-PyTorch rasterizer → (tri_id, bary) tensors (1, H, W...)."""
    import torch

    from fitem.render.raster import make_rasterizer

    tri = torch.as_tensor(np.asarray(triangles, np.int64))
    rast = make_rasterizer(tri, shape, backend="torch", device="cpu", near=near, far=far)
    out = rast.rasterize(torch.as_tensor(np.asarray(screen, np.float32))[None])
    return tri, out


def _interpolate(values: np.ndarray, tri, raster) -> np.ndarray:
    """Per-vertex ``(N, C)`` values → ``(H, W, C)`` float32 (zeros where no triangle)."""
    import torch

    from fitem.render.interpolate import interpolate

    attr = torch.as_tensor(np.asarray(values, np.float32))[None]
    return interpolate(attr, tri, raster.tri_id, raster.bary)[0].numpy()


def _check_mesh(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices, np.float64)
    t = np.asarray(triangles)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ShapeError(f"vertices: expected shape (N, 3), got {v.shape}")
    if t.ndim != 2 or t.shape[1] != 3 or len(t) == 0:
        raise ShapeError(f"triangles: expected shape (T, 3), got {t.shape}")
    if not np.all(np.isfinite(v)):
        raise InvalidInputError("vertices contain NaN or inf; a failed fit has no mesh to show")
    return v, t.astype(np.int64)


def mesh_view(vertices: np.ndarray, triangles: np.ndarray, colours: np.ndarray | None = None, ax: Any = None, *,
              space: str = "camera", yaw_deg: float = 35.0, pitch_deg: float = 0.0, size: int = 320,
              light: bool = True, background: int = _WHITE) -> np.ndarray:
    """A turned, z-buffered view of a mesh, rendered by fitem's own rasterizer.

    The mesh is centred, turned by ``yaw_deg`` (about the vertical axis; positive turns the nose
    towards the viewer's right, showing the subject's right cheek) and ``pitch_deg`` (about the
    horizontal axis; positive turns the nose down), the pose convention of
    :func:`fitem.render.camera.rotation_matrix`, and seen
    from far away (near-orthographic: distance 20× the mesh's radius). Colours are shaded with a
    simple Lambertian light from the viewer so that the geometry reads; pass ``light=False`` to show
    the colours as they are (e.g. a colour map of per-vertex values).

    Why not ``mpl_toolkits.mplot3d``: its ``plot_trisurf`` sorts whole triangles by depth (painter's
    algorithm), which draws the far side of a face mesh over the near side, and it takes seconds for
    ten thousand triangles; this view uses the same rasterizer as the fit (exact per-pixel depth test,
    back faces culled) and returns an array that contact sheets and the CLI can reuse.

    Args:
        vertices: ``(N, 3)`` positions, mm. ``space="camera"``: OpenCV camera space (+y down, +z away
            from the camera), as :attr:`FitResult.vertices`; the view at zero turn is the camera's.
            ``space="model"``: model space (+y up, +z out of the face), as ``model.instance()``
            returns; zero turn is a frontal view.
        triangles: ``(T, 3)`` int vertex indices, counter-clockwise from outside.
        colours: ``(N, 3)`` RGB in [0, 1] per vertex, or None (light grey).
        ax: a matplotlib Axes to draw into (axis hidden), or None.
        space: ``"camera"`` or ``"model"`` (see ``vertices``).
        yaw_deg, pitch_deg: extra turn in degrees.
        size: output side in pixels.
        light: shade the colours with a light from the viewer.
        background: grey level (0-255) of empty pixels.

    Returns:
        uint8 ``(size, size, 3)``.

    Example:
        >>> res = fitem.fit(img)                                                  # doctest: +SKIP
        >>> pic = mesh_view(res.vertices, res.triangles, res.vertex_colours)       # doctest: +SKIP
    """
    import torch

    from fitem.render.camera import rotation_matrix
    from fitem.render.shading import vertex_normals

    v, tri = _check_mesh(vertices, triangles)
    if space not in ("camera", "model"):
        raise InvalidInputError(f"mesh_view: space must be 'camera' or 'model', got {space!r}")
    if not (isinstance(size, (int, np.integer)) and size >= 8):
        raise InvalidInputError(f"mesh_view: size must be an integer ≥ 8, got {size!r}")
    if tri.max() >= len(v) or tri.min() < 0:
        raise ShapeError(f"triangles index vertices in [{tri.min()}, {tri.max()}] but there are {len(v)} vertices")
    if colours is None:
        col = np.full((len(v), 3), 0.78, np.float32)
    else:
        col = np.asarray(colours, np.float32)
        if col.shape != (len(v), 3):
            raise ShapeError(f"colours: expected shape ({len(v)}, 3), got {col.shape}")
    # to view space: +y up, +z towards the viewer (camera space is FLIP = diag(1, -1, -1) of it)
    view = v * np.array([1.0, -1.0, -1.0]) if space == "camera" else v.copy()
    used = np.unique(tri)
    lo, hi = view[used].min(0), view[used].max(0)
    view -= (lo + hi) / 2
    radius = float(np.linalg.norm(view[used], axis=1).max())
    if not radius > 0:
        raise InvalidInputError("mesh_view: all vertices coincide; nothing to show")
    turn = rotation_matrix(torch.tensor([math.radians(pitch_deg), math.radians(yaw_deg), 0.0],
                                        dtype=torch.float64)).numpy()
    view = view @ turn.T
    dist = 20.0 * radius
    focal = 0.46 * size * dist / radius
    cam = view * np.array([1.0, -1.0, -1.0]) + np.array([0.0, 0.0, dist])
    screen = np.stack([focal * cam[:, 0] / cam[:, 2] + size / 2, focal * cam[:, 1] / cam[:, 2] + size / 2,
                       cam[:, 2]], -1)
    tri_t, raster = _rasterize(screen, tri, (size, size), near=dist - 2 * radius, far=dist + 2 * radius)
    if light:
        n = vertex_normals(torch.as_tensor(view, dtype=torch.float32), tri_t).numpy()
        direction = np.array([-0.35, 0.45, 1.0]) / np.linalg.norm([-0.35, 0.45, 1.0])
        col = col * (0.25 + 0.75 * np.clip(n @ direction, 0, 1))[:, None]
    img = _interpolate(np.concatenate([col, np.ones((len(v), 1), np.float32)], 1), tri_t, raster)
    covered = img[..., 3] > 0.5
    out = np.full((size, size, 3), int(background), np.uint8)
    out[covered] = to_uint8(img[covered, :3])
    if ax is not None:
        ax.imshow(out)
        ax.set_axis_off()
    return out


def plot_em_history(result: Any, ax: Any = None) -> Any:
    """Plot a fit's EM history: cost per LM iteration (log scale, left axis, one colour per round) and
    the visible-face fraction after each round's E-step (right axis).

    Args:
        result: a :class:`~fitem.result.FitResult` (uses ``iterations`` and ``rounds``; a result
            without ``iterations`` falls back to each round's ``cost_history``).
        ax: a matplotlib Axes, or None (a new figure).

    Returns:
        ``(ax, ax_mask)``: the cost axes and the twin axes of the mask fraction.

    Example:
        >>> ax, ax2 = plot_em_history(fitem.fit(img))   # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    rounds = list(getattr(result, "rounds", []) or [])
    iters = list(getattr(result, "iterations", []) or [])
    if not rounds and not iters:
        raise InvalidInputError("plot_em_history: the result has no EM history (no rounds, no iterations); "
                                "was it fitted with use_em=False or loaded from an incomplete folder?")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    per_round: dict[int, list[float]] = {}
    if iters:
        for rec in iters:
            per_round.setdefault(int(rec["round"]), []).append(float(rec["cost"]))
    else:
        for k, rec in enumerate(rounds):
            per_round[k] = [float(c) for c in rec.cost_history]
    step = 0
    ends = []
    for k in sorted(per_round):
        costs = per_round[k]
        xs = np.arange(step, step + len(costs))
        ax.plot(xs, costs, "o-", ms=3, label=f"round {k + 1}")
        step += len(costs)
        ends.append(step - 1)
    ax.set_yscale("log")
    ax.set_xlabel("LM iteration (all rounds)")
    ax.set_ylabel("M-step cost")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    if rounds:
        fr = [float(r.mask_fraction) for r in rounds]
        xs = ends[:len(fr)] if len(ends) >= len(fr) else list(range(len(fr)))
        ax2.plot(xs, fr, "s--", color="black", label="visible-face fraction")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("visible-face fraction of region")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    ax.set_title("EM history")
    return ax, ax2


def _input_screen(result: Any) -> np.ndarray:
    """The fitted vertices projected to INPUT pixels: crop camera, then the inverse of ``result.transform``."""
    cam = result.camera or {}
    missing = [k for k in ("focal", "cx", "cy") if k not in cam]
    if missing or result.transform is None:
        raise InvalidInputError("the result has no camera or transform (fields camera / transform); "
                                "it cannot be drawn over the input image")
    v = np.asarray(result.vertices, np.float64)
    z = v[:, 2]
    uv = np.stack([cam["focal"] * v[:, 0] / z + cam["cx"], cam["focal"] * v[:, 1] / z + cam["cy"]], -1)
    m = np.asarray(result.transform, np.float64)
    a_inv = np.linalg.inv(m[:, :2])
    uv_in = (uv - m[:, 2]) @ a_inv.T
    return np.concatenate([uv_in, z[:, None]], -1)


def uncertainty_image(result: Any, image: np.ndarray | None = None, *, cmap: str = "viridis",
                      vmax: float | None = None, alpha: float = 0.85) -> tuple[np.ndarray, float]:
    """Per-vertex posterior σ (mm) as a colour map on the fitted face, at the input resolution.

    Args:
        result: a :class:`~fitem.result.FitResult` with ``vertex_sigma``.
        image: the input image ``(H, W, 3)`` to draw over (greyed), or None (white background).
        cmap: a matplotlib colour-map name.
        vmax: σ (mm) mapped to the top colour (default: the 99th percentile over vertices).
        alpha: opacity of the colour map over the image.

    Returns:
        ``(picture, vmax)``: uint8 ``(H, W, 3)`` and the σ of the top colour.

    Example:
        >>> pic, top = uncertainty_image(res, img)   # doctest: +SKIP
    """
    import matplotlib

    sigma = getattr(result, "vertex_sigma", None)
    if sigma is None:
        raise InvalidInputError("the result has no vertex_sigma: the fit kept no posterior covariance "
                                "(e.g. it failed or optimised no shape/expression); refit to get one")
    sigma = np.asarray(sigma, np.float64)
    n = len(result.vertices)
    if sigma.shape != (n,):
        raise ShapeError(f"vertex_sigma: expected shape ({n},), got {sigma.shape}")
    H, W = np.asarray(result.mask).shape[:2]
    top = float(np.percentile(sigma, 99)) if vmax is None else float(vmax)
    if not top > 0:
        top = float(sigma.max()) if sigma.max() > 0 else 1.0
    screen = _input_screen(result)
    zmin, zmax = float(screen[:, 2].min()), float(screen[:, 2].max())
    tri, raster = _rasterize(screen, result.triangles, (H, W), near=max(1e-3, 0.5 * zmin), far=2 * zmax)
    values = _interpolate(np.stack([sigma, np.ones_like(sigma)], 1), tri, raster)
    covered = values[..., 1] > 0.5
    colours = matplotlib.colormaps[cmap](np.clip(values[..., 0] / top, 0, 1))[..., :3]
    if image is None:
        base = np.ones((H, W, 3))
    else:
        img = _rgb(image).astype(np.float64) / 255
        if img.shape[:2] != (H, W):
            raise ShapeError(f"image: expected the fitted image's size {(H, W)}, got {img.shape[:2]}")
        base = 0.35 + 0.4 * img.mean(-1, keepdims=True).repeat(3, -1)
    out = base.copy()
    out[covered] = (1 - alpha) * base[covered] + alpha * colours[covered]
    return to_uint8(out), top


def show_uncertainty(result: Any, image: np.ndarray | None = None, ax: Any = None, *, cmap: str = "viridis",
                     vmax: float | None = None, crop: bool = True) -> np.ndarray:
    """Show :func:`uncertainty_image` in a matplotlib Axes with a colour bar in mm.

    Args:
        result: a :class:`~fitem.result.FitResult` with ``vertex_sigma``.
        image: the input image, drawn greyed under the colours, or None.
        ax: a matplotlib Axes, or None (a new figure).
        cmap, vmax: as :func:`uncertainty_image`.
        crop: zoom onto the face region (with a margin) rather than the whole input.

    Returns:
        The uint8 ``(H, W, 3)`` picture (the whole input frame, not cropped).

    Example:
        >>> show_uncertainty(res, img)   # doctest: +SKIP
    """
    import matplotlib
    import matplotlib.pyplot as plt

    pic, top = uncertainty_image(result, image, cmap=cmap, vmax=vmax)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    shown = pic
    if crop:
        shown = pic[crop_box(result.face_region, margin=0.15)]
    ax.imshow(shown)
    ax.set_axis_off()
    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, top), cmap=cmap)
    ax.figure.colorbar(sm, ax=ax, fraction=0.046, pad=0.04, label="posterior σ of vertex position (mm)")
    ax.set_title("shape uncertainty")
    return pic
