"""Crops and targets re-derived from an annotation folder."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fitem.errors import InvalidInputError
from fitem.landmarks.align import AlignTransform
from fitem.segnet.data import load_crops, read_annotation


def test_crops_of_done_records(annotation):
    crops = load_crops(annotation["dir"])
    keys = sorted(annotation["truth"])
    assert crops.keys == keys  # the failed record is left out
    n, s = len(keys), annotation["config"].size
    assert crops.images.shape == (n, s, s, 3) and crops.images.dtype == np.uint8
    assert crops.masks.shape == crops.regions.shape == crops.valid.shape == (n, s, s)
    assert crops.renders is None and crops.crop_size == s
    assert not np.any(crops.masks & ~crops.regions)
    assert crops.run["model"] == "demo"
    for i, key in enumerate(keys):
        t = annotation["truth"][key]
        meta = json.loads((annotation["dir"] / "results" / key / "params.json").read_text())
        T = AlignTransform(np.asarray(meta["transform"]), s, t["image"].shape[:2])
        # the crop is the input warped by the saved transform ...
        np.testing.assert_allclose(crops.images[i], T.warp_image(t["image"]), atol=1)  # float vs uint8 warp
        # ... and the crop's target maps back onto the fit's own mask
        back = T.mask_to_input(crops.masks[i])
        inter, union = (back & t["fit_mask"]).sum(), (back | t["fit_mask"]).sum()
        assert inter / union > 0.95, (key, inter / union)


def test_keys_filter_and_no_done_is_an_error(annotation, tmp_path):
    crops = load_crops(annotation["dir"], keys=["img01", "img03", "nope"])
    assert crops.keys == ["img01", "img03"]
    with pytest.raises(InvalidInputError, match="no 'done' images"):
        load_crops(annotation["dir"], keys=["broken"])
    d = tmp_path / "empty"
    d.mkdir()
    shutil.copy(annotation["dir"] / "run.json", d / "run.json")
    (d / "manifest.jsonl").write_text(json.dumps({"key": "a", "input": "/x.png", "status": "failed",
                                                  "result": None}) + "\n")
    with pytest.raises(InvalidInputError, match="1 failed"):
        load_crops(d)
    with pytest.raises(InvalidInputError, match="annotation folder"):
        load_crops(tmp_path)


def test_missing_input_is_skipped(annotation, tmp_path):
    d = tmp_path / "ann"
    shutil.copytree(annotation["dir"], d)
    _, records = read_annotation(d)
    lines = []
    for key, rec in records.items():
        if key == "img00":
            rec = {**rec, "input": str(tmp_path / "gone.png")}
        lines.append(json.dumps(rec) + "\n")
    (d / "manifest.jsonl").write_text("".join(lines))
    crops = load_crops(d)
    assert "img00" not in crops.keys and "img00" in crops.skipped
    assert len(crops) == len(annotation["truth"]) - 1


def test_six_channel_crops_hold_the_initial_render(annotation):
    crops = load_crops(annotation["dir"], in_channels=6, keys=["img00", "img01"])
    assert crops.renders.shape == crops.images.shape and crops.renders.dtype == np.uint8
    for i in range(2):
        drawn = crops.renders[i].sum(-1) > 0
        # the initial render covers roughly the fitted face region
        overlap = (drawn & crops.regions[i]).sum() / (drawn | crops.regions[i]).sum()
        assert overlap > 0.7, overlap
