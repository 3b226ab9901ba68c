"""Model files: one loader that recognises the format by content, fitem's own format, and a summary.

Formats :func:`load_model_file` reads (recognised by the bytes, not the name):

- fitem's own format, written by :func:`save_model`: ``.npz`` (a NumPy zip
  without object arrays, read with ``allow_pickle=False``) or ``.h5`` (HDF5);
  both hold every field of a :class:`MorphableModel`, a format version and
  the model's checksum, which the loader verifies.
- BFM 2017/2019 statismo HDF5 (``model2017-1_face12_nomouth.h5`` ...).
- BFM 2009 ``01_MorphableModel.mat``, MATLAB v5 or v7.3.
- Deep3DFaceRecon's ``BFM_model_front.mat``.

See :mod:`fitem.models.io_bfm` for what each BFM file stores and how it is
converted to fitem's conventions (mm, colours in [0, 1], 0-based outward
triangles, basis columns scaled by the standard deviation).

fitem format, version 1 (the same keys in ``.npz`` and ``.h5``):

=================== ============== ===========================================
key                 type           content
=================== ============== ===========================================
``fitem_format``    str            ``"fitem-morphable-model"``
``format_version``  int            1
``name``            str            model name
``checksum``        str            :attr:`MorphableModel.checksum` when written
``{b}_mean``        float32 (N, 3) for ``b`` in shape, expression, colour
``{b}_basis``       float32 (3N,K) columns scaled by the std dev
``{b}_variance``    float32 (K,)
``triangles``       int64 (T, 3)   0-based, counter-clockwise from outside
``landmark_names``  str (L,)       landmark set names, in order
``landmark_{i}``    int64 (n_i,)   vertex indices of set ``i``
``metadata_keys``   str (M,)       metadata keys
``metadata_values`` str (M,)       metadata values
=================== ============== ===========================================

In ``.h5`` files the two header strings are also root attributes.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fitem.errors import InvalidInputError, ModelFileError
from fitem.models.io_bfm import (
    ExpressionBasis,
    MatFile,
    file_errors,
    is_statismo,
    load_bfm2009,
    load_bfm_front,
    load_exp_pca_bin,
    load_statismo,
    mat_layout,
    orient_outward,
    mat_keys_error,
)
from fitem.models.morphable import LinearBlock, MorphableModel

__all__ = [
    "FITEM_FORMAT",
    "FORMAT_VERSION",
    "ExpressionBasis",
    "detect_model_format",
    "load_bfm2009",
    "load_bfm_front",
    "load_exp_pca_bin",
    "load_fitem",
    "load_model_file",
    "load_statismo",
    "model_summary",
    "orient_outward",
    "save_model",
]

log = logging.getLogger(__name__)

#: Value of the ``fitem_format`` key that marks a fitem model file.
FITEM_FORMAT = "fitem-morphable-model"
#: Version of the fitem model file layout written by :func:`save_model`.
FORMAT_VERSION = 1

_BLOCKS = ("shape", "expression", "colour")
_REQUIRED = (
    ("fitem_format", "format_version", "name", "checksum", "triangles", "landmark_names",
     "metadata_keys", "metadata_values")
    + tuple(f"{b}_{part}" for b in _BLOCKS for part in ("mean", "basis", "variance"))
)
_ZIP_MAGIC = b"PK\x03\x04"

_FORMAT_DESCRIPTIONS = {
    "fitem-npz": "a fitem model (.npz)",
    "fitem-h5": "a fitem model (.h5)",
    "statismo-h5": "a BFM 2017/2019 statismo HDF5 file",
    "bfm2009-mat": "a BFM 2009 01_MorphableModel.mat",
    "bfm-front-mat": "a Deep3DFaceRecon BFM_model_front.mat",
}
_EXPECTED = ("a fitem model (.npz/.h5), a BFM 2017/2019 statismo .h5, a BFM 2009 01_MorphableModel.mat "
             "or a Deep3DFaceRecon BFM_model_front.mat")


# ---------------------------------------------------------------- detection
def _head(path: Path, n: int = 128) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _h5_kind(f: h5py.File) -> str | None:
    if f.attrs.get("fitem_format") is not None or "fitem_format" in f:
        return "fitem-h5"
    if is_statismo(f):
        return "statismo-h5"
    return mat_layout([k for k in f.keys() if isinstance(f[k], h5py.Dataset)])


def detect_model_format(path: str | Path) -> str:
    """Which model format a file holds, from its content.

    Returns one of ``"fitem-npz"``, ``"fitem-h5"``, ``"statismo-h5"`` (BFM
    2017/2019), ``"bfm2009-mat"``, ``"bfm-front-mat"``.

    Raises:
        ModelFileError: the file is missing, unreadable, or none of these.

    Example:
        >>> detect_model_format("model2017-1_face12_nomouth.h5")   # doctest: +SKIP
        'statismo-h5'
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found; expected {_EXPECTED}")
    with file_errors(path, _EXPECTED):
        head = _head(path)
        if head.startswith(_ZIP_MAGIC):
            with np.load(path, allow_pickle=False) as z:
                if "fitem_format" not in z.files:
                    raise ModelFileError(f"{path}: a .npz without the key 'fitem_format', so not a fitem model "
                                         f"(keys: {', '.join(z.files[:12]) or 'none'}); write models with "
                                         "fitem.models.io.save_model")
            return "fitem-npz"
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                kind = _h5_kind(f)
                if kind is None and head.startswith(b"MATLAB"):
                    raise mat_keys_error(path, [k for k in f.keys() if isinstance(f[k], h5py.Dataset)])
                if kind is None:
                    raise ModelFileError(
                        f"{path}: an HDF5 file without the groups of a known model: expected the statismo groups "
                        "shape/model, color/model (BFM 2017/2019), a fitem model (attribute fitem_format) or the "
                        "variables of a MATLAB v7.3 01_MorphableModel.mat / BFM_model_front.mat; found top-level "
                        f"entries {sorted(f.keys())}")
                return kind
        if head.startswith(b"MATLAB") or path.suffix.lower() == ".mat":
            with MatFile(path) as mat:
                kind = mat_layout(mat.keys())
                if kind is None:
                    raise mat_keys_error(path, mat.keys())
                return kind
    raise ModelFileError(f"{path}: not a recognised model file (neither HDF5, MATLAB .mat nor .npz; starts with "
                         f"{head[:16]!r}); expected {_EXPECTED}")


