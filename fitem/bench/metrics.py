"""Benchmark metrics: occlusion segmentation, 3D reconstruction, 2D landmarks, photometric error.

Segmentation (as FOCUS evaluates it, Li et al. 2021):

- positive = *visible face* pixel; the confusion counts TP / FP / FN / TN are
  taken only inside an evaluation domain: the ground-truth rendered face region
  (``within="region"``, FOCUS) or an ellipse fitted to it (``within="ellipse"``,
  as Egger et al. 2018 count inside a face ellipse on the AR database).
- per image: accuracy, precision, recall, F1 and IoU; the same again with
  positive = *occluder* (``occluder_*`` keys). Averages are over images
  (:func:`summarise`), split by occluder class.
- Empty denominators give NaN, and NaN is left out of the means:
  ``precision`` is NaN when nothing is predicted positive; ``recall``, ``f1``
  and ``iou`` are NaN when the ground truth has no positive pixel in the domain
  (e.g. the occluder scores of an image of class ``none``, which has no
  occluder: whatever the prediction, there is nothing to detect; its false
  alarms still lower its accuracy and its visible-face recall and F1);
  ``accuracy`` is NaN only for an empty domain.

3D (NoW-style, Sanyal et al. 2019): a similarity (rotation, translation, scale)
aligns the prediction to the ground truth from corresponding landmarks
(Umeyama 1991), refined by closest points on the predicted surface; the error
is the distance of every ground-truth vertex to the aligned predicted surface,
reported as median / mean / std in mm. When both meshes share a topology,
:func:`vertex_error_same_topology` aligns all vertices and measures
vertex-to-vertex distances.

2D: landmark error normalised by the outer-eye-corner distance (iBUG 36 and 45,
0-based). Photometric: RMSE inside a mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import cv2
import numpy as np
from scipy.spatial import cKDTree

from fitem.errors import ConfigError, InvalidInputError, ShapeError, check_shape

__all__ = [
    "SEGMENTATION_KEYS",
    "OCCLUDER_CLASS_ORDER",
    "Similarity",
    "ErrorStats",
    "face_ellipse",
    "segmentation_scores",
    "all_face_scores",
    "summarise",
    "format_table",
    "umeyama",
    "align_similarity",
    "closest_points_on_mesh",
    "point_to_surface_error",
    "vertex_error_same_topology",
    "landmark_nme",
    "photometric_rmse",
]

#: Score keys of :func:`segmentation_scores` that :func:`summarise` averages.
SEGMENTATION_KEYS: tuple[str, ...] = (
    "accuracy", "precision", "recall", "f1", "iou",
    "occluder_precision", "occluder_recall", "occluder_f1", "occluder_iou",
)

#: Display order of occluder classes in :func:`summarise` (others follow alphabetically).
OCCLUDER_CLASS_ORDER: tuple[str, ...] = ("none", "glasses", "scarf", "hand", "object")

_WITHIN = ("region", "ellipse")


# --------------------------------------------------------------------------- segmentation
def _as_mask(name: str, m, shape: tuple[int, int] | None = None) -> np.ndarray:
    arr = np.asarray(m)
    if arr.ndim != 2:
        raise ShapeError(f"{name}: expected a 2-D (H, W) mask, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ShapeError(f"{name}: expected shape {shape} (same as the other masks), got {arr.shape}")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isin(arr, (0, 1))):
            raise InvalidInputError(
                f"{name}: expected a boolean mask (or 0/1 values), got dtype {arr.dtype}; threshold "
                "probabilities first, e.g. mask = prob >= 0.5"
            )
        arr = arr.astype(bool)
    return arr


def face_ellipse(region: np.ndarray, *, method: str = "moments") -> np.ndarray:
    """An ellipse fitted to a face region, as a mask (the Egger et al. 2018 evaluation domain).

    Args:
        region: ``(H, W)`` bool, the ground-truth face region (pixels the model covers).
        method: ``"moments"``: the ellipse with the region's centroid and second
            moments, scaled to enclose the same area as a filled ellipse would
            (semi-axes ``2 sqrt(eigenvalues)`` of the pixel covariance; stable
            for ragged outlines); ``"contour"``: :func:`cv2.fitEllipse` on the
            points of the region's outer contours (least squares on the outline).

    Returns:
        ``(H, W)`` bool: pixels whose centre ``(j + 0.5, i + 0.5)`` lies in the ellipse.
        All False for an empty region.

    Example:
        >>> yy, xx = np.mgrid[:64, :64]
        >>> disc = (xx - 31.5) ** 2 + (yy - 31.5) ** 2 <= 20 ** 2
        >>> int((face_ellipse(disc) ^ disc).sum()) <= 8
        True
    """
    region = _as_mask("region", region)
    h, w = region.shape
    if method not in ("moments", "contour"):
        raise ConfigError(f"face_ellipse: unknown method {method!r}; choose 'moments' or 'contour'")
    if not region.any():
        return np.zeros_like(region)
    ii, jj = np.nonzero(region)
    if method == "moments":
        pts = np.stack([jj + 0.5, ii + 0.5], 1).astype(np.float64)
        centre = pts.mean(0)
        cov = np.cov(pts, rowvar=False, bias=True) if len(pts) > 1 else np.zeros((2, 2))
        cov = cov + np.eye(2) / 12.0  # a pixel's own extent (uniform square: variance 1/12)
        inv = np.linalg.inv(4.0 * cov)  # semi-axes 2 sqrt(λ): (p-c)ᵀ (4Σ)⁻¹ (p-c) <= 1
    else:
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        pts = np.concatenate([c.reshape(-1, 2) for c in contours], 0).astype(np.float32)
        if len(pts) < 5:
            return face_ellipse(region, method="moments")
        (cx, cy), (d1, d2), angle = cv2.fitEllipse(pts)
        centre = np.array([cx + 0.5, cy + 0.5])  # cv2 pixel index → centre convention
        # contour points are the centres of the boundary pixels, half a pixel inside the region's edge
        a, b = max(d1, 1e-6) / 2.0 + 0.5, max(d2, 1e-6) / 2.0 + 0.5
        t = math.radians(angle)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        inv = rot @ np.diag([1.0 / a**2, 1.0 / b**2]) @ rot.T
    yy, xx = np.mgrid[:h, :w]
    d = np.stack([xx + 0.5 - centre[0], yy + 0.5 - centre[1]], -1)
    q = np.einsum("hwi,ij,hwj->hw", d, inv, d)
    return q <= 1.0


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def _scores(pred: np.ndarray, gt: np.ndarray, prefix: str) -> dict[str, float]:
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    has_gt = (tp + fn) > 0
    return {
        f"{prefix}precision": _ratio(tp, tp + fp),
        f"{prefix}recall": _ratio(tp, tp + fn),
        f"{prefix}f1": _ratio(2 * tp, 2 * tp + fp + fn) if has_gt else math.nan,
        f"{prefix}iou": _ratio(tp, tp + fp + fn) if has_gt else math.nan,
    }


def segmentation_scores(
    pred_visible: np.ndarray,
    gt_visible: np.ndarray,
    gt_region: np.ndarray,
    *,
    within: str = "region",
) -> dict[str, float]:
    """Per-image occlusion-segmentation scores (FOCUS protocol; see the module docstring).

    Args:
        pred_visible: ``(H, W)`` bool, predicted visible-face pixels (the
            complement inside the domain is the predicted occluder).
        gt_visible: ``(H, W)`` bool, ground-truth visible face (region minus occluder).
        gt_region: ``(H, W)`` bool, ground-truth face region (pixels the model covers).
        within: evaluation domain, ``"region"`` (FOCUS) or ``"ellipse"``
            (:func:`face_ellipse` of the region, Egger et al. 2018).

    Returns:
        dict with ``accuracy, precision, recall, f1, iou`` (positive = visible
        face), ``occluder_precision, occluder_recall, occluder_f1,
        occluder_iou`` (positive = occluder, i.e. not visible face), the counts
        ``tp, fp, fn, tn`` (visible-face positive) and ``n_pixels`` (domain size).
        Values in [0, 1] or NaN for empty denominators (module docstring).

    Example:
        >>> region = np.zeros((4, 4), bool); region[:, :2] = True
        >>> gt = region.copy(); gt[0, :2] = False           # 2 occluded pixels
        >>> s = segmentation_scores(region, gt, region)     # "all face" prediction
        >>> round(s["f1"], 3), s["occluder_f1"]
        (0.857, 0.0)
    """
    if within not in _WITHIN:
        raise ConfigError(f"within must be one of {list(_WITHIN)}, got {within!r}")
    gt_region = _as_mask("gt_region", gt_region)
    shape = gt_region.shape
    gt_visible = _as_mask("gt_visible", gt_visible, shape)
    pred_visible = _as_mask("pred_visible", pred_visible, shape)
    if np.any(gt_visible & ~gt_region):
        raise InvalidInputError(
            "gt_visible has pixels outside gt_region; the visible face must be a subset of the face region "
            "(visible = region & ~occluder)"
        )
    domain = gt_region if within == "region" else face_ellipse(gt_region)
    p = pred_visible[domain]
    g = gt_visible[domain]
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    tn = int(np.count_nonzero(~p & ~g))
    out: dict[str, float] = {"accuracy": _ratio(tp + tn, p.size)}
    out.update(_scores(p, g, ""))
    out.update(_scores(~p, ~g, "occluder_"))
    out.update(tp=tp, fp=fp, fn=fn, tn=tn, n_pixels=int(p.size))
    return out


def all_face_scores(gt_visible: np.ndarray, gt_region: np.ndarray, *, within: str = "region") -> dict[str, float]:
    """Scores of the trivial "all face" baseline: predict visible = the whole face region.

    Its occluder recall and F1 are 0 wherever the image has an occluder in the
    domain (NaN for images without one); its visible-face recall is 1 (inside
    the region). A segmentation method is useful only where it beats this row.

    Example:
        >>> region = np.ones((3, 3), bool); gt = region.copy(); gt[0] = False
        >>> all_face_scores(gt, region)["recall"]
        1.0
    """
    region = _as_mask("gt_region", gt_region)
    return segmentation_scores(region, gt_visible, region, within=within)


def _class_order(classes: Iterable[str]) -> list[str]:
    classes = set(classes)
    known = [c for c in OCCLUDER_CLASS_ORDER if c in classes]
    return known + sorted(classes - set(OCCLUDER_CLASS_ORDER))


def summarise(
    rows: Sequence[Mapping[str, object]],
    by: str = "occluder_class",
    keys: Sequence[str] = SEGMENTATION_KEYS,
    *,
    total: str = "all",
) -> list[dict[str, object]]:
    """Average per-image score rows over images, per group (e.g. occluder class), plus a total row.

    Args:
        rows: per-image dicts, each with the grouping key ``by`` and the score
            ``keys`` (e.g. :func:`segmentation_scores` output plus
            ``{"occluder_class": ...}``).
        by: the grouping key.
        keys: the score keys to average; NaN values are left out of a mean
            (``<key>_n`` says over how many images each mean is taken).
        total: name of the row over all images; an empty string omits that row.

    Returns:
        A list of dicts (one per group in :data:`OCCLUDER_CLASS_ORDER` order, then
        the total): ``{by: group, "n_images": n, key: mean, key + "_n": count, ...}``.
        A mean over no valid value is NaN.

    Example:
        >>> rows = [{"occluder_class": "none", "f1": 1.0}, {"occluder_class": "hand", "f1": 0.5},
        ...         {"occluder_class": "hand", "f1": 0.7}]
        >>> [round(r["f1"], 2) for r in summarise(rows, keys=("f1",))]
        [1.0, 0.6, 0.73]
    """
    if not rows:
        raise InvalidInputError("summarise: no rows given; score at least one image first")
    for i, r in enumerate(rows):
        if by not in r:
            raise InvalidInputError(f"summarise: row {i} has no {by!r} key (keys: {sorted(r)})")
        missing = [k for k in keys if k not in r]
        if missing:
            raise InvalidInputError(f"summarise: row {i} lacks score keys {missing}")

    def mean_row(name: str, group: list[Mapping[str, object]]) -> dict[str, object]:
        out: dict[str, object] = {by: name, "n_images": len(group)}
        for k in keys:
            vals = np.array([float(r[k]) for r in group], dtype=np.float64)
            ok = np.isfinite(vals)
            out[k] = float(vals[ok].mean()) if ok.any() else math.nan
            out[f"{k}_n"] = int(ok.sum())
        return out

    table = [mean_row(c, [r for r in rows if str(r[by]) == c]) for c in _class_order(str(r[by]) for r in rows)]
    if total:
        table.append(mean_row(total, list(rows)))
    return table


def format_table(
    table: Sequence[Mapping[str, object]],
    columns: Sequence[str] = ("n_images", "accuracy", "precision", "recall", "f1", "iou", "occluder_f1"),
    *,
    by: str = "occluder_class",
    digits: int = 3,
) -> str:
    """A Markdown table of :func:`summarise` output (NaN shown as ``-``).

    Example:
        >>> print(format_table([{"occluder_class": "none", "n_images": 2, "f1": 0.9}], ("n_images", "f1")))
        | occluder_class | n_images | f1 |
        |---|---|---|
        | none | 2 | 0.900 |
    """
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join((by, *columns)) + " |", "|" + "---|" * (len(columns) + 1)]
    for r in table:
        lines.append("| " + " | ".join(cell(r.get(c, math.nan)) for c in (by, *columns)) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- 3D
@dataclass(frozen=True)
class Similarity:
    """``x ↦ scale · rotation @ x + translation`` (rotation ``(3, 3)``, translation ``(3,)``, same units as x).

    Example:
        >>> s = Similarity(2.0, np.eye(3), np.zeros(3))
        >>> s.apply(np.ones((1, 3)))
        array([[2., 2., 2.]])
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform ``(..., 3)`` points."""
        pts = np.asarray(points, dtype=np.float64)
        return self.scale * pts @ self.rotation.T + self.translation

    def compose(self, first: "Similarity") -> "Similarity":
        """``self ∘ first`` (apply ``first``, then ``self``)."""
        return Similarity(
            self.scale * first.scale,
            self.rotation @ first.rotation,
            self.scale * self.rotation @ first.translation + self.translation,
        )


@dataclass(frozen=True)
class ErrorStats:
    """Distances (mm) and their summary: ``median``, ``mean``, ``std`` (population), and the alignment used.

    Example:
        >>> ErrorStats.of(np.array([1.0, 2.0, 6.0])).as_dict()
        {'median': 2.0, 'mean': 3.0, 'std': 2.160246899469287}
    """

    distances: np.ndarray
    median: float
    mean: float
    std: float
    transform: Similarity | None = None

    @staticmethod
    def of(distances: np.ndarray, transform: Similarity | None = None) -> "ErrorStats":
        d = np.asarray(distances, dtype=np.float64).reshape(-1)
        if d.size == 0:
            raise InvalidInputError("no distances to summarise (empty point set)")
        return ErrorStats(d, float(np.median(d)), float(d.mean()), float(d.std()), transform)

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "mean": self.mean, "std": self.std}


def _points(name: str, a, n: int | None = None) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    check_shape(name, arr, (n, 3))
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name} contains NaN or infinite coordinates")
    return arr


def umeyama(src: np.ndarray, dst: np.ndarray, *, with_scale: bool = True,
            weights: np.ndarray | None = None) -> Similarity:
    """Least-squares similarity (or rigid) transform taking ``src`` onto ``dst`` (Umeyama 1991).

    Minimises ``Σ w_i |dst_i - (s R src_i + t)|²`` with ``R`` a proper rotation.

    Args:
        src, dst: ``(N, 3)`` corresponding points, N ≥ 3 not all collinear.
        with_scale: estimate ``s`` (else ``s = 1``: rigid).
        weights: optional ``(N,)`` non-negative weights.

    Returns:
        :class:`Similarity` with ``apply(src) ≈ dst``.

    Example:
        >>> src = np.random.default_rng(0).normal(size=(10, 3))
        >>> t = umeyama(src, 2 * src + 1)
        >>> round(t.scale, 6)
        2.0
    """
    src = _points("src", src)
    dst = _points("dst", dst, src.shape[0])
    if src.shape[0] < 3:
        raise InvalidInputError(f"umeyama needs at least 3 point pairs, got {src.shape[0]}")
    w = np.ones(src.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != src.shape[0] or np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise InvalidInputError("umeyama weights must be N finite non-negative values with a positive sum")
    w = w / w.sum()
    mu_s = w @ src
    mu_d = w @ dst
    xs = src - mu_s
    xd = dst - mu_d
    cov = (xd * w[:, None]).T @ xs  # Σ w (d - μd)(s - μs)ᵀ
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = float(w @ (xs**2).sum(1))
    if var_s <= 1e-20:
        raise InvalidInputError("umeyama: the source points all coincide; cannot estimate a transform")
    scale = float((sv * d).sum() / var_s) if with_scale else 1.0
    trans = mu_d - scale * rot @ mu_s
    return Similarity(scale, rot, trans)


def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest points on triangles ``(a, b, c)`` to points ``p`` (all ``(M, 3)``), Ericson's regions."""
    ab, ac, ap = b - a, c - a, p - a
    d1 = (ab * ap).sum(1)
    d2 = (ac * ap).sum(1)
    bp = p - b
    d3 = (ab * bp).sum(1)
    d4 = (ac * bp).sum(1)
    cp = p - c
    d5 = (ab * cp).sum(1)
    d6 = (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        den = va + vb + vc
        den = np.where(den == 0, 1.0, den)
        v = vb / den
        w = vc / den
        out = a + ab * v[:, None] + ac * w[:, None]  # interior
        # edge regions
        t_ab = np.where(d1 - d3 != 0, d1 / (d1 - d3), 0.0)
        t_ac = np.where(d2 - d6 != 0, d2 / (d2 - d6), 0.0)
        t_bc = np.where((d4 - d3) + (d5 - d6) != 0, (d4 - d3) / ((d4 - d3) + (d5 - d6)), 0.0)
    # Voronoi regions, written lowest priority first (Ericson's test order reversed): BC, AC, C, AB, B, A.
    on_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    out = np.where(on_bc[:, None], b + (c - b) * t_bc[:, None], out)
    on_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    out = np.where(on_ac[:, None], a + ac * t_ac[:, None], out)
    out = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, out)
    on_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    out = np.where(on_ab[:, None], a + ab * t_ab[:, None], out)
    out = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, out)
    out = np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, out)
    return out


