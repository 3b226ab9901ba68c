"""Image loading and conversion: every image fitem touches becomes ``(H, W, 3)`` float32 RGB in [0, 1].

Accepted inputs (:func:`load_image`):

- a path (``str`` / ``pathlib.Path``) to any file OpenCV or Pillow can decode
  (JPEG, PNG, PPM, TIFF, BMP, WebP, ...). 8-bit and 16-bit files keep their
  full precision; JPEG EXIF orientation is applied, so the array is upright as
  a viewer shows it.
- a numpy array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 2)`` (grey + alpha),
  ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA), channels last:

  ========================= ===================================================
  dtype                     value range taken as
  ========================= ===================================================
  ``uint8``                 [0, 255]
  ``uint16``                [0, 65535] (16-bit)
  other integers            [0, 255] if the maximum is <= 255, else [0, 65535];
                            negative values or values > 65535 are rejected
  ``bool``                  {0, 1}
  float (any width)         **[0, 1]**; values up to 0.02 outside are clipped,
                            anything further is rejected (a float image in
                            [0, 255] must be divided by 255 first: fitem does
                            not guess)
  ========================= ===================================================

- a ``PIL.Image.Image`` in any mode (palette, grey, 16-bit grey, RGBA, CMYK, ...).
- a torch tensor, taken as a channels-last array (``(3, H, W)`` is rejected
  with a hint to permute).

Grey images are replicated to three channels. An alpha channel is
**composited over a uniform background** (``background``, default 0 = black):
``rgb * alpha + background * (1 - alpha)``, so fully transparent pixels never
carry hidden colours into the fit.

Arrays follow the pixel convention of :mod:`fitem.render.camera`: row ``i``,
column ``j`` covers ``[j, j + 1] × [i, i + 1]`` with its centre at
``(j + 0.5, i + 0.5)``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fitem.errors import InvalidInputError, ShapeError

__all__ = ["MIN_IMAGE_SIZE", "load_image", "to_uint8", "describe_image"]

log = logging.getLogger(__name__)

#: Smallest accepted image side in pixels.
MIN_IMAGE_SIZE = 32

_FLOAT_TOLERANCE = 0.02


def describe_image(image: Any) -> str:
    """A short human-readable name of an image input, for messages (path, or kind and size).

    >>> describe_image("photos/a.jpg")
    "'photos/a.jpg'"
    >>> describe_image(np.zeros((40, 50, 3)))
    'the 40x50 image array'
    """
    if isinstance(image, (str, Path)):
        return repr(str(image))
    shape = getattr(image, "shape", None)
    if shape is not None and len(shape) >= 2:
        return f"the {shape[0]}x{shape[1]} image array"
    size = getattr(image, "size", None)
    if isinstance(size, tuple) and len(size) == 2:  # PIL: (width, height)
        return f"the {size[1]}x{size[0]} PIL image"
    return f"the {type(image).__name__} image"


def load_image(image: Any, *, background: float = 0.0) -> np.ndarray:
    """Load or convert an image to ``(H, W, 3)`` float32 RGB in [0, 1].

    Args:
        image: a file path, numpy array, ``PIL.Image.Image`` or torch tensor
            (see the module docstring for accepted layouts and value ranges).
        background: grey level in [0, 1] under transparent pixels of an
            image with an alpha channel.

    Returns:
        ``(H, W, 3)`` float32, C-contiguous, values in [0, 1], RGB.

    Raises:
        fitem.errors.InvalidInputError: missing or undecodable file, empty
            image, NaN/inf values, values outside the accepted range, an image
            smaller than :data:`MIN_IMAGE_SIZE` pixels on a side, an
            unsupported type.
        fitem.errors.ShapeError: wrong number of dimensions or channels.

    Example:
        >>> img = load_image(np.zeros((64, 48), np.uint16))
        >>> img.shape, img.dtype
        ((64, 48, 3), dtype('float32'))
    """
    if not (0.0 <= float(background) <= 1.0):
        raise InvalidInputError(f"background must be a grey level in [0, 1], got {background}")
    name = describe_image(image)
    if isinstance(image, (str, Path)):
        arr = _read_file(Path(image))
    elif _is_pil(image):
        arr = _from_pil(image)
    elif _is_torch(image):
        arr = np.asarray(image.detach().cpu())
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise InvalidInputError(
            f"unsupported image type {type(image).__name__}; pass a file path, a numpy array (H, W[, C]), "
            "a PIL image or a torch tensor (H, W, C)"
        )
    return _normalise(arr, name, float(background))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] (or a uint8 image) → uint8 in [0, 255], rounding to nearest.

    Accepts ``(H, W)`` or ``(H, W, C)``; values are clipped to [0, 1] first.

    Example:
        >>> to_uint8(np.array([[0.0, 0.5, 1.0]], np.float32))
        array([[  0, 128, 255]], dtype=uint8)
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    if arr.ndim not in (2, 3):
        raise ShapeError(f"image: expected shape (H, W) or (H, W, C), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidInputError(f"to_uint8 expects a float image in [0, 1] or uint8, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("to_uint8: image contains NaN or inf values")
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- helpers
def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(obj, Image.Image)


def _is_torch(obj: Any) -> bool:
    mod = type(obj).__module__
    return mod.startswith("torch") and hasattr(obj, "detach")


def _read_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise InvalidInputError(f"image file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise InvalidInputError(f"image path {str(path)!r} is a folder; pass an image file")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise InvalidInputError(f"cannot read image file {str(path)!r}: {exc}") from exc
    if data.size == 0:
        raise InvalidInputError(f"image file {str(path)!r} is empty (0 bytes)")
    import cv2

    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is not None:
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = arr[..., ::-1]  # BGR → RGB
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., [2, 1, 0, 3]]  # BGRA → RGBA
        return _apply_exif_orientation(path, np.ascontiguousarray(arr))
    # OpenCV cannot decode it: try Pillow (GIF, palette TIFFs, exotic formats)
    try:
        from PIL import Image, ImageOps

        with Image.open(path) as pil:
            pil = ImageOps.exif_transpose(pil)
            return _from_pil(pil)
    except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError)
        raise InvalidInputError(
            f"cannot decode image file {str(path)!r} ({type(exc).__name__}: {exc}); "
            "pass a JPEG, PNG, PPM, TIFF, BMP or WebP file"
        ) from exc


def _apply_exif_orientation(path: Path, arr: np.ndarray) -> np.ndarray:
    """Rotate/flip a decoded array as its EXIF orientation tag says (only JPEG/TIFF/WebP carry one)."""
    try:
        from PIL import Image

        with Image.open(path) as pil:
            orientation = int(pil.getexif().get(0x0112, 1))
    except Exception:  # no EXIF or Pillow cannot parse the header: leave the array as decoded
        return arr
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 1)[::-1],
        8: lambda a: np.rot90(a, 1),
    }
    if orientation in ops:
        arr = np.ascontiguousarray(ops[orientation](arr))
    return arr


def _from_pil(pil: Any) -> np.ndarray:
    mode = pil.mode
    if mode in ("RGB", "RGBA", "L", "LA", "1", "F"):
        return np.asarray(pil)
    if mode.startswith("I;16"):
        return np.asarray(pil).astype(np.uint16)
    if mode == "I":
        return np.asarray(pil)
    if mode in ("P", "PA"):
        return np.asarray(pil.convert("RGBA"))
    return np.asarray(pil.convert("RGB"))


def _normalise(arr: np.ndarray, name: str, background: float) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.size == 0:
        raise InvalidInputError(f"{name} is empty (shape {arr.shape}); pass an image with pixels")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ShapeError(
            f"{name}: expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {arr.shape}"
        )
    if arr.shape[2] not in (1, 2, 3, 4):
        hint = " (channels-first? use array.transpose(1, 2, 0))" if arr.shape[0] in (1, 3, 4) else ""
        raise ShapeError(f"{name}: expected 1, 2, 3 or 4 channels last, got shape {arr.shape}{hint}")
    h, w = arr.shape[:2]
    if min(h, w) < MIN_IMAGE_SIZE:
        raise InvalidInputError(
            f"{name} is {h}x{w} pixels, smaller than {MIN_IMAGE_SIZE} pixels on a side; "
            "pass a larger image (faces need roughly 64 px or more across to be found)"
        )
    img = _to_unit_float(arr, name)
    c = img.shape[2]
    if c in (2, 4):
        alpha = img[..., -1:]
        colour = img[..., :-1]
        img = colour * alpha + np.float32(background) * (1.0 - alpha)
        c -= 1
    if c == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img, dtype=np.float32)


def _to_unit_float(arr: np.ndarray, name: str) -> np.ndarray:
    dt = arr.dtype
    if dt == np.bool_:
        return arr.astype(np.float32)
    if dt == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if dt == np.uint16:
        return arr.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(dt, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise InvalidInputError(
                f"{name} has integer values in [{lo}, {hi}]; integer images must be in [0, 255] (8-bit) "
                "or [0, 65535] (16-bit)"
            )
        scale = 255.0 if hi <= 255 else 65535.0
        return (arr.astype(np.float64) / scale).astype(np.float32)
    if np.issubdtype(dt, np.floating):
        img = arr.astype(np.float32)
        if not np.all(np.isfinite(img)):
            raise InvalidInputError(f"{name} contains NaN or inf values; replace them before fitting")
        lo, hi = float(img.min()), float(img.max())
        if lo < -_FLOAT_TOLERANCE or hi > 1.0 + _FLOAT_TOLERANCE:
            hint = " (it looks like [0, 255]: divide by 255)" if hi <= 255.0 + _FLOAT_TOLERANCE and lo >= 0 else ""
            raise InvalidInputError(
                f"{name} is a float image with values in [{lo:g}, {hi:g}]; float images must be in [0, 1]{hint}"
            )
        return np.clip(img, 0.0, 1.0)
    raise InvalidInputError(f"{name} has unsupported dtype {dt}; use uint8, uint16 or float in [0, 1]")
