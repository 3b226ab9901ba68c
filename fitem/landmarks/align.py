"""Crop and align a face to the working resolution, and map every result back to the input image.

The rule (:func:`align_transform`), in the spirit of Deep3DFaceRecon's and
FOCUS's 224² crops (which fit a scaled-orthographic projection of standard 3D
landmarks to the detected ones, rescale and crop around the fitted centre):

1. Fit a scaled-orthographic projection ``x ≈ s · P R X + c`` of the 3D
   iBUG-68 template :data:`fitem.landmarks.template.IBUG68_TEMPLATE_MM` (mm,
   centred on its centroid) to the 51 inner landmarks (brows, nose, eyes,
   mouth; the jaw contour is a silhouette and moves with the detector). ``s``
   is the face's scale in input pixels per mm, independent of yaw and pitch,
   ``c`` the image position of the template's centroid (about the nose bridge).
2. Scale the image by ``k = (f / distance) / s`` with ``f = 1015 · size / 224``
   (the default camera's focal length, :class:`fitem.render.Camera`) and
   ``distance = 1000`` mm: in the crop the face has the size a template face
   1 m in front of the default camera would have (outer eye corners about
   96 px apart at 224, as in Deep3DFaceRecon's crops).
3. Put ``c`` at the crop centre. By default the crop is not rotated (as in
   Deep3DFaceRecon; the fit's roll angle absorbs head tilt); ``rotate=True``
   also removes the in-plane roll.

Pixel conventions: every point here is in fitem's continuous convention
(:mod:`fitem.render.camera`: pixel ``(i, j)`` has its centre at
``(j + 0.5, i + 0.5)``). OpenCV's ``warpAffine`` puts pixel centres at integer
coordinates, so the matrix handed to OpenCV is conjugated by the half-pixel
shift: ``M_cv = [A | A·(½, ½) + b − (½, ½)]`` for ``x_crop = A x_in + b``.

Borders: crop pixels whose source lies outside the input image are filled with
``border_value`` (default 0, black; :meth:`AlignTransform.valid_mask` tells
which crop pixels have data) so that no invented colour looks like skin to the
fit. ``border="replicate"`` repeats the edge pixels instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fitem.errors import ConfigError, InvalidInputError, LandmarkError, ShapeError
from fitem.render.camera import DEFAULT_FOCAL_224

__all__ = ["AlignTransform", "align_transform", "fit_scaled_orthographic"]

_HALF = np.array([0.5, 0.5])


@dataclass(frozen=True, eq=False)
class AlignTransform:
    """A 2-D similarity from input-image pixels to a ``size × size`` crop (continuous convention).

    Attributes:
        matrix: ``(2, 3)`` float64, ``x_crop = matrix[:, :2] @ x_in + matrix[:, 2]``.
        size: crop side in pixels.
        input_shape: ``(H, W)`` of the input image, or ``None`` if unknown.

    Example:
        >>> T = align_transform(det.ibug68, size=224)            # doctest: +SKIP
        >>> crop = T.warp_image(img)                              # (224, 224, 3)   # doctest: +SKIP
        >>> np.allclose(T.to_input(T.to_crop(det.ibug68)), det.ibug68)   # doctest: +SKIP
        True
    """

    matrix: np.ndarray
    size: int
    input_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape != (2, 3):
            raise ShapeError(f"matrix: expected shape (2, 3), got {m.shape}")
        if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:, :2])) < 1e-12:
            raise ConfigError("alignment matrix must be finite and invertible")
        if int(self.size) < 1:
            raise ConfigError(f"crop size must be positive, got {self.size}")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "size", int(self.size))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", (int(self.input_shape[0]), int(self.input_shape[1])))

    # ---------------------------------------------------------------- matrices
    @property
    def inverse_matrix(self) -> np.ndarray:
        """``(2, 3)`` crop → input matrix."""
        a_inv = np.linalg.inv(self.matrix[:, :2])
        return np.concatenate([a_inv, -(a_inv @ self.matrix[:, 2])[:, None]], axis=1)

    @property
    def scale(self) -> float:
        """Crop pixels per input pixel."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    @staticmethod
    def _cv(m: np.ndarray) -> np.ndarray:
        """The same map in OpenCV's integer-centred pixel coordinates."""
        a, b = m[:, :2], m[:, 2]
        return np.concatenate([a, (a @ _HALF + b - _HALF)[:, None]], axis=1)

    # ---------------------------------------------------------------- points
    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Input-image points ``(..., 2)`` (x, y) → crop points ``(..., 2)``, float64."""
        p = _points(points)
        return p @ self.matrix[:, :2].T + self.matrix[:, 2]

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """Crop points ``(..., 2)`` → input-image points ``(..., 2)``, float64."""
        p = _points(points)
        inv = self.inverse_matrix
        return p @ inv[:, :2].T + inv[:, 2]

    # ---------------------------------------------------------------- images
    def warp_image(self, image: np.ndarray, *, border: str = "constant", border_value: float = 0.0) -> np.ndarray:
        """The ``(size, size[, C])`` crop of an input image (bilinear; dtype kept).

        Args:
            image: ``(H, W)`` or ``(H, W, C)`` array (e.g. from :func:`fitem.image.load_image`).
            border: ``"constant"`` (fill with ``border_value``) or ``"replicate"``.
        """
        import cv2

        img = np.asarray(image)
        if img.ndim not in (2, 3):
            raise ShapeError(f"image: expected shape (H, W) or (H, W, C), got {img.shape}")
        mode = _border(border)
        out = cv2.warpAffine(
            _cv_ready(img), self._cv(self.matrix), (self.size, self.size),
            flags=cv2.INTER_LINEAR, borderMode=mode, borderValue=_border_tuple(border_value),
        )
        return _restore(out, img)

    def valid_mask(self, input_shape: tuple[int, ...] | None = None) -> np.ndarray:
        """``(size, size)`` bool: crop pixels whose centre maps inside the input image."""
        h, w = self._shape(input_shape)
        jj, ii = np.meshgrid(np.arange(self.size) + 0.5, np.arange(self.size) + 0.5)
        p = self.to_input(np.stack([jj, ii], -1))
        return (p[..., 0] >= 0) & (p[..., 0] <= w) & (p[..., 1] >= 0) & (p[..., 1] <= h)

    def image_to_input(
        self, crop_image: np.ndarray, input_shape: tuple[int, ...] | None = None, *, fill: float = 0.0
    ) -> np.ndarray:
        """Map a crop-space image ``(size, size[, C])`` back onto the input image grid (bilinear).

        Input pixels whose centre falls outside the crop get ``fill``.

        Returns:
            ``(H, W[, C])`` array, float32 for float/bool input, else the input dtype.
        """
        import cv2

        img = np.asarray(crop_image)
        if img.shape[:2] != (self.size, self.size):
            raise ShapeError(f"crop image: expected shape ({self.size}, {self.size}[, C]), got {img.shape}")
        if img.dtype == np.bool_:
            img = img.astype(np.float32)
        h, w = self._shape(input_shape)
        out = cv2.warpAffine(
            _cv_ready(img), self._cv(self.inverse_matrix), (w, h),
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=_border_tuple(fill),
        )
        return _restore(out, img)

    def mask_to_input(self, mask_crop: np.ndarray, input_shape: tuple[int, ...] | None = None) -> np.ndarray:
        """A crop-space mask ``(size, size)`` → ``(H, W)`` bool mask on the input image.

        Bilinear interpolation of the 0/1 mask at each input pixel centre,
        thresholded at 0.5; input pixels outside the crop are False.
        """
        m = np.asarray(mask_crop)
        if m.shape != (self.size, self.size):
            raise ShapeError(f"mask: expected shape ({self.size}, {self.size}), got {m.shape}")
        return self.image_to_input(m.astype(np.float32), input_shape) >= 0.5

    def _shape(self, input_shape: tuple[int, ...] | None) -> tuple[int, int]:
        shape = input_shape if input_shape is not None else self.input_shape
        if shape is None:
            raise ConfigError("the input image shape is unknown: pass input_shape=(H, W)")
        return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------- construction
def fit_scaled_orthographic(points2d: np.ndarray, points3d: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares scaled-orthographic fit ``x ≈ s · R[:2] @ X + c`` (image y down, model y up).

    Args:
        points2d: ``(N, 2)`` image points (x right, y down).
        points3d: ``(N, 3)`` model points (x right, y up, z towards the viewer).

    Returns:
        ``(s, R, c)``: scale (pixels per model unit), ``(3, 3)`` rotation in
        fitem's *view* convention (``R @ X`` is +y up) and ``(2,)`` image position
        of the model origin.

    Example:
        >>> s, R, c = fit_scaled_orthographic(lm2d, template3d)   # doctest: +SKIP
    """
    x = np.asarray(points2d, dtype=np.float64) * np.array([1.0, -1.0])  # y up like the model
    X = np.asarray(points3d, dtype=np.float64)
    xm, Xm = x.mean(0), X.mean(0)
    A, *_ = np.linalg.lstsq(X - Xm, x - xm, rcond=None)  # (3, 2): x - xm ≈ (X - Xm) @ A
    M = A.T  # (2, 3) = s * R[:2]
    s = 0.5 * (np.linalg.norm(M[0]) + np.linalg.norm(M[1]))
    if not (np.isfinite(s) and s > 1e-9):
        raise LandmarkError("landmarks are degenerate (they do not span an area); cannot fit a pose to them")
    u, _, vt = np.linalg.svd(M / s, full_matrices=False)
    r12 = u @ vt  # nearest matrix with orthonormal rows
    R = np.vstack([r12, np.cross(r12[0], r12[1])])
    c = xm - s * (r12 @ Xm)
    return float(s), R, c * np.array([1.0, -1.0])


