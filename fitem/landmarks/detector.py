"""Landmark detection: one interface, several backends, user-supplied landmarks.

Every backend returns :class:`Detection` objects whose points are in the
continuous pixel convention of :mod:`fitem.render.camera` (the input image
spans ``[0, W] × [0, H]``, pixel ``(i, j)`` has its centre at
``(j + 0.5, i + 0.5)``), in the coordinates of the image that was passed in.

Small faces in large images: a backend first looks at the whole image. If it
finds nothing, :meth:`Detector.detect` scans overlapping square tiles of
decreasing size (each level 1.6× smaller, one third overlap, so a face up to
a third of a tile lies wholly inside one), runs the backend's face-box
detector on each tile (upscaled where the backend asks for it), maps the
boxes back, merges boxes found in several tiles (non-maximum suppression with
an IoU and a containment test) and finally runs the landmark model on a
crop around each merged box. The scan stops at the first level that finds a
face and never looks at more than ``max_tiles`` tiles (an image with no face
at all therefore costs up to ``max_tiles`` detector calls, about 1-2 s for
MediaPipe on a 2-core CPU). A down-scaled retry is not needed for MediaPipe:
its face detector already sees the whole image resized to 128 × 128; the dlib
backend always runs its HOG detector on a copy scaled to at most 1280 px.

Example:
    >>> from fitem.landmarks import detect_landmarks
    >>> det = detect_landmarks(skimage.data.astronaut())     # doctest: +SKIP
    >>> det.ibug68.shape, det.source                          # doctest: +SKIP
    ((68, 2), 'mediapipe')
"""
from __future__ import annotations

import abc
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fitem.errors import ConfigError, InvalidInputError, LandmarkError, NoFaceError
from fitem.image import MIN_IMAGE_SIZE, describe_image, load_image, to_uint8
from fitem.landmarks.mapping import ibug68_from_mediapipe
from fitem.landmarks.pts import read_pts

__all__ = [
    "Box",
    "Detection",
    "DetectionResult",
    "Detector",
    "detect_faces",
    "detect_landmarks",
    "get_detector",
    "landmarks_from_user",
    "nms_boxes",
    "tile_grid",
]

log = logging.getLogger(__name__)

#: ``(x0, y0, x1, y1)`` in continuous pixel coordinates.
Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class Detection:
    """One face's landmarks in input-image pixels (continuous convention, see module docstring).

    Attributes:
        ibug68: ``(68, 2)`` float64 ``(x, y)`` of the 68 iBUG points.
        points478: ``(478, 2)`` (or ``(468, 2)``) float64 MediaPipe face-mesh
            points, or ``None`` when the source has no dense points (dlib, 68
            user points).
        box: ``(x0, y0, x1, y1)``: the bounding box of the landmarks (all dense
            points when present, else the 68), the same rule for every backend.
        score: detection confidence. MediaPipe: the BlazeFace score of the face
            box the landmarker starts from, in [0, 1] (NaN if no box matched);
            dlib: the HOG detector's SVM margin (unbounded, > 0 means a face);
            user landmarks: 1.0.
        source: ``"mediapipe"``, ``"mediapipe-tiles"`` (found by the tile
            search), ``"dlib"``, ``"dlib-tiles"``, ``"user"`` or ``"user-pts"``.
    """

    ibug68: np.ndarray
    points478: np.ndarray | None = None
    box: Box = (0.0, 0.0, 0.0, 0.0)
    score: float = float("nan")
    source: str = ""

    def __post_init__(self) -> None:
        pts = np.asarray(self.ibug68, dtype=np.float64)
        if pts.shape != (68, 2):
            raise LandmarkError(f"ibug68: expected shape (68, 2), got {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise LandmarkError("ibug68 contains NaN or inf values")
        dense = None
        if self.points478 is not None:
            dense = np.asarray(self.points478, dtype=np.float64)
            if dense.ndim != 2 or dense.shape[1] != 2 or dense.shape[0] not in (468, 478):
                raise LandmarkError(f"points478: expected shape (478, 2) or (468, 2), got {dense.shape}")
            if not np.all(np.isfinite(dense)):
                raise LandmarkError("points478 contains NaN or inf values")
        object.__setattr__(self, "ibug68", pts)
        object.__setattr__(self, "points478", dense)
        if self.box == (0.0, 0.0, 0.0, 0.0):
            ref = dense if dense is not None else pts
            lo, hi = ref.min(0), ref.max(0)
            object.__setattr__(self, "box", (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])))
        else:
            object.__setattr__(self, "box", tuple(float(v) for v in self.box))

    @property
    def area(self) -> float:
        """Area of :attr:`box` in square pixels."""
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (0.5 * (x0 + x1), 0.5 * (y0 + y1))


