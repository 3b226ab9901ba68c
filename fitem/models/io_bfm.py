"""Readers for the Basel Face Model files (BFM 2017/2019 statismo HDF5, BFM 2009 ``.mat``, the front crop).

Every reader returns a :class:`~fitem.models.morphable.MorphableModel` in fitem's
conventions (see :mod:`fitem.models.morphable`): vertices in millimetres,
colours in [0, 1], triangles ``(T, 3)`` int64 0-based and wound so that
normals point out of the face, basis columns scaled by the standard deviation.
The coordinates are kept where the file puts them (no re-centring), so the
front crop's vertices coincide with the BFM 2009 vertices they were cut from.

What each file stores, and how it is converted:

============================ ============================== ==================================
file                         stored as                      converted
============================ ============================== ==================================
BFM 2017/2019 ``.h5``        ``<block>/model/mean`` (3N,)   mm, [0, 1] as stored
(statismo: blocks ``shape``, ``pcaBasis`` (3N, K)           orthonormal (statismo ≥ 0.9) ×
``color``, ``expression``)                                  sqrt(``pcaVariance``); statismo
                                                            0.8 stored it already scaled
                             ``representer/cells`` (3, T)   transposed to (T, 3)
                             ``metadata/landmarks/json``    nearest vertices → set ``bfm2017``
BFM 2009                     ``shapeMU`` (3N, 1) µm         × 1e-3 → mm
``01_MorphableModel.mat``    ``shapePC`` (3N, 199)          orthonormal × ``shapeEV``
(MATLAB v5 or v7.3)          ``shapeEV`` (199, 1)           standard deviations (µm)
                             ``texMU``/``texPC``/``texEV``  [0, 255] → / 255
                             ``tl`` (T, 3) 1-based          → 0-based
``BFM_model_front.mat``      ``meanshape`` (1, 3N) dm       × 100 → mm
(Deep3DFaceRecon)            ``idBase``/``exBase``          already × std dev, dm → mm;
                                                            variance = squared column norm
                             ``meantex``/``texBase`` 0-255  / 255
                             ``tri`` (T, 3) 1-based         → 0-based
                             ``keypoints`` (68,) 1-based    → landmark set ``ibug68``
============================ ============================== ==================================

MATLAB v7.3 files are HDF5 and store every array transposed (column-major);
the readers transpose them back, so both versions give the same model.
"""
from __future__ import annotations

import contextlib
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import h5py
import numpy as np
import scipy.io
from scipy.spatial import cKDTree

from fitem.errors import FitemError, InvalidInputError, ModelError, ModelFileError
from fitem.models.morphable import LinearBlock, MorphableModel

__all__ = [
    "BFM2009_KEYS",
    "BFM_FRONT_KEYS",
    "ExpressionBasis",
    "load_bfm2009",
    "load_bfm_front",
    "load_exp_pca_bin",
    "load_statismo",
    "orient_outward",
]

log = logging.getLogger(__name__)

#: Micrometres (BFM 2009 ``.mat``) to millimetres.
UM_TO_MM = 1e-3
#: Decimetres (Deep3DFaceRecon's ``BFM_model_front.mat``: BFM 2009 µm / 1e5) to millimetres.
DM_TO_MM = 100.0
#: 8-bit colour values to [0, 1].
BYTE_TO_UNIT = 1.0 / 255.0

#: Keys a BFM 2009 ``01_MorphableModel.mat`` must hold.
BFM2009_KEYS: tuple[str, ...] = ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl")
#: Keys a Deep3DFaceRecon ``BFM_model_front.mat`` must hold (``keypoints`` is optional).
BFM_FRONT_KEYS: tuple[str, ...] = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri")

#: Named BFM 2017 landmarks farther than this from every vertex are dropped (e.g. outside a crop).
LANDMARK_MAX_DISTANCE_MM = 10.0

# Errors that reading a damaged or foreign file can raise in numpy / h5py / scipy.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError, EOFError,
    zipfile.BadZipFile, NotImplementedError, json.JSONDecodeError,
    scipy.io.matlab.MatReadError,
)


# ---------------------------------------------------------------- errors
@contextlib.contextmanager
def file_errors(path: Path, what: str) -> Iterator[None]:
    """Turn low-level read errors and model inconsistencies into :class:`ModelFileError` naming ``path``.

    ``what`` says what the file was expected to be (e.g. ``"a BFM 2017 statismo HDF5 file"``).
    """
    try:
        yield
    except ModelFileError:
        raise
    except ModelError as e:
        raise ModelFileError(f"{path}: {e} (while reading it as {what})") from e
    except FitemError:
        raise
    except _READ_ERRORS as e:
        raise ModelFileError(
            f"{path}: cannot read it as {what}: {type(e).__name__}: {e}. "
            "The file may be truncated or damaged; download or export it again."
        ) from e


def _fail(path: Path, message: str) -> ModelFileError:
    return ModelFileError(f"{path}: {message}")


