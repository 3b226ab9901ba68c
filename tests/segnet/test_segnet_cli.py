"""``fitem distill`` / ``fitem segment`` through the sub-parsers that fitem.segnet.cli registers."""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from fitem.segnet.cli import register
from fitem.segnet.net import load_segnet


def _run(argv):
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


def test_cli_distill_then_segment(annotation, tmp_path, capsys):
    net = tmp_path / "net.pt"
    report = tmp_path / "report.json"
    assert _run(["distill", str(annotation["dir"]), "--out", str(net), "--epochs", "1", "--batch-size", "4",
                 "--base", "4", "--report", str(report), "-q"]) == 0
    assert load_segnet(net).metadata["epoch"] == 1 and report.is_file()
    assert "wrote" in capsys.readouterr().out
    key = "img01"
    image = annotation["inputs"] / f"{key}.png"
    out = tmp_path / "seg"
    assert _run(["segment", str(image), "--net", str(net), "--out", str(out),
                 "--landmarks", str(image.with_suffix(".pts")), "-q"]) == 0
    h, w = annotation["truth"][key]["image"].shape[:2]
    for suffix in ("mask", "prob", "overlay"):
        pic = cv2.imread(str(out / f"{key}_{suffix}.png"), cv2.IMREAD_UNCHANGED)
        assert pic is not None and pic.shape[:2] == (h, w), suffix
    mask = cv2.imread(str(out / f"{key}_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(mask)) <= {0, 255}


def test_cli_segment_reports_failures(tmp_path, annotation):
    net = tmp_path / "net.pt"
    from fitem.segnet.net import UNet, save_segnet

    save_segnet(UNet(3, base=4), net, {"crop_size": 112})
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert _run(["segment", str(bad), "--net", str(net), "--out", str(tmp_path / "o"), "-q"]) == 1
