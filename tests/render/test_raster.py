import math

import pytest
import torch

from fitem.errors import ConfigError, InvalidInputError, RasterizerUnavailableError, ShapeError
from fitem.render.camera import Camera, to_camera
from fitem.render.meshes import face_like_mesh, grid_plane, icosphere
from fitem.render.raster import (
    NvdiffrastRasterizer,
    RasterOutput,
    TorchRasterizer,
    make_rasterizer,
    snap_to_subpixels,
)
from tests.render.reference import reference_rasterize

F64 = torch.float64


def _screen(vertices, camera, rotation=(0.0, 0.0, 0.0), translation=(0.0, 0.0, 1000.0)):
    v = vertices if vertices.dim() == 3 else vertices[None]
    rot = torch.tensor([rotation], dtype=v.dtype).expand(v.shape[0], 3)
    tr = torch.tensor([translation], dtype=v.dtype).expand(v.shape[0], 3)
    return camera.project(to_camera(v, rot, tr))


def _quad(u0, v0, u1, v1, z=1000.0, dtype=F64):
    """A screen-space rectangle facing the camera (A < 0 triangles), vertices 0..3."""
    s = torch.tensor([[[u0, v0, z], [u1, v0, z], [u1, v1, z], [u0, v1, z]]], dtype=dtype)
    tri = torch.tensor([[0, 3, 2], [0, 2, 1]])  # clockwise in (u, v-down) = counter-clockwise seen from the camera
    return s, tri


def test_quad_is_front_facing_and_covers_exactly_its_pixel_centres():
    s, tri = _quad(10.2, 5.6, 30.7, 20.4)
    out = TorchRasterizer(tri, (32, 40)).rasterize(s)
    # centres j + 0.5 in [10.2, 30.7] -> j = 10..30 (21 columns); i + 0.5 in [5.6, 20.4] -> i = 6..19 (14 rows)
    expected = torch.zeros(32, 40, dtype=torch.bool)
    expected[6:20, 10:31] = True
    assert torch.equal(out.mask[0], expected)
    torch.testing.assert_close(out.depth[0][expected], torch.full((int(expected.sum()),), 1000.0, dtype=F64))
    assert torch.all(torch.isinf(out.depth[0][~expected]))
    assert torch.all(out.bary[0][~expected] == 0)
    torch.testing.assert_close(out.bary[0][expected].sum(-1), torch.ones(int(expected.sum()), dtype=F64))
    assert torch.equal(out.pixels, torch.nonzero(expected.reshape(-1)).squeeze(1))
    assert torch.equal(out.covered(), RasterOutput(out.tri_id, out.bary, out.depth).covered())


def test_coverage_uses_vertices_snapped_to_sixteenths_of_a_pixel():
    assert snap_to_subpixels(torch.tensor([10.2, 10.47, 10.53, -3.01]), 40, 4).tolist() == [
        10.1875, 10.5, 10.5, -3.0]
    # right edge at u = 10.47: the centre u = 10.5 is outside, but the edge snaps onto it (u = 10.5)
    s, tri = _quad(2.3, 2.3, 10.47, 6.7)
    exact = TorchRasterizer(tri, (8, 16), subpixel_bits=None).rasterize(s)
    snapped = TorchRasterizer(tri, (8, 16)).rasterize(s)
    assert not exact.mask[0, :, 10].any()
    # on the right edge of the quad: the top-left rule leaves it out, exactly as at u = 10.5
    s2, _ = _quad(2.3, 2.3, 10.5, 6.7)
    assert torch.equal(snapped.mask, TorchRasterizer(tri, (8, 16), subpixel_bits=None).rasterize(s2).mask)
    # left edge snapped onto a centre is inside (top-left rule)
    s3, _ = _quad(2.53, 2.3, 10.2, 6.7)
    assert TorchRasterizer(tri, (8, 16)).rasterize(s3).mask[0, 3:7, 2].all()
    assert not TorchRasterizer(tri, (8, 16), subpixel_bits=None).rasterize(s3).mask[0, :, 2].any()
    # barycentrics and depth stay those of the unsnapped quad at the pixel centres
    from fitem.render.interpolate import barycentrics

    torch.testing.assert_close(snapped.bary, barycentrics(s, tri, snapped.tri_id))
    torch.testing.assert_close(snapped.bary, exact.bary)
    left = TorchRasterizer(tri, (8, 16)).rasterize(s3)
    torch.testing.assert_close(left.bary, barycentrics(s3, tri, left.tri_id))
    assert float(left.bary[0, 3:7, 2].min()) < 0  # the centre lies 0.03 px outside the unsnapped quad
    with pytest.raises(ConfigError, match="subpixel_bits"):
        TorchRasterizer(tri, (8, 16), subpixel_bits=12)