# ---------------------------------------------------------------- mesh helpers
def orient_outward(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, bool]:
    """Wind ``triangles`` so that ``cross(v1 - v0, v2 - v0)`` points out of the surface.

    Decides for the mesh as a whole (it does not repair meshes whose triangles
    disagree with each other): the sum over triangles of the area-weighted
    normal · (triangle centroid − vertex centroid) must be positive; for a
    closed mesh this is three times its signed volume, for a face mask it
    says whether normals point away from the inside of the head. A flat mesh,
    where that sum vanishes, is oriented to face +z (fitem's "out of the face").

    Args:
        vertices: ``(N, 3)`` positions (any unit).
        triangles: ``(T, 3)`` 0-based vertex indices.

    Returns:
        ``(triangles, flipped)``: int64 ``(T, 3)`` (columns 1 and 2 swapped if
        needed) and whether they were swapped.

    Example:
        >>> v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
        >>> orient_outward(v, np.array([[0, 2, 1]]))[0].tolist()   # faces +z afterwards
        [[0, 1, 2]]
    """
    v = np.asarray(vertices, dtype=np.float64)
    tri = np.asarray(triangles, dtype=np.int64)
    if tri.size == 0:
        return tri.reshape(-1, 3), False
    v0, v1, v2 = v[tri[:, 0]], v[tri[:, 1]], v[tri[:, 2]]
    normals = np.cross(v1 - v0, v2 - v0)  # length = 2 × area
    offsets = (v0 + v1 + v2) / 3.0 - v.mean(axis=0)
    score = float(np.einsum("ij,ij->", normals, offsets))
    scale = float(np.abs(normals).sum() * (np.abs(offsets).max() + 1e-300))
    if abs(score) <= 1e-9 * scale:
        score = float(normals[:, 2].sum())
    if score < 0:
        return np.ascontiguousarray(tri[:, [0, 2, 1]]), True
    return np.ascontiguousarray(tri), False


def _index_array(path: Path, arr: np.ndarray, what: str, one_based: bool) -> np.ndarray:
    """Integer indices from an int or integral-float array, made 0-based."""
    a = np.asarray(arr)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)) or np.any(np.mod(a, 1) != 0):
            raise _fail(path, f"{what} must hold integer vertex indices (got dtype {a.dtype} with non-integer values)")
    out = a.astype(np.int64)
    if one_based:
        if out.size and out.min() < 1:
            raise _fail(path, f"{what} should be 1-based (MATLAB) vertex indices but contains {out.min()}")
        out = out - 1
    return out


def _vector(path: Path, arr: np.ndarray, what: str, size: int | None = None) -> np.ndarray:
    """A (n,), (n, 1) or (1, n) array as (n,); checks the size if given."""
    a = np.asarray(arr)
    if a.ndim > 2 or (a.ndim == 2 and 1 not in a.shape):
        raise _fail(path, f"{what}: expected a vector ((n,), (n, 1) or (1, n)), got shape {a.shape}")
    a = a.reshape(-1)
    if size is not None and a.size != size:
        raise _fail(path, f"{what}: expected {size} values, got {a.size}")
    return a


def _matrix(path: Path, arr: np.ndarray, what: str, rows: int, cols: int | None = None) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2 or a.shape[0] != rows or (cols is not None and a.shape[1] != cols):
        exp = f"({rows}, {cols if cols is not None else 'K'})"
        raise _fail(path, f"{what}: expected shape {exp}, got {a.shape}")
    return a


