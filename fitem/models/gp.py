"""Low-rank Gaussian processes on mesh vertices: the machinery behind the demo model.

A Gaussian Process Morphable Model (Lüthi et al., TPAMI 2018) describes
deformations (or colour changes) of a mean mesh by a Gaussian process with a
hand-designed kernel; a low-rank approximation of that kernel on the mesh's
vertices gives a linear model of the kind :class:`~fitem.models.LinearBlock`
holds. This module has the pieces, free of anything face-specific:

- :func:`squared_exponential`: the scalar kernel ``exp(-|x - y|² / (2 ℓ²))``.
- :func:`pivoted_cholesky` / :func:`se_features`: a low-rank factor ``Φ`` with
  ``Φ Φᵀ ≈ K`` (``K - Φ Φᵀ`` stays positive semi-definite and its trace is at
  most ``rel_tol · trace K``), computed column by column, never forming ``K``.
- :func:`mirror_parity`: even/odd parts of features under a vertex mirror
  permutation, for Gerig et al.'s (2018) symmetric kernels
  ``k(x, y) ± k(x, mirror(y))``: samples of the even part are exactly
  mirror-symmetric, those of the odd part exactly antisymmetric.
- :func:`rigid_motion_basis`: the six infinitesimal rigid motions of a point
  set, to project out of a shape model (pose handles them).
- :func:`principal_components`: eigenvectors/eigenvalues of ``F Fᵀ`` from a
  feature matrix ``F`` via its small Gram matrix.
- :class:`KernelTerm` / :func:`low_rank_gp`: a vector-valued kernel as a sum
  of terms ``w(x) w(y) k(x, y) · Σ_a s_a² e_a e_aᵀ`` over an orthonormal
  output basis ``e_a``, split into mirror-symmetric and antisymmetric parts,
  reduced to its leading components (optionally without rigid motions).

Conventions: points ``(N, 3)`` in mm; vector fields are flattened with xyz
interleaved per vertex (``x0, y0, z0, x1, ...``), as in
:class:`~fitem.models.LinearBlock`. Everything here is deterministic (no
random projections), float64.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from fitem.errors import InvalidInputError, ShapeError, check_shape

__all__ = [
    "squared_exponential",
    "pivoted_cholesky",
    "se_features",
    "mirror_parity",
    "rigid_motion_basis",
    "project_out",
    "principal_components",
    "KernelTerm",
    "LowRankGP",
    "low_rank_gp",
    "one_blas_thread",
]


def one_blas_thread() -> contextlib.AbstractContextManager:
    """Context manager running NumPy's BLAS/LAPACK on one thread (needs ``threadpoolctl``; else a no-op).

    The matrices here are small enough that one thread loses little, and it
    makes results bit-for-bit reproducible whatever the core count and
    avoids the many-fold slow-down of a threaded BLAS on a busy machine.

    Example:
        >>> with one_blas_thread():
        ...     _ = np.ones((4, 4)) @ np.ones((4, 4))
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional dependency: without it BLAS keeps its default threads
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _points(name: str, points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    check_shape(name, pts, (None, 3))
    if not np.all(np.isfinite(pts)):
        raise InvalidInputError(f"{name} contains NaN or inf coordinates")
    return pts


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise InvalidInputError(f"{name} must be a positive finite number, got {value}")
    return value


def squared_exponential(a: np.ndarray, b: np.ndarray, lengthscale: float) -> np.ndarray:
    """The squared-exponential kernel matrix ``exp(-|a_i - b_j|² / (2 ℓ²))``.

    Args:
        a: ``(Na, 3)`` points (mm).
        b: ``(Nb, 3)`` points (mm).
        lengthscale: ``ℓ`` in the units of the points (mm).

    Returns:
        ``(Na, Nb)`` float64, ones on coinciding points.

    Example:
        >>> squared_exponential(np.zeros((1, 3)), np.array([[0.0, 0.0, 10.0]]), 10.0).round(4)
        array([[0.6065]])
    """
    a = _points("a", a)
    b = _points("b", b)
    ell = _positive("lengthscale", lengthscale)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0.0, out=d2)
    return np.exp(d2 * (-0.5 / (ell * ell)))


