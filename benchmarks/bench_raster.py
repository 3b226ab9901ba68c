"""Benchmark the pure-PyTorch rasterizer and ``render()`` on the CPU (or a CUDA device).

Meshes: face-like height-field caps (:func:`fitem.render.meshes.face_like_mesh`)
of about 7k, 35k and 53k vertices (BFM-2009/2017 densities), plus fitem's demo
model (7,160-vertex template) when it can be built. Each is posed mildly
(pitch 0.1, yaw 0.2, roll 0.05 rad) at the distance where it covers ~60 % of a
224² / 512² image (Camera.default).

For each: median over ``--repeats`` runs (after 3 warm-up runs) of

- ``rasterize``: ``TorchRasterizer.rasterize(screen)`` (tri_id, barycentrics, depth);
- ``render``: the whole ``render()`` (pose, projection, rasterization,
  normals, SH shading, interpolation) under ``torch.no_grad()``;

as wall time and as the calling thread's CPU time (``time.thread_time``: on a
machine shared with other processes the wall time includes waiting for a core;
with 2 threads it leaves out the worker thread), at each ``--threads``
setting. The CPU pressure (``/proc/pressure/cpu``) before and after the run is
recorded: numbers taken under contention are slower than on an idle machine.

Usage:
    python benchmarks/bench_raster.py [--repeats 20] [--threads 1 2] [--sizes 224 512]
                                      [--malloc tuned|default] [--device cpu|cuda]
                                      [--backends torch nvdiffrast]
                                      [--out benchmarks/results/bench_raster.json]

``--malloc default`` leaves glibc's malloc alone (``FITEM_TUNE_MALLOC=0``); by
default the rasterizer applies :func:`fitem._malloc.tune_malloc`, which removes
the page faults of its per-frame temporaries.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from fitem.errors import FitemError
from fitem.params import AMBIENT_LIGHT
from fitem.render import Camera, make_rasterizer, render
from fitem.render.camera import to_camera
from fitem.render.meshes import face_like_mesh

POSE = (0.1, 0.2, 0.05)
FILL = 0.6


def _cpu_pressure() -> str | None:
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meshes() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    out = []
    for n in (7000, 35000, 53000):
        v, f = face_like_mesh(n)
        out.append((f"face-like-{len(v)}", v, f))
    try:
        from fitem.models.registry import load_model

        model = load_model("demo")
        v, _ = model.instance()
        out.append((f"demo-{model.n_vertices}", v, torch.as_tensor(model.triangles)))
    except (ImportError, FitemError) as exc:
        print(f"(demo model skipped: {exc})")
    return out


def _time(fn, repeats: int, sync) -> tuple[float, float]:
    for _ in range(3):
        fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def bench(size: int, name: str, v: torch.Tensor, f: torch.Tensor, repeats: int, device: torch.device,
          backend: str = "torch") -> dict:
    cam = Camera.default(size)
    v, f = v.to(device), f.to(device)
    rot = torch.tensor(POSE, device=device)
    # distance at which the mesh's projected area is FILL of the image (calibrated on one frame)
    extent = (v[:, 0].amax() - v[:, 0].amin()) * (v[:, 1].amax() - v[:, 1].amin())
    dist = cam.focal * math.sqrt(math.pi / 4 * float(extent) / (FILL * size * size))
    rast = make_rasterizer(f, cam.image_size, backend=backend, device=device)
    for _ in range(3):
        tr = torch.tensor([0.0, 0.0, dist], device=device)
        cov = float(rast.rasterize(cam.project(to_camera(v[None], rot[None], tr[None]))).mask.float().mean())
        dist *= math.sqrt(cov / FILL)
    tr = torch.tensor([0.0, 0.0, dist], device=device)
    screen = cam.project(to_camera(v[None], rot[None], tr[None]))
    coverage = float(rast.rasterize(screen).mask.float().mean())
    albedo = torch.full_like(v, 0.6)
    light = torch.zeros(9, 3, device=device)
    light[0] = AMBIENT_LIGHT
    light[2] = 0.3
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    r_wall, r_cpu = _time(lambda: rast.rasterize(screen), repeats, sync)
    with torch.no_grad():
        f_wall, f_cpu = _time(lambda: render(v, albedo, light, rot, tr, cam, rast), repeats, sync)
    return {
        "backend": rast.backend, "mesh": name, "vertices": int(v.shape[0]), "triangles": int(f.shape[0]), "image": size,
        "coverage": round(coverage, 3), "distance_mm": round(dist, 1),
        "rasterize_ms": round(r_wall, 2), "rasterize_cpu_ms": round(r_cpu, 2),
        "render_ms": round(f_wall, 2), "render_cpu_ms": round(f_cpu, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", nargs="+", default=["torch"], help="rasterizer backends (torch, nvdiffrast)")
    parser.add_argument("--malloc", choices=["tuned", "default"], default="tuned",
                        help="glibc malloc: fitem's settings (fitem._malloc, what the rasterizer applies) or "
                             "glibc's defaults (FITEM_TUNE_MALLOC=0)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_raster.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.malloc == "default":
        os.environ["FITEM_TUNE_MALLOC"] = "0"
    from fitem._malloc import tune_malloc

    tuned = tune_malloc()
    result = {
        "benchmark": "bench_raster",
        "machine": {
            "platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "device": str(device),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu_pressure_before": _cpu_pressure(), "loadavg_before": os.getloadavg(),
        },
        "settings": {"repeats": args.repeats, "pose_rad": POSE, "fill": FILL, "dtype": "float32",
                     "backends": args.backends, "statistic": "median after 3 warm-up runs",
                     "cpu_ms": "CPU time of the calling thread only (time.thread_time)",
                     "malloc": args.malloc, "malloc_tuned": tuned},
        "runs": [],
    }
    thread_settings = list(dict.fromkeys(args.threads))
    all_meshes = meshes()
    for threads in thread_settings:
        torch.set_num_threads(threads)
        for size in args.sizes:
            for (name, v, f), backend in itertools.product(all_meshes, args.backends):
                row = {"threads": threads, **bench(size, name, v, f, args.repeats, device, backend)}
                result["runs"].append(row)
                print(f"threads={threads} {size}² {backend:>10} {name:>17} ({row['triangles']} tris, "
                      f"cov {row['coverage']:.2f}): "
                      f"rasterize {row['rasterize_ms']:7.2f} ms (cpu {row['rasterize_cpu_ms']:6.2f}), "
                      f"render {row['render_ms']:7.2f} ms (cpu {row['render_cpu_ms']:6.2f})", flush=True)
    result["machine"]["cpu_pressure_after"] = _cpu_pressure()
    result["machine"]["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
