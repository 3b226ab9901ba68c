"""fitem.init.initialise: pose/shape/expression from landmarks, on synthetic projections with known pose.

Numbers measured on a 2-core CPU (see benchmarks/bench_landmarks.py for timings):

- exact landmarks of a mean face: exact recovery (< 0.05 deg);
- the synthetic model (tests/landmarks/synthetic.py, 30 coefficients ~ N(0, 1)), exact landmarks
  trusted as such (landmark_sigma=0.1 px): rotation error mean 0.3 deg, max 0.6 deg; translation
  <= 4.4 % of the distance (face size and distance trade off under a long focal length); with the
  default landmark_sigma (3 px, meant for detector output) the prior pulls the shape towards the
  mean and the pose absorbs the rest: mean 2.1 deg, max 6.5 deg;
- 10 of 68 landmarks displaced by 20 px: <= 5 deg, displaced points get weight < 0.3;
- the demo model (110 coefficients), coefficients ~ N(0, 0.5^2): mean ~2.2 deg, max ~4 deg;
  coefficients ~ N(0, 1): mean 3.7 deg, max 5.9 deg, whatever landmark_sigma: some demo shape
  components move the 2-D landmarks the way a rotation does (a 2-sigma step of shape component 3
  reads as 8 deg of pitch), which landmarks alone cannot tell apart; the photometric fit has to.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fitem.errors import ConfigError, LandmarkError, ModelError
from fitem.init import JAW, initialise
from fitem.models.morphable import MorphableModel
from fitem.params import AMBIENT_LIGHT
from fitem.render.camera import Camera, rotation_matrix, to_camera
from tests.landmarks.synthetic import synthetic_model

CAM = Camera.default(224)


@pytest.fixture(scope="module")
def synthetic() -> MorphableModel:
    return synthetic_model()


@pytest.fixture(scope="module")
def demo() -> MorphableModel:
    demo_module = pytest.importorskip("fitem.models.demo")
    if not hasattr(demo_module, "demo_model"):
        pytest.skip("fitem.models.demo.demo_model is not available yet")
    return demo_module.demo_model()


def angle_deg(euler_a: torch.Tensor, euler_b: torch.Tensor) -> float:
    ra = rotation_matrix(euler_a.double()).numpy()
    rb = rotation_matrix(euler_b.double()).numpy()
    return float(np.degrees(np.arccos(np.clip((np.trace(ra @ rb.T) - 1) / 2, -1, 1))))


def make_case(model: MorphableModel, rng: np.random.Generator, coef_std: float, camera: Camera = CAM,
              landmark_set: str = "ibug68"):
    rot = torch.tensor(rng.uniform(-1, 1, 3) * np.array([0.25, 0.6, 0.2]), dtype=torch.float64)
    t = torch.tensor([rng.uniform(-20, 20), rng.uniform(-20, 20), rng.uniform(900, 1100)], dtype=torch.float64)
    cs = torch.tensor(rng.normal(size=model.n_shape) * coef_std)
    ce = torch.tensor(rng.normal(size=model.n_expression) * coef_std)
    v, _ = model.instance(cs, ce)
    lm = camera.project(to_camera(v[model.landmark_indices(landmark_set)], rot, t))[:, :2].numpy()
    return lm, rot, t


def displace(lm: np.ndarray, rng: np.random.Generator, n: int = 10, px: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.choice(len(lm), n, replace=False)
    d = rng.normal(size=(n, 2))
    out = lm.copy()
    out[idx] += px * d / np.linalg.norm(d, axis=1, keepdims=True)
    return out, idx


def test_exact_recovery_of_a_mean_face_any_camera(synthetic: MorphableModel) -> None:
    rng = np.random.default_rng(0)
    for camera in (CAM, Camera(focal=900.0, cx=120.5, cy=131.0, width=256, height=256)):
        for _ in range(3):
            lm, rot, t = make_case(synthetic, rng, 0.0, camera)
            res = initialise(synthetic, lm, camera)
            assert angle_deg(res.params.rotation, rot) < 0.05
            np.testing.assert_allclose(res.params.translation.double().numpy(), t.numpy(), atol=0.5)
            assert res.reprojection_error < 0.05


def test_pose_from_exact_landmarks_synthetic_model(synthetic: MorphableModel) -> None:
    rng = np.random.default_rng(1)
    for _ in range(8):
        lm, rot, t = make_case(synthetic, rng, 1.0)
        res = initialise(synthetic, lm, CAM, landmark_sigma=0.1)  # exact landmarks: trust them
        assert angle_deg(res.params.rotation, rot) <= 3.0
        assert np.linalg.norm(res.params.translation.double().numpy() - t.numpy()) <= 0.05 * float(t.norm())


def test_pose_with_ten_displaced_landmarks_synthetic_model(synthetic: MorphableModel) -> None:
    rng = np.random.default_rng(2)
    for _ in range(6):
        lm, rot, t = make_case(synthetic, rng, 1.0)
        bad, idx = displace(lm, rng)
        res = initialise(synthetic, bad, CAM)
        assert angle_deg(res.params.rotation, rot) <= 8.0
        inliers = np.setdiff1d(np.arange(68), idx)
        assert res.inlier_weights[idx].max() < 0.3  # the displaced points are recognised
        assert np.median(res.inlier_weights[inliers]) > 0.9


def test_robust_weights_matter(synthetic: MorphableModel) -> None:
    rng = np.random.default_rng(3)
    lm, rot, _ = make_case(synthetic, rng, 0.0)
    bad = lm.copy()
    bad[[30, 33, 36, 45, 48, 54, 8, 27, 39, 42]] += np.array([40.0, 25.0])  # a consistent shove of key points
    robust = angle_deg(initialise(synthetic, bad, CAM).params.rotation, rot)
    plain = angle_deg(initialise(synthetic, bad, CAM, robust=False).params.rotation, rot)
    assert robust < 1.0 < plain
    w = np.ones(68)
    w[[30, 33, 36, 45, 48, 54, 8, 27, 39, 42]] = 0.0  # zero weight: those points are ignored
    ignored = initialise(synthetic, bad, CAM, weights=w, robust=False)
    assert angle_deg(ignored.params.rotation, rot) < 0.05


def test_demo_model_pose(demo: MorphableModel) -> None:
    rng = np.random.default_rng(4)
    lm, rot, t = make_case(demo, rng, 0.0)
    res = initialise(demo, lm, CAM)
    assert angle_deg(res.params.rotation, rot) < 0.1
    errs, trans = [], []
    for _ in range(6):
        lm, rot, t = make_case(demo, rng, 0.5)
        res = initialise(demo, lm, CAM)
        errs.append(angle_deg(res.params.rotation, rot))
        trans.append(np.linalg.norm(res.params.translation.double().numpy() - t.numpy()) / float(t.norm()))
        bad, _ = displace(lm, rng)
        assert angle_deg(initialise(demo, bad, CAM).params.rotation, rot) <= 8.0
    assert np.mean(errs) <= 3.0 and max(errs) <= 5.0, errs
    assert max(trans) <= 0.06 and np.mean(trans) <= 0.05, trans


def test_demo_model_dense_mediapipe_landmarks(demo: MorphableModel) -> None:
    if "mediapipe468" not in demo.landmarks:
        pytest.skip("demo model without the mediapipe468 landmark set")
    rng = np.random.default_rng(5)
    lm, rot, t = make_case(demo, rng, 0.0, landmark_set="mediapipe468")
    res = initialise(demo, lm, CAM, landmark_set="mediapipe468")
    assert res.inlier_weights.shape == (468,)
    assert angle_deg(res.params.rotation, rot) < 0.1


def test_result_blocks(synthetic: MorphableModel) -> None:
    lm, _, _ = make_case(synthetic, np.random.default_rng(6), 0.5)
    res = initialise(synthetic, lm, CAM, n_iter=2)
    p = res.params
    assert p.shape.shape == (synthetic.n_shape,) and p.expression.shape == (synthetic.n_expression,)
    assert p.colour.shape == (synthetic.n_colour,) and torch.all(p.colour == 0)
    assert p.light[0].tolist() == [pytest.approx(AMBIENT_LIGHT)] * 3 and torch.all(p.light[1:] == 0)
    assert all(getattr(p, b).dtype == torch.float32 for b in ("shape", "rotation", "translation"))
    assert res.projected.shape == (68, 2) and res.errors.shape == (68,)
    assert res.inlier_weights.shape == (68,) and np.all((res.inlier_weights > 0) & (res.inlier_weights <= 1))
    np.testing.assert_allclose(res.errors, np.linalg.norm(res.projected - lm, axis=1))
    assert res.reprojection_error < 2.0
    # the parameters reproduce the projection through fitem.render.camera
    v, _ = synthetic.instance(p.shape.double(), p.expression.double())
    uv = CAM.project(to_camera(v[:68], p.rotation.double(), p.translation.double()))[:, :2].numpy()
    np.testing.assert_allclose(uv, res.projected, atol=0.05)  # float32 parameters
    assert res.params.translation[2] > 0 and JAW.shape == (17,)


def test_errors(synthetic: MorphableModel) -> None:
    lm, _, _ = make_case(synthetic, np.random.default_rng(7), 0.0)
    no_lms = MorphableModel("bare", synthetic.shape, synthetic.expression, synthetic.colour, synthetic.triangles)
    with pytest.raises(ModelError, match="ibug68"):
        initialise(no_lms, lm, CAM)
    bad = lm.copy()
    bad[4] = np.nan
    with pytest.raises(LandmarkError, match="NaN"):
        initialise(synthetic, bad, CAM)
    with pytest.raises(LandmarkError, match=r"\(68, 2\)"):
        initialise(synthetic, lm[:60], CAM)
    with pytest.raises(LandmarkError, match="weights"):
        initialise(synthetic, lm, CAM, weights=np.ones(67))
    with pytest.raises(LandmarkError, match="at least 6"):
        initialise(synthetic, lm, CAM, weights=np.r_[np.ones(5), np.zeros(63)])
    with pytest.raises(ConfigError):
        initialise(synthetic, lm, CAM, n_iter=0)
    with pytest.raises(ConfigError):
        initialise(synthetic, lm, CAM, shape_reg=-1.0)
    with pytest.raises(ConfigError):
        initialise(synthetic, lm, CAM, landmark_sigma=0.0)
