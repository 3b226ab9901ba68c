"""Synthetic occlusion benchmark: faces from a morphable model with occluders whose masks are exact.

Every sample is drawn from one integer seed, so the same seed gives
bit-identical arrays. The seed feeds four independent streams
(:class:`numpy.random.SeedSequence` ``spawn``): face, background, occluder and
image noise, so the *same* seed with another ``occluder`` class gives the same
face on the same background, differently occluded (paired comparisons).

What a sample is made of (the distributions, all uniform unless stated):

- **Coefficients**: shape, expression and colour ~ N(0, 1) (the model's prior,
  in standard deviations), clipped to ±2.5.
- **Pose**: yaw U(±45°), pitch U(±20°), roll U(±15°) (Euler angles of
  :mod:`fitem.render.camera`).
- **Framing** like fitem's aligned crops: pinhole camera ``Camera.default(size)``
  (f = 1015 px at 224, scaled with size); the centroid of the model's 68
  landmarks sits at depth U(900, 1100) mm (±10 % face scale around the
  canonical 1 m) and projects within U(±8) px (at 224, scaled) of the image centre.
- **Light** (spherical harmonics, :mod:`fitem.render.shading`): band 0 =
  ``AMBIENT_LIGHT × U(0.8, 1.2)`` (shared) × a per-channel tint U(0.94, 1.06);
  band 1 = one directional light, direction uniform on the hemisphere facing
  the camera (view-space z ≥ 0.2), irradiance amplitude U(0, 0.5) × the
  ambient irradiance, same tint; band 2 = N(0, 0.04²) × ambient irradiance per
  coefficient and channel (expressed as irradiance, i.e. divided by the basis
  constant). The minimum irradiance stays ≥ ~0.35 × ambient, so nothing is
  lit from behind. Auto-exposure then scales the whole light down where
  needed so that the 99th percentile of the front-facing vertices' brightest
  colour channel is ≤ 0.98 (``SyntheticConfig.exposure_white``; albedo near
  the top of the prior under a strong key light would otherwise clip):
  ``params.light`` is the light after this scaling.
- **Background**: a random crop (side 35-100 % of the source's short side),
  random horizontal flip, resized to the image, colour jitter (brightness
  U(0.6, 1.2), contrast U(0.7, 1.2), per-channel gain U(0.85, 1.15); grey
  sources get a random tint) of one of scikit-image's bundled pictures
  (:data:`BACKGROUND_SOURCES`: textures and scenes, none mostly a face).
- **Occluders** (:data:`OCCLUDER_CLASSES`), drawn with 4×4 supersampling into
  an alpha matte and alpha-composited; the occluder mask is exactly the
  pixels with alpha ≥ 0.5. Each occluder is re-drawn (up to
  ``SyntheticConfig.max_tries`` times, from the same stream) until the part of
  the face region it covers lies in the class's designed range
  (``SyntheticConfig.coverage``); if no try lands in range the closest is kept.

  - ``glasses``: sunglasses placed on the projected iBUG eye landmarks 36-47:
    two tinted, opaque-ish lenses (alpha U(0.85, 0.97)) with a highlight,
    a dark frame, a bridge across the nose and temple arms towards the ears.
  - ``scarf``: covers the lower face from an upper edge between the nose's
    base (landmark 33) and the mouth (``33 + t (51 - 33)``, t ~ U(0, 1.5),
    51 = top of the upper lip) down past the chin, wider than the jaw, a slightly
    curved and tilted upper edge; striped, plaid or a tinted texture, with folds.
  - ``hand``: palm ellipse + 4 finger capsules + thumb + forearm, skin
    coloured from the face's own mean rendered albedo (± 4 % per channel),
    shaded by the *same* SH light with normals from the hand's silhouette
    (domes over palm and fingers): the hard case.
  - ``object``: an ellipse, rounded rectangle, convex polygon or horse
    silhouette textured with a crop of another scikit-image picture
    (``coffee``, ``rocket``, ``chelsea``, ...), mildly shaded, overlapping the face.
  - ``none``: no occluder.

- **Image degradations**, in this order: Gaussian blur σ ~ U(0, 0.6) px (at
  224, scaled with the size; optics/resampling), Gaussian noise σ = 0.01
  (sensor), optional JPEG round trip with quality U(lo, hi)
  (``SyntheticConfig.jpeg_quality``, off by default), then quantisation to 8
  bits (so a PNG round trip through :func:`save_dataset` is lossless).

Ground truth per sample: the face parameters, camera-space vertices, the 68
projected landmarks, the face region (pixels the model covers), the occluder
mask (anywhere in the image) and the visible face (region minus occluder).

Example:
    >>> from fitem.models.demo import demo_model                  # doctest: +SKIP
    >>> s = make_sample(demo_model(), 7, occluder="hand")         # doctest: +SKIP
    >>> s.image.shape, s.occluder_fraction                        # doctest: +SKIP
    ((224, 224, 3), 0.23)
"""
from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch

from fitem._files import atomic_write_bytes, png_bytes
from fitem.errors import ConfigError, InvalidInputError
from fitem.models.morphable import MorphableModel
from fitem.params import AMBIENT_LIGHT, FaceParams
from fitem.render.camera import FLIP, Camera, rotation_matrix, to_camera
from fitem.render.shading import SH_CONSTANTS, sh_basis, shade, vertex_normals

__all__ = [
    "OCCLUDER_CLASSES",
    "BACKGROUND_SOURCES",
    "TEXTURE_SOURCES",
    "SyntheticConfig",
    "SyntheticSample",
    "make_sample",
    "make_dataset",
    "iter_dataset",
    "save_dataset",
    "load_dataset",
]

logger = logging.getLogger(__name__)

#: Occluder classes, in the order :func:`make_dataset` cycles through them.
OCCLUDER_CLASSES: tuple[str, ...] = ("none", "glasses", "scarf", "hand", "object")

#: scikit-image pictures used as backgrounds (bundled with the package; no download).
BACKGROUND_SOURCES: tuple[str, ...] = (
    "brick", "grass", "gravel", "rocket", "coffee", "chelsea", "coins", "moon", "page", "text",
    "hubble_deep_field", "immunohistochemistry", "motorcycle", "clock", "colorwheel",
)

#: scikit-image pictures used to texture ``object`` occluders.
TEXTURE_SOURCES: tuple[str, ...] = (
    "coffee", "rocket", "chelsea", "hubble_deep_field", "immunohistochemistry", "coins", "colorwheel",
    "motorcycle", "brick",
)

_SUPERSAMPLE = 4
_FORMAT = "fitem-synthetic"
_FORMAT_VERSION = 1


