"""``FaceParams``: the fit's parameters as named blocks, and ``ParamLayout`` for the solver.

Blocks (names are the contract; never slice a flat vector by hand):

========== ============ ==========================================================
block      shape        meaning
========== ============ ==========================================================
shape      (Ks,)        shape coefficients, standard deviations
expression (Ke,)        expression coefficients, standard deviations
colour     (Kc,)        albedo coefficients, standard deviations
light      (9, 3)       spherical-harmonics light, 9 bands-0..2 coefficients × RGB
rotation   (3,)         Euler angles (pitch, yaw, roll) in radians, see fitem.render.camera
translation (3,)        camera-space translation in mm
========== ============ ==========================================================

A batch of fits uses the same blocks with a leading batch dimension.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Iterable, Sequence

import torch

from fitem.errors import ConfigError, ShapeError

__all__ = ["BLOCKS", "FaceParams", "ParamLayout", "AMBIENT_LIGHT"]

BLOCKS: tuple[str, ...] = ("shape", "expression", "colour", "light", "rotation", "translation")

#: Band-0 SH coefficient that gives a uniform shading of 0.8 (see fitem.render.shading):
#: shading = pi * Y00 * L00, Y00 = 1 / (2 sqrt(pi)).
AMBIENT_LIGHT = 0.8 / (math.pi * 0.5 / math.sqrt(math.pi))


@dataclass(frozen=True)
class FaceParams:
    """Immutable named parameter blocks of one face (or a batch, with a leading dim)."""

    shape: torch.Tensor
    expression: torch.Tensor
    colour: torch.Tensor
    light: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor

    def __post_init__(self) -> None:
        if self.light.shape[-2:] != (9, 3):
            raise ShapeError(f"light: expected shape (..., 9, 3), got {tuple(self.light.shape)}")
        for name in ("rotation", "translation"):
            t = getattr(self, name)
            if t.shape[-1] != 3:
                raise ShapeError(f"{name}: expected shape (..., 3), got {tuple(t.shape)}")

    @staticmethod
    def zeros(
        n_shape: int,
        n_expression: int,
        n_colour: int,
        *,
        distance: float = 1000.0,
        batch: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "FaceParams":
        """Mean face, frontal, ``distance`` mm in front of the camera, ambient light 0.8."""
        lead = () if batch is None else (batch,)
        kw = dict(device=device, dtype=dtype)
        light = torch.zeros(*lead, 9, 3, **kw)
        light[..., 0, :] = AMBIENT_LIGHT
        translation = torch.zeros(*lead, 3, **kw)
        translation[..., 2] = distance
        return FaceParams(
            shape=torch.zeros(*lead, n_shape, **kw),
            expression=torch.zeros(*lead, n_expression, **kw),
            colour=torch.zeros(*lead, n_colour, **kw),
            light=light,
            rotation=torch.zeros(*lead, 3, **kw),
            translation=translation,
        )

    @staticmethod
    def for_model(model, **kwargs) -> "FaceParams":
        """:meth:`zeros` sized for a :class:`~fitem.models.MorphableModel`."""
        return FaceParams.zeros(model.n_shape, model.n_expression, model.n_colour, **kwargs)

    def replace(self, **changes: torch.Tensor) -> "FaceParams":
        """A copy with some blocks changed."""
        return replace(self, **changes)

    def to(self, device=None, dtype=None) -> "FaceParams":
        return FaceParams(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    def detach(self) -> "FaceParams":
        return FaceParams(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def as_dict(self) -> dict[str, list]:
        """Plain nested lists (JSON-ready)."""
        return {f.name: getattr(self, f.name).detach().cpu().tolist() for f in fields(self)}

    @staticmethod
    def from_dict(d: dict, *, device=None, dtype: torch.dtype = torch.float32) -> "FaceParams":
        missing = [b for b in BLOCKS if b not in d]
        if missing:
            raise ConfigError(f"parameter dict lacks blocks {missing}; expected all of {list(BLOCKS)}")
        return FaceParams(**{b: torch.as_tensor(d[b], device=device, dtype=dtype) for b in BLOCKS})

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.rotation.shape[:-1])


@dataclass(frozen=True)
class ParamLayout:
    """Which blocks are free and where each sits in the solver's flat vector.

    Example:
        >>> layout = ParamLayout.of(params, free=("shape", "rotation", "translation"))
        >>> x = layout.flatten(params)            # (P,)
        >>> p2 = layout.unflatten(x + dx, params) # blocks not in ``free`` come from ``params``
        >>> layout.slice("rotation")              # slice(Ks, Ks + 3)
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]

    @staticmethod
    def of(params: FaceParams, free: Iterable[str] = BLOCKS) -> "ParamLayout":
        free = tuple(free)
        unknown = [b for b in free if b not in BLOCKS]
        if unknown:
            raise ConfigError(f"unknown parameter blocks {unknown}; choose from {list(BLOCKS)}")
        names = tuple(b for b in BLOCKS if b in free)  # canonical order
        shapes = tuple(tuple(getattr(params, b).shape[len(params.batch_shape):]) for b in names)
        sizes = tuple(math.prod(s) for s in shapes)
        return ParamLayout(names, sizes, shapes)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def slice(self, name: str) -> slice:
        if name not in self.names:
            raise ConfigError(f"block {name!r} is not free in this layout (free: {list(self.names)})")
        i = self.names.index(name)
        start = sum(self.sizes[:i])
        return slice(start, start + self.sizes[i])

    def offsets(self) -> dict[str, slice]:
        return {n: self.slice(n) for n in self.names}

    def flatten(self, params: FaceParams) -> torch.Tensor:
        """``(..., P)`` vector of the free blocks, in canonical block order."""
        lead = params.batch_shape
        return torch.cat([getattr(params, n).reshape(*lead, -1) for n in self.names], dim=-1)

    def unflatten(self, x: torch.Tensor, base: FaceParams) -> FaceParams:
        """Blocks from ``x`` for free names, from ``base`` for the rest."""
        if x.shape[-1] != self.size:
            raise ShapeError(f"flat parameter vector: expected last dim {self.size}, got {tuple(x.shape)}")
        lead = tuple(x.shape[:-1])
        changes = {n: x[..., self.slice(n)].reshape(*lead, *s) for n, s in zip(self.names, self.shapes)}
        return base.replace(**changes)

    def block_sizes(self) -> Sequence[tuple[str, int]]:
        return list(zip(self.names, self.sizes))
