"""fitem.viz: picture helpers (shapes, dtypes, and that colours land where they should)."""
from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fitem import viz  # noqa: E402
from fitem.errors import InvalidInputError, ShapeError  # noqa: E402
from fitem.render.meshes import grid_plane  # noqa: E402
from fitem.result import RoundRecord  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_mask_overlay_tints_only_the_masked_pixels():
    img = np.full((6, 8, 3), 100, np.uint8)
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    occ = np.zeros((6, 8), bool)
    occ[4, 6] = True
    out = viz.mask_overlay(img, mask, occ)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.all(out[mask][:, 1] > 150) and np.all(out[mask][:, 0] < 100)  # green
    assert out[4, 6, 0] > 150 and out[4, 6, 1] < 100  # red
    untouched = ~mask & ~occ
    assert np.array_equal(out[untouched], img[untouched])
    with pytest.raises(ShapeError, match="mask"):
        viz.mask_overlay(img, np.zeros((5, 8), bool))


def test_side_by_side_list_or_args_and_titles():
    a = np.zeros((20, 10, 3), np.uint8)
    b = np.ones((10, 10))  # float grey → white, resized to height 20
    joined = viz.side_by_side(a, b, gap=3)
    assert np.array_equal(joined, viz.side_by_side([a, b], gap=3))
    assert joined.shape == (20, 10 + 3 + 20, 3) and joined.dtype == np.uint8
    assert np.all(joined[:, :10] == 0) and np.all(joined[:, 13:] == 255)
    titled = viz.side_by_side([a, b], titles=["input", "mask"], gap=3, height=40)
    assert titled.shape[0] > 40 and titled.shape[1] == 20 + 3 + 40
    strip = titled[: titled.shape[0] - 40, :20]
    assert (strip < 128).any(), "the title strip holds no text"
    with pytest.raises(InvalidInputError, match="titles"):
        viz.side_by_side([a, b], titles=["one"])
    with pytest.raises(InvalidInputError):
        viz.side_by_side([])


def test_contact_sheet_places_images_row_by_row():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    ims = [np.tile(np.array(c, np.uint8), (12, 24, 1)) for c in colours]
    sheet = viz.contact_sheet(ims, ncols=2, cell=(12, 12), gap=2)
    assert sheet.dtype == np.uint8 and sheet.shape == (2 * 12 + 2, 2 * 12 + 2, 3)
    # 24x12 images letterboxed into 12x12 cells: 6 rows of colour in the middle of each cell
    assert tuple(sheet[6, 6]) == colours[0]
    assert tuple(sheet[6, 14 + 6]) == colours[1]
    assert tuple(sheet[14 + 6, 6]) == colours[2]
    assert tuple(sheet[14 + 6, 14 + 6]) == (255, 255, 255)  # empty cell
    assert tuple(sheet[0, 6]) == (255, 255, 255)  # letterbox band
    titled = viz.contact_sheet(ims, ncols=3, cell=40, titles=["a", "b", "c"])
    assert titled.shape[1] == 3 * 40 + 2 * 4 and titled.shape[0] > 40
    with pytest.raises(InvalidInputError, match="ncols"):
        viz.contact_sheet(ims, ncols=0)


def _plane(colour=(1.0, 0.0, 0.0)):
    v, f = grid_plane(4, 4, 100.0, 60.0)
    return v.numpy(), f.numpy(), np.tile(np.array(colour, np.float32), (len(v), 1))


def test_mesh_view_draws_front_faces_and_culls_back_faces():
    v, f, c = _plane()  # model space, facing +z (the viewer at zero turn)
    front = viz.mesh_view(v, f, c, space="model", yaw_deg=0, size=64, light=False)
    assert front.shape == (64, 64, 3) and front.dtype == np.uint8
    red = (front[..., 0] > 200) & (front[..., 1] < 50)
    assert red[32, 32] and red.sum() > 0.3 * 64 * 64
    # wider than tall: the plane is 100 x 60 mm
    cols, rows = red.any(0).sum(), red.any(1).sum()
    assert cols > rows
    back = viz.mesh_view(v, f, c, space="model", yaw_deg=180, size=64, light=False)
    assert np.all(back == 255), "a plane seen from behind must be culled"
    turned = viz.mesh_view(v, f, c, space="model", yaw_deg=60, size=64, light=False)
    assert 0 < ((turned[..., 0] > 200) & (turned[..., 1] < 50)).any(0).sum() < cols


def test_mesh_view_camera_space_equals_model_space_seen_by_the_camera():
    v, f, c = _plane((0.2, 0.6, 0.9))
    cam = v * np.array([1.0, -1.0, -1.0]) + np.array([0.0, 0.0, 900.0])  # FLIP @ X + t
    a = viz.mesh_view(v, f, c, space="model", yaw_deg=20, size=48)
    b = viz.mesh_view(cam, f, c, space="camera", yaw_deg=20, size=48)
    assert np.array_equal(a, b)
    _, ax = plt.subplots()
    viz.mesh_view(v, f, None, ax=ax, space="model", size=32)
    assert len(ax.images) == 1
    with pytest.raises(ShapeError, match="colours"):
        viz.mesh_view(v, f, c[:3])
    with pytest.raises(InvalidInputError, match="NaN"):
        viz.mesh_view(np.full_like(v, np.nan), f)


