"""Tests of fitem.bench.metrics on hand-made masks and point sets with hand-computed answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fitem.bench.metrics import (
    Similarity,
    align_similarity,
    all_face_scores,
    closest_points_on_mesh,
    face_ellipse,
    format_table,
    landmark_nme,
    photometric_rmse,
    point_to_surface_error,
    segmentation_scores,
    summarise,
    umeyama,
    vertex_error_same_topology,
)
from fitem.errors import ConfigError, InvalidInputError, ShapeError


def _masks():
    """A 6×6 image: region = left 4 columns (24 px), occluder = top-left 2×3 block (6 px in the region)."""
    region = np.zeros((6, 6), bool)
    region[:, :4] = True
    occ = np.zeros((6, 6), bool)
    occ[:2, :3] = True
    visible = region & ~occ
    return region, occ, visible


def test_segmentation_scores_hand_computed():
    region, occ, visible = _masks()
    pred = visible.copy()
    pred[0, 0] = True      # an occluded pixel called face: visible-face FP (occluder FN)
    pred[5, 3] = False     # a visible pixel called occluder: visible-face FN (occluder FP)
    pred[5, 5] = True      # outside the region: must not count
    s = segmentation_scores(pred, visible, region)
    # visible face: gt positives 18, predicted positives 18: TP 17, FP 1, FN 1, TN 5
    assert (s["tp"], s["fp"], s["fn"], s["tn"], s["n_pixels"]) == (17, 1, 1, 5, 24)
    assert s["accuracy"] == pytest.approx(22 / 24)
    assert s["precision"] == pytest.approx(17 / 18)
    assert s["recall"] == pytest.approx(17 / 18)
    assert s["f1"] == pytest.approx(17 / 18)
    assert s["iou"] == pytest.approx(17 / 19)
    # occluder: TP 5, FP 1, FN 1
    assert s["occluder_precision"] == pytest.approx(5 / 6)
    assert s["occluder_recall"] == pytest.approx(5 / 6)
    assert s["occluder_f1"] == pytest.approx(5 / 6)
    assert s["occluder_iou"] == pytest.approx(5 / 7)


def test_perfect_prediction_scores_one():
    region, _, visible = _masks()
    s = segmentation_scores(visible, visible, region)
    for k in ("accuracy", "precision", "recall", "f1", "iou", "occluder_f1", "occluder_iou"):
        assert s[k] == 1.0, k


def test_all_face_baseline_properties():
    region, occ, visible = _masks()
    s = all_face_scores(visible, region)
    assert s["occluder_f1"] == 0.0 and s["occluder_recall"] == 0.0
    assert math.isnan(s["occluder_precision"])  # nothing predicted as occluder
    assert s["recall"] == 1.0
    assert s["f1"] == pytest.approx(2 * 18 / (2 * 18 + 6))  # high visible-face F1 (0.857)
    assert s["accuracy"] == pytest.approx(18 / 24)


def test_no_occluder_gives_nan_occluder_scores_and_summary_excludes_them():
    region, occ, visible = _masks()
    clean = all_face_scores(region, region)  # class "none": visible == region
    assert math.isnan(clean["occluder_f1"]) and math.isnan(clean["occluder_recall"])
    assert clean["f1"] == 1.0
    # a false alarm on a clean image: occluder F1 still undefined, visible-face recall drops
    pred = region.copy()
    pred[0, 0] = False
    fa = segmentation_scores(pred, region, region)
    assert math.isnan(fa["occluder_f1"])
    assert fa["recall"] == pytest.approx(23 / 24)

    occluded = all_face_scores(visible, region)
    rows = [dict(clean, occluder_class="none"), dict(occluded, occluder_class="hand"),
            dict(segmentation_scores(visible, visible, region), occluder_class="hand")]
    table = summarise(rows)
    assert [r["occluder_class"] for r in table] == ["none", "hand", "all"]
    none, hand, total = table
    assert math.isnan(none["occluder_f1"]) and none["occluder_f1_n"] == 0
    assert hand["occluder_f1"] == pytest.approx(0.5) and hand["occluder_f1_n"] == 2
    assert total["occluder_f1"] == pytest.approx(0.5) and total["occluder_f1_n"] == 2  # NaN left out
    assert total["n_images"] == 3
    assert total["f1"] == pytest.approx((1.0 + 36 / 42 + 1.0) / 3)
    text = format_table(table)
    assert text.splitlines()[0].startswith("| occluder_class |") and "| none | 1 |" in text


def test_segmentation_input_checks():
    region, occ, visible = _masks()
    with pytest.raises(ShapeError):
        segmentation_scores(visible[:5], visible, region)
    with pytest.raises(InvalidInputError):
        segmentation_scores(visible.astype(float) * 0.7, visible, region)
    with pytest.raises(InvalidInputError):
        segmentation_scores(visible, visible | ~region, region)
    with pytest.raises(ConfigError):
        segmentation_scores(visible, visible, region, within="box")
    with pytest.raises(InvalidInputError):
        summarise([])


def test_face_ellipse_matches_drawn_ellipse_and_changes_domain():
    h, w = 120, 100
    yy, xx = np.mgrid[:h, :w] + 0.5
    c, a, b, t = (48.0, 62.0), 30.0, 45.0, math.radians(20)
    dx, dy = xx - c[0], yy - c[1]
    x1 = dx * math.cos(t) + dy * math.sin(t)
    y1 = -dx * math.sin(t) + dy * math.cos(t)
    ell = (x1 / a) ** 2 + (y1 / b) ** 2 <= 1
    for method in ("moments", "contour"):
        fit = face_ellipse(ell, method=method)
        assert (fit ^ ell).sum() / ell.sum() < 0.02, method
    # a ragged region (an ellipse minus a notch): the ellipse domain adds the notch as non-face
    region = ell.copy()
    region[55:70, 60:] = False
    dom = face_ellipse(region)
    s_r = all_face_scores(region, region, within="region")
    s_e = all_face_scores(region, region, within="ellipse")
    assert s_r["n_pixels"] == region.sum()
    assert s_e["n_pixels"] == dom.sum()
    assert s_e["tn"] == (dom & ~region).sum() and s_e["fp"] == 0
    assert s_e["tp"] == (dom & region).sum()
    assert not face_ellipse(np.zeros((5, 5), bool)).any()


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def test_umeyama_recovers_known_similarity_exactly():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(40, 3)) * 50
    rot = _random_rotation(rng)
    t = Similarity(1.37, rot, np.array([10.0, -4.0, 900.0]))
    est = umeyama(src, t.apply(src))
    assert est.scale == pytest.approx(1.37, abs=1e-12)
    np.testing.assert_allclose(est.rotation, rot, atol=1e-12)
    np.testing.assert_allclose(est.translation, t.translation, atol=1e-9)
    rigid = umeyama(src, Similarity(1.0, rot, t.translation).apply(src), with_scale=False)
    assert rigid.scale == 1.0
    np.testing.assert_allclose(rigid.rotation, rot, atol=1e-12)
    # a reflection in the data is not returned as a rotation
    mirrored = src * np.array([-1.0, 1.0, 1.0])
    assert np.linalg.det(umeyama(src, mirrored).rotation) == pytest.approx(1.0)


def test_vertex_error_same_topology():
    rng = np.random.default_rng(4)
    gt = rng.normal(size=(200, 3)) * 40
    pred = Similarity(0.8, _random_rotation(rng), np.array([5.0, 6.0, 7.0])).apply(gt)
    assert vertex_error_same_topology(pred, gt).mean < 1e-9
    assert vertex_error_same_topology(pred, gt, align="rigid").mean > 1.0  # scale differs
    bumped = gt.copy()
    bumped[:, 2] += 2.0
    e = vertex_error_same_topology(bumped, gt, align="none")
    assert (e.median, e.mean, e.std) == pytest.approx((2.0, 2.0, 0.0))


def _grid_mesh(n=21, size=100.0):
    s = np.linspace(-size / 2, size / 2, n)
    xx, yy = np.meshgrid(s, s)
    v = np.stack([xx.ravel(), yy.ravel(), 0.001 * (xx.ravel() ** 2 + yy.ravel() ** 2)], 1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    f = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    return v, f


def test_closest_points_on_triangle_regions():
    v = np.array([[0.0, 0, 0], [4, 0, 0], [0, 4, 0]])
    f = np.array([[0, 1, 2]])
    q = np.array([[1.0, 1, 5], [-3, -4, 0], [6, -1, 0], [2, -2, 1], [3, 3, 0], [-1, 2, 0]])
    want = np.array([[1.0, 1, 0], [0, 0, 0], [4, 0, 0], [2, 0, 0], [2, 2, 0], [0, 2, 0]])
    cp, d, t = closest_points_on_mesh(v, f, q)
    np.testing.assert_allclose(cp, want, atol=1e-12)
    np.testing.assert_allclose(d, np.linalg.norm(q - want, axis=1), atol=1e-12)
    assert (t == 0).all()


def test_closest_points_match_brute_force_on_a_mesh():
    v, f = _grid_mesh(9)
    rng = np.random.default_rng(5)
    q = rng.uniform(-70, 70, size=(60, 3))
    _, d, _ = closest_points_on_mesh(v, f, q)
    # brute force: every triangle against every point with the same closed form, independently of the k-d tree
    from fitem.bench.metrics import _closest_on_triangles
    tv = v[f]
    qq = np.repeat(q, len(f), 0)
    cp = _closest_on_triangles(qq, np.tile(tv[:, 0], (len(q), 1)), np.tile(tv[:, 1], (len(q), 1)),
                               np.tile(tv[:, 2], (len(q), 1)))
    brute = np.linalg.norm(cp - qq, axis=1).reshape(len(q), len(f)).min(1)
    np.testing.assert_allclose(d, brute, atol=1e-9)
    # and the closed form against dense sampling of each triangle (upper bound, close)
    w = rng.dirichlet(np.ones(3), size=600)
    samples = np.einsum("sk,tkc->tsc", w, tv).reshape(-1, 3)
    dense = np.array([np.linalg.norm(samples - p, axis=1).min() for p in q])
    assert np.all(d <= dense + 1e-9) and np.all(dense - d < 1.0)


def test_point_to_surface_error_recovers_alignment_and_offset():
    v, f = _grid_mesh(21)
    rng = np.random.default_rng(6)
    lm = np.array([0, 20, 220, 420, 440, 110, 330])
    # prediction = gt in another frame (similarity): after alignment, error ≈ 0
    pred = Similarity(1.2, _random_rotation(rng), np.array([30.0, -20.0, 500.0])).apply(v)
    err = point_to_surface_error(pred, f, v, landmarks=lm)
    assert err.median < 1e-6 and err.mean < 1e-6
    # prediction with a different topology (a finer grid of the same surface): still ≈ 0
    v2, f2 = _grid_mesh(41)
    err2 = point_to_surface_error(v2, f2, v, landmarks=(np.array([0, 40, 1680, 840]), np.array([0, 20, 440, 220])))
    assert err2.mean < 0.05  # the finer mesh's chords differ from the coarse one by < 0.05 mm
    # a known normal offset without alignment: distance = offset (flat-ish surface, interior points)
    off = v.copy()
    off[:, 2] += 1.5
    e3 = point_to_surface_error(off, f, v)
    inner = (np.abs(v[:, 0]) < 40) & (np.abs(v[:, 1]) < 40)
    np.testing.assert_allclose(e3.distances[inner], 1.5, rtol=0.02)
    # landmarks-only alignment stays exact for exact correspondences
    t = align_similarity(pred, v, lm)
    np.testing.assert_allclose(t.apply(pred), v, atol=1e-8)


def test_landmark_nme_known_displacement():
    rng = np.random.default_rng(7)
    gt = rng.uniform(50, 150, size=(68, 2))
    gt[36] = [80.0, 100.0]
    gt[45] = [140.0, 100.0]  # inter-ocular distance 60 px
    pred = gt + np.array([3.0, 4.0])  # every point off by 5 px
    assert landmark_nme(pred, gt) == pytest.approx(5.0 / 60.0)
    batch = landmark_nme(np.stack([pred, gt]), np.stack([gt, gt]))
    np.testing.assert_allclose(batch, [5.0 / 60.0, 0.0])
    with pytest.raises(ShapeError):
        landmark_nme(pred[:10], gt)


def test_photometric_rmse():
    a = np.zeros((4, 4, 3))
    b = a.copy()
    b[:2] = 0.2
    m = np.zeros((4, 4), bool)
    m[1:3] = True  # half the masked pixels differ by 0.2
    assert photometric_rmse(a, b, m) == pytest.approx(math.sqrt(0.5 * 0.04))
    assert math.isnan(photometric_rmse(a, b, np.zeros((4, 4), bool)))
    with pytest.raises(ShapeError):
        photometric_rmse(a, b[:3])