# ---------------------------------------------------------------- loading
def load_model_file(path: str | Path, *, expression: ExpressionBasis | None = None,
                    name: str | None = None) -> MorphableModel:
    """Load a morphable model file, recognising its format by content.

    Args:
        path: a fitem ``.npz``/``.h5``, BFM 2017/2019 ``.h5``, BFM 2009
            ``01_MorphableModel.mat`` (v5 or v7.3) or ``BFM_model_front.mat``.
        expression: a separate expression basis for a BFM 2009 file (which has
            none), see :class:`~fitem.models.io_bfm.ExpressionBasis`; an error
            for any other format.
        name: overrides the model name (default: the stored name for fitem
            files, the file name without extension otherwise).

    Returns:
        The model in fitem's conventions (mm, colours [0, 1], 0-based outward triangles).

    Raises:
        ModelFileError: missing, truncated or foreign file, missing groups or
            keys (named), inconsistent sizes, NaN, checksum mismatch.
        InvalidInputError: ``expression=`` given for a format that has its own.

    Example:
        >>> model = load_model_file(Path("model2017-1_face12_nomouth.h5"))   # doctest: +SKIP
        >>> save_model(model, "bfm2017-face12.npz")                          # doctest: +SKIP
        >>> load_model_file("bfm2017-face12.npz").checksum == model.checksum # doctest: +SKIP
        True
    """
    path = Path(path)
    kind = detect_model_format(path)

    if expression is not None and kind != "bfm2009-mat":
        raise InvalidInputError(
            f"expression= is only used with BFM 2009 01_MorphableModel.mat files, which have no expression model; "
            f"{path} is {_FORMAT_DESCRIPTIONS[kind]}")
    if kind in ("fitem-npz", "fitem-h5"):
        model = load_fitem(path)
        if name is not None and name != model.name:
            model = MorphableModel(name, model.shape, model.expression, model.colour, model.triangles,
                                   model.landmarks, model.metadata)
        return model
    if kind == "statismo-h5":
        return load_statismo(path, name=name)
    if kind == "bfm2009-mat":
        return load_bfm2009(path, expression=expression, name=name)
    return load_bfm_front(path, name=name)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    arr = np.asarray(value)
    if arr.ndim == 0:
        item = arr.item()
        return item.decode("utf-8") if isinstance(item, bytes) else str(item)
    raise TypeError(f"expected a single string, got an array of shape {arr.shape}")


