"""Atomic writes: the whole file or nothing, with the permissions a plain open() would give."""
from __future__ import annotations

import os
import stat

import pytest

from fitem import _files


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "a" / "x.bin"
    _files.atomic_write_bytes(p, b"one")
    _files.atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert sorted(os.listdir(p.parent)) == ["x.bin"]


def test_atomic_write_mode_follows_the_umask(tmp_path):
    p = tmp_path / "m.bin"
    _files.atomic_write_bytes(p, b"x")
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_files._UMASK
    assert stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 & ~_files._UMASK  # readable by others unless masked


def test_failed_write_removes_the_temporary(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        _files.atomic_write_bytes(tmp_path / "y.bin", b"x")
    assert os.listdir(tmp_path) == []
