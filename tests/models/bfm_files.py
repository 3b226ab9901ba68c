"""Writers for small random morphable models in the exact layouts of the real BFM files.

The Basel Face Models are licensed and cannot ship with fitem, so the loader
tests write files with the same key names, shapes, dtypes, units and
conventions (1-based MATLAB triangles, micrometres, standard deviations,
statismo's (3, T) cells, MATLAB v7.3's transposed HDF5 storage) and check
what the loaders make of them.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.io


@dataclass
class Face:
    """A random linear face model in mm / [0, 1] units, with orthonormal bases."""

    mean: np.ndarray  # (N, 3) mm
    shape_u: np.ndarray  # (3N, Ks) orthonormal
    shape_std: np.ndarray  # (Ks,) mm
    expr_mean: np.ndarray  # (N, 3) mm offset
    expr_u: np.ndarray  # (3N, Ke)
    expr_std: np.ndarray  # (Ke,)
    colour_mean: np.ndarray  # (N, 3) [0, 1]
    colour_u: np.ndarray  # (3N, Kc)
    colour_std: np.ndarray  # (Kc,)
    tri_out: np.ndarray  # (T, 3) 0-based, wound outwards
    centre: np.ndarray  # (3,) centre of the sphere the mesh lies on

    @property
    def n(self) -> int:
        return self.mean.shape[0]


def cap_mesh(n_lon: int = 9, n_lat: int = 8, radius: float = 80.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A face-like open mesh: the front part of a sphere (+z out), and outward triangles."""
    lon = np.linspace(-1.2, 1.2, n_lon)
    lat = np.linspace(-1.0, 1.0, n_lat)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    centre = np.array([0.0, 10.0, -20.0])
    v = np.stack([radius * np.cos(la) * np.sin(lo), radius * np.sin(la), radius * np.cos(la) * np.cos(lo)], -1)
    v = v.reshape(-1, 3) + centre
    tri = []
    for i in range(n_lat - 1):
        for j in range(n_lon - 1):
            a, b, c, d = i * n_lon + j, i * n_lon + j + 1, (i + 1) * n_lon + j, (i + 1) * n_lon + j + 1
            tri += [[a, b, d], [a, d, c]]
    tri = np.array(tri, dtype=np.int64)
    # make every triangle point away from the sphere centre
    n = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    out = np.einsum("ij,ij->i", n, v[tri].mean(1) - centre) > 0
    tri[~out] = tri[~out][:, [0, 2, 1]]
    return v, tri, centre


