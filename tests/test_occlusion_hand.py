"""The E-step against a skin-coloured occluder: per-pixel noise model, adaptive sigma, region test."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from scipy import ndimage

from fitem import occlusion as oc
from fitem.config import FitConfig
from fitem.em import e_step
from fitem.errors import ConfigError, ShapeError

SKIN = np.array([0.72, 0.55, 0.45])


def _face_scene(seed: int = 0, size: int = 112, hand: bool = True, noise: float = 0.007):
    """A shaded ellipse 'face' with dark features, a background, and (optionally) a 'hand': a disc of
    the face's own skin colour, 3 % brighter, with its own dome shading -- every pixel of it within
    ~0.04 of the render, which a per-pixel test with sigma 0.043 accepts as face."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    region = (u / 0.75) ** 2 + (v / 0.9) ** 2 < 1
    shade = 0.8 + 0.2 * np.clip(1 - u ** 2 - v ** 2, 0, 1)
    render = SKIN * shade[..., None]
    for cy, cx in ((-0.3, -0.3), (-0.3, 0.3)):  # eyes
        render[((u - cx) / 0.15) ** 2 + ((v - cy) / 0.06) ** 2 < 1] = (0.15, 0.1, 0.1)
    render[((u / 0.3) ** 2 + ((v - 0.5) / 0.06) ** 2 < 1)] = (0.6, 0.25, 0.25)  # lips
    render *= region[..., None]
    image = np.where(region[..., None], render, np.array([0.25, 0.45, 0.3]))
    occluder = np.zeros(region.shape, bool)
    if hand:
        du, dv = u - 0.35, v - 0.1
        disc = du ** 2 + dv ** 2 < 0.3 ** 2
        dome = np.sqrt(np.clip(1 - (du ** 2 + dv ** 2) / 0.3 ** 2, 0, 1))
        hand_colour = SKIN * 1.03 * (0.82 + 0.1 * dome)[..., None]
        image = np.where(disc[..., None], hand_colour, image)
        occluder = disc & region
    image = np.clip(image + rng.normal(0, noise, image.shape), 0, 1)
    return image, render, region, occluder


# ---------------------------------------------------------------------------- per-pixel sigma


def test_face_loglik_per_pixel_sigma_matches_the_gaussian_density():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 0.05, (4, 5, 3))
    sig = rng.uniform(0.02, 0.08, (4, 5, 3))
    want = scipy.stats.norm.logpdf(r, scale=sig).sum(-1)
    np.testing.assert_allclose(oc.face_loglik(r, sig), want, rtol=1e-10)
    np.testing.assert_allclose(oc.face_loglik(r, np.full(r.shape, 0.043)), oc.face_loglik(r, 0.043), rtol=1e-12)
    with pytest.raises(ShapeError):
        oc.face_loglik(r, np.ones((4, 5)))


def test_edge_sigma_map_grows_only_at_render_edges():
    _, render, region, _ = _face_scene(hand=False)
    sig = oc.edge_sigma_map(render, region, 0.02, edge_scale=0.5)
    assert sig.shape == render.shape and np.all(sig >= 0.02)
    # flat cheek: unchanged; eye border: much larger
    assert np.allclose(sig[56, 56], 0.02, atol=2e-3)
    eyes = region & (render.sum(-1) < 0.5)
    eye_rim = ndimage.binary_dilation(eyes) & ~ndimage.binary_erosion(eyes)
    assert np.median(sig[eye_rim].max(-1)) > 0.05
    # the silhouette is not an edge of the face's colours
    rim = region & ~ndimage.binary_erosion(region, iterations=3)
    assert np.median(sig[rim].max(-1)) < 0.03
    np.testing.assert_array_equal(oc.edge_sigma_map(render, region, 0.02, edge_scale=0.0), 0.02)
    with pytest.raises(ConfigError):
        oc.edge_sigma_map(render, region, 0.02, edge_scale=-1)
    with pytest.raises(ConfigError):
        oc.edge_sigma_map(render, region, 0.0)


