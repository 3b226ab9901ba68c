"""``fitem demo``: fit a real photograph with a pasted occluder and write a picture.

The photograph is ``skimage.data.astronaut()`` (NASA, public domain). A
textured occluder cut from ``skimage.data.coffee()`` is pasted over the lower
face (mouth and chin, like a hand or a cup), placed from the detected
landmarks, so the fit has something to segment.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fitem.config import FitConfig

__all__ = ["demo_image", "run_demo"]

log = logging.getLogger(__name__)


def demo_image() -> tuple[np.ndarray, np.ndarray]:
    """``(image, occluder_mask)``: the astronaut photo (float32 [0, 1]) with a textured
    occluder over mouth and chin, and the occluder's pixel mask (bool)."""
    import cv2
    import skimage.data

    from fitem.image import load_image
    from fitem.landmarks import detect_landmarks

    img = load_image(skimage.data.astronaut())
    lm = detect_landmarks(img).ibug68
    nose, chin = lm[33], lm[8]
    left, right = lm[3], lm[13]
    x0, x1 = int(left[0]), int(right[0])
    y0, y1 = int(nose[1] + 0.1 * (chin[1] - nose[1])), int(chin[1] + 0.1 * (chin[1] - nose[1]))
    h, w = img.shape[:2]
    x0, x1, y0, y1 = max(x0, 0), min(x1, w), max(y0, 0), min(y1, h)
    texture = load_image(skimage.data.coffee())
    patch = cv2.resize(texture[100:300, 150:450], (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    ellipse = ((yy - cy) / ((y1 - y0) / 2)) ** 2 + ((xx - cx) / ((x1 - x0) / 2)) ** 2 <= 1.0
    out = img.copy()
    region = out[y0:y1, x0:x1]
    region[ellipse] = patch[ellipse]
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = ellipse
    return out, mask


def _face_box(landmarks: np.ndarray, shape: tuple[int, int], margin: float = 2.0) -> tuple[slice, slice]:
    """A square window around the landmarks, ``margin`` × their extent, clipped to the image."""
    lo, hi = landmarks.min(0), landmarks.max(0)
    centre, half = (lo + hi) / 2, margin * float((hi - lo).max()) / 2
    x0, y0 = (int(max(0, c - half)) for c in centre)
    x1, y1 = int(min(shape[1], centre[0] + half)), int(min(shape[0], centre[1] + half))
    return slice(y0, y1), slice(x0, x1)


def run_demo(out: Path, config: FitConfig | None = None) -> Path:
    """Fit the demo photograph; write the result folder and ``demo.png`` under ``out``."""
    from fitem.api import fit
    from fitem._files import atomic_write_bytes, png_bytes
    from fitem.viz import side_by_side

    config = config or FitConfig(progress=True)
    image, _ = demo_image()
    result = fit(image, config=config)
    out = Path(out)
    result.save(out, image=image)
    render_on_image = np.where(result.face_region[..., None], np.clip(result.render, 0, 1), image * 0.35)
    box = _face_box(result.landmarks, image.shape[:2])
    panels = [p[box] for p in (image, render_on_image, result.overlay(image))]
    picture = side_by_side(*panels, height=320)
    atomic_write_bytes(out / "demo.png", png_bytes(picture))
    log.info("demo fit: %s (%s), %.2f s", result.status.value, result.message, result.timings.get("total", 0.0))
    return out
