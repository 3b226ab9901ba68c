"""Pictures shared by the CLI, notebooks and docs: overlays and side-by-sides (uint8 RGB)."""
from __future__ import annotations

import numpy as np

__all__ = ["to_uint8", "mask_overlay", "side_by_side", "draw_points"]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] or uint8 RGB → uint8 RGB."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        return img
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def mask_overlay(image: np.ndarray, mask: np.ndarray, occlusion: np.ndarray | None = None,
                 alpha: float = 0.45) -> np.ndarray:
    """The image with ``mask`` tinted green and ``occlusion`` tinted red (uint8 ``(H, W, 3)``)."""
    out = to_uint8(image).astype(np.float32)
    green = np.array([40, 220, 60], np.float32)
    red = np.array([235, 40, 40], np.float32)
    m = np.asarray(mask, bool)
    out[m] = (1 - alpha) * out[m] + alpha * green
    if occlusion is not None:
        o = np.asarray(occlusion, bool)
        out[o] = (1 - alpha) * out[o] + alpha * red
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def side_by_side(*images: np.ndarray, height: int | None = None, gap: int = 4) -> np.ndarray:
    """Images resized to one height and joined left to right with a white gap."""
    import cv2

    ims = [to_uint8(i if i.ndim == 3 else np.repeat(np.asarray(i)[..., None], 3, -1)) for i in images]
    h = height or max(i.shape[0] for i in ims)
    resized = [cv2.resize(i, (max(1, round(i.shape[1] * h / i.shape[0])), h), interpolation=cv2.INTER_AREA)
               for i in ims]
    parts = []
    for k, im in enumerate(resized):
        if k:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=1)


def draw_points(image: np.ndarray, points: np.ndarray, colour=(255, 0, 0), radius: int = 2) -> np.ndarray:
    """Draw ``(K, 2)`` continuous pixel coordinates (centre of pixel j at j + 0.5) as dots."""
    import cv2

    out = to_uint8(image).copy()
    for x, y in np.asarray(points, np.float64):
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(out, (int(round(x - 0.5)), int(round(y - 0.5))), radius, colour, -1, lineType=cv2.LINE_AA)
    return out
