"""MorphableModel / LinearBlock: linearity, batching, dtypes, checksum, consistency errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fitem.errors import ModelError, ShapeError
from fitem.models.morphable import LinearBlock, MorphableModel
from tests.models import bfm_files as bf


def _model(seed: int = 0, landmarks=None) -> MorphableModel:
    f = bf.random_face(seed)
    return MorphableModel(
        "test",
        LinearBlock(f.mean, f.shape_u * f.shape_std, f.shape_std ** 2),
        LinearBlock(f.expr_mean, f.expr_u * f.expr_std, f.expr_std ** 2),
        LinearBlock(f.colour_mean, f.colour_u * f.colour_std, f.colour_std ** 2),
        f.tri_out,
        landmarks if landmarks is not None else {"ibug68": np.arange(68)},
        {"source": "test"},
    )


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return _model()


def test_zero_coefficients_give_the_means(model):
    v, a = model.instance()
    np.testing.assert_allclose(v.numpy(), model.shape.mean + model.expression.mean, atol=1e-5)
    np.testing.assert_allclose(a.numpy(), model.colour.mean, atol=1e-6)
    v0, a0 = model.instance(torch.zeros(model.n_shape), torch.zeros(model.n_expression), torch.zeros(model.n_colour))
    assert torch.equal(v0, v) and torch.equal(a0, a)


def test_instance_is_affine_in_the_coefficients(model):
    g = torch.Generator().manual_seed(0)
    dt = torch.float64

    def inst(s, e, c):
        return model.instance(s, e, c)

    s1, s2 = torch.randn(model.n_shape, generator=g, dtype=dt), torch.randn(model.n_shape, generator=g, dtype=dt)
    e1, e2 = torch.randn(model.n_expression, generator=g, dtype=dt), torch.randn(model.n_expression, generator=g, dtype=dt)
    c1, c2 = torch.randn(model.n_colour, generator=g, dtype=dt), torch.randn(model.n_colour, generator=g, dtype=dt)
    v0, a0 = inst(s1 * 0, e1 * 0, c1 * 0)
    v1, a1 = inst(s1, e1, c1)
    v2, a2 = inst(s2, e2, c2)
    vm, am = inst(2.0 * s1 - 0.5 * s2, 2.0 * e1 - 0.5 * e2, 2.0 * c1 - 0.5 * c2)
    torch.testing.assert_close(vm - v0, 2.0 * (v1 - v0) - 0.5 * (v2 - v0))
    torch.testing.assert_close(am - a0, 2.0 * (a1 - a0) - 0.5 * (a2 - a0))
    # each coefficient moves the vertices along its basis column
    unit = torch.zeros(model.n_shape, dtype=dt)
    unit[1] = 1.0
    d = inst(unit, None, None)[0] - inst(None, torch.zeros(model.n_expression, dtype=dt), None)[0]
    np.testing.assert_allclose(d.numpy().reshape(-1), model.shape.basis[:, 1], atol=1e-10)


def test_batched_equals_unbatched(model):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, model.n_shape, generator=g)
    e = torch.randn(4, model.n_expression, generator=g)
    c = torch.randn(model.n_colour, generator=g)  # 1-D mixed with batched: broadcast to the batch
    vb, ab = model.instance(s, e, c)
    assert vb.shape == (4, model.n_vertices, 3) and ab.shape == (4, model.n_vertices, 3)
    for i in range(4):
        vi, ai = model.instance(s[i], e[i], c)
        torch.testing.assert_close(vb[i], vi)
        torch.testing.assert_close(ab[i], ai)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_coefficients(model, dtype):
    v, a = model.instance(torch.ones(model.n_shape, dtype=dtype))
    assert v.dtype == dtype and a.dtype == dtype
    ref, _ = model.instance(torch.ones(model.n_shape, dtype=torch.float64))
    torch.testing.assert_close(v.double(), ref, atol=1e-3, rtol=1e-5)


def test_gradients_flow_to_coefficients(model):
    s = torch.zeros(model.n_shape, dtype=torch.float64, requires_grad=True)
    v, _ = model.instance(s)
    v.sum().backward()
    expected = model.shape.basis.astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-6)


def test_bad_coefficient_shapes(model):
    with pytest.raises(ShapeError, match="shape coefficients"):
        model.instance(torch.zeros(model.n_shape + 1))
    with pytest.raises(ShapeError, match=r"coefficients: expected shape .* or \(3, "):  # batch sizes disagree
        model.instance(torch.zeros(2, model.n_shape), torch.zeros(3, model.n_expression))


def test_checksum_is_stable_and_content_sensitive():
    a, b = _model(0), _model(0)
    assert a.checksum == b.checksum and len(a.checksum) == 16
    renamed = MorphableModel("other", a.shape, a.expression, a.colour, a.triangles, a.landmarks, {"x": "y"})
    assert renamed.checksum == a.checksum  # name and metadata are not content
    assert _model(1).checksum != a.checksum
    mean = a.shape.mean.copy()
    mean[5, 1] += 1e-3
    nudged = MorphableModel("test", LinearBlock(mean, a.shape.basis, a.shape.variance), a.expression, a.colour,
                            a.triangles, a.landmarks)
    assert nudged.checksum != a.checksum
    flipped = MorphableModel("test", a.shape, a.expression, a.colour, a.triangles[:, [0, 2, 1]], a.landmarks)
    assert flipped.checksum != a.checksum
    assert _model(0, landmarks={"ibug68": np.arange(1, 69)}).checksum != a.checksum
    assert _model(0, landmarks={}).checksum != a.checksum


def test_inconsistent_models_raise_model_error():
    f = bf.random_face(0)
    n = f.n
    shape = LinearBlock(f.mean, f.shape_u, f.shape_std ** 2)
    with pytest.raises(ModelError, match="all blocks must share one mesh"):
        MorphableModel("x", shape, LinearBlock.empty(n - 1), LinearBlock.empty(n), f.tri_out)
    with pytest.raises(ModelError, match="0-based"):
        MorphableModel("x", shape, LinearBlock.empty(n), LinearBlock.empty(n), f.tri_out + n)
    with pytest.raises(ModelError, match="landmark set"):
        MorphableModel("x", shape, LinearBlock.empty(n), LinearBlock.empty(n), f.tri_out, {"ibug68": [n]})
    bad = f.shape_u.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        LinearBlock(f.mean, bad, f.shape_std ** 2)
    with pytest.raises(ModelError, match="variance"):
        LinearBlock(f.mean, f.shape_u, f.shape_std[:-1] ** 2)
    with pytest.raises(ModelError, match="basis"):
        LinearBlock(f.mean, f.shape_u[:-3], f.shape_std ** 2)
