"""A tiny annotation folder in the documented ``fitem annotate`` layout, made with real fits.

Synthetic demo-model faces (112 px) are pasted at an offset into larger noisy canvases, so
that the crop transform is not the identity; each is fitted with a fast config and saved
with ``FitResult.save``; ``run.json`` and ``manifest.jsonl`` are written by hand (one
``failed`` record included). Ground truth is kept in memory for the tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fitem.api import fit
from fitem.bench.synthetic import make_sample
from fitem.config import FitConfig
from fitem.landmarks.pts import write_pts
from fitem.models import load_model

FAST = FitConfig(size=112, rounds=1, iterations=2, first_iterations=2, backend="torch")
CLASSES = ("scarf", "glasses", "hand", "none", "object", "scarf")


def _canvas(sample, rng, shape=(150, 176)):
    h, w = sample.image.shape[:2]
    H, W = shape
    oy, ox = int(rng.integers(0, H - h)), int(rng.integers(0, W - w))
    img = rng.uniform(0.2, 0.8, (H, W, 3)).astype(np.float32)
    img[oy:oy + h, ox:ox + w] = sample.image

    def paste(m):
        out = np.zeros((H, W), bool)
        out[oy:oy + h, ox:ox + w] = m
        return out

    lms = sample.landmarks68 + np.array([ox, oy], np.float32)
    return np.round(img * 255).astype(np.uint8), lms, paste(sample.visible_face), paste(sample.face_region)


def make_annotation(root: Path, n: int = 6, seed: int = 4100, with_failed: bool = True) -> dict:
    from fitem._files import atomic_write_bytes, png_bytes

    model = load_model("demo")
    rng = np.random.default_rng(seed)
    inputs, out = root / "inputs", root / "ann"
    (out / "results").mkdir(parents=True)
    inputs.mkdir(parents=True)
    run = {"format": 1, "fitem_version": "test", "config_hash": FAST.hash(), "config": FAST.as_dict(),
           "model": "demo", "model_checksum": model.checksum, "created": "2024-01-01T00:00:00+00:00"}
    (out / "run.json").write_text(json.dumps(run))
    lines, truth = [], {}
    for i in range(n):
        s = make_sample(model, seed + i, occluder=CLASSES[i % len(CLASSES)], size=112)
        img, lms, visible, region = _canvas(s, rng)
        key = f"img{i:02d}"
        path = inputs / f"{key}.png"
        atomic_write_bytes(path, png_bytes(img))
        write_pts(path.with_suffix(".pts"), lms)
        r = fit(img, landmarks=lms, model=model, config=FAST)
        r.save(out / "results" / key)
        truth[key] = {"image": img, "landmarks": lms, "visible": visible, "region": region, "fit_mask": r.mask}
        lines.append({"key": key, "input": str(path.resolve()), "status": "done", "result": f"results/{key}",
                      "error_type": None, "error": None, "seconds": 0.3, "config_hash": FAST.hash(),
                      "model_checksum": model.checksum, "fitem_version": "test",
                      "finished": "2024-01-01T00:00:00+00:00", "worker": "test:1"})
    if with_failed:
        lines.append({"key": "broken", "input": str((inputs / "broken.png").resolve()), "status": "failed",
                      "result": None, "error_type": "NoFaceError", "error": "no face", "seconds": 0.1,
                      "config_hash": FAST.hash(), "model_checksum": model.checksum, "fitem_version": "test",
                      "finished": "2024-01-01T00:00:00+00:00", "worker": "test:1"})
    (out / "manifest.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    return {"dir": out, "inputs": inputs, "truth": truth, "config": FAST, "model": model}


@pytest.fixture(scope="session")
def annotation(tmp_path_factory):
    return make_annotation(tmp_path_factory.mktemp("segnet_annotation"))


@pytest.fixture(scope="session")
def trained_net(annotation, tmp_path_factory):
    """A net distilled for a few epochs from the fixture annotation (report, path)."""
    from fitem.segnet import distill

    path = tmp_path_factory.mktemp("segnet_net") / "net.pt"
    report = distill(annotation["dir"], path, epochs=3, batch_size=4, base=4, val_fraction=0.2, progress=False)
    return report, path
