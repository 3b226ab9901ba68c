import math

import pytest
import torch

from fitem.errors import InvalidInputError, ShapeError
from fitem.params import AMBIENT_LIGHT
from fitem.render.meshes import icosphere
from fitem.render.shading import (
    SH_CONSTANTS,
    SH_LAMBERT_BANDS,
    SH_NORMALISATION,
    face_normals,
    sh_basis,
    shade,
    vertex_normals,
)


def _unit(n, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def test_constants_match_the_contract():
    quoted = (0.282095, 0.488603, 0.488603, 0.488603, 1.092548, 1.092548, 0.315392, 1.092548, 0.546274)
    assert SH_NORMALISATION == pytest.approx(quoted, abs=1e-6)
    assert SH_LAMBERT_BANDS == pytest.approx((math.pi,) + (2 * math.pi / 3,) * 3 + (math.pi / 4,) * 5)
    assert SH_CONSTANTS == pytest.approx([c * a for c, a in zip(quoted, SH_LAMBERT_BANDS)], rel=1e-5)


def test_sh_basis_order_and_values():
    n = torch.tensor([[0.6, 0.0, 0.8]], dtype=torch.float64)
    x, y, z = 0.6, 0.0, 0.8
    expected = [1.0, y, z, x, x * y, y * z, 3 * z * z - 1, x * z, x * x - y * y]
    got = sh_basis(n)[0]
    assert got.tolist() == pytest.approx([c * e for c, e in zip(SH_CONSTANTS, expected)])


def test_irradiance_of_a_directional_light_is_the_clamped_cosine_expansion():
    # SH light projected from a unit directional light along d: L_i = Y_i(d). By the addition theorem,
    # E(n) = sum_l A_l (2l+1)/(4 pi) P_l(cos) = 1/4 + cos/2 + 5/16 P2(cos) -- independent of the basis order
    # and normalisation conventions, so this pins both.
    n, d = _unit(200, 0), _unit(1, 1)[0]
    # Y_i(d) = sh_basis(d)_i / A_l(i) (sh_basis has the Lambertian band factors folded in)
    light = sh_basis(d[None])[0] / torch.tensor(SH_LAMBERT_BANDS, dtype=torch.float64)
    e = sh_basis(n) @ light
    c = n @ d
    expected = 0.25 + 0.5 * c + 5.0 / 16.0 * (3 * c * c - 1) / 2
    torch.testing.assert_close(e, expected, rtol=0, atol=1e-12)


def test_ambient_light_shades_everything_at_point_eight():
    light = torch.zeros(1, 9, 3, dtype=torch.float64)
    light[:, 0] = AMBIENT_LIGHT
    n = _unit(50, 2)[None]
    albedo = torch.rand(1, 50, 3, dtype=torch.float64)
    torch.testing.assert_close(shade(albedo, n, light), 0.8 * albedo)


def test_shade_colour_transform_and_batch():
    g = torch.Generator().manual_seed(3)
    b, n = 2, 7
    albedo = torch.rand(b, n, 3, generator=g, dtype=torch.float64)
    normals = torch.stack([_unit(n, 4), _unit(n, 5)])
    light = torch.randn(b, 9, 3, generator=g, dtype=torch.float64)
    gain = torch.rand(b, 3, generator=g, dtype=torch.float64)
    offset = torch.rand(b, 3, generator=g, dtype=torch.float64)
    out = shade(albedo, normals, light, gain, offset)
    for i in range(b):
        ref = albedo[i] * (sh_basis(normals[i]) @ light[i]) * gain[i] + offset[i]
        torch.testing.assert_close(out[i], ref)


def test_face_normals_right_hand_rule():
    v = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 3, 0]])
    fn = face_normals(v, torch.tensor([[0, 1, 2]]))
    assert fn.tolist() == [[0.0, 0.0, 6.0]]  # twice the area, +z for counter-clockwise seen from +z
    assert face_normals(v, torch.tensor([[0, 2, 1]])).tolist() == [[0.0, 0.0, -6.0]]


def test_vertex_normals_are_area_weighted():
    # vertex 0 shared by a big triangle in the z=0 plane (normal +z) and a small one in the x=0 plane (+x)
    v = torch.tensor([[0.0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 1], [0, -1, 0]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [0, 3, 4]])
    n = vertex_normals(v, tri)
    m = torch.tensor([0.0, 0.0, 16.0]) + torch.tensor([1.0, 0.0, 0.0])  # cross products: 16 z, 1 x
    torch.testing.assert_close(n[0], (m / m.norm()).double())
    assert n[1].tolist() == [0.0, 0.0, 1.0]


def test_vertex_normals_of_a_sphere_point_outwards():
    v, tri = icosphere(3, radius=50.0, dtype=torch.float64)
    n = vertex_normals(v, tri)
    torch.testing.assert_close(n.norm(dim=1), torch.ones(len(v), dtype=torch.float64))
    assert float((n * v / 50.0).sum(1).min()) > 0.999
    # batched == unbatched, per item
    vb = torch.stack([v, 2.0 * v])
    nb = vertex_normals(vb, tri)
    torch.testing.assert_close(nb[0], n)
    torch.testing.assert_close(nb[1], n)


def test_isolated_vertex_gets_a_zero_normal_not_nan():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]], requires_grad=True)
    n = vertex_normals(v, torch.tensor([[0, 1, 2]]))
    assert n[3].tolist() == [0.0, 0.0, 0.0]
    (g,) = torch.autograd.grad(n.sum(), v)
    assert torch.isfinite(g).all()


def test_vertex_normals_gradcheck():
    g = torch.Generator().manual_seed(6)
    v, tri = icosphere(0, radius=1.0, dtype=torch.float64)
    v = (v + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, tri), (v,))


def test_shading_bad_inputs():
    with pytest.raises(ShapeError, match="normals"):
        sh_basis(torch.zeros(4, 2))
    with pytest.raises(ShapeError, match="light"):
        shade(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.zeros(1, 4, 3))
    with pytest.raises(ShapeError, match="int64"):
        vertex_normals(torch.zeros(3, 3), torch.tensor([[0, 1, 2]], dtype=torch.int32))
    with pytest.raises(InvalidInputError, match="only 3 vertices"):
        vertex_normals(torch.zeros(3, 3), torch.tensor([[0, 1, 3]]))
    with pytest.raises(ShapeError, match="floating-point"):
        vertex_normals(torch.zeros(3, 3, dtype=torch.int64), torch.tensor([[0, 1, 2]]))