def pivoted_cholesky(
    diagonal: np.ndarray,
    column: Callable[[int], np.ndarray],
    *,
    rel_tol: float = 1e-3,
    max_rank: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy pivoted Cholesky factor of a positive semi-definite matrix given by columns.

    At each step the pivot is the row with the largest remaining diagonal;
    the loop stops when the remaining diagonal sums to at most
    ``rel_tol · trace`` or after ``max_rank`` columns. The residual
    ``K - L Lᵀ`` is positive semi-definite with trace = the remaining
    diagonal sum (Harbrecht, Peters & Schneider 2012), so ``L Lᵀ`` never
    over-states the variance.

    Args:
        diagonal: ``(N,)`` the matrix diagonal (non-negative).
        column: ``column(i)`` returns column ``i`` of the matrix, ``(N,)``.
        rel_tol: stop once the residual trace is at most this fraction of the trace.
        max_rank: upper bound on the rank (default ``N``).

    Returns:
        ``(L, pivots)``: ``L`` ``(N, r)`` float64 with ``L Lᵀ ≈ K``; ``pivots`` ``(r,)`` int64.

    Example:
        >>> x = np.linspace(0, 100, 50)[:, None] * [1.0, 0.0, 0.0]
        >>> K = squared_exponential(x, x, 30.0)
        >>> L, piv = pivoted_cholesky(np.diag(K).copy(), lambda i: K[:, i], rel_tol=1e-6)
        >>> bool(np.abs(K - L @ L.T).max() < 1e-5), L.shape[1] < 20
        (True, True)
    """
    d = np.array(diagonal, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(d)) or np.any(d < -1e-12):
        raise InvalidInputError("pivoted_cholesky: the diagonal must be finite and non-negative")
    np.maximum(d, 0.0, out=d)
    n = d.shape[0]
    if not (0.0 <= float(rel_tol) < 1.0):
        raise InvalidInputError(f"pivoted_cholesky: rel_tol must be in [0, 1), got {rel_tol}")
    rank_cap = n if max_rank is None else max(0, min(int(max_rank), n))
    trace = float(d.sum())
    rows = np.zeros((min(rank_cap, 64), n), dtype=np.float64)  # factor transposed, grown on demand
    pivots: list[int] = []
    stop = float(rel_tol) * trace
    for k in range(rank_cap):
        if float(d.sum()) <= stop or trace <= 0.0:
            break
        p = int(np.argmax(d))
        dp = float(d[p])
        if dp <= 1e-14 * max(trace, 1e-300):
            break
        col = np.array(column(p), dtype=np.float64).reshape(-1)
        if col.shape[0] != n:
            raise ShapeError(f"pivoted_cholesky: column({p}) has {col.shape[0]} entries, expected {n}")
        if k:
            col -= rows[:k, p] @ rows[:k]
        col /= np.sqrt(dp)
        if k == rows.shape[0]:
            rows = np.concatenate([rows, np.zeros((min(rows.shape[0], rank_cap - k), n))])
        rows[k] = col
        d -= col * col
        d[p] = 0.0
        np.maximum(d, 0.0, out=d)
        pivots.append(p)
    r = len(pivots)
    factor = rows[:r].T
    return np.ascontiguousarray(factor), np.asarray(pivots, dtype=np.int64)


def se_features(
    points: np.ndarray,
    lengthscale: float,
    *,
    weights: np.ndarray | None = None,
    rel_tol: float = 1e-3,
    max_rank: int | None = None,
) -> np.ndarray:
    """Low-rank features of a (region-weighted) squared-exponential kernel on points.

    The kernel is ``w(x) w(y) exp(-|x - y|² / (2 ℓ²))`` (``w = 1`` without
    ``weights``); the result ``Φ`` satisfies ``Φ Φᵀ ≈ K`` with residual trace
    at most ``rel_tol · trace K`` (see :func:`pivoted_cholesky`).

    Args:
        points: ``(N, 3)`` vertex positions (mm).
        lengthscale: ``ℓ`` (mm).
        weights: optional ``(N,)`` non-negative region weights ``w``.
        rel_tol: relative trace error allowed.
        max_rank: optional cap on the number of features.

    Returns:
        ``(N, r)`` float64.

    Example:
        >>> pts = np.random.default_rng(0).normal(size=(500, 3)) * 30
        >>> se_features(pts, 80.0).shape[1] < 40
        True
    """
    pts = _points("points", points)
    ell = _positive("lengthscale", lengthscale)
    n = pts.shape[0]
    if weights is None:
        w = np.ones(n)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != n:
            raise ShapeError(f"weights: expected shape ({n},) (one per point), got {np.shape(weights)}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise InvalidInputError("weights must be finite and non-negative")
    sq = (pts * pts).sum(1)
    scale = -0.5 / (ell * ell)

    def column(i: int) -> np.ndarray:
        d2 = sq + sq[i] - 2.0 * (pts @ pts[i])
        np.maximum(d2, 0.0, out=d2)
        return w * w[i] * np.exp(d2 * scale)

    factor, _ = pivoted_cholesky(w * w, column, rel_tol=rel_tol, max_rank=max_rank)
    return factor


def mirror_parity(features: np.ndarray, permutation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Even and odd parts of scalar features under a vertex permutation that is an involution.

    With ``Π`` the permutation (``(Π f)_i = f_{p(i)}``, ``p(p(i)) = i``) and
    ``Φ Φᵀ ≈ K`` for a mirror-invariant kernel, the even part
    ``(Φ + ΠΦ)/√2`` approximates ``K + ΠK`` (kernel ``k(x, y) + k(x, mirror(y))``)
    and the odd part ``(Φ - ΠΦ)/√2`` approximates ``K - ΠK``. Any linear
    combination of even columns ``f`` satisfies ``f[p] == f`` exactly, of odd
    columns ``f[p] == -f``.

    Args:
        features: ``(N, r)``.
        permutation: ``(N,)`` int, an involution of ``range(N)``.

    Returns:
        ``(even, odd)``, each ``(N, r)``.

    Example:
        >>> phi = np.arange(6.0).reshape(3, 2)
        >>> even, odd = mirror_parity(phi, np.array([2, 1, 0]))
        >>> bool(np.allclose(even[[2, 1, 0]], even)), bool(np.allclose(odd[[2, 1, 0]], -odd))
        (True, True)
    """
    phi = np.asarray(features, dtype=np.float64)
    if phi.ndim != 2:
        raise ShapeError(f"features: expected shape (N, r), got {phi.shape}")
    perm = _involution(permutation, phi.shape[0])
    mirrored = phi[perm]
    s = 1.0 / np.sqrt(2.0)
    return (phi + mirrored) * s, (phi - mirrored) * s


def _involution(permutation: np.ndarray, n: int) -> np.ndarray:
    perm = np.asarray(permutation)
    if perm.shape != (n,) or not np.issubdtype(perm.dtype, np.integer):
        raise ShapeError(f"permutation: expected an integer array of shape ({n},), got {perm.dtype} {perm.shape}")
    perm = perm.astype(np.int64)
    if perm.min(initial=0) < 0 or perm.max(initial=0) >= n or np.any(perm[perm] != np.arange(n)):
        raise InvalidInputError("permutation must be an involution of range(N) (p[p[i]] == i for all i)")
    return perm


def rigid_motion_basis(points: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """Orthonormal basis of the infinitesimal rigid motions of a point set.

    Columns span the three translations and the three rotations about
    ``centre`` (default: the centroid), as flattened ``(3N,)`` vector fields
    (xyz interleaved).

    Args:
        points: ``(N, 3)``.
        centre: ``(3,)`` rotation centre.

    Returns:
        ``(3N, 6)`` float64 with orthonormal columns.

    Example:
        >>> Q = rigid_motion_basis(np.random.default_rng(0).normal(size=(10, 3)))
        >>> bool(np.allclose(Q.T @ Q, np.eye(6)))
        True
    """
    pts = _points("points", points)
    c = pts.mean(0) if centre is None else np.asarray(centre, dtype=np.float64).reshape(3)
    rel = pts - c
    n = pts.shape[0]
    cols = []
    for axis in range(3):
        t = np.zeros((n, 3))
        t[:, axis] = 1.0
        cols.append(t.reshape(-1))
    for axis in range(3):
        omega = np.zeros(3)
        omega[axis] = 1.0
        cols.append(np.cross(omega, rel).reshape(-1))
    q, _ = np.linalg.qr(np.stack(cols, 1))
    return q


def project_out(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``(I - Q Qᵀ) F``: remove from the columns of ``F`` their part in the span of orthonormal ``Q``.

    Args:
        vectors: ``(D, R)`` columns ``F``.
        basis: ``(D, q)`` orthonormal columns ``Q``.

    Returns:
        ``(D, R)``.

    Example:
        >>> Q = np.eye(3)[:, :1]
        >>> project_out(np.ones((3, 1)), Q).ravel().tolist()
        [0.0, 1.0, 1.0]
    """
    f = np.asarray(vectors, dtype=np.float64)
    q = np.asarray(basis, dtype=np.float64)
    if f.ndim != 2 or q.ndim != 2 or q.shape[0] != f.shape[0]:
        raise ShapeError(f"project_out: expected vectors (D, R) and basis (D, q), got {f.shape} and {q.shape}")
    return f - q @ (q.T @ f)


def principal_components(features: np.ndarray, n_components: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Leading eigenvectors and eigenvalues of ``F Fᵀ`` for a tall feature matrix ``F``.

    Computed from the small Gram matrix ``Fᵀ F`` (``R × R``), so the cost is
    ``D R²``. Signs are fixed deterministically (each vector's entry of
    largest magnitude is positive).

    Args:
        features: ``(D, R)``.
        n_components: how many to return (default all ``R``; fewer if ``F``
            has lower rank).

    Returns:
        ``(vectors, eigenvalues)``: ``(D, K)`` orthonormal columns and ``(K,)``
        non-increasing, positive.

    Example:
        >>> F = np.diag([3.0, 1.0, 2.0])
        >>> U, lam = principal_components(F, 2)
        >>> lam.tolist()
        [9.0, 4.0]
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ShapeError(f"features: expected shape (D, R), got {f.shape}")
    if f.shape[1] == 0:
        return np.zeros((f.shape[0], 0)), np.zeros((0,))
    gram = f.T @ f
    lam, vec = np.linalg.eigh(gram)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    tol = max(float(lam[0]), 0.0) * 1e-12 * max(gram.shape)
    keep = lam > tol
    if n_components is not None:
        keep &= np.arange(lam.shape[0]) < int(n_components)
    lam, vec = lam[keep], vec[:, keep]
    u = f @ (vec / np.sqrt(lam))
    idx = np.argmax(np.abs(u), axis=0)
    u *= np.sign(u[idx, np.arange(u.shape[1])])
    return u, lam


# ====================================================== vector-valued GPs
_KINDS = ("se", "constant", "linear")


@dataclass(frozen=True, eq=False)
class KernelTerm:
    """One term of a vector-valued Gaussian-process kernel on mesh vertices.

    The term's covariance between the outputs at vertices ``x`` and ``y`` is
    ``Σ_a std[a]² · k_a(x, y) · e_a e_aᵀ`` for the orthonormal output axes
    ``e_a`` given to :func:`low_rank_gp`, where

    - ``kind="se"``: ``k_a(x, y) = w(x) w(y) exp(-|x - y|² / (2 ℓ²))``;
    - ``kind="constant"``: ``k_a(x, y) = w(x) w(y)`` (one random value per
      axis shared by all vertices, e.g. an overall skin tone);
    - ``kind="linear"``: ``k_a(x, y) = (x_a - c_a)(y_a - c_a)`` (a random
      scaling along output axis ``a`` about ``centre``; output axes must be
      the coordinate axes).

    ``symmetric_fraction`` of each term's variance goes into the part whose
    samples are exactly mirror-symmetric, the rest into the antisymmetric part
    (Gerig et al. 2018: ``k(x, y) ± k(x, mirror(y))``). Linear terms are
    symmetric by construction and ignore it.

    Attributes:
        name: label for metadata.
        kind: ``"se"``, ``"constant"`` or ``"linear"``.
        std: ``(3,)`` standard deviation along each output axis (output units).
        lengthscale: ``ℓ`` in mm (``"se"`` only).
        weights: optional ``(N,)`` non-negative region weights ``w`` (typically in [0, 1]), mirror-symmetric.
        symmetric_fraction: in [0, 1].
        centre: ``(3,)`` scaling centre (``"linear"`` only, default the centroid).

    Example:
        >>> term = KernelTerm("coarse", "se", std=(4.0, 4.0, 6.0), lengthscale=80.0, symmetric_fraction=0.9)
        >>> term.describe()
        'coarse: se lengthscale=80mm std=(4, 4, 6) symmetric_fraction=0.9'
    """

    name: str
    kind: str
    std: tuple[float, float, float]
    lengthscale: float | None = None
    weights: np.ndarray | None = field(default=None, repr=False)
    symmetric_fraction: float = 1.0
    centre: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidInputError(f"KernelTerm {self.name!r}: kind must be one of {_KINDS}, got {self.kind!r}")
        std = tuple(float(s) for s in np.asarray(self.std, dtype=np.float64).reshape(-1))
        if len(std) != 3 or not all(np.isfinite(s) and s >= 0 for s in std):
            raise InvalidInputError(f"KernelTerm {self.name!r}: std must be 3 non-negative numbers, got {self.std}")
        object.__setattr__(self, "std", std)
        if self.kind == "se":
            _positive(f"KernelTerm {self.name!r}: lengthscale", self.lengthscale if self.lengthscale else 0.0)
        if not (0.0 <= float(self.symmetric_fraction) <= 1.0):
            raise InvalidInputError(
                f"KernelTerm {self.name!r}: symmetric_fraction must be in [0, 1], got {self.symmetric_fraction}")

    def describe(self) -> str:
        """One line for model metadata."""
        parts = [f"{self.name}: {self.kind}"]
        if self.kind == "se":
            parts.append(f"lengthscale={self.lengthscale:g}mm")
        parts.append("std=(" + ", ".join(f"{s:g}" for s in self.std) + ")")
        if self.kind != "linear":
            parts.append(f"symmetric_fraction={float(self.symmetric_fraction):g}")
        if self.weights is not None:
            parts.append("region-weighted")
        return " ".join(parts)


@dataclass(frozen=True, eq=False)
class LowRankGP:
    """Leading components of a vector-valued Gaussian process on mesh vertices.

    Attributes:
        basis: ``(3N, K)`` float64, orthonormal directions × standard deviation (xyz interleaved).
        variance: ``(K,)`` non-increasing eigenvalues.
        symmetric: ``(K,)`` bool: True where the component is exactly mirror-symmetric,
            False where it is exactly antisymmetric.
        total_variance: trace of the (low-rank-feature, rigid-motion-free) kernel on the vertices.
        kernel_trace: trace of the exact kernel on the vertices (before removing rigid motions).
        feature_ranks: number of pivoted-Cholesky features of each term.
    """

    basis: np.ndarray
    variance: np.ndarray
    symmetric: np.ndarray
    total_variance: float
    kernel_trace: float
    feature_ranks: dict

    @property
    def kept_fraction(self) -> float:
        """Share of ``total_variance`` the ``K`` components keep."""
        return float(self.variance.sum() / self.total_variance) if self.total_variance > 0 else 1.0


def _term_weights(term: KernelTerm, n: int, perm: np.ndarray) -> np.ndarray:
    w = np.ones(n) if term.weights is None else np.asarray(term.weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ShapeError(f"KernelTerm {term.name!r}: weights have {w.shape[0]} entries, expected {n}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InvalidInputError(f"KernelTerm {term.name!r}: weights must be finite and non-negative")
    if not np.allclose(w, w[perm], atol=1e-9):
        raise InvalidInputError(f"KernelTerm {term.name!r}: weights must be mirror-symmetric (w == w[mirror])")
    return w


def low_rank_gp(
    points: np.ndarray,
    mirror: np.ndarray,
    terms: Sequence[KernelTerm],
    n_components: int,
    *,
    axes: np.ndarray | None = None,
    axis_signs: Sequence[float] = (-1.0, 1.0, 1.0),
    remove: np.ndarray | None = None,
    rel_tol: float = 1e-3,
    max_rank: int | None = 600,
) -> LowRankGP:
    """Leading components of a sum of :class:`KernelTerm` s on a mirror-symmetric mesh.

    The mirror maps vertex ``i`` to ``mirror[i]`` and an output vector ``u``
    to ``M u`` with ``M e_a = axis_signs[a] e_a``; for a shape (displacement)
    model the axes are x, y, z with signs ``(-1, 1, 1)``, for colour any
    orthonormal colour axes with signs ``(1, 1, 1)``. A component is symmetric
    when ``u[mirror] == M u``, antisymmetric when ``u[mirror] == -M u``.

    Per output axis and parity, the terms' pivoted-Cholesky features are
    stacked and eigen-decomposed (:func:`principal_components`); the
    candidates of all axes are merged by variance. With ``remove`` (e.g.
    :func:`rigid_motion_basis`), the leading candidates of each parity are
    projected onto its orthogonal complement and decomposed again. The
    linear algebra runs on one BLAS thread (:func:`one_blas_thread`).

    Args:
        points: ``(N, 3)`` mesh vertices (mm), symmetric under ``mirror``.
        mirror: ``(N,)`` vertex mirror permutation (an involution).
        terms: the kernel terms.
        n_components: ``K``, how many components to keep.
        axes: ``(3, 3)`` orthonormal output axes as columns (default identity).
        axis_signs: the mirror's sign on each axis.
        remove: optional ``(3N, q)`` orthonormal directions removed from the
            process (its span must be mirror-invariant).
        rel_tol: the pivoted-Cholesky features of all terms together leave at
            most about this fraction of the kernel's trace unexplained (each
            squared-exponential term gets an equal share of that budget, so
            terms with little variance get few features).
        max_rank: cap on the features per term.

    Returns:
        :class:`LowRankGP`.

    Example:
        >>> pts = np.array([[-10.0, 0, 0], [10.0, 0, 0], [0, 10.0, 0], [0, -10.0, 0]])
        >>> gp_ = low_rank_gp(pts, np.array([1, 0, 2, 3]), [KernelTerm("t", "se", (1, 1, 1), 20.0)], 4)
        >>> gp_.basis.shape, bool(gp_.symmetric[0])
        ((12, 4), True)
    """
    with one_blas_thread():
        return _low_rank_gp(points, mirror, terms, n_components, axes=axes, axis_signs=axis_signs,
                            remove=remove, rel_tol=rel_tol, max_rank=max_rank)


def _low_rank_gp(
    points: np.ndarray,
    mirror: np.ndarray,
    terms: Sequence[KernelTerm],
    n_components: int,
    *,
    axes: np.ndarray | None = None,
    axis_signs: Sequence[float] = (-1.0, 1.0, 1.0),
    remove: np.ndarray | None = None,
    rel_tol: float = 1e-3,
    max_rank: int | None = 600,
) -> LowRankGP:
    """:func:`low_rank_gp` without the BLAS thread limit."""
    pts = _points("points", points)
    n = pts.shape[0]
    perm = _involution(mirror, n)
    ax = np.eye(3) if axes is None else np.asarray(axes, dtype=np.float64)
    if ax.shape != (3, 3) or not np.allclose(ax.T @ ax, np.eye(3), atol=1e-9):
        raise InvalidInputError("axes must be a (3, 3) matrix with orthonormal columns")
    signs = np.asarray(axis_signs, dtype=np.float64).reshape(-1)
    if signs.shape != (3,) or not np.all(np.isin(signs, (-1.0, 1.0))):
        raise InvalidInputError(f"axis_signs must be three values of +1 or -1, got {axis_signs}")
    if int(n_components) < 0:
        raise InvalidInputError(f"n_components must be non-negative, got {n_components}")
    k_out = int(n_components)

    q = None if remove is None else np.asarray(remove, dtype=np.float64)
    if q is not None and (q.ndim != 2 or q.shape[0] != 3 * n):
        raise ShapeError(f"remove: expected shape ({3 * n}, q), got {q.shape}")
    # the removed directions seen by each output axis: q_a = sum_c ax[c, a] q[c::3]
    q_axes = None if q is None else np.einsum("ncq,ca->anq", q.reshape(n, 3, -1), ax)

    # feature groups: (axis, symmetric?) -> list of (scale, (N, r) features, squared norm, removed part)
    groups: dict[tuple[int, bool], list[tuple[float, np.ndarray, float, float | None]]] = {
        (a, s): [] for a in range(3) for s in (True, False)}
    weights = [_term_weights(t, n, perm) if t.kind != "linear" else None for t in terms]
    approx_trace = [float(np.sum(np.square(t.std))) * (float(w @ w) if w is not None else 0.0)
                    for t, w in zip(terms, weights)]
    n_se = max(1, sum(t.kind == "se" for t in terms))
    budget = float(rel_tol) * sum(approx_trace) / n_se  # residual trace allowed per SE term
    kernel_trace = 0.0
    ranks: dict[str, int] = {}

    def add(a: int, sym: bool, scale: float, feats: np.ndarray) -> None:
        removed = None if q_axes is None else float(((q_axes[a].T @ feats) ** 2).sum())
        groups[(a, sym)].append((scale, feats, float(np.einsum("ij,ij->", feats, feats)), removed))

    for term, w, tr in zip(terms, weights, approx_trace):
        std = np.asarray(term.std)
        if term.kind == "linear":
            if not np.allclose(ax, np.eye(3)):
                raise InvalidInputError(f"KernelTerm {term.name!r}: linear terms need the coordinate axes as outputs")
            c = pts.mean(0) if term.centre is None else np.asarray(term.centre, dtype=np.float64).reshape(3)
            for a in range(3):
                f = pts[:, a] - c[a]
                parity = f[perm] @ f / max(f @ f, 1e-300)
                if not np.isclose(abs(parity), 1.0, atol=1e-6):
                    raise InvalidInputError(f"KernelTerm {term.name!r}: centre must lie on the mirror plane")
                add(a, bool(np.sign(parity) == signs[a]), float(std[a]), f[:, None])
                kernel_trace += std[a] ** 2 * float(f @ f)
            ranks[term.name] = 1
            continue
        if term.kind == "se":
            tol = min(0.5, budget / tr) if tr > 0 else 0.5
            phi = se_features(pts, float(term.lengthscale), weights=w, rel_tol=tol, max_rank=max_rank)
            d2 = ((pts - pts[perm]) ** 2).sum(1)
            kappa = w * w * np.exp(-0.5 * d2 / float(term.lengthscale) ** 2)  # w(x) w(Mx) k(x, Mx)
        else:
            phi = w[:, None]
            kappa = w * w
        even, odd = mirror_parity(phi, perm)
        ranks[term.name] = phi.shape[1]
        frac = float(term.symmetric_fraction)
        for a in range(3):
            sym_feats, asym_feats = (even, odd) if signs[a] > 0 else (odd, even)
            if frac > 0 and std[a] > 0:
                add(a, True, float(np.sqrt(frac) * std[a]), sym_feats)
            if frac < 1 and std[a] > 0:
                add(a, False, float(np.sqrt(1.0 - frac) * std[a]), asym_feats)
            kernel_trace += std[a] ** 2 * float(np.sum(w * w + (2.0 * frac - 1.0) * signs[a] * kappa))

    # per (axis, parity): leading eigenpairs of the stacked features; the final top K
    # can hold at most K of any group (a few more when directions are projected out after)
    n_cand = k_out + (20 if q is not None else 0)
    total = 0.0
    found: dict[bool, list[tuple[int, np.ndarray, np.ndarray]]] = {True: [], False: []}
    for (a, sym), blocks in groups.items():
        if not blocks:
            continue
        feats = np.empty((n, sum(f.shape[1] for _, f, _, _ in blocks)))
        col = 0
        for scale, f, sq, removed in blocks:
            np.multiply(f, scale, out=feats[:, col:col + f.shape[1]])
            col += f.shape[1]
            total += scale * scale * (sq - (removed or 0.0))
        vecs, lam = principal_components(feats, n_cand)
        found[sym].append((a, vecs, lam))

    comps, lams, syms = [], [], []
    for sym, items in found.items():
        if not items:
            continue
        lam_all = np.concatenate([lam for _, _, lam in items])
        owner = np.concatenate([np.full(lam.shape, i) for i, (_, _, lam) in enumerate(items)])
        col = np.concatenate([np.arange(lam.shape[0]) for _, _, lam in items])
        order = np.argsort(-lam_all, kind="stable")[:n_cand]
        lifted = np.zeros((n, 3, order.size))
        for i, (a, vecs, _) in enumerate(items):
            pick = np.flatnonzero(owner[order] == i)
            lifted[:, :, pick] = vecs[:, col[order[pick]]][:, None, :] * ax[:, a][None, :, None]
        vecs, lam = lifted.reshape(3 * n, -1), lam_all[order]
        if q is not None:
            vecs *= np.sqrt(lam)
            vecs, lam = principal_components(project_out(vecs, q), k_out)
        comps.append(vecs)
        lams.append(lam)
        syms.append(np.full(lam.shape, sym))
    if not comps:
        return LowRankGP(np.zeros((3 * n, 0)), np.zeros(0), np.zeros(0, bool), 0.0, kernel_trace, ranks)
    lam = np.concatenate(lams)
    sym = np.concatenate(syms)
    order = np.argsort(-lam, kind="stable")[:k_out]
    sizes = np.cumsum([0] + [c.shape[1] for c in comps])
    basis = np.empty((3 * n, order.size))
    for j, o in enumerate(order):
        part = int(np.searchsorted(sizes, o, side="right") - 1)
        basis[:, j] = comps[part][:, o - sizes[part]] * np.sqrt(lam[o])
    return LowRankGP(basis, lam[order], sym[order], max(total, 0.0), kernel_trace, ranks)