def orthonormal(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    return q


def random_face(seed: int = 0, ks: int = 5, ke: int = 4, kc: int = 6) -> Face:
    rng = np.random.default_rng(seed)
    v, tri, centre = cap_mesh()
    n3 = 3 * v.shape[0]
    return Face(
        mean=v,
        shape_u=orthonormal(rng, n3, ks), shape_std=np.sort(rng.uniform(5, 40, ks))[::-1],
        expr_mean=rng.normal(0, 0.5, v.shape), expr_u=orthonormal(rng, n3, ke),
        expr_std=np.sort(rng.uniform(1, 10, ke))[::-1],
        colour_mean=rng.uniform(0.3, 0.8, v.shape), colour_u=orthonormal(rng, n3, kc),
        colour_std=np.sort(rng.uniform(0.05, 0.3, kc))[::-1],
        tri_out=tri, centre=centre,
    )


def expected(face: Face, cs=None, ce=None, cc=None, expression: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Geometry (mm) and colour ([0, 1]) of ``face`` for coefficients in std devs, in float64."""
    cs = np.zeros(face.shape_std.size) if cs is None else np.asarray(cs, float)
    cc = np.zeros(face.colour_std.size) if cc is None else np.asarray(cc, float)
    geo = face.mean.reshape(-1) + face.shape_u @ (cs * face.shape_std)
    if expression:
        ce = np.zeros(face.expr_std.size) if ce is None else np.asarray(ce, float)
        geo = geo + face.expr_mean.reshape(-1) + face.expr_u @ (ce * face.expr_std)
    col = face.colour_mean.reshape(-1) + face.colour_u @ (cc * face.colour_std)
    return geo.reshape(-1, 3), col.reshape(-1, 3)


# ---------------------------------------------------------------- statismo (BFM 2017)
def write_statismo(path: Path, face: Face, *, landmarks: list | None = None, version: tuple | None = (0, 9),
                   inward: bool = False, expression: bool = True, basis_override: dict | None = None) -> Path:
    """Write ``face`` like ``model2017-1_face12_nomouth.h5`` (statismo 0.9, mm, orthonormal pcaBasis).

    ``version=(0, 8)`` writes the old statismo convention (pcaBasis already × sqrt(variance));
    ``version=None`` omits the version groups. ``inward`` stores triangles wound inwards.
    ``basis_override`` maps ``"shape"`` etc. to a pcaBasis array written instead.
    """
    tri = face.tri_out[:, [0, 2, 1]] if inward else face.tri_out
    blocks = {"shape": (face.mean, face.shape_u, face.shape_std),
              "color": (face.colour_mean, face.colour_u, face.colour_std)}
    if expression:
        blocks["expression"] = (face.expr_mean, face.expr_u, face.expr_std)
    with h5py.File(path, "w") as f:
        if version is not None:
            f.create_dataset("version/majorVersion", data=np.int32(version[0]))
            f.create_dataset("version/minorVersion", data=np.int32(version[1]))
        for name, (mean, u, std) in blocks.items():
            basis = u * std[None, :] if version == (0, 8) else u
            if basis_override and name in basis_override:
                basis = basis_override[name]
            g = f.create_group(name)
            g.create_dataset("model/mean", data=mean.reshape(-1).astype(np.float32))
            g.create_dataset("model/pcaBasis", data=np.asarray(basis, dtype=np.float32))
            g.create_dataset("model/pcaVariance", data=(std ** 2).astype(np.float32))
            g.create_dataset("model/noiseVariance", data=np.array([0.0], dtype=np.float32))
            g.create_dataset("modelinfo/build-time", data="Thu Jun 01 12:00:00 CEST 2017")
            g.create_dataset("modelinfo/scores", data=np.zeros((1, 1), np.float32))
            if version is not None:
                g.create_dataset("version/majorVersion", data=np.int32(version[0]))
                g.create_dataset("version/minorVersion", data=np.int32(version[1]))
            rep = g.create_group("representer")
            rep.attrs["name"] = {"shape": "gravis::MeshShapeRepresenter", "color": "gravis::MeshColorRepresenter",
                                 "expression": "gravis::MeshExpressionRepresenter"}[name]
            rep.attrs["datasetType"] = "POLYGON_MESH"
            rep.create_dataset("points", data=face.mean.T.astype(np.float32))  # (3, N)
            rep.create_dataset("cells", data=tri.T.astype(np.int32))  # (3, T)
            if name == "color":
                rep.create_dataset("colorspace", data=np.bytes_(b"RGB\x00"))  # fixed-length, 0-terminated as statismo writes it
        meta = f.create_group("metadata")
        if landmarks is not None:
            text = json.dumps([{"id": n, "coordinates": list(map(float, xyz)),
                                "uncertainty": {"pcvectors": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                                "stddevs": [1.0, 1.0, 1.0]}} for n, xyz in landmarks])
            meta.create_dataset("landmarks/json", data=text, dtype=h5py.string_dtype())
    return path


# ---------------------------------------------------------------- BFM 2009 .mat
def bfm2009_arrays(face: Face, tl_dtype=np.float64, inward: bool = True) -> dict[str, np.ndarray]:
    """``01_MorphableModel.mat`` variables in MATLAB orientation: µm, 0-255, std devs, 1-based ``tl``."""
    tri = face.tri_out[:, [0, 2, 1]] if inward else face.tri_out
    return {
        "shapeMU": (face.mean.reshape(-1, 1) * 1e3),
        "shapePC": face.shape_u.copy(),
        "shapeEV": (face.shape_std * 1e3).reshape(-1, 1),
        "texMU": face.colour_mean.reshape(-1, 1) * 255.0,
        "texPC": face.colour_u.copy(),
        "texEV": (face.colour_std * 255.0).reshape(-1, 1),
        "tl": (tri + 1).astype(tl_dtype),
        "segbin": np.ones((face.n, 4), np.uint8),
    }


def write_mat_v5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    scipy.io.savemat(str(path), arrays, format="5", do_compression=True)
    return path


def write_mat_v73(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A MATLAB v7.3 file: HDF5 with a 512-byte MATLAB header, every array stored transposed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, arr in arrays.items():
            arr = np.asarray(arr)
            ds = f.create_dataset(key, data=np.ascontiguousarray(arr.T))  # column-major → reversed dims
            cls = {"f": "double" if arr.dtype == np.float64 else "single", "i": "int32", "u": "uint8"}[arr.dtype.kind]
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + struct.pack("<H", 0x0200) + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header.ljust(512, b"\x00"))
    return path


# ---------------------------------------------------------------- Deep3DFaceRecon front crop
def front_arrays(face: Face, keep: np.ndarray, k_id: int = 4, k_tex: int = 5,
                 keypoints: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``BFM_model_front.mat`` made from ``face`` the way Deep3DFaceRecon's ``transferBFM09`` does.

    ``keep`` are the 0-based vertices of the crop; bases are × std dev / 1e5 (µm → dm),
    ``exBase`` uses the face's expression basis; ``tri`` and ``keypoints`` are 1-based.
    """
    b09 = bfm2009_arrays(face, inward=False)
    n = face.n
    id_base = (b09["shapePC"] * b09["shapeEV"].reshape(1, -1) / 1e5)[:, :k_id]
    ex_base = face.expr_u * (face.expr_std * 1e3).reshape(1, -1) / 1e5
    tex_base = (b09["texPC"] * b09["texEV"].reshape(1, -1))[:, :k_tex]

    def crop(m: np.ndarray) -> np.ndarray:
        return m.reshape(n, 3, -1)[keep].reshape(3 * keep.size, -1)

    remap = np.full(n, -1)
    remap[keep] = np.arange(keep.size)
    tri = remap[face.tri_out]
    tri = tri[np.all(tri >= 0, axis=1)]
    kp = np.arange(68) if keypoints is None else keypoints
    return {
        "meanshape": (b09["shapeMU"].reshape(-1, 3)[keep] / 1e5).reshape(1, -1),
        "meantex": b09["texMU"].reshape(-1, 3)[keep].reshape(1, -1),
        "idBase": crop(id_base), "exBase": crop(ex_base), "texBase": crop(tex_base),
        "tri": (tri + 1).astype(np.float64),
        "keypoints": (kp + 1).reshape(1, -1).astype(np.float64),
        "point_buf": np.ones((keep.size, 8)), "tri_mask2": (tri[:10] + 1).astype(np.float64),
        "frontmask2_idx": np.arange(1, keep.size + 1).reshape(-1, 1).astype(np.float64),
        "skinmask": np.ones((1, keep.size)),
    }


def write_exp_pca_bin(path: Path, directions: np.ndarray, mean: np.ndarray | None = None) -> Path:
    """Guo et al.'s ``Exp_Pca.bin``: int32 K, float32 mean (3M,), float32 (K, 3M) row-major."""
    m3, k = directions.shape
    mean = np.zeros(m3) if mean is None else mean
    with open(path, "wb") as fh:
        fh.write(np.int32(k).tobytes())
        fh.write(mean.astype("<f4").tobytes())
        fh.write(np.ascontiguousarray(directions.T).astype("<f4").tobytes())
    return path
