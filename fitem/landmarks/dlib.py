"""dlib backend (optional extra ``pip install "fitem[dlib]"``): HOG face detector + 68-point shape predictor.

Model file: ``shape_predictor_68_face_landmarks.dat`` from the
``face-recognition-models`` package, located with
``importlib.util.find_spec("face_recognition_models")`` (the package's own
``import`` needs ``pkg_resources``), or ``predictor_path=``. Its training data
(iBUG 300-W) excludes commercial use.

Coordinates: dlib returns integer pixel indices (pixel centres at integers);
fitem adds 0.5 to put them in its continuous convention.

Speed: the HOG detector runs on a copy of the image scaled so its long side is
at most ``max_side`` pixels (boxes are mapped back and the shape predictor runs
on the full-resolution image), upsampled ``upsample`` times (each doubles the
image: faces down to about 40 px are found with ``upsample=1``).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

from fitem.errors import ConfigError, DetectorUnavailableError
from fitem.landmarks.detector import Box, Detection, Detector

__all__ = ["DlibDetector", "find_dlib_predictor"]

log = logging.getLogger(__name__)

_INSTALL = 'install the dlib extra with `pip install "fitem[dlib]"` (dlib-bin and face-recognition-models)'


def find_dlib_predictor(predictor_path: str | os.PathLike | None = None) -> Path:
    """Path of dlib's ``shape_predictor_68_face_landmarks.dat`` (``predictor_path`` or face-recognition-models').

    Raises:
        fitem.errors.DetectorUnavailableError: the file is missing (the message says what to install).
    """
    if predictor_path is not None:
        path = Path(predictor_path)
    else:
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or spec.origin is None:
            raise DetectorUnavailableError(f"dlib's 68-point model was not found: {_INSTALL}")
        path = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise DetectorUnavailableError(f"dlib shape predictor {str(path)!r} does not exist; {_INSTALL}")
    return path


class DlibDetector(Detector):
    """dlib's HOG frontal face detector and 68-point shape predictor.

    Args:
        predictor_path: the ``.dat`` shape predictor (default: face-recognition-models').
        upsample: times the detector doubles the image (0, 1 or 2).
        max_side: the detector sees the image scaled down to this long side (px).
        search_small_faces: scan tiles when the whole image gives no face.

    Example:
        >>> det = DlibDetector()                         # doctest: +SKIP
        >>> faces = det.detect("photo.jpg")              # doctest: +SKIP
    """

    name = "dlib"
    tile_upscale_to = 400  # HOG needs faces of ~80 px at upsample 0: tiles are enlarged to this side
    min_tile = 128
    max_tiles = 120

    def __init__(
        self,
        predictor_path: str | os.PathLike | None = None,
        *,
        upsample: int = 1,
        max_side: int = 1280,
        search_small_faces: bool = True,
    ) -> None:
        if int(upsample) not in (0, 1, 2):
            raise ConfigError(f"upsample must be 0, 1 or 2, got {upsample}")
        if int(max_side) < 64:
            raise ConfigError(f"max_side must be at least 64 pixels, got {max_side}")
        try:
            import dlib
        except ImportError as exc:
            raise DetectorUnavailableError(f"dlib cannot be imported ({exc}); {_INSTALL}") from exc
        self.predictor_path = find_dlib_predictor(predictor_path)
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(self.predictor_path))
        self.upsample = int(upsample)
        self.max_side = int(max_side)
        self.search_small_faces = bool(search_small_faces)

    def _run_hog(self, image: np.ndarray, upsample: int) -> list[tuple[Box, float]]:
        import cv2

        h, w = image.shape[:2]
        k = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_AREA) if k < 1.0 else image
        rects, scores, _ = self._detector.run(np.ascontiguousarray(small), upsample, 0.0)
        out = []
        for r, s in zip(rects, scores):
            # dlib rectangles are inclusive integer pixel indices: continuous box is [l, r + 1) (in the small image)
            out.append(((r.left() / k, r.top() / k, (r.right() + 1) / k, (r.bottom() + 1) / k), float(s)))
        return out

    def _detect_boxes(self, image: np.ndarray) -> list[tuple[Box, float]]:
        return self._run_hog(image, 0)

    def _landmarks_in_box(self, image: np.ndarray, box: Box, score: float) -> Detection | None:
        x0, y0, x1, y1 = box
        rect = self._dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)
        shape = self._predictor(image, rect)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
        if pts.shape != (68, 2):
            raise DetectorUnavailableError(
                f"{str(self.predictor_path)!r} predicts {pts.shape[0]} points, not 68; pass the 68-point model"
            )
        return Detection(pts + 0.5, None, score=score, source=self.name)

    def _detect_full(self, image: np.ndarray) -> list[Detection]:
        faces = []
        for box, score in self._run_hog(image, self.upsample):
            det = self._landmarks_in_box(image, box, score)
            if det is not None:
                faces.append(det)
        return faces