def _texts(value: Any) -> list[str]:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise TypeError(f"expected a 1-D array of strings, got shape {arr.shape}")
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.tolist()]


def _read_fitem_arrays(path: Path, kind: str) -> dict[str, Any]:
    if kind == "fitem-npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    with h5py.File(path, "r") as f:
        out: dict[str, Any] = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        for k in ("fitem_format", "format_version"):
            if k not in out and k in f.attrs:
                out[k] = f.attrs[k]
        return out


def load_fitem(path: str | Path) -> MorphableModel:
    """Load a model written by :func:`save_model` (``.npz`` or ``.h5``) and verify its checksum.

    Raises:
        ModelFileError: missing/damaged file, missing keys, a newer format
            version, or content whose checksum differs from the stored one.

    Example:
        >>> model = load_fitem("my_model.npz")   # doctest: +SKIP
    """
    path = Path(path)
    what = "a fitem model file"
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found; expected {what} (.npz or .h5)")
    with file_errors(path, what):
        kind = "fitem-npz" if _head(path, 4).startswith(_ZIP_MAGIC) else "fitem-h5"
        if kind == "fitem-h5" and not h5py.is_hdf5(path):
            raise ModelFileError(f"{path}: neither a .npz (zip) nor an HDF5 file; expected {what}")
        data = _read_fitem_arrays(path, kind)
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ModelFileError(f"{path}: not a complete fitem model file, missing {', '.join(missing)}")
        fmt = _text(data["fitem_format"])
        if fmt != FITEM_FORMAT:
            raise ModelFileError(f"{path}: fitem_format is {fmt!r}, expected {FITEM_FORMAT!r}")
        version = int(np.asarray(data["format_version"]).reshape(-1)[0])
        if version > FORMAT_VERSION or version < 1:
            raise ModelFileError(f"{path}: fitem model format version {version}, this fitem reads versions "
                                 f"1..{FORMAT_VERSION}; upgrade fitem to read it")
        blocks = {b: LinearBlock(data[f"{b}_mean"], data[f"{b}_basis"], data[f"{b}_variance"]) for b in _BLOCKS}
        lm_names = _texts(data["landmark_names"])
        missing = [f"landmark_{i}" for i in range(len(lm_names)) if f"landmark_{i}" not in data]
        if missing:
            raise ModelFileError(f"{path}: landmark_names lists {len(lm_names)} sets but {', '.join(missing)} "
                                 "are missing")
        landmarks = {n: np.asarray(data[f"landmark_{i}"]) for i, n in enumerate(lm_names)}
        keys, values = _texts(data["metadata_keys"]), _texts(data["metadata_values"])
        if len(keys) != len(values):
            raise ModelFileError(f"{path}: {len(keys)} metadata keys but {len(values)} values")
        tri = np.asarray(data["triangles"])
        if tri.ndim != 2 or tri.shape[1] != 3:
            raise ModelFileError(f"{path}: triangles: expected shape (T, 3), got {tri.shape}")
        model = MorphableModel(
            name=_text(data["name"]), shape=blocks["shape"], expression=blocks["expression"],
            colour=blocks["colour"], triangles=tri, landmarks=landmarks, metadata=dict(zip(keys, values)),
        )
        stored = _text(data["checksum"])
        if model.checksum != stored:
            raise ModelFileError(
                f"{path}: checksum mismatch: the file records {stored} but its content gives {model.checksum}; "
                "the file is damaged or was edited outside fitem. Re-create it from the original model file "
                "with fitem.models.io.save_model.")
        return model