def test_edge_sigma_map_tolerates_a_shifted_silhouette_with_the_image():
    image, render, region, _ = _face_scene(hand=False, noise=0.0)
    shifted = np.roll(image, 1, axis=1)  # the fit is one pixel off: the rim mixes face and background
    rim = region & ~ndimage.binary_erosion(region, iterations=2)
    plain = oc.edge_sigma_map(render, region, 0.01)
    with_image = oc.edge_sigma_map(render, region, 0.01, image=shifted)
    assert np.median(plain[rim].max(-1)) < 0.02 < np.median(with_image[rim].max(-1))
    inner = ndimage.binary_erosion(region, iterations=2)
    np.testing.assert_array_equal(plain[inner], with_image[inner])  # only the rim changes
    # the pixels the shift mixed with background: hopeless for the plain map, plausible with the image
    ll_plain = oc.face_loglik(shifted - render, plain)[rim]
    ll_image = oc.face_loglik(shifted - render, with_image)[rim]
    assert (ll_plain < -50).mean() > 0.1 and (ll_image < -50).mean() == 0
    with pytest.raises(ShapeError):
        oc.edge_sigma_map(render, region, 0.01, image=shifted[:-1])


def test_adaptive_sigma_sharpens_clean_images_and_leaves_photos_alone():
    image, render, region, _ = _face_scene(hand=False, noise=0.006)
    s = oc.adaptive_sigma(image - render, region, render, factor=1.5, floor=0.001, cap=0.043)
    assert 1.5 * 0.005 < s < 1.5 * 0.007  # 1.5 x the noise, not the features' residual
    assert oc.adaptive_sigma(image - render, region, render, floor=0.01) == 0.01  # floor
    photo, _, _, _ = _face_scene(hand=False, noise=0.04)
    assert oc.adaptive_sigma(photo - render, region, render) == pytest.approx(0.043)  # cap
    assert oc.adaptive_sigma(image - render, np.zeros_like(region), render) == pytest.approx(0.043)  # no mask
    with pytest.raises(ConfigError):
        oc.adaptive_sigma(image - render, region, render, floor=0.05, cap=0.043)


# ---------------------------------------------------------------------------- region test


@pytest.mark.parametrize("seed,downsample", [(0, 1), (1, 1), (0, 2)])
def test_region_outliers_take_a_skin_coloured_occluder_whole(seed, downsample):
    # downsample=2: the cheaper half-resolution segmentation of the EM's non-final E-steps
    image, render, region, occ = _face_scene(seed)
    residual = image - render
    # the per-pixel test with the usual sigma accepts (almost) all of the occluder
    face_ll = oc.face_loglik(residual, 0.043)
    nonface_ll = oc.nonface_loglik(image, weights=1.0 - region)
    pixel_mask = oc.segment(face_ll, nonface_ll, region, smoothness=1.0)
    assert (pixel_mask & occ).sum() > 0.8 * occ.sum()
    sig = oc.edge_sigma_map(render, region, 0.01)
    out = oc.region_outliers(image, residual, sig, region, pixel_mask, downsample=downsample)
    assert not (out & ~region).any()
    assert (out & occ).sum() > 0.85 * occ.sum()
    assert (out & region & ~occ).sum() < 0.03 * (region & ~occ).sum()


def test_region_outliers_are_silent_without_an_occluder():
    image, render, region, _ = _face_scene(3, hand=False)
    out = oc.region_outliers(image, image - render, oc.edge_sigma_map(render, region, 0.01), region, region)
    assert out.sum() < 0.01 * region.sum()


