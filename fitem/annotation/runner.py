"""``annotate``: fit every image of a data set, in parallel, resumable and crash-safe.

How a run stays correct when it is killed at any moment:

- a worker assembles an image's result folder under ``OUT/.partial/`` and renames it into
  ``OUT/results/<key>`` only when complete (``params.json`` is written last inside it);
- the parent process alone appends the image's record to ``manifest.jsonl`` (flush + fsync):
  that line is the commit point;
- on resume an image counts as done only if its last record says ``done`` with the same
  config hash, model checksum and input path, and its folder holds a readable
  ``params.json`` and ``mask.png``. Anything else is redone (its old folder replaced).

So a SIGKILL loses at most the images in flight, and a torn last manifest line is dropped.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shlex
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from fitem.annotation.inputs import InputItem, collect_inputs
from fitem.annotation.manifest import (
    MANIFEST_FILE,
    RESULTS_DIR,
    RUN_FILE,
    RUN_FORMAT,
    ManifestWriter,
    read_manifest,
    read_run,
    result_is_complete,
    utc_now,
    write_run,
)
from fitem.annotation.worker import DEFAULT_TASK, PARTIAL_DIR, resolve_task, run_job
from fitem.config import FitConfig
from fitem.errors import ConfigError, InvalidInputError

__all__ = ["annotate", "AnnotateSummary", "AnnotateInterrupted", "BACKENDS"]

log = logging.getLogger(__name__)

#: Parallel backends (joblib names). ``dask`` and ``ray`` are optional extras.
BACKENDS = ("loky", "threading", "dask", "ray")
_LOCK_FILE = ".lock"


@dataclass
class AnnotateSummary:
    """What a run did.

    Attributes:
        out_dir, manifest: the output folder and its ``manifest.jsonl``.
        total: images in the input.
        done, failed, skipped: images finished by THIS run, by outcome.
        already_done: images skipped because an earlier run finished and verified them.
        not_retried: images that failed (or were skipped) earlier and were left alone
            (pass ``retry_failed=True`` to redo them).
        seconds: wall time of the processing phase; ``images_per_second`` = finished / seconds.
        errors: error type → count, this run.
        failures: ``(key, error_type, message)`` of this run's failures (the first 50).
        interrupted: the run was stopped (Ctrl-C) before all images were processed.
        resume_command: the command that resumes the run, when the call is expressible on the
            command line (else None).
    """

    out_dir: Path
    manifest: Path
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    already_done: int = 0
    not_retried: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    interrupted: bool = False
    resume_command: str | None = None

    @property
    def processed(self) -> int:
        return self.done + self.failed + self.skipped

    @property
    def remaining(self) -> int:
        """Images neither finished in any run nor left alone as earlier failures."""
        return self.total - self.processed - self.already_done - self.not_retried

    def table(self) -> str:
        """A plain-text summary table (what the CLI prints at the end of a run)."""
        errs = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items(), key=lambda kv: -kv[1]))
        rows = [
            ("images", f"{self.total}"),
            ("done", f"{self.done}"),
            ("failed", f"{self.failed}" + (f"   ({errs})" if errs else "")),
            ("skipped", f"{self.skipped}"),
            ("already done", f"{self.already_done}"),
            ("failed earlier, not retried", f"{self.not_retried}" + ("   (--retry-failed redoes them)"
                                                                      if self.not_retried else "")),
            ("time", f"{self.seconds:.1f} s  ({self.images_per_second:.2f} images/s)"),
            ("manifest", str(self.manifest)),
        ]
        if self.interrupted:
            rows.insert(0, ("INTERRUPTED", f"{self.remaining} image(s) not processed"))
        w = max(len(k) for k, _ in rows)
        lines = [f"fitem annotate → {self.out_dir}"] + [f"  {k:<{w}}  {v}" for k, v in rows]
        for key, etype, msg in self.failures[:10]:
            lines.append(f"  ✗ {key}: {etype}: {msg[:160]}")
        if len(self.failures) > 10 or self.failed > len(self.failures):
            lines.append(f"  ... see {self.manifest} for all failures")
        return "\n".join(lines)


class AnnotateInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`annotate`; the manifest is complete up to the last finished image.

    ``summary`` holds the counts so far and ``summary.resume_command`` how to continue.
    """

    def __init__(self, summary: AnnotateSummary) -> None:
        super().__init__("annotation interrupted; " + (f"resume with: {summary.resume_command}"
                                                       if summary.resume_command else
                                                       "call annotate() again with the same arguments to resume"))
        self.summary = summary


