"""nvdiffrast ↔ PyTorch rasterizer parity (needs CUDA and nvdiffrast; ``pytest -m gpu``)."""
import math

import pytest
import torch

from fitem.params import AMBIENT_LIGHT
from fitem.render import Camera, make_rasterizer, nvdiffrast_available, render
from fitem.render.camera import to_camera
from fitem.render.meshes import face_like_mesh, icosphere
from fitem.render.raster import NvdiffrastRasterizer, TorchRasterizer

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    if not nvdiffrast_available("cuda"):
        pytest.skip("nvdiffrast cannot run here (not installed or its CUDA code does not compile)")
    return torch.device("cuda")


def _screen(v, cam, rot, tr, device):
    v = v.to(device)
    return cam.project(to_camera(v[None], torch.tensor([rot], device=device), torch.tensor([tr], device=device)))


def _compare(tri, screen, size, device):
    torch_out = TorchRasterizer(tri.to(device), size).rasterize(screen)
    nv_out = NvdiffrastRasterizer(tri.to(device), size).rasterize(screen)
    assert torch.equal(nv_out.pixels, torch.nonzero(nv_out.mask.reshape(-1)).squeeze(1))
    covered = torch_out.mask | nv_out.mask
    same = (torch_out.tri_id == nv_out.tri_id) & covered
    agree = same.sum().item() / max(1, covered.sum().item())
    assert agree >= 0.995, f"tri_id agrees on {agree:.4%} of covered pixels"
    diff = (torch_out.bary[same] - nv_out.bary[same]).abs().max().item()
    assert diff < 1e-4, f"barycentrics differ by {diff}"
    rel = ((torch_out.depth[same] - nv_out.depth[same]).abs() / torch_out.depth[same]).max().item()
    assert rel < 1e-5
    return torch_out, nv_out


def test_sphere_parity(device):
    cam = Camera.default(224)
    v, tri = icosphere(5, radius=80.0)
    for rot, tr in (((0.0, 0.0, 0.0), (0.0, 0.0, 1000.0)), ((0.3, -0.5, 0.2), (30.0, -20.0, 800.0))):
        _compare(tri, _screen(v, cam, rot, tr, device), cam.image_size, device)


def test_face_sized_mesh_parity_and_colours(device):
    # a BFM-2017-sized (28,588 vertices) irregular face-like mesh, at two image sizes and a few poses
    v, tri = face_like_mesh(28588, noise=0.3)
    for size in (224, 512):
        cam = Camera.default(size)
        for rot in ((0.0, 0.0, 0.0), (0.2, 0.6, -0.1), (-0.3, -0.9, 0.3)):
            tr = (0.0, 0.0, cam.focal * math.sqrt(math.pi * 75 * 95 / (0.6 * size * size)))
            _compare(tri, _screen(v, cam, rot, tr, device), cam.image_size, device)
    cam = Camera.default(224)
    light = torch.zeros(9, 3, device=device)
    light[0] = AMBIENT_LIGHT
    light[2] = 0.3
    albedo = torch.rand(len(v), 3, device=device, generator=torch.Generator(device).manual_seed(0))
    args = (v.to(device), albedo, light, torch.tensor([0.1, 0.4, 0.0], device=device),
            torch.tensor([0.0, 0.0, 1100.0], device=device), cam)
    a = render(*args, make_rasterizer(tri.to(device), cam.image_size, backend="torch"))
    b = render(*args, make_rasterizer(tri.to(device), cam.image_size, backend="nvdiffrast"))
    both = a.region & b.region
    assert (a.region ^ b.region).sum() <= 0.005 * both.sum()
    close = (a.image[both] - b.image[both]).abs().amax(-1) < 1e-3
    assert close.float().mean() > 0.995


def test_batch_with_an_empty_item(device):
    cam = Camera.default(128)
    v, tri = icosphere(4, radius=60.0)
    s = torch.cat([_screen(v, cam, (0.0, 0.0, 0.0), (0.0, 0.0, 900.0), device),
                   _screen(v, cam, (0.0, 0.0, 0.0), (5000.0, 0.0, 900.0), device),
                   _screen(v, cam, (0.5, 0.2, 0.0), (10.0, 0.0, 700.0), device)])
    torch_out, nv_out = _compare(tri, s, cam.image_size, device)
    assert not nv_out.mask[1].any()


def test_auto_picks_nvdiffrast_on_cuda(device):
    _, tri = icosphere(2)
    assert make_rasterizer(tri.to(device), (64, 64)).backend == "nvdiffrast"
    assert make_rasterizer(tri, (64, 64)).backend == "torch"
