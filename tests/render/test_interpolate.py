import pytest
import torch

from fitem.errors import InvalidInputError, ShapeError
from fitem.render.camera import Camera, to_camera
from fitem.render.interpolate import barycentrics, interpolate
from fitem.render.meshes import face_like_mesh, icosphere
from fitem.render.raster import TorchRasterizer

F64 = torch.float64


@pytest.fixture(scope="module")
def scene():
    cam = Camera.default(48)
    v, tri = face_like_mesh(800, noise=0.5, dtype=F64)
    rot = torch.tensor([[0.1, 0.4, -0.1]], dtype=F64)
    tr = torch.tensor([[2.0, -3.0, 1200.0]], dtype=F64)
    cam_pts = to_camera(v[None], rot, tr)
    screen = cam.project(cam_pts)
    raster = TorchRasterizer(tri, cam.image_size).rasterize(screen)
    return cam, v, tri, cam_pts, screen, raster


def test_barycentrics_equal_the_rasterizers_and_sum_to_one(scene):
    _, _, tri, _, screen, raster = scene
    bary = barycentrics(screen, tri, raster.tri_id)
    torch.testing.assert_close(bary, raster.bary, rtol=0, atol=1e-13)
    m = raster.mask
    torch.testing.assert_close(bary[m].sum(-1), torch.ones(int(m.sum()), dtype=F64))
    assert torch.all(bary[~m] == 0)
    assert torch.all(bary[m] >= -0.05)  # coverage uses 1/16-pixel snapped vertices


def test_barycentrics_are_perspective_correct(scene):
    # the 3-D point sum_k lambda_k X_k projects exactly onto the pixel centre, and its depth is the raster depth
    cam, _, tri, cam_pts, _, raster = scene
    m = raster.mask[0]
    ii, jj = torch.nonzero(m, as_tuple=True)
    lam = raster.bary[0][m]
    verts = cam_pts[0][tri[raster.tri_id[0][m]]]  # (P, 3 vertices, xyz)
    p = (lam.unsqueeze(-1) * verts).sum(1)
    uvz = cam.project(p)
    torch.testing.assert_close(uvz[:, 0], jj.to(F64) + 0.5, rtol=0, atol=1e-9)
    torch.testing.assert_close(uvz[:, 1], ii.to(F64) + 0.5, rtol=0, atol=1e-9)
    torch.testing.assert_close(uvz[:, 2], raster.depth[0][m], rtol=1e-12, atol=0)


def test_interpolate_constant_and_linear_attributes(scene):
    _, v, tri, cam_pts, screen, raster = scene
    const = torch.full((1, len(v), 2), 3.5, dtype=F64)
    img = interpolate(const, tri, raster.tri_id, raster.bary)
    assert img.shape == (1, 48, 48, 2)
    torch.testing.assert_close(img[raster.mask], torch.full_like(img[raster.mask], 3.5))
    assert torch.all(img[~raster.mask] == 0)
    # interpolating camera-space z gives the depth buffer
    z = interpolate(screen[..., 2:], tri, raster.tri_id, raster.bary)[..., 0]
    torch.testing.assert_close(z[raster.mask], raster.depth[raster.mask])


def test_gradcheck_barycentrics_and_interpolate():
    cam = Camera.default(12)
    v, tri = icosphere(1, radius=40.0, dtype=F64)
    screen = cam.project(to_camera(v[None], torch.tensor([[0.2, 0.3, 0.1]], dtype=F64),
                                   torch.tensor([[1.0, 2.0, 400.0]], dtype=F64)))
    raster = TorchRasterizer(tri, cam.image_size).rasterize(screen)
    assert raster.mask.sum() > 20
    s = screen.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: barycentrics(x, tri, raster.tri_id), (s,))
    g = torch.Generator().manual_seed(0)
    attr = torch.rand(1, len(v), 3, generator=g, dtype=F64, requires_grad=True)
    bary = raster.bary.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: interpolate(a, tri, raster.tri_id, b), (attr, bary),
                                    fast_mode=True)


def test_bad_inputs():
    _, tri = icosphere(0)
    tri_id = torch.full((1, 4, 4), -1)
    with pytest.raises(ShapeError, match="screen"):
        barycentrics(torch.zeros(12, 3), tri, tri_id)
    with pytest.raises(ShapeError, match="tri_id"):
        barycentrics(torch.zeros(2, 12, 3), tri, tri_id)
    with pytest.raises(ShapeError, match="int64"):
        barycentrics(torch.zeros(1, 12, 3), tri, tri_id.int())
    with pytest.raises(InvalidInputError, match="only 10 vertices"):
        interpolate(torch.zeros(1, 10, 3), tri, tri_id, torch.zeros(1, 4, 4, 3))
    with pytest.raises(ShapeError, match="bary"):
        interpolate(torch.zeros(1, 12, 3), tri, tri_id, torch.zeros(1, 4, 4, 2))
    with pytest.raises(ShapeError, match="attr"):
        interpolate(torch.zeros(12, 3), tri, tri_id, torch.zeros(1, 4, 4, 3))