def _scaled_basis(directions: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 ``directions * scale[None, :]`` without a float64 copy of a large matrix."""
    out = np.array(directions, dtype=np.float32, order="C", copy=True)
    out *= np.asarray(scale, dtype=np.float32)[None, :]
    return out


def _column_sq_norms(basis: np.ndarray) -> np.ndarray:
    b = np.asarray(basis, dtype=np.float32)
    return np.einsum("ij,ij->j", b, b, dtype=np.float64)


def _block(path: Path, label: str, mean: np.ndarray, basis: np.ndarray, variance: np.ndarray) -> LinearBlock:
    try:
        return LinearBlock(np.asarray(mean).reshape(-1, 3), basis, variance)
    except ModelError as e:
        raise _fail(path, f"{label} block: {e}") from e


def _check_finite(path: Path, what: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise _fail(path, f"{what} contains {bad} NaN or inf values; the file is damaged")


def _make_model(
    path: Path, name: str, shape: LinearBlock, expression: LinearBlock, colour: LinearBlock,
    triangles: np.ndarray, landmarks: Mapping[str, np.ndarray], metadata: dict[str, str],
) -> MorphableModel:
    n = shape.n_vertices
    if triangles.size and (triangles.min() < 0 or triangles.max() >= n):
        raise _fail(path, f"triangles index vertices in [{triangles.min()}, {triangles.max()}] "
                          f"but the model has {n} vertices")
    tri, flipped = orient_outward(shape.mean + expression.mean, triangles)
    metadata["triangles_flipped"] = "true" if flipped else "false"
    if flipped:
        log.info("%s: triangles were wound inwards; swapped two columns so that normals point outwards", path)
    colour_range = (float(colour.mean.min()), float(colour.mean.max())) if colour.mean.size else (0.0, 1.0)
    if colour_range[0] < -0.25 or colour_range[1] > 1.25:
        log.warning("%s: mean colour spans [%.3g, %.3g], outside [0, 1]; check the file's colour scale",
                    path, *colour_range)
    try:
        return MorphableModel(name=name, shape=shape, expression=expression, colour=colour,
                              triangles=tri, landmarks=dict(landmarks), metadata=metadata)
    except ModelError as e:
        raise _fail(path, str(e)) from e


def _base_metadata(path: Path, fmt: str) -> dict[str, str]:
    return {"source_file": str(Path(path).resolve()), "format": fmt, "units": "mm", "colour_range": "[0, 1]"}


# ---------------------------------------------------------------- statismo (BFM 2017 / 2019)
_STATISMO_REQUIRED = (
    "shape/model/mean", "shape/model/pcaBasis", "shape/model/pcaVariance",
    "color/model/mean", "color/model/pcaBasis", "color/model/pcaVariance",
)


def is_statismo(f: h5py.File) -> bool:
    """Whether an open HDF5 file looks like a statismo morphable model (has ``shape/model``)."""
    return "shape/model/pcaBasis" in f or "shape/model/mean" in f


def _h5_string(obj) -> str:
    """A string stored in HDF5 in any of the usual ways (vlen str, fixed bytes, uint8 array)."""
    if isinstance(obj, bytes):
        return obj.decode("utf-8").rstrip("\x00")
    if isinstance(obj, str):
        return obj.rstrip("\x00")
    arr = np.asarray(obj)
    if arr.dtype.kind in ("u", "i") and arr.dtype.itemsize == 1:
        return arr.astype(np.uint8).tobytes().decode("utf-8").rstrip("\x00")
    if arr.size == 1:
        return _h5_string(arr.reshape(-1)[0])
    if arr.dtype.kind in ("S", "O", "U"):
        return "".join(_h5_string(x) for x in arr.reshape(-1))
    raise TypeError(f"cannot read a string from an array of dtype {arr.dtype} and shape {arr.shape}")


def _statismo_version(f: h5py.File, block: str) -> tuple[int, int] | None:
    for base in (f"{block}/version", "version"):
        if f"{base}/majorVersion" in f and f"{base}/minorVersion" in f:
            return int(np.asarray(f[f"{base}/majorVersion"][()]).reshape(-1)[0]), \
                int(np.asarray(f[f"{base}/minorVersion"][()]).reshape(-1)[0])
    return None


def _statismo_block(f: h5py.File, path: Path, block: str, n_vertices: int | None) -> tuple[LinearBlock, dict]:
    g = f[f"{block}/model"]
    mean = np.asarray(g["mean"][()], dtype=np.float32).reshape(-1)
    if mean.size % 3:
        raise _fail(path, f"{block}/model/mean has {mean.size} values, not a multiple of 3 (x, y, z per vertex)")
    if n_vertices is not None and mean.size != 3 * n_vertices:
        raise _fail(path, f"{block}/model/mean has {mean.size // 3} vertices but the shape model has {n_vertices}; "
                          "all blocks must share one mesh")
    variance = _vector(path, g["pcaVariance"][()], f"{block}/model/pcaVariance").astype(np.float64)
    basis_ds = g["pcaBasis"]
    if basis_ds.ndim != 2 or basis_ds.shape[0] != mean.size:
        raise _fail(path, f"{block}/model/pcaBasis: expected shape ({mean.size}, K) to match "
                          f"{block}/model/mean, got {basis_ds.shape}")
    if basis_ds.shape[1] != variance.size:
        raise _fail(path, f"{block}/model/pcaBasis has {basis_ds.shape[1]} columns but "
                          f"{block}/model/pcaVariance has {variance.size} values")
    _check_finite(path, f"{block}/model/pcaVariance", variance)
    if np.any(variance < 0):
        raise _fail(path, f"{block}/model/pcaVariance has negative entries")
    stored = np.asarray(basis_ds[()], dtype=np.float32)
    _check_finite(path, f"{block}/model/pcaBasis", stored)
    _check_finite(path, f"{block}/model/mean", mean)
    std = np.sqrt(variance)
    norms = np.sqrt(_column_sq_norms(stored))
    version = _statismo_version(f, block)
    if version == (0, 8):
        convention = "scaled"  # old statismo: pcaBasis = U * sqrt(variance)
    elif version is not None:
        convention = "orthonormal"
        if norms.size and np.max(np.abs(norms - 1.0)) > 1e-2:
            log.warning("%s: %s/model/pcaBasis should have unit columns (statismo %d.%d) but the norms span "
                        "[%.4g, %.4g]; using it as orthonormal anyway", path, block, *version,
                        norms.min(), norms.max())
    elif norms.size == 0 or np.allclose(norms, 1.0, atol=1e-2):
        convention = "orthonormal"
    elif np.allclose(norms, std, rtol=1e-2, atol=1e-6):
        convention = "scaled"
    else:
        raise _fail(path, f"{block}: no statismo version and pcaBasis columns are neither unit length nor "
                          "sqrt(pcaVariance) long; cannot tell how the basis is scaled")
    if convention == "orthonormal":
        stored *= std.astype(np.float32)[None, :]  # our own fresh array: scale in place, no copy
    basis = stored
    info = {"convention": convention}
    if "noiseVariance" in g:
        info["noise_variance"] = repr(float(np.asarray(g["noiseVariance"][()]).reshape(-1)[0]))
    if version is not None:
        info["statismo_version"] = f"{version[0]}.{version[1]}"
    return _block(path, block, mean, basis, variance), info


def _statismo_triangles(f: h5py.File, path: Path) -> np.ndarray:
    rep = "shape/representer"
    if f"{rep}/cells" in f:
        cells = np.asarray(f[f"{rep}/cells"][()])
        if cells.ndim != 2 or 3 not in cells.shape:
            raise _fail(path, f"{rep}/cells: expected shape (3, T) (statismo stores triangles column-wise), "
                              f"got {cells.shape}")
        tri = cells.T if cells.shape[0] == 3 else cells
    elif f"{rep}/reference-mesh/triangle-list" in f:  # legacy gravis representer
        tri = np.asarray(f[f"{rep}/reference-mesh/triangle-list"][()])
        if tri.ndim != 2 or tri.shape[1] != 3:
            raise _fail(path, f"{rep}/reference-mesh/triangle-list: expected shape (T, 3), got {tri.shape}")
    else:
        raise _fail(path, f"no triangles: expected the dataset {rep}/cells (3, T) of a statismo polygon-mesh "
                          "representer")
    return _index_array(path, tri, f"{rep}/cells", one_based=False)


def _statismo_landmarks(f: h5py.File, path: Path, mean: np.ndarray) -> tuple[dict, dict]:
    """Named landmarks from ``metadata/landmarks/json`` mapped to their nearest mean-shape vertices."""
    key = "metadata/landmarks/json"
    if key not in f:
        return {}, {}
    text = _h5_string(f[key][()])
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, f"{key} is not valid JSON ({e}); expected a list of "
                          '{"id": name, "coordinates": [x, y, z]}') from e
    if isinstance(parsed, dict):  # {name: [x, y, z]} as some tools write it
        items = [(str(k), v) for k, v in parsed.items()]
    elif isinstance(parsed, list):
        items = []
        for entry in parsed:
            if not isinstance(entry, dict) or "id" not in entry or "coordinates" not in entry:
                raise _fail(path, f'{key}: expected entries {{"id": name, "coordinates": [x, y, z]}}, got {entry!r:.80}')
            items.append((str(entry["id"]), entry["coordinates"]))
    else:
        raise _fail(path, f"{key}: expected a JSON list of landmarks, got {type(parsed).__name__}")
    if not items:
        return {}, {}
    names = [n for n, _ in items]
    try:
        coords = np.asarray([np.asarray(c, dtype=np.float64).reshape(3) for _, c in items])
    except (ValueError, TypeError) as e:
        raise _fail(path, f"{key}: every landmark needs 3 coordinates ({e})") from e
    _check_finite(path, key, coords)
    dist, idx = cKDTree(mean.astype(np.float64)).query(coords)
    keep = dist <= LANDMARK_MAX_DISTANCE_MM
    dropped = [n for n, k in zip(names, keep) if not k]
    if dropped:
        log.info("%s: %d named landmarks lie more than %.0f mm from the mesh and were left out: %s",
                 path, len(dropped), LANDMARK_MAX_DISTANCE_MM, ", ".join(dropped))
    meta = {
        "landmarks.bfm2017.names": json.dumps([n for n, k in zip(names, keep) if k]),
        "landmarks.bfm2017.max_distance_mm": f"{float(dist[keep].max()) if keep.any() else 0.0:.4g}",
    }
    if dropped:
        meta["landmarks.bfm2017.dropped"] = json.dumps(dropped)
    return ({"bfm2017": idx[keep].astype(np.int64)} if keep.any() else {}), meta


def read_statismo(f: h5py.File, path: Path, name: str | None = None) -> MorphableModel:
    """Build the model from an open statismo HDF5 file (see :func:`load_statismo`)."""
    missing = [k for k in _STATISMO_REQUIRED if k not in f]
    if missing:
        raise _fail(path, "not a complete statismo morphable model: missing " + ", ".join(missing)
                    + f" (found top-level entries {sorted(f.keys())}); expected a BFM 2017/2019 file such as "
                      "model2017-1_face12_nomouth.h5")
    meta = _base_metadata(path, "statismo-h5")
    shape, info = _statismo_block(f, path, "shape", None)
    n = shape.n_vertices
    meta.update({f"shape.{k}": v for k, v in info.items()})
    colour, info = _statismo_block(f, path, "color", n)
    meta.update({f"colour.{k}": v for k, v in info.items()})
    if "expression/model" in f:
        missing = [f"expression/model/{k}" for k in ("mean", "pcaBasis", "pcaVariance")
                   if f"expression/model/{k}" not in f]
        if missing:
            raise _fail(path, "incomplete expression model: missing " + ", ".join(missing))
        expression, info = _statismo_block(f, path, "expression", n)
        meta.update({f"expression.{k}": v for k, v in info.items()})
    else:
        expression = LinearBlock.empty(n)
        meta["expression"] = "none in file"
    points_key = "shape/representer/points"
    if points_key in f:
        pts_shape = f[points_key].shape
        if len(pts_shape) != 2 or pts_shape[0] != 3 or pts_shape[1] != n:
            raise _fail(path, f"{points_key}: expected shape (3, {n}) to match shape/model/mean, got {pts_shape}")
    tri = _statismo_triangles(f, path)
    landmarks, lm_meta = _statismo_landmarks(f, path, shape.mean)
    meta.update(lm_meta)
    return _make_model(path, name or Path(path).stem, shape, expression, colour, tri, landmarks, meta)


def load_statismo(path: str | Path, *, name: str | None = None) -> MorphableModel:
    """Load a BFM 2017 (or 2019) statismo HDF5 morphable model.

    Reads ``shape``, ``color`` and (if present) ``expression``: ``model/mean``
    ``(3N,)``, ``model/pcaBasis`` ``(3N, K)`` with orthonormal columns,
    ``model/pcaVariance`` ``(K,)``; triangles from ``shape/representer/cells``
    ``(3, T)``; named landmarks from ``metadata/landmarks/json`` as the set
    ``"bfm2017"`` (their names, in order, in ``metadata["landmarks.bfm2017.names"]``).
    BFM 2017 units are mm and colours are in [0, 1] already; the expression
    mean is an offset added to the shape.

    Args:
        path: the ``.h5`` file, e.g. ``model2017-1_face12_nomouth.h5``.
        name: model name; defaults to the file name without extension.

    Raises:
        ModelFileError: missing/damaged file, missing groups, inconsistent sizes, NaN.

    Example:
        >>> model = load_statismo("model2017-1_face12_nomouth.h5")   # doctest: +SKIP
        >>> model.n_shape, model.n_expression, model.n_colour         # doctest: +SKIP
        (199, 100, 199)
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found; expected a BFM 2017 statismo .h5 file")
    what = "a BFM 2017 statismo HDF5 file"
    with file_errors(path, what):
        if not h5py.is_hdf5(path):
            raise _fail(path, f"not an HDF5 file; expected {what}")
        with h5py.File(path, "r") as f:
            return read_statismo(f, path, name)


# ---------------------------------------------------------------- MATLAB files
class MatFile:
    """Read access to the variables of a MATLAB ``.mat`` file, v5 (scipy) or v7.3 (HDF5).

    ``keys()`` lists the variables; ``get(key)`` returns a numeric array in
    MATLAB's orientation (v7.3 stores arrays transposed; they are transposed back).
    Use as a context manager.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._v5: dict[str, np.ndarray] | None = None
        self._v5_names: list[str] = []
        if h5py.is_hdf5(self.path):
            self._h5 = h5py.File(self.path, "r")
        else:
            self._v5_names = [entry[0] for entry in scipy.io.whosmat(str(self.path))]

    def keys(self) -> list[str]:
        if self._h5 is not None:
            return [k for k in self._h5.keys() if isinstance(self._h5[k], h5py.Dataset)]
        return list(self._v5_names)

    def load(self, keys: Sequence[str]) -> None:
        """Read the given v5 variables in one pass (v7.3 reads lazily)."""
        if self._h5 is None:
            self._v5 = scipy.io.loadmat(str(self.path), variable_names=list(keys))

    def get(self, key: str) -> np.ndarray:
        if self._h5 is not None:
            if key not in self._h5:
                raise KeyError(key)
            ds = self._h5[key]
            data = np.asarray(ds[()])
            if data.dtype.names is not None:  # MATLAB v7.3 complex or struct
                raise TypeError(f"variable {key!r} is not a real numeric array")
            return data.T  # column-major MATLAB array → its MATLAB orientation
        if self._v5 is None or key not in self._v5:
            self._v5 = scipy.io.loadmat(str(self.path), variable_names=[key]) | (self._v5 or {})
        value = self._v5[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise TypeError(f"variable {key!r} is not a numeric array (got {type(value).__name__})")
        return value

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()

    def __enter__(self) -> "MatFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _require_keys(path: Path, present: Sequence[str], required: Sequence[str], what: str) -> None:
    missing = [k for k in required if k not in present]
    if missing:
        raise _fail(path, f"missing keys {', '.join(missing)} for {what} (it has {', '.join(sorted(present)) or 'none'}; "
                          "a file cut off while copying also looks like this)")


@dataclass(frozen=True, eq=False)
class ExpressionBasis:
    """A separate expression model to combine with a BFM 2009 file, which has none.

    Attributes:
        directions: ``(3M, K)`` basis directions, xyz interleaved per vertex, in
            the model file's length unit (micrometres for ``01_MorphableModel.mat``).
        std: ``(K,)`` standard deviations; column ``k`` of the model's expression
            basis is ``directions[:, k] * std[k]`` (converted to mm) and its
            variance the squared norm of that column.
        vertex_index: ``(M,)`` 0-based model vertices that the rows describe, or
            None when ``M`` is the model's vertex count. When given, the model is
            cropped to these vertices (triangles with a dropped vertex are removed).

    Example:
        >>> expr = ExpressionBasis(np.zeros((3 * 5, 2)), np.ones(2))
        >>> expr.n_components
        2
    """

    directions: np.ndarray
    std: np.ndarray
    vertex_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        d = np.asarray(self.directions)
        s = np.asarray(self.std, dtype=np.float64).reshape(-1)
        if d.ndim != 2 or d.shape[0] % 3 or d.shape[1] != s.size:
            raise ModelError(f"expression basis: directions must be (3M, K) with K = {s.size} std devs, got {d.shape}")
        if not (np.all(np.isfinite(d)) and np.all(np.isfinite(s))):
            raise ModelError("expression basis contains NaN or inf values")
        if self.vertex_index is not None:
            vi = np.asarray(self.vertex_index).astype(np.int64).reshape(-1)
            if vi.size != d.shape[0] // 3:
                raise ModelError(f"expression basis: vertex_index has {vi.size} entries for {d.shape[0] // 3} vertices")
            object.__setattr__(self, "vertex_index", vi)
        object.__setattr__(self, "std", s)

    @property
    def n_components(self) -> int:
        return int(np.asarray(self.directions).shape[1])


def load_exp_pca_bin(path: str | Path, std: "np.ndarray | str | Path",
                     vertex_index: np.ndarray | None = None) -> ExpressionBasis:
    """Read an ``Exp_Pca.bin`` expression basis (Guo et al.; used by Deep3DFaceRecon).

    Layout: int32 ``K``, then float32 mean ``(3M,)`` (not used: Deep3DFaceRecon
    ignores it too), then float32 ``(K, 3M)`` row-major principal components, in
    micrometres like BFM 2009. The standard deviations come separately
    (``std_exp.txt``). The file covers 53,215 of BFM 2009's 53,490 vertices: pass
    ``vertex_index = loadmat("BFM_exp_idx.mat")["trimIndex"].ravel() - 1``.

    Args:
        path: the ``.bin`` file.
        std: ``(K,)`` standard deviations, or a text file holding them.
        vertex_index: ``(M,)`` 0-based BFM 2009 vertex of each row, or None.

    Example:
        >>> expr = load_exp_pca_bin("Exp_Pca.bin", "std_exp.txt", trim - 1)   # doctest: +SKIP
        >>> model = load_bfm2009("01_MorphableModel.mat", expression=expr)    # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found; expected an Exp_Pca.bin expression basis")
    with file_errors(path, "an Exp_Pca.bin expression basis"):
        raw = path.read_bytes()
        if len(raw) < 4:
            raise _fail(path, "too short for an Exp_Pca.bin file (no component count)")
        k = int(np.frombuffer(raw[:4], dtype="<i4")[0])
        n_floats, rem = divmod(len(raw) - 4, 4)
        if k <= 0 or rem or n_floats % (k + 1) or (n_floats // (k + 1)) % 3:
            raise _fail(path, f"size {len(raw)} bytes does not fit an Exp_Pca.bin layout with {k} components "
                              "(int32 K, float32 mean (3M,), float32 basis (K, 3M)); the file may be truncated")
        m3 = n_floats // (k + 1)
        pcs = np.frombuffer(raw, dtype="<f4", offset=4 + 4 * m3, count=k * m3).reshape(k, m3).T
        if isinstance(std, (str, Path)):
            std_arr = np.loadtxt(std, dtype=np.float64).reshape(-1)
        else:
            std_arr = np.asarray(std, dtype=np.float64).reshape(-1)
        if std_arr.size != k:
            raise _fail(path, f"{k} components but {std_arr.size} standard deviations were given")
        return ExpressionBasis(np.ascontiguousarray(pcs), std_arr, vertex_index)


def _crop(mean: np.ndarray, basis: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = (3 * keep[:, None] + np.arange(3)[None, :]).reshape(-1)
    return mean.reshape(-1)[rows], basis[rows]


def _crop_triangles(tri: np.ndarray, keep: np.ndarray, n: int) -> np.ndarray:
    remap = np.full(n, -1, dtype=np.int64)
    remap[keep] = np.arange(keep.size)
    new = remap[tri]
    return new[np.all(new >= 0, axis=1)]


def read_bfm2009(mat: MatFile, path: Path, expression: ExpressionBasis | None = None,
                 name: str | None = None) -> MorphableModel:
    """Build the model from an open BFM 2009 ``.mat`` (see :func:`load_bfm2009`)."""
    _require_keys(path, mat.keys(), BFM2009_KEYS, "a BFM 2009 01_MorphableModel.mat")
    mat.load(BFM2009_KEYS)
    shape_mu = _vector(path, mat.get("shapeMU"), "shapeMU").astype(np.float64)
    if shape_mu.size % 3:
        raise _fail(path, f"shapeMU has {shape_mu.size} values, not a multiple of 3")
    n3 = shape_mu.size
    shape_ev = _vector(path, mat.get("shapeEV"), "shapeEV").astype(np.float64)
    shape_pc = _matrix(path, mat.get("shapePC"), "shapePC", n3, shape_ev.size)
    tex_mu = _vector(path, mat.get("texMU"), "texMU", n3).astype(np.float64)
    tex_ev = _vector(path, mat.get("texEV"), "texEV").astype(np.float64)
    tex_pc = _matrix(path, mat.get("texPC"), "texPC", n3, tex_ev.size)
    tl = mat.get("tl")
    if tl.ndim != 2 or tl.shape[1] != 3:
        raise _fail(path, f"tl: expected shape (T, 3) of 1-based vertex indices, got {tl.shape}")
    tri = _index_array(path, tl, "tl", one_based=True)
    for key, arr in (("shapeMU", shape_mu), ("shapeEV", shape_ev), ("shapePC", shape_pc),
                     ("texMU", tex_mu), ("texEV", tex_ev), ("texPC", tex_pc)):
        _check_finite(path, key, arr)
    # shapeEV / texEV are standard deviations: coef2object computes mu + pc * (coef .* ev).
    shape_std_mm = shape_ev * UM_TO_MM
    shape = _block(path, "shape", shape_mu * UM_TO_MM, _scaled_basis(shape_pc, shape_std_mm), shape_std_mm ** 2)
    tex_std = tex_ev * BYTE_TO_UNIT
    colour = _block(path, "colour", tex_mu * BYTE_TO_UNIT, _scaled_basis(tex_pc, tex_std), tex_std ** 2)
    meta = _base_metadata(path, "bfm2009-mat")
    n = shape.n_vertices
    if expression is None:
        expr_block = LinearBlock.empty(n)
        meta["expression"] = "none in file"
    else:
        if not isinstance(expression, ExpressionBasis):
            raise InvalidInputError(f"expression= must be an ExpressionBasis (see load_exp_pca_bin), "
                                    f"got {type(expression).__name__}")
        d = np.asarray(expression.directions)
        m = d.shape[0] // 3
        keep = expression.vertex_index
        if keep is None:
            if m != n:
                raise _fail(path, f"the expression basis covers {m} vertices but the model has {n}; "
                                  "pass ExpressionBasis(vertex_index=...) to crop the model to them")
        else:
            if keep.min() < 0 or keep.max() >= n:
                raise _fail(path, f"expression vertex_index must lie in [0, {n}) (0-based), "
                                  f"got [{keep.min()}, {keep.max()}]")
            smean, sbasis = _crop(shape.mean, shape.basis, keep)
            cmean, cbasis = _crop(colour.mean, colour.basis, keep)
            shape = _block(path, "shape", smean, sbasis, shape.variance)
            colour = _block(path, "colour", cmean, cbasis, colour.variance)
            tri = _crop_triangles(tri, keep, n)
            meta["cropped_to_expression_vertices"] = str(keep.size)
            n = keep.size
        ebasis = _scaled_basis(d, expression.std * UM_TO_MM)
        expr_block = _block(path, "expression", np.zeros(3 * n), ebasis, _column_sq_norms(ebasis))
        meta["expression"] = f"separate basis, {expression.n_components} components"
    return _make_model(path, name or Path(path).stem, shape, expr_block, colour, tri, {}, meta)


def read_bfm_front(mat: MatFile, path: Path, name: str | None = None) -> MorphableModel:
    """Build the model from an open ``BFM_model_front.mat`` (see :func:`load_bfm_front`)."""
    keys = mat.keys()
    _require_keys(path, keys, BFM_FRONT_KEYS, "a Deep3DFaceRecon BFM_model_front.mat")
    wanted = list(BFM_FRONT_KEYS) + (["keypoints"] if "keypoints" in keys else [])
    mat.load(wanted)
    mean = _vector(path, mat.get("meanshape"), "meanshape").astype(np.float64)
    if mean.size % 3:
        raise _fail(path, f"meanshape has {mean.size} values, not a multiple of 3")
    n3 = mean.size
    id_base = _matrix(path, mat.get("idBase"), "idBase", n3)
    ex_base = _matrix(path, mat.get("exBase"), "exBase", n3)
    tex_mean = _vector(path, mat.get("meantex"), "meantex", n3).astype(np.float64)
    tex_base = _matrix(path, mat.get("texBase"), "texBase", n3)
    tri_raw = mat.get("tri")
    if tri_raw.ndim != 2 or tri_raw.shape[1] != 3:
        raise _fail(path, f"tri: expected shape (T, 3) of 1-based vertex indices, got {tri_raw.shape}")
    tri = _index_array(path, tri_raw, "tri", one_based=True)
    for key, arr in (("meanshape", mean), ("idBase", id_base), ("exBase", ex_base),
                     ("meantex", tex_mean), ("texBase", tex_base)):
        _check_finite(path, key, arr)
    landmarks = {}
    if "keypoints" in wanted:
        kp = _index_array(path, _vector(path, mat.get("keypoints"), "keypoints"), "keypoints", one_based=True)
        if kp.size != 68:
            raise _fail(path, f"keypoints: expected the 68 iBUG landmark vertices, got {kp.size}")
        landmarks["ibug68"] = kp
    # The bases are already multiplied by the standard deviations (idBase = shapePC * shapeEV / 1e5).
    shape_b = _scaled_basis(id_base, np.full(id_base.shape[1], DM_TO_MM))
    expr_b = _scaled_basis(ex_base, np.full(ex_base.shape[1], DM_TO_MM))
    tex_b = _scaled_basis(tex_base, np.full(tex_base.shape[1], BYTE_TO_UNIT))
    shape = _block(path, "shape", mean * DM_TO_MM, shape_b, _column_sq_norms(shape_b))
    expression = _block(path, "expression", np.zeros(n3), expr_b, _column_sq_norms(expr_b))
    colour = _block(path, "colour", tex_mean * BYTE_TO_UNIT, tex_b, _column_sq_norms(tex_b))
    meta = _base_metadata(path, "bfm-front-mat")
    return _make_model(path, name or Path(path).stem, shape, expression, colour, tri, landmarks, meta)


def _open_mat(path: Path, what: str) -> MatFile:
    if not path.is_file():
        raise _fail(path, f"file not found; expected {what}")
    return MatFile(path)


def load_bfm2009(path: str | Path, *, expression: ExpressionBasis | None = None,
                 name: str | None = None) -> MorphableModel:
    """Load the Basel Face Model 2009 ``01_MorphableModel.mat`` (MATLAB v5 or v7.3).

    ``shapeMU`` ``(3N, 1)`` is in micrometres and becomes mm; ``shapePC`` has
    orthonormal columns and ``shapeEV`` holds their *standard deviations*
    (the BFM's ``coef2object`` computes ``mu + pc * (coef .* ev)``), so a basis
    column is ``shapePC[:, k] * shapeEV[k]``; ``texMU``/``texPC``/``texEV``
    likewise in [0, 255] → [0, 1]; ``tl`` are 1-based triangles. The file has no
    expressions; pass ``expression=`` (e.g. :func:`load_exp_pca_bin`) to add some.

    Args:
        path: the ``.mat`` file.
        expression: optional separate expression basis (see :class:`ExpressionBasis`).
        name: model name; defaults to the file name without extension.

    Raises:
        ModelFileError: missing/damaged file, missing keys (named), inconsistent sizes, NaN.

    Example:
        >>> model = load_bfm2009("01_MorphableModel.mat")    # doctest: +SKIP
        >>> model.n_vertices, model.n_shape                  # doctest: +SKIP
        (53490, 199)
    """
    path = Path(path)
    what = "a BFM 2009 01_MorphableModel.mat"
    with file_errors(path, what), _open_mat(path, what) as mat:
        return read_bfm2009(mat, path, expression, name)


def load_bfm_front(path: str | Path, *, name: str | None = None) -> MorphableModel:
    """Load Deep3DFaceRecon's front crop ``BFM_model_front.mat`` (35,709 vertices).

    ``meanshape`` ``(1, 3N)`` is BFM 2009 micrometres / 1e5 (decimetres) and
    becomes mm (× 100); ``idBase`` (3N, 80) and ``exBase`` (3N, 64) are already
    multiplied by their standard deviations (so their variance is the squared
    column norm); ``meantex``/``texBase`` are in [0, 255]; ``tri`` are 1-based
    triangles and ``keypoints`` the 1-based vertices of the 68 iBUG landmarks,
    stored as the landmark set ``"ibug68"``.

    Args:
        path: the ``.mat`` file (MATLAB v5 or v7.3).
        name: model name; defaults to the file name without extension.

    Raises:
        ModelFileError: missing/damaged file, missing keys (named), inconsistent sizes, NaN.

    Example:
        >>> model = load_bfm_front("BFM/BFM_model_front.mat")       # doctest: +SKIP
        >>> model.landmark_indices("ibug68").shape                  # doctest: +SKIP
        (68,)
    """
    path = Path(path)
    what = "a Deep3DFaceRecon BFM_model_front.mat"
    with file_errors(path, what), _open_mat(path, what) as mat:
        return read_bfm_front(mat, path, name)


def mat_layout(keys: Sequence[str]) -> str | None:
    """``"bfm2009-mat"``, ``"bfm-front-mat"`` or None, from a ``.mat`` file's variable names."""
    b09 = sum(k in keys for k in BFM2009_KEYS)
    front = sum(k in keys for k in BFM_FRONT_KEYS)
    if b09 == 0 and front == 0:
        return None
    return "bfm2009-mat" if b09 / len(BFM2009_KEYS) >= front / len(BFM_FRONT_KEYS) else "bfm-front-mat"


def mat_keys_error(path: Path, keys: Sequence[str]) -> ModelFileError:
    """The error for a ``.mat`` file that holds neither known model layout."""
    return _fail(path, "a .mat file without the keys of a known model: expected "
                       f"{', '.join(BFM2009_KEYS)} (BFM 2009 01_MorphableModel.mat) or "
                       f"{', '.join(BFM_FRONT_KEYS)} (Deep3DFaceRecon BFM_model_front.mat); "
                       f"it has {', '.join(sorted(keys)) or 'no variables'}")
