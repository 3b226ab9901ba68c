"""Cheap stand-ins for the fit, run by annotate's workers in tests (importable by name)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from fitem._files import atomic_write_bytes, png_bytes
from fitem.errors import NoFaceError
from fitem.image import load_image


def fake_fit(image_path: str, result_dir: str, *, model: str, config: dict, landmarks: str | None, overlay: bool,
             mesh: bool, arrays: bool) -> None:
    """Same signature as fitem.annotation.worker.fit_image: mask = bright pixels, params = image statistics.

    ``config["extra"]["sleep"]`` seconds are spent between writing mask.png and params.json, so a
    process killed mid-run is often caught half-way through a result folder. A file whose name holds
    ``noface`` raises NoFaceError; an undecodable file raises InvalidInputError (from load_image).
    """
    extra = config.get("extra") or {}
    img = load_image(image_path)
    if "noface" in Path(image_path).name:
        raise NoFaceError(f"no face found in {image_path!r} (test task)")
    out = Path(result_dir)
    mask = img.mean(axis=2) > 0.5
    atomic_write_bytes(out / "mask.png", png_bytes(mask.astype(np.uint8) * 255))
    time.sleep(float(extra.get("sleep", 0.0)))
    if overlay:
        atomic_write_bytes(out / "overlay.png", png_bytes((img * 255).astype(np.uint8)))
    meta = {"image_size": list(mask.shape), "mean": round(float(img.mean()), 6), "landmarks": landmarks,
            "model": model}
    atomic_write_bytes(out / "params.json", json.dumps(meta, sort_keys=True).encode())


def interrupting_fit(image_path: str, result_dir: str, **kw) -> None:
    """fake_fit, but Ctrl-C arrives while an image named ``img03`` is processed."""
    if Path(image_path).stem == "img03":
        raise KeyboardInterrupt
    fake_fit(image_path, result_dir, **kw)


def skipping_fit(image_path: str, result_dir: str, **kw) -> None:
    """fake_fit, but declines images whose number is a multiple of 3."""
    from fitem.annotation import SkipImage

    if int(Path(image_path).stem[-2:]) % 3 == 0:
        raise SkipImage("multiple of three (test task)")
    fake_fit(image_path, result_dir, **kw)


def reported_fit(image_path: str, result_dir: str, **kw) -> None:
    """fake_fit plus what the report reads: occlusion.png and one EM round whose photometric RMSE is
    the image mean (so the report's ranking is known)."""
    fake_fit(image_path, result_dir, **kw)
    out = Path(result_dir)
    img = load_image(image_path)
    mask = img.mean(axis=2) > 0.5
    atomic_write_bytes(out / "occlusion.png", png_bytes((~mask).astype(np.uint8) * 255))
    meta = json.loads((out / "params.json").read_text())
    meta["rounds"] = [{"round": 1, "cost_history": [10.0, 5.0], "photometric_rmse": float(img.mean()),
                       "landmark_error_px": 2.0, "mask_fraction": float(mask.mean())}]
    meta["timings"] = {"total": 0.01}
    atomic_write_bytes(out / "params.json", json.dumps(meta, sort_keys=True).encode())
