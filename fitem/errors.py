"""Typed errors raised by fitem.

Every error says what was wrong and what to do next. All derive from
:class:`FitemError`, so ``except fitem.errors.FitemError`` catches everything
fitem raises on purpose.
"""
from __future__ import annotations


class FitemError(Exception):
    """Base class of every error fitem raises on purpose."""


class ModelError(FitemError):
    """A morphable model is inconsistent (sizes, NaN, missing parts)."""


class ModelFileError(ModelError):
    """A model file is missing, unreadable or not in the expected layout.

    The message names the file and what was expected.
    """


class ShapeError(FitemError, ValueError):
    """A tensor or array has the wrong shape or dtype.

    The message names the argument, the expected and the actual shape.
    """


class InvalidInputError(FitemError, ValueError):
    """An input value is invalid (NaN, out of range, unsupported type)."""


class ConfigError(FitemError, ValueError):
    """A configuration value is invalid."""


class RasterizerUnavailableError(FitemError, RuntimeError):
    """The requested rasterizer backend cannot run here (e.g. nvdiffrast without CUDA)."""


class LandmarkError(FitemError, ValueError):
    """Landmarks are malformed (wrong shape, NaN) or missing for a model."""


class NoFaceError(FitemError):
    """No face was found in an image."""


class DetectorUnavailableError(FitemError, RuntimeError):
    """A landmark detector backend is not installed or its model file is missing."""


def check_shape(name: str, array, expected: tuple) -> None:
    """Raise :class:`ShapeError` unless ``array.shape`` matches ``expected``.

    ``expected`` holds ints or ``None`` (any size); a leading ``...`` in
    ``expected`` allows any number of leading dimensions.

    >>> import numpy as np
    >>> check_shape("points", np.zeros((68, 2)), (None, 2))
    """
    shape = tuple(array.shape)
    exp = tuple(expected)
    if exp and exp[0] is Ellipsis:
        tail = exp[1:]
        ok = len(shape) >= len(tail) and all(
            e is None or e == s for e, s in zip(tail, shape[len(shape) - len(tail):])
        )
    else:
        ok = len(shape) == len(exp) and all(e is None or e == s for e, s in zip(exp, shape))
    if not ok:
        pretty = tuple("..." if e is Ellipsis else ("*" if e is None else e) for e in exp)
        raise ShapeError(f"{name}: expected shape {pretty}, got {shape}")
