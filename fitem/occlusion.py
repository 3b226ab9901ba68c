"""E-step of the occlusion EM: per-pixel face / non-face likelihoods and their MRF segmentation.

Knows nothing of rendering: inputs are arrays (numpy, or torch tensors which are
copied to numpy float64), colours in ``[0, 1]``, images ``(H, W, 3)``.

Model (Egger et al. 2018, "Occlusion-aware 3D Morphable Models and an
Illumination Prior for Face Image Analysis"; Li et al. 2021, FOCUS):

* a pixel that shows the face has colour ``render + noise``, noise
  ``N(0, sigma^2)`` per channel (``sigma ~ 0.043`` for ``[0, 1]`` images):
  :func:`face_loglik`, a density over RGB;
* a pixel that shows anything else has a colour drawn from the image's own
  colour distribution, a smoothed 3-D histogram that is a proper density over
  the unit RGB cube: :class:`ColourHistogram`, :func:`nonface_loglik`.
  Both are ``log p(colour)`` in the same units (nats, density per unit RGB
  volume), so they can be compared pixel by pixel;
* the labelling minimises ``sum_p U_p(l_p) + sum_{p~q} w_pq [l_p != l_q]``
  with ``U_p = -log-likelihood - log prior`` and a Potts term on the 4- or
  8-neighbourhood (optionally contrast-sensitive), exactly by a graph cut
  (PyMaxflow): :func:`segment`. :func:`posterior` is the unsmoothed
  ``P(face | colour)``. The face label is only ever given inside the rendered
  ``region``.
* the first E-step does not trust the unfitted model:
  :func:`conservative_initial_mask` fits a robust colour transform of the
  initial render to the image and keeps only pixels that it explains well.

Example:
    >>> residual = image - render                        # (H, W, 3)
    >>> sigma = robust_sigma(residual, region)
    >>> mask = segment(face_loglik(residual, sigma), nonface_loglik(image), region, smoothness=1.0)
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import cv2
import maxflow
import numpy as np
from scipy import ndimage, sparse, special
from scipy.sparse import csgraph

from fitem.errors import ConfigError, InvalidInputError, ShapeError, check_shape

__all__ = [
    "FACE_SIGMA",
    "face_loglik",
    "robust_sigma",
    "ColourHistogram",
    "nonface_loglik",
    "posterior",
    "segment",
    "edge_sigma_map",
    "adaptive_sigma",
    "region_outliers",
    "ColourTransform",
    "InitialMask",
    "conservative_initial_mask",
]

log = logging.getLogger(__name__)

#: Standard deviation of the face colour noise for images in [0, 1] (Egger 2018; FOCUS).
FACE_SIGMA = 0.043

_MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD of a Gaussian -> its standard deviation


def _np(a, name: str) -> np.ndarray:
    """A float64 numpy copy of an array or torch tensor."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch.Tensor without importing torch here
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype == object:
        raise InvalidInputError(f"{name}: expected a numeric array, got dtype object")
    return arr.astype(np.float64, copy=False)


def _bool(a, name: str, shape: tuple[int, int]) -> np.ndarray:
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    check_shape(name, arr, shape)
    if arr.dtype != bool:
        raise InvalidInputError(f"{name}: expected a boolean mask, got dtype {arr.dtype}; pass mask > 0.5 or mask.astype(bool)")
    return arr


def _image(a, name: str) -> np.ndarray:
    arr = _np(a, name)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ShapeError(f"{name}: expected shape (H, W, 3), got {arr.shape}")
    return arr


# ---------------------------------------------------------------------------- likelihoods


