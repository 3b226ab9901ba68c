"""Throughput of ``fitem annotate``: images per second for 1 and 2 loky workers, scaling, memory.

Data: ``--n`` synthetic renders of the demo model with occluders (``fitem.bench.synthetic``,
224², the class cycle none / glasses / scarf / hand / object), saved as PNGs to a temporary
folder; landmarks are DETECTED (MediaPipe), as in a real annotation run. Default
``FitConfig`` (4 EM rounds at 224²; the committed results used the 3 of their time), default
outputs (mask / occlusion / render PNGs + params.json; no mesh, no arrays).

For each worker count the workers are started and warmed up first (a run over ``2·jobs``
other images: process start, imports, model load, detector init), then the timed run
annotates the ``n`` images; joblib reuses the warm loky workers. Reported per worker count:
steady-state images/s, median seconds per image (manifest ``seconds``), the cold start, and
the peak resident memory of every process that fitted (the workers for ``jobs > 1``; the
main process for ``jobs = 1``, where joblib runs in-process with torch's default thread
count unless ``--torch-threads``), sampled every 0.1 s with
psutil (or ``ru_maxrss`` without it). Scaling efficiency = ips(jobs) / (jobs · ips(1)).

``--model bfm2009-sized`` fits (and renders) a random model of ``bench_fit.py``'s sizes,
``--landmarks truth`` gives every image its true landmarks as a ``.pts`` sidecar (no
detector: the GPU machines have no MediaPipe), ``--device cuda --backend nvdiffrast`` fits on a GPU.

Usage: ``python benchmarks/bench_annotate.py [--n 16] [--jobs 1 2] [--rounds R] [--size S] [--model M]
[--landmarks detect|truth] [--device D] [--backend B]``;
prints a table and writes ``benchmarks/results/bench_annotate.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import cv2


def make_images(folder: Path, n: int, seed: int, size: int, model=None, truth: bool = False) -> None:
    """``n`` synthetic renders of ``model`` (default demo) as PNGs; ``truth``: with ``<stem>.pts`` sidecars."""
    from fitem.bench.synthetic import make_dataset
    from fitem.image import to_uint8
    from fitem.landmarks.pts import write_pts
    from fitem.models import load_model

    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(make_dataset(model or load_model("demo"), n, seed=seed, size=size)):
        stem = folder / f"{i:05d}_{s.occluder_class}"
        cv2.imwrite(str(stem) + ".png", to_uint8(s.image)[..., ::-1])
        if truth:
            write_pts(str(stem) + ".pts", s.landmarks68)


class PeakRSS:
    """Samples the resident memory of this process and its descendants every ``interval`` seconds."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        try:
            import psutil

            self._me = psutil.Process()
        except ImportError:
            self._me = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        if self._me is None:
            return
        import psutil

        procs = [self._me]
        try:
            procs += self._me.children(recursive=True)
        except psutil.Error:
            pass
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), rss)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def run(jobs: int, images: Path, warm: Path, work: Path, config, model: str = "demo") -> dict:
    from fitem.annotation import annotate, read_manifest

    t0 = time.perf_counter()
    annotate(warm, work / f"warm{jobs}", config=config, model=model, n_jobs=jobs, progress=False)
    cold = time.perf_counter() - t0
    out = work / f"out{jobs}"
    with PeakRSS() as mem:
        s = annotate(images, out, config=config, model=model, n_jobs=jobs, progress=False)
    recs = read_manifest(out)
    workers = {r["worker"].split(":")[1] for r in recs.values()}
    if mem.peaks:
        peaks = {pid: rss for pid, rss in mem.peaks.items() if str(pid) in workers}
        per_worker = [round(v / 2**20, 1) for v in peaks.values()]
    else:  # no psutil: the largest child (or this process) by ru_maxrss (KiB on Linux)
        who = resource.RUSAGE_SELF if jobs == 1 else resource.RUSAGE_CHILDREN
        per_worker = [round(resource.getrusage(who).ru_maxrss / 1024, 1)]
    secs = [r["seconds"] for r in recs.values() if r["status"] == "done"]
    return {
        "jobs": jobs,
        "images": s.total,
        "done": s.done,
        "failed": s.failed,
        "errors": s.errors,
        "seconds": round(s.seconds, 2),
        "images_per_second": round(s.images_per_second, 3),
        "median_seconds_per_image": round(statistics.median(secs), 3) if secs else None,
        "cold_start_seconds": round(cold, 2),
        "peak_rss_mib_per_worker": sorted(per_worker),
        "worker_processes": len(workers),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="images in the timed run (default 16)")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    ap.add_argument("--size", type=int, default=None, help="FitConfig.size (default: FitConfig's)")
    ap.add_argument("--rounds", type=int, default=None, help="FitConfig.rounds (default: FitConfig's)")
    ap.add_argument("--image-size", type=int, default=224, help="side of the synthetic images (default 224)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="demo",
                    help="demo, or a random model of bench_fit.py's sizes (bfm2009-sized, bfm2017-sized)")
    ap.add_argument("--landmarks", choices=["detect", "truth"], default="detect",
                    help="detect (MediaPipe, default) or the true 68 landmarks as .pts sidecars")
    ap.add_argument("--device", default=None, help="FitConfig.device (cpu, cuda; default: FitConfig's)")
    ap.add_argument("--backend", default=None, help="FitConfig.backend (torch, nvdiffrast, auto)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch threads of THIS process, where jobs=1 fits run (default: torch's, = cores); "
                         "loky workers get cores // jobs from joblib")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_annotate.json"))
    args = ap.parse_args()

    import joblib
    import torch

    import fitem
    from fitem.config import FitConfig

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    changes = {k: v for k, v in (("size", args.size), ("rounds", args.rounds), ("device", args.device),
                                 ("backend", args.backend)) if v is not None}
    config = FitConfig(**changes)
    with tempfile.TemporaryDirectory(prefix="bench_annotate_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        model, model_arg = None, "demo"
        if args.model != "demo":
            from bench_fit import sized_model  # noqa: PLC0415  (benchmarks/ is the script's folder)
            from fitem.models.io import save_model

            model = sized_model(args.model)
            model_arg = str(work / "model.npz")
            save_model(model, model_arg)
        truth = args.landmarks == "truth"
        make_images(work / "images", args.n, args.seed, args.image_size, model, truth)
        make_images(work / "warm", 2 * max(args.jobs), args.seed + 1000, args.image_size, model, truth)
        print(f"made {args.n} + {2 * max(args.jobs)} synthetic images in {time.perf_counter() - t0:.1f} s")
        rows = [run(j, work / "images", work / "warm", work, config, model_arg) for j in args.jobs]
    base = next((r["images_per_second"] for r in rows if r["jobs"] == 1), None)
    for r in rows:
        r["scaling_efficiency"] = round(r["images_per_second"] / (r["jobs"] * base), 3) if base else None

    print(f"\n{'jobs':>4} {'done':>5} {'failed':>6} {'images/s':>9} {'median s/img':>12} {'efficiency':>10} "
          f"{'cold start s':>12}  peak RSS per worker (MiB)")
    for r in rows:
        print(f"{r['jobs']:>4} {r['done']:>5} {r['failed']:>6} {r['images_per_second']:>9.3f} "
              f"{r['median_seconds_per_image'] or float('nan'):>12.3f} {r['scaling_efficiency'] or float('nan'):>10.3f} "
              f"{r['cold_start_seconds']:>12.1f}  {r['peak_rss_mib_per_worker']}")
    result = {
        "benchmark": "bench_annotate",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads_main": torch.get_num_threads(), "gpu": torch.cuda.is_available()},
        "versions": {"fitem": fitem.__version__, "torch": torch.__version__, "joblib": joblib.__version__},
        "data": {"kind": f"fitem.bench.synthetic renders with occluders, landmarks {args.landmarks}",
                 "n": args.n, "image_size": args.image_size, "seed": args.seed, "model": args.model},
        "config": {"hash": config.hash(), "size": config.size, "rounds": config.rounds,
                   "iterations": config.iterations, "device": config.device, "rasterizer": config.backend,
                   "backend": "loky"},
        "rows": rows,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
