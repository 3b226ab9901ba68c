"""Shared fixtures of the annotate tests: small image folders and output-tree snapshots."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fitem.annotation import read_manifest

FAKE_TASK = "tests.annotation.tasks:fake_fit"


def write_images(root: Path, n: int, *, seed: int = 0, size: int = 40) -> list[Path]:
    """``n`` random PNGs, every other one in a sub-folder (keys ``imgNN`` and ``sub/imgNN``)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = root / ("sub" if i % 2 else "") / f"img{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        paths.append(p)
    return paths


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file under ``out/results`` (relative path → bytes)."""
    res = out / "results"
    return {p.relative_to(res).as_posix(): p.read_bytes() for p in sorted(res.rglob("*")) if p.is_file()}


def statuses(out: Path) -> dict[str, str]:
    return {k: r["status"] for k, r in read_manifest(out).items()}


def stray_files(out: Path) -> list[str]:
    """Temporary or partial files anywhere under ``out`` (there must be none after a run)."""
    bad = [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".partial" in p.parts]
    return sorted(str(p.relative_to(out)) for p in bad)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    write_images(d, 8)
    return d