def test_reversed_winding_is_culled():
    s, tri = _quad(10.2, 5.6, 30.7, 20.4)
    out = TorchRasterizer(tri[:, [0, 2, 1]], (32, 40)).rasterize(s)
    assert not out.mask.any()


def test_depth_at_pixel_centres_of_a_tilted_plane_is_the_ray_intersection():
    cam = Camera.default(64)
    v, tri = grid_plane(3, 3, 120.0, 120.0, dtype=F64)
    rot = (0.0, 0.5, 0.0)  # yaw: the plane's normal turns towards +x
    s = _screen(v, cam, rot, (5.0, -3.0, 900.0))
    out = TorchRasterizer(tri, cam.image_size).rasterize(s)
    m = out.mask[0]
    assert m.sum() > 500
    # plane through t with normal n (camera space): depth along the pixel ray d = ((u-cx)/f, (v-cy)/f, 1)
    from fitem.render.camera import rotation_matrix

    r = rotation_matrix(torch.tensor(rot, dtype=F64))
    n_cam = torch.tensor([1.0, -1.0, -1.0], dtype=F64) * (r @ torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    t = torch.tensor([5.0, -3.0, 900.0], dtype=F64)
    ii, jj = torch.nonzero(m, as_tuple=True)
    d = torch.stack([(jj + 0.5 - cam.cx) / cam.focal, (ii + 0.5 - cam.cy) / cam.focal, torch.ones_like(ii, dtype=F64)],
                    -1)
    z = (n_cam @ t) / (d @ n_cam)
    torch.testing.assert_close(out.depth[0][m], z, rtol=1e-9, atol=0)


def test_sphere_coverage_matches_the_projected_disc():
    cam = Camera.default(128)
    r, dist = 60.0, 1000.0
    v, tri = icosphere(5, radius=r, dtype=F64)
    out = TorchRasterizer(tri, cam.image_size).rasterize(_screen(v, cam, translation=(0, 0, dist)))
    # the silhouette cone has half-angle asin(r / D); its image is a disc of radius f r / sqrt(D^2 - r^2)
    radius = cam.focal * r / math.sqrt(dist**2 - r**2)
    area = math.pi * radius**2
    assert abs(out.mask.sum().item() - area) / area < 0.01
    # depth at the centre pixel ~ D - r (the polyhedron is inscribed: slightly deeper)
    c = out.depth[0, 63:65, 63:65]
    assert torch.all((c > dist - r) & (c < dist - r + 0.2))


def test_sphere_back_faces_culled_from_outside_and_all_culled_from_inside():
    cam = Camera.default(96)
    v, tri = icosphere(3, radius=50.0, dtype=F64)
    rast = TorchRasterizer(tri, cam.image_size)
    out = rast.rasterize(_screen(v, cam))
    ids = out.tri_id[out.mask]
    centres = v[tri[ids]].mean(1)  # model space == view space at zero rotation
    normals = torch.linalg.cross(v[tri[ids, 1]] - v[tri[ids, 0]], v[tri[ids, 2]] - v[tri[ids, 0]], dim=1)
    to_camera_dir = torch.tensor([0.0, 0.0, 1000.0], dtype=F64) - centres
    assert float((normals * to_camera_dir).sum(1).min()) > 0  # every visible triangle faces the camera
    assert torch.all(centres[:, 2] > 0)
    # camera inside the sphere: every outward normal points away -> nothing drawn
    big, _ = icosphere(3, radius=2000.0, dtype=F64)
    inside = rast.rasterize(_screen(big, cam, translation=(0, 0, 100.0)))
    assert not inside.mask.any()
    # ... unless the winding is flipped (an inward-facing sphere, like a room)
    room = TorchRasterizer(tri[:, [0, 2, 1]], cam.image_size).rasterize(_screen(big, cam, translation=(0, 0, 100.0)))
    assert room.mask.all()


def test_nearer_triangle_wins_regardless_of_order():
    s1, tri = _quad(5.3, 5.3, 25.7, 25.7, z=900.0)
    s2, _ = _quad(15.3, 15.3, 35.7, 35.7, z=800.0)
    s = torch.cat([s1, s2], 1)
    both = torch.cat([tri, tri + 4])
    for order in (both, torch.cat([tri + 4, tri])):
        out = TorchRasterizer(order, (40, 40)).rasterize(s)
        near_ids = (order >= 4).all(1).nonzero().squeeze(1)
        overlap = out.tri_id[0, 16:25, 16:25]
        assert torch.isin(overlap, near_ids).all()
        torch.testing.assert_close(out.depth[0, 16:25, 16:25], torch.full((9, 9), 800.0, dtype=F64))
        torch.testing.assert_close(out.depth[0, 6:15, 6:15], torch.full((9, 9), 900.0, dtype=F64))


def test_interpenetrating_triangles_depth_test_per_pixel():
    # two quads crossing each other along the line u = 20: left half one is nearer, right half the other
    s1, tri = _quad(0.2, 0.2, 39.8, 39.8)
    s2 = s1.clone()
    s1[0, :, 2] = torch.tensor([900.0, 1100.0, 1100.0, 900.0], dtype=F64)
    s2[0, :, 2] = torch.tensor([1100.0, 900.0, 900.0, 1100.0], dtype=F64)
    out = TorchRasterizer(torch.cat([tri, tri + 4]), (40, 40)).rasterize(torch.cat([s1, s2], 1))
    left = out.tri_id[0, :, :19]
    right = out.tri_id[0, :, 21:]
    assert torch.all(left < 2) and torch.all(right >= 2)


def test_partially_off_screen_mesh_is_clipped_to_the_image():
    s, tri = _quad(-50.3, 10.2, 20.7, 1000.4)
    out = TorchRasterizer(tri, (30, 40)).rasterize(s)
    expected = torch.zeros(30, 40, dtype=torch.bool)
    expected[10:, :21] = True  # centres u = j + 0.5 <= 20.7, v = i + 0.5 >= 10.2
    assert torch.equal(out.mask[0], expected)


def test_out_of_frame_and_behind_the_camera_give_empty_output():
    cam = Camera.default(64)
    v, tri = icosphere(2, radius=50.0, dtype=F64)
    rast = TorchRasterizer(tri, cam.image_size)
    for translation in ((2000.0, 0.0, 1000.0), (0.0, 0.0, -1000.0), (0.0, 0.0, 0.0)):
        out = rast.rasterize(_screen(v, cam, translation=translation))
        assert isinstance(out, RasterOutput)
        assert not out.mask.any()
        assert torch.all(out.tri_id == -1) and torch.all(torch.isinf(out.depth)) and torch.all(out.bary == 0)
        assert out.covered().numel() == 0


def test_triangles_crossing_the_near_plane_are_dropped_whole():
    s, tri = _quad(5.3, 5.3, 25.7, 25.7, z=500.0)
    s[0, 0, 2] = 5.0  # vertex 0 (in both triangles) in front of the near plane
    assert not TorchRasterizer(tri, (32, 32), near=10.0).rasterize(s).mask.any()
    s[0, 0, 2] = 50.0
    assert TorchRasterizer(tri, (32, 32), near=10.0).rasterize(s).mask.sum() == 21 * 21
    assert not TorchRasterizer(tri, (32, 32), near=100.0).rasterize(s).mask.any()
    assert not TorchRasterizer(tri, (32, 32), far=400.0).rasterize(s).mask.any()


def test_nonfinite_vertices_drop_their_triangles_only():
    s1, tri = _quad(2.3, 2.3, 12.7, 12.7)
    s2, _ = _quad(20.3, 20.3, 30.7, 30.7)
    s = torch.cat([s1, s2], 1)
    s[0, 5, 0] = float("nan")
    s[0, 6, 1] = float("inf")
    out = TorchRasterizer(torch.cat([tri, tri + 4]), (32, 32)).rasterize(s)
    assert out.mask[0, 3:12, 3:12].all()
    assert not out.mask[0, 16:, 16:].any()


def test_dense_mesh_partly_off_screen_with_culled_and_nan_triangles():
    # many small triangles in one size class: the rasterizer tests them in place over the whole table,
    # masking the culled / off-screen / NaN ones
    v, tri = grid_plane(36, 36, 36.0, 36.0, dtype=F64)
    s = torch.stack([v[:, 0] + 15.0, 18.0 - v[:, 1], 1000.0 + v[:, 0]], -1)[None].clone()
    s[0, 100, 0] = float("nan")
    s[0, 200, 2] = -5.0  # behind the camera
    tri = tri.clone()
    tri[::7] = tri[::7][:, [0, 2, 1]]  # some back faces
    calls = []
    rast = TorchRasterizer(tri, (34, 30))
    original = rast._candidates
    rast._candidates = lambda buf, f, idx, *a, **kw: calls.append(idx is None) or original(buf, f, idx, *a, **kw)
    out = rast.rasterize(s)
    assert calls == [True]
    ref_id, _, _, clear = reference_rasterize(s[0], tri, 34, 30, margin=1e-6)
    assert torch.equal(out.tri_id[0][clear], ref_id[clear])
    assert out.mask.sum() > 800


def _multiplicity(s, tri, size):
    """How many triangles cover each pixel when rasterized one at a time."""
    count = torch.zeros(size, dtype=torch.int64)
    for t in range(len(tri)):
        out = TorchRasterizer(tri[t:t + 1], size).rasterize(s)
        count += out.mask[0].to(torch.int64)
    return count


def test_shared_edges_and_vertices_on_pixel_centres_are_covered_exactly_once():
    # a grid whose vertices and edges (including the diagonals) pass exactly through pixel centres
    v, tri = grid_plane(4, 4, 8.0, 8.0, dtype=F64)
    s = torch.stack([v[:, 0] + 10.5, 10.5 - v[:, 1], torch.full_like(v[:, 0], 1000.0)], -1)[None]
    count = _multiplicity(s, tri, (24, 24))
    assert count.max() == 1
    union = TorchRasterizer(tri, (24, 24)).rasterize(s).mask[0]
    assert torch.equal(union, count == 1)
    # interior pixel centres of the 8x8 square (u, v in (6.5, 14.5)): all covered, no holes
    assert union[7:14, 7:14].all()
    # the closed square holds 9x9 centres; a half-open rule keeps exactly 8x8 of them
    assert int(union.sum()) == 64


def test_fan_around_a_vertex_on_a_pixel_centre_covers_it_once():
    centre = [10.5, 10.5, 1000.0]
    k = 7
    ring = [[10.5 + 4 * math.cos(2 * math.pi * i / k), 10.5 + 4 * math.sin(2 * math.pi * i / k), 1000.0]
            for i in range(k)]
    s = torch.tensor([[centre] + ring], dtype=F64)
    # clockwise in (u, v-down) screen coordinates == front-facing
    tri = torch.tensor([[0, 1 + (i + 1) % k, 1 + i] for i in range(k)])
    count = _multiplicity(s, tri, (21, 21))
    assert count.max() == 1
    assert count[10, 10] == 1


def test_random_grids_have_no_holes_or_overlaps():
    g = torch.Generator().manual_seed(0)
    v, tri = grid_plane(6, 6, 12.0, 12.0, dtype=torch.float32)
    v = v + 0.3 * torch.rand(v.shape, generator=g) * torch.tensor([1.0, 1.0, 0.0])
    s = torch.stack([v[:, 0] + 10.0, 10.0 - v[:, 1], torch.full_like(v[:, 0], 1000.0)], -1)[None]
    count = _multiplicity(s, tri, (21, 21))
    assert count.max() == 1
    assert count[6:15, 6:15].min() == 1


@pytest.fixture(scope="module")
def reference_cases():
    cases = [
        (icosphere(2, 60.0, dtype=F64), 48, (0.3, -0.2, 0.1), (3.0, -5.0, 900.0)),
        (face_like_mesh(600, noise=1.0, dtype=F64), 40, (0.2, 0.6, 0.1), (3.0, -5.0, 1500.0)),
        (face_like_mesh(1200, noise=0.5, dtype=F64), 80, (-0.1, -0.7, 0.0), (0.0, 10.0, 700.0)),
    ]
    out = []
    for (v, tri), size, rot, tr in cases:
        s = _screen(v, Camera.default(size), rot, tr)
        out.append((s, tri, size, reference_rasterize(s[0], tri, size, size, margin=1e-4)))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_the_reference_rasterizer(reference_cases, dtype):
    for s, tri, size, (ref_id, ref_bary, ref_depth, clear) in reference_cases:
        out = TorchRasterizer(tri, (size, size)).rasterize(s.to(dtype))
        assert (ref_id >= 0).sum() > 100
        assert torch.equal(out.tri_id[0][clear], ref_id[clear])
        m = clear & (ref_id >= 0)
        tol = 1e-12 if dtype == F64 else 2e-4
        torch.testing.assert_close(out.bary[0][m].double(), ref_bary[m], rtol=0, atol=tol)
        torch.testing.assert_close(out.depth[0][m].double(), ref_depth[m], rtol=1e-6 if dtype != F64 else 1e-12,
                                   atol=0)


def test_batch_equals_single_items():
    cam = Camera.default(64)
    v, tri = face_like_mesh(3000, noise=0.3)
    rast = TorchRasterizer(tri, cam.image_size)
    rots = [(0.0, 0.0, 0.0), (0.1, 0.8, -0.2), (0.0, 0.0, 0.0)]
    trs = [(0.0, 0.0, 1200.0), (20.0, 0.0, 1000.0), (5000.0, 0.0, 1000.0)]
    singles = [rast.rasterize(_screen(v, cam, r, t)) for r, t in zip(rots, trs)]
    batch = rast.rasterize(torch.cat([_screen(v, cam, r, t) for r, t in zip(rots, trs)]))
    for i, one in enumerate(singles):
        assert torch.equal(batch.tri_id[i], one.tri_id[0])
        torch.testing.assert_close(batch.bary[i], one.bary[0])
        torch.testing.assert_close(batch.depth[i], one.depth[0])
    assert not batch.mask[2].any()


def test_large_triangles_and_mixed_sizes():
    # one triangle covering most of the image next to many tiny ones
    s_big, tri_big = _quad(0.1, 0.1, 199.9, 149.9, z=2000.0)
    v, tri_small = grid_plane(30, 30, 60.0, 60.0, dtype=F64)
    s_small = torch.stack([v[:, 0] + 100.0, 75.0 - v[:, 1], torch.full_like(v[:, 0], 1000.0)], -1)[None]
    s = torch.cat([s_big, s_small], 1)
    tri = torch.cat([tri_big, tri_small + 4])
    out = TorchRasterizer(tri, (150, 200)).rasterize(s)
    assert out.mask.all()
    small_region = out.tri_id[0, 46:104, 71:129]
    assert torch.all(small_region >= 2)
    assert torch.all(out.tri_id[0, :40] < 2)


def test_make_rasterizer_backends(caplog):
    _, tri = icosphere(1)
    with caplog.at_level("INFO", logger="fitem.render.raster"):
        rast = make_rasterizer(tri, (32, 32))
    assert rast.backend == "torch" and isinstance(rast, TorchRasterizer)
    assert "rasterizer backend torch" in caplog.text
    assert make_rasterizer(tri, (32, 32), backend="torch").image_size == (32, 32)
    with pytest.raises(ConfigError, match="unknown rasterizer backend"):
        make_rasterizer(tri, (32, 32), backend="opengl")
    with pytest.raises(RasterizerUnavailableError, match="CUDA"):
        make_rasterizer(tri, (32, 32), backend="nvdiffrast", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RasterizerUnavailableError):
            NvdiffrastRasterizer(tri, (32, 32))


def test_bad_inputs_raise_typed_errors():
    _, tri = icosphere(1)
    with pytest.raises(ConfigError, match="image_size"):
        TorchRasterizer(tri, (0, 32))
    with pytest.raises(ConfigError, match="image_size"):
        TorchRasterizer(tri, (32,))
    with pytest.raises(ShapeError, match="int64"):
        TorchRasterizer(tri.to(torch.int32), (32, 32))
    with pytest.raises(ShapeError, match=r"\(T, 3\)"):
        TorchRasterizer(tri[:, :2], (32, 32))
    with pytest.raises(ConfigError, match="near"):
        TorchRasterizer(tri, (32, 32), near=0.0)
    rast = TorchRasterizer(tri, (32, 32))
    with pytest.raises(ShapeError, match="screen"):
        rast.rasterize(torch.zeros(42, 3))
    with pytest.raises(ShapeError, match="at least 42"):
        rast.rasterize(torch.zeros(1, 10, 3))
    with pytest.raises(ShapeError, match="floating-point"):
        rast.rasterize(torch.zeros(1, 42, 3, dtype=torch.int64))
    assert issubclass(InvalidInputError, ValueError)


@pytest.mark.parametrize("bits", [4, None])
def test_dense_subpixel_mesh_matches_reference_with_and_without_snapping(bits):
    # triangles far smaller than a pixel (the in-place masked pass) with culled, degenerate and
    # off-screen ones mixed in; without snapping kept areas can be below any fixed floor
    v, tri = grid_plane(32, 32, 6.4, 6.4, dtype=F64)
    s = torch.stack([1.013 * v[:, 0] + 3.337, 3.417 - v[:, 1] * 1.109, 800.0 + 3.0 * v[:, 0]], -1)[None].clone()
    tri = tri.clone()
    tri[::5] = tri[::5][:, [0, 2, 1]]  # back faces
    tri[3, 2] = tri[3, 1]  # a degenerate triangle
    s[0, 17, 0] += 40.0  # triangles stretched off the image
    out = TorchRasterizer(tri, (8, 7), subpixel_bits=bits).rasterize(s)
    ref_id, ref_bary, ref_depth, clear = reference_rasterize(s[0], tri, 8, 7, margin=1e-6, subpixel_bits=bits)
    assert clear.sum() > 12
    assert torch.equal(out.tri_id[0][clear], ref_id[clear])
    both = clear & (ref_id >= 0)
    assert torch.allclose(out.bary[0][both], ref_bary[both], atol=1e-9)
    assert torch.allclose(out.depth[0][both], ref_depth[both], rtol=1e-12)


def test_large_image_uses_per_side_size_classes_and_matches_reference():
    # above 2**22 pixels the size-class lookup is split per side; same coverage as the reference
    s = torch.tensor([[[1800.3, 1880.7, 900.0], [2010.2, 1850.1, 900.0], [1830.9, 2070.4, 950.0],
                       [2080.6, 2095.2, 1000.0]]], dtype=F64)
    tri = torch.tensor([[0, 2, 1], [1, 2, 3]])
    rast = TorchRasterizer(tri, (2100, 2090))
    assert rast._lut_cls is None
    out = rast.rasterize(s)
    ref_id, _, ref_depth, clear = reference_rasterize(s[0], tri, 2100, 2090, margin=1e-6)
    assert torch.equal(out.tri_id[0][clear], ref_id[clear])
    assert int(out.mask.sum()) > 20000
    both = clear & (ref_id >= 0)
    assert torch.allclose(out.depth[0][both], ref_depth[both], rtol=1e-12)


def test_nvdiffrast_plugin_built_but_not_importable_is_loaded_from_its_build_folder(monkeypatch):
    # nvdiffrast's loader builds its plugin, then `importlib.import_module(name)`s it, which fails under
    # PyTorch versions that no longer register the built module (seen: torch 2.11+cu130 on an H200)
    import sys
    import types

    from torch.utils import cpp_extension

    from fitem.render.raster import _load_plugin

    name = "nvdiffrast_plugin_test_0"
    built = types.ModuleType(name)
    calls = []

    def get_plugin(gl=False):
        calls.append(gl)
        if name not in sys.modules:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return sys.modules[name]

    ops = types.ModuleType("nvdiffrast.torch.ops")
    ops._get_plugin = get_plugin
    pkg, sub = types.ModuleType("nvdiffrast"), types.ModuleType("nvdiffrast.torch")
    pkg.torch, sub.ops = sub, ops
    for mod_name, mod in (("nvdiffrast", pkg), ("nvdiffrast.torch", sub), ("nvdiffrast.torch.ops", ops)):
        monkeypatch.setitem(sys.modules, mod_name, mod)
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda n, verbose: f"/build/{n}")
    loaded = []
    monkeypatch.setattr(cpp_extension, "_import_module_from_library",
                        lambda n, path, is_python_module: loaded.append((n, path)) or built)
    try:
        _load_plugin()
        assert sys.modules[name] is built and loaded == [(name, f"/build/{name}")] and calls == [False, False]
    finally:
        sys.modules.pop(name, None)

    def other(gl=False):
        raise ModuleNotFoundError("No module named 'something_else'", name="something_else")

    ops._get_plugin = other
    with pytest.raises(ModuleNotFoundError, match="something_else"):
        _load_plugin()


