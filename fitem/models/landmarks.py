"""iBUG-68 landmark vertices for a model that has none, picked on a render of its mean face.

:func:`fitem.fit` needs the mesh vertices of the 68 iBUG landmarks (the
landmark set ``"ibug68"``). The Basel files do not store them (BFM 2017 has a
few named points, loaded as the set ``"bfm2017"``; BFM 2009 has none), and
neither does a mesh of your own. :func:`ibug68_from_render` picks them
automatically:

1. render the mean face (mean shape + mean expression, mean colour) frontally
   with fitem's own renderer (:func:`fitem.render.render`, pure-PyTorch
   rasterizer), centred on the optical axis and scaled so that the mesh spans
   ``fill`` of the image, lit by an ambient term plus a directional light from
   the front and slightly above (so that the shading shows the relief MediaPipe
   needs), on a grey background;
2. detect the landmarks on that picture with the same detector that
   :func:`fitem.fit` uses (MediaPipe's face landmarker, mapped to iBUG-68 by
   :data:`fitem.landmarks.mapping.IBUG68_FROM_MEDIAPIPE`);
3. for each of the 68 points take the mesh vertex under it: the corner of the
   visible triangle at that pixel with the largest barycentric weight, or,
   where a point falls off the mesh (possible on the jaw outline), the
   visible vertex nearest to it in the image.

Every step is deterministic (fixed render, MediaPipe on the CPU), so a model
file always gets the same indices. :func:`cached_ibug68` stores them in the
user cache folder keyed by the model's checksum, which is how
:func:`fitem.load_model` runs the derivation only once per model file.

Accuracy. On the built-in demo model, whose iBUG-68 vertices are known (they
come from MediaPipe's canonical mesh through the same iBUG mapping), the
picks at the default ``size=512`` lie a median 1.2 mm from the true vertices
(mean 1.5 mm, 90th percentile 3.7 mm, worst 10 mm; 33 of 68 exactly right;
the demo mesh's median edge is 2.25 mm, so most other picks are a neighbour
of the true vertex). By group (median / worst, mm): nose 0 / 0.8, brows
0 / 2.4, mouth 0 / 2.2, eyes 1.7 / 3.1, jaw 3.4 / 10 (MediaPipe places the
jaw on the face outline, the least well-defined part). On the same face
subdivided to 28k and 112k vertices (BFM-sized meshes) the median stays at
1.3-1.4 mm. These numbers measure agreement with MediaPipe's own placement
of the points (the demo's truth comes from MediaPipe's mesh); against iBUG
vertices a person marked on a Basel model expect larger jaw and brow
differences, as between any two annotation conventions. Check the picks on the picture (:func:`pick_ibug68` returns it)
and correct points that matter to you with :meth:`MorphableModel.with_landmarks`.

Cost: one render and one detection, about 1-5 s on a 2-core CPU for
meshes of 7k-112k vertices (plus MediaPipe's start-up the first time).

Example:
    >>> from fitem.models.io import load_model_file
    >>> model = load_model_file("model2017-1_face12_nomouth.h5")   # doctest: +SKIP
    >>> model = model.with_landmarks("ibug68", ibug68_from_render(model))   # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fitem.errors import ConfigError, LandmarkError, NoFaceError
from fitem.models.morphable import MorphableModel

__all__ = [
    "DERIVATION_VERSION",
    "ENV_DERIVE_LANDMARKS",
    "RenderPicks",
    "cached_ibug68",
    "derive_landmarks_enabled",
    "ibug68_cache_path",
    "ibug68_from_render",
    "pick_ibug68",
]

log = logging.getLogger(__name__)

#: Changes whenever the derivation changes what it picks (invalidates cached picks).
DERIVATION_VERSION = 1

#: Environment variable: ``0``/``false``/``no``/``off`` stops :func:`fitem.load_model` deriving landmarks.
ENV_DERIVE_LANDMARKS = "FITEM_DERIVE_LANDMARKS"

#: Grey of the background behind the rendered face (the detector needs a face against something).
BACKGROUND = 0.45

#: Albedo used where a model's mean colour is (nearly) black, e.g. a shape-only model.
SKIN_ALBEDO = (0.75, 0.58, 0.48)

# shading (irradiance) of the ambient term and of the directional light at normal incidence
_AMBIENT = 0.55
_DIRECTIONAL = 0.55
# direction towards the light in view space (+y up, +z towards the viewer): from the front, a little above
_LIGHT_DIRECTION = (0.0, 0.35, 1.0)


@dataclass(frozen=True)
class RenderPicks:
    """What :func:`pick_ibug68` found.

    Attributes:
        indices: ``(68,)`` int64 vertex indices of the iBUG-68 landmarks.
        picture: ``(size, size, 3)`` float32 RGB render in [0, 1] the detector saw.
        points: ``(68, 2)`` float64 detected iBUG points on ``picture``, ``(x, y)``
            pixels in fitem's continuous convention (see :mod:`fitem.render.camera`).
        on_mesh: ``(68,)`` bool, True where the point fell on the rendered mesh
            (False: the nearest visible vertex was taken).
    """

    indices: np.ndarray
    picture: np.ndarray
    points: np.ndarray
    on_mesh: np.ndarray


def _frontal_light(dtype: torch.dtype) -> torch.Tensor:
    """``(9, 3)`` SH light: ambient plus a directional light (band 1), same for R, G, B."""
    from fitem.render.shading import SH_CONSTANTS

    d = np.asarray(_LIGHT_DIRECTION, dtype=np.float64)
    d = d / np.linalg.norm(d)
    light = torch.zeros(9, 3, dtype=dtype)
    light[0] = _AMBIENT / SH_CONSTANTS[0]
    # band-1 basis order is (y, z, x)
    light[1] = _DIRECTIONAL * d[1] / SH_CONSTANTS[1]
    light[2] = _DIRECTIONAL * d[2] / SH_CONSTANTS[2]
    light[3] = _DIRECTIONAL * d[0] / SH_CONSTANTS[3]
    return light


def pick_ibug68(model: MorphableModel, *, size: int = 512, fill: float = 0.6) -> RenderPicks:
    """Render the mean face frontally, detect the 68 iBUG points, take the vertex under each.

    See the module docstring for the method and its accuracy.

    Args:
        model: any :class:`MorphableModel` whose mean is a face in fitem's
            conventions (mm, +y up, +z out of the face).
        size: side of the square render in pixels (512: about 0.3 mm per pixel
            for a face model; smaller is faster and coarser).
        fill: fraction of the image side the mesh's larger x/y extent spans.

    Returns:
        :class:`RenderPicks` (indices, the picture, the detected points).

    Raises:
        LandmarkError: MediaPipe found no face on the render (the message says
            how to supply the indices yourself).
        ConfigError: ``size`` or ``fill`` out of range.
        fitem.errors.DetectorUnavailableError: MediaPipe or its model file is missing.

    Example:
        >>> picks = pick_ibug68(fitem.load_model("demo"))      # doctest: +SKIP
        >>> picks.indices.shape, picks.picture.shape           # doctest: +SKIP
        ((68,), (512, 512, 3))
    """
    from fitem.landmarks import detect_landmarks
    from fitem.render import Camera, make_rasterizer, render

    if not (isinstance(size, (int, np.integer)) and 64 <= int(size) <= 4096):
        raise ConfigError(f"size must be an integer number of pixels in [64, 4096], got {size!r}")
    if not (0.1 <= float(fill) <= 1.0):
        raise ConfigError(f"fill must be in [0.1, 1], got {fill!r}")
    size = int(size)
    with torch.no_grad():
        vertices, albedo = model.instance()
        lo, hi = vertices.amin(0), vertices.amax(0)
        vertices = vertices - (lo + hi) / 2  # centre the mesh on the optical axis
        extent = float(torch.maximum(hi[0] - lo[0], hi[1] - lo[1]))
        if not extent > 0:
            raise LandmarkError(f"model {model.name!r}: the mean mesh is degenerate (zero extent); "
                                "it cannot be rendered to pick landmarks")
        camera = Camera.default(size)
        distance = camera.focal * extent / (fill * size) + float(hi[2] - lo[2]) / 2
        albedo = albedo.clamp(0, 1)
        if float(albedo.max()) < 0.05:
            log.info("model %r has a black mean colour; rendering it with a uniform skin tone", model.name)
            albedo = torch.tensor(SKIN_ALBEDO, dtype=albedo.dtype).expand_as(albedo)
        rasterizer = make_rasterizer(torch.as_tensor(model.triangles), (size, size), backend="torch")
        out = render(vertices, albedo, _frontal_light(vertices.dtype), torch.zeros(3),
                     torch.tensor([0.0, 0.0, distance]), camera, rasterizer)
    picture = out.image[0].clamp(0, 1).numpy().astype(np.float32)
    region = out.region[0].numpy()
    picture[~region] = BACKGROUND
    try:
        points = detect_landmarks(picture).ibug68
    except NoFaceError as exc:
        raise LandmarkError(
            f"no face found on a frontal render of the mean of model {model.name!r}, so its iBUG-68 landmark "
            "vertices cannot be picked automatically (is the mean a face in fitem's conventions: mm, +y up, "
            "+z out of the face?); pass the 68 vertex indices yourself: "
            "model = model.with_landmarks('ibug68', indices)"
        ) from exc
    tri_id = out.raster.tri_id[0].numpy()
    bary = out.raster.bary[0].numpy()
    screen = out.screen[0, :, :2].numpy().astype(np.float64)
    visible = np.unique(model.triangles[tri_id[tri_id >= 0]])
    indices = np.empty(68, np.int64)
    on_mesh = np.zeros(68, bool)
    for k, (x, y) in enumerate(points):
        i, j = int(np.floor(y)), int(np.floor(x))  # pixel (row i, col j) spans [j, j+1) x [i, i+1)
        t = tri_id[i, j] if (0 <= i < size and 0 <= j < size) else -1
        if t >= 0:
            indices[k] = model.triangles[t][int(np.argmax(bary[i, j]))]
            on_mesh[k] = True
        else:
            indices[k] = visible[int(np.argmin(np.linalg.norm(screen[visible] - (x, y), axis=1)))]
    return RenderPicks(indices=indices, picture=picture, points=np.asarray(points, np.float64), on_mesh=on_mesh)


def ibug68_from_render(model: MorphableModel, *, size: int = 512, fill: float = 0.6) -> np.ndarray:
    """Vertex indices of the 68 iBUG landmarks, picked on a frontal render of the mean face.

    Deterministic; see the module docstring for the method and its accuracy
    (median 1.2 mm on the demo model). :func:`pick_ibug68` also returns the
    picture and the detected points, to check the picks.

    Args:
        model: a :class:`MorphableModel` (mm, +y up, +z out of the face).
        size: side of the square render in pixels.
        fill: fraction of the image side the mesh spans.

    Returns:
        ``(68,)`` int64 vertex indices, in iBUG order (0-16 jaw, 17-26 brows,
        27-35 nose, 36-47 eyes, 48-67 mouth).

    Raises:
        LandmarkError: no face found on the render (pass the indices yourself
            with ``model.with_landmarks("ibug68", indices)``).

    Example:
        >>> idx = ibug68_from_render(model)                        # doctest: +SKIP
        >>> model = model.with_landmarks("ibug68", idx)            # doctest: +SKIP
    """
    return pick_ibug68(model, size=size, fill=fill).indices


# ================================================================== cache
def derive_landmarks_enabled(derive: bool | None = None) -> bool:
    """Whether :func:`fitem.load_model` derives missing iBUG-68 landmarks.

    ``derive`` wins when given; otherwise the environment variable
    ``FITEM_DERIVE_LANDMARKS`` (``1/true/yes/on`` or ``0/false/no/off``;
    default on).

    Raises:
        ConfigError: the environment variable holds something else.
    """
    if derive is not None:
        return bool(derive)
    raw = os.environ.get(ENV_DERIVE_LANDMARKS)
    if raw is None or raw.strip() == "":
        return True
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{ENV_DERIVE_LANDMARKS}={raw!r}: expected 1/true/yes/on or 0/false/no/off")


def ibug68_cache_path(model: MorphableModel, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`cached_ibug68` keeps the picks for ``model`` (a JSON file named by its checksum).

    Args:
        model: the model as loaded (its checksum names the file).
        cache_dir: folder (default ``platformdirs.user_cache_dir("fitem")``).

    Example:
        >>> ibug68_cache_path(model).name        # doctest: +SKIP
        'ibug68-v1-4d4eb6cb607d8e95.json'
    """
    if cache_dir is None:
        import platformdirs

        cache_dir = platformdirs.user_cache_dir("fitem")
    return Path(cache_dir) / "landmarks" / f"ibug68-v{DERIVATION_VERSION}-{model.checksum}.json"