# --------------------------------------------------------------------------- argument checks
def _as_config(config: "FitConfig | dict | None") -> FitConfig:
    if config is None:
        return FitConfig()
    if isinstance(config, FitConfig):
        return config
    if isinstance(config, dict):
        return FitConfig(**config)
    raise ConfigError(f"config must be a fitem.FitConfig (or its as_dict()), got {type(config).__name__}")


def _model_for_workers(model: Any) -> str:
    if not isinstance(model, (str, os.PathLike)):
        raise ConfigError(
            f"annotate takes the model by name or file path (workers load it themselves), got "
            f"{type(model).__name__}; save a model object with fitem.models.io.save_model(model, 'model.npz') "
            "and pass the path")
    s = str(model)
    if s == "demo":
        return s
    p = Path(s).expanduser()
    return str(p.resolve()) if p.exists() else s


def _check_backend(backend: str, n_jobs: int, scheduler: Any) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if scheduler is not None and backend not in ("dask", "ray"):
        raise ConfigError(f"a scheduler address applies to backend 'dask' or 'ray', not {backend!r}; "
                          "add --backend dask (or ray)")
    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0:
        raise ConfigError(f"n_jobs must be a positive number of workers or -1 (all cores), got {n_jobs!r}")
    if backend == "dask":
        if importlib.util.find_spec("distributed") is None:
            raise ConfigError("backend 'dask' needs dask.distributed: pip install 'fitem[dask]' "
                              "(or pip install 'dask[distributed]')")
    if backend == "ray":
        if importlib.util.find_spec("ray") is None:
            raise ConfigError("backend 'ray' needs Ray, which is not installed here: pip install 'ray[default]' "
                              "(Ray ships wheels for Linux and macOS on recent Pythons), or use backend='dask' "
                              "or 'loky'")


