"""fitem.landmarks.align: crop transform rule, exact round trips and the half-pixel convention."""
from __future__ import annotations

import numpy as np
import pytest

from fitem.errors import ConfigError, LandmarkError, ShapeError
from fitem.landmarks.align import AlignTransform, align_transform, fit_scaled_orthographic
from fitem.landmarks.template import IBUG68_TEMPLATE_MM
from fitem.render.camera import DEFAULT_FOCAL_224, rotation_matrix

import torch


def project_template(euler=(0.0, 0.0, 0.0), scale=1.0, offset=(300.0, 200.0)) -> np.ndarray:
    """Scaled-orthographic image of the template (image y down), ``scale`` px per mm."""
    R = rotation_matrix(torch.tensor(euler, dtype=torch.float64)).numpy()
    v = (IBUG68_TEMPLATE_MM - IBUG68_TEMPLATE_MM.mean(0)) @ R.T
    return v[:, :2] * np.array([1.0, -1.0]) * scale + np.array(offset)


def test_scaled_orthographic_fit_recovers_scale_rotation_and_centre() -> None:
    euler = (0.2, -0.5, 0.15)
    pts = project_template(euler, scale=1.7, offset=(250.0, 180.0))
    s, R, c = fit_scaled_orthographic(pts, IBUG68_TEMPLATE_MM - IBUG68_TEMPLATE_MM.mean(0))
    assert s == pytest.approx(1.7, rel=1e-9)
    np.testing.assert_allclose(R, rotation_matrix(torch.tensor(euler, dtype=torch.float64)).numpy(), atol=1e-9)
    np.testing.assert_allclose(c, [250.0, 180.0], atol=1e-9)


@pytest.mark.parametrize("size", [224, 256])
def test_crop_rule_face_size_and_centre(size: int) -> None:
    """A face at any scale/position lands at the crop centre at the size of a template 1 m from the camera."""
    for euler, scale in [((0, 0, 0), 0.7), ((0.1, 0.6, 0.0), 2.5)]:
        pts = project_template(euler, scale=scale, offset=(400.0, 310.0))
        T = align_transform(pts, size=size)
        crop = T.to_crop(pts)
        s, _, c = fit_scaled_orthographic(crop[17:], (IBUG68_TEMPLATE_MM - IBUG68_TEMPLATE_MM.mean(0))[17:])
        assert s == pytest.approx(DEFAULT_FOCAL_224 * size / 224 / 1000.0, rel=1e-6)  # f / 1000 mm px per mm
        np.testing.assert_allclose(c, [size / 2, size / 2], atol=1e-6)
    frontal = align_transform(project_template(scale=0.9), size=224).to_crop(project_template(scale=0.9))
    assert 85 < np.linalg.norm(frontal[36] - frontal[45]) < 100  # ~96 px outer eye corners, like Deep3DFaceRecon


def test_rotate_removes_roll_and_default_keeps_it() -> None:
    pts = project_template((0.0, 0.0, 0.4), scale=1.3)
    kept = align_transform(pts).to_crop(pts)
    upright = align_transform(pts, rotate=True).to_crop(pts)

    def eye_angle(p: np.ndarray) -> float:
        d = p[45] - p[36]
        return float(np.degrees(np.arctan2(d[1], d[0])))

    assert abs(eye_angle(upright)) < 0.5
    assert abs(abs(eye_angle(kept)) - np.degrees(0.4)) < 0.5


@pytest.mark.parametrize("rotate", [False, True])
def test_point_round_trip(rotate: bool) -> None:
    rng = np.random.default_rng(0)
    pts = project_template((0.1, 0.3, -0.3), scale=3.1, offset=(1234.5, 876.25)) + rng.normal(0, 2, (68, 2))
    T = align_transform(pts, size=224, rotate=rotate)
    any_points = rng.uniform(-500, 3000, (1000, 2))
    np.testing.assert_allclose(T.to_input(T.to_crop(any_points)), any_points, atol=1e-4)
    np.testing.assert_allclose(T.to_crop(T.to_input(any_points)), any_points, atol=1e-4)
    inv = T.inverse_matrix
    np.testing.assert_allclose(inv[:, :2] @ T.matrix[:, :2], np.eye(2), atol=1e-12)


def _ramp(h: int, w: int) -> np.ndarray:
    """A linear image f(u, v) = 0.3 u + 0.7 v sampled at continuous pixel centres (u, v) = (j + .5, i + .5)."""
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return (0.3 * jj + 0.7 * ii).astype(np.float64)