# ---------------------------------------------------------------- saving
def _fitem_arrays(model: MorphableModel) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {
        "fitem_format": np.array(FITEM_FORMAT),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "name": np.array(model.name),
        "checksum": np.array(model.checksum),
    }
    for b in _BLOCKS:
        block: LinearBlock = getattr(model, b)
        out[f"{b}_mean"] = block.mean
        out[f"{b}_basis"] = block.basis
        out[f"{b}_variance"] = block.variance
    out["triangles"] = np.asarray(model.triangles, dtype=np.int64)
    names = list(model.landmarks)
    out["landmark_names"] = np.array(names, dtype=str)
    for i, n in enumerate(names):
        out[f"landmark_{i}"] = np.asarray(model.landmarks[n], dtype=np.int64)
    out["metadata_keys"] = np.array(list(model.metadata.keys()), dtype=str)
    out["metadata_values"] = np.array(list(model.metadata.values()), dtype=str)
    return out


def _write_h5(tmp: Path, arrays: dict[str, np.ndarray], compress: bool) -> None:
    with h5py.File(tmp, "w") as f:
        f.attrs["fitem_format"] = FITEM_FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        for key, arr in arrays.items():
            if arr.dtype.kind == "U":
                if arr.ndim == 0:
                    f.create_dataset(key, data=str(arr), dtype=h5py.string_dtype())
                else:
                    f.create_dataset(key, data=np.array(arr.tolist(), dtype=object), dtype=h5py.string_dtype(),
                                     shape=arr.shape)
            elif compress and arr.size > 1024:
                f.create_dataset(key, data=arr, compression="gzip", compression_opts=4, shuffle=True)
            else:
                f.create_dataset(key, data=arr)


def save_model(model: MorphableModel, path: str | Path, *, compress: bool = False) -> Path:
    """Write ``model`` in fitem's format: ``.npz`` or ``.h5`` (by the file extension).

    The write goes to a temporary file in the same folder that then replaces
    ``path``, so an interrupted save never leaves a half-written model. The
    file records the format version and the model's checksum;
    :func:`load_model_file` verifies it.

    Args:
        model: the model to write.
        path: destination ending in ``.npz``, ``.h5`` or ``.hdf5``.
        compress: zip-deflate (``.npz``) or gzip (``.h5``) the arrays: smaller, slower.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ModelFileError: unsupported extension or the folder is not writable.

    Example:
        >>> save_model(model, "bfm2017-face12.npz")   # doctest: +SKIP
        PosixPath('bfm2017-face12.npz')
    """
    if not isinstance(model, MorphableModel):
        raise InvalidInputError(f"save_model needs a MorphableModel, got {type(model).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".h5", ".hdf5"):
        raise ModelFileError(f"{path}: cannot save a model as {suffix or 'a file without extension'}; "
                             "use a .npz or .h5 file name")
    arrays = _fitem_arrays(model)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot write to the folder {folder}: {e}") from e
    tmp = Path(tmp_name)
    try:
        if suffix == ".npz":
            with os.fdopen(fd, "wb") as fh:
                (np.savez_compressed if compress else np.savez)(fh, **arrays)
        else:
            os.close(fd)
            _write_h5(tmp, arrays, compress)
        os.replace(tmp, path)
    except OSError as e:
        raise ModelFileError(f"{path}: writing the model failed: {e}") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("saved model %r (%s) to %s", model.name, model.checksum, path)
    return path


# ---------------------------------------------------------------- summary
def model_summary(model: MorphableModel) -> dict[str, Any]:
    """A JSON-serialisable description of a model (for ``fitem model info``).

    Returns:
        ``{"name", "checksum", "vertices", "triangles", "components": {"shape",
        "expression", "colour"}, "landmarks": {set: count}, "extent_mm": [dx,
        dy, dz] of the mean shape's bounding box, "metadata": {...}}``.

    Example:
        >>> model_summary(model)["components"]          # doctest: +SKIP
        {'shape': 199, 'expression': 100, 'colour': 199}
    """
    if not isinstance(model, MorphableModel):
        raise InvalidInputError(f"model_summary needs a MorphableModel, got {type(model).__name__}")
    mean = model.shape.mean + model.expression.mean
    extent = (mean.max(axis=0) - mean.min(axis=0)).tolist() if mean.size else [0.0, 0.0, 0.0]
    return {
        "name": model.name,
        "checksum": model.checksum,
        "vertices": model.n_vertices,
        "triangles": model.n_triangles,
        "components": {"shape": model.n_shape, "expression": model.n_expression, "colour": model.n_colour},
        "landmarks": {k: int(v.size) for k, v in model.landmarks.items()},
        "extent_mm": [round(float(x), 3) for x in extent],
        "metadata": dict(model.metadata),
    }

