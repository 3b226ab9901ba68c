"""Benchmark the synthetic occlusion generator and the 3D metric on the CPU.

For each occluder class, ``--n`` samples (seeds ``--seed`` ... ``--seed + n - 1``)
at ``--size`` px with the demo model:

- the occluder's coverage of the face region (fraction of region pixels in the
  occluder mask): min, 10th percentile, median, 90th percentile, max, mean,
  and how many samples fell outside the class's designed range;
- how many shape draws the coverage rejection needed (mean, max);
- the time per sample (median wall time and this thread's CPU time).

And the NoW-style point-to-surface error of one demo-model instance against
another (7,076 vertices; landmark alignment + ICP refinement): median time.

Usage:
    python benchmarks/bench_synthetic.py [--n 100] [--size 224] [--seed 1000]
                                         [--out benchmarks/results/bench_synthetic.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fitem.bench.metrics import point_to_surface_error
from fitem.bench.synthetic import OCCLUDER_CLASSES, SyntheticConfig, make_sample
from fitem.models import load_model
from fitem.render.camera import Camera
from fitem.render.raster import make_rasterizer


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(n: int, size: int, seed: int) -> dict:
    model = load_model("demo")
    camera = Camera.default(size)
    rast = make_rasterizer(model.tensors().triangles, camera.image_size, backend="torch")
    cfg = SyntheticConfig()
    make_sample(model, seed, occluder="hand", camera=camera, rasterizer=rast)  # warm-up (loads pictures)
    classes = {}
    for cls in OCCLUDER_CLASSES:
        cov, tries, wall, cpu = [], [], [], []
        for k in range(n):
            t0, c0 = time.perf_counter(), time.thread_time()
            s = make_sample(model, seed + k, occluder=cls, camera=camera, rasterizer=rast)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            cov.append(s.occluder_fraction)
            tries.append(int(s.info["tries"]))
        c = np.array(cov)
        row = {
            "coverage": {"min": float(c.min()), "p10": float(np.percentile(c, 10)), "median": float(np.median(c)),
                         "p90": float(np.percentile(c, 90)), "max": float(c.max()), "mean": float(c.mean())},
            "tries_mean": float(np.mean(tries)), "tries_max": int(max(tries)),
            "seconds_per_sample_wall_median": statistics.median(wall),
            "seconds_per_sample_cpu_median": statistics.median(cpu),
        }
        if cls != "none":
            lo, hi = cfg.coverage[cls]
            row["designed_range"] = [lo, hi]
            row["outside_range"] = int(((c < lo) | (c > hi)).sum())
        classes[cls] = row
        print(f"{cls:8s} coverage min {c.min():.3f} p10 {np.percentile(c, 10):.3f} median {np.median(c):.3f} "
              f"p90 {np.percentile(c, 90):.3f} max {c.max():.3f} | tries mean {np.mean(tries):.2f} max "
              f"{max(tries)} | {statistics.median(wall) * 1e3:.0f} ms wall, {statistics.median(cpu) * 1e3:.0f} ms "
              f"CPU per sample", flush=True)
    g = torch.Generator().manual_seed(0)
    v1, _ = model.instance(torch.randn(model.n_shape, generator=g))
    v2, _ = model.instance(torch.randn(model.n_shape, generator=g))
    idx = model.landmark_indices("ibug68")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        err = point_to_surface_error(v1.numpy(), model.triangles, v2.numpy(), landmarks=idx)
        times.append(time.perf_counter() - t0)
    print(f"point_to_surface_error, {model.n_vertices} vertices: {statistics.median(times):.2f} s "
          f"(median error {err.median:.2f} mm between two random demo faces)")
    return {
        "machine": {"cpu": _cpu_model(), "cores": torch.get_num_threads(), "gpu": None},
        "model": {"name": model.name, "vertices": model.n_vertices, "checksum": model.checksum},
        "size": size, "n_per_class": n, "first_seed": seed, "classes": classes,
        "point_to_surface_seconds_median": statistics.median(times),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_synthetic.json"))
    args = parser.parse_args(argv)
    result = run(args.n, args.size, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
