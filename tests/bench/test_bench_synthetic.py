"""Tests of the synthetic occlusion generator: determinism, exact and consistent ground truth, coverage."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from fitem.bench.synthetic import OCCLUDER_CLASSES, SyntheticConfig, make_sample
from fitem.errors import ConfigError, InvalidInputError

SEEDS_PER_CLASS = 8


@pytest.fixture(scope="module")
def by_class(demo):
    """``{class: [samples]}``: SEEDS_PER_CLASS samples of every occluder class (seeds 100, 101, ...)."""
    model, camera, rast = demo
    return {cls: [make_sample(model, 100 + k, occluder=cls, camera=camera, rasterizer=rast)
                  for k in range(SEEDS_PER_CLASS)] for cls in OCCLUDER_CLASSES}


def _same(a, b) -> None:
    for name in ("image", "face_region", "occluder_mask", "visible_face", "vertices", "landmarks68"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    for block in ("shape", "expression", "colour", "light", "rotation", "translation"):
        assert torch.equal(getattr(a.params, block), getattr(b.params, block)), block
    assert a.info == b.info and a.camera == b.camera and a.seed == b.seed


def test_same_seed_gives_bit_identical_samples(demo, by_class):
    model, camera, rast = demo
    for cls in ("hand", "object"):
        _same(make_sample(model, 100, occluder=cls, camera=camera, rasterizer=rast), by_class[cls][0])
    # a rasterizer built inside make_sample gives the same result
    _same(make_sample(model, 101, occluder="glasses"), by_class["glasses"][1])
    a, b = by_class["none"][:2]
    assert not np.array_equal(a.image, b.image) and not np.array_equal(a.face_region, b.face_region)


def test_occluder_class_changes_only_the_occluder(by_class):
    for cls in OCCLUDER_CLASSES[1:]:
        clean, occ = by_class["none"][2], by_class[cls][2]
        assert np.array_equal(clean.face_region, occ.face_region)
        assert np.array_equal(clean.vertices, occ.vertices)
        # outside the occluder (grown by its anti-aliased rim and the blur) the pixels are identical
        near = cv2.dilate(occ.occluder_mask.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0
        assert np.array_equal(clean.image[~near], occ.image[~near]), cls
        assert not np.array_equal(clean.image[occ.occluder_mask], occ.image[occ.occluder_mask])


def test_masks_consistent_and_coverage_in_designed_range(by_class):
    cfg = SyntheticConfig()
    for cls, samples in by_class.items():
        for s in samples:
            assert s.image.dtype == np.float32 and s.image.shape == (224, 224, 3)
            assert 0.0 <= s.image.min() and s.image.max() <= 1.0
            assert np.array_equal(s.visible_face, s.face_region & ~s.occluder_mask)
            assert s.face_region.sum() > 0.2 * 224 * 224  # framed like an aligned crop
            if cls == "none":
                assert not s.occluder_mask.any() and s.occluder_fraction == 0.0
                continue
            lo, hi = cfg.coverage[cls]
            assert lo <= s.occluder_fraction <= hi, (cls, s.seed, s.occluder_fraction)
            assert s.info["coverage"] == pytest.approx(s.occluder_fraction)
        if cls in ("scarf", "hand"):  # these reach beyond the face outline
            assert any((s.occluder_mask & ~s.face_region).any() for s in samples)


def test_glasses_sit_on_the_eyes_and_scarf_below_the_nose(by_class):
    for s in by_class["glasses"]:
        lm = s.landmarks68
        eye_px = np.floor(lm[36:48]).astype(int)
        on_eyes = s.occluder_mask[eye_px[:, 1], eye_px[:, 0]]
        assert on_eyes.mean() >= 0.75, s.seed
        mouth = np.floor(lm[48:68]).astype(int)
        assert not s.occluder_mask[mouth[:, 1], mouth[:, 0]].any()
    for s in by_class["scarf"]:
        lm = np.floor(s.landmarks68).astype(int)
        assert s.occluder_mask[lm[57, 1], lm[57, 0]] and s.occluder_mask[lm[8, 1], lm[8, 0]]  # lower lip, chin
        assert not s.occluder_mask[lm[27, 1], lm[27, 0]]  # nose bridge stays visible


def test_hand_is_skin_coloured_like_the_face(by_class):
    for s in by_class["hand"]:
        hand = s.image[s.occluder_mask & s.face_region].mean(0)
        face = s.image[s.visible_face].mean(0)
        assert np.abs(hand - face).max() < 0.2, (s.seed, hand, face)


def test_lighting_is_plausible(by_class):
    for s in by_class["none"]:
        face = s.image[s.face_region]
        assert 0.15 < face.mean() < 0.85
        assert (face.max(1) >= 254.5 / 255).mean() < 0.02  # auto-exposure: hardly any clipping
        # the light is the documented one: ambient band around AMBIENT_LIGHT, the rest smaller
        light = s.params.light
        from fitem.params import AMBIENT_LIGHT
        assert 0.5 * AMBIENT_LIGHT < float(light[0].min()) and float(light[0].max()) < 1.3 * AMBIENT_LIGHT


def test_landmarks_are_projected_model_landmarks_inside_the_image(demo):
    model, camera, rast = demo
    cfg = SyntheticConfig(yaw_deg=25.0, pitch_deg=10.0, roll_deg=10.0)
    idx = model.landmark_indices("ibug68")
    for seed in range(5):
        s = make_sample(model, seed, occluder="none", camera=camera, rasterizer=rast, config=cfg)
        lm = s.landmarks68
        assert lm.shape == (68, 2) and lm.dtype == np.float32
        assert (lm > 0).all() and (lm < 224).all()
        proj = camera.project(torch.from_numpy(s.vertices[idx]))[:, :2].numpy()
        np.testing.assert_allclose(proj, lm, atol=1e-3)
        px = np.floor(lm).astype(int)
        assert s.face_region[px[:, 1], px[:, 0]].mean() > 0.85  # the landmarks lie on the rendered face
        # the pose stays in the configured range
        deg = np.degrees(s.params.rotation.numpy())
        assert abs(deg[0]) <= 10 and abs(deg[1]) <= 25 and abs(deg[2]) <= 10


def test_ground_truth_rerenders_exactly(demo, by_class):
    from fitem.render.renderer import render_params

    model, camera, rast = demo
    for cls in ("none", "hand"):
        s = by_class[cls][3]
        out = render_params(model, s.params, camera, rast)
        assert np.array_equal(out.region[0].numpy(), s.face_region)
        clean = np.clip(out.image[0].numpy(), 0, 1)
        inner = cv2.erode(s.visible_face.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        diff = np.abs(clean[inner] - s.image[inner])
        assert diff.mean() < 0.02 and np.median(diff) < 0.015  # noise σ 0.01 + blur + 8-bit levels


def test_input_errors(demo):
    model, camera, rast = demo
    with pytest.raises(ConfigError, match="occluder class"):
        make_sample(model, 0, occluder="helmet", camera=camera, rasterizer=rast)
    with pytest.raises(InvalidInputError, match="seed"):
        make_sample(model, -1, camera=camera, rasterizer=rast)
    with pytest.raises(ConfigError, match="image size"):
        from fitem.render.camera import Camera
        make_sample(model, 0, camera=Camera.default(128), rasterizer=rast)
    with pytest.raises(ConfigError):
        SyntheticConfig(coverage={"glasses": (0.5, 0.2), "scarf": (0.1, 0.4), "hand": (0.1, 0.4),
                                  "object": (0.1, 0.4)})
    with pytest.raises(ConfigError):
        SyntheticConfig(yaw_deg=-1.0)
    with pytest.raises(InvalidInputError):
        make_sample("demo", 0)


def test_jpeg_option_changes_pixels_not_ground_truth(demo, by_class):
    model, camera, rast = demo
    cfg = SyntheticConfig(jpeg_quality=(60, 80))
    base = by_class["object"][4]
    a = make_sample(model, base.seed, occluder="object", camera=camera, rasterizer=rast, config=cfg)
    b = make_sample(model, base.seed, occluder="object", camera=camera, rasterizer=rast, config=cfg)
    assert np.array_equal(a.image, b.image) and 60 <= a.info["jpeg_quality"] <= 80
    assert np.array_equal(a.occluder_mask, base.occluder_mask) and np.array_equal(a.face_region, base.face_region)
    diff = np.abs(a.image - base.image)
    assert 0.002 < diff.mean() < 0.05
