"""Resume, crash safety and the run-level checks of fitem.annotate (cheap test task, no fitting)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fitem.annotation import AnnotateInterrupted, annotate, iter_manifest, read_manifest, read_run
from fitem.config import FitConfig
from fitem.errors import ConfigError, InvalidInputError

from .conftest import FAKE_TASK, snapshot, statuses, stray_files, write_images

REPO = Path(__file__).resolve().parents[2]
FAST = dict(task=FAKE_TASK, progress=False, backend="threading", n_jobs=2)


def _kill_mid_run(inp: Path, out: Path, backend: str, sleep: float, after: int) -> list[int]:
    """Run annotate in a child process and SIGKILL it once ``after`` records are in the manifest.

    Returns the pids of its own children (loky workers), which the kill leaves orphaned."""
    code = ("import sys; from fitem.annotation import annotate; from fitem.config import FitConfig; "
            f"annotate(sys.argv[1], sys.argv[2], config=FitConfig(extra={{'sleep': {sleep}}}), n_jobs=2, "
            f"backend={backend!r}, task={FAKE_TASK!r}, progress=False)")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(inp), str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.is_file() and manifest.read_bytes().count(b"\n") >= after:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before it could be killed; raise the per-image sleep"
        children = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return children


def _children(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:  # cannot list them: orphans then exit on loky's idle timeout
        return []
    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def _end(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _check_same_as_uninterrupted(tmp_path: Path, inp: Path, out: Path, sleep: float) -> None:
    n_before = sum(1 for _ in iter_manifest(out))
    cfg = FitConfig(extra={"sleep": sleep})
    resumed = annotate(inp, out, config=cfg, **FAST)
    assert resumed.already_done >= 1 and resumed.done >= 1
    assert resumed.already_done + resumed.done == resumed.total == 12
    ref_out = tmp_path / "reference"
    annotate(inp, ref_out, config=cfg, **FAST)
    assert snapshot(out) == snapshot(ref_out)  # same files, same bytes: nothing lost, nothing partial
    assert statuses(out) == statuses(ref_out) == {k: "done" for k in statuses(ref_out)}
    keys = [r["key"] for r in iter_manifest(out)]
    assert len(keys) == len(set(keys)) == 12  # every image committed exactly once over both runs
    assert sum(1 for _ in iter_manifest(out)) - n_before == resumed.done
    assert stray_files(out) == []


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    write_images(inp, 12)
    out = tmp_path / "out"
    _kill_mid_run(inp, out, "threading", sleep=0.15, after=3)
    assert read_run(out)["config"]["extra"] == {"sleep": 0.15}
    _check_same_as_uninterrupted(tmp_path, inp, out, sleep=0.15)


@pytest.mark.slow
def test_resume_after_sigkill_with_loky_workers(tmp_path: Path) -> None:
    """Orphaned loky workers of the killed run must not commit anything the resume then trusts."""
    inp = tmp_path / "in"
    write_images(inp, 12)
    out = tmp_path / "out"
    orphans = _kill_mid_run(inp, out, "loky", sleep=0.3, after=3)
    try:
        _check_same_as_uninterrupted(tmp_path, inp, out, sleep=0.3)
    finally:
        _end(orphans)


def test_resume_skips_done_and_redoes_damaged(image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = annotate(image_dir, out, **FAST)
    assert (first.done, first.failed, first.already_done) == (8, 0, 0)
    assert sorted(os.listdir(out)) == [".lock", "manifest.jsonl", "results", "run.json"]
    assert sorted(os.listdir(out / "results" / "sub" / "img01")) == ["mask.png", "params.json"]
    before = snapshot(out)
    (out / "results" / "img02" / "mask.png").unlink()  # outside damage
    second = annotate(image_dir, out, **FAST)
    assert (second.done, second.already_done) == (1, 7)
    assert snapshot(out) == before
    third = annotate(image_dir, out, **FAST)
    assert (third.done, third.already_done, third.processed) == (0, 8, 0)


def test_failures_retry_failed_and_overwrite(image_dir: Path, tmp_path: Path) -> None:
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (image_dir / "noface.png").write_bytes((image_dir / "img00.png").read_bytes())
    out = tmp_path / "out"
    s = annotate(image_dir, out, **FAST)
    assert (s.done, s.failed) == (8, 2)
    assert s.errors == {"InvalidInputError": 1, "NoFaceError": 1}
    recs = read_manifest(out)
    assert recs["broken"]["status"] == "failed" and recs["broken"]["error_type"] == "InvalidInputError"
    assert "cannot decode" in recs["broken"]["error"] and recs["broken"]["result"] is None
    assert recs["noface"]["error_type"] == "NoFaceError"
    assert recs["img00"]["result"] == "results/img00"
    for r in recs.values():
        assert r["config_hash"] == FitConfig().hash() and r["fitem_version"] and r["model_checksum"]
        assert r["worker"].count(":") == 1 and r["seconds"] >= 0 and r["finished"].endswith("+00:00")
    assert not (out / "results" / "broken").exists()

    again = annotate(image_dir, out, **FAST)  # failures are left alone by default
    assert (again.processed, again.already_done, again.not_retried) == (0, 8, 2)

    (image_dir / "broken.jpg").write_bytes((image_dir / "img02.png").read_bytes())  # the user fixed the file
    retry = annotate(image_dir, out, retry_failed=True, **FAST)
    assert (retry.done, retry.failed, retry.already_done) == (1, 1, 8)
    assert statuses(out)["broken"] == "done"

    lines_before = sum(1 for _ in iter_manifest(out))
    created = read_run(out)["created"]
    time.sleep(1.1)
    over = annotate(image_dir, out, overwrite=True, **FAST)
    assert (over.done, over.failed, over.already_done, over.not_retried) == (9, 1, 0, 0)
    assert sum(1 for _ in iter_manifest(out)) == 10  # a fresh manifest ...
    assert (out / "manifest.previous.jsonl").read_bytes().count(b"\n") == lines_before  # ... the old one kept
    assert read_run(out)["created"] != created
    assert stray_files(out) == []


def test_skipped_records(image_dir: Path, tmp_path: Path) -> None:
    s = annotate(image_dir, tmp_path / "out", task="tests.annotation.tasks:skipping_fit", progress=False)
    assert (s.done, s.skipped, s.failed) == (5, 3, 0)
    rec = read_manifest(tmp_path / "out")["sub/img03"]
    assert rec["status"] == "skipped" and rec["error"] == "multiple of three (test task)"


def test_different_config_or_foreign_folder_refuses_before_any_work(image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    annotate(image_dir, out, **FAST)
    manifest = (out / "manifest.jsonl").read_bytes()
    with pytest.raises(ConfigError, match=r"different setup.*changed: rounds.*--overwrite"):
        annotate(image_dir, out, config=FitConfig(rounds=2), **FAST)
    assert (out / "manifest.jsonl").read_bytes() == manifest
    s = annotate(image_dir, out, config=FitConfig(rounds=2), overwrite=True, **FAST)
    assert s.done == 8 and read_run(out)["config"]["rounds"] == 2

    (out / "run.json").unlink()
    with pytest.raises(ConfigError, match="no run.json"):
        annotate(image_dir, out, **FAST)


def test_run_level_errors_are_typed_and_early(image_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no images found"):
        annotate(tmp_path / "empty", tmp_path / "out", **FAST)
    with pytest.raises(InvalidInputError, match="parent folder of the output"):
        annotate(image_dir, tmp_path / "no" / "such" / "out", **FAST)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        annotate(image_dir, tmp_path / "file", **FAST)
    with pytest.raises(ConfigError, match="applies to backend 'dask' or 'ray'"):
        annotate(image_dir, tmp_path / "out", scheduler="tcp://127.0.0.1:8786", task=FAKE_TASK)
    with pytest.raises(ConfigError, match="unknown backend"):
        annotate(image_dir, tmp_path / "out", backend="mpi", task=FAKE_TASK)
    with pytest.raises(ConfigError, match="cannot import the task module"):
        annotate(image_dir, tmp_path / "out", task="tests.annotation.nowhere:fn", progress=False)
    with pytest.raises(ConfigError, match="by name or file path"):
        annotate(image_dir, tmp_path / "out", model=object(), task=FAKE_TASK)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_output_is_refused(image_dir: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InvalidInputError, match="cannot write"):
            annotate(image_dir, ro, **FAST)
    finally:
        ro.chmod(0o700)


def test_second_writer_is_refused(image_dir: Path, tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(InvalidInputError, match="another `fitem annotate`"):
            annotate(image_dir, out, **FAST)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(image_dir: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    with pytest.raises(AnnotateInterrupted) as info:  # n_jobs=1: images in order, in this process
        annotate(image_dir, out, task="tests.annotation.tasks:interrupting_fit", progress=False)
    summary = info.value.summary
    assert isinstance(info.value, KeyboardInterrupt)
    # keys in order: img00 img02 img04 img06 sub/img01 | sub/img03 interrupted
    assert summary.interrupted and (summary.done, summary.remaining) == (5, 3)
    assert statuses(out) == dict.fromkeys(["img00", "img02", "img04", "img06", "sub/img01"], "done")
    assert summary.resume_command == f"fitem annotate {image_dir} --out {out} -j 1"
    assert "resume with" in caplog.text and summary.resume_command in caplog.text
    assert stray_files(out) == []
    rest = annotate(image_dir, out, **FAST)
    assert rest.already_done == summary.done and rest.done == 8 - summary.done