def _history_result():
    rounds = [
        RoundRecord(1, ["pose"], 2, "MAX_ITERATIONS", [100.0, 50.0, 40.0], 0.5, 0.3, 0.043, 1.0, 1.2, 0.05, 0.1),
        RoundRecord(2, ["shape"], 1, "CONVERGED", [30.0, 20.0], 0.7, 0.1, 0.043, 0.5, 1.0, 0.03, 0.1),
    ]
    iters = [{"round": 0, "iteration": k, "cost": c} for k, c in enumerate([100.0, 50.0, 40.0])]
    iters += [{"round": 1, "iteration": k, "cost": c} for k, c in enumerate([30.0, 20.0])]
    return SimpleNamespace(rounds=rounds, iterations=iters)


def test_plot_em_history_plots_costs_and_mask_fractions():
    ax, ax2 = viz.plot_em_history(_history_result())
    lines = ax.get_lines()
    assert [list(line.get_ydata()) for line in lines] == [[100.0, 50.0, 40.0], [30.0, 20.0]]
    assert list(lines[1].get_xdata()) == [3, 4]
    assert list(ax2.get_lines()[0].get_ydata()) == [0.5, 0.7]
    assert list(ax2.get_lines()[0].get_xdata()) == [2, 4]
    # without per-iteration records the rounds' cost histories are used
    res = _history_result()
    res.iterations = []
    ax, _ = viz.plot_em_history(res)
    assert [len(line.get_ydata()) for line in ax.get_lines()] == [3, 2]
    with pytest.raises(InvalidInputError, match="history"):
        viz.plot_em_history(SimpleNamespace(rounds=[], iterations=[]))


def _sigma_result(scale: float = 0.5):
    """A plane in camera space seen by a 100-px crop camera; the input is 2x larger (crop = 0.5 · input)."""
    v, f = grid_plane(8, 8, 80.0, 80.0)
    v = v.numpy().astype(np.float64)
    cam_v = v * np.array([1.0, -1.0, -1.0]) + np.array([0.0, 0.0, 1000.0])
    sigma = (v[:, 0] - v[:, 0].min()) / np.ptp(v[:, 0]) * 4.0 + 1.0  # 1 mm (left) .. 5 mm (right)
    H = W = int(100 / scale)
    return SimpleNamespace(
        vertices=cam_v.astype(np.float32), triangles=f.numpy(), vertex_sigma=sigma.astype(np.float32),
        camera={"focal": 500.0, "cx": 50.0, "cy": 50.0, "width": 100, "height": 100},
        transform=np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]]),
        mask=np.zeros((H, W), bool), face_region=np.zeros((H, W), bool),
    )


def test_uncertainty_image_maps_sigma_to_colours_at_input_resolution():
    res = _sigma_result()
    pic, top = viz.uncertainty_image(res, None, cmap="viridis", vmax=5.0, alpha=1.0)
    assert pic.shape == (200, 200, 3) and pic.dtype == np.uint8 and top == 5.0
    # 80 mm at 1 m with f = 500 px → 40 crop px → 80 input px, centred at (100, 100)
    covered = np.any(pic != 255, axis=-1)
    ys, xs = np.nonzero(covered)
    assert abs(xs.min() - 60) <= 2 and abs(xs.max() - 139) <= 2 and abs(ys.min() - 60) <= 2
    lut = matplotlib.colormaps["viridis"]
    left, right = pic[100, 62].astype(float), pic[100, 137].astype(float)
    assert np.abs(left - np.array(lut(1.2 / 5.0)[:3]) * 255).max() < 20
    assert np.abs(right - np.array(lut(4.8 / 5.0)[:3]) * 255).max() < 20
    img = np.zeros((200, 200, 3), np.uint8)
    over, _ = viz.uncertainty_image(res, img)
    assert np.all(over[5, 5] == over[5, 5, 0]) and over[5, 5, 0] < 128  # greyed image outside
    with pytest.raises(ShapeError, match="image"):
        viz.uncertainty_image(res, np.zeros((10, 10, 3)))
    res.vertex_sigma = None
    with pytest.raises(InvalidInputError, match="vertex_sigma"):
        viz.uncertainty_image(res)


def test_show_uncertainty_adds_a_colour_bar():
    res = _sigma_result()
    res.face_region[60:140, 60:140] = True
    fig, ax = plt.subplots()
    pic = viz.show_uncertainty(res, None, ax)
    assert pic.shape == (200, 200, 3)
    assert len(fig.axes) == 2  # the image and its colour bar
    assert ax.images[0].get_array().shape[0] < 200  # zoomed onto the face region


def test_crop_box_grows_and_clips():
    r = np.zeros((20, 30), bool)
    r[5:9, 10:20] = True  # 4 x 10 box
    rows, cols = viz.crop_box(r, margin=0.1)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (12, 12)  # square 10 + 2 · 1
    assert rows.start == 1 and cols.start == 9
    rows, cols = viz.crop_box(r, margin=5.0)
    assert (rows, cols) == (slice(0, 20), slice(0, 30))
    assert viz.crop_box(np.zeros((3, 4), bool)) == (slice(0, 3), slice(0, 4))
