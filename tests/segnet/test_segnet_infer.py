"""Using a net: segment() maps back to the input; fit(segnet=...) uses the net's prior and first mask."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fitem.api import fit
from fitem.errors import ConfigError
from fitem.landmarks import align_transform
from fitem.segnet import SegNet, UNet, crop_probability, prior_logit, segment


def _constant_net(logit: float, crop: int = 112, channels: int = 3) -> SegNet:
    """A net whose output is ``sigmoid(logit)`` everywhere (zero head weights, fixed bias)."""
    net = UNet(channels, base=4)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(logit)
    return SegNet(net.eval(), crop, {})


def test_prior_logit_is_clipped_log_odds():
    p = np.array([0.5, 0.7310586, 1.0, 0.0])
    np.testing.assert_allclose(prior_logit(p), [0.0, 1.0, 3.0, -3.0], atol=1e-5)
    np.testing.assert_allclose(prior_logit(p, clip=0.5), [0.0, 0.5, 0.5, -0.5], atol=1e-5)


def test_segment_maps_the_crop_back_to_the_input(annotation, trained_net):
    _, path = trained_net
    t = annotation["truth"]["img02"]
    img = t["image"]
    seg = segment(img, net=path, landmarks=t["landmarks"])
    H, W = img.shape[:2]
    assert seg.probability.shape == seg.mask.shape == (H, W)
    assert seg.probability.dtype == np.float32 and seg.mask.dtype == bool
    np.testing.assert_array_equal(seg.mask, seg.probability >= 0.5)
    T = align_transform(t["landmarks"], size=112, input_shape=img.shape)
    np.testing.assert_allclose(seg.transform, T.matrix)
    np.testing.assert_allclose(seg.probability, np.clip(T.image_to_input(seg.crop_probability), 0, 1), atol=1e-6)
    # pixels outside the crop get probability 0
    outside = T.image_to_input(np.ones((112, 112), np.float32)) == 0
    assert outside.any() and np.all(seg.probability[outside] == 0)
    assert seg.overlay(img).shape == (H, W, 3)
    with pytest.raises(ConfigError):
        segment(img, net=path, landmarks=t["landmarks"], threshold=1.5)


def test_segment_six_channels_uses_the_render(annotation):
    t = annotation["truth"]["img00"]
    net = _constant_net(0.0, channels=6)
    seg = segment(t["image"], net=net, landmarks=t["landmarks"])
    assert seg.probability.shape == t["image"].shape[:2]


def test_crop_probability_resizes_to_the_net(annotation):
    net = _constant_net(2.0, crop=112)
    p = crop_probability(net, np.random.rand(64, 64, 3).astype(np.float32))
    assert p.shape == (64, 64)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-2.0)), atol=1e-5)


def test_fit_uses_the_net_prior(annotation):
    """A net that calls everything occluded must remove face pixels (its prior tilts every E-step);
    one that calls everything face must not remove any (its first mask is the whole region)."""
    t = annotation["truth"]["img00"]  # a scarf
    cfg, model = annotation["config"], annotation["model"]
    base = fit(t["image"], landmarks=t["landmarks"], model=model, config=cfg)
    occluded = fit(t["image"], landmarks=t["landmarks"], model=model, config=cfg, segnet=_constant_net(-8.0))
    face = fit(t["image"], landmarks=t["landmarks"], model=model, config=cfg, segnet=_constant_net(8.0))
    assert occluded.success and face.success
    frac = {k: r.mask.sum() / r.face_region.sum() for k, r in (("base", base), ("occ", occluded), ("face", face))}
    assert frac["occ"] < frac["base"] - 0.02, frac
    assert frac["face"] > frac["base"] - 0.01, frac
    assert (occluded.mask & ~base.mask).sum() < 0.2 * (base.mask & ~occluded.mask).sum()
    assert "segnet" in face.timings and "segnet" not in base.timings


def test_fit_with_a_trained_net_path_runs(annotation, trained_net):
    _, path = trained_net
    t = annotation["truth"]["img03"]
    r = fit(t["image"], landmarks=t["landmarks"], model=annotation["model"], config=annotation["config"],
            segnet=str(path))
    assert r.success and r.mask.shape == t["image"].shape[:2]
    r6 = fit(t["image"], landmarks=t["landmarks"], model=annotation["model"], config=annotation["config"],
             segnet=_constant_net(1.0, channels=6))
    assert r6.success
