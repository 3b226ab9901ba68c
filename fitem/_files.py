"""Crash-safe file writing shared by results, data sets and pictures."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from fitem.errors import InvalidInputError

__all__ = ["atomic_write_bytes", "png_bytes", "read_mask_png"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename,
    so a reader (or a resumed run) never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 less the umask).
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = _read_umask()


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an RGB ``(H, W, 3)`` or grey ``(H, W)`` uint8/uint16 array."""
    import cv2

    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[..., ::-1]  # RGB → BGR for OpenCV
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise InvalidInputError("could not encode a PNG image")
    return buf.tobytes()


def read_mask_png(path: Path) -> np.ndarray:
    """A 0/255 mask PNG (as :func:`png_bytes` writes masks) → ``(H, W)`` bool.

    Raises:
        InvalidInputError: the file is missing or not a readable image.
    """
    import cv2

    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise InvalidInputError(f"{path} is missing or not a readable PNG mask")
    return m > 127