def _prepare_out(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output path {str(out)!r} exists and is not a folder; choose a folder for --out")
    parent = out.resolve().parent
    if not out.exists() and not parent.is_dir():
        raise InvalidInputError(f"the parent folder of the output, {str(parent)!r}, does not exist; create it "
                                "first (mkdir -p) or choose another --out")
    return out.resolve()


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidInputError(f"cannot write to the output folder {str(out)!r} ({exc.strerror or exc}); "
                                "check its permissions or choose another --out") from exc


@contextlib.contextmanager
def _folder_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on OUT/.lock: one annotate process per output folder (the single writer)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; trust the user
        yield
        return
    fh = open(out / _LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidInputError(f"another `fitem annotate` is writing to {str(out)!r}; wait for it to finish "
                                    "or choose another --out") from None
        yield
    finally:
        fh.close()


def _init_run(out: Path, info: dict[str, Any], overwrite: bool) -> None:
    """Check ``run.json`` against this run (typed error on mismatch) or start the folder."""
    run_path = out / RUN_FILE
    manifest = out / MANIFEST_FILE
    if overwrite:
        if manifest.exists():
            os.replace(manifest, out / "manifest.previous.jsonl")  # records of the old run, kept for reference
            log.info("--overwrite: previous manifest kept as manifest.previous.jsonl; redoing every image")
        write_run(out, info)
        return
    if run_path.exists():
        try:
            old = read_run(out)
        except InvalidInputError as exc:
            raise ConfigError(f"{exc}") from exc
        diffs = []
        if old.get("config_hash") != info["config_hash"]:
            changed = sorted(k for k in set(old.get("config", {})) | set(info["config"])
                             if k != "progress" and old.get("config", {}).get(k) != info["config"].get(k))
            diffs.append(f"config hash {old.get('config_hash')} ≠ {info['config_hash']}"
                         + (f" (changed: {', '.join(changed)})" if changed else ""))
        if old.get("model_checksum") != info["model_checksum"]:
            diffs.append(f"model {old.get('model')!r} (checksum {old.get('model_checksum')}) ≠ {info['model']!r} "
                         f"(checksum {info['model_checksum']})")
        if diffs:
            raise ConfigError(f"the output folder {str(out)!r} was made with a different setup: {'; '.join(diffs)}. "
                              "Use the same settings to resume, pass --overwrite (overwrite=True) to redo every "
                              "image with the new ones, or choose another --out")
        return
    if manifest.exists() or (out / RESULTS_DIR).exists():
        raise ConfigError(f"{str(out)!r} holds annotation results but no {RUN_FILE}, so their settings are unknown; "
                          "pass --overwrite to redo them or choose another --out")
    write_run(out, info)


def resume_command(inputs: Any, out: Path, *, model: str, n_jobs: int, backend: str, scheduler: Any,
                   config: FitConfig, retry_failed: bool, overlay: bool, mesh: bool, arrays: bool) -> str | None:
    """The ``fitem annotate`` command line equivalent to a call, or None if flags cannot express it."""
    if not isinstance(inputs, (str, os.PathLike)):
        return None
    default = FitConfig()
    diff = {k for k, v in config.as_dict().items() if k != "progress" and default.as_dict().get(k) != v}
    if diff - {"size", "rounds"}:
        return None
    parts = ["fitem", "annotate", str(inputs), "--out", str(out), "-j", str(n_jobs)]
    if backend != "loky":
        parts += ["--backend", backend]
    if scheduler is not None:
        if not isinstance(scheduler, str):
            return None
        parts += ["--scheduler", scheduler]
    if model != "demo":
        parts += ["--model", model]
    if "size" in diff:
        parts += ["--size", str(config.size)]
    if "rounds" in diff:
        parts += ["--rounds", str(config.rounds)]
    parts += [flag for flag, on in (("--retry-failed", retry_failed), ("--overlay", overlay), ("--mesh", mesh),
                                    ("--arrays", arrays)) if on]
    return shlex.join(parts)


# --------------------------------------------------------------------------- planning
def _plan(items: list[InputItem], records: dict[str, dict], out: Path, *, config_hash: str, checksum: str,
          overwrite: bool, retry_failed: bool) -> tuple[list[InputItem], int, int]:
    """Split the inputs into (to do, already done, failed earlier and not retried)."""
    if overwrite:
        return list(items), 0, 0
    candidates = []  # (item, folder) whose record says done under this setup
    todo: list[InputItem] = []
    not_retried = 0
    for it in items:
        rec = records.get(it.key)
        same = (rec is not None and rec.get("config_hash") == config_hash and rec.get("model_checksum") == checksum
                and rec.get("input") == it.path)
        if not same:
            todo.append(it)
        elif rec["status"] == "done" and isinstance(rec.get("result"), str):
            candidates.append((it, out / rec["result"]))
        elif rec["status"] in ("failed", "skipped") and not retry_failed:
            not_retried += 1
        else:
            todo.append(it)
    with ThreadPoolExecutor(max_workers=8) as pool:
        ok = list(pool.map(result_is_complete, [f for _, f in candidates]))
    already = 0
    for (it, folder), good in zip(candidates, ok):
        if good:
            already += 1
        else:
            log.warning("%s: the manifest says done but %s is missing or damaged; redoing it", it.key, folder)
            todo.append(it)
    order = {it.key: i for i, it in enumerate(items)}
    todo.sort(key=lambda it: order[it.key])
    return todo, already, not_retried


# --------------------------------------------------------------------------- parallel backends
@contextlib.contextmanager
def _backend_context(backend: str, n_jobs: int, scheduler: Any) -> Iterator[None]:
    from joblib import parallel_config

    if backend == "dask":
        from distributed import Client, LocalCluster

        with contextlib.ExitStack() as stack:
            if scheduler is None:
                workers = n_jobs if n_jobs > 0 else (os.cpu_count() or 1)
                cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                           host="127.0.0.1", dashboard_address=None))
                client = stack.enter_context(Client(cluster))
                log.info("started a local Dask cluster with %d worker process(es) at %s", workers,
                         cluster.scheduler_address)
            elif isinstance(scheduler, str):
                client = stack.enter_context(Client(scheduler))
                log.info("connected to the Dask scheduler at %s", scheduler)
            else:
                client = scheduler  # a distributed.Client the caller owns
            with client.as_current(), parallel_config(backend="dask", n_jobs=n_jobs):
                yield
        return
    if backend == "ray":
        import ray
        from ray.util.joblib import register_ray

        register_ray()
        if not ray.is_initialized():
            ray.init(address=scheduler) if scheduler else ray.init()
        with parallel_config(backend="ray", n_jobs=n_jobs):
            yield
        return
    with parallel_config(backend=backend, n_jobs=n_jobs):
        yield


def _results(jobs: Iterable[dict[str, Any]], n_jobs: int) -> Iterator[dict[str, Any]]:
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_jobs, return_as="generator_unordered", batch_size=1, pre_dispatch="2*n_jobs")(
        delayed(run_job)(job) for job in jobs)


