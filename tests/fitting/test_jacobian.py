"""The analytic photometric and landmark Jacobians equal torch.func.jacfwd in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fitem.fitting.jacobian import (
    pixel_barycentrics,
    pixel_factors,
    pixel_jacobian,
    pixel_values_and_jacobian,
    vertex_jacobians,
    vertex_state,
)
from fitem.models.morphable import LinearBlock, MorphableModel
from fitem.params import BLOCKS, FaceParams, ParamLayout
from fitem.render.camera import Camera


def _dome_model(seed: int = 0, n: int = 9) -> MorphableModel:
    """A small bumpy dome (a face-sized height field) with random bases."""
    rng = np.random.default_rng(seed)
    xs = np.linspace(-60, 60, n)
    gx, gy = np.meshgrid(xs, xs)
    gz = 60 * np.exp(-(gx**2 + gy**2) / (2 * 45.0**2)) + rng.normal(0, 2, gx.shape)
    verts = np.stack([gx, gy, gz], -1).reshape(-1, 3)
    tris = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            tris += [[a, b, d], [a, d, c]]  # CCW seen from +z
    tris = np.array(tris)
    N = verts.shape[0]

    def block(k, scale, mean):
        return LinearBlock(mean, rng.normal(0, scale, (3 * N, k)), np.full(k, scale**2))

    colour_mean = np.clip(0.6 + rng.normal(0, 0.05, (N, 3)), 0, 1)
    return MorphableModel(
        name="dome",
        shape=block(4, 3.0, verts),
        expression=block(3, 2.0, np.zeros((N, 3))),
        colour=block(3, 0.05, colour_mean),
        triangles=tris,
        landmarks={"ibug68": np.arange(0, N, max(1, N // 10))},
    )


def _params(model: MorphableModel, seed: int = 1) -> FaceParams:
    g = torch.Generator().manual_seed(seed)
    p = FaceParams.for_model(model, dtype=torch.float64)
    light = p.light + 0.2 * torch.randn(9, 3, generator=g, dtype=torch.float64)
    return p.replace(
        shape=0.5 * torch.randn(model.n_shape, generator=g, dtype=torch.float64),
        expression=0.5 * torch.randn(model.n_expression, generator=g, dtype=torch.float64),
        colour=0.5 * torch.randn(model.n_colour, generator=g, dtype=torch.float64),
        light=light,
        rotation=torch.tensor([0.1, -0.25, 0.05], dtype=torch.float64),
        translation=torch.tensor([5.0, -3.0, 900.0], dtype=torch.float64),
    )


@pytest.mark.parametrize("path", ["vertex_first", "pixel_first"])
@pytest.mark.parametrize("free", [BLOCKS, ("rotation", "translation"), ("shape", "light"), ("expression", "colour")])
def test_pixel_jacobian_matches_jacfwd(free, path):
    model = _dome_model()
    mt = model.tensors(dtype=torch.float64)
    cam = Camera.default(224)
    params = _params(model)
    layout = ParamLayout.of(params, free)
    st = vertex_state(mt, params, cam)
    # One sample point inside every triangle (a fixed rasterization): 0.2/0.3/0.5 of the vertices.
    tri = torch.arange(mt.triangles.shape[0])
    vid = mt.triangles[tri]
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    uv = (st.screen[vid][..., :2] * w[None, :, None]).sum(1)

    if path == "vertex_first":
        values, J = pixel_values_and_jacobian(st, vertex_jacobians(mt, params, layout, cam, st), mt.triangles, tri, uv)
    else:
        used, local = torch.unique(vid, return_inverse=True)
        factors = pixel_factors(mt, params, layout, cam, st, used)
        values, J = pixel_jacobian(st, factors, mt.triangles, tri, uv, local.reshape(-1, 3))

    def f(x):
        p = layout.unflatten(x, params)
        s = vertex_state(mt, p, cam)
        lam = pixel_barycentrics(s.screen, vid, uv)
        return torch.einsum("mk,mkc->mc", lam, s.colours[vid])

    x0 = layout.flatten(params)
    ref = torch.func.jacfwd(f)(x0)
    torch.testing.assert_close(values, f(x0), rtol=1e-12, atol=1e-12)
    err = (J - ref).abs().max() / ref.abs().max()
    assert err <= 1e-8, f"relative error {err:.2e}"


def test_landmark_screen_jacobian_matches_jacfwd():
    model = _dome_model(seed=3)
    mt = model.tensors(dtype=torch.float64)
    cam = Camera.default(224)
    params = _params(model, seed=4)
    layout = ParamLayout.of(params)
    idx = torch.as_tensor(model.landmark_indices("ibug68"))
    jac = vertex_jacobians(mt, params, layout, cam, vertex_index=idx)

    def f(x):
        return vertex_state(mt, layout.unflatten(x, params), cam).screen[idx]

    ref = torch.func.jacfwd(f)(layout.flatten(params))
    err = (jac.screen - ref).abs().max() / ref.abs().max()
    assert err <= 1e-8 and not math.isnan(float(err))


def test_vertex_subset_rows_equal_full_rows():
    model = _dome_model(seed=5)
    mt = model.tensors(dtype=torch.float64)
    cam = Camera.default(224)
    params = _params(model, seed=6)
    layout = ParamLayout.of(params)
    st = vertex_state(mt, params, cam)
    full = vertex_jacobians(mt, params, layout, cam, st)
    rows = torch.tensor([0, 3, 17, 40, 41, 80])
    sub = vertex_jacobians(mt, params, layout, cam, st, vertex_index=rows)
    torch.testing.assert_close(sub.stacked, full.stacked[rows], rtol=1e-12, atol=1e-12)


def test_pixel_first_equals_vertex_first_on_a_pixel_subset():
    """Factors for a vertex superset, pixels of a few triangles: the two chain-rule orders agree."""
    model = _dome_model(seed=7)
    mt = model.tensors(dtype=torch.float64)
    cam = Camera.default(224)
    params = _params(model, seed=8)
    layout = ParamLayout.of(params)
    st = vertex_state(mt, params, cam)
    tri = torch.tensor([3, 4, 50, 51, 100, 127])
    vid = mt.triangles[tri]
    w = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    uv = (st.screen[vid][..., :2] * w[None, :, None]).sum(1)
    used = torch.arange(0, mt.shape_mean.shape[0])  # every vertex: rows are vertex ids
    factors = pixel_factors(mt, params, layout, cam, st, used)
    values, J = pixel_jacobian(st, factors, mt.triangles, tri, uv, vid)
    ref_values, ref = pixel_values_and_jacobian(st, vertex_jacobians(mt, params, layout, cam, st), mt.triangles, tri, uv)
    torch.testing.assert_close(values, ref_values, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(J, ref, rtol=1e-11, atol=1e-11)