class _FakeNvdiffrast:
    """nvdiffrast's ``rasterize`` in range mode, done by the PyTorch rasterizer (CPU): its clip-space
    input is turned back into screen coordinates, each range drawn as one image; output as nvdiffrast's
    ``(u, v, z/w, float(triangle index + 1))``."""

    @staticmethod
    def rasterize(ctx, pos, tri, resolution, ranges=None, grad_db=True):
        h, w = resolution
        screen = torch.stack([(pos[:, 0] / pos[:, 3] + 1) * w / 2, (pos[:, 1] / pos[:, 3] + 1) * h / 2, pos[:, 3]], 1)
        out = torch.zeros(len(ranges), h, w, 4)
        for k, (start, count) in enumerate(ranges.tolist()):
            sub = tri[start:start + count].long()
            r = TorchRasterizer(sub, (h, w)).rasterize(screen[None])
            hit = r.tri_id[0] >= 0
            out[k, ..., 0], out[k, ..., 1] = r.bary[0, ..., 0], r.bary[0, ..., 1]
            out[k, ..., 3] = torch.where(hit, (r.tri_id[0] + start + 1).float(), torch.zeros(()))
        return out, None


def test_nvdiffrast_backend_maps_ranges_and_ids_back(monkeypatch):
    # the backend's own logic (culling, batch ranges, an empty item, id mapping), with nvdiffrast faked
    import fitem.render.raster as raster

    monkeypatch.setattr(raster, "_create_context", lambda dev: (_FakeNvdiffrast, None))
    cam = Camera.default(96)
    v, tri = icosphere(3, radius=60.0)
    s = torch.cat([cam.project(to_camera(v[None], torch.tensor([rot]), torch.tensor([tr])))
                   for rot, tr in (((0.0, 0.0, 0.0), (0.0, 0.0, 900.0)), ((0.0, 0.0, 0.0), (5000.0, 0.0, 900.0)),
                                   ((0.5, 0.2, 0.0), (10.0, 0.0, 700.0)))])
    nv = raster.NvdiffrastRasterizer(tri, cam.image_size, device="cpu").rasterize(s)
    ref = TorchRasterizer(tri, cam.image_size).rasterize(s)
    assert torch.equal(nv.tri_id, ref.tri_id) and not nv.mask[1].any() and nv.mask[0].any() and nv.mask[2].any()
    torch.testing.assert_close(nv.bary, ref.bary)
    torch.testing.assert_close(nv.depth, ref.depth)
    assert torch.equal(nv.pixels, ref.pixels)
