"""``fitem bench``: the synthetic occlusion benchmark, run end to end with its baselines.

Every image is a seeded render of the model (:mod:`fitem.bench.synthetic`) with an
occluder of a known class and exact masks. Each is fitted by

* ``em`` — fitem's EM fit (:func:`fitem.fit`);
* ``fixed`` — the same fitter with the mask fixed to "everything is face"
  (``FitConfig(use_em=False)``: what most fitting tools do);
* ``landmarks`` — the landmarks-only fit that initialises the EM (PnP pose and
  a robust linear shape/expression solve on the 68 points; 3D and 2D only);
* ``all face`` — the trivial segmentation that predicts no occlusion at all
  (segmentation only; it shows what visible-face F1 alone would reward);
* ``segnet`` — the distilled segmentation net, when one is given: its mask on
  its own, and fits seeded by it;

and, on the first image of each class, ``adam``: the EM's final M-step energy
(its last mask, landmark weight and priors; :class:`fitem.em.MStep`) minimised
from the same start by Adam with autograd for a fixed iteration budget, as the
optimisation-based peers do, against fitem's Levenberg-Marquardt on the very same
energy. Reported: the energy each reaches, and how long LM takes to reach the
energy Adam ends at (the speed-up).

Metrics (:mod:`fitem.bench.metrics`): segmentation counted inside the true face
region (FOCUS) and inside a fitted face ellipse (Egger et al. 2018), for both
classes (visible face, occluder); NoW-style 3D error (landmark similarity
alignment refined by point-to-surface ICP, distances of all true vertices to the
predicted surface); landmark NME by outer-eye-corner distance; speed by stage and
peak memory.

Landmarks are the true projections plus Gaussian noise (``landmarks="truth"``,
1.5 px by default: the numbers measure the fitter, not the detector) or
MediaPipe's detections on the rendered image (``landmarks="detect"``).

Example:
    >>> from fitem.bench.runner import BenchConfig, run_bench        # doctest: +SKIP
    >>> report = run_bench(BenchConfig.quick(), "bench-out")          # doctest: +SKIP
    >>> report["segmentation"]["em"][-1]["f1"]                        # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from fitem.config import FitConfig
from fitem.errors import ConfigError, FitemError
from fitem.bench.metrics import (
    all_face_scores,
    format_table,
    landmark_nme,
    point_to_surface_error,
    segmentation_scores,
    summarise,
)
from fitem.bench.synthetic import OCCLUDER_CLASSES

__all__ = ["BenchConfig", "run_bench", "adam_vs_lm", "ADAM_STEP_SCALES"]

log = logging.getLogger(__name__)

#: Per-block scale of Adam's steps (Adam's step is ≈ lr · scale per iteration): coefficients
#: are in standard deviations, light in SH units, rotation in radians, translation in mm.
ADAM_STEP_SCALES = {"shape": 1.0, "expression": 1.0, "colour": 1.0, "light": 0.3, "rotation": 0.1,
                    "translation": 10.0}

SEG_KEYS = ("accuracy", "precision", "recall", "f1", "iou", "occluder_precision", "occluder_recall",
            "occluder_f1", "occluder_iou")
LANDMARK_SOURCES = ("truth", "detect")


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one benchmark run (frozen, validated).

    Attributes:
        n: number of images, spread evenly over ``classes`` (class ``i % len(classes)``).
        seed: seed of the first image (image ``i`` uses ``seed + i``).
        classes: occluder classes (subset of :data:`OCCLUDER_CLASSES`).
        size: synthetic image side in pixels.
        model: model name or path (``"demo"``: built in).
        landmarks: ``"truth"`` (true projections + ``landmark_noise`` px Gaussian noise) or ``"detect"``.
        landmark_noise: σ of that noise in pixels.
        adam_images: how many images (the first of each class, in class order) get the Adam comparison.
        adam_iterations: Adam's iteration budget.
        adam_lr: Adam's learning rate (steps are scaled per block by :data:`ADAM_STEP_SCALES`).
        lm_iterations: LM's iteration cap on that same energy.
        icp_iterations: surface-refinement rounds of the NoW-style alignment.
        fit: the :class:`FitConfig` of the fits.
        segnet: path to a distilled segmentation net (adds the ``segnet`` rows), or None.
    """

    n: int = 100
    seed: int = 0
    classes: tuple[str, ...] = OCCLUDER_CLASSES
    size: int = 224
    model: str = "demo"
    landmarks: str = "truth"
    landmark_noise: float = 1.5
    adam_images: int = 5
    adam_iterations: int = 300
    adam_lr: float = 0.02
    lm_iterations: int = 30
    icp_iterations: int = 3
    fit: FitConfig = field(default_factory=FitConfig)
    segnet: str | None = None

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        object.__setattr__(self, "classes", classes)
        unknown = [c for c in classes if c not in OCCLUDER_CLASSES]
        if unknown or not classes:
            raise ConfigError(f"unknown occluder class(es) {unknown or '(none given)'}: choose from {OCCLUDER_CLASSES}")
        for name, lo in (("n", 1), ("size", 64), ("adam_iterations", 1), ("lm_iterations", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"BenchConfig.{name} must be an integer ≥ {lo}, got {v!r}")
        for name in ("adam_images", "icp_iterations", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"BenchConfig.{name} must be an integer ≥ 0, got {v!r}")
        if self.landmarks not in LANDMARK_SOURCES:
            raise ConfigError(f"landmarks must be one of {LANDMARK_SOURCES}, got {self.landmarks!r}")
        if not (math.isfinite(self.landmark_noise) and self.landmark_noise >= 0):
            raise ConfigError(f"landmark_noise must be a finite number ≥ 0 px, got {self.landmark_noise!r}")
        if not (math.isfinite(self.adam_lr) and self.adam_lr > 0):
            raise ConfigError(f"adam_lr must be positive, got {self.adam_lr!r}")
        if not isinstance(self.fit, FitConfig):
            raise ConfigError(f"fit must be a FitConfig, got {type(self.fit).__name__}")
        if self.segnet is not None and not Path(self.segnet).is_file():
            raise ConfigError(f"segnet {self.segnet!r} is not a file: train one with `fitem distill`")

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchConfig":
        """The README's run: 20 images (4 per class), Adam on one image per class (a few minutes on 2 cores)."""
        return cls(**{"n": 20, "adam_images": 5, "adam_iterations": 200, **overrides})

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fit"] = self.fit.as_dict()
        d["classes"] = list(self.classes)
        return d


# --------------------------------------------------------------------------- helpers
def _check_out_dir(out: Path) -> None:
    """Fail before any work when ``out`` cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to the output folder {str(out)!r} ({exc.strerror or exc}); "
                          "choose a writable --out") from exc


def _peak_rss_gb() -> float:
    """Peak resident memory of this process and its finished children (GB; Linux reports kB)."""
    unit = 1.0 if sys.platform == "darwin" else 1024.0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit
    return max(own, kids) / 1e9


def _machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def _plan(cfg: BenchConfig) -> list[tuple[int, str, int]]:
    """``(index, class, seed)`` per image; the first image of each class carries the Adam run."""
    return [(i, cfg.classes[i % len(cfg.classes)], cfg.seed + i) for i in range(cfg.n)]


def _seg_row(prefix: str, pred: np.ndarray, sample) -> dict[str, float]:
    row = {}
    for within, tag in (("region", ""), ("ellipse", "ellipse_")):
        s = segmentation_scores(pred, sample.visible_face, sample.face_region, within=within)
        row.update({f"{prefix}_{tag}{k}": s[k] for k in SEG_KEYS})
    return row


def adam_vs_lm(model, image: np.ndarray, landmarks: np.ndarray, config: FitConfig, *, iterations: int = 300,
               lr: float = 0.02, lm_iterations: int = 30) -> dict[str, Any]:
    """Adam (autograd) against fitem's LM on one fixed energy, from the same start.

    The energy is the EM's final M-step energy for this image: the EM runs first
    (as :func:`fitem.fit` does); its final mask, σ and landmark weight define
    :func:`fitem.em.m_step_problem` with every block free. Both optimisers start
    from the landmark initialisation and are timed on this process.

    Returns:
        dict with ``energy_start``, ``lm_energy``, ``adam_energy`` (final),
        ``lm_seconds``, ``adam_seconds`` (totals), ``lm_seconds_to_adam_energy``
        (first LM iterate at or below Adam's final energy; None if never),
        ``adam_energy_at_lm_time`` (Adam's energy after as long as LM ran in all),
        ``speedup`` (``adam_seconds / lm_seconds_to_adam_energy``), and both traces.
    """
    import torch

    from fitem.em import m_step_problem, run_em
    from fitem.optim import solve

    from fitem.api import prepare_fit, truncate_model
    from fitem.render.raster import make_rasterizer

    model = truncate_model(model, config)
    start = prepare_fit(image, landmarks, model, config)
    camera, params0 = start.camera, start.params
    rast = make_rasterizer(torch.as_tensor(model.triangles), (config.size, config.size), backend=config.backend)
    crop_t = torch.as_tensor(start.crop, dtype=torch.float32)
    lm_t = torch.as_tensor(start.landmarks, dtype=torch.float32)
    em = run_em(model, crop_t, lm_t, camera, rast, params0, config, valid=start.transform.valid_mask(image.shape))
    mt = model.tensors(dtype=torch.float32)
    last = max(config.rounds - 1, 1)
    sigma = em.rounds[-1].sigma if em.rounds else 0.043
    lm_index = torch.as_tensor(model.landmark_indices("ibug68"))
    ms = m_step_problem(mt, crop_t, lm_t, lm_index, camera, rast, params0, em.mask, config, round_index=last,
                        sigma=sigma, generator=torch.Generator().manual_seed(config.seed))
    x0 = ms.layout.flatten(params0).double()
    e0 = ms.problem.cost(x0)

    lm_trace: list[tuple[float, float]] = [(0.0, e0)]
    t0 = time.perf_counter()

    def record(info) -> None:
        lm_trace.append((time.perf_counter() - t0, float(info.cost)))

    solve(ms.problem, x0, method="lm", max_iterations=lm_iterations, ftol=1e-7, xtol=1e-10, gtol=0.0,
          final_jtj=False, callback=record)
    lm_seconds = time.perf_counter() - t0

    scale = torch.cat([torch.full((ms.layout.sizes[k],), ADAM_STEP_SCALES[name], dtype=torch.float64)
                       for k, name in enumerate(ms.layout.names)])
    z = torch.zeros_like(x0, requires_grad=True)
    opt = torch.optim.Adam([z], lr=lr)
    adam_trace: list[tuple[float, float]] = [(0.0, e0)]
    t0 = time.perf_counter()
    for _ in range(iterations):
        opt.zero_grad()
        energy = ms.energy(x0 + scale * z)
        energy.backward()
        opt.step()
        adam_trace.append((time.perf_counter() - t0, float(energy.detach())))
    with torch.no_grad():
        adam_final = float(ms.energy(x0 + scale * z))
    adam_seconds = time.perf_counter() - t0
    adam_trace.append((adam_seconds, adam_final))

    lm_best = min(e for _, e in lm_trace)
    reach = next((t for t, e in lm_trace if e <= adam_final), None)
    at_lm_time = min((e for t, e in adam_trace if t <= lm_seconds), default=e0)
    return {
        "energy_start": e0, "lm_energy": lm_best, "adam_energy": adam_final,
        "lm_seconds": lm_seconds, "adam_seconds": adam_seconds, "adam_iterations": iterations,
        "lm_iterations": len(lm_trace) - 1, "lm_seconds_to_adam_energy": reach,
        "adam_energy_at_lm_time": at_lm_time,
        "speedup": (adam_seconds / reach) if reach else None,
        "adam_reaches_lm_energy": bool(adam_final <= lm_best * (1 + 1e-3)),
        "lm_trace": lm_trace, "adam_trace": adam_trace,
    }


# --------------------------------------------------------------------------- one image
#: Per-process cache of what every image reuses (the model, a loaded net).
_CACHE: dict[str, Any] = {}


def _evaluate(index: int, cls: str, seed: int, cfg: BenchConfig, with_adam: bool) -> dict[str, Any]:
    """Fit one synthetic image with every method and score it. Never raises for a bad fit."""
    from fitem.api import fit, prepare_fit, truncate_model
    from fitem.bench.synthetic import make_sample
    from fitem.models import load_model

    if _CACHE.get("name") != cfg.model:
        _CACHE.clear()
        _CACHE.update(name=cfg.model, model=load_model(cfg.model))
    model = _CACHE["model"]
    idx68 = model.landmark_indices("ibug68")
    sample = make_sample(model, seed, occluder=cls, size=cfg.size)
    image = sample.image
    region = sample.face_region
    row: dict[str, Any] = {"index": index, "seed": seed, "occluder_class": cls,
                           "occluded_fraction": float((region & ~sample.visible_face).sum() / max(region.sum(), 1))}
    extras: dict[str, Any] = {}
    if cfg.landmarks == "truth":
        rng = np.random.default_rng(seed + 7919)
        lms = sample.landmarks68 + rng.normal(0.0, cfg.landmark_noise, sample.landmarks68.shape)
    else:
        from fitem.landmarks import detect_landmarks

        try:
            lms = detect_landmarks(np.round(image * 255).astype(np.uint8)).ibug68
        except FitemError as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            return {"row": row, "distances": {}, "extras": extras}
    row["input_nme"] = float(landmark_nme(lms, sample.landmarks68))

    allf = all_face_scores(sample.visible_face, region)
    row.update({f"allface_{k}": allf[k] for k in SEG_KEYS})
    ell = all_face_scores(sample.visible_face, region, within="ellipse")
    row.update({f"allface_ellipse_{k}": ell[k] for k in SEG_KEYS})

    distances: dict[str, np.ndarray] = {}

    def score_fit(label: str, res) -> None:
        row[f"{label}_status"] = res.status.value
        row.update(_seg_row(label, res.mask, sample))
        err = point_to_surface_error(res.vertices, res.triangles, sample.vertices, landmarks=idx68,
                                     iterations=cfg.icp_iterations)
        distances[label] = err.distances.astype(np.float32)
        row[f"{label}_3d_median_mm"], row[f"{label}_3d_mean_mm"] = float(err.median), float(err.mean)
        row[f"{label}_nme"] = float(landmark_nme(res.landmarks_fitted, sample.landmarks68))
        for k, v in res.timings.items():
            row[f"{label}_seconds_{k}"] = float(v)
        row[f"{label}_rounds"] = len(res.rounds)

    try:
        em = fit(image, landmarks=lms, model=model, config=cfg.fit)
        score_fit("em", em)
        extras["em_mask"] = em.mask
        fixed = fit(image, landmarks=lms, model=model, config=dataclasses.replace(cfg.fit, use_em=False))
        score_fit("fixed", fixed)
        # landmarks only: the initialisation the EM starts from
        fitted = truncate_model(model, cfg.fit)
        p0 = prepare_fit(image, lms, fitted, cfg.fit).params
        v0 = fitted.instance(p0.shape, p0.expression)[0].detach().cpu().numpy()
        err = point_to_surface_error(v0.astype(np.float64), model.triangles, sample.vertices, landmarks=idx68,
                                     iterations=cfg.icp_iterations)
        distances["landmarks"] = err.distances.astype(np.float32)
        row["landmarks_3d_median_mm"], row["landmarks_3d_mean_mm"] = float(err.median), float(err.mean)
        if cfg.segnet is not None:
            _segnet_rows(row, extras, image, lms, model, cfg, sample, score_fit)
        if with_adam:
            extras["adam"] = adam_vs_lm(model, image, lms, cfg.fit, iterations=cfg.adam_iterations, lr=cfg.adam_lr,
                                        lm_iterations=cfg.lm_iterations)
        row["status"] = "done"
    except FitemError as exc:
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    extras["image"] = image
    extras["truth"] = sample.visible_face
    extras["region"] = region
    return {"row": row, "distances": distances, "extras": extras}


def _segnet_rows(row, extras, image, lms, model, cfg: BenchConfig, sample, score_fit) -> None:
    """The distilled net alone, and fits seeded by it."""
    from fitem.api import fit
    from fitem.segnet import load_segnet, segment

    key = f"segnet:{cfg.segnet}"
    if key not in _CACHE:
        _CACHE[key] = load_segnet(cfg.segnet)
    net = _CACHE[key]
    t0 = time.perf_counter()
    seg = segment(image, net=net, landmarks=lms, model=model)
    row["segnet_seconds"] = time.perf_counter() - t0
    row.update(_seg_row("segnet", seg.mask & sample.face_region, sample))
    seeded = fit(image, landmarks=lms, model=model, config=cfg.fit, segnet=net)
    score_fit("seeded", seeded)


# --------------------------------------------------------------------------- the run
def _methods(cfg: BenchConfig) -> list[str]:
    return ["em", "fixed", "allface"] + (["segnet", "seeded"] if cfg.segnet else [])


def _summaries(rows: list[dict], cfg: BenchConfig) -> dict[str, Any]:
    ok = [r for r in rows if r.get("status") == "done"]
    if not ok:
        raise FitemError("no image of the benchmark was fitted; see the per-image errors in results.json")
    seg = {}
    for m in _methods(cfg):
        keyed = [{"occluder_class": r["occluder_class"], **{k: r[f"{m}_{k}"] for k in SEG_KEYS},
                  **{f"ellipse_{k}": r[f"{m}_ellipse_{k}"] for k in ("f1", "occluder_f1")}} for r in ok]
        seg[m] = summarise(keyed, keys=(*SEG_KEYS, "ellipse_f1", "ellipse_occluder_f1"))
    return {"segmentation": seg}


def _distance_table(results: list[dict], cfg: BenchConfig) -> list[dict[str, Any]]:
    labels = ["em", "fixed", "landmarks"] + (["seeded"] if cfg.segnet else [])
    out = []
    for cls in (*cfg.classes, "all"):
        group = [r for r in results if r["row"].get("status") == "done" and (cls == "all" or r["row"]["occluder_class"] == cls)]
        if not group:
            continue
        entry: dict[str, Any] = {"occluder_class": cls, "n_images": len(group)}
        for lab in labels:
            d = np.concatenate([r["distances"][lab] for r in group if lab in r["distances"]])
            entry[f"{lab}_median_mm"], entry[f"{lab}_mean_mm"], entry[f"{lab}_std_mm"] = (
                float(np.median(d)), float(d.mean()), float(d.std()))
        for lab in ("em", "fixed"):
            entry[f"{lab}_nme"] = float(np.mean([r["row"][f"{lab}_nme"] for r in group]))
        entry["input_nme"] = float(np.mean([r["row"]["input_nme"] for r in group]))
        out.append(entry)
    return out


def _speed(rows: list[dict]) -> dict[str, float]:
    ok = [r for r in rows if r.get("status") == "done"]
    keys = sorted({k for r in ok for k in r if k.startswith("em_seconds_")})
    return {k.removeprefix("em_seconds_"): float(np.median([r[k] for r in ok if k in r])) for k in keys}


def _adam_summary(adam: list[dict]) -> dict[str, Any]:
    if not adam:
        return {}
    speed = [a["speedup"] for a in adam if a["speedup"]]
    return {
        "n_images": len(adam),
        "median_speedup": float(np.median(speed)) if speed else None,
        "lm_reached_adam_energy": sum(a["lm_seconds_to_adam_energy"] is not None for a in adam),
        "adam_reached_lm_energy": sum(a["adam_reaches_lm_energy"] for a in adam),
        "median_adam_seconds": float(np.median([a["adam_seconds"] for a in adam])),
        "median_lm_seconds_to_adam_energy": float(np.median([a["lm_seconds_to_adam_energy"] for a in adam
                                                             if a["lm_seconds_to_adam_energy"] is not None]))
        if any(a["lm_seconds_to_adam_energy"] is not None for a in adam) else None,
        "median_energy_ratio_adam_over_lm": float(np.median([a["adam_energy"] / a["lm_energy"] for a in adam])),
    }


def _markdown(report: dict[str, Any], cfg: BenchConfig) -> str:
    seg = report["segmentation"]
    lines = [f"# fitem bench: {cfg.n} synthetic images ({cfg.size}², model `{cfg.model}`, landmarks: {cfg.landmarks}"
             f"{f' + {cfg.landmark_noise} px noise' if cfg.landmarks == 'truth' else ''}, seed {cfg.seed})", "",
             f"Machine: {report['machine']['processor']}, {report['machine']['cpu_count']} CPUs, "
             f"torch {report['machine']['torch']} ({report['machine']['torch_threads']} threads), "
             f"GPU: {report['machine']['cuda'] or 'none'}. Wall time {report['wall_seconds']:.0f} s; load average "
             f"{report['load_average_start']} at the start, {report['machine']['load_average_1_5_15min']} at the "
             "end (other work on the machine inflates the times).", "",
             "## Segmentation (inside the true face region; positive = visible face)", ""]
    cols = ["n_images", "f1", "occluder_f1", "iou", "accuracy", "ellipse_f1", "ellipse_occluder_f1"]
    names = {"em": "fitem EM", "fixed": "fixed mask (all face, fitted)", "allface": "trivial: all face",
             "segnet": "distilled net alone", "seeded": "EM seeded by the net"}
    rows = []
    for m, table in seg.items():
        for r in table:
            rows.append({**r, "occluder_class": f"{r['occluder_class']} · {names[m]}"})
    rows.sort(key=lambda r: (list(OCCLUDER_CLASSES) + ["all"]).index(r["occluder_class"].split(" · ")[0]))
    lines.append(format_table(rows, cols))
    lines += ["", "## 3D error (NoW-style: distances of all true vertices to the aligned prediction, mm) "
              "and landmark NME", ""]
    dcols = [k for k in report["reconstruction"][0] if k not in ("occluder_class",)]
    lines.append(format_table(report["reconstruction"], dcols, digits=3))
    a = report.get("adam_summary") or {}
    if a:
        lines += ["", "## Adam (autograd) vs fitem's LM on the same energy", "",
                  f"{a['n_images']} images, Adam {cfg.adam_iterations} iterations (lr {cfg.adam_lr}, per-block step "
                  f"scales {ADAM_STEP_SCALES}); LM at most {cfg.lm_iterations} iterations.", "",
                  "| image | class | start energy | LM energy | Adam energy | LM s | Adam s | LM s to Adam's energy "
                  "| speed-up |", "|---|---|---|---|---|---|---|---|---|"]
        for r in report["adam"]:
            reach = "never" if r["lm_seconds_to_adam_energy"] is None else f"{r['lm_seconds_to_adam_energy']:.2f}"
            sp = "-" if r["speedup"] is None else f"{r['speedup']:.1f}×"
            lines.append(f"| {r['index']} | {r['occluder_class']} | {r['energy_start']:.1f} | {r['lm_energy']:.1f} | "
                         f"{r['adam_energy']:.1f} | {r['lm_seconds']:.2f} | {r['adam_seconds']:.2f} | {reach} | {sp} |")
        med = "-" if a["median_speedup"] is None else f"{a['median_speedup']:.1f}×"
        lines += ["", f"Median speed-up of LM over Adam to Adam's final energy: **{med}**; Adam reached LM's final "
                      f"energy on {a['adam_reached_lm_energy']} of {a['n_images']} images."]
    sp = report["speed"]
    lines += ["", "## Speed of the EM fit (median seconds per image, by stage)", "",
              "| " + " | ".join(sp) + " | peak RSS |", "|" + "---|" * (len(sp) + 1),
              "| " + " | ".join(f"{v:.3f}" for v in sp.values()) + f" | {report['peak_rss_gb']:.2f} GB |"]
    failed = [r for r in report["rows"] if r.get("status") != "done"]
    if failed:
        lines += ["", f"{len(failed)} image(s) failed: " + "; ".join(f"#{r['index']} {r.get('error')}" for r in failed)]
    return "\n".join(lines) + "\n"


def _figure(report: dict[str, Any], examples: list[dict], cfg: BenchConfig, path: Path) -> None:
    """Per-class F1 bars (visible face and occluder, each method) over a grid of examples."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from fitem.viz import mask_overlay

    seg = report["segmentation"]
    methods = list(seg)
    classes = [r["occluder_class"] for r in seg["em"]]
    ncol = max(len(examples), 1)
    fig = plt.figure(figsize=(max(8.0, 2.2 * ncol), 8.5))
    gs = fig.add_gridspec(4, ncol, height_ratios=[1.4, 1.4, 1.0, 1.0])
    for j, key in enumerate(("f1", "occluder_f1")):
        ax = fig.add_subplot(gs[j, :])
        width = 0.8 / len(methods)
        x = np.arange(len(classes))
        for k, m in enumerate(methods):
            vals = [r[key] for r in seg[m]]
            ax.bar(x + (k - (len(methods) - 1) / 2) * width, np.nan_to_num(vals), width, label=m)
        ax.set_xticks(x, classes)
        ax.set_ylim(0, 1)
        ax.set_ylabel("visible-face F1" if key == "f1" else "occluder F1")
        if j == 0:
            ax.legend(ncol=len(methods), fontsize=8, loc="lower left")
    for i, ex in enumerate(examples):
        ax = fig.add_subplot(gs[2, i])
        ax.imshow(mask_overlay(ex["image"], ex["truth"], ex["region"] & ~ex["truth"]))
        ax.set_title(f"{ex['cls']}: truth", fontsize=8)
        ax.axis("off")
        ax = fig.add_subplot(gs[3, i])
        ax.imshow(mask_overlay(ex["image"], ex["em_mask"], ex["region"] & ~ex["em_mask"]))
        ax.set_title("fitem EM", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"fitem bench: {cfg.n} synthetic images, model {cfg.model} (green visible face, red occlusion)",
                 fontsize=10)
    fig.tight_layout()
    from io import BytesIO

    from fitem._files import atomic_write_bytes

    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_bench(config: BenchConfig | None, out_dir: str | os.PathLike, *, n_jobs: int = 1,
              progress: bool = True) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``results.md`` and ``figure.png`` into ``out_dir``.

    Args:
        config: :class:`BenchConfig` (default: the full run, ``BenchConfig()``).
        out_dir: output folder (created; must be writable — checked before any work).
        n_jobs: images fitted in parallel (joblib, loky processes; each sets torch to 1 thread).
        progress: a tqdm bar over images.

    Returns:
        The report (what ``results.json`` holds, without the per-iteration traces' bulk).

    Raises:
        ConfigError: bad settings or an unwritable ``out_dir`` (before any work).
    """
    cfg = config or BenchConfig()
    if not isinstance(cfg, BenchConfig):
        raise ConfigError(f"config must be a BenchConfig, got {type(cfg).__name__}")
    if not isinstance(n_jobs, int) or n_jobs < 1:
        raise ConfigError(f"n_jobs must be a positive integer, got {n_jobs!r}")
    out = Path(out_dir)
    _check_out_dir(out)
    from fitem.models import load_model

    load_model(cfg.model)  # a bad model fails here, before any fitting
    plan = _plan(cfg)
    first_of_class: dict[str, int] = {}
    for i, c, _ in plan:
        first_of_class.setdefault(c, i)
    adam_idx = set(sorted(first_of_class.values())[: cfg.adam_images])
    load_start = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    from tqdm import tqdm

    if n_jobs == 1:
        it: Iterable = (_evaluate(i, c, s, cfg, i in adam_idx) for i, c, s in plan)
    else:
        from joblib import Parallel, delayed

        it = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_evaluate_worker)(i, c, s, cfg, i in adam_idx) for i, c, s in plan)
    results = []
    for res in tqdm(it, total=len(plan), desc="fitem bench", unit="image", disable=not progress):
        results.append(res)
        log.info("image %d (%s): %s", res["row"]["index"], res["row"]["occluder_class"], res["row"].get("status"))
    wall = time.perf_counter() - t0
    rows = [r["row"] for r in results]
    adam = [{"index": r["row"]["index"], "occluder_class": r["row"]["occluder_class"], **r["extras"]["adam"]}
            for r in results if "adam" in r["extras"]]
    report: dict[str, Any] = {
        "benchmark": "fitem-synthetic-occlusion", "format": 1, "config": cfg.as_dict(), "machine": _machine(),
        "n_jobs": n_jobs, "wall_seconds": wall, "load_average_start": load_start, "peak_rss_gb": _peak_rss_gb(),
        **_summaries(rows, cfg),
        "reconstruction": _distance_table(results, cfg),
        "speed": _speed(rows),
        "adam_summary": _adam_summary(adam),
        "adam": [{k: v for k, v in a.items() if not k.endswith("_trace")} for a in adam],
        "adam_traces": [{"index": a["index"], "lm": a["lm_trace"], "adam": a["adam_trace"]} for a in adam],
        "rows": rows,
    }
    from fitem._files import atomic_write_bytes

    atomic_write_bytes(out / "results.json", json.dumps(report, indent=1, default=float).encode())
    atomic_write_bytes(out / "results.md", _markdown(report, cfg).encode())
    examples, seen = [], set()
    for r in results:
        c = r["row"]["occluder_class"]
        if r["row"].get("status") == "done" and c not in seen:
            seen.add(c)
            examples.append({"cls": c, **{k: r["extras"][k] for k in ("image", "truth", "region", "em_mask")}})
    _figure(report, examples, cfg, out / "figure.png")
    log.info("fitem bench: %d images in %.0f s → %s", len(rows), wall, out)
    return report


def _evaluate_worker(index: int, cls: str, seed: int, cfg: BenchConfig, with_adam: bool) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    return _evaluate(index, cls, seed, cfg, with_adam)
