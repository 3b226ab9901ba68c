"""Shared fixtures of the benchmark tests: the demo model and a rasterizer, built once per module."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def demo():
    """``(model, camera, rasterizer)`` at 224 px; skips when the demo model cannot be built here."""
    try:
        from fitem.models.demo import demo_model
    except ImportError as e:  # the demo model module is missing from this checkout
        pytest.skip(f"fitem.models.demo.demo_model is not importable ({e})")
    from fitem.render.camera import Camera
    from fitem.render.raster import make_rasterizer

    model = demo_model()
    camera = Camera.default(224)
    rast = make_rasterizer(model.tensors().triangles, camera.image_size, backend="torch")
    return model, camera, rast