# --------------------------------------------------------------------------- annotate
def annotate(
    inputs: "str | os.PathLike | Iterable[str | os.PathLike]",
    out_dir: str | os.PathLike,
    *,
    config: "FitConfig | dict | None" = None,
    model: "str | os.PathLike" = "demo",
    n_jobs: int = 1,
    backend: str = "loky",
    scheduler: Any = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    save_overlay: bool = False,
    save_mesh: bool = False,
    save_arrays: bool = False,
    progress: bool = True,
    task: str | None = None,
) -> AnnotateSummary:
    """Fit every image of a data set and write masks + 3D parameters under ``out_dir``.

    Output (see :mod:`fitem.annotation.manifest`): ``run.json``, ``manifest.jsonl`` (one record
    per finished image: ``done`` / ``failed`` with the error type and message / ``skipped``,
    with timing, config hash, model checksum and fitem version) and ``results/<key>/`` — a
    :meth:`fitem.FitResult.save` folder (``params.json``, ``mask.png`` at input resolution,
    ``occlusion.png``, ``render.png``; ``overlay.png`` / ``mesh.ply`` / ``arrays.npz`` on
    request). ``<key>`` mirrors the input tree (``sub/dir/img001``).

    Landmarks: detected (MediaPipe by default), unless a sidecar iBUG ``<stem>.pts`` lies next
    to the image (as 300-W-style data sets ship them): then those 68 points are used.

    Re-running the same call resumes: images done and verified (same config and model,
    ``params.json`` and ``mask.png`` readable) are skipped, earlier failures are left alone
    unless ``retry_failed``, and ``overwrite`` redoes everything. A run killed at any moment
    (even SIGKILL) loses at most the images in flight.

    Args:
        inputs: a folder (searched recursively for jpg/jpeg/png/bmp/tif/tiff/webp/ppm), a text
            file with one image path per line, or a list of image paths.
        out_dir: output folder; created if missing (its parent must exist).
        config: :class:`fitem.FitConfig` (default ``FitConfig()``).
        model: ``"demo"`` or a model file path; every worker loads it once.
        n_jobs: parallel workers (-1: all cores; with ``backend="dask"`` and a scheduler, the
            number of concurrent tasks).
        backend: ``"loky"`` (processes, default), ``"threading"``, ``"dask"`` (a
            ``dask.distributed`` cluster: ``scheduler`` address, a ``Client``, or None to start a
            loopback ``LocalCluster`` with ``n_jobs`` worker processes) or ``"ray"`` (if installed;
            ``scheduler`` is the Ray address). With a cluster, ``out_dir`` and the images must be
            on a file system every worker sees under the same paths.
        scheduler: see ``backend``.
        overwrite: redo every image (the old manifest is kept as ``manifest.previous.jsonl``).
        retry_failed: redo images whose last record is ``failed`` or ``skipped``.
        save_overlay, save_mesh, save_arrays: also write ``overlay.png``, ``mesh.ply``,
            ``arrays.npz`` (posterior, region, vertices; needed by ``FitResult.load``).
        progress: show a tqdm bar (images/s, ETA, failures so far).
        task: ``"module:function"`` run per image instead of the fit (same signature as
            :func:`fitem.annotation.worker.fit_image`); for tests and custom per-image work.

    Returns:
        :class:`AnnotateSummary`.

    Raises:
        fitem.errors.InvalidInputError: missing or empty input, output parent missing, output
            not writable, another annotate holding the folder. All raised before any work.
        fitem.errors.ConfigError: ``out_dir`` was made with another config or model (pass
            ``overwrite=True``), unknown backend, a backend's package missing.
        AnnotateInterrupted: Ctrl-C (a ``KeyboardInterrupt``); the manifest is complete up to
            the last finished image, ``.summary.resume_command`` says how to continue.

    Example:
        >>> from fitem.annotation import annotate, read_manifest
        >>> s = annotate("faces/", "annotations/", n_jobs=2)        # doctest: +SKIP
        >>> s.done, s.failed, s.images_per_second                    # doctest: +SKIP
        >>> read_manifest("annotations/")["img001"]["status"]        # doctest: +SKIP
        'done'
    """
    import fitem
    from fitem.models import load_model

    cfg = _as_config(config)
    model_name = _model_for_workers(model)
    _check_backend(backend, n_jobs, scheduler)
    out = _prepare_out(out_dir)
    items = collect_inputs(inputs, exclude=out)
    resolve_task(task or DEFAULT_TASK)  # typed error now rather than one failure per image
    checksum = load_model(model_name).checksum
    config_hash = cfg.hash()
    cfg_dict = cfg.replace(progress=False).as_dict()
    summary = AnnotateSummary(out_dir=out, manifest=out / MANIFEST_FILE, total=len(items))
    summary.resume_command = resume_command(inputs, out, model=str(model), n_jobs=n_jobs, backend=backend,
                                            scheduler=scheduler, config=cfg, retry_failed=retry_failed,
                                            overlay=save_overlay, mesh=save_mesh, arrays=save_arrays)
    _check_writable(out)
    with _folder_lock(out):
        _init_run(out, {
            "format": RUN_FORMAT, "fitem_version": fitem.__version__, "config_hash": config_hash,
            "config": cfg_dict, "model": str(model), "model_checksum": checksum, "created": utc_now(),
        }, overwrite)
        shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)  # debris of a killed run; we hold the lock
        records = {} if overwrite else read_manifest(out)
        todo, summary.already_done, summary.not_retried = _plan(
            items, records, out, config_hash=config_hash, checksum=checksum, overwrite=overwrite,
            retry_failed=retry_failed)
        log.info("annotating %d of %d image(s) into %s (%d already done, %d earlier failures left alone) with "
                 "backend %s, n_jobs %d", len(todo), len(items), out, summary.already_done, summary.not_retried,
                 backend, n_jobs)
        if todo:
            _run(todo, out, summary, task=task or DEFAULT_TASK, model=model_name, config=cfg_dict,
                 config_hash=config_hash, checksum=checksum, version=fitem.__version__, n_jobs=n_jobs,
                 backend=backend, scheduler=scheduler, progress=progress,
                 flags=(save_overlay, save_mesh, save_arrays))
    log.info("annotate %s: %d done, %d failed, %d skipped this run; %d already done, %d earlier failures left "
             "alone; %.1f s (%.2f images/s)", out, summary.done, summary.failed, summary.skipped,
             summary.already_done, summary.not_retried, summary.seconds, summary.images_per_second)
    return summary


