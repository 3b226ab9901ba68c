"""E-step tests on synthetic arrays: likelihoods, colour histogram, graph-cut MRF, conservative first mask."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from fitem import occlusion as oc
from fitem.errors import ConfigError, InvalidInputError, ShapeError


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def ellipse(h: int = 96, w: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.34 * w)) ** 2 <= 1


# ---------------------------------------------------------------------------- likelihoods


def test_face_loglik_matches_gaussian_density():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 0.05, (5, 7, 3))
    want = scipy.stats.norm.logpdf(r, scale=0.043).sum(-1)
    np.testing.assert_allclose(oc.face_loglik(r, 0.043), want, rtol=1e-12)
    sig = np.array([0.03, 0.05, 0.08])
    want = scipy.stats.norm.logpdf(r, scale=sig).sum(-1)
    np.testing.assert_allclose(oc.face_loglik(r, sig), want, rtol=1e-12)
    np.testing.assert_allclose(oc.face_loglik(torch.tensor(r, dtype=torch.float32), sig), want, rtol=1e-5)
    # a zero residual: -3 log(sigma sqrt(2 pi))
    assert oc.face_loglik(np.zeros((1, 1, 3)))[0, 0] == pytest.approx(-3 * math.log(oc.FACE_SIGMA * math.sqrt(2 * math.pi)))
    with pytest.raises(InvalidInputError):
        oc.face_loglik(r, 0.0)
    with pytest.raises(ShapeError):
        oc.face_loglik(r, np.ones(2))


def test_robust_sigma_ignores_outliers_and_clamps():
    rng = np.random.default_rng(1)
    r = rng.normal(0.01, 0.05, (80, 80, 3))
    out = rng.random((80, 80)) < 0.3
    r[out] = rng.uniform(-0.8, 0.8, (out.sum(), 3))
    assert oc.robust_sigma(r) == pytest.approx(0.05 * 1.45, rel=0.15)  # 30 % outliers inflate the MAD a little
    assert oc.robust_sigma(r, ~out) == pytest.approx(0.05, rel=0.05)
    assert oc.robust_sigma(np.zeros((4, 4, 3))) == 0.01
    assert oc.robust_sigma(np.full((4, 4, 3), 5.0) * np.sign(np.arange(48).reshape(4, 4, 3) % 2 - 0.5)) == 0.25
    with pytest.raises(InvalidInputError):
        oc.robust_sigma(r, np.zeros((80, 80), bool))
    with pytest.raises(InvalidInputError):
        oc.robust_sigma(r, np.zeros((80, 80), np.uint8))


@pytest.mark.parametrize("bins,blur,weighted", [(8, 0.0, False), (16, 0.0, True), (16, 1.0, False), (32, 0.5, True)])
def test_histogram_is_a_density_over_the_unit_cube(bins, blur, weighted):
    rng = np.random.default_rng(2)
    img = np.clip(rng.normal([0.7, 0.5, 0.4], 0.1, (64, 64, 3)), 0, 1)
    w = rng.random((64, 64)) if weighted else None
    hist = oc.ColourHistogram.fit(img, w, bins=bins, blur=blur)
    assert hist.integral() == pytest.approx(1.0, abs=1e-12)
    # Monte Carlo: E_uniform[p(c)] = integral over the cube = 1
    u = rng.random((400_000, 3))
    assert np.exp(hist.log_density(u)).mean() == pytest.approx(1.0, rel=0.03)


def test_histogram_values_and_weights():
    img = np.zeros((10, 10, 3))
    img[:, :5] = [0.1, 0.2, 0.3]
    img[:, 5:] = [0.9, 0.9, 0.9]
    b, a = 4, 0.5
    hist = oc.ColourHistogram.fit(img, bins=b, pseudo_count=a)
    want = b ** 3 * (50 + a) / (100 + a * b ** 3)
    ll = oc.nonface_loglik(img, bins=b, pseudo_count=a)
    np.testing.assert_allclose(ll, math.log(want))
    assert hist.log_density(np.array([0.6, 0.1, 0.9])) == pytest.approx(math.log(b ** 3 * a / (100 + a * b ** 3)))
    assert hist.log_density(np.array([1.0, 1.0, 1.0])) == pytest.approx(math.log(want))  # 1.0 is in the last bin
    # weights: only the right half counts -> the left colour gets the pseudo-count only
    w = np.zeros((10, 10))
    w[:, 5:] = 1
    ll = oc.nonface_loglik(img, w, bins=b, pseudo_count=a)
    assert ll[0, 0] == pytest.approx(math.log(b ** 3 * a / (50 + a * b ** 3)))
    assert ll[0, 9] == pytest.approx(math.log(b ** 3 * (50 + a) / (50 + a * b ** 3)))
    with pytest.raises(ConfigError):
        oc.ColourHistogram.fit(img, pseudo_count=0)
    with pytest.raises(ShapeError):
        oc.nonface_loglik(img, np.ones((5, 5)))


def test_posterior_closed_form():
    f = np.array([[0.0, 2.0], [-1.0, 5.0]])
    n = np.array([[0.0, 0.0], [1.0, 5.0]])
    np.testing.assert_allclose(oc.posterior(f, n), 1 / (1 + np.exp(-(f - n))))
    np.testing.assert_allclose(oc.posterior(f, n, prior=0.8)[0, 0], 0.8)
    with pytest.raises(ConfigError):
        oc.posterior(f, n, prior=1.0)


# ---------------------------------------------------------------------------- graph cut


def _occluded_log_odds(seed=3, h=96, w=96):
    """Log-odds map: face +3, a rectangle occluder -3, Gaussian noise, and isolated 'salt' pixels at -2."""
    rng = np.random.default_rng(seed)
    region = ellipse(h, w)
    occ = np.zeros((h, w), bool)
    occ[50:72, 20:70] = True
    d = np.where(occ, -3.0, 3.0) + rng.normal(0, 1.0, (h, w))
    salt = region & ~occ & (rng.random((h, w)) < 0.03)
    d[salt] = -2.0
    return d, region, occ, salt


def test_segment_recovers_rectangle_and_removes_salt():
    d, region, occ, salt = _occluded_log_odds()
    gt = region & ~occ
    face_ll, nonface_ll = d, np.zeros_like(d)
    pixelwise = (oc.posterior(face_ll, nonface_ll) > 0.5) & region
    mask = oc.segment(face_ll, nonface_ll, region, smoothness=1.5)
    assert iou(mask, gt) > 0.97
    assert (~pixelwise[salt]).mean() > 0.99  # the unsmoothed posterior keeps the salt as non-face
    assert (~mask[salt]).mean() < 0.05  # the MRF removes it
    assert iou(mask, gt) > iou(pixelwise, gt)
    for kw in (dict(connectivity=8), dict(image=np.repeat(d[..., None], 3, -1) / 10)):
        assert iou(oc.segment(face_ll, nonface_ll, region, smoothness=1.5, **kw), gt) > 0.95


def test_segment_on_a_synthetic_face_image_recovers_a_dark_occluder():
    rng = np.random.default_rng(4)
    h = w = 112
    region = ellipse(h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    render = np.zeros((h, w, 3))
    render[region] = np.array([0.75, 0.55, 0.45]) * (0.75 + 0.25 * xx[region] / w)[:, None]
    image = np.where(region[..., None], render, 0.5) + rng.normal(0, 0.04, (h, w, 3))
    occ = np.zeros((h, w), bool)
    occ[62:84, 25:90] = True
    image[occ] = [0.12, 0.1, 0.1] + rng.normal(0, 0.03, (occ.sum(), 3))
    image = np.clip(image, 0, 1)
    residual = image - render
    sigma = oc.robust_sigma(residual, region)
    assert 0.035 < sigma < 0.075  # the MAD is robust, but 18 % occluder pixels inflate it somewhat
    face_ll, nonface_ll = oc.face_loglik(residual, sigma), oc.nonface_loglik(image)
    mask = oc.segment(face_ll, nonface_ll, region, smoothness=1.0)
    assert iou(mask, region & ~occ) > 0.9
    assert not (mask & ~region).any()


@pytest.mark.parametrize("connectivity", [4, 8])
def test_segment_never_outside_region(connectivity):
    rng = np.random.default_rng(5)
    d = rng.normal(2.0, 3.0, (40, 50))
    region = rng.random((40, 50)) < 0.5
    region[10:30, 10:40] = True
    for s in (0.0, 0.5, 5.0):
        mask = oc.segment(d, np.zeros_like(d), region, smoothness=s, connectivity=connectivity,
                          image=rng.random((40, 50, 3)))
        assert not (mask & ~region).any()
    assert not oc.segment(d, np.zeros_like(d), np.zeros((40, 50), bool)).any()


def test_segment_without_smoothness_is_the_pixelwise_decision():
    rng = np.random.default_rng(6)
    f, n = rng.normal(0, 2, (30, 40)), rng.normal(0, 2, (30, 40))
    region = ellipse(30, 40)
    want = (f - n > 0) & region
    np.testing.assert_array_equal(oc.segment(f, n, region, smoothness=0.0), want)
    np.testing.assert_array_equal(oc.segment(f, n, region, smoothness=1e-9), want)  # through the graph cut
    np.testing.assert_array_equal(oc.segment(f, n, region, smoothness=0.0, prior=0.9),
                                  (f - n + math.log(9) > 0) & region)
    np.testing.assert_array_equal(oc.segment(f, n, region, smoothness=1.0, prior_logit=np.full((30, 40), 100.0)), region)
    assert not oc.segment(f, n, region, smoothness=1.0, prior_logit=np.full((30, 40), -100.0)).any()


def _pairs(region, smoothness, offsets, img=None, beta=0.0):
    """(i, j, weight) of every neighbouring pair inside the region, i/j index region pixels in raster order."""
    index = -np.ones(region.shape, int)
    index[region] = np.arange(region.sum())
    h, w = region.shape
    out = []
    for y, x in zip(*np.nonzero(region)):
        for dy, dx in offsets:
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w and region[yy, xx]:
                wgt = smoothness / math.hypot(dy, dx)
                if img is not None:
                    wgt *= math.exp(-beta * float(((img[y, x] - img[yy, xx]) ** 2).sum()))
                out.append((index[y, x], index[yy, xx], wgt))
    return out


def _energies(labels, d_region, pairs):
    """MRF energy of each row of ``labels`` (L, n) bool: -sum(d over face) + sum(w [l_i != l_j])."""
    e = -(labels * d_region[None]).sum(1)
    for i, j, wgt in pairs:
        e = e + wgt * (labels[:, i] != labels[:, j])
    return e


@pytest.mark.parametrize("connectivity,contrast", [(4, False), (8, False), (4, True)])
def test_segment_finds_the_global_minimum_energy(connectivity, contrast):
    """Brute force over all 2^10 labellings of a small region."""
    rng = np.random.default_rng(7 + connectivity)
    offsets = ((0, 1), (1, 0)) if connectivity == 4 else ((0, 1), (1, 0), (1, 1), (1, -1))
    region = np.zeros((3, 4), bool)
    region[:, :3] = True
    region[0, 3] = True  # 10 pixels
    img = rng.random((3, 4, 3)) if contrast else None
    all_labels = np.array(list(itertools.product([False, True], repeat=int(region.sum()))))
    for _ in range(20):
        d = rng.normal(0, 1.5, (3, 4))
        s = float(rng.uniform(0.3, 1.5))
        mask = oc.segment(d, np.zeros_like(d), region, smoothness=s, connectivity=connectivity,
                          image=img, contrast_beta=2.0 if contrast else None)
        pairs = _pairs(region, s, offsets, img, 2.0)
        best = _energies(all_labels, d[region], pairs).min()
        got = _energies(mask[region][None], d[region], pairs)[0]
        assert got == pytest.approx(best, abs=1e-9)


def test_segment_input_checks():
    d = np.zeros((8, 8))
    region = np.ones((8, 8), bool)
    with pytest.raises(ShapeError):
        oc.segment(d, np.zeros((8, 9)), region)
    with pytest.raises(InvalidInputError):
        oc.segment(d, d, region.astype(float))
    with pytest.raises(ConfigError):
        oc.segment(d, d, region, smoothness=-1)
    with pytest.raises(ConfigError):
        oc.segment(d, d, region, connectivity=6)
    bad = d.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InvalidInputError):
        oc.segment(bad, d, region)
    outside = region.copy()
    outside[3, 3] = False
    assert not oc.segment(bad, d, outside)[3, 3]  # NaN outside the region is fine


# ---------------------------------------------------------------------------- first E-step


def _gain_scaled_face(seed=8, h=128, w=128, occluder=(0.1, 0.75, 0.2)):
    rng = np.random.default_rng(seed)
    region = ellipse(h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    # a "mean albedo" render with some structure (darker brows and lips) under ambient light
    render = np.zeros((h, w, 3))
    render[region] = [0.72, 0.56, 0.47]
    render[(np.abs(yy - 45) < 3) & (np.abs(np.abs(xx - 64) - 20) < 10) & region] = [0.35, 0.25, 0.2]
    render[(np.abs(yy - 95) < 4) & (np.abs(xx - 64) < 14)] = [0.6, 0.35, 0.35]
    # the photo: per-channel gain, a smooth shading ramp, noise; background; an off-colour occluder
    shading = (0.8 + 0.35 * xx / w)[..., None]
    image = np.where(region[..., None], render * [1.25, 0.95, 0.8] * shading, rng.uniform(0.2, 0.6, (h, w, 3)))
    image = image + rng.normal(0, 0.015, (h, w, 3))
    occ = np.zeros((h, w), bool)
    occ[70:100, 30:100] = True
    image[occ] = np.array(occluder) + rng.normal(0, 0.02, (occ.sum(), 3))
    return np.clip(image, 0, 1), render, region, occ


@pytest.mark.parametrize("model,degree", [("gain", 1), ("gain", 2), ("affine", 0)])
def test_conservative_mask_excludes_an_off_colour_occluder(model, degree):
    image, render, region, occ = _gain_scaled_face()
    init = oc.conservative_initial_mask(image, render, region, model=model, degree=degree)
    face = region & ~occ
    assert (init.mask & occ).sum() / occ.sum() < 0.01
    assert (init.mask & face).sum() / face.sum() > (0.85 if model == "gain" else 0.6)
    assert not (init.mask & ~region).any()
    assert init.inlier_fraction == pytest.approx(init.mask.sum() / region.sum())
    assert 0.01 <= init.sigma < 0.05
    if model == "gain":
        # the gain field at the image centre ~ the true gain times the shading there (0.8 + 0.35 * 0.5)
        centre = init.transform.coefficients[:, 0]
        np.testing.assert_allclose(centre, np.array([1.25, 0.95, 0.8]) * 0.975, rtol=0.05)
    np.testing.assert_allclose(init.predicted, init.transform.apply(render))


def test_conservative_mask_dark_occluder_and_determinism():
    image, render, region, occ = _gain_scaled_face(seed=9, occluder=(0.05, 0.05, 0.06))
    a = oc.conservative_initial_mask(image, render, region, seed=3)
    b = oc.conservative_initial_mask(image, render, region, seed=3)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert (a.mask & occ).sum() == 0
    # torch inputs work the same
    c = oc.conservative_initial_mask(torch.tensor(image), torch.tensor(render), torch.tensor(region), seed=3)
    np.testing.assert_array_equal(a.mask, c.mask)


def test_conservative_mask_input_checks():
    image, render, region, _ = _gain_scaled_face()
    with pytest.raises(InvalidInputError):
        oc.conservative_initial_mask(image, render, np.zeros_like(region))
    with pytest.raises(ShapeError):
        oc.conservative_initial_mask(image, render[:-1], region)
    with pytest.raises(ConfigError):
        oc.conservative_initial_mask(image, render, region, model="sh")
