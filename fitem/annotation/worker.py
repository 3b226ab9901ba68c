"""What runs in a worker: one image → one committed result folder, or a recorded error.

Workers receive plain data (a job dict: paths, the model *name*, the config *dict*, the task's
``"module:function"`` name) and build what they need once per process: the morphable model
and the task function are cached at module level, so a worker that fits thousands of images
loads its model once. Nothing live (a model, a rasterizer, a file handle) crosses a process
or machine boundary.

A result folder is written into ``OUT/.partial/`` and renamed into ``OUT/results/<key>`` when
complete, so a result folder either is whole or does not exist; the parent then commits the
image by appending its manifest record.
"""
from __future__ import annotations

import importlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from fitem.errors import ConfigError, FitemError

__all__ = ["FitFailedError", "SkipImage", "fit_image", "run_job", "DEFAULT_TASK", "PARTIAL_DIR"]

log = logging.getLogger(__name__)

#: The per-image function annotate runs by default.
DEFAULT_TASK = "fitem.annotation.worker:fit_image"
#: Folder under OUT where workers assemble result folders before the rename.
PARTIAL_DIR = ".partial"

_LOCK = threading.Lock()
_MODELS: dict[str, Any] = {}
_CONFIGS: dict[str, Any] = {}
_TASKS: dict[str, Callable[..., Any]] = {}


class FitFailedError(FitemError):
    """The fit ran but ended with ``FitStatus.FAILED`` (diverged or lost the face); the message says why."""


class _OrphanedJob(FitemError):
    """The annotate process that dispatched a job is gone (killed); the job must not commit."""


class SkipImage(Exception):
    """Raised by a per-image task to decline an image; it is recorded as ``skipped`` with the message."""


# --------------------------------------------------------------------------- per-process caches
def cached_model(model: str):
    """The :class:`~fitem.models.MorphableModel` for a name or path, loaded once per process."""
    with _LOCK:
        if model not in _MODELS:
            from fitem.models import load_model

            _MODELS[model] = load_model(model)
        return _MODELS[model]


def cached_config(config: dict[str, Any]):
    """A :class:`~fitem.config.FitConfig` from its dict (``FitConfig.as_dict()``), built once per process."""
    import json

    from fitem.config import FitConfig

    key = json.dumps(config, sort_keys=True, default=str)
    with _LOCK:
        if key not in _CONFIGS:
            _CONFIGS[key] = FitConfig(**{**config, "progress": False})
        return _CONFIGS[key]


def resolve_task(name: str) -> Callable[..., Any]:
    """Import a ``"module:function"`` task by name (cached per process).

    Raises:
        fitem.errors.ConfigError: malformed name, module or function not found.
    """
    with _LOCK:
        fn = _TASKS.get(name)
    if fn is not None:
        return fn
    mod_name, sep, fn_name = name.partition(":")
    if not sep or not mod_name or not fn_name:
        raise ConfigError(f"task {name!r} must be 'package.module:function'")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import the task module {mod_name!r} ({exc}); it must be importable on every "
                          "worker") from exc
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"module {mod_name!r} has no function {fn_name!r} (task {name!r})")
    with _LOCK:
        _TASKS[name] = fn
    return fn


# --------------------------------------------------------------------------- the default task
def fit_image(image_path: str, result_dir: str, *, model: str, config: dict[str, Any], landmarks: str | None,
              overlay: bool, mesh: bool, arrays: bool) -> None:
    """Fit one image with :func:`fitem.fit` and save the result folder.

    This is the signature every annotate task has (a substitute for tests or other per-image
    work takes the same arguments, writes ``params.json`` last, and raises on failure).

    Args:
        image_path: the image file.
        result_dir: an empty folder to write into (``FitResult.save``).
        model: ``"demo"`` or a model file path (loaded once per worker process).
        config: ``FitConfig.as_dict()``.
        landmarks: an iBUG ``.pts`` file of 68 points, or None to detect.
        overlay, mesh, arrays: also write ``overlay.png`` / ``mesh.ply`` / ``arrays.npz``.

    Raises:
        fitem.errors.InvalidInputError: unreadable image. fitem.errors.NoFaceError: no face.
        FitFailedError: the fit diverged (``FitStatus.FAILED``).

    Example:
        >>> fit_image("a.jpg", "out/a", model="demo", config=FitConfig().as_dict(), landmarks=None,
        ...           overlay=False, mesh=False, arrays=False)   # doctest: +SKIP
    """
    from fitem.api import fit
    from fitem.image import load_image

    cfg = cached_config(config)
    mdl = cached_model(model)
    image = load_image(image_path)
    result = fit(image, landmarks=landmarks, model=mdl, config=cfg)
    if not result.success:
        raise FitFailedError(f"the fit of {image_path!r} failed: {result.message}")
    result.save(result_dir, image=image if overlay else None, arrays=arrays, mesh=mesh)


# --------------------------------------------------------------------------- job wrapper
def _parent_alive(parent: str) -> bool:
    host, _, pid = parent.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: cannot tell, trust it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _commit(tmp: Path, dest: Path) -> None:
    """Move a complete result folder into place (replacing an older one)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.replace(tmp, dest)
            return
        except OSError:  # a concurrent writer re-created dest between rmtree and rename
            if attempt == 2:
                raise
            time.sleep(0.05)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run the task on one image and commit its result folder; never raises for a bad image.

    Args:
        job: plain data: ``key``, ``input``, ``landmarks``, ``out_dir``, ``task``, ``model``,
            ``config`` (dict), ``overlay``, ``mesh``, ``arrays``, ``parent`` (``host:pid``).

    Returns:
        ``{"key", "status" ("done" | "failed" | "skipped"), "error_type", "error", "seconds",
        "finished", "worker"}``; the parent turns it into a manifest record.
    """
    from fitem.annotation.manifest import RESULTS_DIR, utc_now

    t0 = time.perf_counter()
    out_dir = Path(job["out_dir"])
    status, error_type, error = "done", None, None
    tmp: Path | None = None
    task = resolve_task(job["task"])  # a task that does not import is a setup error: it stops the run
    try:
        if not _parent_alive(job["parent"]):
            raise _OrphanedJob("the annotate process that dispatched this job is gone; not starting it")
        partial = out_dir / PARTIAL_DIR
        partial.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=partial, prefix=job["key"].replace("/", "__") + "."))
        task(job["input"], str(tmp), model=job["model"], config=job["config"], landmarks=job["landmarks"],
             overlay=job["overlay"], mesh=job["mesh"], arrays=job["arrays"])
        if not (tmp / "params.json").is_file():
            raise ConfigError(f"the task {job['task']!r} wrote no params.json for {job['input']!r} "
                              "(a task must write params.json last)")
        if not _parent_alive(job["parent"]):
            raise _OrphanedJob("the annotate process that dispatched this job is gone; not committing it")
        _commit(tmp, out_dir / RESULTS_DIR / job["key"])
        tmp = None
    except SkipImage as exc:
        status, error_type, error = "skipped", type(exc).__name__, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad image must never stop the run; the error is recorded
        status, error_type, error = "failed", type(exc).__name__, str(exc) or repr(exc)
        if not isinstance(exc, FitemError):
            log.warning("%s: unexpected %s", job["input"], type(exc).__name__, exc_info=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "key": job["key"],
        "status": status,
        "error_type": error_type,
        "error": error,
        "seconds": round(time.perf_counter() - t0, 4),
        "finished": utc_now(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
