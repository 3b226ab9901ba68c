import math

import numpy as np
import pytest
import torch

from fitem.errors import ConfigError, InvalidInputError, ShapeError
from fitem.models import LinearBlock, MorphableModel
from fitem.params import AMBIENT_LIGHT, FaceParams
from fitem.render import Camera, RenderOutput, make_rasterizer, render, render_params
from fitem.render.camera import to_camera
from fitem.render.meshes import face_like_mesh, icosphere
from fitem.render.shading import SH_LAMBERT_BANDS, sh_basis

F64 = torch.float64


def _ambient(dtype=F64):
    light = torch.zeros(9, 3, dtype=dtype)
    light[0] = AMBIENT_LIGHT
    return light


def test_ambient_light_renders_point_eight_times_albedo():
    cam = Camera.default(48)
    v, tri = icosphere(3, radius=60.0, dtype=F64)
    albedo = torch.rand(len(v), 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    rast = make_rasterizer(tri, cam.image_size, backend="torch")
    out = render(v, albedo, _ambient(), torch.zeros(3, dtype=F64), torch.tensor([0.0, 0, 1000], dtype=F64), cam, rast)
    assert isinstance(out, RenderOutput)
    assert out.image.shape == (1, 48, 48, 3) and out.region.shape == (1, 48, 48)
    expected = 0.8 * (out.bary[..., None] * albedo[tri[out.raster.tri_id.clamp(min=0)]]).sum(-2)
    torch.testing.assert_close(out.image[out.region], expected[out.region])
    assert torch.all(out.image[~out.region] == 0)
    torch.testing.assert_close(out.vertex_colours[0], 0.8 * albedo)


def test_sphere_under_a_directional_light_matches_the_closed_form():
    # SH light projected from a unit directional light d (view space): E(n) = 1/4 + c/2 + 5/16 P2(c), c = n.d
    cam = Camera.default(96)
    r, dist = 60.0, 1000.0
    v, tri = icosphere(4, radius=r, dtype=F64)
    d = torch.tensor([0.3, 0.5, 0.8], dtype=F64)
    d = d / d.norm()
    y = sh_basis(d[None])[0] / torch.tensor(SH_LAMBERT_BANDS, dtype=F64)
    intensity = torch.tensor([1.0, 0.8, 0.6], dtype=F64)
    light = y[:, None] * intensity[None, :]
    albedo = torch.full((len(v), 3), 0.7, dtype=F64)
    rast = make_rasterizer(tri, cam.image_size, backend="torch")
    out = render(v, albedo, light, torch.zeros(3, dtype=F64), torch.tensor([0.0, 0, dist], dtype=F64), cam, rast)
    # exact sphere: intersect each pixel ray with it, normal in camera space -> view space (FLIP = diag(1,-1,-1))
    ii, jj = torch.nonzero(out.region[0], as_tuple=True)
    ray = torch.stack([(jj + 0.5 - cam.cx) / cam.focal, (ii + 0.5 - cam.cy) / cam.focal,
                       torch.ones(len(ii), dtype=F64)], -1)
    ray = ray / ray.norm(dim=1, keepdim=True)
    centre = torch.tensor([0.0, 0.0, dist], dtype=F64)
    bq = (ray @ centre)
    disc = bq**2 - (centre @ centre - r * r)
    hit = disc > 0
    t = bq - torch.sqrt(disc.clamp(min=0))
    n_cam = (t[:, None] * ray - centre) / r
    n_view = n_cam * torch.tensor([1.0, -1.0, -1.0], dtype=F64)
    interior = hit & (n_view[:, 2] > 0.3)  # away from the silhouette, where the polyhedron differs most
    c = n_view[interior] @ d
    e = 0.25 + 0.5 * c + 5.0 / 16.0 * (3 * c * c - 1) / 2
    expected = 0.7 * e[:, None] * intensity[None, :]
    got = out.image[0][ii[interior], jj[interior]]
    err = (got - expected).abs()
    assert interior.sum() > 1500
    assert float(err.mean()) < 2e-3 and float(err.max()) < 1e-2, (float(err.mean()), float(err.max()))


def test_gradcheck_rendered_colours():
    cam = Camera.default(8)
    g = torch.Generator().manual_seed(1)
    v, tri = icosphere(0, radius=45.0, dtype=F64)
    v = v + 2.0 * torch.randn(v.shape, generator=g, dtype=F64)
    albedo = torch.rand(len(v), 3, generator=g, dtype=F64)
    light = 0.3 * torch.randn(9, 3, generator=g, dtype=F64)
    light[0] += AMBIENT_LIGHT
    rot = torch.tensor([0.2, -0.3, 0.1], dtype=F64)
    tr = torch.tensor([1.0, -2.0, 420.0], dtype=F64)
    gain = torch.tensor([1.1, 0.9, 1.0], dtype=F64)
    offset = torch.tensor([0.01, -0.02, 0.0], dtype=F64)
    rast = make_rasterizer(tri, cam.image_size, backend="torch")
    fixed = render(v, albedo, light, rot, tr, cam, rast).raster
    assert fixed.mask.sum() > 25

    def f(v_, a_, l_, r_, t_, g_, o_):
        return render(v_, a_, l_, r_, t_, cam, rast, gain=g_, offset=o_, raster=fixed).image[fixed.mask]

    inputs = [x.clone().requires_grad_() for x in (v, albedo, light, rot, tr, gain, offset)]
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
    assert torch.autograd.gradcheck(lambda v_: f(v_, *inputs[1:]), (inputs[0],))  # full Jacobian for vertices
    # the same rasterization is recomputed when none is passed: the gradients agree
    out = render(*inputs[:5], cam, rast, gain=inputs[5], offset=inputs[6])
    torch.testing.assert_close(out.image[fixed.mask], f(*inputs))
    assert torch.equal(out.raster.tri_id, fixed.tri_id)


def test_vertex_gradient_flows_through_normals_and_barycentrics():
    cam = Camera.default(16)
    v, tri = icosphere(2, radius=60.0, dtype=F64)
    light = torch.zeros(9, 3, dtype=F64)
    light[2] = 1.0  # band-1 z: shading depends on the normal
    v = v.clone().requires_grad_()
    rast = make_rasterizer(tri, cam.image_size, backend="torch")
    out = render(v, torch.ones_like(v), light, torch.zeros(3, dtype=F64), torch.tensor([0.0, 0, 500], dtype=F64),
                 cam, rast)
    (gv,) = torch.autograd.grad(out.image.sum(), v)
    assert gv.abs().sum() > 0
    # with constant vertex colours (ambient), only the geometry... colours are constant -> zero gradient
    out2 = render(v, torch.ones_like(v), _ambient(), torch.zeros(3, dtype=F64),
                  torch.tensor([0.0, 0, 500], dtype=F64), cam, rast)
    (gv2,) = torch.autograd.grad(out2.image.sum(), v)
    assert gv2.abs().max() < 1e-12


def test_camera_conventions():
    cam = Camera.default(64)
    pts = torch.tensor([[[0.0, 0, 0], [50, 0, 0], [0, 50, 0], [0, 0, 50]]], dtype=F64)

    def uv(rot):
        return cam.project(to_camera(pts, torch.tensor([rot], dtype=F64), torch.tensor([[0.0, 0, 1000]], dtype=F64)))

    s = uv([0.0, 0.0, 0.0])
    assert s[0, 0, 0] == cam.cx and s[0, 0, 1] == cam.cy
    assert s[0, 1, 0] > cam.cx  # +x model -> larger u (viewer's right)
    assert s[0, 2, 1] < cam.cy  # +y model -> smaller v (up in the image)
    assert s[0, 3, 2] < s[0, 0, 2]  # +z model -> towards the camera (smaller depth)
    s = uv([0.0, 0.4, 0.0])
    assert s[0, 3, 0] > cam.cx  # positive yaw turns the nose (+z) to the viewer's right
    s = uv([0.4, 0.0, 0.0])
    assert s[0, 3, 1] > cam.cy  # positive pitch tips the nose down
    s = uv([0.0, 0.0, 0.4])
    assert s[0, 1, 1] < cam.cy  # positive roll turns +x upwards (counter-clockwise in the image)


def test_yawed_face_shows_its_nose_on_the_right():
    cam = Camera.default(128)
    v, tri = face_like_mesh(3000)
    rast = make_rasterizer(tri, cam.image_size, backend="torch")
    nose = int(torch.argmax(v[:, 2]))
    nose_tris = (tri == nose).any(1).nonzero().squeeze(1)

    def nose_column(yaw):
        out = render(v, torch.ones_like(v), _ambient(torch.float32), torch.tensor([0.0, yaw, 0.0]),
                     torch.tensor([0.0, 0.0, 800.0]), cam, rast)
        hit = torch.isin(out.raster.tri_id[0], nose_tris).nonzero()
        assert len(hit) > 0
        return float(hit[:, 1].float().mean())

    front = nose_column(0.0)
    assert abs(front + 0.5 - cam.cx) < 1.5
    assert nose_column(0.5) > front + 5  # positive yaw: the nose turns to the viewer's right
    assert nose_column(-0.5) < front - 5


def test_batching_and_broadcasting():
    cam = Camera.default(32)
    v, tri = icosphere(2, radius=60.0)
    rast = make_rasterizer(tri, cam.image_size, backend="torch")
    albedo = torch.full_like(v, 0.5)
    rots = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    tr = torch.tensor([0.0, 0.0, 1000.0])
    batch = render(v[None].expand(2, -1, -1), albedo, _ambient(torch.float32), rots, tr, cam, rast)
    assert batch.image.shape == (2, 32, 32, 3)
    for i in range(2):
        one = render(v, albedo, _ambient(torch.float32), rots[i], tr, cam, rast)
        torch.testing.assert_close(batch.image[i], one.image[0])
        assert torch.equal(batch.raster.tri_id[i], one.raster.tri_id[0])
    # one unbatched mesh under a batch of poses
    poses = render(v, albedo, _ambient(torch.float32), rots, tr, cam, rast)
    torch.testing.assert_close(poses.image, batch.image)


def test_vertex_colours_and_normals_follow_shade_and_vertex_normals():
    from fitem.render.camera import rotation_matrix
    from fitem.render.shading import shade, vertex_normals

    cam = Camera.default(32)
    g = torch.Generator().manual_seed(3)
    v, tri = icosphere(2, radius=60.0, dtype=F64)
    vb = torch.stack([v, v * 1.1])
    albedo = torch.rand(2, len(v), 3, generator=g, dtype=F64)
    light = torch.randn(2, 9, 3, generator=g, dtype=F64)
    rot = torch.tensor([[0.1, 0.2, 0.3], [-0.2, 0.5, 0.0]], dtype=F64)
    gain, offset = torch.rand(2, 3, generator=g, dtype=F64), torch.rand(2, 3, generator=g, dtype=F64)
    rast = make_rasterizer(tri, cam.image_size, backend="torch")
    out = render(vb, albedo, light, rot, torch.tensor([0.0, 0, 900], dtype=F64), cam, rast, gain=gain, offset=offset)
    normals = vertex_normals(vb, tri) @ rotation_matrix(rot).transpose(-1, -2)
    torch.testing.assert_close(out.normals_view, normals)
    torch.testing.assert_close(out.vertex_colours, shade(albedo, normals, light, gain, offset))


def test_colour_transform():
    cam = Camera.default(32)
    v, tri = icosphere(2, radius=60.0)
    rast = make_rasterizer(tri, cam.image_size, backend="torch")
    args = (v, torch.full_like(v, 0.5), _ambient(torch.float32), torch.zeros(3), torch.tensor([0.0, 0, 1000]), cam,
            rast)
    out = render(*args, gain=torch.tensor([1.0, 2.0, 0.5]), offset=torch.tensor([0.1, 0.0, -0.1]))
    expected = torch.tensor([0.4 + 0.1, 0.8, 0.2 - 0.1])
    torch.testing.assert_close(out.image[out.region], expected.expand(int(out.region.sum()), 3))


def _toy_model(v, tri, ks=3, kc=2):
    n = len(v)
    rng = np.random.default_rng(0)
    shape = LinearBlock(v.numpy(), rng.normal(size=(3 * n, ks)).astype(np.float32), np.ones(ks, np.float32))
    colour = LinearBlock(np.full((n, 3), 0.5, np.float32), 0.05 * rng.normal(size=(3 * n, kc)).astype(np.float32),
                         np.ones(kc, np.float32))
    return MorphableModel("toy", shape, LinearBlock.empty(n), colour, tri.numpy())


def test_render_params_uses_the_model_instance():
    cam = Camera.default(32)
    v, tri = icosphere(2, radius=60.0)
    model = _toy_model(v, tri)
    params = FaceParams.for_model(model).replace(shape=torch.tensor([0.5, -1.0, 0.2]),
                                                 colour=torch.tensor([1.0, 0.3]),
                                                 rotation=torch.tensor([0.1, 0.2, 0.0]))
    rast = make_rasterizer(torch.as_tensor(model.triangles), cam.image_size, backend="torch")
    out = render_params(model, params, cam, rast)
    verts, albedo = model.instance(params.shape, params.expression, params.colour)
    ref = render(verts, albedo, params.light, params.rotation, params.translation, cam, rast)
    torch.testing.assert_close(out.image, ref.image)
    assert out.region.any()


def test_render_bad_inputs():
    cam = Camera.default(32)
    v, tri = icosphere(1, radius=60.0)
    rast = make_rasterizer(tri, cam.image_size, backend="torch")
    ok = dict(albedo=torch.full_like(v, 0.5), light=_ambient(torch.float32), rotation=torch.zeros(3),
              translation=torch.tensor([0.0, 0, 1000]))

    def call(vertices=v, camera=cam, rasterizer=rast, **kw):
        args = {**ok, **kw}
        return render(vertices, args["albedo"], args["light"], args["rotation"], args["translation"], camera,
                      rasterizer)

    bad = v.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        call(bad)
    with pytest.raises(ShapeError, match="vertices"):
        call(v[:, :2])
    with pytest.raises(ShapeError, match="floating-point"):
        call(v.to(torch.int64))
    with pytest.raises(ShapeError, match="albedo"):
        call(albedo=torch.zeros(len(v) - 1, 3))
    with pytest.raises(ShapeError, match="light"):
        call(light=torch.zeros(4, 3))
    with pytest.raises(ShapeError, match="rotation"):
        call(rotation=torch.zeros(4))
    with pytest.raises(ShapeError, match="batch size"):
        call(translation=torch.zeros(3, 3), rotation=torch.zeros(2, 3))
    with pytest.raises(ShapeError, match="42 vertices"):
        call(v[:30], albedo=torch.zeros(30, 3))
    with pytest.raises(ConfigError, match="image size"):
        call(camera=Camera.default(64))
    with pytest.raises(ConfigError, match="make_rasterizer"):
        call(rasterizer="torch")
    assert math.isfinite(float(call().image.sum()))
