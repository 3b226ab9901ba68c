"""Using a distilled net: segment an image in milliseconds, or give the EM its prior and first mask.

:func:`segment` runs detect landmarks → aligned crop → net → probability of
visible face, mapped back to the input image. :func:`crop_probability` is the
crop-level step :func:`fitem.fit` calls (``fit(image, segnet=...)``): its
probability becomes the E-step's extra prior log-odds
(:func:`prior_logit`, clipped to ±:data:`PRIOR_LOGIT_CLIP` nats so that a confident
net tilts the per-pixel decision without overruling strong colour evidence) and
``p > 0.5`` inside the rendered region the first E-step's mask.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from fitem.errors import ConfigError, ShapeError
from fitem.segnet.net import SegNet, load_segnet

__all__ = ["Segmentation", "segment", "crop_probability", "prior_logit", "initial_render", "PRIOR_LOGIT_CLIP"]

#: Largest magnitude (nats) of the prior log-odds a net contributes to an E-step.
PRIOR_LOGIT_CLIP = 3.0


def prior_logit(probability: np.ndarray, clip: float = PRIOR_LOGIT_CLIP) -> np.ndarray:
    """Log-odds ``log p / (1 - p)`` of a probability map, clipped to ``[-clip, clip]`` (float32).

    Example:
        >>> prior_logit(np.array([0.5, 0.999, 0.0])).tolist()
        [0.0, 3.0, -3.0]
    """
    if not (np.isfinite(clip) and clip > 0):
        raise ConfigError(f"clip must be a positive number of nats, got {clip}")
    p = np.clip(np.asarray(probability, np.float64), 1e-7, 1 - 1e-7)
    return np.clip(np.log(p) - np.log1p(-p), -clip, clip).astype(np.float32)


def initial_render(model, lm_crop: np.ndarray, config, *, cache: dict | None = None,
                   device: "str | torch.device" = "cpu") -> np.ndarray:
    """The render :func:`fitem.fit` makes before its first E-step, on the ``config.size`` crop.

    Pose, shape and expression from the crop landmarks (:func:`fitem.init.initialise`),
    mean colour, ambient light; ``(S, S, 3)`` float32 in [0, 1], 0 outside the face.

    Args:
        model: the full :class:`~fitem.models.MorphableModel` (truncated here as ``config`` says).
        lm_crop: ``(68, 2)`` landmarks in crop pixels.
        config: the :class:`~fitem.config.FitConfig` of the fit.
        cache: optional dict reused across calls (keeps the truncated model and rasterizer).
    """
    from fitem.api import truncate_model
    from fitem.em import render_crop
    from fitem.init import initialise
    from fitem.render.camera import Camera
    from fitem.render.raster import make_rasterizer

    dev = torch.device(device)
    key = (config.size, config.n_shape, config.n_expression, config.n_colour, str(dev))
    cache = {} if cache is None else cache
    if key not in cache:
        mdl = truncate_model(model, config)
        rast = make_rasterizer(torch.as_tensor(mdl.triangles, device=dev), (config.size, config.size),
                               backend="torch", device=dev)
        cache[key] = (mdl, mdl.tensors(dev, torch.float32), rast)
    mdl, mt, rast = cache[key]
    camera = Camera.default(config.size)
    params = initialise(mdl, np.asarray(lm_crop, np.float64), camera).params.to(device=dev, dtype=torch.float32)
    with torch.no_grad():
        img, _ = render_crop(mt, params, camera, rast)
    return img.clamp(0, 1).cpu().numpy().astype(np.float32)


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape[0] == size:
        return a
    # a similarity about the crop origin: resizing an aligned crop IS the crop at another size
    return cv2.resize(np.ascontiguousarray(a), (size, size), interpolation=cv2.INTER_AREA
                      if size < a.shape[0] else cv2.INTER_LINEAR)


def crop_probability(net: SegNet, crop: np.ndarray, render: np.ndarray | None = None) -> np.ndarray:
    """The net's probability of visible face on an aligned crop of any size.

    The crop (and render) are resized to the net's ``crop_size`` when they differ
    (aligned crops of different sizes differ by a scale about the origin), and the
    probability is resized back.

    Args:
        net: a loaded :class:`SegNet`.
        crop: ``(S, S, 3)`` float in [0, 1] or uint8.
        render: ``(S, S, 3)`` the current render (6-channel nets only).

    Returns:
        ``(S, S)`` float32 in [0, 1].
    """
    c = np.asarray(crop)
    if c.ndim != 3 or c.shape[0] != c.shape[1] or c.shape[2] != 3:
        raise ShapeError(f"crop: expected a square (S, S, 3) image, got {c.shape}")
    s = c.shape[0]
    c = c.astype(np.float32) / 255.0 if c.dtype == np.uint8 else c.astype(np.float32)
    r = None
    if render is not None:
        r = np.asarray(render, np.float32)
        if r.shape != (s, s, 3):
            raise ShapeError(f"render: expected shape {(s, s, 3)} like the crop, got {r.shape}")
        r = _resize(r, net.crop_size)
    p = net.predict(_resize(c, net.crop_size), r)
    return np.clip(_resize(p, s), 0.0, 1.0).astype(np.float32)


@dataclass
class Segmentation:
    """What :func:`segment` returns; image-shaped arrays are at the INPUT resolution.

    Attributes:
        probability: ``(H, W)`` float32, P(visible face) (0 outside the crop).
        mask: ``(H, W)`` bool, ``probability >= threshold``.
        crop_probability: ``(S, S)`` float32, the net's output on the aligned crop.
        transform: ``(2, 3)`` input → crop similarity.
        landmarks: ``(68, 2)`` landmarks used, input pixels.
        timings: seconds for ``detect``, ``crop``, ``net``, ``total``.
    """

    probability: np.ndarray
    mask: np.ndarray
    crop_probability: np.ndarray
    transform: np.ndarray
    landmarks: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    def overlay(self, image: Any) -> np.ndarray:
        """uint8 picture: the input with the predicted visible face tinted green."""
        from fitem.image import load_image
        from fitem.viz import mask_overlay

        return mask_overlay(load_image(image), self.mask)


def segment(
    image: Any,
    *,
    net: "str | Path | SegNet",
    landmarks: Any = None,
    model: Any = None,
    detector: str = "mediapipe",
    face_index: int | None = None,
    threshold: float = 0.5,
    device: "str | torch.device" = "cpu",
) -> Segmentation:
    """Segment the visible face of one image with a distilled net (no fitting).

    Args:
        image: a path or an array (anything :func:`fitem.image.load_image` accepts).
        net: a checkpoint path (:func:`fitem.segnet.distill`) or a loaded :class:`SegNet`.
        landmarks: optional ``(68, 2)`` input-pixel landmarks (skips detection).
        model: the morphable model, used only by 6-channel nets (for the initial render);
            default: the model the net's annotation was made with.
        detector: landmark detector when ``landmarks`` is None.
        face_index: which detected face (default the largest).
        threshold: probability above which a pixel is visible face.
        device: torch device of the net.

    Returns:
        :class:`Segmentation` (``probability`` and ``mask`` at the input resolution).

    Raises:
        fitem.errors.NoFaceError: no face found (pass ``landmarks=``).
        fitem.errors.InvalidInputError / ConfigError: bad image, checkpoint or threshold.

    Example:
        >>> seg = segment("photo.jpg", net="net.pt")           # doctest: +SKIP
        >>> seg.probability.shape == seg.mask.shape             # doctest: +SKIP
        True
    """
    from fitem.image import load_image
    from fitem.landmarks import align_transform, detect_landmarks, landmarks_from_user

    if not (0.0 < float(threshold) < 1.0):
        raise ConfigError(f"threshold must lie in (0, 1), got {threshold}")
    t_all = time.perf_counter()
    sn = load_segnet(net, device=device)
    img = load_image(image)
    t0 = time.perf_counter()
    det = (landmarks_from_user(landmarks, img.shape[:2]) if landmarks is not None
           else detect_landmarks(img, detector=detector, face_index=face_index))
    t_detect = time.perf_counter() - t0
    t0 = time.perf_counter()
    T = align_transform(det.ibug68, size=sn.crop_size, input_shape=img.shape)
    crop = T.warp_image(img)
    render = None
    if sn.in_channels == 6:
        from fitem.models import load_model
        from fitem.segnet.data import _fit_config

        cfg = _fit_config({**sn.metadata.get("fit_config", {}), "size": sn.crop_size})
        mdl = load_model(model if model is not None else sn.metadata.get("model") or "demo")
        render = initial_render(mdl, T.to_crop(det.ibug68), cfg)
    t_crop = time.perf_counter() - t0
    t0 = time.perf_counter()
    p_crop = crop_probability(sn, crop, render)
    t_net = time.perf_counter() - t0
    H, W = img.shape[:2]
    prob = np.clip(T.image_to_input(p_crop, (H, W)), 0.0, 1.0).astype(np.float32)
    return Segmentation(
        probability=prob, mask=prob >= threshold, crop_probability=p_crop, transform=np.asarray(T.matrix),
        landmarks=np.asarray(det.ibug68, np.float32),
        timings={"detect": t_detect, "crop": t_crop, "net": t_net, "total": time.perf_counter() - t_all},
    )
