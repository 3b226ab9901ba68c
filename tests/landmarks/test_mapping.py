"""fitem.landmarks.mapping and template: the MediaPipe → iBUG-68 table and the 3-D template built from it."""
from __future__ import annotations

import numpy as np
import pytest

from fitem.errors import LandmarkError
from fitem.landmarks.mapping import IBUG68_FROM_MEDIAPIPE, ibug68_from_mediapipe
from fitem.landmarks.mediapipe import canonical_face_mesh
from fitem.landmarks.template import IBUG68_TEMPLATE_MM

#: iBUG-68 left/right permutation (0-based).
IBUG_MIRROR = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)
FACE_OVAL = {10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109}


@pytest.fixture(scope="module")
def canonical() -> np.ndarray:
    return canonical_face_mesh()[0]


def test_table_shape_dtype_and_unique() -> None:
    assert IBUG68_FROM_MEDIAPIPE.shape == (68,)
    assert IBUG68_FROM_MEDIAPIPE.dtype == np.int64
    assert len(set(IBUG68_FROM_MEDIAPIPE.tolist())) == 68
    assert IBUG68_FROM_MEDIAPIPE.min() >= 0 and IBUG68_FROM_MEDIAPIPE.max() < 468  # mesh points, not iris


def test_table_is_left_right_symmetric(canonical: np.ndarray) -> None:
    mirrored = canonical * np.array([-1.0, 1.0, 1.0])
    for k in range(68):
        a = canonical[IBUG68_FROM_MEDIAPIPE[k]]
        b = mirrored[IBUG68_FROM_MEDIAPIPE[IBUG_MIRROR[k]]]
        np.testing.assert_allclose(a, b, atol=1e-3, err_msg=f"iBUG point {k} and its mirror are not mirror vertices")


def test_anatomy_of_the_table(canonical: np.ndarray) -> None:
    p = canonical[IBUG68_FROM_MEDIAPIPE]
    assert set(IBUG68_FROM_MEDIAPIPE[:17].tolist()) <= FACE_OVAL  # jaw on the frontal outline
    assert np.all(np.diff(p[0:9, 1]) < 0)  # jaw goes down from the ear to the chin
    assert np.all(np.diff(p[0:9, 0]) > 0)  # ... and towards the midline
    assert p[36, 0] < p[39, 0] < 0 < p[42, 0] < p[45, 0]  # eye corners, viewer's left to right
    assert p[30, 2] == p[:, 2].max()  # nose tip is the most forward point
    assert p[8, 1] == p[:, 1].min()  # chin is the lowest
    assert p[[19, 24], 1].min() > p[[37, 44], 1].max()  # brows above the eyes
    assert p[51, 1] > p[62, 1] > p[66, 1] > p[57, 1]  # lips top to bottom on the midline


def test_template_matches_canonical_mesh(canonical: np.ndarray) -> None:
    np.testing.assert_allclose(IBUG68_TEMPLATE_MM, canonical[IBUG68_FROM_MEDIAPIPE], atol=1e-3)


def test_ibug68_from_mediapipe() -> None:
    pts = np.arange(478 * 2, dtype=float).reshape(478, 2)
    out = ibug68_from_mediapipe(pts)
    np.testing.assert_array_equal(out, pts[IBUG68_FROM_MEDIAPIPE])
    assert ibug68_from_mediapipe(np.zeros((5, 468, 3))).shape == (5, 68, 3)
    with pytest.raises(LandmarkError):
        ibug68_from_mediapipe(np.zeros((68, 2)))


def test_canonical_mesh_conventions(canonical: np.ndarray) -> None:
    v, uv, tri = canonical_face_mesh()
    assert v.shape == (468, 3) and uv.shape == (468, 2) and tri.shape == (898, 3)
    assert tri.min() == 0 and tri.max() == 467
    n = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    assert (n[:, 2] > 0).mean() > 0.95  # counter-clockwise seen from the front (+z)
    eye_dist = np.linalg.norm(v[IBUG68_FROM_MEDIAPIPE[36]] - v[IBUG68_FROM_MEDIAPIPE[45]])
    assert 70 < eye_dist < 110  # mm
