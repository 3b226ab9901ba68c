"""nvdiffrast ↔ PyTorch rasterizer parity (needs CUDA and nvdiffrast; ``pytest -m gpu``).

The nvdiffrast backend takes coverage and the depth test from nvdiffrast and computes
barycentrics and depth with the PyTorch backend's exact formula. nvdiffrast's own
barycentrics clamp b0 and b1 to [0, 1]; where snapping covers a pixel whose centre lies just
outside the exact triangle they differ from the exact values (on an H200: 1.5-3 % of the
pixels, by up to 0.04 on triangles of at least 1 px², and up to 6.7 on nearly edge-on ones).
The statistics are printed (``pytest -s``).
"""
import json
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
    diff = (torch_out.bary[same] - nv_out.bary[same]).abs().amax(-1).double()
    area = _screen_area(screen, tri.to(device), torch_out.tri_id)[same]
    well = area >= 1.0
    rel = ((torch_out.depth[same] - nv_out.depth[same]).abs() / torch_out.depth[same]).double()
    stats = {"covered": int(covered.sum()), "tri_id_agree": agree, "bary_le_1e-4": (diff <= 1e-4).double().mean().item(),
             **{f"bary_q{q}": diff.quantile(q).item() for q in (0.5, 0.99, 0.999)}, "bary_max": diff.max().item(),
             "well_conditioned_share": well.double().mean().item(),
             "bary_max_area_ge_1px": diff[well].max().item() if well.any() else 0.0,
             "depth_rel_q0.999": rel.quantile(0.999).item(), "depth_rel_max_area_ge_1px": rel[well].max().item() if well.any() else 0.0}
    print("parity", tuple(size), json.dumps(stats))
    assert stats["bary_max"] < 1e-4, stats
    assert rel.max().item() < 1e-5, stats
    return torch_out, nv_out


def _screen_area(screen, tri, tri_id):
    """Screen-space area (px²) of the triangle at each pixel (0 where none)."""
    b, h, w = tri_id.shape
    n = screen.shape[1]
    t = tri_id.clamp(min=0)
    idx = tri[t] + (torch.arange(b, device=tri.device) * n).view(b, 1, 1, 1)  # (B, H, W, 3)
    p = screen.reshape(-1, 3)[idx.reshape(-1)].view(b, h, w, 3, 3)[..., :2]
    e1, e2 = p[..., 1, :] - p[..., 0, :], p[..., 2, :] - p[..., 0, :]
    area = 0.5 * (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]).abs()
    return torch.where(tri_id >= 0, area, torch.zeros_like(area))


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
