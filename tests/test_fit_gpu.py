"""``fitem.fit`` and the photometric Jacobian on CUDA against the CPU (``pytest -m gpu``; skipped without CUDA).

Never run on a GPU by the session that wrote it (no GPU was lent): the first GPU session runs
``scripts/gpu_check.sh``, which runs these.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fitem.api import fit
from fitem.bench.metrics import segmentation_scores, vertex_error_same_topology
from fitem.config import FitConfig
from fitem.fitting.jacobian import pixel_factors, pixel_jacobian, vertex_state
from fitem.params import FaceParams, ParamLayout
from fitem.render import nvdiffrast_available
from fitem.render.camera import Camera
from fitem.result import FitStatus

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    return torch.device("cuda")


@pytest.fixture(scope="module")
def cpu_fit(model, scarf):
    return fit(scarf.image, landmarks=scarf.landmarks68, model=model, config=FitConfig(backend="torch", device="cpu"))


def test_pixel_jacobian_on_cuda_equals_cpu(cuda, model):
    params = FaceParams.for_model(model, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    params = params.replace(shape=0.5 * torch.randn(model.n_shape, generator=g, dtype=torch.float64),
                            translation=torch.tensor([0.0, 0.0, 1000.0], dtype=torch.float64))
    cam = Camera.default(224)
    out = {}
    for dev in ("cpu", "cuda"):
        mt = model.tensors(dev, torch.float64)
        p = params.to(device=dev)
        st = vertex_state(mt, p, cam)
        tri = torch.arange(0, mt.triangles.shape[0], 7, device=dev)
        vid = mt.triangles[tri]
        uv = st.screen[vid][..., :2].mean(1)
        used, local = torch.unique(vid, return_inverse=True)
        factors = pixel_factors(mt, p, ParamLayout.of(p), cam, st, used)
        out[dev] = [t.cpu() for t in pixel_jacobian(st, factors, mt.triangles, tri, uv, local.reshape(-1, 3))]
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["cuda"][1], out["cpu"][1], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("backend", ["torch", "nvdiffrast"])
def test_fit_on_cuda_matches_the_cpu_fit(cuda, model, scarf, cpu_fit, backend):
    if backend == "nvdiffrast" and not nvdiffrast_available("cuda"):
        pytest.skip("nvdiffrast cannot run here (not installed or its CUDA code does not compile)")
    r = fit(scarf.image, landmarks=scarf.landmarks68, model=model, config=FitConfig(backend=backend, device="cuda"))
    assert r.status == FitStatus.SUCCESS, r.message
    assert r.backend == backend
    s = segmentation_scores(r.mask, scarf.visible_face, scarf.face_region)
    ref = segmentation_scores(cpu_fit.mask, scarf.visible_face, scarf.face_region)
    assert s["occluder_f1"] >= 0.75 and abs(s["occluder_f1"] - ref["occluder_f1"]) < 0.05, (s, ref)
    err = vertex_error_same_topology(r.vertices, scarf.vertices).median
    err_cpu = vertex_error_same_topology(cpu_fit.vertices, scarf.vertices).median
    assert err < max(1.5 * err_cpu, err_cpu + 0.5), (err, err_cpu)
    assert r.vertex_sigma is not None and np.isfinite(r.vertex_sigma).all()
