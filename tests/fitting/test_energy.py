"""The M-step energy as an autograd tensor: same value as the solver's cost, gradient = Jᵀr."""
from __future__ import annotations

import numpy as np
import torch

from fitem.config import FitConfig
from fitem.em import m_step_problem
from fitem.render.camera import Camera
from fitem.render.raster import TorchRasterizer
from tests.fitting.test_jacobian import _dome_model, _params


def _mstep(round_index: int):
    model = _dome_model(n=13)
    mt = model.tensors(dtype=torch.float64)
    cam = Camera.default(96)
    params = _params(model)
    rast = TorchRasterizer(mt.triangles, (96, 96))
    rng = np.random.default_rng(0)
    target = torch.as_tensor(rng.uniform(0.3, 0.8, (96, 96, 3)))
    mask = rng.uniform(size=(96, 96)) > 0.3
    lm_index = torch.as_tensor(model.landmark_indices("ibug68"))
    lms = torch.as_tensor(rng.uniform(20, 70, (lm_index.numel(), 2)))
    cfg = FitConfig(max_pixels=100_000)
    return m_step_problem(mt, target, lms, lm_index, cam, rast, params, mask, cfg, round_index=round_index,
                          sigma=0.05, generator=torch.Generator().manual_seed(0))


def test_energy_equals_problem_cost_and_its_gradient_is_jtr():
    for r in (0, 1):
        ms = _mstep(r)
        x = ms.layout.flatten(ms.base).double().clone().requires_grad_(True)
        e = ms.energy(x)
        ev = float(e.detach())
        (grad,) = torch.autograd.grad(e, x)
        lin = ms.problem.linearize(x.detach())
        np.testing.assert_allclose(ev, ms.problem.cost(x.detach()), rtol=1e-8)
        np.testing.assert_allclose(ev, float(lin.cost), rtol=1e-8)
        # Robust (IRLS) rescaling keeps Jᵀr the exact gradient of the cost.
        torch.testing.assert_close(grad, lin.jtr, rtol=1e-7, atol=1e-7 * float(grad.abs().max()))
        assert float(grad.abs().max()) > 0
