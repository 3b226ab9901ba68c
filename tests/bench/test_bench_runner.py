"""``fitem bench``: settings are checked before any work; a tiny run writes its three outputs."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fitem.bench.runner import BenchConfig, adam_vs_lm, run_bench
from fitem.cli import main
from fitem.config import FitConfig
from fitem.errors import ConfigError

SMALL_FIT = FitConfig(size=112, rounds=2, iterations=2, first_iterations=2, max_pixels=1500)


@pytest.mark.parametrize("kwargs, match", [
    ({"classes": ("glasses", "umbrella")}, "unknown occluder"),
    ({"classes": ()}, "unknown occluder"),
    ({"n": 0}, "n must be"),
    ({"n": -3}, "n must be"),
    ({"landmarks": "guess"}, "landmarks must be"),
    ({"adam_lr": 0.0}, "adam_lr"),
    ({"segnet": "/nonexistent/net.pt"}, "fitem distill"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BenchConfig(**kwargs)


def test_unwritable_output_is_refused_before_any_work(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    calls = []
    monkeypatch.setattr("fitem.bench.runner._evaluate", lambda *a, **k: calls.append(a))
    with pytest.raises(ConfigError, match="cannot write"):
        run_bench(BenchConfig(n=1), blocker / "out", progress=False)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(ConfigError, match="cannot write"):
            run_bench(BenchConfig(n=1), ro / "out", progress=False)
    assert calls == []


def test_cli_reports_bad_class_without_traceback(tmp_path, capsys):
    assert main(["bench", "--quick", "--classes", "umbrella", "--out", str(tmp_path / "b"), "-q"]) == 2
    assert "unknown occluder" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_tiny_run_writes_results_table_and_figure(tmp_path):
    cfg = BenchConfig(n=2, classes=("none", "scarf"), size=112, adam_images=1, adam_iterations=15,
                      lm_iterations=4, icp_iterations=1, fit=SMALL_FIT)
    report = run_bench(cfg, tmp_path, progress=False)
    for name in ("results.json", "results.md", "figure.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["status"] for r in data["rows"]] == ["done", "done"]
    seg = report["segmentation"]
    assert set(seg) == {"em", "fixed", "allface"}
    # the trivial "all face" row: visible-face F1 of 1 with no occluder, occluder F1 0 with one
    allface = {r["occluder_class"]: r for r in seg["allface"]}
    assert allface["none"]["f1"] == 1.0 and allface["scarf"]["occluder_f1"] == 0.0
    em = {r["occluder_class"]: r for r in seg["em"]}
    assert em["scarf"]["occluder_f1"] > 0.3  # the EM finds a good part of a scarf even in a tiny fit
    rec = {r["occluder_class"]: r for r in report["reconstruction"]}
    assert 0 < rec["all"]["em_median_mm"] < 20
    assert report["adam"] and report["adam"][0]["adam_iterations"] == 15
    md = (tmp_path / "results.md").read_text()
    assert "trivial: all face" in md and "Adam" in md


def test_adam_and_lm_minimise_the_same_energy():
    from fitem.bench.synthetic import make_sample
    from fitem.models import load_model

    model = load_model("demo")
    s = make_sample(model, 3, occluder="none", size=112)
    out = adam_vs_lm(model, s.image, s.landmarks68, SMALL_FIT, iterations=10, lm_iterations=3)
    assert out["lm_energy"] < out["energy_start"] and out["adam_energy"] < out["energy_start"]
    # a few LM steps beat ten Adam steps on this energy
    assert out["lm_energy"] < out["adam_energy"]
    assert np.isfinite(out["adam_trace"][-1][1])


def test_segnet_rows_come_with_a_net(tmp_path):
    torch = pytest.importorskip("torch")
    from fitem.segnet.net import UNet, save_segnet

    torch.manual_seed(0)
    net_path = save_segnet(UNet(3, base=4), tmp_path / "net.pt", {"crop_size": 112})
    cfg = BenchConfig(n=1, classes=("object",), size=112, adam_images=0, icp_iterations=0, fit=SMALL_FIT,
                      segnet=str(net_path))
    report = run_bench(cfg, tmp_path / "out", progress=False)
    assert {"segnet", "seeded"} <= set(report["segmentation"])
    row = report["rows"][0]
    assert row["status"] == "done" and 0.0 <= row["segnet_f1"] <= 1.0 and row["seeded_status"] in ("success", "failed")
    assert "seeded_median_mm" in report["reconstruction"][0]
