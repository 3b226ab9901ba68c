"""Tests of make_dataset / save_dataset / load_dataset."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from fitem.bench.synthetic import OCCLUDER_CLASSES, SyntheticConfig, load_dataset, make_dataset, save_dataset
from fitem.errors import ConfigError, InvalidInputError


@pytest.fixture(scope="module")
def small(demo):
    model = demo[0]
    return make_dataset(model, 5, seed=3, size=96)


def _equal(a, b) -> bool:
    return (np.array_equal(a.image, b.image) and np.array_equal(a.occluder_mask, b.occluder_mask)
            and np.array_equal(a.face_region, b.face_region))


def test_make_dataset_cycles_classes_and_is_prefix_stable(demo, small):
    assert [s.occluder_class for s in small] == list(OCCLUDER_CLASSES)
    assert all(s.image.shape == (96, 96, 3) for s in small)
    assert len({s.seed for s in small}) == 5
    prefix = make_dataset(demo[0], 2, seed=3, size=96)
    assert all(_equal(a, b) for a, b in zip(prefix, small[:2]))
    other = make_dataset(demo[0], 1, seed=4, size=96)
    assert not _equal(other[0], small[0])
    only = make_dataset(demo[0], 2, seed=3, size=96, classes=("hand",))
    assert [s.occluder_class for s in only] == ["hand", "hand"]
    with pytest.raises(ConfigError):
        make_dataset(demo[0], 2, classes=("hat",))


def test_save_load_roundtrip_is_lossless(tmp_path, demo, small):
    out = save_dataset(small, tmp_path / "ds", config=SyntheticConfig(), model=demo[0])
    files = sorted(p.name for p in out.iterdir())
    assert "manifest.json" in files and "000000_image.png" in files and "000004_truth.npz" in files
    assert not [f for f in files if f.endswith(".tmp")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["checksum"] == demo[0].checksum
    assert SyntheticConfig.from_dict(manifest["config"]) == SyntheticConfig()
    loaded = load_dataset(out)
    assert len(loaded) == len(small)
    for a, b in zip(small, loaded):
        for name in ("image", "face_region", "occluder_mask", "visible_face", "vertices", "landmarks68"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and np.array_equal(x, y), name
        for block in ("shape", "expression", "colour", "light", "rotation", "translation"):
            assert torch.equal(getattr(a.params, block), getattr(b.params, block)), block
        assert (a.occluder_class, a.seed, a.camera) == (b.occluder_class, b.seed, b.camera)
        assert a.info == b.info
    # the saved mask PNGs are plain 0/255 images other tools can read
    occ = cv2.imread(str(out / "000002_occluder.png"), cv2.IMREAD_UNCHANGED)
    assert occ.dtype == np.uint8 and set(np.unique(occ)) <= {0, 255}


def test_save_refuses_to_overwrite_and_load_detects_damage(tmp_path, small):
    out = save_dataset(small[:2], tmp_path / "ds")
    with pytest.raises(ConfigError, match="overwrite"):
        save_dataset(small[:2], out)
    save_dataset(small[:2], out, overwrite=True)
    vis = np.zeros((96, 96), np.uint8)
    cv2.imwrite(str(out / "000001_visible.png"), vis)
    with pytest.raises(InvalidInputError, match="region & ~occluder"):
        load_dataset(out)
    (out / "000001_visible.png").unlink()
    with pytest.raises(InvalidInputError, match="missing"):
        load_dataset(out)
    with pytest.raises(InvalidInputError, match="manifest"):
        load_dataset(tmp_path / "nothing")
