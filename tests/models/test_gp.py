"""fitem.models.gp: pivoted Cholesky, SE features, mirror parity, principal components, low-rank vector GPs."""
from __future__ import annotations

import numpy as np
import pytest

from fitem.errors import InvalidInputError, ShapeError
from fitem.models import gp


def _symmetric_cloud(n_half: int = 60, seed: int = 0):
    """Points symmetric under x -> -x (a few on the plane) and their mirror permutation."""
    rng = np.random.default_rng(seed)
    half = rng.normal(size=(n_half, 3)) * [20.0, 30.0, 10.0]
    half[:, 0] = -np.abs(half[:, 0]) - 1.0
    plane = rng.normal(size=(6, 3)) * [0.0, 30.0, 10.0]
    pts = np.concatenate([half, half * [-1.0, 1.0, 1.0], plane])
    perm = np.concatenate([np.arange(n_half) + n_half, np.arange(n_half), 2 * n_half + np.arange(6)])
    return pts, perm


def test_squared_exponential_values():
    a = np.zeros((1, 3))
    b = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    np.testing.assert_allclose(gp.squared_exponential(a, b, 5.0), [[1.0, np.exp(-0.5)]])
    with pytest.raises(InvalidInputError):
        gp.squared_exponential(a, b, 0.0)
    with pytest.raises(ShapeError):
        gp.squared_exponential(np.zeros((2, 2)), b, 1.0)


def test_pivoted_cholesky_error_bound_and_psd_residual():
    pts, _ = _symmetric_cloud()
    k = gp.squared_exponential(pts, pts, 15.0)
    for tol in (1e-1, 1e-3):
        lo, piv = gp.pivoted_cholesky(np.diag(k).copy(), lambda i: k[:, i], rel_tol=tol)
        resid = k - lo @ lo.T
        assert np.trace(resid) <= tol * np.trace(k) + 1e-9
        assert np.linalg.eigvalsh(resid).min() > -1e-8, "the residual must stay positive semi-definite"
        assert len(np.unique(piv)) == len(piv)
    full, _ = gp.pivoted_cholesky(np.diag(k).copy(), lambda i: k[:, i], rel_tol=0.0)
    np.testing.assert_allclose(full @ full.T, k, atol=1e-6)
    capped, _ = gp.pivoted_cholesky(np.diag(k).copy(), lambda i: k[:, i], rel_tol=0.0, max_rank=5)
    assert capped.shape == (len(pts), 5)


def test_se_features_with_weights_match_the_weighted_kernel():
    pts, _ = _symmetric_cloud()
    w = np.linspace(0.0, 1.0, len(pts))
    phi = gp.se_features(pts, 20.0, weights=w, rel_tol=1e-8)
    k = w[:, None] * w[None, :] * gp.squared_exponential(pts, pts, 20.0)
    np.testing.assert_allclose(phi @ phi.T, k, atol=1e-6)
    with pytest.raises(ShapeError):
        gp.se_features(pts, 20.0, weights=w[:-1])
    with pytest.raises(InvalidInputError):
        gp.se_features(pts, 20.0, weights=-w)


def test_mirror_parity_is_exact_and_checks_the_permutation():
    pts, perm = _symmetric_cloud()
    phi = gp.se_features(pts, 25.0)
    even, odd = gp.mirror_parity(phi, perm)
    np.testing.assert_array_equal(even[perm], even)
    np.testing.assert_array_equal(odd[perm], -odd)
    k = gp.squared_exponential(pts, pts, 25.0)
    np.testing.assert_allclose(even @ even.T, k + k[perm], atol=1e-2)
    with pytest.raises(InvalidInputError, match="involution"):
        gp.mirror_parity(phi, np.roll(np.arange(len(pts)), 1))


def test_principal_components_match_eigh():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(50, 8))
    vecs, lam = gp.principal_components(f, 5)
    ref = np.linalg.eigvalsh(f @ f.T)[::-1][:5]
    np.testing.assert_allclose(lam, ref, rtol=1e-10)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(5), atol=1e-10)
    np.testing.assert_allclose(f @ f.T @ vecs, vecs * lam, atol=1e-8)


def test_rigid_motion_basis_and_projection():
    pts, _ = _symmetric_cloud()
    q = gp.rigid_motion_basis(pts)
    np.testing.assert_allclose(q.T @ q, np.eye(6), atol=1e-12)
    shift = np.tile([1.0, 2.0, 3.0], len(pts))[:, None]
    np.testing.assert_allclose(gp.project_out(shift, q), 0.0, atol=1e-10)