def _best_over_pairs(q: np.ndarray, tv: np.ndarray, qi: np.ndarray, ti: np.ndarray, n: int, chunk: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query (``n`` of them), the nearest of the candidate (query ``qi``, triangle ``ti``) pairs."""
    best_d = np.full(n, np.inf)
    best_p = np.zeros((n, 3))
    best_t = np.full(n, -1, dtype=np.int64)
    for s in range(0, len(qi), chunk):
        qq, tt = qi[s:s + chunk], ti[s:s + chunk]
        cp = _closest_on_triangles(q[qq], tv[tt, 0], tv[tt, 1], tv[tt, 2])
        d = np.linalg.norm(cp - q[qq], axis=1)
        order = np.lexsort((d, qq))  # by query, nearest first
        first = np.ones(len(order), bool)
        first[1:] = qq[order][1:] != qq[order][:-1]
        sel = order[first]
        better = d[sel] < best_d[qq[sel]]
        idx = qq[sel][better]
        best_d[idx] = d[sel][better]
        best_p[idx] = cp[sel][better]
        best_t[idx] = tt[sel][better]
    return best_p, best_d, best_t


def closest_points_on_mesh(
    vertices: np.ndarray, triangles: np.ndarray, points: np.ndarray, *, chunk: int = 400_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact closest points on a triangle mesh's surface (not only its vertices).

    Candidates come from a k-d tree over triangle centroids. The triangle of
    the nearest centroid gives an upper bound ``d0`` on the answer; every
    triangle lies within ``R_t`` (its largest centroid-to-corner distance) of
    its centroid, so only triangles with ``|q - c_t| - R_t <= d0`` can hold
    the closest point, and all of them are found by a radius query of
    ``d0 + max R_t``. The closest point on each candidate is computed in
    closed form (Ericson, *Real-Time Collision Detection*, 5.1.5). The result
    is exact.

    Args:
        vertices: ``(N, 3)`` mesh vertices.
        triangles: ``(T, 3)`` int vertex indices.
        points: ``(M, 3)`` query points.
        chunk: candidate pairs evaluated per batch (memory bound).

    Returns:
        ``(closest (M, 3), distance (M,), triangle (M,))``.

    Example:
        >>> v = np.array([[0., 0, 0], [1, 0, 0], [0, 1, 0]]); f = np.array([[0, 1, 2]])
        >>> closest_points_on_mesh(v, f, np.array([[0.2, 0.2, 3.0]]))[1]
        array([3.])
    """
    v = _points("vertices", vertices)
    q = _points("points", points)
    f = np.asarray(triangles)
    check_shape("triangles", f, (None, 3))
    if f.shape[0] == 0:
        raise InvalidInputError("closest_points_on_mesh: the mesh has no triangles")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise InvalidInputError(f"triangles index vertices outside [0, {v.shape[0]})")
    tv = v[f]  # (T, 3, 3)
    centroid = tv.mean(1)
    r_tri = np.linalg.norm(tv - centroid[:, None], axis=2).max(1)
    r_max = float(r_tri.max())
    tree = cKDTree(centroid)
    m, n_tri = len(q), len(f)
    _, t0 = tree.query(q, k=1)
    d0 = np.linalg.norm(_closest_on_triangles(q, tv[t0, 0], tv[t0, 1], tv[t0, 2]) - q, axis=1)
    radius = d0 + r_max + 1e-9
    counts = np.asarray(tree.query_ball_point(q, radius, return_length=True), dtype=np.int64)
    best_p = np.zeros_like(q)
    best_d = np.full(m, np.inf)
    best_t = np.full(m, -1, dtype=np.int64)
    # group queries by candidate count so that the padded (queries, k) arrays stay small
    order = np.argsort(counts, kind="stable")
    start = 0
    while start < m:
        k = int(counts[order[start]])
        k = min(n_tri, max(16, 2 * k))
        stop = int(np.searchsorted(counts[order], k, side="right"))
        group = order[start:stop]
        dk, cand = tree.query(q[group], k=k, distance_upper_bound=float(radius[group].max()))
        dk, cand = dk.reshape(len(group), k), cand.reshape(len(group), k)
        ok = cand < n_tri
        safe = np.where(ok, cand, 0)
        ok &= dk - r_tri[safe] <= d0[group, None] + 1e-9  # the per-triangle bound
        qi = np.broadcast_to(np.arange(len(group))[:, None], ok.shape)[ok]
        p, d, t = _best_over_pairs(q[group], tv, qi, cand[ok], len(group), chunk)
        best_p[group], best_d[group], best_t[group] = p, d, t
        start = stop
    return best_p, best_d, best_t


def _landmark_pairs(landmarks, n_pred: int, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(landmarks, tuple) and len(landmarks) == 2:
        pi, gi = (np.asarray(x, dtype=np.int64).reshape(-1) for x in landmarks)
    else:
        pi = gi = np.asarray(landmarks, dtype=np.int64).reshape(-1)
    if pi.shape != gi.shape:
        raise ShapeError(f"landmarks: prediction and ground truth index sets differ in length "
                         f"({pi.shape[0]} vs {gi.shape[0]})")
    if pi.size < 3:
        raise InvalidInputError(f"landmarks: need at least 3 corresponding points, got {pi.size}")
    if pi.min() < 0 or pi.max() >= n_pred or gi.min() < 0 or gi.max() >= n_gt:
        raise InvalidInputError("landmarks: an index is outside the vertex range of its mesh")
    return pi, gi


def align_similarity(
    pred: np.ndarray,
    gt: np.ndarray,
    landmarks,
    *,
    pred_triangles: np.ndarray | None = None,
    iterations: int = 10,
    with_scale: bool = True,
    tolerance: float = 1e-3,
) -> Similarity:
    """NoW-style alignment of a predicted mesh to the ground truth: landmarks, then surface refinement.

    1. Umeyama similarity from corresponding landmark vertices.
    2. If ``pred_triangles`` is given, ``iterations`` rounds of ICP: every
       ground-truth vertex is paired with its closest point on the currently
       aligned predicted surface, and the similarity is re-estimated on those
       pairs (stops early when the mean distance improves by < ``tolerance`` mm).

    Args:
        pred: ``(Np, 3)`` predicted vertices (mm).
        gt: ``(Ng, 3)`` ground-truth vertices (mm).
        landmarks: ``(L,)`` vertex indices valid in both meshes (same
            topology) or a pair ``(pred_idx (L,), gt_idx (L,))``; L ≥ 3.
        pred_triangles: ``(T, 3)`` triangles of ``pred`` to refine by
            point-to-surface distance; None: landmarks only.
        iterations: maximum refinement rounds.
        with_scale: estimate a scale (NoW does); False: rigid.
        tolerance: early stop on the mean distance change (mm).

    Returns:
        :class:`Similarity` mapping ``pred`` into the ground truth's frame.

    Example:
        >>> t = align_similarity(pred_vertices, gt_vertices, model.landmark_indices("ibug68"))  # doctest: +SKIP
        >>> aligned = t.apply(pred_vertices)                                                  # doctest: +SKIP
    """
    p = _points("pred", pred)
    g = _points("gt", gt)
    pi, gi = _landmark_pairs(landmarks, len(p), len(g))
    tr = umeyama(p[pi], g[gi], with_scale=with_scale)
    if pred_triangles is None or iterations <= 0:
        return tr
    prev = math.inf
    for _ in range(int(iterations)):
        cp, d, _ = closest_points_on_mesh(tr.apply(p), pred_triangles, g)
        # cp lies on the aligned surface; map it back to pred's frame and re-fit pred → gt.
        src = ((cp - tr.translation) @ tr.rotation) / tr.scale
        tr = umeyama(src, g, with_scale=with_scale)
        mean = float(d.mean())
        if prev - mean < tolerance:
            break
        prev = mean
    return tr


def point_to_surface_error(
    pred_vertices: np.ndarray,
    pred_triangles: np.ndarray,
    gt_vertices: np.ndarray,
    *,
    landmarks=None,
    iterations: int = 10,
    with_scale: bool = True,
) -> ErrorStats:
    """NoW-style 3D error: distance of every ground-truth vertex to the (aligned) predicted surface.

    Args:
        pred_vertices: ``(Np, 3)`` predicted mesh (mm).
        pred_triangles: ``(T, 3)`` its triangles.
        gt_vertices: ``(Ng, 3)`` ground-truth vertices (mm); any topology.
        landmarks: corresponding landmark indices for :func:`align_similarity`
            (``(L,)`` or ``(pred_idx, gt_idx)``); None: no alignment (the meshes
            are already in one frame).
        iterations: surface-refinement rounds of the alignment.
        with_scale: similarity (True, NoW) or rigid alignment.

    Returns:
        :class:`ErrorStats` (mm) with the per-gt-vertex distances and the transform used.

    Example:
        >>> err = point_to_surface_error(v_fit, model.triangles, v_true, landmarks=idx68)  # doctest: +SKIP
        >>> err.median                                                                       # doctest: +SKIP
    """
    p = _points("pred_vertices", pred_vertices)
    g = _points("gt_vertices", gt_vertices)
    tr = None
    if landmarks is not None:
        tr = align_similarity(p, g, landmarks, pred_triangles=pred_triangles, iterations=iterations,
                              with_scale=with_scale)
        p = tr.apply(p)
    _, d, _ = closest_points_on_mesh(p, pred_triangles, g)
    return ErrorStats.of(d, tr)


def vertex_error_same_topology(pred: np.ndarray, gt: np.ndarray, *, align: str = "similarity") -> ErrorStats:
    """Vertex-to-vertex error of two meshes with one topology, after a full Umeyama alignment.

    Args:
        pred, gt: ``(N, 3)`` vertices in correspondence (mm).
        align: ``"similarity"`` (rotation, translation, scale over all
            vertices), ``"rigid"`` (no scale) or ``"none"``.

    Returns:
        :class:`ErrorStats` of the ``N`` Euclidean distances (mm).

    Example:
        >>> v = np.random.default_rng(0).normal(size=(50, 3))
        >>> vertex_error_same_topology(1.5 * v + 3.0, v).mean < 1e-9
        True
    """
    p = _points("pred", pred)
    g = _points("gt", gt, p.shape[0])
    if align not in ("similarity", "rigid", "none"):
        raise ConfigError(f"align must be 'similarity', 'rigid' or 'none', got {align!r}")
    tr = None
    if align != "none":
        tr = umeyama(p, g, with_scale=align == "similarity")
        p = tr.apply(p)
    return ErrorStats.of(np.linalg.norm(p - g, axis=1), tr)


# --------------------------------------------------------------------------- 2D and photometric
def landmark_nme(pred: np.ndarray, gt: np.ndarray, *, outer_eyes: tuple[int, int] = (36, 45)) -> np.ndarray | float:
    """Landmark error normalised by the outer-eye-corner (inter-ocular) distance.

    ``mean_k |pred_k - gt_k| / |gt[36] - gt[45]|`` (0-based iBUG indices).

    Args:
        pred, gt: ``(68, 2)`` or ``(B, 68, 2)`` pixel coordinates.
        outer_eyes: indices of the two outer eye corners in ``gt``.

    Returns:
        A float (unbatched) or ``(B,)`` array; unitless (multiply by 100 for %).

    Example:
        >>> gt = np.zeros((68, 2)); gt[45, 0] = 100.0
        >>> landmark_nme(gt + [3.0, 4.0], gt)
        0.05
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if g.ndim not in (2, 3) or g.shape[-1] != 2:
        raise ShapeError(f"gt: expected shape (L, 2) or (B, L, 2), got {g.shape}")
    if p.shape != g.shape:
        raise ShapeError(f"pred: expected shape {g.shape} (same as gt), got {p.shape}")
    a, b = outer_eyes
    if max(a, b) >= g.shape[-2]:
        raise InvalidInputError(f"outer_eyes {outer_eyes} outside the {g.shape[-2]} landmarks; pass iBUG-68 points")
    norm = np.linalg.norm(g[..., a, :] - g[..., b, :], axis=-1)
    if np.any(norm <= 0):
        raise InvalidInputError("the ground-truth outer eye corners coincide; cannot normalise the error")
    nme = np.linalg.norm(p - g, axis=-1).mean(-1) / norm
    return float(nme) if g.ndim == 2 else nme


def photometric_rmse(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root-mean-square colour difference over the pixels of ``mask`` (all channels).

    Args:
        pred, target: ``(H, W, C)`` or ``(H, W)`` images in the same units (e.g. [0, 1]).
        mask: ``(H, W)`` bool pixels to include; None: all. An empty mask gives NaN.

    Returns:
        ``sqrt(mean((pred - target)²))`` over the masked pixels and channels.

    Example:
        >>> a = np.zeros((2, 2, 3)); b = a + 0.1
        >>> round(photometric_rmse(a, b, np.array([[1, 0], [0, 0]], bool)), 6)
        0.1
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape or p.ndim not in (2, 3):
        raise ShapeError(f"pred and target: expected equal (H, W[, C]) shapes, got {p.shape} and {t.shape}")
    m = np.ones(p.shape[:2], bool) if mask is None else _as_mask("mask", mask, p.shape[:2])
    if not m.any():
        return math.nan
    diff = (p - t)[m]
    return float(np.sqrt(np.mean(diff**2)))
