"""The command line maps flags onto library calls and reports errors without tracebacks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fitem.cli import main


def test_model_info_demo(capsys):
    assert main(["model", "info", "demo"]) == 0
    out = capsys.readouterr().out
    assert "vertices" in out and "ibug68 (68)" in out and "checksum" in out


def test_model_info_json_and_convert(tmp_path, capsys):
    assert main(["model", "info", "demo", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["components"]["shape"] > 0
    out = tmp_path / "demo.npz"
    assert main(["model", "convert", "demo", str(out)]) == 0
    capsys.readouterr()
    assert main(["model", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checksum"] == info["checksum"]


def test_missing_model_file_is_a_clean_error(tmp_path, capsys):
    assert main(["model", "info", str(tmp_path / "nope.h5")]) == 2
    err = capsys.readouterr().err
    assert "nope.h5" in err and "Traceback" not in err


def test_fit_command_writes_result_folders(tmp_path, capsys):
    import cv2

    from fitem.bench.synthetic import make_sample
    from fitem.landmarks import write_pts
    from fitem.models import load_model

    s = make_sample(load_model("demo"), 77, occluder="object")
    img_path = tmp_path / "face.png"
    cv2.imwrite(str(img_path), cv2.cvtColor((s.image * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    pts = tmp_path / "face.pts"
    write_pts(pts, s.landmarks68)
    rc = main(["fit", str(img_path), "--out", str(tmp_path / "out"), "--landmarks", str(pts), "--rounds", "2", "-q"])
    assert rc == 0
    res = tmp_path / "out" / "face"
    assert (res / "params.json").is_file() and (res / "mask.png").is_file() and (res / "overlay.png").is_file()


def test_fit_rejects_landmarks_for_several_images(tmp_path):
    with pytest.raises(SystemExit):
        main(["fit", "a.png", "b.png", "--out", str(tmp_path), "--landmarks", "x.pts"])
