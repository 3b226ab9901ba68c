"""Manifest, run file, result-folder checks and input collection (no workers)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from fitem.annotation import collect_inputs, iter_manifest, read_manifest, read_run, result_is_complete
from fitem.annotation.manifest import MANIFEST_FILE, ManifestWriter, write_run
from fitem.errors import InvalidInputError
from fitem.landmarks.pts import write_pts


def _rec(key: str, status: str = "done", **kw) -> dict:
    return {"key": key, "input": f"/data/{key}.jpg", "status": status, "result": f"results/{key}", **kw}


def test_manifest_round_trip_last_record_wins(tmp_path: Path) -> None:
    with ManifestWriter(tmp_path) as w:
        w.append(_rec("a", "failed", error_type="NoFaceError", error="no face"))
        w.append(_rec("sub/b", seconds=1.5))
        w.append(_rec("a", "done"))
    recs = read_manifest(tmp_path)
    assert set(recs) == {"a", "sub/b"}
    assert recs["a"]["status"] == "done"
    assert recs["sub/b"]["seconds"] == 1.5
    assert [r["key"] for r in iter_manifest(tmp_path)] == ["a", "sub/b", "a"]
    assert read_manifest(tmp_path / "nowhere") == {}


def test_truncated_last_line_is_dropped_and_repaired(tmp_path: Path, caplog) -> None:
    with ManifestWriter(tmp_path) as w:
        w.append(_rec("a"))
        w.append(_rec("b"))
    path = tmp_path / MANIFEST_FILE
    whole = json.dumps(_rec("c")).encode()
    with open(path, "ab") as fh:  # a crash in the middle of writing record c
        fh.write(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING):
        assert set(read_manifest(tmp_path)) == {"a", "b"}
    assert "truncated" in caplog.text
    with ManifestWriter(tmp_path) as w:  # reopening cuts the torn tail so the next record is a line of its own
        w.append(_rec("d"))
    assert set(read_manifest(tmp_path)) == {"a", "b", "d"}
    assert path.read_bytes().count(b"\n") == 3


def test_damaged_middle_line_is_ignored_with_a_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / MANIFEST_FILE
    lines = [json.dumps(_rec("a")), "{not json", json.dumps({"key": "x", "status": "weird"}), json.dumps(_rec("b"))]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        assert set(read_manifest(tmp_path)) == {"a", "b"}
    assert "line 2" in caplog.text and "line 3" in caplog.text


def test_run_file_round_trip_and_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not a `fitem annotate` output folder"):
        read_run(tmp_path)
    info = {"format": 1, "config_hash": "abc123", "config": {"size": 224}, "model": "demo"}
    write_run(tmp_path, info)
    assert read_run(tmp_path) == info
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(InvalidInputError, match="--overwrite"):
        read_run(tmp_path)


def test_result_is_complete(tmp_path: Path) -> None:
    d = tmp_path / "r"
    d.mkdir()
    ok, png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    (d / "mask.png").write_bytes(png.tobytes())
    assert not result_is_complete(d)  # no params.json yet
    (d / "params.json").write_text('{"image_size": [8, 8]}')
    assert result_is_complete(d)
    (d / "mask.png").write_bytes(png.tobytes()[:-5])  # truncated copy
    assert not result_is_complete(d)
    (d / "mask.png").write_bytes(png.tobytes())
    (d / "params.json").write_text('{"image_size": [8')
    assert not result_is_complete(d)


def test_collect_inputs_folder(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for rel in ("b.JPG", "a.png", "a.jpg", "sub/deep/c.webp", "sub/x.tiff", ".hidden/h.png", ".dot.png",
                "notes.txt", "sub/readme.md"):
        (root / rel).write_bytes(b"x")
    write_pts(root / "b.pts", np.ones((68, 2)))
    out = root / "annotations"  # output inside the input: never searched
    (out / "results" / "k").mkdir(parents=True)
    (out / "results" / "k" / "mask.png").write_bytes(b"x")
    items = collect_inputs(root, exclude=out)
    assert [it.key for it in items] == ["a", "a_2", "b", "sub/deep/c", "sub/x"]
    assert items[0].path.endswith("a.jpg") and items[1].path.endswith("a.png")  # same stem: extension order
    assert items[2].landmarks == str((root / "b.pts").resolve())
    assert all(it.landmarks is None for it in items if it.key != "b")
    assert collect_inputs(str(root), exclude=out) == items  # deterministic


def test_collect_inputs_lists(tmp_path: Path) -> None:
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    for p in ("d1/face.jpg", "d2/face.jpg", "d1/other.png"):
        (tmp_path / p).write_bytes(b"x")
    lst = tmp_path / "list.txt"
    lst.write_text("# my images\nd1/face.jpg\n\nd2/face.jpg\n" + str(tmp_path / "d1/other.png") + "\nd1/face.jpg\n")
    items = collect_inputs(lst)
    assert [it.key for it in items] == ["face", "face_2", "other"]  # stems, de-duplicated; repeats dropped
    assert items[1].path == str((tmp_path / "d2/face.jpg").resolve())
    assert [it.key for it in collect_inputs([tmp_path / "d2/face.jpg", tmp_path / "d1/face.jpg"])] == ["face", "face_2"]
    assert [it.key for it in collect_inputs(tmp_path / "d1/other.png")] == ["other"]


def test_collect_inputs_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        collect_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInputError, match="no images found"):
        collect_inputs(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("# nothing\n\n")
    with pytest.raises(InvalidInputError, match="names no images"):
        collect_inputs(tmp_path / "blank.txt")
    with pytest.raises(InvalidInputError, match="no input images"):
        collect_inputs([])
