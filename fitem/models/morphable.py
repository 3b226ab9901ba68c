"""The morphable model: linear Gaussian blocks for shape, expression and colour.

Conventions (all loaders produce these):

- Vertices in millimetres, model space: +y up, +z out of the face (towards a
  viewer looking at the face), +x to the viewer's right (the subject's left).
- Colours (albedo) in [0, 1], RGB.
- Triangles ``(T, 3)`` int64, 0-based, wound counter-clockwise seen from
  outside, so that ``cross(v1 - v0, v2 - v0)`` points out of the face.
- A block's ``basis`` is ``(3N, K)`` with xyz interleaved per vertex
  (``x0, y0, z0, x1, ...``, statismo's layout) and its columns already scaled
  by the standard deviation, so coefficients are in units of standard
  deviations and the prior is ``sum(c**2)``. ``variance`` is ``(K,)``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from fitem.errors import ModelError, ShapeError

__all__ = ["LinearBlock", "MorphableModel", "ModelTensors"]


@dataclass(frozen=True, eq=False)
class LinearBlock:
    """A linear Gaussian model ``x = mean + basis @ c``, ``c ~ N(0, I)``.

    Attributes:
        mean: ``(N, 3)`` float32 mean (mm for geometry, [0, 1] for colour;
            an expression block's mean is an offset, usually zeros).
        basis: ``(3N, K)`` float32, columns = orthonormal direction × std dev.
        variance: ``(K,)`` float32 variance of each component.
    """

    mean: np.ndarray
    basis: np.ndarray
    variance: np.ndarray

    def __post_init__(self) -> None:
        mean = np.ascontiguousarray(self.mean, dtype=np.float32)
        basis = np.ascontiguousarray(self.basis, dtype=np.float32)
        variance = np.ascontiguousarray(self.variance, dtype=np.float32).reshape(-1)
        if mean.ndim != 2 or mean.shape[1] != 3:
            raise ModelError(f"block mean: expected shape (N, 3), got {mean.shape}")
        if basis.ndim != 2 or basis.shape[0] != mean.size:
            raise ModelError(
                f"block basis: expected shape ({mean.size}, K) for {mean.shape[0]} vertices, got {basis.shape}"
            )
        if variance.shape[0] != basis.shape[1]:
            raise ModelError(
                f"block variance: expected {basis.shape[1]} values (one per basis column), got {variance.shape[0]}"
            )
        for name, arr in (("mean", mean), ("basis", basis), ("variance", variance)):
            if not np.all(np.isfinite(arr)):
                raise ModelError(f"block {name} contains NaN or inf values")
        if np.any(variance < 0):
            raise ModelError("block variance has negative entries")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "basis", basis)
        object.__setattr__(self, "variance", variance)

    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def n_components(self) -> int:
        return self.basis.shape[1]

    def truncated(self, k: int) -> "LinearBlock":
        """The same block keeping only the first ``k`` components."""
        k = max(0, min(int(k), self.n_components))
        return LinearBlock(self.mean, self.basis[:, :k], self.variance[:k])

    @staticmethod
    def empty(n_vertices: int) -> "LinearBlock":
        """A block with zero mean and no components (e.g. a model without expressions)."""
        return LinearBlock(
            np.zeros((n_vertices, 3), np.float32),
            np.zeros((3 * n_vertices, 0), np.float32),
            np.zeros((0,), np.float32),
        )


@dataclass(frozen=True, eq=False)
class ModelTensors:
    """A model's arrays as torch tensors on one device/dtype (see :meth:`MorphableModel.tensors`)."""

    shape_mean: torch.Tensor  # (N, 3)
    shape_basis: torch.Tensor  # (N, 3, Ks)
    expression_mean: torch.Tensor  # (N, 3)
    expression_basis: torch.Tensor  # (N, 3, Ke)
    colour_mean: torch.Tensor  # (N, 3)
    colour_basis: torch.Tensor  # (N, 3, Kc)
    triangles: torch.Tensor  # (T, 3) int64
    # The bases again as contiguous (K, 3N) copies (None: not kept). A matrix-vector product
    # reads them 2.5x faster than the (3N, K) row-major bases on a CPU, and every
    # evaluation of the model is one (fitem.fitting.jacobian.vertex_state).
    shape_basis_t: torch.Tensor | None = None
    expression_basis_t: torch.Tensor | None = None
    colour_basis_t: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class MorphableModel:
    """A 3D Morphable Model of the face.

    Build one with a loader (:func:`fitem.load_model`) or directly from
    :class:`LinearBlock` s. The object is immutable; ``instance`` is pure.

    Attributes:
        name: human-readable name (e.g. ``"demo"``, ``"bfm2017-face12"``).
        shape, expression, colour: the three linear blocks (same vertex count).
        triangles: ``(T, 3)`` int64, 0-based, counter-clockwise from outside.
        landmarks: named landmark sets, each an int64 array of vertex indices,
            e.g. ``{"ibug68": (68,), "mediapipe468": (468,)}``.
        metadata: free-form string metadata (source file, licence, kernels).

    Example:
        >>> model = fitem.load_model("demo")            # doctest: +SKIP
        >>> v, a = model.instance(torch.zeros(model.n_shape))  # doctest: +SKIP
    """

    name: str
    shape: LinearBlock
    expression: LinearBlock
    colour: LinearBlock
    triangles: np.ndarray
    landmarks: Mapping[str, np.ndarray] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.shape.n_vertices
        for label, block in (("expression", self.expression), ("colour", self.colour)):
            if block.n_vertices != n:
                raise ModelError(
                    f"{label} block has {block.n_vertices} vertices but the shape block has {n}; "
                    "all blocks must share one mesh"
                )
        tri = np.ascontiguousarray(self.triangles)
        if tri.ndim != 2 or tri.shape[1] != 3:
            raise ModelError(f"triangles: expected shape (T, 3), got {tri.shape}")
        if not np.issubdtype(tri.dtype, np.integer):
            if not np.all(np.mod(tri, 1) == 0):
                raise ModelError("triangles must hold integer vertex indices")
        tri = tri.astype(np.int64)
        if tri.size and (tri.min() < 0 or tri.max() >= n):
            raise ModelError(
                f"triangles index vertices in [{tri.min()}, {tri.max()}] but the model has {n} vertices "
                "(0-based indices expected; 1-based files must be converted by the loader)"
            )
        lms = {}
        for key, idx in dict(self.landmarks).items():
            arr = np.asarray(idx).astype(np.int64).reshape(-1)
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                raise ModelError(f"landmark set {key!r} indexes vertices outside [0, {n})")
            lms[str(key)] = arr
        object.__setattr__(self, "triangles", tri)
        object.__setattr__(self, "landmarks", lms)
        object.__setattr__(self, "metadata", {str(k): str(v) for k, v in dict(self.metadata).items()})
        object.__setattr__(self, "_tensor_cache", {})

    # ------------------------------------------------------------------ sizes
    @property
    def n_vertices(self) -> int:
        return self.shape.n_vertices

    @property
    def n_triangles(self) -> int:
        return self.triangles.shape[0]

    @property
    def n_shape(self) -> int:
        return self.shape.n_components

    @property
    def n_expression(self) -> int:
        return self.expression.n_components

    @property
    def n_colour(self) -> int:
        return self.colour.n_components

    @property
    def checksum(self) -> str:
        """SHA-256 (hex, first 16 chars) of the model's arrays: identifies the model's content."""
        cached = self.__dict__.get("_checksum")
        if cached is None:
            h = hashlib.sha256()
            for arr in (
                self.shape.mean, self.shape.basis, self.shape.variance,
                self.expression.mean, self.expression.basis, self.expression.variance,
                self.colour.mean, self.colour.basis, self.colour.variance, self.triangles,
            ):
                h.update(str(arr.shape).encode())
                h.update(np.ascontiguousarray(arr).tobytes())
            for key in sorted(self.landmarks):
                h.update(key.encode())
                h.update(self.landmarks[key].tobytes())
            cached = h.hexdigest()[:16]
            object.__setattr__(self, "_checksum", cached)
        return cached

    def landmark_indices(self, name: str = "ibug68") -> np.ndarray:
        """Vertex indices of a landmark set; raises :class:`ModelError` naming the sets that exist."""
        if name not in self.landmarks:
            hint = (
                "fitem.load_model(path) picks them on a render of the mean face unless that fails or is "
                "switched off (derive_landmarks=False, FITEM_DERIVE_LANDMARKS=0); for a model built in code use "
                "model = model.with_landmarks('ibug68', fitem.models.landmarks.ibug68_from_render(model)), "
                "or pass your own 68 vertex indices the same way"
                if name == "ibug68"
                else f"add them with model = model.with_landmarks({name!r}, indices)"
            )
            raise ModelError(
                f"model {self.name!r} has no landmark set {name!r} (it has {sorted(self.landmarks) or 'none'}); "
                + hint
            )
        return self.landmarks[name]

    def with_landmarks(self, name: str, indices: "np.ndarray | list[int]") -> "MorphableModel":
        """A copy of the model with the landmark set ``name`` added (or replaced).

        Everything else (blocks, triangles, other landmark sets, metadata) is
        shared; the copy's :attr:`checksum` covers the new set.

        Args:
            name: landmark set name, e.g. ``"ibug68"``.
            indices: ``(L,)`` integer vertex indices in ``[0, n_vertices)``
                (``(68,)`` for ``"ibug68"``, in iBUG order).

        Raises:
            ModelError: empty name, non-integer or out-of-range indices.
            ShapeError: ``indices`` not 1-D or empty, or not 68 for ``"ibug68"``.

        Example:
            >>> model = model.with_landmarks("ibug68", ibug68_from_render(model))   # doctest: +SKIP
        """
        if not isinstance(name, str) or not name:
            raise ModelError(f"landmark set name must be a non-empty string, got {name!r}")
        arr = np.asarray(indices)
        if arr.ndim != 1 or arr.size == 0:
            raise ShapeError(f"landmark set {name!r}: expected shape (L,) with L > 0, got {arr.shape}")
        if name == "ibug68" and arr.size != 68:
            raise ShapeError(f"landmark set 'ibug68': expected shape (68,), got {arr.shape}")
        integral_floats = (np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.isfinite(arr)))
                           and bool(np.all(np.mod(arr, 1) == 0)))
        if not (np.issubdtype(arr.dtype, np.integer) or integral_floats):
            raise ModelError(f"landmark set {name!r}: expected integer vertex indices, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        bad = arr[(arr < 0) | (arr >= self.n_vertices)]
        if bad.size:
            raise ModelError(
                f"landmark set {name!r}: indices {bad[:5].tolist()} are outside [0, {self.n_vertices}) "
                f"(model {self.name!r} has {self.n_vertices} vertices; indices are 0-based)"
            )
        return MorphableModel(self.name, self.shape, self.expression, self.colour, self.triangles,
                              {**self.landmarks, name: arr}, self.metadata)

    # ---------------------------------------------------------------- tensors
    def tensors(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> ModelTensors:
        """The model's arrays as tensors on ``device``/``dtype`` (cached per pair)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (str(device), dtype)
        cache = self.__dict__["_tensor_cache"]
        if key not in cache:
            n = self.n_vertices

            def t(a: np.ndarray) -> torch.Tensor:
                return torch.as_tensor(a).to(device=device, dtype=dtype)

            bases = {name: t(getattr(self, name).basis) for name in ("shape", "expression", "colour")}
            cache[key] = ModelTensors(
                shape_mean=t(self.shape.mean),
                shape_basis=bases["shape"].reshape(n, 3, -1),
                expression_mean=t(self.expression.mean),
                expression_basis=bases["expression"].reshape(n, 3, -1),
                colour_mean=t(self.colour.mean),
                colour_basis=bases["colour"].reshape(n, 3, -1),
                triangles=torch.as_tensor(self.triangles, device=device),
                **{f"{name}_basis_t": b.T.contiguous() for name, b in bases.items()},
            )
        return cache[key]

    def instance(
        self,
        shape: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        colour: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertices (mm) and per-vertex albedo ([0, 1], not clipped) for coefficients.

        Args:
            shape: ``(Ks,)`` or ``(B, Ks)`` coefficients in standard deviations, or None (zeros).
            expression: ``(Ke,)`` or ``(B, Ke)``, or None.
            colour: ``(Kc,)`` or ``(B, Kc)``, or None.

        Returns:
            ``(vertices, albedo)``, each ``(N, 3)`` if every given coefficient is
            1-D, else ``(B, N, 3)``. Device and dtype follow the first given
            coefficient tensor (CPU float32 if none is given). Pure and linear:
            at zero coefficients it returns the means.

        Example:
            >>> v, a = model.instance(torch.zeros(2, model.n_shape))   # doctest: +SKIP
            >>> v.shape                                                 # doctest: +SKIP
            torch.Size([2, N, 3])
        """
        given = [c for c in (shape, expression, colour) if c is not None]
        device = given[0].device if given else torch.device("cpu")
        dtype = given[0].dtype if given else torch.float32
        if not dtype.is_floating_point:
            dtype = torch.float32
        batched = any(c.dim() == 2 for c in given)
        batch = max((c.shape[0] for c in given if c.dim() == 2), default=1)
        mt = self.tensors(device, dtype)

        def prep(c: torch.Tensor | None, k: int, label: str) -> torch.Tensor:
            if c is None:
                return torch.zeros(batch, k, device=device, dtype=dtype)
            c = torch.as_tensor(c, device=device, dtype=dtype)
            if c.dim() == 1:
                c = c.unsqueeze(0).expand(batch, -1)
            if c.dim() != 2 or c.shape[1] != k or c.shape[0] not in (batch,):
                raise _coefficient_shape_error(label, k, batch, tuple(c.shape))
            return c

        cs = prep(shape, self.n_shape, "shape")
        ce = prep(expression, self.n_expression, "expression")
        cc = prep(colour, self.n_colour, "colour")
        verts = (
            mt.shape_mean + mt.expression_mean
            + torch.einsum("nck,bk->bnc", mt.shape_basis, cs)
            + torch.einsum("nck,bk->bnc", mt.expression_basis, ce)
        )
        albedo = mt.colour_mean + torch.einsum("nck,bk->bnc", mt.colour_basis, cc)
        if not batched:
            return verts[0], albedo[0]
        return verts, albedo

    def __repr__(self) -> str:
        return (
            f"MorphableModel(name={self.name!r}, vertices={self.n_vertices}, triangles={self.n_triangles}, "
            f"shape={self.n_shape}, expression={self.n_expression}, colour={self.n_colour}, "
            f"landmarks={ {k: len(v) for k, v in self.landmarks.items()} }, checksum={self.checksum})"
        )


def _coefficient_shape_error(label: str, k: int, batch: int, got: tuple) -> ShapeError:
    return ShapeError(f"{label} coefficients: expected shape ({k},) or ({batch}, {k}), got {got}")
