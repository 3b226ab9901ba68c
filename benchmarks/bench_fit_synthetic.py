"""Quality of ``fitem.fit`` on the synthetic occlusion benchmark (demo model).

For each occluder class, fits seeded synthetic renders of the demo model
(``fitem.bench.synthetic``) twice — with the EM, and with the mask fixed to
"all face" (``FitConfig(use_em=False)``) — and reports, per class:

* segmentation inside the true face region (FOCUS protocol): visible-face F1 and
  occluder F1 (positive = occluded pixel), plus the trivial "all face" row;
* 3D vertex error (mm) after a similarity alignment (same topology);
* photometric RMSE over the true visible face.

Landmarks are the ground-truth projections plus Gaussian noise (``--landmark-noise`` px)
so that the numbers measure the fitter, not the detector.

Usage: ``python benchmarks/bench_fit_synthetic.py [--per-class 6] [--jobs 2]``
Prints a table and writes ``benchmarks/results/bench_fit_synthetic.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

CLASSES = ("none", "glasses", "scarf", "hand", "object")


def _one(seed: int, occluder: str, noise: float, config_kwargs: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from fitem.api import fit
    from fitem.bench.metrics import photometric_rmse, segmentation_scores, vertex_error_same_topology
    from fitem.bench.synthetic import make_sample
    from fitem.config import FitConfig
    from fitem.models import load_model

    model = load_model("demo")
    sample = make_sample(model, seed, occluder=occluder)
    rng = np.random.default_rng(seed + 12345)
    lms = sample.landmarks68 + rng.normal(0, noise, sample.landmarks68.shape)
    row: dict = {"seed": seed, "occluder_class": occluder}
    for label, use_em in (("em", True), ("fixed", False)):
        cfg = FitConfig(backend="torch", use_em=use_em, **config_kwargs)
        t0 = time.perf_counter()
        res = fit(sample.image, landmarks=lms, model=model, config=cfg)
        row[f"{label}_seconds"] = time.perf_counter() - t0
        row[f"{label}_status"] = res.status.value
        seg = segmentation_scores(res.mask, sample.visible_face, sample.face_region)
        ell = segmentation_scores(res.mask, sample.visible_face, sample.face_region, within="ellipse")
        row.update({f"{label}_{k}": v for k, v in seg.items() if k in ("f1", "occluder_f1", "iou", "accuracy")})
        row.update({f"{label}_ellipse_{k}": v for k, v in ell.items() if k in ("f1", "occluder_f1")})
        err = vertex_error_same_topology(res.vertices, sample.vertices)
        row[f"{label}_vertex_median_mm"] = float(err.median)
        row[f"{label}_vertex_mean_mm"] = float(err.mean)
        row[f"{label}_rmse"] = photometric_rmse(res.render, sample.image, sample.visible_face & res.face_region)
    allf = segmentation_scores(sample.face_region, sample.visible_face, sample.face_region)
    row["allface_f1"], row["allface_occluder_f1"] = allf["f1"], allf["occluder_f1"]
    row["occluded_fraction"] = float((sample.face_region & ~sample.visible_face).sum() / sample.face_region.sum())
    return row


def _mean(rows, key):
    v = np.array([r[key] for r in rows], float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--landmark-noise", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--classes", default=",".join(CLASSES), help="comma-separated occluder classes")
    ap.add_argument("--config", default="", help="FitConfig overrides, e.g. 'rounds=4,smoothness=2.0'")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_fit_synthetic.json"))
    args = ap.parse_args()
    from joblib import Parallel, delayed

    config_kwargs = eval(f"dict({args.config})")  # noqa: S307 - a developer's benchmark flag
    classes = tuple(c for c in args.classes.split(",") if c)
    jobs = [(args.seed + 100 * CLASSES.index(c) + i, c) for c in classes for i in range(args.per_class)]
    t0 = time.perf_counter()
    rows = Parallel(n_jobs=args.jobs)(delayed(_one)(s, c, args.landmark_noise, config_kwargs) for s, c in jobs)
    wall = time.perf_counter() - t0
    table = []
    for c in (*classes, "all"):
        rs = [r for r in rows if c == "all" or r["occluder_class"] == c]
        table.append({
            "class": c, "n": len(rs),
            "occluded_fraction": _mean(rs, "occluded_fraction"),
            "em_f1": _mean(rs, "em_f1"), "em_occluder_f1": _mean(rs, "em_occluder_f1"),
            "em_ellipse_f1": _mean(rs, "em_ellipse_f1"), "em_ellipse_occluder_f1": _mean(rs, "em_ellipse_occluder_f1"),
            "fixed_f1": _mean(rs, "fixed_f1"), "fixed_occluder_f1": _mean(rs, "fixed_occluder_f1"),
            "allface_f1": _mean(rs, "allface_f1"), "allface_occluder_f1": _mean(rs, "allface_occluder_f1"),
            "em_vertex_median_mm": _mean(rs, "em_vertex_median_mm"),
            "fixed_vertex_median_mm": _mean(rs, "fixed_vertex_median_mm"),
            "em_rmse": _mean(rs, "em_rmse"), "fixed_rmse": _mean(rs, "fixed_rmse"),
            "em_seconds": float(np.median([r["em_seconds"] for r in rs])),
        })
    hdr = ("class", "n", "occl%", "EM F1", "EM occF1", "allface F1", "allface occF1", "EM vtx mm",
           "fixed vtx mm", "EM rmse", "fixed rmse", "s/img")
    print(" | ".join(hdr))
    for t in table:
        print(" | ".join([t["class"], str(t["n"]), f"{100 * t['occluded_fraction']:.0f}", f"{t['em_f1']:.3f}",
                          f"{t['em_occluder_f1']:.3f}", f"{t['allface_f1']:.3f}", f"{t['allface_occluder_f1']:.3f}",
                          f"{t['em_vertex_median_mm']:.2f}", f"{t['fixed_vertex_median_mm']:.2f}",
                          f"{t['em_rmse']:.4f}", f"{t['fixed_rmse']:.4f}", f"{t['em_seconds']:.2f}"]))
    out = {
        "benchmark": "fit_synthetic", "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                                  "processor": platform.processor()},
        "image_size": 224, "model": "demo", "landmark_noise_px": args.landmark_noise, "config": config_kwargs,
        "wall_seconds": wall, "jobs": args.jobs, "table": table, "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
