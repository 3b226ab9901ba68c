"""Distillation: loss, augmentation, a few steps reduce the loss, the checkpoint and report."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fitem.errors import ConfigError, InvalidInputError
from fitem.segnet import DistillConfig, distill, load_crops, load_segnet, train_net
from fitem.segnet.train import augment_batch, compare_annotations, segmentation_loss


def test_loss_prefers_the_right_answer():
    y = torch.zeros(2, 1, 8, 8)
    y[:, :, :4] = 1
    w = torch.ones_like(y)
    good = segmentation_loss((y * 2 - 1) * 6, y, w)
    bad = segmentation_loss(-(y * 2 - 1) * 6, y, w)
    assert float(good) < 0.05 < 1.0 < float(bad)
    # pixels with zero weight do not count
    w2 = w.clone()
    w2[:, :, 4:] = 0
    wrong_outside = (y * 2 - 1) * 6
    wrong_outside[:, :, 4:] = 6.0
    assert float(segmentation_loss(wrong_outside, y, w2)) < 0.05


def test_augmentation_keeps_image_and_target_aligned():
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(4, 1, 32, 32, generator=g) > 0.5).float()
    x = torch.cat([y.expand(-1, 3, -1, -1), torch.rand(4, 3, 32, 32, generator=g)], 1)
    w = torch.ones_like(y)
    cfg = DistillConfig(jitter=0.0, rotate_deg=0.0, scale=0.0, shift=0.0)
    for _ in range(3):
        xa, ya, wa = augment_batch(x, y, w, cfg, g)
        torch.testing.assert_close(xa[:, :1], ya)  # flips move image and target together
    cfg = DistillConfig(jitter=0.3, rotate_deg=10, scale=0.1, shift=0.05)
    xa, ya, wa = augment_batch(x, y, w, cfg, g)
    assert xa.shape == x.shape and ya.shape == y.shape
    assert set(torch.unique(ya).tolist()) <= {0.0, 1.0} and set(torch.unique(wa).tolist()) <= {0.0, 1.0}
    assert (wa == 0).any()  # the similarity moves pixels in from outside the crop
    assert float(xa[:, :3].min()) >= 0.0 and float(xa[:, :3].max()) <= 1.0
    torch.testing.assert_close(xa[:, 3:].abs().sum() > 0, torch.tensor(True))


def test_config_validation():
    for bad in (dict(epochs=0), dict(in_channels=4), dict(lr=-1.0), dict(val_fraction=1.0), dict(base=0)):
        with pytest.raises(ConfigError):
            DistillConfig(**bad)


def test_a_few_steps_reduce_the_loss(annotation):
    crops = load_crops(annotation["dir"])
    cfg = DistillConfig(epochs=6, batch_size=6, lr=3e-3, base=4, augment=False)
    _, epochs = train_net(crops, None, cfg, progress=False)
    losses = [e.train_loss for e in epochs]
    assert losses[-1] < 0.85 * losses[0], losses
    assert all(math.isnan(e.val_f1) for e in epochs)


def test_distill_writes_a_checkpoint_and_report(annotation, trained_net):
    report, path = trained_net
    assert path.is_file()
    assert report.n_train + report.n_val == len(annotation["truth"]) and report.n_val >= 1
    assert len(report.epochs) == 3 and report.crop_size == annotation["config"].size
    assert all(np.isfinite(e.train_loss) and np.isfinite(e.val_loss) for e in report.epochs)
    assert all(0.0 <= e.val_f1 <= 1.0 or math.isnan(e.val_f1) for e in report.epochs)
    sn = load_segnet(path, in_channels=3)
    meta = sn.metadata
    assert meta["epoch"] == 3 and meta["crop_size"] == annotation["config"].size
    assert meta["model_checksum"] == annotation["model"].checksum
    assert meta["config_hash"] == annotation["config"].hash()
    assert meta["config"]["epochs"] == 3 and meta["config"]["base"] == 4 and meta["fitem_version"]
    assert set(meta["val"]) == {"loss", "f1", "iou"}
    assert "epoch" in report.table()


def test_distill_six_channels_and_errors(annotation, tmp_path):
    rep = distill(annotation["dir"], tmp_path / "n6.pt", epochs=1, batch_size=4, in_channels=6, base=4,
                  val_fraction=0.0, keys=["img00", "img02"], progress=False)
    assert rep.n_train == 2 and rep.n_val == 0
    assert load_segnet(tmp_path / "n6.pt").in_channels == 6
    with pytest.raises(ConfigError):
        load_segnet(tmp_path / "n6.pt", in_channels=3)
    with pytest.raises(InvalidInputError, match="no 'done' images"):
        distill(annotation["dir"], tmp_path / "x.pt", keys=["broken"], progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_compare_identical_annotations(annotation):
    change, f1, n, done = compare_annotations(annotation["dir"], annotation["dir"])
    assert change == 0.0 and f1 == 1.0 and n == done == len(annotation["truth"])


def test_self_training_round(annotation, tmp_path):
    """One round: re-annotate (fit seeded by the net, via fitem.annotate) and distil again."""
    keys = ["img00", "img01", "img02", "broken"]
    rep = distill(annotation["dir"], tmp_path / "net.pt", epochs=1, batch_size=6, base=4, rounds=1, keys=keys,
                  work_dir=tmp_path / "rounds", progress=False)
    assert len(rep.rounds) == 1
    r = rep.rounds[0]
    assert r.n_done == r.n_compared == 3
    assert 0.0 <= r.mask_change < 0.5 and 0.5 < r.mask_f1 <= 1.0
    from fitem.annotation import read_manifest, read_run

    run = read_run(r.annotation_dir)
    assert run["config"]["extra"]["segnet"] == str((tmp_path / "rounds" / "net_round0.pt").resolve())
    status = {k: rec["status"] for k, rec in read_manifest(r.annotation_dir).items()}
    assert status.pop("broken") == "failed"  # the input of the first annotation's failure is missing
    assert set(status.values()) == {"done"}
    final = load_segnet(tmp_path / "net.pt")
    assert final.metadata["annotation_dir"] == str((tmp_path / "rounds" / "annotation_round1").resolve())
    assert (tmp_path / "rounds" / "net_round1.pt").read_bytes() == (tmp_path / "net.pt").read_bytes()