def face_loglik(residual, sigma: "float | np.ndarray" = FACE_SIGMA) -> np.ndarray:
    """Gaussian log-likelihood of the colour residual, per pixel.

    ``log N(r; 0, diag(sigma^2)) = -0.5 sum_c (r_c / sigma_c)^2 - sum_c log sigma_c - C/2 log(2 pi)``,
    a log density over colour (nats per unit RGB volume) comparable with :func:`nonface_loglik`.

    Args:
        residual: ``(H, W, C)`` image minus render, colours in ``[0, 1]`` (any leading shape works).
        sigma: scalar, ``(C,)`` per-channel, or ``(H, W, C)`` per-pixel (e.g. :func:`edge_sigma_map`)
            noise standard deviation, > 0.

    Returns:
        ``(H, W)`` float64 log-likelihood.

    Example:
        >>> face_loglik(np.zeros((2, 2, 3)), 0.043)[0, 0]   # = -3 log(0.043 sqrt(2 pi)) = 6.68
    """
    r = _np(residual, "residual")
    if r.ndim < 1:
        raise ShapeError(f"residual: expected shape (H, W, C), got {r.shape}")
    s = _np(sigma, "sigma")
    if s.ndim > 1 and s.shape != r.shape or (s.ndim == 1 and s.shape[0] != r.shape[-1]):
        raise ShapeError(f"sigma: expected a scalar, ({r.shape[-1]},) or the residual's shape {r.shape}, got {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InvalidInputError("sigma must be positive and finite" + ("" if s.ndim > 1 else f", got {sigma!r}"))
    c = r.shape[-1]
    if s.ndim > 1:  # per pixel
        return -0.5 * np.sum((r / s) ** 2, axis=-1) - np.sum(np.log(s), axis=-1) - 0.5 * c * math.log(2.0 * math.pi)
    s = np.broadcast_to(s, (c,))
    return -0.5 * np.sum((r / s) ** 2, axis=-1) - np.sum(np.log(s)) - 0.5 * c * math.log(2.0 * math.pi)


def robust_sigma(
    residual,
    region=None,
    *,
    min_sigma: float = 0.01,
    max_sigma: float = 0.25,
) -> float:
    """Robust noise standard deviation of a colour residual: ``1.4826 * MAD`` within ``region``.

    All channels of the pixels in ``region`` are pooled; the median absolute
    deviation from their median tolerates up to half the pixels being outliers
    (occluders). The result is clamped to ``[min_sigma, max_sigma]``.

    Args:
        residual: ``(H, W, C)`` image minus render, colours in ``[0, 1]``.
        region: ``(H, W)`` bool pixels to use; ``None`` = all.
        min_sigma: lower clamp (a perfect fit must not make the face likelihood infinitely sharp).
        max_sigma: upper clamp.

    Returns:
        sigma (float, same units as the residual).

    Example:
        >>> robust_sigma(np.random.default_rng(0).normal(0, 0.05, (64, 64, 3)))   # ~ 0.05
    """
    r = _np(residual, "residual")
    if r.ndim != 3:
        raise ShapeError(f"residual: expected shape (H, W, C), got {r.shape}")
    if not (0 < min_sigma <= max_sigma):
        raise ConfigError(f"need 0 < min_sigma <= max_sigma, got {min_sigma}, {max_sigma}")
    if region is not None:
        reg = _bool(region, "region", r.shape[:2])
        vals = r[reg]
    else:
        vals = r.reshape(-1, r.shape[-1])
    vals = vals[np.all(np.isfinite(vals), axis=-1)].ravel()
    if vals.size == 0:
        raise InvalidInputError("robust_sigma: the region holds no finite residual; pass a non-empty region")
    mad = np.median(np.abs(vals - np.median(vals)))
    return float(np.clip(_MAD_TO_SIGMA * mad, min_sigma, max_sigma))


@dataclass(frozen=True, eq=False)
class ColourHistogram:
    """A smoothed 3-D colour histogram: a piecewise-constant density over the unit RGB cube.

    ``density[i, j, k]`` is the probability density (per unit RGB volume) of
    colours in bin ``(i, j, k)``; ``sum(density) / bins**3 == 1``.

    Example:
        >>> hist = ColourHistogram.fit(image, bins=16)
        >>> ll = hist.log_density(image)          # (H, W)
    """

    bins: int
    density: np.ndarray

    @staticmethod
    def fit(
        image,
        weights=None,
        *,
        bins: int = 16,
        pseudo_count: float = 1.0,
        blur: float = 0.0,
    ) -> "ColourHistogram":
        """Estimate the histogram density of ``image``'s colours.

        ``density = bins^3 * (n_bin + pseudo_count) / (sum(n) + pseudo_count * bins^3)``
        (Laplace smoothing); with ``blur > 0`` the counts are first smoothed by a
        Gaussian of that many bins and renormalised.

        Args:
            image: ``(H, W, 3)`` (or ``(N, 3)``) colours in ``[0, 1]`` (clipped).
            weights: ``None`` (every pixel counts 1) or non-negative weights of the same
                leading shape, e.g. ``1 - P(face)`` to model only the non-face pixels.
            bins: bins per channel (``bins**3`` cells).
            pseudo_count: Laplace pseudo-count added to every cell (> 0 keeps log finite).
            blur: Gaussian smoothing of the counts, in bins (0 = none).

        Returns:
            a :class:`ColourHistogram`.
        """
        _check_histogram_args(bins, pseudo_count, blur)
        img = _np(image, "image")
        if img.shape[-1] != 3 or img.ndim < 2:
            raise ShapeError(f"image: expected shape (H, W, 3) or (N, 3), got {img.shape}")
        idx = _bin_index(img.reshape(-1, 3), int(bins))
        return ColourHistogram._from_index(idx, _weights(weights, img.shape[:-1]), int(bins), pseudo_count, blur)

    @staticmethod
    def _from_index(idx: np.ndarray, w: "np.ndarray | None", bins: int, pseudo_count: float,
                    blur: float) -> "ColourHistogram":
        ok = idx >= 0
        if w is None:
            counts = np.bincount(idx[ok], minlength=bins ** 3).astype(np.float64)
        else:
            counts = np.bincount(idx[ok], weights=w[ok], minlength=bins ** 3)
        total = counts.sum()
        counts = counts.reshape(bins, bins, bins)
        if blur > 0 and total > 0:
            counts = ndimage.gaussian_filter(counts, sigma=blur, mode="constant")
            counts *= total / max(counts.sum(), 1e-300)
        density = bins ** 3 * (counts + pseudo_count) / (total + pseudo_count * bins ** 3)
        return ColourHistogram(bins, density)

    def _log_at(self, idx: np.ndarray) -> np.ndarray:
        log_d = np.log(self.density.reshape(-1))
        return np.where(idx >= 0, log_d[np.maximum(idx, 0)], np.nan)

    def log_density(self, colours) -> np.ndarray:
        """``log p(colour)`` for colours ``(..., 3)`` in ``[0, 1]`` (clipped); returns ``(...)``."""
        c = _np(colours, "colours")
        if c.shape[-1] != 3:
            raise ShapeError(f"colours: expected shape (..., 3), got {c.shape}")
        return self._log_at(_bin_index(c.reshape(-1, 3), self.bins)).reshape(c.shape[:-1])

    def integral(self) -> float:
        """``∫ density`` over the unit cube (1 up to rounding)."""
        return float(self.density.sum() / self.bins ** 3)


def _check_histogram_args(bins, pseudo_count, blur) -> None:
    if not (isinstance(bins, (int, np.integer)) and 2 <= bins <= 256):
        raise ConfigError(f"bins must be an integer in [2, 256], got {bins!r}")
    if not (pseudo_count > 0) or not math.isfinite(pseudo_count):
        raise ConfigError(f"pseudo_count must be positive (it keeps the log-density finite), got {pseudo_count}")
    if not (blur >= 0):
        raise ConfigError(f"blur must be >= 0 (in bins), got {blur}")


def _bin_index(colours: np.ndarray, bins: int) -> np.ndarray:
    """Flat bin index ``(N,)`` of colours ``(N, 3)`` (clipped to [0, 1]); -1 for non-finite colours."""
    with np.errstate(invalid="ignore"):
        q = np.minimum((np.clip(colours, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    bad = ~np.isfinite(colours).all(axis=1)
    if bad.any():
        idx[bad] = -1
    return idx


def _weights(weights, shape: tuple) -> "np.ndarray | None":
    if weights is None:
        return None
    w = _np(weights, "weights")
    check_shape("weights", w, shape)
    w = w.reshape(-1)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InvalidInputError("weights must be finite and non-negative")
    return w


def nonface_loglik(
    image,
    weights=None,
    *,
    bins: int = 16,
    pseudo_count: float = 1.0,
    blur: float = 0.0,
) -> np.ndarray:
    """Non-face log-likelihood: the log colour density of the image's own histogram, per pixel.

    Egger 2018 uses the histogram of the whole image (``weights=None``); pass
    ``weights`` (e.g. ``1 - P(face)``) to build it from the pixels currently
    believed to be non-face. See :meth:`ColourHistogram.fit` for the arguments.

    Args:
        image: ``(H, W, 3)`` colours in ``[0, 1]``.
        weights: ``None`` or ``(H, W)`` non-negative weights.

    Returns:
        ``(H, W)`` float64 ``log p(colour)`` (nats per unit RGB volume).

    Example:
        >>> ll = nonface_loglik(image)          # uniform image colours -> ll ~ 0
    """
    img = _image(image, "image")
    _check_histogram_args(bins, pseudo_count, blur)
    idx = _bin_index(img.reshape(-1, 3), int(bins))
    hist = ColourHistogram._from_index(idx, _weights(weights, img.shape[:2]), int(bins), pseudo_count, blur)
    return hist._log_at(idx).reshape(img.shape[:2])


def posterior(face_ll, nonface_ll, prior: float = 0.5) -> np.ndarray:
    """Unsmoothed ``P(face | colour)`` per pixel: ``sigmoid(face_ll - nonface_ll + logit(prior))``.

    Args:
        face_ll: ``(H, W)`` face log-likelihood (:func:`face_loglik`).
        nonface_ll: ``(H, W)`` non-face log-likelihood (:func:`nonface_loglik`).
        prior: prior probability of face, in ``(0, 1)``.

    Returns:
        ``(H, W)`` float64 in ``[0, 1]``.

    Example:
        >>> posterior(np.array([[1.0]]), np.array([[1.0]]))   # 0.5
    """
    f = _np(face_ll, "face_ll")
    n = _np(nonface_ll, "nonface_ll")
    if f.shape != n.shape:
        raise ShapeError(f"face_ll {f.shape} and nonface_ll {n.shape} must have the same shape")
    if not (0.0 < prior < 1.0):
        raise ConfigError(f"prior must be in (0, 1), got {prior}")
    return special.expit(f - n + special.logit(prior))


# ---------------------------------------------------------------------------- MRF / graph cut

_OFFSETS4 = ((0, 1), (1, 0))
_OFFSETS8 = ((0, 1), (1, 0), (1, 1), (1, -1))


def segment(
    face_ll,
    nonface_ll,
    region,
    *,
    smoothness: float = 1.0,
    prior: float = 0.5,
    prior_logit=None,
    image=None,
    connectivity: int = 4,
    contrast_beta: float | None = None,
) -> np.ndarray:
    """Face mask by an exact graph cut of a binary MRF (Potts model), only inside ``region``.

    Minimises ``E(l) = sum_p U_p(l_p) + sum_{p~q in region} w_pq [l_p != l_q]`` with

    * ``U_p(face) - U_p(non-face) = -(face_ll - nonface_ll + logit(prior) + prior_logit)`` (nats);
    * ``w_pq = smoothness / |p - q|`` (Potts; diagonals weigh ``1/sqrt(2)`` with ``connectivity=8``);
      with ``image`` given, ``w_pq *= exp(-beta * |I_p - I_q|^2)`` (contrast-sensitive, as GrabCut;
      ``beta = 1 / (2 mean |I_p - I_q|^2)`` over the region unless ``contrast_beta`` is given),
      so label changes are cheaper along colour edges.

    Pixels outside ``region`` are always non-face and impose no pairwise cost on those
    inside (the region's border is not penalised). With ``smoothness=0`` the result is the
    pixelwise decision ``face_ll - nonface_ll + logit(prior) + prior_logit > 0``.

    Args:
        face_ll: ``(H, W)`` face log-likelihood (:func:`face_loglik`).
        nonface_ll: ``(H, W)`` non-face log-likelihood (:func:`nonface_loglik`).
        region: ``(H, W)`` bool, where the model is rendered.
        smoothness: Potts weight in nats per neighbouring pair (>= 0).
        prior: global prior probability of face, in ``(0, 1)``.
        prior_logit: optional ``(H, W)`` extra prior log-odds of face (e.g. a segmentation net's logits).
        image: optional ``(H, W, 3)`` image for contrast-sensitive weights.
        connectivity: 4 or 8.
        contrast_beta: fixed ``beta`` for the contrast term (``None`` = automatic).

    Returns:
        ``(H, W)`` bool mask, True = visible face; never True outside ``region``.

    Example:
        >>> mask = segment(face_ll, nonface_ll, region, smoothness=1.0)
    """
    f = _np(face_ll, "face_ll")
    if f.ndim != 2:
        raise ShapeError(f"face_ll: expected shape (H, W), got {f.shape}")
    hw = f.shape
    n = _np(nonface_ll, "nonface_ll")
    check_shape("nonface_ll", n, hw)
    reg = _bool(region, "region", hw)
    if not (smoothness >= 0) or not math.isfinite(smoothness):
        raise ConfigError(f"smoothness must be a finite number >= 0, got {smoothness}")
    if not (0.0 < prior < 1.0):
        raise ConfigError(f"prior must be in (0, 1), got {prior}")
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}")
    d = f - n + special.logit(prior)
    if prior_logit is not None:
        pl = _np(prior_logit, "prior_logit")
        check_shape("prior_logit", pl, hw)
        d = d + pl
    if not np.all(np.isfinite(d[reg])):
        raise InvalidInputError(
            "face_ll / nonface_ll / prior_logit are NaN or infinite inside the region; check sigma and the render"
        )
    mask = np.zeros(hw, dtype=bool)
    if not reg.any():
        return mask
    if smoothness == 0:
        mask[reg] = d[reg] > 0
        return mask

    # One graph node per region pixel; edges only between neighbours that are both inside.
    h, w = hw
    n_nodes = int(reg.sum())
    ids = np.full(hw, -1, dtype=np.int64)
    ids[reg] = np.arange(n_nodes)
    img = None
    if image is not None:
        img = _image(image, "image")
        check_shape("image", img, (*hw, 3))
        if not np.all(np.isfinite(img[reg])):
            raise InvalidInputError("image has NaN or infinite colours inside the region")
    offsets = _OFFSETS4 if connectivity == 4 else _OFFSETS8
    pairs = []
    for dy, dx in offsets:
        ys, yd = slice(0, h - dy), slice(dy, h)
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        a, b = ids[ys, xs], ids[yd, xd]
        ok = (a >= 0) & (b >= 0)
        cap = np.full(int(ok.sum()), smoothness / math.hypot(dy, dx))
        sq = None
        if img is not None:
            sq = np.sum((img[ys, xs][ok] - img[yd, xd][ok]) ** 2, axis=-1)
        pairs.append((a[ok], b[ok], cap, sq))
    if img is not None:
        if contrast_beta is None:
            all_sq = np.concatenate([p[3] for p in pairs])
            mean_sq = float(all_sq.mean()) if all_sq.size else 0.0
            beta = 1.0 / (2.0 * mean_sq) if mean_sq > 0 else 0.0
        else:
            if not (contrast_beta >= 0):
                raise ConfigError(f"contrast_beta must be >= 0, got {contrast_beta}")
            beta = float(contrast_beta)
        pairs = [(i, j, cap * np.exp(-beta * sq), sq) for i, j, cap, sq in pairs]

    n_edges = sum(p[0].size for p in pairs)
    g = maxflow.GraphFloat(n_nodes, max(n_edges, 1))
    nodes = g.add_nodes(n_nodes)
    for i, j, cap, _ in pairs:
        if i.size:
            g.add_edges(nodes[i], nodes[j], cap, cap)
    # Source side = non-face, sink side = face. A node on the source side pays its sink
    # capacity, so the sink capacity is the excess cost of non-face (d > 0) and vice versa.
    dr = d[reg]
    g.add_grid_tedges(nodes, np.maximum(-dr, 0.0), np.maximum(dr, 0.0))
    g.maxflow()
    mask[reg] = g.get_grid_segments(nodes)
    return mask


# ---------------------------------------------------------------------------- model-aware noise and regions


_CENTRAL_DIFF = np.array([[-0.5, 0.0, 0.5]], np.float32)


def _render_gradient(render: np.ndarray, region: np.ndarray, dilate: int) -> np.ndarray:
    """``(H, W, 3)`` per-channel gradient magnitude of the render (colour per pixel), 0 on the
    region's one-pixel rim (the silhouette is not an edge of the face's colours), then a maximum over
    a ``(2 dilate + 1)^2`` window (an edge that is off by ``dilate`` pixels is still covered)."""
    # central differences (OpenCV: ~10x faster than np.gradient + ndimage here; the image border uses
    # replicated pixels, i.e. half the one-sided difference)
    ren = np.ascontiguousarray(render, dtype=np.float32)
    gx = cv2.filter2D(ren, -1, _CENTRAL_DIFF, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(ren, -1, _CENTRAL_DIFF.T, borderType=cv2.BORDER_REPLICATE)
    g = np.hypot(gx, gy).reshape(render.shape)
    inner = cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                      borderValue=0)
    g *= inner.astype(bool)[..., None]
    if dilate > 0:
        g = cv2.dilate(g, np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return g.reshape(render.shape).astype(np.float64)


def edge_sigma_map(render, region, sigma: float, *, edge_scale: float = 0.5, dilate: int = 1, image=None,
                   rim: int = 2) -> np.ndarray:
    """Per-pixel face noise: larger where the render has edges, ``sqrt(sigma^2 + (edge_scale |grad render_c|)^2)``.

    A fit that is off by a fraction of a pixel leaves a residual of about
    ``shift * |grad render|`` at the eyes, brows, lips and nostrils: misalignment,
    not occlusion. Letting the face's colour noise grow with the render's own
    gradient (``edge_scale`` in pixels of tolerated shift) keeps those pixels from
    being cut out, so a sharper ``sigma`` can be used on flat skin.

    Args:
        render: ``(H, W, 3)`` render of the current fit, colours in ``[0, 1]``.
        region: ``(H, W)`` bool rendered-face region.
        sigma: noise standard deviation on flat skin (> 0).
        edge_scale: tolerated misalignment in pixels (>= 0; 0 gives ``sigma`` everywhere).
        dilate: the gradient is maximised over a ``(2 dilate + 1)^2`` window (>= 0).
        image: optional ``(H, W, 3)`` image: on the region's outer ``rim`` pixels, where the
            silhouette's own misalignment mixes face and background and the render (no background)
            cannot say by how much, the image's gradient stands in for the render's.
        rim: width of that band in pixels (>= 0).

    Returns:
        ``(H, W, 3)`` float64 per-pixel, per-channel sigma (pass it to :func:`face_loglik`).

    Example:
        >>> sig = edge_sigma_map(render, region, 0.043)
        >>> face_ll = face_loglik(image - render, sig)
    """
    ren = _image(render, "render")
    reg = _bool(region, "region", ren.shape[:2])
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma must be positive and finite, got {sigma}")
    if not (math.isfinite(edge_scale) and edge_scale >= 0):
        raise ConfigError(f"edge_scale must be a finite number >= 0 (pixels), got {edge_scale}")
    if not (isinstance(dilate, (int, np.integer)) and dilate >= 0):
        raise ConfigError(f"dilate must be an integer >= 0, got {dilate!r}")
    if edge_scale == 0:
        return np.full(ren.shape, float(sigma))
    if not (isinstance(rim, (int, np.integer)) and rim >= 0):
        raise ConfigError(f"rim must be an integer >= 0, got {rim!r}")
    g = _render_gradient(np.nan_to_num(ren), reg, int(dilate))
    if image is not None and rim > 0:
        img = _image(image, "image")
        check_shape("image", img, ren.shape)
        band = reg & ~ndimage.binary_erosion(reg, iterations=int(rim))
        gi = _render_gradient(np.nan_to_num(img), np.ones(reg.shape, bool), int(dilate))
        g[band] = np.maximum(g[band], gi[band])
    return np.sqrt(sigma ** 2 + (edge_scale * g) ** 2)


def adaptive_sigma(
    residual,
    mask,
    render,
    *,
    factor: float = 1.5,
    floor: float = 0.02,
    cap: float = FACE_SIGMA,
    flat_quantile: float = 0.5,
) -> float:
    """The face noise sigma for this image: ``clip(factor * robust_sigma(flat visible skin), floor, cap)``.

    The fixed ``cap`` (0.043, Egger 2018) suits photographs, whose residual holds
    detail no model explains. An image that the model explains better -- a clean
    or synthetic one -- deserves a sharper face likelihood, or a skin-coloured
    occluder within 0.043 of the face's colour is taken for face. The robust sigma
    (:func:`robust_sigma`) is measured on the pixels of ``mask`` where the render is
    flat (gradient below its ``flat_quantile`` quantile there: skin, not features)
    and inflated by ``factor`` (the MAD of the inliers underestimates the spread of
    the face's heavy-tailed residual). On typical photographs
    ``factor * robust >= cap`` and nothing changes.

    Args:
        residual: ``(H, W, 3)`` image minus render.
        mask: ``(H, W)`` bool current visible face (if empty: no adaptation, returns ``cap``).
        render: ``(H, W, 3)`` the render (to find flat skin).
        factor: inflation of the robust estimate (> 0).
        floor: lower bound (>= 0).
        cap: upper bound (>= floor).
        flat_quantile: quantile of the render gradient below which a pixel counts as flat, in (0, 1].

    Returns:
        sigma (float, colour units).

    Example:
        >>> sigma = adaptive_sigma(image - render, mask, render)    # 0.043 on a photo, less on a clean render
    """
    r = _image(residual, "residual")
    m = _bool(mask, "mask", r.shape[:2])
    ren = _image(render, "render")
    check_shape("render", ren, r.shape)
    if not (factor > 0 and 0 <= floor <= cap and 0 < cap and math.isfinite(cap)):
        raise ConfigError(f"need factor > 0, 0 <= floor <= cap and cap > 0, got factor={factor}, floor={floor}, "
                          f"cap={cap}")
    if not (0 < flat_quantile <= 1):
        raise ConfigError(f"flat_quantile must be in (0, 1], got {flat_quantile}")
    m = m & np.all(np.isfinite(r), axis=-1)
    if m.sum() < 20:
        return float(cap)
    g = _render_gradient(np.nan_to_num(ren), np.ones(m.shape, bool), 1).max(axis=-1)
    flat = m & (g <= np.quantile(g[m], flat_quantile))
    pix = flat if flat.sum() >= 20 else m
    return float(np.clip(factor * robust_sigma(r, pix, min_sigma=1e-6, max_sigma=1.0), floor, cap))


#: Felzenszwalb graph segmentation of :func:`region_outliers` (on [image, 0.5 + 4 residual], 6 channels);
#: scale and minimum size are per full-resolution pixel (scaled when it runs downsampled).
_REGION_SCALE, _REGION_SMOOTH, _REGION_MIN_SIZE, _RESIDUAL_GAIN = 50.0, 0.5, 20, 4.0
_CROSSING_MIN_PIXELS = 30  # the outline test ignores regions with fewer pixels outside the face region
_CROSSING_PART_FLOOR = 0.8  # ... and keeps the parts of a crossing region with mean z under this times z_face


def region_outliers(
    image,
    residual,
    sigma,
    region,
    face,
    *,
    ratio: float = 2.0,
    spread: float = 5.0,
    clip: float = 3.0,
    erode: int = 3,
    blur: float = 1.0,
    downsample: int = 1,
    crossing: float = 0.2,
    crossing_ratio: float = 1.3,
    margin: float = 0.25,
) -> np.ndarray:
    """Whole image regions whose residual is too large for the face: a region-level E-step test.

    A skin-coloured occluder (a hand) is explained by the face model pixel by
    pixel -- its colour is within the noise -- but not as a whole: its residual is
    a coherent offset bounded by edges, where the face's residual is noise. The
    test pools the evidence over edge-bounded regions:

    1. regions: a Felzenszwalb graph segmentation (scikit-image) of the image
       stacked with its residual (both edges of the image and edges of what the
       model fails to explain bound a region);
    2. per pixel the normalised residual ``z = |G_blur * residual / sigma|``
       (``G_blur``: a Gaussian of ``blur`` pixels, which averages the noise but keeps an
       offset), clipped at ``clip`` times its mean over the current face pixels
       ``z_face`` (a few pixels along an occluder's edge do not make a region);
    3. a region (its pixels ``erode`` pixels inside the face region) is an outlier when
       its mean ``z`` exceeds ``ratio * z_face`` and also ``median + spread * 1.4826 MAD`` of
       the region means over the regions labelled face (pixel-weighted). The second
       bound adapts to images whose face residual varies from region to region on
       its own (photographs: the model's misfit), where the test then stays silent.
    4. the outline test: the face ends at the model's silhouette, so an image region
       that runs on without an edge well beyond it is another surface in front of the
       face (a hand with its forearm, a scarf, hair). The image alone (not the
       residual) is segmented again, at half resolution or coarser (``downsample``),
       in the region's box grown by ``margin``; a region with at least ``crossing`` of
       its pixels (and 0.5 % of the face region's) outside the face region crosses the
       outline. Such a region is an outlier when the mean ``z`` of its pixels inside
       the face exceeds ``crossing_ratio * z_face`` -- a face that merely runs on into
       a like-coloured neck or background keeps the face's residual and stays -- except
       for its parts (step-1 regions cut by it) whose mean ``z`` is under 0.8 ``z_face``
       (the face it may have leaked into). In a crossing region that fails that ratio
       (a hand merged with much of a cheek), the parts connected to where it crosses
       the outline through parts with a mean ``z`` above ``z_face`` are outliers when
       together they pass ``crossing_ratio``.

    Measured with the full EM on ``fitem bench`` (100 images, true landmarks): the
    outline test lifts hand occluder F1 from 0.55 to 0.85 and all classes from 0.83
    to 0.91 (glasses, scarf and object move by -0.001 to +0.018); on 100 images used
    to choose nothing (``--seed 300``) hand goes from 0.47 to 0.72 (all 0.81 to 0.87); over
    136 untouched hands of five runs it is 0.79, and 0.82 with the default 4 EM rounds
    (``benchmarks/pool_bench.py``). On
    four real photographs without occluders the visible share of the face region
    moves by -0.013 to +0.014. A hand wholly inside the face's outline gains nothing
    from it.

    Args:
        image: ``(H, W, 3)`` crop, colours in ``[0, 1]``.
        residual: ``(H, W, 3)`` image minus render.
        sigma: scalar or ``(H, W, 3)`` face noise (:func:`edge_sigma_map`).
        region: ``(H, W)`` bool rendered-face region.
        face: ``(H, W)`` bool pixels currently labelled face (the reference).
        ratio: outlier threshold relative to ``z_face`` (> 1).
        spread: robust spread threshold over the face regions' means (>= 0).
        clip: per-pixel clip of ``z`` in units of ``z_face`` (> 0).
        erode: pixels of the region's rim left out of the statistics (>= 0).
        blur: Gaussian blur of the residual in pixels (>= 0).
        downsample: segment an image this many times smaller (an integer >= 1; 2 is ~8x
            cheaper, with slightly coarser regions).
        crossing: the outline test's share of a region outside the face region, in
            ``(0, 1)``; 0 turns the outline test off.
        crossing_ratio: the outline test's threshold on the mean ``z`` of a crossing region's
            pixels inside the face, relative to ``z_face`` (>= 0).
        margin: the outline test segments the face region's bounding box grown by this
            fraction of its size on every side (> 0).

    Returns:
        ``(H, W)`` bool, True on pixels of outlier regions (inside ``region`` only).

    Example:
        >>> out = region_outliers(crop, crop - render, 0.043, region, mask)
        >>> mask = mask & ~out
    """

    img = _image(image, "image")
    r = _image(residual, "residual")
    check_shape("residual", r, img.shape)
    reg = _bool(region, "region", img.shape[:2])
    fc = _bool(face, "face", img.shape[:2])
    s = _np(sigma, "sigma")
    if s.ndim > 0 and s.shape != r.shape:
        raise ShapeError(f"sigma: expected a scalar or shape {r.shape}, got {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InvalidInputError("sigma must be positive and finite")
    if not (ratio > 1 and spread >= 0 and clip > 0 and blur >= 0):
        raise ConfigError(f"need ratio > 1, spread >= 0, clip > 0, blur >= 0; got {ratio}, {spread}, {clip}, {blur}")
    if not (isinstance(downsample, (int, np.integer)) and downsample >= 1):
        raise ConfigError(f"downsample must be an integer >= 1, got {downsample!r}")
    if not (isinstance(erode, (int, np.integer)) and erode >= 0):
        raise ConfigError(f"erode must be an integer >= 0, got {erode!r}")
    if not (0 <= crossing < 1 and crossing_ratio >= 0 and margin > 0):
        raise ConfigError(f"need 0 <= crossing < 1, crossing_ratio >= 0, margin > 0; got {crossing}, "
                          f"{crossing_ratio}, {margin}")
    out = np.zeros(reg.shape, bool)
    inner = ndimage.binary_erosion(reg, iterations=int(erode)) if erode else reg.copy()
    inner &= np.all(np.isfinite(img), axis=-1) & np.all(np.isfinite(r), axis=-1)
    ref_pix = fc & inner
    if ref_pix.sum() < 20:
        return out
    r0 = np.where(reg[..., None], np.nan_to_num(r), 0.0)
    # segment only the region's bounding box (+ a margin): the cost is in the graph segmentation
    ys, xs = np.nonzero(reg)
    box = (slice(max(int(ys.min()) - 2, 0), int(ys.max()) + 3), slice(max(int(xs.min()) - 2, 0), int(xs.max()) + 3))
    stack = np.concatenate([np.nan_to_num(img[box]), np.clip(0.5 + _RESIDUAL_GAIN * r0[box], 0.0, 1.0)], axis=-1)
    labels = np.zeros(reg.shape, np.int64)
    with warnings.catch_warnings():  # skimage warns that a 6-channel image is taken as multichannel: it is
        warnings.filterwarnings("ignore", message=".*third dimension.*", category=RuntimeWarning)
        labels[box] = 1 + _segment_regions(stack, downsample)
    rb = ndimage.gaussian_filter(r0, (blur, blur, 0)) if blur > 0 else r0
    z = np.sqrt(np.sum((rb / s) ** 2, axis=-1))
    z_face = float(z[ref_pix].mean())
    if not z_face > 0:
        return out
    z = np.minimum(z, clip * z_face)
    n = int(labels.max()) + 1
    count = np.bincount(labels[inner], minlength=n).astype(np.float64)
    mean = np.bincount(labels[inner], weights=z[inner], minlength=n) / np.maximum(count, 1.0)
    face_count = np.bincount(labels[ref_pix], minlength=n).astype(np.float64)
    used = face_count > 0
    med = _weighted_median(mean[used], face_count[used])
    mad = _weighted_median(np.abs(mean[used] - med), face_count[used])
    threshold = max(ratio * z_face, med + spread * _MAD_TO_SIGMA * mad)
    bad = (count > 0) & (mean > threshold)
    out = bad[labels] & reg
    log.debug("region test: z_face %.3g, threshold %.3g, %d outlier regions, %.1f%% of the face region",
              z_face, threshold, int(bad.sum()), 100.0 * out.sum() / max(int(reg.sum()), 1))
    if crossing > 0:
        out |= _crossing_outliers(img, reg, inner, labels, z, z_face, crossing, crossing_ratio, margin, downsample)
    return out


def _crossing_outliers(img: np.ndarray, reg: np.ndarray, inner: np.ndarray, labels: np.ndarray, z: np.ndarray,
                       z_face: float, crossing: float, ratio: float, margin: float, downsample: int) -> np.ndarray:
    """The outline test of :func:`region_outliers` (its step 4)."""
    ys, xs = np.nonzero(reg)
    my, mx = int(margin * (ys.max() - ys.min() + 1)), int(margin * (xs.max() - xs.min() + 1))
    box = (slice(max(int(ys.min()) - my, 0), int(ys.max()) + my + 1),
           slice(max(int(xs.min()) - mx, 0), int(xs.max()) + mx + 1))
    coarse = np.zeros(reg.shape, np.int64)
    coarse[box] = 1 + _segment_regions(np.nan_to_num(img[box]), max(downsample, 2))
    outside = np.zeros(reg.shape, bool)
    outside[box] = ~reg[box]
    n = int(coarse.max()) + 1
    n_in = np.bincount(coarse[reg], minlength=n)
    n_out = np.bincount(coarse[outside], minlength=n)
    crosses = (n_in > 0) & (n_out >= crossing * (n_in + n_out)) & (n_out >= max(_CROSSING_MIN_PIXELS,
                                                                                  0.005 * int(reg.sum())))
    count = np.bincount(coarse[inner], minlength=n)
    total = np.bincount(coarse[inner], weights=z[inner], minlength=n)
    whole = crosses & (count > 0) & (total > ratio * z_face * count)
    candidate = crosses[coarse] & reg
    if not candidate.any():
        return candidate
    # parts: the step-1 regions cut by the crossing regions
    _, ids = np.unique(coarse[candidate] * (int(labels.max()) + 1) + labels[candidate], return_inverse=True)
    part = np.full(reg.shape, -1, np.int64)
    part[candidate] = ids
    m = int(ids.max()) + 1
    use = inner & candidate
    p_count = np.bincount(part[use], minlength=m)
    p_total = np.bincount(part[use], weights=z[use], minlength=m)
    region_of = np.zeros(m, np.int64)
    region_of[ids] = coarse[candidate]
    # a region whose residual inside the face is ratio times the face's is out as a whole, except its
    # parts with a residual under the face's typical one (face it leaked into) ...
    bad = whole[region_of] & ((p_count == 0) | (p_total > _CROSSING_PART_FLOOR * z_face * p_count))
    # ... and where the region also holds much face (a hand merged with a cheek), the parts reached from
    # the outline through parts with a residual above the face's are out when they pass the ratio
    bad |= _grown_from_outline(part, coarse, candidate, outside, region_of, p_count, p_total, z_face, ratio,
                               eligible=~whole[region_of])
    out = np.zeros(reg.shape, bool)
    out[candidate] = bad[ids]
    log.debug("outline test: %d crossing regions (%d out whole), %d of %d parts out, %.1f%% of the face region",
              int(crosses.sum()), int(whole.sum()), int(bad.sum()), m, 100.0 * out.sum() / max(int(reg.sum()), 1))
    return out


def _grown_from_outline(part: np.ndarray, coarse: np.ndarray, candidate: np.ndarray, outside: np.ndarray,
                        region_of: np.ndarray, p_count: np.ndarray, p_total: np.ndarray, z_face: float,
                        ratio: float, eligible: np.ndarray) -> np.ndarray:
    """``(m,)`` bool over the parts: per crossing region, the parts connected (4-neighbours, within the
    region) to where it crosses the outline through ``eligible`` parts whose mean ``z`` exceeds
    ``z_face``, when their pooled mean ``z`` exceeds ``ratio * z_face``."""
    m = p_count.size
    above = eligible & (p_count > 0) & (p_total > z_face * p_count)
    h, w = part.shape
    at_outline = np.zeros(m, bool)
    edges = []
    for a, b in (((slice(None), slice(0, w - 1)), (slice(None), slice(1, w))),
                 ((slice(0, h - 1), slice(None)), (slice(1, h), slice(None)))):
        same = coarse[a] == coarse[b]
        for p, q in ((a, b), (b, a)):  # a part pixel next to the region's own pixels outside the face
            at_outline[part[p][candidate[p] & outside[q] & same]] = True
        pair = candidate[a] & candidate[b] & same & (part[a] != part[b])
        edges.append((part[a][pair], part[b][pair]))
    i = np.concatenate([e[0] for e in edges])
    j = np.concatenate([e[1] for e in edges])
    link = above[i] & above[j]
    graph = sparse.coo_matrix((np.ones(int(link.sum())), (i[link], j[link])), shape=(m, m))
    n_comp, comp = csgraph.connected_components(graph, directed=False)
    seeded = np.zeros(n_comp, bool)
    seeded[comp[at_outline & above]] = True
    take = above & seeded[comp]
    n_regions = int(region_of.max()) + 1
    r_count = np.bincount(region_of[take], weights=p_count[take], minlength=n_regions)
    r_total = np.bincount(region_of[take], weights=p_total[take], minlength=n_regions)
    passed = (r_count > 0) & (r_total > ratio * z_face * r_count)
    return take & passed[region_of]


def _segment_regions(stack: np.ndarray, f: int = 1) -> np.ndarray:
    """Felzenszwalb labels of ``stack (h, w, C)`` at full resolution, computed on an ``f``-times smaller,
    area-averaged image (at ``f = 2`` the segmentation is ~8x cheaper) and expanded back (nearest)."""
    from skimage.segmentation import felzenszwalb

    h, w = stack.shape[:2]
    if f <= 1 or min(h, w) < 8 * f:
        return felzenszwalb(stack, scale=_REGION_SCALE, sigma=_REGION_SMOOTH, min_size=_REGION_MIN_SIZE,
                            channel_axis=-1)
    hs, ws = -(-h // f), -(-w // f)
    pad = np.pad(stack, ((0, hs * f - h), (0, ws * f - w), (0, 0)), mode="edge")
    small = pad.reshape(hs, f, ws, f, -1).mean(axis=(1, 3))
    lab = felzenszwalb(small, scale=_REGION_SCALE / (f * f), sigma=_REGION_SMOOTH,
                       min_size=max(_REGION_MIN_SIZE // (f * f), 1), channel_axis=-1)
    return np.repeat(np.repeat(lab, f, axis=0), f, axis=1)[:h, :w]


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    return float(values[order][min(int(np.searchsorted(cw, 0.5 * cw[-1])), values.size - 1)])


# ---------------------------------------------------------------------------- first E-step


@dataclass(frozen=True, eq=False)
class ColourTransform:
    """A colour transform of a render towards an image, fitted robustly.

    ``kind="gain"``: ``out_c(u, v) = render_c * sum_k coefficients[c, k] * m_k(u, v)`` with the
    monomials ``m = (1, u, v, u^2, u v, v^2)`` up to ``degree`` in pixel coordinates normalised to
    ``[-1, 1]`` (``u`` right, ``v`` down) -- a per-channel gain that varies smoothly over the image,
    a crude stand-in for directional shading. ``kind="affine"``: ``out = M render + b``,
    ``coefficients = [M | b]`` ``(3, 4)``, the same everywhere.

    Example:
        >>> predicted = transform.apply(render)      # (H, W, 3)
    """

    kind: str
    degree: int
    coefficients: np.ndarray

    def apply(self, render) -> np.ndarray:
        """Transform a ``(H, W, 3)`` render; returns ``(H, W, 3)`` float64."""
        r = _image(render, "render")
        feats = _features(r, self.kind, self.degree)  # (3, H*W, K)
        out = np.matmul(feats, self.coefficients[:, :, None])[..., 0]  # (3, H*W)
        return out.T.reshape(r.shape)


def _monomials(h: int, w: int, degree: int) -> np.ndarray:
    """``(H*W, K)`` monomials of normalised pixel coordinates up to ``degree`` (0, 1 or 2)."""
    v, u = np.meshgrid((np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1, indexing="ij")
    u, v = u.ravel(), v.ravel()
    cols = [np.ones_like(u)]
    if degree >= 1:
        cols += [u, v]
    if degree >= 2:
        cols += [u * u, u * v, v * v]
    return np.stack(cols, axis=1)


def _features(render: np.ndarray, kind: str, degree: int) -> np.ndarray:
    """Design matrices ``(3, N, K)``, one per output channel, for all pixels of ``render``."""
    h, w, _ = render.shape
    rflat = render.reshape(-1, 3)
    if kind == "gain":
        mono = _monomials(h, w, degree)
        return rflat.T[:, :, None] * mono[None]
    x = np.concatenate([rflat, np.ones((rflat.shape[0], 1))], axis=1)
    return np.broadcast_to(x, (3, *x.shape))


@dataclass(frozen=True, eq=False)
class InitialMask:
    """Output of :func:`conservative_initial_mask`.

    Attributes:
        mask: ``(H, W)`` bool conservative face mask (inside the region).
        transform: the fitted :class:`ColourTransform`.
        predicted: ``(H, W, 3)`` the render after the transform.
        residual_norm: ``(H, W)`` ``|image - predicted|`` (Euclidean over RGB); 0 outside the region.
        threshold: the residual norm above which a pixel was rejected.
        sigma: robust per-channel noise sigma of the kept pixels (:func:`robust_sigma`).
        inlier_fraction: fraction of the region kept.
    """

    mask: np.ndarray
    transform: ColourTransform
    predicted: np.ndarray
    residual_norm: np.ndarray
    threshold: float
    sigma: float
    inlier_fraction: float


def _solve_batched(x: np.ndarray, y: np.ndarray, ridge: float = 1e-9) -> np.ndarray:
    """Least squares ``x theta = y`` batched over leading dims: ``x (..., S, K)``, ``y (..., S)``."""
    xt = np.swapaxes(x, -1, -2)
    xtx = np.matmul(xt, x)
    xty = np.matmul(xt, y[..., None])[..., 0]
    k = x.shape[-1]
    scale = np.trace(xtx, axis1=-2, axis2=-1)[..., None, None] / k + 1e-300
    return np.linalg.solve(xtx + ridge * scale * np.eye(k), xty[..., None])[..., 0]


def conservative_initial_mask(
    image,
    render,
    region,
    *,
    model: str = "gain",
    degree: int = 1,
    threshold: float = 2.5,
    opening_radius: int = 2,
    border: int = 2,
    smooth_quantile: float = 0.6,
    n_hypotheses: int = 200,
    irls_iterations: int = 5,
    seed: int = 0,
) -> InitialMask:
    """A conservative first face mask from a robust colour fit of the unfitted render.

    The first E-step cannot trust the model's likelihoods: its albedo, light and
    pose are still the mean / initial ones. Instead (in the spirit of Egger et al.
    2018, who estimate illumination robustly on skin regions first):

    1. Candidate pixels: ``region`` eroded by ``border`` pixels (the silhouette mixes
       face and background), with a non-black render.
    2. Estimation pixels: the candidates where the render is locally flat (3x3 colour
       standard deviation below its ``smooth_quantile`` quantile): skin, not eyes,
       brows or lips, whose mean-model colour is least reliable.
    3. Robust fit of a colour transform render -> image (:class:`ColourTransform`:
       a per-channel gain field of polynomial ``degree`` for ``model="gain"``, or a
       3x3 affine colour map): least-median-of-squares over ``n_hypotheses`` random
       minimal samples, then ``irls_iterations`` of trimmed least squares (pixels
       with a squared residual norm above ``chi2_3(0.99) * sigma^2``, ``sigma`` from
       the median, get weight 0).
    4. Residual norm ``e_p = |image_p - transform(render)_p|`` on the candidates; keep
       ``e_p <= median(e) + threshold * 1.4826 * MAD(e)``.
    5. Morphological opening with a disk of ``opening_radius`` pixels removes isolated
       and thin accepted bits (e.g. along an occluder's edge).

    Args:
        image: ``(H, W, 3)`` photograph (the crop), colours in ``[0, 1]``.
        render: ``(H, W, 3)`` initial render (e.g. mean albedo, ambient light), same frame.
        region: ``(H, W)`` bool rendered-face region.
        model: ``"gain"`` or ``"affine"``.
        degree: polynomial degree 0, 1 or 2 of the gain field (``model="gain"`` only).
        threshold: robust threshold in MADs (see step 4).
        opening_radius: radius of the opening's disk in pixels (0 = none).
        border: pixels of the region's edge to exclude (0 = none).
        smooth_quantile: quantile of local render variation below which pixels are used to
            estimate the transform (1 = all candidates).
        n_hypotheses: random minimal samples for least-median-of-squares.
        irls_iterations: trimmed least-squares refinements.
        seed: random seed (the result is deterministic for a seed).

    Returns:
        an :class:`InitialMask` (``.mask`` is the conservative mask).

    Example:
        >>> init = conservative_initial_mask(crop, render0, region)
        >>> weights = init.mask.astype(np.float32)      # first M-step weights
    """
    img = _image(image, "image")
    ren = _image(render, "render")
    check_shape("render", ren, img.shape)
    reg = _bool(region, "region", img.shape[:2])
    if model not in ("gain", "affine"):
        raise ConfigError(f"model must be 'gain' or 'affine', got {model!r}")
    if degree not in (0, 1, 2):
        raise ConfigError(f"degree must be 0, 1 or 2, got {degree!r}")
    if not (threshold > 0):
        raise ConfigError(f"threshold must be > 0 (in MADs), got {threshold}")
    if opening_radius < 0 or border < 0:
        raise ConfigError("opening_radius and border must be >= 0")
    if not (0 < smooth_quantile <= 1):
        raise ConfigError(f"smooth_quantile must be in (0, 1], got {smooth_quantile}")
    if n_hypotheses < 1 or irls_iterations < 0:
        raise ConfigError("n_hypotheses must be >= 1 and irls_iterations >= 0")
    h, w, _ = img.shape

    cand = reg.copy()
    if border > 0:
        cand = ndimage.binary_erosion(cand, structure=np.ones((3, 3), bool), iterations=border)
    cand &= np.all(np.isfinite(img), axis=-1) & np.all(np.isfinite(ren), axis=-1)
    cand &= ren.sum(axis=-1) > 1e-3
    k = (1 if degree == 0 else 3 if degree == 1 else 6) if model == "gain" else 4
    if cand.sum() < max(20, 4 * k):
        raise InvalidInputError(
            f"only {int(cand.sum())} usable face pixels for the initial colour fit; the rendered region is "
            "too small or empty -- check the initial pose / landmarks, or pass border=0"
        )

    # local flatness of the render (std over a 3x3 window, summed over channels)
    mean = ndimage.uniform_filter(ren, size=(3, 3, 1))
    var = ndimage.uniform_filter(ren * ren, size=(3, 3, 1)) - mean * mean
    local = np.sqrt(np.clip(var, 0, None)).sum(axis=-1)
    est = cand.copy()
    if smooth_quantile < 1:
        est &= local <= np.quantile(local[cand], smooth_quantile)
        if est.sum() < max(20, 4 * k):
            est = cand

    feats = _features(ren, model, degree)  # (3, N, K)
    y = img.reshape(-1, 3).T  # (3, N)
    est_idx = np.flatnonzero(est.ravel())
    rng = np.random.default_rng(seed)

    # 1) least median of squares over random minimal samples (scored on a subsample)
    score_idx = est_idx if est_idx.size <= 2000 else rng.choice(est_idx, 2000, replace=False)
    s = k + 1  # a slightly over-determined sample is better conditioned than a minimal one
    samples = np.stack([rng.choice(est_idx, s, replace=False) for _ in range(n_hypotheses)])  # (T, s)
    xs = feats[:, samples].transpose(1, 0, 2, 3)  # (T, 3, s, K)
    ys = y[:, samples].transpose(1, 0, 2)  # (T, 3, s)
    theta = _solve_batched(xs, ys)  # (T, 3, K)
    pred = np.matmul(feats[None, :, score_idx], theta[..., None])[..., 0]  # (T, 3, n)
    e2 = ((pred - y[None, :, score_idx]) ** 2).sum(axis=1)  # (T, n)
    med = np.median(e2, axis=1)
    best = theta[int(np.argmin(med))]  # (3, K)

    # 2) trimmed least squares refinement on all estimation pixels
    chi2_99 = 11.345  # chi-square, 3 d.o.f., 0.99 quantile
    chi2_med = 2.366  # chi-square, 3 d.o.f., median
    xe, ye = feats[:, est_idx], y[:, est_idx]
    for _ in range(irls_iterations):
        r2 = ((np.matmul(xe, best[:, :, None])[..., 0] - ye) ** 2).sum(axis=0)
        sig2 = max(np.median(r2) / chi2_med, 1e-8)
        keep = r2 <= chi2_99 * sig2
        if keep.sum() < 4 * k:
            break
        best = _solve_batched(xe[:, keep], ye[:, keep])

    transform = ColourTransform(model, degree if model == "gain" else 0, best)
    predicted = transform.apply(ren)
    resid = img - predicted
    enorm = np.sqrt((resid ** 2).sum(axis=-1))
    e = enorm[cand]
    med_e = float(np.median(e))
    mad_e = float(np.median(np.abs(e - med_e)))
    thr = med_e + threshold * _MAD_TO_SIGMA * max(mad_e, 1e-6)
    mask = cand & (enorm <= thr)
    if opening_radius > 0:
        r = int(opening_radius)
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disk).astype(bool) & cand
    sigma = robust_sigma(resid, mask) if mask.any() else robust_sigma(resid, cand)
    n_reg = max(int(reg.sum()), 1)
    log.debug("conservative initial mask: kept %.1f%% of the region, threshold %.4f", 100 * mask.sum() / n_reg, thr)
    return InitialMask(
        mask=mask,
        transform=transform,
        predicted=predicted,
        residual_norm=np.where(reg, enorm, 0.0),
        threshold=thr,
        sigma=sigma,
        inlier_fraction=float(mask.sum()) / n_reg,
    )