def test_region_outliers_stay_silent_when_the_face_residual_varies_on_its_own():
    """A photograph-like residual: every region of the face has its own offset (model misfit);
    the spread bound keeps any of them from being called an occluder."""
    image, render, region, _ = _face_scene(4, hand=False)
    rng = np.random.default_rng(4)
    size = image.shape[0]
    blocks = rng.normal(0, 0.03, (8, 8, 3)).repeat(size // 8 + 1, 0).repeat(size // 8 + 1, 1)[:size, :size]
    photo = np.clip(image + blocks * region[..., None], 0, 1)
    sig = oc.edge_sigma_map(render, region, 0.01)
    out = oc.region_outliers(photo, photo - render, sig, region, region)
    assert out.sum() < 0.05 * region.sum()
    assert oc.region_outliers(photo, photo - render, sig, region, region, spread=0.0).sum() > out.sum()


def _arm_scene(seed: int, size: int = 112):
    """A photograph-like face (each block of it has its own residual offset, so the region test's spread
    bound keeps step 3 silent) and a skin-coloured arm that runs from the cheek out across the face's
    outline to the image border."""
    image, render, region, _ = _face_scene(seed, size=size, hand=False)
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    blocks = rng.normal(0, 0.03, (8, 8, 3)).repeat(size // 8 + 1, 0).repeat(size // 8 + 1, 1)[:size, :size]
    photo = np.clip(image + blocks * region[..., None], 0, 1)
    a, d = np.array([0.1, 0.0]), np.array([1.1, 1.2])  # the arm's axis: from a along d, 0.2 thick
    t = np.clip(((u - a[0]) * d[0] + (v - a[1]) * d[1]) / (d @ d), 0, 1)
    arm = (u - a[0] - t * d[0]) ** 2 + (v - a[1] - t * d[1]) ** 2 < 0.2 ** 2
    photo = np.where(arm[..., None], np.clip(SKIN * 0.85 + rng.normal(0, 0.007, photo.shape), 0, 1), photo)
    return photo, render, region, arm & region


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_outline_test_takes_an_arm_that_runs_across_the_face_outline(seed):
    photo, render, region, occ = _arm_scene(seed)
    sig = oc.edge_sigma_map(render, region, 0.01)
    without = oc.region_outliers(photo, photo - render, sig, region, region, crossing=0.0)
    out = oc.region_outliers(photo, photo - render, sig, region, region)
    assert (without & occ).sum() < 0.1 * occ.sum()  # steps 1-3 alone keep the arm as face
    assert (out & occ).sum() > 0.75 * occ.sum()
    assert (out & region & ~occ).sum() < 0.01 * (region & ~occ).sum()
    assert not (out & ~region).any()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_outline_test_keeps_a_face_that_runs_on_into_a_like_coloured_surface(seed):
    """Outside the face region the face's own shading continues (a neck, a skin-coloured background):
    the face merges with it into regions that cross the outline, but their residual is the face's."""
    image, render, region, _ = _face_scene(seed, hand=False)
    size = image.shape[0]
    v, u = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    shade = 0.8 + 0.2 * np.clip(1 - u ** 2 - v ** 2, 0, 1)
    outside = SKIN * shade[..., None] + np.random.default_rng(seed).normal(0, 0.007, image.shape)
    img = np.where(region[..., None], image, np.clip(outside, 0, 1))
    sig = oc.edge_sigma_map(render, region, 0.01)
    out = oc.region_outliers(img, img - render, sig, region, region)
    assert out.sum() < 0.01 * region.sum()
    # the scene does cross the outline: judged part by part without the region-level ratio, a share of
    # the face would go (the reason for that ratio)
    loose = oc.region_outliers(img, img - render, sig, region, region, crossing_ratio=0.0)
    assert loose.sum() > 0.05 * region.sum()


def test_the_outline_test_grows_a_merged_region_from_where_it_crosses():
    """A crossing region that also holds face (a hand merged with a cheek): from the outline inwards,
    only the parts reached through parts with a residual above the face's, and only when they pool
    to ``ratio`` times the face's."""
    reg = np.zeros((4, 12), bool)
    reg[:, :10] = True  # columns 10-11 lie outside the face, in the same image region
    coarse = np.ones(reg.shape, np.int64)
    part = np.full(reg.shape, -1, np.int64)
    for pid, cols in enumerate((slice(0, 2), slice(2, 4), slice(4, 7), slice(7, 10))):  # D C B A
        part[:, cols] = pid
    p_count = np.bincount(part[reg], minlength=4)

    def grown(means, eligible=np.ones(4, bool)):
        return oc._grown_from_outline(part, coarse, reg, ~reg, np.ones(4, np.int64), p_count,
                                      np.asarray(means) * p_count, 1.0, 1.3, eligible)

    # A (at the outline) and B: out; C is face (below z_face) and cuts D off from the outline
    assert grown([3.0, 0.5, 1.5, 2.0]).tolist() == [False, False, True, True]
    # A and B pool to 1.15 < 1.3: nothing
    assert not grown([3.0, 0.5, 1.2, 1.1]).any()
    # the part at the outline is not eligible (its region was judged whole): nothing grows
    assert not grown([3.0, 0.5, 1.5, 2.0], np.array([True, True, True, False])).any()


def test_region_outliers_input_checks():
    image, render, region, _ = _face_scene(hand=False)
    r = image - render
    with pytest.raises(ConfigError):
        oc.region_outliers(image, r, 0.02, region, region, ratio=1.0)
    with pytest.raises(ShapeError):
        oc.region_outliers(image, r, np.ones((3,)), region, region)
    with pytest.raises(ConfigError, match="downsample"):
        oc.region_outliers(image, r, 0.02, region, region, downsample=0)
    for bad in (dict(crossing=1.0), dict(crossing=-0.1), dict(crossing_ratio=-1.0), dict(margin=0.0)):
        with pytest.raises(ConfigError, match="crossing"):
            oc.region_outliers(image, r, 0.02, region, region, **bad)
    assert not oc.region_outliers(image, r, 0.02, region, np.zeros_like(region)).any()  # no reference


# ---------------------------------------------------------------------------- the E-step


def test_e_step_segments_the_skin_coloured_occluder():
    image, render, region, occ = _face_scene(0)
    previous = region.copy()  # the EM starts believing the hand is face
    mask, post, sigma = e_step(image.astype(np.float32), render.astype(np.float32), region, previous, FitConfig())
    found = (~mask & occ).sum() / occ.sum()
    kept = (mask & region & ~occ).sum() / (region & ~occ).sum()
    assert found > 0.8 and kept > 0.95
    assert sigma < 0.043 and post.shape == region.shape
    # the previous E-step (fixed sigma, no edge noise, no region test) takes the hand for face
    old = FitConfig(sigma_adapt=0.0, edge_sigma=0.0, region_test=0.0)
    mask_old, _, sigma_old = e_step(image.astype(np.float32), render.astype(np.float32), region, previous, old)
    assert (~mask_old & occ).sum() / occ.sum() < 0.3 and sigma_old == 0.043


def test_fitconfig_validates_the_new_e_step_options():
    for bad in (dict(region_test=1.0), dict(region_test=-2.0), dict(edge_sigma=-0.1), dict(sigma_adapt=math.inf),
                dict(photometric_min_sigma=-0.01), dict(region_spread=-1.0), dict(region_spread=math.nan),
                dict(region_crossing=1.0), dict(region_crossing=-0.2), dict(region_crossing=math.nan)):
        with pytest.raises(ConfigError):
            FitConfig(**bad)
    FitConfig(region_test=0.0, edge_sigma=0.0, sigma_adapt=0.0)


def test_region_spread_and_crossing_reach_the_region_test(monkeypatch):
    seen = []
    real = oc.region_outliers

    def spy(*args, **kwargs):
        seen.append((kwargs["spread"], kwargs["crossing"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(oc, "region_outliers", spy)
    image, render, region, _ = _face_scene(0)
    for spread, crossing in ((5.0, 0.2), (0.5, 0.0)):
        e_step(image.astype(np.float32), render.astype(np.float32), region, region.copy(),
               FitConfig(region_spread=spread, region_crossing=crossing))
    assert seen == [(5.0, 0.2), (0.5, 0.0)]


def test_fit_m_step_sigma_follows_the_e_step_down_to_its_floor():
    """On a clean synthetic render the E-step's sigma is far below 0.043; the M-step's follows it to
    ``photometric_min_sigma``; with the adaptation off it stays 0.043."""
    from fitem.api import fit
    from fitem.bench.synthetic import make_sample
    from fitem.models import load_model

    model = load_model("demo")
    sample = make_sample(model, 3, occluder="none", size=112)
    fast = dict(size=112, rounds=2, iterations=2, first_iterations=2)
    res = fit(sample.image, landmarks=sample.landmarks68, model=model, config=FitConfig(**fast))
    assert res.rounds[-1].sigma == pytest.approx(0.02)
    res = fit(sample.image, landmarks=sample.landmarks68, model=model,
              config=FitConfig(**fast, photometric_min_sigma=0.005))
    assert res.rounds[-1].sigma < 0.02
    res = fit(sample.image, landmarks=sample.landmarks68, model=model, config=FitConfig(**fast, sigma_adapt=0.0))
    assert res.rounds[-1].sigma == pytest.approx(0.043)