def _run(todo: list[InputItem], out: Path, summary: AnnotateSummary, *, task: str, model: str,
         config: dict[str, Any], config_hash: str, checksum: str, version: str, n_jobs: int, backend: str,
         scheduler: Any, progress: bool, flags: tuple[bool, bool, bool]) -> None:
    from tqdm import tqdm

    overlay, mesh, arrays = flags
    by_key = {it.key: it for it in todo}
    parent = f"{socket.gethostname()}:{os.getpid()}"
    jobs = ({"key": it.key, "input": it.path, "landmarks": it.landmarks, "out_dir": str(out), "task": task,
             "model": model, "config": config, "overlay": overlay, "mesh": mesh, "arrays": arrays,
             "parent": parent} for it in todo)
    bar = tqdm(total=len(todo), desc="annotating", unit="image", disable=not progress, smoothing=0.05)
    t0 = time.perf_counter()
    try:
        with ManifestWriter(out) as writer, _backend_context(backend, n_jobs, scheduler):
            for res in _results(jobs, n_jobs):
                it = by_key[res["key"]]
                writer.append({
                    "key": it.key, "input": it.path, "status": res["status"],
                    "result": f"{RESULTS_DIR}/{it.key}" if res["status"] == "done" else None,
                    "error_type": res["error_type"], "error": res["error"], "seconds": res["seconds"],
                    "config_hash": config_hash, "model_checksum": checksum, "fitem_version": version,
                    "finished": res["finished"], "worker": res["worker"],
                })
                if res["status"] == "done":
                    summary.done += 1
                elif res["status"] == "skipped":
                    summary.skipped += 1
                else:
                    summary.failed += 1
                    summary.errors[res["error_type"]] = summary.errors.get(res["error_type"], 0) + 1
                    if len(summary.failures) < 50:
                        summary.failures.append((it.key, res["error_type"], res["error"]))
                    log.info("%s failed: %s: %s", it.key, res["error_type"], res["error"])
                bar.update(1)
                if summary.failed:
                    bar.set_postfix(failed=summary.failed, refresh=False)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise AnnotateInterrupted(_finish(summary, t0, bar)) from None
    finally:
        with contextlib.suppress(OSError):
            (out / PARTIAL_DIR).rmdir()  # empty once every job has committed or cleaned up
        if not summary.interrupted:
            _finish(summary, t0, bar)


def _finish(summary: AnnotateSummary, t0: float, bar: Any) -> AnnotateSummary:
    bar.close()
    summary.seconds = time.perf_counter() - t0
    summary.images_per_second = summary.processed / summary.seconds if summary.seconds > 0 else 0.0
    if summary.interrupted:
        how = (f"resume with:\n  {summary.resume_command}" if summary.resume_command
               else "call annotate() again with the same arguments to resume")
        log.warning("interrupted after %d image(s); the manifest %s is complete up to the last finished image; %s",
                    summary.processed, summary.manifest, how)
    return summary
