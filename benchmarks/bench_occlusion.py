"""Benchmark the E-step pieces (fitem.occlusion) and the least-squares solver's overhead on the CPU.

Occlusion, on a synthetic 224x224 (and 512x512) face-like image with an elliptic
region (~43 % of the image), a dark rectangular occluder and Gaussian noise:
``face_loglik``, ``nonface_loglik`` (16^3 bins), ``segment`` (4- and
8-connectivity, contrast-sensitive), ``posterior`` and
``conservative_initial_mask``. Solver: one LM iteration (``max_iterations=1``) of a linear problem given as a
NormalEquationsBlock with P = 300 and 531 parameters (a face fit's free blocks;
531 = BFM 2017's 199 + 100 + 199 + 27 light + 6 pose), reporting the time
outside the blocks (linear solves, bookkeeping): the solver's own overhead.

Prints medians and writes JSON.

Usage:
    python benchmarks/bench_occlusion.py [--repeats 30] [--threads 1] [--out benchmarks/results/bench_occlusion.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fitem import occlusion as oc
from fitem.optim import GaussianPrior, LeastSquaresProblem, NormalEquationsBlock, solve


def synthetic(size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    c = size / 2
    region = ((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.33 * size)) ** 2 <= 1
    render = np.zeros((size, size, 3))
    render[region] = np.array([0.75, 0.55, 0.45]) * (0.75 + 0.25 * xx[region] / size)[:, None]
    image = np.where(region[..., None], render, rng.uniform(0.2, 0.7, (size, size, 3)))
    image = image + rng.normal(0, 0.04, image.shape)
    occ = np.zeros((size, size), bool)
    occ[int(0.55 * size):int(0.75 * size), int(0.25 * size):int(0.75 * size)] = True
    image[occ] = [0.1, 0.1, 0.12]
    return np.clip(image, 0, 1), render, region, occ


def timeit(fn, repeats: int) -> dict:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts), "repeats": repeats}


def bench_occlusion(size: int, repeats: int) -> dict:
    image, render, region, occ = synthetic(size)
    residual = image - render
    sigma = oc.robust_sigma(residual, region)
    face_ll, nonface_ll = oc.face_loglik(residual, sigma), oc.nonface_loglik(image)
    out = {
        "size": size,
        "region_pixels": int(region.sum()),
        "face_loglik": timeit(lambda: oc.face_loglik(residual, sigma), repeats),
        "nonface_loglik": timeit(lambda: oc.nonface_loglik(image), repeats),
        "robust_sigma": timeit(lambda: oc.robust_sigma(residual, region), repeats),
        "posterior": timeit(lambda: oc.posterior(face_ll, nonface_ll), repeats),
        "segment_4": timeit(lambda: oc.segment(face_ll, nonface_ll, region, smoothness=1.0), repeats),
        "segment_8": timeit(lambda: oc.segment(face_ll, nonface_ll, region, smoothness=1.0, connectivity=8), repeats),
        "segment_4_contrast": timeit(
            lambda: oc.segment(face_ll, nonface_ll, region, smoothness=1.0, image=image), repeats),
        "conservative_initial_mask": timeit(lambda: oc.conservative_initial_mask(image, render, region),
                                            max(3, repeats // 3)),
    }
    mask = oc.segment(face_ll, nonface_ll, region, smoothness=1.0)
    gt = region & ~occ
    out["segment_iou"] = float((mask & gt).sum() / (mask | gt).sum())
    return out


def bench_solver(p: int, repeats: int) -> dict:
    """One LM iteration on a P-parameter problem given as normal equations: the solver's own overhead."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4 * p, p, generator=g, dtype=torch.float64)
    b = torch.randn(4 * p, generator=g, dtype=torch.float64)
    ata = a.T @ a

    def lin(x):
        r = a @ x - b
        return 0.5 * r @ r, ata, a.T @ r

    problem = LeastSquaresProblem([NormalEquationsBlock(lin, lambda x: 0.5 * ((a @ x - b) ** 2).sum()),
                                   GaussianPrior(0.0, 1.0)])
    x0 = torch.zeros(p, dtype=torch.float64)
    runs = []
    for _ in range(repeats + 1):
        res = solve(problem, x0, max_iterations=1, final_jtj=False)
        runs.append(res.timings)
    runs = runs[1:]
    return {
        "parameters": p,
        "one_iteration_total_ms": 1e3 * statistics.median(t.total for t in runs),
        "one_iteration_outside_blocks_ms": 1e3 * statistics.median(t.total - t.evaluate for t in runs),
        "linear_solve_ms": 1e3 * statistics.median(t.linear_solve for t in runs),
        "repeats": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/bench_occlusion.json")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 by default: on a shared 2-core machine more threads mostly spin)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "occlusion": [bench_occlusion(s, args.repeats) for s in (224, 512)],
        "solver": [bench_solver(p, args.repeats) for p in (300, 531)],
    }
    for r in results["occlusion"]:
        print(f"occlusion {r['size']}x{r['size']} ({r['region_pixels']} region pixels), IoU {r['segment_iou']:.3f}")
        for k, v in r.items():
            if isinstance(v, dict):
                print(f"  {k:28s} median {v['median_ms']:8.2f} ms  (min {v['min_ms']:.2f}, n={v['repeats']})")
    for s in results["solver"]:
        print(f"solver P={s['parameters']}: one LM iteration {s['one_iteration_total_ms']:.2f} ms median, "
              f"{s['one_iteration_outside_blocks_ms']:.2f} ms outside the blocks, "
              f"linear solve {s['linear_solve_ms']:.2f} ms")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