# =========================================================================== configuration
@dataclass(frozen=True)
class SyntheticConfig:
    """Distributions of the generator (module docstring). Angles in degrees, sizes in pixels at 224.

    Example:
        >>> SyntheticConfig(yaw_deg=20.0).yaw_deg
        20.0
    """

    yaw_deg: float = 45.0
    pitch_deg: float = 20.0
    roll_deg: float = 15.0
    coefficient_clip: float = 2.5
    distance_mm: tuple[float, float] = (900.0, 1100.0)
    offset_px: float = 8.0
    ambient_scale: tuple[float, float] = (0.8, 1.2)
    tint: float = 0.06
    directional_max: float = 0.5
    band2_std: float = 0.04
    exposure_white: float | None = 0.98
    blur_sigma_max: float = 0.6
    noise_sigma: float = 0.01
    jpeg_quality: tuple[int, int] | None = None
    coverage: Mapping[str, tuple[float, float]] = field(default_factory=lambda: {
        "glasses": (0.10, 0.30), "scarf": (0.15, 0.40), "hand": (0.10, 0.40), "object": (0.10, 0.40),
    })
    max_tries: int = 40

    def __post_init__(self) -> None:
        for name in ("yaw_deg", "pitch_deg", "roll_deg", "coefficient_clip", "offset_px", "tint",
                     "directional_max", "band2_std", "blur_sigma_max", "noise_sigma"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"SyntheticConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.exposure_white is not None and not (0 < self.exposure_white <= 1):
            raise ConfigError(f"SyntheticConfig.exposure_white must be in (0, 1] or None, got {self.exposure_white}")
        if self.directional_max >= 0.9:
            raise ConfigError(f"SyntheticConfig.directional_max must be < 0.9 (else faces get lit from behind), "
                              f"got {self.directional_max}")
        for name in ("distance_mm", "ambient_scale"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi):
                raise ConfigError(f"SyntheticConfig.{name} must be a range 0 < lo <= hi, got {(lo, hi)}")
        if self.jpeg_quality is not None:
            lo, hi = self.jpeg_quality
            if not (1 <= lo <= hi <= 100):
                raise ConfigError(f"SyntheticConfig.jpeg_quality must be a range within [1, 100], got {(lo, hi)}")
        for cls, rng in dict(self.coverage).items():
            if cls not in OCCLUDER_CLASSES or cls == "none":
                raise ConfigError(f"SyntheticConfig.coverage: unknown occluder class {cls!r}; "
                                  f"choose from {list(OCCLUDER_CLASSES[1:])}")
            lo, hi = rng
            if not (0 <= lo < hi <= 1):
                raise ConfigError(f"SyntheticConfig.coverage[{cls!r}] must satisfy 0 <= lo < hi <= 1, got {rng}")
        missing = [c for c in OCCLUDER_CLASSES[1:] if c not in self.coverage]
        if missing:
            raise ConfigError(f"SyntheticConfig.coverage lacks ranges for {missing}")
        if int(self.max_tries) < 1:
            raise ConfigError(f"SyntheticConfig.max_tries must be >= 1, got {self.max_tries}")

    def as_dict(self) -> dict:
        """JSON-ready dict (recorded in a saved data set)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["coverage"] = {k: list(v) for k, v in dict(self.coverage).items()}
        return out

    @staticmethod
    def from_dict(d: Mapping) -> "SyntheticConfig":
        kw = dict(d)
        for k in ("distance_mm", "ambient_scale", "jpeg_quality"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        if "coverage" in kw:
            kw["coverage"] = {k: tuple(v) for k, v in kw["coverage"].items()}
        return SyntheticConfig(**kw)


# =========================================================================== sample
@dataclass(frozen=True, eq=False)
class SyntheticSample:
    """One synthetic image and its exact ground truth.

    Attributes:
        image: ``(H, W, 3)`` float32 in [0, 1] (8-bit levels).
        params: the :class:`~fitem.params.FaceParams` that rendered the face (float32, unbatched).
        vertices: ``(N, 3)`` float32 camera-space vertices, mm (OpenCV camera, :mod:`fitem.render.camera`).
        landmarks68: ``(68, 2)`` float32 projected iBUG-68 model landmarks, pixels ``(u, v)``.
        face_region: ``(H, W)`` bool, pixels whose centre the face mesh covers.
        occluder_mask: ``(H, W)`` bool, the occluder's pixels anywhere in the image (alpha ≥ 0.5).
        visible_face: ``(H, W)`` bool, ``face_region & ~occluder_mask``.
        occluder_class: one of :data:`OCCLUDER_CLASSES`.
        seed: the seed that reproduces the sample.
        camera: the :class:`~fitem.render.camera.Camera`.
        info: JSON-ready details (background source, occluder settings, coverage).

    Example:
        >>> s = make_sample(model, 0, occluder="scarf")                          # doctest: +SKIP
        >>> scores = segmentation_scores(predicted, s.visible_face, s.face_region)  # doctest: +SKIP
    """

    image: np.ndarray
    params: FaceParams
    vertices: np.ndarray
    landmarks68: np.ndarray
    face_region: np.ndarray
    occluder_mask: np.ndarray
    visible_face: np.ndarray
    occluder_class: str
    seed: int
    camera: Camera
    info: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        h, w = self.camera.image_size
        if self.image.shape != (h, w, 3) or self.image.dtype != np.float32:
            raise InvalidInputError(f"image: expected float32 of shape {(h, w, 3)}, got {self.image.dtype} "
                                    f"{self.image.shape}")
        for name in ("face_region", "occluder_mask", "visible_face"):
            m = getattr(self, name)
            if m.shape != (h, w) or m.dtype != bool:
                raise InvalidInputError(f"{name}: expected a bool mask of shape {(h, w)}, got {m.dtype} {m.shape}")
        if not np.array_equal(self.visible_face, self.face_region & ~self.occluder_mask):
            raise InvalidInputError("visible_face must equal face_region & ~occluder_mask")
        if self.occluder_class not in OCCLUDER_CLASSES:
            raise InvalidInputError(f"occluder_class {self.occluder_class!r} is not one of {OCCLUDER_CLASSES}")
        if self.occluder_class == "none" and self.occluder_mask.any():
            raise InvalidInputError("an occluder_class 'none' sample must have an empty occluder_mask")

    @property
    def occluder_fraction(self) -> float:
        """Fraction of the face region that the occluder covers, in [0, 1]."""
        n = int(self.face_region.sum())
        return float((self.face_region & self.occluder_mask).sum()) / n if n else 0.0


# =========================================================================== sources
@functools.lru_cache(maxsize=None)
def _source(name: str) -> np.ndarray:
    """A bundled scikit-image picture as ``(h, w, 3)`` float32 [0, 1] (cached, read-only)."""
    import skimage.data

    if name == "motorcycle":
        img = skimage.data.stereo_motorcycle()[0]
    else:
        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.float32)
    elif np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3])
    img.setflags(write=False)
    return img


@functools.lru_cache(maxsize=None)
def _is_grey(name: str) -> bool:
    img = _source(name)
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]))


def _random_crop(rng: np.random.Generator, src: np.ndarray, h: int, w: int, lo: float, hi: float) -> np.ndarray:
    """A random crop with aspect ``w / h`` (side fraction U(lo, hi) of the largest fitting one), flipped at random."""
    sh, sw = src.shape[:2]
    base = min(sh, sw * h / w)  # largest crop height with the target aspect
    ch = max(4.0, base * rng.uniform(lo, hi))
    cw = ch * w / h
    y0 = rng.uniform(0, sh - ch)
    x0 = rng.uniform(0, sw - cw)
    # affine from output pixel centres to source coordinates (cv2 uses index-centred pixels)
    sx, sy = cw / w, ch / h
    m = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]], np.float64)
    if rng.random() < 0.5:  # horizontal flip
        m[0] = [-sx, 0, x0 + cw - 0.5 * sx - 0.5]
    interp = cv2.INTER_AREA if sx > 1 else cv2.INTER_LINEAR
    if interp == cv2.INTER_AREA:
        # INTER_AREA is not supported by warpAffine: blur to the output scale first
        blurred = cv2.GaussianBlur(src, (0, 0), sigmaX=0.5 * sx, sigmaY=0.5 * sy)
        return cv2.warpAffine(blurred, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT)
    return cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def _colour_jitter(rng: np.random.Generator, img: np.ndarray, grey: bool) -> np.ndarray:
    if grey:  # tint grey pictures with a random, moderately saturated colour
        tint = rng.uniform(0.55, 1.15, size=3)
        img = img * (tint / tint.max())
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.7, 1.2) + mean
    img = img * rng.uniform(0.6, 1.2) * rng.uniform(0.85, 1.15, size=3)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    name = BACKGROUND_SOURCES[int(rng.integers(len(BACKGROUND_SOURCES)))]
    src = _source(name)
    img = _random_crop(rng, src, h, w, 0.35, 1.0)
    return _colour_jitter(rng, img, _is_grey(name)), name


# =========================================================================== face
def _sample_params(rng: np.random.Generator, model: MorphableModel, cfg: SyntheticConfig,
                   camera: Camera) -> FaceParams:
    clip = cfg.coefficient_clip

    def coeffs(k: int) -> torch.Tensor:
        return torch.from_numpy(np.clip(rng.standard_normal(k), -clip, clip).astype(np.float32))

    shape, expression, colour = coeffs(model.n_shape), coeffs(model.n_expression), coeffs(model.n_colour)
    deg = math.pi / 180.0
    euler = np.array([rng.uniform(-cfg.pitch_deg, cfg.pitch_deg), rng.uniform(-cfg.yaw_deg, cfg.yaw_deg),
                      rng.uniform(-cfg.roll_deg, cfg.roll_deg)]) * deg
    rotation = torch.tensor(euler, dtype=torch.float32)

    # place the landmark centroid at depth d, projecting near the principal point
    verts, _ = model.instance(shape, expression, colour)
    idx = torch.as_tensor(model.landmark_indices("ibug68"))
    centre = verts[idx].mean(0).double()
    r = rotation_matrix(rotation.double())
    flip = torch.tensor(FLIP, dtype=torch.float64)
    rotated = (r @ centre) * flip
    depth = rng.uniform(*cfg.distance_mm)
    scale = min(camera.image_size) / 224.0
    du, dv = rng.uniform(-cfg.offset_px, cfg.offset_px, size=2) * scale
    target = torch.tensor([(du) * depth / camera.focal, (dv) * depth / camera.focal, depth], dtype=torch.float64)
    translation = (target - rotated).float()

    # light
    ambient_irr = 0.8 * rng.uniform(*cfg.ambient_scale)  # irradiance of band 0 (AMBIENT_LIGHT gives 0.8)
    tint = rng.uniform(1.0 - cfg.tint, 1.0 + cfg.tint, size=3)
    light = np.zeros((9, 3))
    light[0] = AMBIENT_LIGHT * (ambient_irr / 0.8) * tint
    while True:  # uniform direction on the sphere, kept where it faces the camera (view-space z >= 0.2)
        d = rng.standard_normal(3)
        d /= max(float(np.linalg.norm(d)), 1e-12)
        if d[2] >= 0.2:
            break
    amp = rng.uniform(0.0, cfg.directional_max) * ambient_irr
    # band 1 basis order: y, z, x; irradiance contribution SH_CONSTANTS[k] * n_k * L_k
    for k, comp in zip((1, 2, 3), (d[1], d[2], d[0])):
        light[k] = amp * comp / SH_CONSTANTS[k] * tint
    for k in range(4, 9):
        light[k] = rng.normal(0.0, cfg.band2_std, size=3) * ambient_irr / SH_CONSTANTS[k]
    return FaceParams(shape=shape, expression=expression, colour=colour,
                      light=torch.tensor(light, dtype=torch.float32), rotation=rotation, translation=translation)


@dataclass(frozen=True)
class _Face:
    colour: np.ndarray  # (H, W, 3) shaded render (zeros outside)
    albedo: np.ndarray  # (H, W, 3)
    region: np.ndarray  # (H, W) bool
    vertices: np.ndarray  # (N, 3) camera space
    landmarks: np.ndarray  # (68, 2)


def _expose(model: MorphableModel, params: FaceParams, white: float | None) -> FaceParams:
    """Auto-exposure: scale the whole light down until the 99th percentile of the front-facing
    vertices' brightest channel is at most ``white`` (no change when it already is, or ``white`` is None)."""
    if white is None:
        return params
    with torch.no_grad():
        verts, albedo = model.instance(params.shape, params.expression, params.colour)
        normals = vertex_normals(verts, model.tensors("cpu", torch.float32).triangles)
        normals_view = normals @ rotation_matrix(params.rotation).T
        colours = shade(albedo[None], normals_view[None], params.light[None])[0]
        front = normals_view[:, 2] > 0
        if not bool(front.any()):
            return params
        q = float(torch.quantile(colours[front].amax(dim=1).double(), 0.99))
    if q <= white:
        return params
    return params.replace(light=params.light * (white / q))


def _render(model: MorphableModel, params: FaceParams, camera: Camera, rasterizer) -> _Face:
    """Render through :func:`fitem.render.renderer.render_params` (Lambertian SH, Gouraud)."""
    from fitem.render.interpolate import interpolate
    from fitem.render.renderer import render_params

    with torch.no_grad():
        out = render_params(model, params, camera, rasterizer)
        verts, albedo = model.instance(params.shape, params.expression, params.colour)
        tri_id, bary = out.raster.tri_id, out.raster.bary
        albedo_img = interpolate(albedo[None].to(tri_id.device), rasterizer.triangles, tri_id, bary)
        cam_vertices = to_camera(verts, params.rotation, params.translation)
    idx = torch.as_tensor(model.landmark_indices("ibug68"))
    return _Face(
        colour=np.clip(out.image[0].cpu().numpy(), 0.0, 1.0).astype(np.float32),
        albedo=np.clip(albedo_img[0].cpu().numpy(), 0.0, 1.0).astype(np.float32),
        region=out.region[0].cpu().numpy().astype(bool),
        vertices=cam_vertices.numpy().astype(np.float32),
        landmarks=out.screen[0, idx, :2].cpu().numpy().astype(np.float32),
    )


# =========================================================================== drawing
class _Canvas:
    """A supersampled coverage canvas in fitem's pixel convention (pixel (i, j) centre at (j + .5, i + .5))."""

    def __init__(self, h: int, w: int, ss: int = _SUPERSAMPLE) -> None:
        self.h, self.w, self.ss = h, w, ss
        self.buf = np.zeros((h * ss, w * ss), np.uint8)

    def _pts(self, uv: np.ndarray) -> np.ndarray:
        p = (np.asarray(uv, np.float64) * self.ss - 0.5) * 16.0  # shift=4: 1/16 sub-pixel precision
        p = np.clip(p, -(2**26), 2**26)
        return np.round(p).astype(np.int32).reshape(-1, 1, 2)

    def fill(self, polygon: np.ndarray, value: int = 255) -> "_Canvas":
        cv2.fillPoly(self.buf, [self._pts(polygon)], int(value), lineType=cv2.LINE_8, shift=4)
        return self

    def paste(self, mask_ss: np.ndarray) -> "_Canvas":
        self.buf[mask_ss] = 255
        return self

    def coverage(self) -> np.ndarray:
        """``(H, W)`` float32 fraction of each pixel covered (box filter of the supersamples)."""
        total = self.buf.reshape(self.h, self.ss, self.w, self.ss).sum(axis=(1, 3), dtype=np.int32)
        return total.astype(np.float32) / np.float32(255 * self.ss * self.ss)


def _ellipse(c: np.ndarray, a: float, b: float, angle: float, n: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ca, sa = math.cos(angle), math.sin(angle)
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([c[0] + ca * x - sa * y, c[1] + sa * x + ca * y], 1)


def _capsule(p0: np.ndarray, p1: np.ndarray, r: float, n: int = 16) -> np.ndarray:
    d = np.asarray(p1, np.float64) - np.asarray(p0, np.float64)
    ang = math.atan2(d[1], d[0])
    t0 = np.linspace(ang + np.pi / 2, ang + 3 * np.pi / 2, n)  # cap around p0
    t1 = np.linspace(ang - np.pi / 2, ang + np.pi / 2, n)  # cap around p1
    cap0 = np.stack([p0[0] + r * np.cos(t0), p0[1] + r * np.sin(t0)], 1)
    cap1 = np.stack([p1[0] + r * np.cos(t1), p1[1] + r * np.sin(t1)], 1)
    return np.concatenate([cap0, cap1], 0)


def _rot2(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[:h, :w].astype(np.float32)
    return u + 0.5, v + 0.5


def _silhouette_normals(mask: np.ndarray, radius: float, flat: float = 1.0) -> np.ndarray:
    """View-space unit normals ``(H, W, 3)`` of a dome over a silhouette.

    The height rises with a circular profile of ``radius`` pixels from the
    silhouette's edge (distance transform), so narrow parts (fingers) become
    cylinders and wide parts plateaus; ``flat`` > 1 flattens the relief.
    """
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5).astype(np.float32)
    r = max(float(radius), 1.0)
    d = np.minimum(dist, r)
    height = np.sqrt(np.clip(2.0 * r * d - d**2, 0.0, None))
    height = cv2.GaussianBlur(height, (0, 0), 0.8)
    gy, gx = np.gradient(height)
    n = np.stack([-gx, gy, np.full_like(gx, flat)], -1)  # image v points down, view y up
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _sh_irradiance(normals: np.ndarray, light: torch.Tensor) -> np.ndarray:
    """``(M, 3)`` normals → ``(M, 3)`` irradiance under the face's SH light (fitem.render.shading)."""
    irr = sh_basis(torch.from_numpy(np.ascontiguousarray(normals, dtype=np.float32))) @ light.float()
    return irr.numpy()


@dataclass
class _Occluder:
    """An occluder's geometry (``alpha``; the mask is ``alpha >= 0.5``) and how to colour it."""

    alpha: np.ndarray  # (H, W) float32 in [0, 1]
    paint: Callable[[np.random.Generator], np.ndarray]  # rng → (H, W, 3) colour where alpha > 0
    info: dict


def _face_size(face: _Face) -> float:
    return math.sqrt(max(float(face.region.sum()), 1.0))


def _random_region_point(rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    ii, jj = np.nonzero(region)
    k = int(rng.integers(len(ii)))
    return np.array([jj[k] + 0.5, ii[k] + 0.5])


def _shape_glasses(rng: np.random.Generator, face: _Face, params: FaceParams, h: int, w: int) -> _Occluder:
    lm = face.landmarks.astype(np.float64)
    centres = [lm[36:42].mean(0), lm[42:48].mean(0)]
    widths = [float(np.linalg.norm(lm[39] - lm[36])), float(np.linalg.norm(lm[45] - lm[42]))]
    mean_w = float(np.mean(widths))
    axis = _unit(centres[1] - centres[0])
    angle = math.atan2(axis[1], axis[0])
    up = np.array([axis[1], -axis[0]])  # the face's "up" in the image (v decreases)
    size = rng.uniform(0.8, 1.2)
    aspect = rng.uniform(0.6, 0.85)
    lift = rng.uniform(-0.05, 0.2) * mean_w
    frame_t = rng.uniform(0.07, 0.14) * mean_w
    opacity = rng.uniform(0.85, 0.97)
    lens, frame = _Canvas(h, w), _Canvas(h, w)
    lenses = []
    for c, ew in zip(centres, widths):
        a = 0.85 * size * ew + 0.1 * mean_w  # the far lens is narrower under yaw, like the eye
        b = aspect * 0.85 * size * mean_w
        cc = c + up * lift
        frame.fill(_ellipse(cc, a + frame_t, b + frame_t, angle)).fill(_ellipse(cc, a, b, angle), 0)
        lens.fill(_ellipse(cc, a, b, angle))
        lenses.append((cc, a, b))
    (c0, a0, _), (c1, a1, b1) = lenses
    lift_bridge = up * 0.25 * b1  # bridge across the nose, between the inner rims
    frame.fill(_capsule(c0 + axis * a0 + lift_bridge, c1 - axis * a1 + lift_bridge, 0.5 * frame_t + 0.6))
    # temple arms from the outer rims towards the ears (midway between the jaw end and the brow end)
    for c, a, sgn, jaw, brow in ((c0, a0, -1.0, lm[0], lm[17]), (c1, a1, 1.0, lm[16], lm[26])):
        start = c + sgn * axis * (a + 0.5 * frame_t)
        end = 0.5 * (jaw + brow) + sgn * axis * 0.15 * mean_w
        if np.dot(end - start, sgn * axis) > 0:  # the far arm hides behind the head under yaw
            frame.fill(_capsule(start, end, 0.45 * frame_t + 0.5))
    frame_cov = frame.coverage()
    lens_cov = np.minimum(lens.coverage(), 1.0 - frame_cov)
    alpha = 1.0 - (1.0 - opacity * lens_cov) * (1.0 - frame_cov)

    def paint(prng: np.random.Generator) -> np.ndarray:
        tint = prng.uniform(0.0, 0.25, size=3)
        uu, vv = _pixel_grid(h, w)
        # lighter towards the lower rim, plus a diagonal highlight streak
        proj_up = ((uu - c0[0]) * up[0] + (vv - c0[1]) * up[1]) / max(mean_w, 1.0)
        grad = np.clip(0.5 - 0.5 * proj_up, 0.0, 1.0)[..., None]
        sd = _rot2(prng.uniform(0.5, 1.0)) @ axis
        s = ((uu - c1[0]) * sd[0] + (vv - c1[1]) * sd[1]) / max(mean_w, 1.0)
        highlight = np.exp(-((s - prng.uniform(-0.4, 0.4)) / 0.12) ** 2)[..., None] * prng.uniform(0.15, 0.35)
        lens_col = np.clip(tint * (0.6 + 0.8 * grad) + highlight, 0.0, 1.0)
        frame_col = prng.uniform(0.02, 0.2) * prng.uniform(0.7, 1.3, size=3)
        num = opacity * lens_cov[..., None] * lens_col + frame_cov[..., None] * frame_col
        return num / np.maximum(alpha[..., None], 1e-6)

    return _Occluder(alpha.astype(np.float32), paint, {"size": float(size), "opacity": float(opacity)})


def _scarf_texture(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    kind = ("stripes", "plaid", "texture")[int(rng.integers(3))]
    if kind == "texture":
        name = ("brick", "grass", "gravel")[int(rng.integers(3))]
        tex = _random_crop(rng, _source(name), h, w, 0.3, 0.7)
        return np.clip(tex * 1.3 * rng.uniform(0.15, 0.9, size=3), 0.0, 1.0), f"texture:{name}"
    uu, vv = _pixel_grid(h, w)
    k = int(rng.integers(2, 4))
    palette = rng.uniform(0.05, 0.95, size=(k, 3))
    ang = rng.uniform(0, np.pi)
    period = rng.uniform(5.0, 16.0) * min(h, w) / 224.0
    ph = (uu * math.cos(ang) + vv * math.sin(ang)) / period
    col = palette[np.floor(ph).astype(np.int64) % k]
    if kind == "plaid":
        ph2 = (-uu * math.sin(ang) + vv * math.cos(ang)) / (period * rng.uniform(0.8, 1.5))
        band = (np.floor(ph2).astype(np.int64) % 2 == 0)[..., None]
        col = np.where(band, col, 0.6 * col + 0.4 * palette[0])
    return col, kind


def _shape_scarf(rng: np.random.Generator, face: _Face, params: FaceParams, h: int, w: int) -> _Occluder:
    lm = face.landmarks.astype(np.float64)
    up = _rot2(math.radians(rng.uniform(-10, 10))) @ _unit(lm[27] - lm[8])  # chin → nose bridge, tilted
    across = np.array([-up[1], up[0]])
    if np.dot(across, lm[16] - lm[0]) < 0:
        across = -across
    t = rng.uniform(0.0, 1.5)
    top = lm[33] + t * (lm[51] - lm[33])  # from the nose's base down to about the mouth's middle
    jaw_half = 0.5 * float(np.linalg.norm(lm[16] - lm[0]))
    half = jaw_half * rng.uniform(1.15, 1.5)
    sag = rng.uniform(-0.15, 0.2) * jaw_half  # > 0: lower at the sides (held up by the nose)
    depth = 3.0 * float(np.linalg.norm(lm[8] - lm[27])) + 0.5 * max(h, w)
    s = np.linspace(-1.0, 1.0, 33)
    edge = top + s[:, None] * half * across - (sag * s**2)[:, None] * up
    spread = rng.uniform(1.0, 1.4)
    bottom = np.array([top + spread * half * across - depth * up, top - spread * half * across - depth * up])
    alpha = _Canvas(h, w).fill(np.concatenate([edge, bottom], 0)).coverage()
    info = {"top": float(t)}

    def paint(prng: np.random.Generator) -> np.ndarray:
        col, kind = _scarf_texture(prng, h, w)
        info["pattern"] = kind
        uu, vv = _pixel_grid(h, w)
        along = (uu - top[0]) * across[0] + (vv - top[1]) * across[1]
        down = -((uu - top[0]) * up[0] + (vv - top[1]) * up[1])
        wl = max(prng.uniform(0.25, 0.5) * jaw_half, 1.0)
        folds = 0.85 + 0.15 * np.sin(2 * np.pi * (along + 0.3 * down) / wl + prng.uniform(0, 2 * np.pi))
        rim = 0.8 + 0.2 * np.clip(down / max(0.3 * jaw_half, 1.0), 0.0, 1.0)  # shadow under the upper edge
        return np.clip(col * (folds * rim)[..., None], 0.0, 1.0)

    return _Occluder(alpha.astype(np.float32), paint, info)


def _hand_polygons(rng: np.random.Generator) -> list[np.ndarray]:
    """A right hand in a local frame (unit = palm width; x to the thumb, y towards the fingertips)."""
    polys = [_ellipse(np.array([0.0, 0.0]), 0.5, 0.58, 0.0, 64)]
    lengths = np.array([0.62, 0.86, 0.92, 0.72]) * rng.uniform(0.9, 1.1)
    spread = rng.uniform(0.0, 1.0)
    for base, ln, fan in zip((-0.36, -0.12, 0.12, 0.36), lengths, (-14.0, -5.0, 4.0, 13.0)):
        a = math.radians(fan * spread + rng.uniform(-3, 3))
        p0 = np.array([base, 0.42])
        polys.append(_capsule(p0, p0 + ln * np.array([math.sin(a), math.cos(a)]), 0.105 * rng.uniform(0.95, 1.05)))
    ta = math.radians(rng.uniform(35, 70))
    t0 = np.array([0.42, -0.15])
    polys.append(_capsule(t0, t0 + 0.62 * np.array([math.sin(ta), math.cos(ta)]), 0.13))
    polys.append(_capsule(np.array([0.0, -0.4]), np.array([0.0, -3.5]), 0.38))  # wrist and forearm
    return polys


def _shape_hand(rng: np.random.Generator, face: _Face, params: FaceParams, h: int, w: int) -> _Occluder:
    palm = _face_size(face) * rng.uniform(0.4, 0.55)
    target = _random_region_point(rng, face.region)
    ang = rng.uniform(0, 2 * np.pi)  # image direction the fingers point to
    mirror = rng.random() < 0.5  # a left hand
    fy = np.array([math.cos(ang), math.sin(ang)])
    fx = (-1.0 if mirror else 1.0) * np.array([-fy[1], fy[0]])
    centre = target - fy * palm * rng.uniform(0.0, 0.8)
    canvas = _Canvas(h, w)
    for poly in _hand_polygons(rng):
        canvas.fill(centre + palm * (poly[:, :1] * fx + poly[:, 1:] * fy))
    alpha = canvas.coverage()

    def paint(prng: np.random.Generator) -> np.ndarray:
        # skin like the face's own: its mean albedo ± 4 %, lit by the same SH light
        albedo = np.clip(face.albedo[face.region].mean(0) * prng.uniform(0.96, 1.04, size=3), 0.0, 1.0)
        m = alpha > 0
        normals = _silhouette_normals(alpha >= 0.25, radius=0.12 * palm, flat=1.0)
        blotch = cv2.GaussianBlur(prng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.05 * palm + 1.0)
        blotch = 1.0 + 0.03 * blotch / max(float(np.abs(blotch).max()), 1e-6)
        colour = np.zeros((h, w, 3), np.float32)
        colour[m] = albedo * _sh_irradiance(normals[m], params.light) * blotch[m][:, None]
        return np.clip(colour, 0.0, 1.0)

    return _Occluder(alpha.astype(np.float32), paint,
                     {"palm_px": float(palm), "angle": float(ang), "left_hand": bool(mirror)})


@functools.lru_cache(maxsize=1)
def _horse() -> np.ndarray:
    """skimage's horse silhouette, True on the horse."""
    import skimage.data

    h = ~np.asarray(skimage.data.horse(), bool)
    h.setflags(write=False)
    return h


def _object_outline(rng: np.random.Generator, canvas: _Canvas, centre: np.ndarray, radius: float) -> str:
    kind = ("ellipse", "rounded_rect", "polygon", "horse")[int(rng.integers(4))]
    ang = rng.uniform(0, np.pi)
    if kind == "ellipse":
        canvas.fill(_ellipse(centre, radius, radius * rng.uniform(0.45, 1.0), ang))
    elif kind == "rounded_rect":
        half = np.array([radius, radius * rng.uniform(0.4, 1.0)])
        r = rng.uniform(0.1, 0.4) * half.min()
        pts = []
        for i, c in enumerate(np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * (half - r)):
            t = np.linspace(i * np.pi / 2, (i + 1) * np.pi / 2, 8)
            pts.append(c + r * np.stack([np.cos(t), np.sin(t)], 1))
        canvas.fill(centre + np.concatenate(pts) @ _rot2(ang).T)
    elif kind == "polygon":
        n = int(rng.integers(5, 10))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        rr = radius * rng.uniform(0.6, 1.0, n)
        hull = cv2.convexHull(np.stack([rr * np.cos(t), rr * np.sin(t)], 1).astype(np.float32)).reshape(-1, 2)
        canvas.fill(centre + hull @ _rot2(ang).T)
    else:
        sil = _horse().astype(np.uint8) * 255
        if rng.random() < 0.5:
            sil = np.ascontiguousarray(sil[:, ::-1])
        sh, sw = sil.shape
        ss = canvas.ss
        m = cv2.getRotationMatrix2D((sw / 2.0, sh / 2.0), math.degrees(rng.uniform(-0.5, 0.5)),
                                    2.0 * radius * ss / max(sh, sw))
        m[:, 2] += np.array([centre[0] * ss - 0.5, centre[1] * ss - 0.5]) - np.array([sw / 2.0, sh / 2.0])
        warped = cv2.warpAffine(sil, m, (canvas.buf.shape[1], canvas.buf.shape[0]), flags=cv2.INTER_LINEAR)
        canvas.paste(warped >= 128)
    return kind


def _shape_object(rng: np.random.Generator, face: _Face, params: FaceParams, h: int, w: int,
                  exclude: str = "") -> _Occluder:
    centre = _random_region_point(rng, face.region)
    radius = _face_size(face) * rng.uniform(0.25, 0.5)
    canvas = _Canvas(h, w)
    kind = _object_outline(rng, canvas, centre, radius)
    alpha = canvas.coverage()
    info = {"shape": kind}

    def paint(prng: np.random.Generator) -> np.ndarray:
        choices = [t for t in TEXTURE_SOURCES if t != exclude]  # never the background's picture
        name = choices[int(prng.integers(len(choices)))]
        info["texture"] = name
        src = _source(name)
        tex = _colour_jitter(prng, _random_crop(prng, src, h, w, 0.25, 0.6), _is_grey(name))
        m = alpha > 0
        normals = _silhouette_normals(alpha >= 0.25, radius=0.5 * radius, flat=2.0)
        ambient = 0.8 * float(params.light[0].mean()) / AMBIENT_LIGHT  # flat-normal irradiance of band 0
        shading = np.clip(_sh_irradiance(normals[m], params.light) / max(ambient, 1e-6), 0.3, 1.3)
        colour = np.zeros((h, w, 3), np.float32)
        colour[m] = tex[m] * shading
        return np.clip(colour, 0.0, 1.0)

    return _Occluder(alpha.astype(np.float32), paint, info)


_SHAPES = {"glasses": _shape_glasses, "scarf": _shape_scarf, "hand": _shape_hand}


def _occluder(rng: np.random.Generator, cls: str, face: _Face, params: FaceParams, h: int, w: int,
              cfg: SyntheticConfig, background: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw shapes until the face coverage lands in the class's range, then colour the chosen one.

    Returns ``(alpha (H, W), colour (H, W, 3), info)``.
    """
    lo, hi = cfg.coverage[cls]
    n_region = max(int(face.region.sum()), 1)
    best, best_gap, best_cov, tries = None, math.inf, 0.0, 0
    for tries in range(1, int(cfg.max_tries) + 1):
        if cls == "object":
            occ = _shape_object(rng, face, params, h, w, exclude=background)
        else:
            occ = _SHAPES[cls](rng, face, params, h, w)
        cov = float(((occ.alpha >= 0.5) & face.region).sum()) / n_region
        gap = max(lo - cov, cov - hi, 0.0)
        if gap < best_gap:
            best, best_gap, best_cov = occ, gap, cov
        if gap == 0.0:
            break
    else:
        logger.debug("occluder %s: no try in the coverage range [%s, %s]; kept %.3f", cls, lo, hi, best_cov)
    colour = best.paint(rng)
    info = dict(best.info, coverage=best_cov, tries=tries)
    return best.alpha, colour.astype(np.float32), info


# =========================================================================== public API
def _check_model(model: MorphableModel) -> None:
    if not isinstance(model, MorphableModel):
        raise InvalidInputError(f"model: expected a fitem.models.MorphableModel, got {type(model).__name__}; "
                                "load one with fitem.load_model('demo')")
    idx = model.landmark_indices("ibug68")
    if idx.shape[0] != 68:
        raise InvalidInputError(f"model {model.name!r}: landmark set 'ibug68' has {idx.shape[0]} points, expected 68")


def _resolve_camera(size: int, camera: Camera | None) -> Camera:
    if camera is not None:
        if not isinstance(camera, Camera):
            raise InvalidInputError(f"camera: expected a fitem.render.camera.Camera, got {type(camera).__name__}")
        return camera
    if not (isinstance(size, (int, np.integer)) and size >= 32):
        raise ConfigError(f"size must be an integer >= 32 pixels, got {size!r}")
    return Camera.default(int(size))


def _build_rasterizer(model: MorphableModel, camera: Camera):
    from fitem.render.raster import make_rasterizer

    tri = model.tensors("cpu", torch.float32).triangles
    return make_rasterizer(tri, camera.image_size, backend="torch", device="cpu", near=camera.near, far=camera.far)


def _quantise(img: np.ndarray) -> np.ndarray:
    q = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    return q.astype(np.float32) / np.float32(255.0)


def make_sample(
    model: MorphableModel,
    seed: int,
    *,
    occluder: str = "none",
    size: int = 224,
    camera: Camera | None = None,
    rasterizer=None,
    config: SyntheticConfig | None = None,
) -> SyntheticSample:
    """Render one synthetic face with an occluder of the given class and its exact ground truth.

    Args:
        model: the morphable model (needs the ``"ibug68"`` landmark set).
        seed: a non-negative integer; the same seed, model, arguments and
            rasterizer backend give bit-identical arrays. The face and
            background depend only on the seed, not on ``occluder``.
        occluder: one of :data:`OCCLUDER_CLASSES`.
        size: square image side in pixels (ignored when ``camera`` is given).
        camera: the camera (default ``Camera.default(size)``: f = 1015 px at 224).
        rasterizer: a :class:`fitem.render.raster.Rasterizer` for the model's
            triangles and the camera's image size (built once per call if None;
            pass one when generating many samples).
        config: the generator's distributions (:class:`SyntheticConfig`).

    Returns:
        A :class:`SyntheticSample`.

    Raises:
        ConfigError: unknown occluder class, bad size.
        InvalidInputError: a model without 68 iBUG landmarks, a negative seed.

    Example:
        >>> from fitem.models.demo import demo_model                          # doctest: +SKIP
        >>> s = make_sample(demo_model(), 3, occluder="glasses")              # doctest: +SKIP
        >>> s.visible_face.sum() < s.face_region.sum()                       # doctest: +SKIP
        True
    """
    if occluder not in OCCLUDER_CLASSES:
        raise ConfigError(f"unknown occluder class {occluder!r}; choose from {list(OCCLUDER_CLASSES)}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    cfg = config if config is not None else SyntheticConfig()
    _check_model(model)
    cam = _resolve_camera(size, camera)
    if rasterizer is None:
        rasterizer = _build_rasterizer(model, cam)
    elif tuple(rasterizer.image_size) != cam.image_size:
        raise ConfigError(f"rasterizer image size {tuple(rasterizer.image_size)} differs from the camera's "
                          f"{cam.image_size}; build it with make_rasterizer(triangles, camera.image_size)")
    h, w = cam.image_size
    face_rng, bg_rng, occ_rng, noise_rng = (np.random.default_rng(s)
                                            for s in np.random.SeedSequence(int(seed)).spawn(4))

    params = _expose(model, _sample_params(face_rng, model, cfg, cam), cfg.exposure_white)
    face = _render(model, params, cam, rasterizer)
    if not face.region.any():
        raise InvalidInputError(f"seed {seed}: the face fell outside the image; check the camera ({cam})")
    background, bg_name = _background(bg_rng, h, w)
    img = np.where(face.region[..., None], face.colour, background)

    info: dict[str, object] = {"background": bg_name}
    occ_mask = np.zeros((h, w), bool)
    if occluder != "none":
        alpha, colour, occ_info = _occluder(occ_rng, occluder, face, params, h, w, cfg, bg_name)
        img = img * (1.0 - alpha[..., None]) + colour * alpha[..., None]
        occ_mask = alpha >= 0.5
        info.update(occ_info)
    else:
        info.update(coverage=0.0, tries=0)

    scale = min(h, w) / 224.0
    sigma = noise_rng.uniform(0.0, cfg.blur_sigma_max) * scale
    if sigma >= 0.1:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma)
    img = img + noise_rng.normal(0.0, cfg.noise_sigma, size=img.shape)
    if cfg.jpeg_quality is not None:
        q = int(noise_rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        u8 = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
        info["jpeg_quality"] = q
    info["blur_sigma"] = float(sigma)

    return SyntheticSample(
        image=_quantise(img),
        params=params,
        vertices=face.vertices,
        landmarks68=face.landmarks,
        face_region=face.region,
        occluder_mask=occ_mask,
        visible_face=face.region & ~occ_mask,
        occluder_class=occluder,
        seed=int(seed),
        camera=cam,
        info=info,
    )


def _sample_seeds(seed: int, n: int) -> list[int]:
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(n, dtype=np.uint32)]


def iter_dataset(
    model: MorphableModel,
    n: int,
    *,
    seed: int = 0,
    classes: Sequence[str] = OCCLUDER_CLASSES,
    size: int = 224,
    camera: Camera | None = None,
    config: SyntheticConfig | None = None,
    progress: bool = False,
) -> Iterator[SyntheticSample]:
    """Lazily generate ``n`` samples; sample ``i`` has class ``classes[i % len(classes)]``.

    Per-sample seeds come from ``SeedSequence(seed).generate_state(n)``, so the
    data set is reproducible from ``seed`` and the first ``k`` samples do not
    depend on ``n``. One camera and rasterizer serve all samples.

    Example:
        >>> for s in iter_dataset(model, 10, seed=1):   # doctest: +SKIP
        ...     scores = evaluate(s)
    """
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"n must be a non-negative integer, got {n!r}")
    classes = tuple(classes)
    bad = [c for c in classes if c not in OCCLUDER_CLASSES]
    if not classes or bad:
        raise ConfigError(f"classes must be a non-empty subset of {list(OCCLUDER_CLASSES)}, got {list(classes)}")
    _check_model(model)
    cam = _resolve_camera(size, camera)
    rast = _build_rasterizer(model, cam)
    seeds = _sample_seeds(seed, int(n))
    it = range(int(n))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="synthetic samples", unit="img")
    for i in it:
        yield make_sample(model, seeds[i], occluder=classes[i % len(classes)], camera=cam, rasterizer=rast,
                          config=config)


def make_dataset(
    model: MorphableModel,
    n: int,
    *,
    seed: int = 0,
    classes: Sequence[str] = OCCLUDER_CLASSES,
    size: int = 224,
    camera: Camera | None = None,
    config: SyntheticConfig | None = None,
    progress: bool = False,
) -> list[SyntheticSample]:
    """``n`` samples as a list (see :func:`iter_dataset` for the seeding and the class cycle).

    Example:
        >>> data = make_dataset(fitem.load_model("demo"), 20, seed=0)   # doctest: +SKIP
        >>> [s.occluder_class for s in data[:5]]                         # doctest: +SKIP
        ['none', 'glasses', 'scarf', 'hand', 'object']
    """
    return list(iter_dataset(model, n, seed=seed, classes=classes, size=size, camera=camera, config=config,
                             progress=progress))


# =========================================================================== save / load


def _npz(**arrays: np.ndarray) -> bytes:
    import io

    b = io.BytesIO()
    np.savez(b, **arrays)
    return b.getvalue()


def _camera_dict(cam: Camera) -> dict:
    return {f.name: getattr(cam, f.name) for f in fields(cam)}


def save_dataset(samples: Sequence[SyntheticSample], out_dir: str | Path, *, overwrite: bool = False,
                 config: SyntheticConfig | None = None, model: MorphableModel | None = None) -> Path:
    """Write samples as PNG images and masks, NumPy ``.npz`` arrays and a JSON manifest (no pickle).

    Layout of ``out_dir``::

        manifest.json             format, version, model name/checksum, config, one entry per sample
        000000_image.png          RGB, 8 bit (lossless: images are 8-bit quantised)
        000000_region.png         face region, 0/255
        000000_occluder.png       occluder mask, 0/255
        000000_visible.png        visible face, 0/255 (= region & ~occluder)
        000000_truth.npz          vertices (N, 3) mm, landmarks68 (68, 2) px

    Every file is written atomically (temporary file + rename) and the manifest
    last, so a directory with a manifest is complete.

    Args:
        samples: the samples.
        out_dir: target directory (created).
        overwrite: replace an existing data set there (else :class:`ConfigError`).
        config, model: recorded in the manifest when given.

    Returns:
        The directory.

    Example:
        >>> save_dataset(make_dataset(model, 10), "synthetic10")    # doctest: +SKIP
    """
    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not overwrite:
        raise ConfigError(f"{manifest_path} exists; pass overwrite=True or choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, s in enumerate(samples):
        if not isinstance(s, SyntheticSample):
            raise InvalidInputError(f"samples[{i}]: expected a SyntheticSample, got {type(s).__name__}")
        sid = f"{i:06d}"
        atomic_write_bytes(out / f"{sid}_image.png", png_bytes(np.round(s.image * 255.0).astype(np.uint8)))
        for key, m in (("region", s.face_region), ("occluder", s.occluder_mask), ("visible", s.visible_face)):
            atomic_write_bytes(out / f"{sid}_{key}.png", png_bytes(m.astype(np.uint8) * 255))
        atomic_write_bytes(out / f"{sid}_truth.npz", _npz(vertices=s.vertices, landmarks68=s.landmarks68))
        entries.append({
            "id": sid, "seed": s.seed, "occluder_class": s.occluder_class, "params": s.params.as_dict(),
            "camera": _camera_dict(s.camera), "info": dict(s.info),
        })
    manifest = {"format": _FORMAT, "version": _FORMAT_VERSION, "samples": entries}
    if config is not None:
        manifest["config"] = config.as_dict()
    if model is not None:
        manifest["model"] = {"name": model.name, "checksum": model.checksum}
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
    return out


def _read_png(path: Path, colour: bool) -> np.ndarray:
    if not path.is_file():
        raise InvalidInputError(f"data set file {path} is missing; re-create the data set with save_dataset")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise InvalidInputError(f"{path} is not a readable PNG image")
    return img[..., ::-1] if colour else img


def load_dataset(directory: str | Path) -> list[SyntheticSample]:
    """Read a data set written by :func:`save_dataset` (arrays bit-identical to the saved samples).

    Raises:
        InvalidInputError: no manifest, a missing/corrupt file, inconsistent masks.

    Example:
        >>> samples = load_dataset("synthetic10")     # doctest: +SKIP
    """
    d = Path(directory)
    mp = d / "manifest.json"
    if not mp.is_file():
        raise InvalidInputError(f"{mp} not found: {d} is not a complete fitem synthetic data set "
                                "(save_dataset writes the manifest last)")
    try:
        manifest = json.loads(mp.read_text())
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"{mp} is not valid JSON ({e})") from e
    if manifest.get("format") != _FORMAT or manifest.get("version") != _FORMAT_VERSION:
        raise InvalidInputError(f"{mp}: expected format {_FORMAT!r} version {_FORMAT_VERSION}, got "
                                f"{manifest.get('format')!r} version {manifest.get('version')!r}")
    out = []
    for e in manifest["samples"]:
        sid = e["id"]
        image = _read_png(d / f"{sid}_image.png", True).astype(np.float32) / np.float32(255.0)
        masks = {k: _read_png(d / f"{sid}_{k}.png", False) > 127 for k in ("region", "occluder", "visible")}
        tp = d / f"{sid}_truth.npz"
        if not tp.is_file():
            raise InvalidInputError(f"data set file {tp} is missing")
        with np.load(tp, allow_pickle=False) as z:
            vertices, landmarks = z["vertices"], z["landmarks68"]
        if not np.array_equal(masks["visible"], masks["region"] & ~masks["occluder"]):
            raise InvalidInputError(f"{d}/{sid}_visible.png is not region & ~occluder; the data set is corrupt")
        out.append(SyntheticSample(
            image=np.ascontiguousarray(image), params=FaceParams.from_dict(e["params"]), vertices=vertices,
            landmarks68=landmarks, face_region=masks["region"], occluder_mask=masks["occluder"],
            visible_face=masks["visible"], occluder_class=e["occluder_class"], seed=int(e["seed"]),
            camera=Camera(**e["camera"]), info=e.get("info", {}),
        ))
    return out
