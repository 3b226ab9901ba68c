"""Parallel backends: loky, Dask (LocalCluster on loopback) and Ray's absence."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fitem.annotation import annotate, read_manifest
from fitem.config import FitConfig
from fitem.errors import ConfigError

from .conftest import FAKE_TASK, snapshot, statuses, stray_files

CFG = FitConfig(extra={"sleep": 0.05})


def _same_outputs(a: Path, b: Path) -> None:
    assert snapshot(a) == snapshot(b)
    assert statuses(a) == statuses(b)
    ra, rb = read_manifest(a), read_manifest(b)
    for key in ra:
        for field in ("input", "result", "error_type", "config_hash", "model_checksum"):
            assert ra[key][field] == rb[key][field], (key, field)
    assert stray_files(a) == stray_files(b) == []


@pytest.fixture(scope="module")
def loky_run(tmp_path_factory) -> tuple[Path, Path]:
    from .conftest import write_images

    root = tmp_path_factory.mktemp("backends")
    inp = root / "in"
    write_images(inp, 8)
    (inp / "broken.png").write_bytes(b"garbage")
    out = root / "loky"
    s = annotate(inp, out, config=CFG, n_jobs=2, backend="loky", task=FAKE_TASK, progress=False)
    assert (s.done, s.failed) == (8, 1)
    workers = {r["worker"] for r in read_manifest(out).values()}
    assert len(workers) >= 1 and all(w.split(":")[1].isdigit() for w in workers)
    return inp, out


def test_dask_local_cluster_matches_loky(loky_run, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    inp, loky_out = loky_run
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        s = annotate(inp, tmp_path / "dask", config=CFG, n_jobs=2, backend="dask",
                     scheduler=cluster.scheduler_address, task=FAKE_TASK, progress=False)
    assert (s.done, s.failed) == (8, 1)
    _same_outputs(tmp_path / "dask", loky_out)


@pytest.mark.slow
def test_dask_cluster_started_by_annotate_matches_loky(loky_run, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    inp, loky_out = loky_run
    s = annotate(inp, tmp_path / "dask", config=CFG, n_jobs=2, backend="dask", task=FAKE_TASK, progress=False)
    assert (s.done, s.failed) == (8, 1)
    _same_outputs(tmp_path / "dask", loky_out)


def test_threading_matches_loky(loky_run, tmp_path: Path) -> None:
    inp, loky_out = loky_run
    annotate(inp, tmp_path / "thr", config=CFG, n_jobs=2, backend="threading", task=FAKE_TASK, progress=False)
    _same_outputs(tmp_path / "thr", loky_out)


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed here")
def test_ray_missing_is_a_typed_error_with_the_install_command(loky_run, tmp_path: Path) -> None:
    inp, _ = loky_run
    with pytest.raises(ConfigError, match=r"pip install 'ray\[default\]'"):
        annotate(inp, tmp_path / "ray", backend="ray", n_jobs=2, task=FAKE_TASK, progress=False)
    assert not (tmp_path / "ray").exists()
