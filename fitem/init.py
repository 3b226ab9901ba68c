"""Initialisation: pose, shape and expression from landmarks, before the EM fit.

:func:`initialise` solves, for the model's landmark vertices (``"ibug68"`` by
default), the regularised reprojection problem

    min  Σ_k w_k |π(FLIP R X_k(c) + t) − l_k|² / σ²  +  shape_reg Σ c_s²  +  expression_reg Σ c_e²

over the pose (rotation, translation) and the shape and expression
coefficients ``c`` (in standard deviations, so ``*_reg = 1`` is the MAP
estimate for landmark noise ``σ``):

1. **Pose of the mean face**: OpenCV's ``solvePnP`` (SQPnP, a global solver) on
   the inner landmarks (not the contour), refined by weighted
   Levenberg-Marquardt on all landmarks.
2. **Joint solve**: Levenberg-Marquardt (``scipy.optimize.least_squares``,
   analytic Jacobian of the perspective projection) on pose and coefficients
   together. Alternating pose and a linearised coefficient solve converges
   slowly along the directions where shape and pose trade off, so they are
   solved together.
3. **Robust re-weighting** (``robust=True``): Cauchy weights of the
   reprojection errors (IRLS; scale from the median absolute error, at least
   σ), then 2. again, at most ``n_iter`` times, so occluded landmarks, where
   the detector guesses, lose their pull.

The 17 jaw-contour landmarks are silhouette points (where the face outline
happens to be, not fixed points of the face) and get ``jaw_weight`` (0.3). The
light is ambient (0.8, :meth:`FaceParams.zeros`) and the colour coefficients 0.

Landmarks alone cannot separate every shape change from a rotation (a longer
forehead-to-chin slope looks like pitch): with the demo model the pose of a
typical face is found to a few degrees, and the photometric EM refines it.

Conventions (:mod:`fitem.render.camera`): OpenCV gives ``X_cam = R_cv X + t``;
fitem's pose is ``X_cam = FLIP @ R @ X + t``, so ``R = FLIP @ R_cv`` (FLIP is
its own inverse) and the Euler angles come from
:func:`fitem.render.camera.euler_from_matrix`. Landmarks and the principal point
are both in fitem's continuous pixel convention; solvePnP only sees the
equation ``u = f x / z + cx``, so no half-pixel shift is needed as long as
both use the same convention.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from fitem.errors import ConfigError, LandmarkError
from fitem.models.morphable import MorphableModel
from fitem.params import FaceParams
from fitem.render.camera import FLIP, Camera, euler_from_matrix

__all__ = ["InitResult", "initialise", "JAW", "INNER", "MEDIAPIPE_FACE_OVAL"]

log = logging.getLogger(__name__)

#: iBUG-68 jaw-contour indices (silhouette points).
JAW = np.arange(0, 17)
#: iBUG-68 inner indices (brows, nose, eyes, mouth).
INNER = np.arange(17, 68)
#: MediaPipe's face-oval points (the mesh outline; silhouette points of the 468-point set).
MEDIAPIPE_FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
                                400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
                                103, 67, 109])

_FLIP = np.diag(FLIP)


@dataclass(frozen=True, eq=False)
class InitResult:
    """The initial fit.

    Attributes:
        params: :class:`~fitem.params.FaceParams` (float32, CPU): shape,
            expression, rotation, translation from the landmarks; colour 0;
            ambient light.
        inlier_weights: ``(L,)`` robust weights in [0, 1] of the last
            iteration (1 = fully trusted; all ones when ``robust=False``).
        reprojection_error: mean distance (px) between the landmarks and the
            projected model landmarks, over landmarks with inlier weight ≥ 0.5
            and a non-zero input weight.
        projected: ``(L, 2)`` projected model landmarks, crop pixels.
        errors: ``(L,)`` per-landmark reprojection error, px.
    """

    params: FaceParams
    inlier_weights: np.ndarray
    reprojection_error: float
    projected: np.ndarray
    errors: np.ndarray


def _project(points_cam: np.ndarray, camera: Camera) -> np.ndarray:
    z = points_cam[:, 2:3]
    return camera.focal * points_cam[:, :2] / z + np.array([camera.cx, camera.cy])


def _rodrigues(rvec: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3, 1))[0]


def _solve_pnp(obj: np.ndarray, img: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    ok, rvec, tvec = cv2.solvePnP(obj.astype(np.float64), img.astype(np.float64), K, None,
                                  flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        ok, rvec, tvec = cv2.solvePnP(obj.astype(np.float64), img.astype(np.float64), K, None,
                                      flags=cv2.SOLVEPNP_EPNP)
    if not ok:
        raise LandmarkError("solvePnP found no pose for these landmarks; check that they are (x, y) pixels of one face")
    return rvec.reshape(3), tvec.reshape(3)


def _refine_pose(
    obj: np.ndarray, img: np.ndarray, w: np.ndarray, rvec: np.ndarray, tvec: np.ndarray, camera: Camera
) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import least_squares

    sw = np.sqrt(w)[:, None]

    def residual(x: np.ndarray) -> np.ndarray:
        cam = obj @ _rodrigues(x[:3]).T + x[3:]
        return ((_project(cam, camera) - img) * sw).ravel()

    x0 = np.concatenate([rvec, tvec])
    sol = least_squares(residual, x0, method="lm", x_scale=np.r_[0.1, 0.1, 0.1, 10.0, 10.0, 100.0], max_nfev=200)
    return sol.x[:3], sol.x[3:]


def _joint_solve(
    lm: np.ndarray, w: np.ndarray, mean: np.ndarray, basis: np.ndarray, prior: np.ndarray,
    rvec: np.ndarray, tvec: np.ndarray, coef: np.ndarray, camera: Camera, sigma: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on pose and coefficients together (analytic Jacobian).

    Residuals: ``sqrt(w_k) (proj_k - lm_k) / sigma`` (2L) and ``sqrt(prior) * c`` (K).
    """
    from scipy.optimize import least_squares

    k = coef.size
    n_pts = lm.shape[0]
    m = 2 * n_pts
    sw = (np.sqrt(w) / sigma)[:, None]
    sp = np.sqrt(prior)
    f = camera.focal

    def unpack(x: np.ndarray):
        return x[:3], x[3:6], x[6:]

    def fun(x: np.ndarray) -> np.ndarray:
        r, t, c = unpack(x)
        cam = (mean + basis @ c) @ _rodrigues(r).T + t
        return np.concatenate([((_project(cam, camera) - lm) * sw).ravel(), sp * c])

    def jac(x: np.ndarray) -> np.ndarray:
        import cv2

        r, t, c = unpack(x)
        R, dR = cv2.Rodrigues(r.reshape(3, 1))  # dR: (3, 9), d vec(R) / d r_i, row-major vec
        X = mean + basis @ c
        cam = X @ R.T + t
        z = cam[:, 2]
        d_proj = np.zeros((n_pts, 2, 3))  # d (u, v) / d X_cam
        d_proj[:, 0, 0] = f / z
        d_proj[:, 0, 2] = -f * cam[:, 0] / z**2
        d_proj[:, 1, 1] = f / z
        d_proj[:, 1, 2] = -f * cam[:, 1] / z**2
        d_rot = np.stack([X @ dR[i].reshape(3, 3).T for i in range(3)], axis=2)  # (L, 3, 3): d X_cam / d r_i
        J = np.zeros((m + k, 6 + k))
        J[:m, :3] = (np.einsum("kij,kjr->kir", d_proj, d_rot) * sw[:, :, None]).reshape(m, 3)
        J[:m, 3:6] = (d_proj * sw[:, :, None]).reshape(m, 3)
        if k:
            J[:m, 6:] = (np.einsum("kij,jl,klm->kim", d_proj, R, basis) * sw[:, :, None]).reshape(m, k)
            J[m:, 6:] = np.diag(sp)
        return J

    x0 = np.concatenate([rvec, tvec, coef])
    scale = np.concatenate([[0.1, 0.1, 0.1, 10.0, 10.0, 100.0], np.ones(k)])
    sol = least_squares(fun, x0, jac=jac, method="lm", x_scale=scale, max_nfev=100 * (7 + k))
    r, t, c = unpack(sol.x)
    return r.copy(), t.copy(), c.copy()


