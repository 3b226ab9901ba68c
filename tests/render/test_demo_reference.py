"""The rendered demo-model mean still looks like the saved reference face."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from fitem.models import load_model
from fitem.params import FaceParams
from fitem.render.camera import Camera
from fitem.render.raster import make_rasterizer
from fitem.render.renderer import render_params

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "demo_mean_224.png"


def test_demo_mean_matches_reference_png():
    model = load_model("demo")
    cam = Camera.default(224)
    rast = make_rasterizer(torch.as_tensor(model.triangles), (224, 224), backend="torch")
    img = render_params(model, FaceParams.for_model(model), cam, rast).image[0].clamp(0, 1).numpy()
    ref = cv2.cvtColor(cv2.imread(str(REFERENCE)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    covered, ref_covered = img.sum(-1) > 0, ref.sum(-1) > 0
    iou = (covered & ref_covered).sum() / (covered | ref_covered).sum()
    assert iou > 0.99, iou
    assert np.abs(img - ref).mean() < 0.01
    # it is a face: skin-toned, and darker at the brows and eye lines than on the cheeks
    assert 0.15 < covered.mean() < 0.6
    assert np.median(img[covered][:, 0]) > np.median(img[covered][:, 2])
