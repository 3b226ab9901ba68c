"""fitem.em helpers that need no fit: the Laplace uncertainty."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fitem.em import laplace_uncertainty
from fitem.models import load_model
from fitem.params import FaceParams, ParamLayout


@pytest.mark.parametrize("free", [None, ("shape",), ("expression", "light", "rotation")])
def test_laplace_uncertainty_equals_the_direct_trace(free):
    model = load_model("demo")
    params = FaceParams.for_model(model)
    layout = ParamLayout.of(params) if free is None else ParamLayout.of(params, free)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(layout.size, layout.size, generator=g, dtype=torch.float64)
    cov = torch.linalg.pinv(a @ a.T / layout.size + 0.01 * torch.eye(layout.size, dtype=torch.float64),
                            hermitian=True)
    sigma, vertex_sigma = laplace_uncertainty(model, cov, layout)
    for name in layout.names:
        np.testing.assert_allclose(sigma[name], cov.diagonal()[layout.slice(name)].sqrt().numpy(), rtol=1e-12)
    geo = [n for n in ("shape", "expression") if n in layout.names]
    idx = torch.cat([torch.arange(layout.slice(n).start, layout.slice(n).stop) for n in geo])
    mt = model.tensors(dtype=torch.float64)
    basis = torch.cat([mt.shape_basis if n == "shape" else mt.expression_basis for n in geo], dim=-1)
    ref = torch.einsum("ndk,kl,ndl->n", basis, cov[idx][:, idx], basis).sqrt().numpy()
    assert vertex_sigma.shape == (model.n_vertices,) and vertex_sigma.dtype == np.float32
    np.testing.assert_allclose(vertex_sigma, ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_laplace_uncertainty_without_geometry_has_no_vertex_map():
    model = load_model("demo")
    layout = ParamLayout.of(FaceParams.for_model(model), ("light", "translation"))
    sigma, vertex_sigma = laplace_uncertainty(model, torch.eye(layout.size, dtype=torch.float64), layout)
    assert vertex_sigma is None and sigma["light"] == [1.0] * 27
