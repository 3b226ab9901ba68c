"""``fitem annotate --report``: worst fits first on a contact sheet, error distributions, counts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fitem.annotation import annotate
from fitem.annotation.report import write_report
from fitem.errors import InvalidInputError
from tests.annotation.conftest import write_images

TASK = "tests.annotation.tasks:reported_fit"


def test_report_ranks_worst_first_and_counts_failures(tmp_path: Path) -> None:
    images = tmp_path / "in"
    write_images(images, 6)
    shutil.copy(images / "img00.png", images / "noface.png")  # the test task raises NoFaceError on it
    out = tmp_path / "out"
    annotate(images, out, task=TASK, progress=False)
    report = write_report(out, tmp_path / "report", n=4, ncols=2)

    assert report["counts"] == {"done": 6, "failed": 1}
    assert report["failed_by_error"] == {"NoFaceError": 1}
    rmse = [r["photometric_rmse"] for r in report["images"]]
    assert len(rmse) == 6 and rmse == sorted(rmse, reverse=True)  # worst (highest RMSE) first
    for name in ("contact_sheet.png", "costs.png", "report.json"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    import cv2

    sheet = cv2.imread(str(tmp_path / "report" / "contact_sheet.png"))
    assert sheet.shape[0] > sheet.shape[1] * 0.8  # 4 tiles in 2 columns: two rows
    assert json.loads((tmp_path / "report" / "report.json").read_text())["images"][0]["key"] == report["images"][0]["key"]


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="fitem annotate"):
        write_report(tmp_path, tmp_path / "report")
