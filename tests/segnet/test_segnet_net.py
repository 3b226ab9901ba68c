"""UNet shapes and modes; checkpoint round trip; bad checkpoints raise typed errors."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from fitem.errors import ConfigError, InvalidInputError, ShapeError
from fitem.segnet.net import SegNet, UNet, load_segnet, save_segnet


@pytest.mark.parametrize("channels", [3, 6])
@pytest.mark.parametrize("hw", [(64, 64), (50, 70)])
def test_unet_output_shape(channels, hw):
    net = UNet(channels, base=4).eval()
    y = net(torch.rand(2, channels, *hw))
    assert y.shape == (2, 1, *hw)
    assert torch.isfinite(y).all()


def test_unet_rejects_bad_inputs():
    with pytest.raises(ConfigError):
        UNet(4)
    with pytest.raises(ConfigError):
        UNet(3, base=0)
    with pytest.raises(ShapeError):
        UNet(3, base=4)(torch.rand(1, 6, 32, 32))


def _meta():
    return {"crop_size": 64, "model_checksum": "abc", "val": {"f1": 0.9}}


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = UNet(6, base=4).eval()
    x = torch.rand(1, 6, 64, 64)
    path = save_segnet(net, tmp_path / "n.pt", _meta())
    # plain containers only: loadable with the safe loader
    raw = torch.load(path, weights_only=True)
    assert raw["metadata"]["in_channels"] == 6 and raw["metadata"]["model_checksum"] == "abc"
    sn = load_segnet(path, in_channels=6)
    assert isinstance(sn, SegNet) and sn.crop_size == 64 and sn.in_channels == 6
    assert sn.metadata["val"] == {"f1": 0.9} and sn.metadata["base"] == 4
    with torch.no_grad():
        torch.testing.assert_close(sn.net(x), net(x))
    img, ren = np.random.rand(64, 64, 3), np.random.rand(64, 64, 3)
    p = sn.predict(img, ren)
    assert p.shape == (64, 64) and p.dtype == np.float32 and (0 <= p).all() and (p <= 1).all()
    assert sn.predict(np.stack([img, img]), np.stack([ren, ren])).shape == (2, 64, 64)
    with pytest.raises(ConfigError):
        sn.predict(img)  # a 6-channel net needs the render


def test_checkpoint_of_other_mode_is_refused(tmp_path):
    path = save_segnet(UNet(3, base=4), tmp_path / "n.pt", _meta())
    with pytest.raises(ConfigError, match="--in-channels 6"):
        load_segnet(path, in_channels=6)
    assert load_segnet(path).in_channels == 3


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_checkpoints_raise_typed_errors(tmp_path):
    good = save_segnet(UNet(3, base=4), tmp_path / "good.pt", _meta())
    data = good.read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "garbage.pt": b"not a checkpoint at all" * 10,
        "empty.pt": b"",
    }
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, buf)
    cases["other.pt"] = buf.getvalue()
    cases["pickle.pt"] = pickle.dumps(ValueError("code, not data"))
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InvalidInputError):
            load_segnet(tmp_path / name)
    with pytest.raises(InvalidInputError, match="fitem distill"):
        load_segnet(tmp_path / "missing.pt")
    # right container, wrong weights
    ckpt = torch.load(good, weights_only=True)
    ckpt["metadata"]["base"] = 8
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    (tmp_path / "mismatch.pt").write_bytes(buf.getvalue())
    with pytest.raises(InvalidInputError, match="inconsistent"):
        load_segnet(tmp_path / "mismatch.pt")


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(InvalidInputError):
        save_segnet(UNet(3, base=4), tmp_path / "n.pt", {"crop_size": 64, "bad": object()})
    with pytest.raises(ConfigError):
        save_segnet(UNet(3, base=4), tmp_path / "n.pt", {})
    assert not (tmp_path / "n.pt").exists()