def _contour(landmark_set: str, n_pts: int) -> np.ndarray:
    """Indices of silhouette landmarks of a landmark set (none for unknown sets)."""
    if landmark_set == "ibug68":
        return JAW
    if landmark_set.startswith("mediapipe") and n_pts >= 468:
        return MEDIAPIPE_FACE_OVAL
    return np.zeros(0, dtype=np.int64)


def _cauchy_weights(err: np.ndarray, active: np.ndarray, sigma: float) -> np.ndarray:
    scale = max(1.4826 * float(np.median(err[active])), sigma) if active.any() else sigma
    c = 2.3849 * scale
    return 1.0 / (1.0 + (err / c) ** 2)


def initialise(
    model: MorphableModel,
    landmarks: np.ndarray,
    camera: Camera,
    *,
    landmark_set: str = "ibug68",
    weights: np.ndarray | None = None,
    n_iter: int = 5,
    robust: bool = True,
    shape_reg: float = 1.0,
    expression_reg: float = 1.0,
    landmark_sigma: float = 3.0,
    jaw_weight: float = 0.3,
) -> InitResult:
    """Initial pose, shape and expression from crop-space landmarks.

    Args:
        model: the morphable model; needs the landmark set ``landmark_set``.
        landmarks: ``(L, 2)`` points ``(x, y)`` in crop pixels (continuous
            convention): the 68 iBUG points (e.g. ``AlignTransform.to_crop(det.ibug68)``),
            or with ``landmark_set="mediapipe468"`` MediaPipe's first 468 points
            (``det.points478[:468]``) for a model built on MediaPipe's topology.
        camera: the crop's camera (e.g. ``Camera.default(224)``).
        landmark_set: the model's landmark set the points correspond to.
        weights: optional ``(L,)`` non-negative per-landmark weights
            (multiplied with the contour down-weighting; 0 ignores a landmark).
        n_iter: most robust re-weighting rounds, each a joint solve (≥ 1).
        robust: Cauchy IRLS re-weighting of landmarks by reprojection error.
        shape_reg, expression_reg: prior weights on ``Σ c²`` (≥ 0).
        landmark_sigma: landmark noise in pixels at a 224-pixel crop (scaled
            with the camera's image size).
        jaw_weight: weight of the contour landmarks (iBUG 0-16; MediaPipe's
            face oval).

    Returns:
        :class:`InitResult`.

    Raises:
        fitem.errors.ModelError: the model lacks the landmark set (the message
            lists the sets it has and what to do).
        fitem.errors.LandmarkError: landmarks of the wrong shape, NaN, or
            fewer than 6 landmarks with a positive weight.
        fitem.errors.ConfigError: invalid option values.

    Example:
        >>> cam = Camera.default(224)
        >>> res = initialise(model, T.to_crop(det.ibug68), cam)     # doctest: +SKIP
        >>> res.params.rotation, res.reprojection_error             # doctest: +SKIP
    """
    idx = model.landmark_indices(landmark_set)
    n_pts = idx.shape[0]
    if landmark_set == "ibug68" and n_pts != 68:
        raise LandmarkError(
            f"model {model.name!r} has {n_pts} 'ibug68' landmark vertices, expected 68; fix the model's landmarks"
        )
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (n_pts, 2):
        raise LandmarkError(
            f"landmarks: expected shape ({n_pts}, 2) for the model's {landmark_set!r} set, got {lm.shape}"
        )
    if not np.all(np.isfinite(lm)):
        raise LandmarkError("landmarks contain NaN or inf values")
    if int(n_iter) < 1:
        raise ConfigError(f"n_iter must be at least 1, got {n_iter}")
    for label, val in (("shape_reg", shape_reg), ("expression_reg", expression_reg), ("jaw_weight", jaw_weight)):
        if not (np.isfinite(val) and val >= 0):
            raise ConfigError(f"{label} must be a non-negative number, got {val}")
    if not (np.isfinite(landmark_sigma) and landmark_sigma > 0):
        raise ConfigError(f"landmark_sigma must be positive, got {landmark_sigma}")
    contour = _contour(landmark_set, n_pts)
    base = np.ones(n_pts)
    base[contour] = jaw_weight
    if weights is not None:
        w_user = np.asarray(weights, dtype=np.float64)
        if w_user.shape != (n_pts,) or not np.all(np.isfinite(w_user)) or np.any(w_user < 0):
            raise LandmarkError(f"weights: expected ({n_pts},) finite non-negative values, got shape {w_user.shape}")
        base = base * w_user
    active = base > 0
    if active.sum() < 6:
        raise LandmarkError(
            f"only {int(active.sum())} landmarks have a positive weight; at least 6 are needed for a pose"
        )

    sigma = landmark_sigma * min(camera.width, camera.height) / 224.0
    K = np.array([[camera.focal, 0.0, camera.cx], [0.0, camera.focal, camera.cy], [0.0, 0.0, 1.0]])

    # landmark rows of the model (float64)
    n = model.n_vertices
    mean = (model.shape.mean + model.expression.mean)[idx].astype(np.float64)
    b_shape = model.shape.basis.reshape(n, 3, -1)[idx].astype(np.float64)  # (L, 3, Ks)
    b_expr = model.expression.basis.reshape(n, 3, -1)[idx].astype(np.float64)  # (L, 3, Ke)
    basis = np.concatenate([b_shape, b_expr], axis=2)  # (L, 3, K)
    ks, ke = b_shape.shape[2], b_expr.shape[2]
    prior = np.concatenate([np.full(ks, float(shape_reg)), np.full(ke, float(expression_reg))])
    coef = np.zeros(ks + ke)

    def vertices(c: np.ndarray) -> np.ndarray:
        return mean + basis @ c if c.size else mean

    # first pose: global PnP on the inner landmarks (the contour is a silhouette)
    inner = np.setdiff1d(np.flatnonzero(active), contour)
    if inner.size < 6:
        inner = np.flatnonzero(active)
    rvec, tvec = _solve_pnp(mean[inner], lm[inner], K)
    robust_w = np.ones(n_pts)
    # the pose of the mean face first, then pose and coefficients jointly, re-weighting between solves
    rvec, tvec = _refine_pose(mean[active], lm[active], base[active], rvec, tvec, camera)
    for it in range(int(n_iter)):
        w = base * robust_w
        rvec, tvec, coef = _joint_solve(lm, w, mean, basis, prior, rvec, tvec, coef, camera, sigma)
        err = np.linalg.norm(_project(vertices(coef) @ _rodrigues(rvec).T + tvec, camera) - lm, axis=1)
        log.debug("init iteration %d: mean landmark error %.2f px", it, float(err[active].mean()))
        if not robust:
            break  # without re-weighting one joint solve is the answer
        new_w = _cauchy_weights(err, active, sigma)
        if np.max(np.abs(new_w - robust_w)) < 1e-3:
            robust_w = new_w
            break
        robust_w = new_w
    X = vertices(coef)
    R_cv = _rodrigues(rvec)
    cam = X @ R_cv.T + tvec
    if np.any(cam[:, 2] <= 0):
        raise LandmarkError("the pose puts landmarks behind the camera; check the landmarks and the camera")
    proj = _project(cam, camera)
    err = np.linalg.norm(proj - lm, axis=1)
    R = _FLIP @ R_cv
    if R[2, 2] < 0:
        log.warning("initial pose faces away from the camera (rotation matrix R[2,2] = %.2f)", R[2, 2])
    params = FaceParams.for_model(model)
    params = params.replace(
        shape=torch.as_tensor(coef[:ks], dtype=torch.float32),
        expression=torch.as_tensor(coef[ks:], dtype=torch.float32),
        rotation=euler_from_matrix(torch.as_tensor(R, dtype=torch.float64)).to(torch.float32),
        translation=torch.as_tensor(tvec, dtype=torch.float32),
    )
    good = active & (robust_w >= 0.5)
    rep = float(err[good].mean()) if good.any() else float(err[active].mean())
    return InitResult(params, robust_w.copy(), rep, proj, err)
