"""Input checks shared by the render modules (typed errors naming expected vs actual)."""
from __future__ import annotations

import weakref

import torch

from fitem.errors import InvalidInputError, ShapeError

# id(tensor) -> (weakref, version, (min, max)): the index range of a triangle tensor is
# computed once per tensor (and again only if it is modified in place), so the hot
# render path does not pay a reduction + device sync on every call.
_TRI_RANGE_CACHE: dict[int, tuple[weakref.ref, int, tuple[int, int]]] = {}


def check_tensor(name: str, t, *, floating: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise ShapeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if floating and not t.dtype.is_floating_point:
        raise ShapeError(f"{name}: expected a floating-point tensor (float32/float64), got {t.dtype}")


def check_vertices(name: str, vertices, *, batched: bool | None = None) -> None:
    """``(B, N, 3)`` or ``(N, 3)`` float (``batched`` True/False forces one of them)."""
    check_tensor(name, vertices)
    dims = {None: (2, 3), True: (3,), False: (2,)}[batched]
    if vertices.dim() not in dims or vertices.shape[-1] != 3:
        want = {None: "(B, N, 3) or (N, 3)", True: "(B, N, 3)", False: "(N, 3)"}[batched]
        raise ShapeError(f"{name}: expected shape {want}, got {tuple(vertices.shape)}")


def check_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InvalidInputError(
            f"{name} contains {bad} NaN or infinite values; check the parameters that produced it "
            "(e.g. a diverged fit or a translation with z = 0)"
        )


def triangle_range(triangles: torch.Tensor) -> tuple[int, int]:
    """``(min, max)`` vertex index of a triangle tensor, cached per tensor object and version."""
    key = id(triangles)
    hit = _TRI_RANGE_CACHE.get(key)
    if hit is not None and hit[0]() is triangles and hit[1] == triangles._version:
        return hit[2]
    if triangles.numel() == 0:
        rng = (0, -1)
    else:
        rng = (int(triangles.min()), int(triangles.max()))
    if len(_TRI_RANGE_CACHE) > 64:
        for k in [k for k, v in _TRI_RANGE_CACHE.items() if v[0]() is None]:
            del _TRI_RANGE_CACHE[k]
    _TRI_RANGE_CACHE[key] = (weakref.ref(triangles), triangles._version, rng)
    return rng


# id(tensor) -> (weakref, version, {key: value}): derived data of a triangle tensor (e.g. the sparse
# vertex-face incidence matrix), rebuilt when the tensor is modified in place or freed.
_DERIVED_CACHE: dict[int, tuple[weakref.ref, int, dict]] = {}


def derived(triangles: torch.Tensor, key, build):
    """``build()`` cached per triangle tensor object (and its in-place version) and ``key``."""
    tid = id(triangles)
    hit = _DERIVED_CACHE.get(tid)
    if hit is None or hit[0]() is not triangles or hit[1] != triangles._version:
        if len(_DERIVED_CACHE) > 32:
            for k in [k for k, v in _DERIVED_CACHE.items() if v[0]() is None]:
                del _DERIVED_CACHE[k]
        hit = (weakref.ref(triangles), triangles._version, {})
        _DERIVED_CACHE[tid] = hit
    store = hit[2]
    if key not in store:
        store[key] = build()
    return store[key]


def check_triangles(triangles, n_vertices: int | None = None) -> None:
    """``(T, 3)`` int64 with indices in ``[0, n_vertices)``."""
    if not isinstance(triangles, torch.Tensor):
        raise ShapeError(f"triangles: expected a torch.Tensor, got {type(triangles).__name__}")
    if triangles.dim() != 2 or triangles.shape[1] != 3:
        raise ShapeError(f"triangles: expected shape (T, 3), got {tuple(triangles.shape)}")
    if triangles.dtype != torch.int64:
        raise ShapeError(
            f"triangles: expected dtype torch.int64, got {triangles.dtype}; convert with triangles.long()"
        )
    if n_vertices is not None:
        lo, hi = triangle_range(triangles)
        if triangles.numel() and (lo < 0 or hi >= n_vertices):
            raise InvalidInputError(
                f"triangles index vertices in [{lo}, {hi}] but there are only {n_vertices} vertices "
                "(0-based indices expected); pass the vertices of the mesh these triangles belong to"
            )
