"""Read and write iBUG ``.pts`` landmark files.

The iBUG / 300-W ``.pts`` format::

    version: 1
    n_points:  68
    {
    x y
    ...
    }

Coordinates are **1-based pixel indices**: the centre of the top-left pixel is
``(1, 1)`` (this is how the 300-W annotations and menpo's importer treat them;
menpo subtracts 1 to get 0-based pixel indices). fitem's continuous
convention (:mod:`fitem.render.camera`) puts that centre at ``(0.5, 0.5)``, so

    fitem = pts - 0.5        pts = fitem + 0.5
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fitem.errors import InvalidInputError, LandmarkError

__all__ = ["PTS_OFFSET", "read_pts", "write_pts"]

#: Value added to fitem's continuous pixel coordinates to get ``.pts`` coordinates.
PTS_OFFSET = 0.5


def read_pts(path: str | Path) -> np.ndarray:
    """Read an iBUG ``.pts`` file → ``(N, 2)`` float64 ``(x, y)`` in fitem's continuous pixel convention.

    Raises:
        fitem.errors.InvalidInputError: the file does not exist.
        fitem.errors.LandmarkError: the file is not in the ``.pts`` layout
            (no braces, a line without two numbers, ``n_points`` disagreeing
            with the number of points).

    Example:
        >>> pts = read_pts("tests/data/menpo/takeo.pts")   # doctest: +SKIP
        >>> pts.shape
        (68, 2)
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"landmark file {str(path)!r} does not exist; check the path")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError as exc:
        raise InvalidInputError(f"cannot read landmark file {str(path)!r}: {exc}") from exc
    n_declared = None
    for ln in lines:
        if ln.lower().startswith("n_points"):
            try:
                n_declared = int(ln.split(":", 1)[1])
            except (IndexError, ValueError) as exc:
                raise LandmarkError(f"{str(path)!r}: cannot parse the line {ln!r} (expected 'n_points: N')") from exc
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith("{"))
        end = next(i for i, ln in enumerate(lines) if i > start and ln.startswith("}"))
    except StopIteration:
        raise LandmarkError(
            f"{str(path)!r} is not an iBUG .pts file: expected the points between lines '{{' and '}}'"
        ) from None
    pts = []
    for ln in lines[start + 1:end]:
        if not ln:
            continue
        parts = ln.split()
        try:
            pts.append((float(parts[0]), float(parts[1])))
        except (IndexError, ValueError):
            raise LandmarkError(f"{str(path)!r}: cannot parse the point line {ln!r} (expected 'x y')") from None
    arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    if n_declared is not None and n_declared != arr.shape[0]:
        raise LandmarkError(f"{str(path)!r} declares n_points {n_declared} but lists {arr.shape[0]} points")
    return arr - PTS_OFFSET


def write_pts(path: str | Path, points: np.ndarray) -> None:
    """Write ``(N, 2)`` points in fitem's continuous pixel convention as an iBUG ``.pts`` file.

    Example:
        >>> write_pts("face.pts", detection.ibug68)   # doctest: +SKIP
    """
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise LandmarkError(f"points: expected shape (N, 2), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise LandmarkError("points contain NaN or inf values; cannot write them to a .pts file")
    body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in arr + PTS_OFFSET)
    Path(path).write_text(f"version: 1\nn_points:  {arr.shape[0]}\n{{\n{body}\n}}\n", encoding="utf-8")