def _is_symmetric(u, perm, signs):
    v = u.reshape(-1, 3)
    return np.allclose(v[perm] * signs, v, atol=1e-9), np.allclose(v[perm] * signs, -v, atol=1e-9)


def test_low_rank_gp_parities_variance_and_rigid_removal():
    pts, perm = _symmetric_cloud()
    n = len(pts)
    terms = [
        gp.KernelTerm("scale", "linear", std=(0.05, 0.05, 0.05), centre=(0.0, 0.0, 0.0)),
        gp.KernelTerm("smooth", "se", std=(2.0, 2.0, 3.0), lengthscale=40.0, symmetric_fraction=0.8),
        gp.KernelTerm("detail", "se", std=(0.5, 0.5, 0.5), lengthscale=10.0, symmetric_fraction=0.5,
                      weights=np.where(np.abs(pts[:, 1]) < 20, 1.0, 0.3)),
    ]
    full = gp.low_rank_gp(pts, perm, terms, 3 * n, rel_tol=1e-9)
    assert full.kept_fraction == pytest.approx(1.0, abs=1e-6)
    assert full.total_variance == pytest.approx(full.kernel_trace, rel=1e-6)
    signs = np.array([-1.0, 1.0, 1.0])
    for j in range(full.basis.shape[1]):
        sym, anti = _is_symmetric(full.basis[:, j], perm, signs)
        assert sym if full.symmetric[j] else anti
    # symmetric share of the variance follows the symmetric fractions
    share = full.variance[full.symmetric].sum() / full.variance.sum()
    assert 0.6 < share < 0.95

    few = gp.low_rank_gp(pts, perm, terms, 10, rel_tol=1e-9)
    np.testing.assert_allclose(few.variance, full.variance[:10], rtol=1e-8)
    assert few.kept_fraction < 1.0

    rigid = gp.rigid_motion_basis(pts, centre=np.zeros(3))
    free = gp.low_rank_gp(pts, perm, terms, 20, remove=rigid, rel_tol=1e-9)
    np.testing.assert_allclose(rigid.T @ free.basis, 0.0, atol=1e-8)
    for j in range(free.basis.shape[1]):
        sym, anti = _is_symmetric(free.basis[:, j], perm, signs)
        assert sym if free.symmetric[j] else anti
    np.testing.assert_allclose(free.basis.T @ free.basis, np.diag(free.variance), atol=1e-8 * free.variance[0])


def test_low_rank_gp_colour_axes():
    pts, perm = _symmetric_cloud()
    axes = np.linalg.qr(np.array([[1.0, 1, 1], [1, -1, 0], [1, 1, -2]]).T)[0]
    terms = [gp.KernelTerm("tone", "constant", std=(0.1, 0.01, 0.01)),
             gp.KernelTerm("patch", "se", std=(0.02, 0.02, 0.02), lengthscale=15.0, symmetric_fraction=0.7)]
    res = gp.low_rank_gp(pts, perm, terms, 12, axes=axes, axis_signs=(1, 1, 1))
    first = res.basis[:, 0].reshape(-1, 3)
    np.testing.assert_allclose(first / np.linalg.norm(first, axis=1, keepdims=True), np.tile(
        axes[:, 0] * np.sign(first[0] @ axes[:, 0]), (len(pts), 1)), atol=1e-6)
    assert res.symmetric[0]


def test_kernel_term_validation():
    with pytest.raises(InvalidInputError):
        gp.KernelTerm("x", "cubic", std=(1, 1, 1))
    with pytest.raises(InvalidInputError):
        gp.KernelTerm("x", "se", std=(1, 1, 1))  # no lengthscale
    with pytest.raises(InvalidInputError):
        gp.KernelTerm("x", "se", std=(1, -1, 1), lengthscale=3.0)
    with pytest.raises(InvalidInputError):
        gp.KernelTerm("x", "se", std=(1, 1, 1), lengthscale=3.0, symmetric_fraction=1.5)
    pts, perm = _symmetric_cloud()
    lopsided = gp.KernelTerm("x", "se", std=(1, 1, 1), lengthscale=3.0, weights=(pts[:, 0] > 0).astype(float))
    with pytest.raises(InvalidInputError, match="mirror-symmetric"):
        gp.low_rank_gp(pts, perm, [lopsided], 4)
    assert "lengthscale=3mm" in gp.KernelTerm("x", "se", std=(1, 1, 1), lengthscale=3.0).describe()