def test_warp_samples_at_pixel_centres_half_pixel_convention() -> None:
    """Bilinear interpolation is exact on a linear image: every crop pixel centre must read f(to_input(centre))."""
    h, w = 300, 400
    img = _ramp(h, w)
    m = np.array([[0.8 * np.cos(0.3), -0.8 * np.sin(0.3), 40.0], [0.8 * np.sin(0.3), 0.8 * np.cos(0.3), -20.0]])
    T = AlignTransform(m, 224, (h, w))
    crop = T.warp_image(img)
    jj, ii = np.meshgrid(np.arange(224) + 0.5, np.arange(224) + 0.5)
    src = T.to_input(np.stack([jj, ii], -1))
    inside = (src[..., 0] > 1) & (src[..., 0] < w - 1) & (src[..., 1] > 1) & (src[..., 1] < h - 1)
    assert inside.mean() > 0.5
    expected = 0.3 * src[..., 0] + 0.7 * src[..., 1]
    # OpenCV quantises sample positions to 1/32 px: error <= (0.3 + 0.7) / 64 per pixel, zero on average;
    # a half-pixel slip would be an error of 0.5 * (0.3 + 0.7) = 0.5 everywhere
    np.testing.assert_allclose(crop[inside], expected[inside], atol=0.02)
    assert abs(float(np.mean(crop[inside] - expected[inside]))) < 2e-3
    np.testing.assert_array_equal(T.valid_mask()[inside], True)
    assert not T.valid_mask()[~inside & ((src[..., 0] < -1) | (src[..., 1] < -1))].any()


def test_image_to_input_samples_at_pixel_centres() -> None:
    h, w = 300, 400
    T = AlignTransform(np.array([[0.5, 0.1, 30.0], [-0.1, 0.5, 50.0]]), 224, (h, w))
    crop = _ramp(224, 224)
    back = T.image_to_input(crop)
    assert back.shape == (h, w)
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    c = T.to_crop(np.stack([jj, ii], -1))
    inside = (c[..., 0] > 1) & (c[..., 0] < 223) & (c[..., 1] > 1) & (c[..., 1] < 223)
    expected = (0.3 * c[..., 0] + 0.7 * c[..., 1])[inside]
    np.testing.assert_allclose(back[inside], expected, atol=0.02)  # 1/32-px sample grid, see above
    assert abs(float(np.mean(back[inside] - expected))) < 2e-3
    assert np.all(back[(c[..., 0] < -1) | (c[..., 0] > 225)] == 0.0)  # outside the crop: fill


def test_mask_maps_back_onto_the_right_input_pixels() -> None:
    # an exact case: the crop is the input scaled by 2 (and shifted by whole input pixels)
    T = AlignTransform(np.array([[2.0, 0.0, -100.0], [0.0, 2.0, -60.0]]), 224, (200, 300))
    mask_in = np.zeros((200, 300), bool)
    mask_in[60:90, 70:110] = True  # input pixels; in the crop: rows 60..119, cols 40..119
    mask_crop = np.zeros((224, 224), bool)
    mask_crop[60:120, 40:120] = True
    np.testing.assert_array_equal(T.mask_to_input(mask_crop), mask_in)
    np.testing.assert_array_equal(T.warp_image(mask_in.astype(np.float32)) >= 0.5, mask_crop)
    # a general similarity: a disc survives crop → input up to boundary pixels
    pts = project_template((0.0, 0.2, 0.3), scale=1.4, offset=(150.0, 100.0))
    T = align_transform(pts, size=224, input_shape=(200, 300), rotate=True)
    jj, ii = np.meshgrid(np.arange(224) + 0.5, np.arange(224) + 0.5)
    disc_crop = (jj - 100) ** 2 + (ii - 120) ** 2 < 50 ** 2
    back = T.mask_to_input(disc_crop)
    ju, iu = np.meshgrid(np.arange(300) + 0.5, np.arange(200) + 0.5)
    c = T.to_crop(np.stack([ju, iu], -1))
    truth = (c[..., 0] - 100) ** 2 + (c[..., 1] - 120) ** 2 < 50 ** 2
    inter, union = (back & truth).sum(), (back | truth).sum()
    assert inter / union > 0.95
    assert (back ^ truth).sum() <= 0.1 * truth.sum()


def test_warp_keeps_dtype_and_channels_and_borders() -> None:
    img = np.full((100, 120, 3), 200, np.uint8)
    T = AlignTransform(np.array([[1.0, 0.0, 50.0], [0.0, 1.0, 50.0]]), 224, (100, 120))
    crop = T.warp_image(img)
    assert crop.dtype == np.uint8 and crop.shape == (224, 224, 3)
    assert crop[0, 0].tolist() == [0, 0, 0] and crop[100, 100].tolist() == [200, 200, 200]
    assert T.warp_image(img, border="replicate")[0, 0].tolist() == [200, 200, 200]
    assert T.warp_image(img[..., :1]).shape == (224, 224, 1)
    assert T.warp_image(img[..., 0]).shape == (224, 224)
    with pytest.raises(ConfigError):
        T.warp_image(img, border="wrap")


def test_errors() -> None:
    pts = project_template()
    bad = pts.copy()
    bad[3] = np.nan
    with pytest.raises(LandmarkError):
        align_transform(bad)
    with pytest.raises(LandmarkError):
        align_transform(pts[:60])
    with pytest.raises(LandmarkError, match="degenerate"):
        align_transform(np.zeros((68, 2)))
    with pytest.raises(ConfigError):
        align_transform(pts, size=8)
    with pytest.raises(ShapeError):
        AlignTransform(np.eye(3), 224)
    with pytest.raises(ConfigError):
        AlignTransform(np.zeros((2, 3)), 224)
    T = align_transform(pts)
    with pytest.raises(ConfigError, match="input_shape"):
        T.mask_to_input(np.zeros((224, 224), bool))
    with pytest.raises(ShapeError):
        T.mask_to_input(np.zeros((100, 100), bool), (300, 400))
