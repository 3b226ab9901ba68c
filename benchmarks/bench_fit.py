"""Speed of ``fitem.fit``: median wall time per image, split by stage, and peak memory.

Models:
* ``demo``: the built-in demo model (7,076 vertices, 80/30/40 components);
* ``bfm2009-sized``: a random model of BFM-2009 size — a 35k-vertex face-shaped
  surface (``fitem.render.meshes.face_like_mesh``) with smooth random bases of
  80 shape / 64 expression / 80 colour components and 68 landmarks.

Images are synthetic renders of the same model with a scarf occluder
(``fitem.bench.synthetic``), 224², fitted with ground-truth landmarks (detection
is timed separately by ``bench_landmarks.py``), default ``FitConfig`` (3 EM rounds).
Each model runs in its own process so that the peak resident memory is its own.

Usage: ``python benchmarks/bench_fit.py [--repeats 5] [--threads N] [--device cuda] [--backend nvdiffrast]``;
writes ``benchmarks/results/bench_fit.json`` (``--out`` elsewhere). On CUDA the stage times include
the GPU work (every stage ends in a host copy of its result).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def bfm2009_sized_model(seed: int = 0):
    """A random BFM-2009-sized model: 35k vertices, 80 / 64 / 80 smooth components, iBUG-68 landmarks."""
    from fitem.models import load_model
    from fitem.models.morphable import LinearBlock, MorphableModel
    from fitem.render.meshes import face_like_mesh

    v, f = face_like_mesh(35700, half_width=72.0, half_height=92.0, depth=55.0, nose=22.0)
    v = v.double().numpy()
    n = v.shape[0]
    rng = np.random.default_rng(seed)

    def smooth_block(k: int, std0: float, decay: float) -> np.ndarray:
        centres = v[rng.choice(n, 64, replace=False)]
        d2 = ((v[:, None, :] - centres[None]) ** 2).sum(-1)
        phi = np.exp(-d2 / (2 * 35.0**2))  # (N, 64) smooth features
        coef = rng.normal(size=(64, 3, k))
        basis = np.einsum("nj,jck->nck", phi, coef).reshape(3 * n, k)
        q, _ = np.linalg.qr(basis)
        std = std0 * decay ** np.arange(k)
        return q * std, std**2

    sb, sv = smooth_block(80, 6.0, 0.97)
    eb, ev = smooth_block(64, 3.0, 0.96)
    cb, cv = smooth_block(80, 0.08, 0.97)
    colour_mean = np.tile(np.array([0.72, 0.52, 0.42]), (n, 1))
    demo = load_model("demo")
    dm = demo.shape.mean
    lm = dm[demo.landmark_indices("ibug68")]
    scale = (v[:, :2].max(0) - v[:, :2].min(0)) / (dm[:, :2].max(0) - dm[:, :2].min(0))
    lm2 = (lm[:, :2] - dm[:, :2].mean(0)) * scale + v[:, :2].mean(0)
    idx = np.argmin(((v[None, :, :2] - lm2[:, None, :]) ** 2).sum(-1), axis=1)
    return MorphableModel(
        name="bfm2009-sized-random",
        shape=LinearBlock(v, sb, sv),
        expression=LinearBlock(np.zeros_like(v), eb, ev),
        colour=LinearBlock(colour_mean, cb, cv),
        triangles=f.numpy(),
        landmarks={"ibug68": idx},
        metadata={"source": "benchmarks/bench_fit.py random model"},
    )


def run_one(model_name: str, repeats: int, threads: int, device: str = "cpu", backend: str = "torch") -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from fitem.api import fit
    from fitem.bench.synthetic import make_sample
    from fitem.config import FitConfig
    from fitem.models import load_model

    model = load_model("demo") if model_name == "demo" else bfm2009_sized_model()
    config = FitConfig(backend=backend, device=device)
    samples = [make_sample(model, 500 + i, occluder="scarf") for i in range(repeats + 1)]
    fit(samples[0].image, landmarks=samples[0].landmarks68, model=model, config=config)  # warm-up
    rows = []
    for s in samples[1:]:
        t0 = time.perf_counter()
        r = fit(s.image, landmarks=s.landmarks68, model=model, config=config)
        wall = time.perf_counter() - t0
        rows.append({"wall": wall, **{k: float(v) for k, v in r.timings.items()},
                     "iterations": sum(x.iterations for x in r.rounds), "rounds": len(r.rounds),
                     "status": r.status.value})
    med = {k: float(np.median([row[k] for row in rows])) for k in rows[0] if k != "status"}
    return {
        "model": model.name, "vertices": model.n_vertices, "triangles": model.n_triangles,
        "components": [model.n_shape, model.n_expression, model.n_colour],
        "parameters": model.n_shape + model.n_expression + model.n_colour + 27 + 6,
        "image_size": config.size, "em_rounds": config.rounds,
        "iterations_per_round": [config.first_iterations] + [config.iterations] * (config.rounds - 1),
        "max_pixels": config.max_pixels, "threads": torch.get_num_threads(), "repeats": repeats,
        "device": device, "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor(),
        "backend": r.backend,
        "median_seconds": med, "runs": rows,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--models", default="demo,bfm2009-sized")
    ap.add_argument("--device", default="cpu", help="torch device of the fit (cpu, cuda)")
    ap.add_argument("--backend", default="torch", help="rasterizer backend (torch, nvdiffrast, auto)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_fit.json"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.repeats, args.threads, args.device, args.backend)))
        return
    results = []
    for name in args.models.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(args.repeats),
                               "--threads", str(args.threads), "--device", args.device, "--backend", args.backend],
                              capture_output=True, text=True, check=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(res)
        m = res["median_seconds"]
        print(f"{res['model']:<22} N={res['vertices']:>6} P={res['parameters']:>3} {res['image_size']}² "
              f"rounds={res['em_rounds']}: total {m['wall']:.2f} s (detect {m['detect']:.2f}, init {m['init']:.2f}, "
              f"M-step {m['m_step']:.2f}, E-step {m['e_step']:.2f}, output {m['output']:.2f}), "
              f"peak RSS {res['peak_rss_mb']:.0f} MB, threads {res['threads']}, {res['device']} / {res['backend']}")
    out = {"benchmark": "fit_speed", "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                                "loadavg_after": os.getloadavg()},
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
