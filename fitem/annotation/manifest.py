"""The annotation output folder: ``run.json``, the ``manifest.jsonl`` log and result-folder checks.

Layout (shared by ``fitem annotate`` and the distillation reader)::

    OUT/
      run.json          {"format": 1, "fitem_version", "config_hash", "config", "model",
                         "model_checksum", "created"}   written atomically before any work
      manifest.jsonl    JSON Lines, append-only, one record per finished image attempt,
                        flushed and fsynced per record; the LAST record of a key wins
      results/<key>/    a FitResult.save() folder (params.json written last)

Why JSON Lines rather than SQLite: one process (the parent of the workers) appends, a
record is a single ``write`` followed by ``fsync``, so the line is the commit point of an
image; a crash can only truncate the last line, which the reader drops. The file is
greppable, diff-able, streams into pandas (``pd.read_json(path, lines=True)``), and on a
shared file system (a Dask cluster writing results) it needs no locking protocol that
network file systems get wrong.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from fitem._files import atomic_write_bytes
from fitem.errors import InvalidInputError

__all__ = [
    "RUN_FORMAT",
    "RUN_FILE",
    "MANIFEST_FILE",
    "RESULTS_DIR",
    "STATUSES",
    "ManifestWriter",
    "iter_manifest",
    "read_manifest",
    "read_run",
    "write_run",
    "result_is_complete",
    "utc_now",
]

log = logging.getLogger(__name__)

RUN_FORMAT = 1
RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.jsonl"
RESULTS_DIR = "results"
#: Record statuses: ``done`` (result folder committed), ``failed`` (error recorded), ``skipped``
#: (the per-image task declined the image, see :class:`fitem.annotation.SkipImage`).
STATUSES = ("done", "failed", "skipped")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"


def utc_now() -> str:
    """Current UTC time as ISO-8601 with seconds, e.g. ``2025-01-31T12:00:00+00:00``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- run.json
def write_run(out_dir: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write ``run.json`` atomically (the fields of the folder contract; see the module docstring).

    Example:
        >>> write_run("out", {"format": 1, "config_hash": "abc", ...})   # doctest: +SKIP
    """
    path = Path(out_dir) / RUN_FILE
    atomic_write_bytes(path, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode())
    return path


def read_run(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``OUT/run.json``: how the folder was made (config, its hash, model and checksum).

    Raises:
        fitem.errors.InvalidInputError: no ``run.json`` (not an annotation folder) or not JSON.

    Example:
        >>> run = read_run("annotations")                       # doctest: +SKIP
        >>> run["config_hash"], run["model"]                     # doctest: +SKIP
    """
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        raise InvalidInputError(
            f"{str(out_dir)!r} holds no {RUN_FILE}: not a `fitem annotate` output folder (make one with "
            "`fitem annotate IMAGES --out DIR`)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read {str(path)!r} ({exc}); rerun with --overwrite to start the folder "
                                "afresh") from exc
    if not isinstance(info, dict) or "config_hash" not in info:
        raise InvalidInputError(f"{str(path)!r} is not a fitem run file (no config_hash); rerun with --overwrite")
    return info


# --------------------------------------------------------------------------- manifest.jsonl
def iter_manifest(out_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every record of ``OUT/manifest.jsonl`` in file order (no file: nothing).

    A last line without its newline (a crash mid-write) is dropped; any other line that is
    not a JSON object is skipped with a warning (its image is simply redone on resume).
    """
    path = Path(out_dir) / MANIFEST_FILE
    if not path.is_file():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = lines[:-1]  # the piece after the last newline is empty or a torn write
    if lines[-1].strip():
        log.warning("%s: dropping a truncated last record (%d bytes) left by an interrupted write", path,
                    len(lines[-1]))
    for n, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("key"), str) or rec.get("status") not in STATUSES:
            log.warning("%s line %d is not a manifest record; ignoring it (that image is redone on resume)", path, n)
            continue
        yield rec


def read_manifest(out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``key → last record`` of ``OUT/manifest.jsonl`` (the last record of a key wins).

    Tolerates a truncated last line (a run killed mid-write). A folder without a manifest
    gives ``{}``.

    Example:
        >>> recs = read_manifest("annotations")                              # doctest: +SKIP
        >>> done = [r["result"] for r in recs.values() if r["status"] == "done"]   # doctest: +SKIP
    """
    return {rec["key"]: rec for rec in iter_manifest(out_dir)}


class ManifestWriter:
    """Appends records to ``OUT/manifest.jsonl``; each record is one line, flushed and fsynced.

    Only one process may write (the parent of the workers). Opening drops a torn last line
    left by a crash so that the next record starts on a line of its own.

    Example:
        >>> with ManifestWriter("out") as w:                      # doctest: +SKIP
        ...     w.append({"key": "img001", "status": "done", ...})
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / MANIFEST_FILE
        self._repair_tail()
        self._fh = open(self.path, "ab")

    def _repair_tail(self) -> None:
        if not self.path.is_file():
            return
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "rb+") as fh:
            # find the last newline, reading backwards in blocks
            pos, block = size, 1 << 16
            cut = 0
            while pos > 0:
                start = max(0, pos - block)
                fh.seek(start)
                chunk = fh.read(pos - start)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    cut = start + i + 1
                    break
                pos = start
            if cut != size:
                log.warning("%s: removing a truncated last record (%d bytes) left by an interrupted run",
                            self.path, size - cut)
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a JSON line and make it durable (flush + fsync) before returning."""
        if self._fh.closed:
            raise InvalidInputError(f"manifest {self.path} is closed; open a new ManifestWriter")
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        self._fh.write(line.encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- result folders
def result_is_complete(folder: str | os.PathLike) -> bool:
    """True when a result folder holds a parseable ``params.json`` and a whole ``mask.png``.

    ``mask.png`` is checked by its PNG signature and final ``IEND`` chunk (cheap enough for
    tens of thousands of folders on resume; files are written atomically, so this catches
    outside damage such as a truncated copy).
    """
    d = Path(folder)
    try:
        meta = json.loads((d / "params.json").read_bytes())
        if not isinstance(meta, dict):
            return False
        with open(d / "mask.png", "rb") as fh:
            head = fh.read(8)
            fh.seek(0, os.SEEK_END)
            if fh.tell() < 20:
                return False
            fh.seek(-8, os.SEEK_END)
            tail = fh.read(8)
    except (OSError, ValueError):
        return False
    return head == _PNG_SIGNATURE and tail == _PNG_IEND