def align_transform(
    landmarks68: np.ndarray,
    *,
    size: int = 224,
    rotate: bool = False,
    distance: float = 1000.0,
    input_shape: tuple[int, ...] | None = None,
) -> AlignTransform:
    """The crop transform for a face's iBUG-68 landmarks (rule in the module docstring).

    Args:
        landmarks68: ``(68, 2)`` input-image points (x, y), continuous convention.
        size: crop side in pixels (the working resolution; 224 by default).
        rotate: also remove the in-plane roll (default False, like Deep3DFaceRecon).
        distance: the crop shows the face as if it were this many mm from the
            default camera (:meth:`fitem.render.Camera.default` of ``size``).
        input_shape: ``(H, W[, C])`` of the input image, stored for the
            ``*_to_input`` methods.

    Raises:
        fitem.errors.LandmarkError: wrong shape, NaN, or degenerate landmarks.

    Example:
        >>> T = align_transform(det.ibug68, size=224, input_shape=img.shape)   # doctest: +SKIP
        >>> crop = T.warp_image(img)                                            # doctest: +SKIP
    """
    from fitem.landmarks.template import IBUG68_TEMPLATE_MM

    pts = np.asarray(landmarks68, dtype=np.float64)
    if pts.shape != (68, 2):
        raise LandmarkError(f"landmarks68: expected shape (68, 2), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise LandmarkError("landmarks68 contain NaN or inf values")
    if int(size) < 32:
        raise ConfigError(f"crop size must be at least 32 pixels, got {size}")
    if not (np.isfinite(distance) and distance > 0):
        raise ConfigError(f"distance must be a positive number of mm, got {distance}")
    inner = slice(17, 68)
    tmpl = IBUG68_TEMPLATE_MM - IBUG68_TEMPLATE_MM.mean(0)
    s, R, c = fit_scaled_orthographic(pts[inner], tmpl[inner])
    if not (np.isfinite(s) and s > 1e-6):
        raise LandmarkError("landmarks are degenerate (all points coincide); cannot align the face")
    focal = DEFAULT_FOCAL_224 * int(size) / 224.0
    k = (focal / float(distance)) / s
    if rotate:
        roll = np.arctan2(R[1, 0], R[0, 0])  # view-space roll (y up); in the image (y down) it is -roll
        cos, sin = np.cos(roll), np.sin(roll)
        rot = np.array([[cos, -sin], [sin, cos]])  # undo the image rotation by -roll
    else:
        rot = np.eye(2)
    a = k * rot
    centre = np.array([size / 2.0, size / 2.0])
    b = centre - a @ c
    shape = None if input_shape is None else (int(input_shape[0]), int(input_shape[1]))
    return AlignTransform(np.concatenate([a, b[:, None]], axis=1), int(size), shape)


# --------------------------------------------------------------------------- helpers
def _points(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1:] != (2,):
        raise ShapeError(f"points: expected shape (..., 2), got {p.shape}")
    return p


def _border(border: str) -> int:
    import cv2

    modes = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}
    if border not in modes:
        raise ConfigError(f"border must be 'constant' or 'replicate', got {border!r}")
    return modes[border]


def _cv_ready(img: np.ndarray) -> np.ndarray:
    if img.dtype in (np.float64, np.float32, np.uint8, np.uint16):
        out = img
    elif img.dtype == np.bool_:
        out = img.astype(np.float32)
    elif np.issubdtype(img.dtype, np.floating):
        out = img.astype(np.float32)
    else:
        raise InvalidInputError(f"cannot warp an image of dtype {img.dtype}; use uint8, uint16 or float")
    if out.ndim == 3 and out.shape[2] > 4:
        raise ShapeError(f"image: at most 4 channels can be warped at once, got {out.shape}")
    return np.ascontiguousarray(out)


def _border_tuple(value: float) -> tuple[float, ...]:
    return (float(value),) * 4


def _restore(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    if like.ndim == 3 and out.ndim == 2:  # OpenCV drops a trailing singleton channel
        out = out[:, :, None]
    return out
