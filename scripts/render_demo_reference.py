"""Render the demo model's mean face (frontal and turned) with fitem's own renderer.

Writes ``tests/data/demo_mean_224.png`` (the reference the renderer test compares
against) and ``docs/img/demo_mean_render.png`` (the README picture).
Run it again only when the demo model or the renderer changes on purpose.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fitem.models import load_model
from fitem.params import FaceParams
from fitem.render.camera import Camera
from fitem.render.raster import make_rasterizer
from fitem.render.renderer import render_params

ROOT = Path(__file__).resolve().parents[1]


def render_mean(yaw_deg: float = 0.0, size: int = 224) -> np.ndarray:
    model = load_model("demo")
    cam = Camera.default(size)
    params = FaceParams.for_model(model).replace(rotation=torch.tensor([0.0, np.deg2rad(yaw_deg), 0.0]))
    rast = make_rasterizer(torch.as_tensor(model.triangles), (size, size), backend="torch")
    out = render_params(model, params, cam, rast)
    return out.image[0].clamp(0, 1).numpy()


def main() -> None:
    import cv2

    from fitem.viz import side_by_side, to_uint8

    front = render_mean(0.0)
    ref = ROOT / "tests" / "data" / "demo_mean_224.png"
    ref.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(ref), cv2.cvtColor(to_uint8(front), cv2.COLOR_RGB2BGR))
    pic = side_by_side(front, render_mean(-30.0), render_mean(30.0), height=224)
    cv2.imwrite(str(ROOT / "docs" / "img" / "demo_mean_render.png"), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
    print(f"wrote {ref} and docs/img/demo_mean_render.png")


if __name__ == "__main__":
    main()