@dataclass(frozen=True, eq=False)
class DetectionResult:
    """All faces a detector found in one image, and the one chosen.

    Attributes:
        faces: detections ordered left to right (by box centre ``x``), so
            ``face_index`` counts faces as a viewer does.
        chosen: index into ``faces`` of the face to use (``None`` when empty).
        image_name: how the image is named in messages.
        detector: the backend's name.
    """

    faces: tuple[Detection, ...]
    chosen: int | None
    image_name: str = "the image"
    detector: str = ""

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    @property
    def face(self) -> Detection:
        """The chosen detection; :class:`NoFaceError` when there is none."""
        if self.chosen is None:
            raise _no_face_error(self.image_name, self.detector)
        return self.faces[self.chosen]


# --------------------------------------------------------------------------- tiles
def tile_grid(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Square tiles ``(x0, y0, x1, y1)`` (integer pixels) of side ``tile`` covering the image with ``overlap``.

    Tiles along an axis are spread evenly so the first starts at 0 and the last
    ends at the image edge; neighbours overlap by at least ``overlap * tile``.

    Example:
        >>> len(tile_grid(1000, 1000, 400, 1 / 3))
        9
    """
    if tile <= 0 or not (0.0 <= overlap < 1.0):
        raise ConfigError(f"tile side must be positive and overlap in [0, 1), got {tile}, {overlap}")

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        stride = tile * (1.0 - overlap)
        k = int(math.ceil((n - tile) / stride)) + 1
        return [int(round(i * (n - tile) / (k - 1))) for i in range(k)]

    tw, th = min(tile, width), min(tile, height)
    return [(x, y, x + tw, y + th) for y in starts(height) for x in starts(width)]


def _iou_and_containment(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    small = min(area_a, area_b)
    return (inter / union if union > 0 else 0.0, inter / small if small > 0 else 0.0)


def nms_boxes(
    boxes: Sequence[Box], scores: Sequence[float], *, iou: float = 0.3, containment: float = 0.6
) -> list[int]:
    """Indices of the boxes kept by greedy non-maximum suppression (best score first).

    A box is dropped when it overlaps a kept box with IoU above ``iou`` or when
    more than ``containment`` of the smaller box lies inside the other (a face
    cut by a tile edge gives a smaller box inside the whole face's box).

    Example:
        >>> nms_boxes([(0, 0, 10, 10), (1, 1, 10, 10), (50, 50, 60, 60)], [0.9, 0.8, 0.7])
        [0, 2]
    """
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sc = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    order = sorted(range(len(arr)), key=lambda i: (-sc[i], -(arr[i, 2] - arr[i, 0]) * (arr[i, 3] - arr[i, 1])))
    kept: list[int] = []
    for i in order:
        if all(
            (lambda r: r[0] <= iou and r[1] <= containment)(_iou_and_containment(arr[i], arr[k])) for k in kept
        ):
            kept.append(i)
    return kept


# --------------------------------------------------------------------------- backends
class Detector(abc.ABC):
    """A landmark detector backend. Create once, reuse for many images, :meth:`close` when done.

    Subclasses implement :meth:`_detect_full` (all faces of a whole image),
    :meth:`_detect_boxes` (face boxes and scores only, used on tiles) and
    :meth:`_landmarks_in_box` (landmarks of the face in one box of the whole
    image). Images reach them as ``(H, W, 3)`` uint8 RGB.

    Attributes:
        name: the backend's name.
        search_small_faces: run the tile search when the whole image gives no face.
        tile_scale_step: ratio between the tile sides of consecutive levels.
        tile_overlap: overlap between neighbouring tiles, as a fraction of the tile side.
        min_tile: smallest tile side in pixels (faces below about a quarter of it are not searched for).
        max_tiles: most tiles examined in one image, all levels together.
        tile_upscale_to: upscale tiles whose side is below this many pixels
            before box detection (``None``: never; MediaPipe resizes internally).
    """

    name: str = "detector"
    search_small_faces: bool = True
    tile_scale_step: float = 1.6
    tile_overlap: float = 1.0 / 3.0
    min_tile: int = 96
    max_tiles: int = 400
    tile_upscale_to: int | None = None

    # ---------------------------------------------------------------- backend hooks
    @abc.abstractmethod
    def _detect_full(self, image: np.ndarray) -> list[Detection]:
        """All faces of a whole ``(H, W, 3)`` uint8 image."""

    @abc.abstractmethod
    def _detect_boxes(self, image: np.ndarray) -> list[tuple[Box, float]]:
        """Face boxes ``((x0, y0, x1, y1), score)`` of a ``(h, w, 3)`` uint8 image (a tile)."""

    @abc.abstractmethod
    def _landmarks_in_box(self, image: np.ndarray, box: Box, score: float) -> Detection | None:
        """Landmarks of the face in ``box`` (whole-image pixels), or ``None`` if the model finds none there."""

    def close(self) -> None:
        """Release the backend's resources (idempotent)."""

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- driver
    def detect(self, image: Any) -> list[Detection]:
        """All faces in an image (any input :func:`fitem.image.load_image` accepts), in input pixels.

        Returns an empty list when there is no face (:func:`detect_landmarks`
        turns that into :class:`~fitem.errors.NoFaceError`).
        """
        if (
            isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3 and min(image.shape[:2]) >= MIN_IMAGE_SIZE
        ):
            u8 = np.ascontiguousarray(image)  # already what the backends take: skip the float round trip
        else:
            u8 = to_uint8(load_image(image))
        faces = self._detect_full(u8)
        if faces or not self.search_small_faces:
            return faces
        return self._detect_tiled(u8)

    def tile_levels(self, height: int, width: int) -> list[int]:
        """Tile sides (px) the small-face search uses on an ``height × width`` image, largest first."""
        side = max(height, width)
        levels, total = [], 0
        t = side / self.tile_scale_step
        while t >= self.min_tile:
            tile = int(round(t))
            n = len(tile_grid(height, width, tile, self.tile_overlap))
            if total + n > self.max_tiles:
                log.debug("tile search stops at %d px tiles: more than %d tiles", tile, self.max_tiles)
                break
            levels.append(tile)
            total += n
            t /= self.tile_scale_step
        return levels

    def _detect_tiled(self, image: np.ndarray) -> list[Detection]:
        import cv2

        h, w = image.shape[:2]
        for tile in self.tile_levels(h, w):
            boxes: list[Box] = []
            scores: list[float] = []
            for x0, y0, x1, y1 in tile_grid(h, w, tile, self.tile_overlap):
                sub = image[y0:y1, x0:x1]
                scale = 1.0
                if self.tile_upscale_to is not None and max(sub.shape[:2]) < self.tile_upscale_to:
                    scale = self.tile_upscale_to / max(sub.shape[:2])
                    sub = cv2.resize(sub, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
                for (bx0, by0, bx1, by1), s in self._detect_boxes(np.ascontiguousarray(sub)):
                    boxes.append((bx0 / scale + x0, by0 / scale + y0, bx1 / scale + x0, by1 / scale + y0))
                    scores.append(s)
            if not boxes:
                continue
            keep = nms_boxes(boxes, scores)
            log.info("tile search (%d px tiles) found %d face box(es)", tile, len(keep))
            faces = []
            for i in keep:
                det = self._landmarks_in_box(image, boxes[i], scores[i])
                if det is not None:
                    faces.append(
                        Detection(det.ibug68, det.points478, score=det.score, source=f"{self.name}-tiles")
                    )
            # the landmark boxes of two tile boxes may still coincide: de-duplicate once more
            keep2 = nms_boxes([f.box for f in faces], [f.score for f in faces])
            faces = [faces[i] for i in sorted(keep2)]
            if faces:
                return faces
        return []


# --------------------------------------------------------------------------- registry
_DETECTORS: dict[tuple, Detector] = {}
_LOCK = threading.Lock()


def get_detector(name: str = "mediapipe", **options: Any) -> Detector:
    """The shared detector for a backend name and options (created on first use, then reused).

    Args:
        name: ``"mediapipe"`` (default, bundled with fitem's dependencies) or
            ``"dlib"`` (optional extra: ``pip install "fitem[dlib]"``).
        **options: passed to the backend's constructor (e.g. ``model_path=``).

    Raises:
        fitem.errors.ConfigError: unknown backend name.
        fitem.errors.DetectorUnavailableError: the backend or its model file is missing.

    Example:
        >>> det = get_detector("mediapipe")          # doctest: +SKIP
        >>> faces = det.detect("photo.jpg")          # doctest: +SKIP
    """
    key = (name, tuple(sorted((k, str(v)) for k, v in options.items())))
    with _LOCK:
        if key in _DETECTORS:
            return _DETECTORS[key]
        if name == "mediapipe":
            from fitem.landmarks.mediapipe import MediaPipeDetector

            det: Detector = MediaPipeDetector(**options)
        elif name == "dlib":
            from fitem.landmarks.dlib import DlibDetector

            det = DlibDetector(**options)
        else:
            raise ConfigError(f"unknown landmark detector {name!r}; choose 'mediapipe' or 'dlib', or pass a Detector")
        _DETECTORS[key] = det
        return det


def _no_face_error(image_name: str, detector: str) -> NoFaceError:
    return NoFaceError(
        f"no face found in {image_name} by the {detector or 'landmark'} detector (whole image and tiles searched); "
        "pass landmarks= with a (68, 2) array of (x, y) pixel coordinates in iBUG-68 order or an iBUG .pts file, "
        "or try detector='dlib'"
    )


def detect_faces(image: Any, *, detector: "str | Detector" = "mediapipe", **options: Any) -> DetectionResult:
    """Find every face in an image; the largest is chosen.

    Args:
        image: anything :func:`fitem.image.load_image` accepts.
        detector: backend name or a :class:`Detector` instance.
        **options: backend options when ``detector`` is a name (see :func:`get_detector`).

    Returns:
        :class:`DetectionResult` with faces ordered left to right and ``chosen``
        the face with the largest landmark box (``None`` if no face).

    Example:
        >>> res = detect_faces("group.jpg")          # doctest: +SKIP
        >>> res.n_faces, res.face.box                # doctest: +SKIP
    """
    if isinstance(detector, Detector) and options:
        raise ConfigError("detector options can only be given with a detector name, not a Detector instance")
    det = detector if isinstance(detector, Detector) else get_detector(str(detector), **options)
    name = describe_image(image)
    faces = sorted(det.detect(image), key=lambda f: f.centre[0])
    chosen = int(np.argmax([f.area for f in faces])) if faces else None
    log.info("%s detector found %d face(s) in %s", det.name, len(faces), name)
    return DetectionResult(tuple(faces), chosen, name, det.name)


def detect_landmarks(
    image: Any,
    *,
    detector: "str | Detector" = "mediapipe",
    face_index: int | None = None,
    **options: Any,
) -> Detection:
    """68 iBUG landmarks (and dense points where the backend has them) of one face.

    Args:
        image: anything :func:`fitem.image.load_image` accepts.
        detector: ``"mediapipe"``, ``"dlib"`` or a :class:`Detector`.
        face_index: which face, counting left to right from 0; default the
            largest.
        **options: backend options (see :func:`get_detector`).

    Returns:
        :class:`Detection` in input-image pixels (continuous convention).

    Raises:
        fitem.errors.NoFaceError: no face found (the message suggests ``landmarks=``).
        fitem.errors.InvalidInputError: ``face_index`` out of range (says how many faces there are).

    Example:
        >>> det = detect_landmarks("photo.jpg")      # doctest: +SKIP
        >>> det.ibug68.shape
        (68, 2)
    """
    res = detect_faces(image, detector=detector, **options)
    if res.n_faces == 0:
        raise _no_face_error(res.image_name, res.detector)
    if face_index is None:
        idx = res.chosen
    else:
        if not isinstance(face_index, (int, np.integer)) or not (-res.n_faces <= face_index < res.n_faces):
            raise InvalidInputError(
                f"face_index={face_index!r} but {res.n_faces} face(s) were found in {res.image_name}; "
                f"pass an index in [0, {res.n_faces - 1}] (faces count left to right) or None for the largest"
            )
        idx = int(face_index) % res.n_faces
    log.info("using face %d of %d in %s", idx, res.n_faces, res.image_name)
    return res.faces[idx]


# --------------------------------------------------------------------------- user landmarks
def landmarks_from_user(landmarks: Any, image_shape: tuple[int, ...] | None = None) -> Detection:
    """A :class:`Detection` from landmarks the user supplies (no detector runs).

    Args:
        landmarks: ``(68, 2)`` iBUG points or ``(478, 2)`` / ``(468, 2)``
            MediaPipe points as ``(x, y)`` in fitem's continuous pixel
            convention (pixel centres at ``+0.5``), or a path to an iBUG
            ``.pts`` file (1-based, converted by :func:`fitem.landmarks.pts.read_pts`)
            or to a ``.npy`` array.
        image_shape: ``(H, W[, C])`` of the image, to check the points lie on it.

    Raises:
        fitem.errors.LandmarkError: wrong shape, NaN/inf, or points that do not
            lie on the image (e.g. ``(row, col)`` instead of ``(x, y)``).

    Example:
        >>> det = landmarks_from_user(np.load("pts68.npy"), img.shape)   # doctest: +SKIP
        >>> det = landmarks_from_user("face.pts")                          # doctest: +SKIP
    """
    source = "user"
    if isinstance(landmarks, (str, Path)):
        path = Path(landmarks)
        if path.suffix.lower() == ".npy":
            if not path.is_file():
                raise InvalidInputError(f"landmark file {str(path)!r} does not exist; check the path")
            arr = np.load(path, allow_pickle=False)
        else:
            arr = read_pts(path)
            source = "user-pts"
    else:
        arr = landmarks
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().numpy()
    try:
        pts = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LandmarkError(f"landmarks must be a numeric (68, 2) array, got {type(arr).__name__}") from exc
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] not in (68, 468, 478):
        hint = " (drop the third column: landmarks[:, :2])" if pts.ndim == 2 and pts.shape[1] == 3 else ""
        raise LandmarkError(
            f"landmarks: expected shape (68, 2) iBUG points or (478, 2) MediaPipe points as (x, y) pixels, "
            f"got {pts.shape}{hint}"
        )
    if not np.all(np.isfinite(pts)):
        bad = np.flatnonzero(~np.all(np.isfinite(pts), axis=1))
        raise LandmarkError(
            f"landmarks contain NaN or inf at points {bad.tolist()[:10]}; give every point a position "
            "(an estimate is fine: the fit down-weights outliers)"
        )
    extent = float((pts.max(0) - pts.min(0)).max())
    if extent < 4.0:
        hint = " (they look normalised to [0, 1]: multiply by (W, H))" if np.all((pts >= 0) & (pts <= 1)) else ""
        raise LandmarkError(f"the landmarks span only {extent:.2g} pixels; pass (x, y) pixel coordinates{hint}")
    if image_shape is not None:
        _check_on_image(pts, image_shape)
    if pts.shape[0] == 68:
        return Detection(pts, None, score=1.0, source=source)
    return Detection(ibug68_from_mediapipe(pts), pts, score=1.0, source=source)


def _check_on_image(pts: np.ndarray, image_shape: tuple[int, ...]) -> None:
    h, w = int(image_shape[0]), int(image_shape[1])

    def inside(p: np.ndarray) -> float:
        ok = (p[:, 0] >= 0) & (p[:, 0] <= w) & (p[:, 1] >= 0) & (p[:, 1] <= h)
        return float(ok.mean())

    frac = inside(pts)
    if frac >= 0.5:
        return
    hint = ""
    if inside(pts[:, ::-1]) >= 0.5:
        hint = "; they fit as (row, col): pass them as (x, y), i.e. landmarks[:, ::-1]"
    raise LandmarkError(
        f"only {frac:.0%} of the landmarks lie on the {h}x{w} image{hint}"
    )

