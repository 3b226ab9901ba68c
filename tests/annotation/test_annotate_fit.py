"""annotate with the real fit (small config, tiny images) and the ``fitem annotate`` command line."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from fitem.annotation import annotate, read_manifest, read_run
from fitem.annotation.cli import register
from fitem.config import FitConfig
from fitem.landmarks import detect_landmarks
from fitem.landmarks.pts import write_pts

from .conftest import FAKE_TASK

SMALL = FitConfig(size=112, rounds=1, iterations=2, first_iterations=2)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return cv2.resize(skimage.data.astronaut(), (200, 200), interpolation=cv2.INTER_AREA)


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def test_real_fit_failures_recorded_while_the_rest_finish(face: np.ndarray, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    _write(inp / "300w" / "b_face.png", face)
    given = detect_landmarks(face).ibug68 + 1.5  # a sidecar .pts that differs from what detection would give
    write_pts(inp / "300w" / "b_face.pts", given)
    _write(inp / "c_coffee.png", cv2.resize(skimage.data.coffee(), (200, 150), interpolation=cv2.INTER_AREA))
    (inp / "d_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    out = tmp_path / "out"

    s = annotate(inp, out, config=SMALL, save_overlay=True, progress=False)

    assert (s.done, s.failed, s.total) == (1, 2, 3)
    assert s.errors == {"NoFaceError": 1, "InvalidInputError": 1}
    recs = read_manifest(out)
    assert recs["c_coffee"]["error_type"] == "NoFaceError" and "no face" in recs["c_coffee"]["error"]
    assert recs["d_corrupt"]["error_type"] == "InvalidInputError"
    run = read_run(out)
    assert run["config_hash"] == SMALL.hash() and run["config"]["size"] == 112 and run["model"] == "demo"
    for key in ("300w/b_face",):
        rec = recs[key]
        assert rec["status"] == "done" and rec["model_checksum"] == run["model_checksum"]
        folder = out / rec["result"]
        assert sorted(p.name for p in folder.iterdir()) == ["mask.png", "occlusion.png", "overlay.png",
                                                            "params.json", "render.png"]
        mask = cv2.imread(str(folder / "mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (200, 200) and set(np.unique(mask)) <= {0, 255} and (mask > 0).sum() > 200
        meta = json.loads((folder / "params.json").read_text())
        assert np.asarray(meta["transform"]).shape == (2, 3) and meta["image_size"] == [200, 200]
        assert np.asarray(meta["landmarks"]).shape == (68, 2) and meta["config"]["size"] == 112
    sidecar = np.asarray(json.loads((out / "results/300w/b_face/params.json").read_text())["landmarks"])
    np.testing.assert_allclose(sidecar, given, atol=1e-3)  # the .pts points were used, not a detection


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fitem")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_exit_codes(face: np.ndarray, tmp_path: Path, capsys, monkeypatch) -> None:
    import fitem.annotation.runner as runner

    monkeypatch.setattr(runner, "DEFAULT_TASK", FAKE_TASK)  # the CLI maps flags; the fit is tested above
    inp = tmp_path / "in"
    _write(inp / "face.png", face)
    out = tmp_path / "out"
    assert _cli(["annotate", str(inp), "--out", str(out), "--size", "64", "--rounds", "1", "-q"]) == 0
    assert read_manifest(out)["face"]["status"] == "done"
    assert read_run(out)["config"]["size"] == 64 and read_run(out)["config"]["rounds"] == 1

    (inp / "broken.png").write_bytes(b"not a png")
    assert _cli(["annotate", str(inp), "--out", str(out), "--size", "64", "--rounds", "1"]) == 1
    table = capsys.readouterr().out
    assert "InvalidInputError 1" in table and "fitem annotate →" in table
    assert read_manifest(out)["broken"]["status"] == "failed"
    assert _cli(["annotate", str(inp), "--out", str(out), "--size", "64", "--rounds", "1", "-q"]) == 1  # not retried
    (inp / "broken.png").unlink()
    _write(inp / "broken.png", face)
    assert _cli(["annotate", str(inp), "--out", str(out), "--size", "64", "--rounds", "1", "-q",
                 "--retry-failed"]) == 0

    assert _cli(["annotate", str(inp), "--out", str(out), "-q"]) == 2  # other config, no --overwrite
    err = capsys.readouterr().err
    assert err.startswith("fitem: error:") and "--overwrite" in err and "Traceback" not in err

    (tmp_path / "empty").mkdir()
    assert _cli(["annotate", str(tmp_path / "empty"), "--out", str(tmp_path / "o2"), "-q"]) == 2
    assert "no images found" in capsys.readouterr().err
