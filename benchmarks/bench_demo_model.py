"""Benchmark building, saving and loading the built-in demo model on the CPU.

Measures, over ``--repeats`` builds (each in this process, after one warm-up
that also imports everything): the median wall and CPU time of
:func:`fitem.models.demo.build_demo_model` (CPU time is the better figure on a
busy machine: the build runs on one BLAS thread), the peak memory its allocations
reach (``tracemalloc``, NumPy arrays included) and the process's peak RSS;
then the size of the cached ``.npz`` and the median time to load it
(:func:`fitem.models.io.load_model_file`, checksum verified), and the
variance each block keeps. Prints a summary and writes JSON.

Usage:
    python benchmarks/bench_demo_model.py [--repeats 5] [--out benchmarks/results/bench_demo_model.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from fitem.models.demo import DEMO_BUILD_VERSION, build_demo_model
from fitem.models.io import load_model_file, save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "bench_demo_model.json")
    args = parser.parse_args()

    model = build_demo_model()  # warm-up: imports, page cache
    times, cpu, peaks = [], [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        model = build_demo_model()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    for _ in range(2):  # tracemalloc slows allocation down: measured in separate builds
        tracemalloc.start()
        build_demo_model()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.npz"
        t0 = time.perf_counter()
        save_model(model, path)
        save_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        loads = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            load_model_file(path)
            loads.append(time.perf_counter() - t0)
    result = {
        "benchmark": "demo_model",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]},
        "build_version": DEMO_BUILD_VERSION,
        "model": {"vertices": model.n_vertices, "triangles": model.n_triangles, "shape": model.n_shape,
                  "expression": model.n_expression, "colour": model.n_colour},
        "repeats": args.repeats,
        "build_s_median": statistics.median(times),
        "build_s_all": times,
        "build_cpu_s_median": statistics.median(cpu),
        "build_peak_alloc_mb_median": statistics.median(peaks) / 1e6,
        "process_peak_rss_mb": rss_mb,
        "npz_size_mb": size_mb,
        "save_s": save_s,
        "load_s_median": statistics.median(loads),
        "variance_kept": {b: float(model.metadata[f"{b}.variance_kept"]) for b in ("shape", "expression", "colour")},
        "feature_ranks": {b: model.metadata[f"{b}.feature_ranks"] for b in ("shape", "expression", "colour")},
    }
    print(f"demo model {model.n_vertices} vertices, {model.n_shape}/{model.n_expression}/{model.n_colour} "
          f"components, {os.cpu_count()} CPUs (1-min load {result['machine']['load_average_1min']:.1f})")
    print(f"  build: median {result['build_s_median']:.2f} s over {args.repeats} "
          f"(min {min(times):.2f} s; CPU time median {result['build_cpu_s_median']:.2f} s), "
          f"peak allocations {result['build_peak_alloc_mb_median']:.0f} MB, process peak RSS {rss_mb:.0f} MB")
    print(f"  cache file {size_mb:.1f} MB, save {save_s:.2f} s, load median {result['load_s_median']:.3f} s")
    print("  variance kept: " + ", ".join(f"{b} {v:.3f}" for b, v in result["variance_kept"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