def _read_cache(path: Path, model: MorphableModel) -> np.ndarray | str | None:
    """The cached indices, the cached failure message (a str), or None (missing, unreadable, other model)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("model_checksum") != model.checksum or data.get("version") != DERIVATION_VERSION:
            ok = False
        elif data.get("indices") is None and isinstance(data.get("error"), str):
            return data["error"]
        else:
            idx = np.asarray(data["indices"], dtype=np.int64)
            ok = idx.shape == (68,) and idx.min() >= 0 and idx.max() < model.n_vertices
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the unreadable landmark cache file %s (%s)", path, exc)
        return None
    if not ok:
        log.warning("ignoring the landmark cache file %s: it does not match model %r", path, model.name)
        return None
    return idx


def _write_cache(path: Path, model: MorphableModel, indices: np.ndarray | None, error: str | None) -> None:
    from fitem._files import atomic_write_bytes

    record = {
        "version": DERIVATION_VERSION,
        "landmark_set": "ibug68",
        "model_name": model.name,
        "model_checksum": model.checksum,
        "n_vertices": model.n_vertices,
        "method": "fitem.models.landmarks.ibug68_from_render (frontal render of the mean, MediaPipe)",
        "indices": None if indices is None else [int(i) for i in indices],
    }
    if error is not None:
        record["error"] = error
    try:
        atomic_write_bytes(path, json.dumps(record, indent=1).encode("utf-8"))
    except OSError as exc:
        log.warning("could not cache the landmark vertices at %s (%s); they will be derived again next time",
                    path, exc)


def cached_ibug68(model: MorphableModel, *, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """:func:`ibug68_from_render` of ``model``, computed once per model and kept in the user cache.

    The picks are stored as JSON (atomic write) in
    :func:`ibug68_cache_path`, keyed by :attr:`MorphableModel.checksum` and
    :data:`DERIVATION_VERSION`; a later call with the same model reads them
    back instead of rendering. A render on which no face is found is
    recorded too (it would fail again: the derivation is deterministic), so
    the next call raises at once; delete the file to try again. A cache
    folder that cannot be written only costs a warning.

    Args:
        model: the model without ``"ibug68"`` landmarks.
        cache_dir: folder (default ``platformdirs.user_cache_dir("fitem")``).

    Returns:
        ``(68,)`` int64 vertex indices.

    Raises:
        LandmarkError: no face found on the render, now or when the cache
            entry was written (see :func:`ibug68_from_render`).

    Example:
        >>> model = model.with_landmarks("ibug68", cached_ibug68(model))   # doctest: +SKIP
    """
    path = ibug68_cache_path(model, cache_dir)
    cached = _read_cache(path, model)
    if isinstance(cached, str):
        raise LandmarkError(f"{cached} [recorded in {path}; delete that file to try the render again]")
    if cached is not None:
        log.debug("iBUG-68 landmark vertices of model %r read from %s", model.name, path)
        return cached
    log.info("picking the iBUG-68 landmark vertices of model %r on a render (once per model; cached in %s)",
             model.name, path)
    try:
        idx = ibug68_from_render(model)
    except LandmarkError as exc:
        _write_cache(path, model, None, str(exc))
        raise
    _write_cache(path, model, idx, None)
    return idx
