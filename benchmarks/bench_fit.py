"""Speed of ``fitem.fit``: median wall time per image, split by stage, and peak memory.

Models:
* ``demo``: the built-in demo model (7,076 vertices, 80/30/40 components);
* ``bfm2009-sized``: a random model of the size of the cropped BFM 2009 that face
  reconstruction uses — a 35k-vertex face-shaped surface
  (``fitem.render.meshes.face_like_mesh``) with smooth random bases of 80 shape /
  64 expression / 80 colour components and 68 landmarks;
* ``bfm2017-sized``: likewise with BFM 2017's face model's size, 199 / 100 / 199 components
  and 28,588 vertices asked of ``face_like_mesh`` (which gives 28,345).

Images are synthetic renders of the same model with a scarf occluder
(``fitem.bench.synthetic``), ``--size`` (224²), fitted with ground-truth landmarks (detection
is timed separately by ``bench_landmarks.py``), default ``FitConfig`` otherwise (4 EM rounds;
``--rounds 3`` for the 3-round targets).
Each model runs in its own process so that the peak resident memory is its own.

Usage: ``python benchmarks/bench_fit.py [--repeats 5] [--threads N] [--size 224] [--models demo,bfm2009-sized]
[--device cuda] [--backend nvdiffrast] [--profile DIR]``; writes ``benchmarks/results/bench_fit.json``
(``--out`` elsewhere). On CUDA the stage times include the GPU work (every stage ends in a host copy
of its result). ``--profile DIR`` also runs one more fit per model under ``torch.profiler`` and
writes the operators' table (``DIR/profile_<model>_<size>.txt``).
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


#: name → (vertices asked of face_like_mesh, shape / expression / colour components) of the random models
SIZED = {"bfm2009-sized": (35700, (80, 64, 80)), "bfm2017-sized": (28588, (199, 100, 199))}


def sized_model(name: str, seed: int = 0):
    """A random model of one of the sizes in :data:`SIZED`: smooth random bases, iBUG-68 landmarks."""
    from fitem.models import load_model
    from fitem.models.morphable import LinearBlock, MorphableModel
    from fitem.render.meshes import face_like_mesh

    n_vertices, (k_shape, k_expression, k_colour) = SIZED[name]
    v, f = face_like_mesh(n_vertices, half_width=72.0, half_height=92.0, depth=55.0, nose=22.0)
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

    sb, sv = smooth_block(k_shape, 6.0, 0.97)
    eb, ev = smooth_block(k_expression, 3.0, 0.96)
    cb, cv = smooth_block(k_colour, 0.08, 0.97)
    colour_mean = np.tile(np.array([0.72, 0.52, 0.42]), (n, 1))
    demo = load_model("demo")
    dm = demo.shape.mean
    lm = dm[demo.landmark_indices("ibug68")]
    scale = (v[:, :2].max(0) - v[:, :2].min(0)) / (dm[:, :2].max(0) - dm[:, :2].min(0))
    lm2 = (lm[:, :2] - dm[:, :2].mean(0)) * scale + v[:, :2].mean(0)
    idx = np.argmin(((v[None, :, :2] - lm2[:, None, :]) ** 2).sum(-1), axis=1)
    return MorphableModel(
        name=f"{name}-random",
        shape=LinearBlock(v, sb, sv),
        expression=LinearBlock(np.zeros_like(v), eb, ev),
        colour=LinearBlock(colour_mean, cb, cv),
        triangles=f.numpy(),
        landmarks={"ibug68": idx},
        metadata={"source": "benchmarks/bench_fit.py random model"},
    )


def run_one(model_name: str, repeats: int, threads: int, device: str = "cpu", backend: str = "torch",
            size: int = 224, profile: str | None = None, rounds: int | None = None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from fitem.api import fit
    from fitem.bench.synthetic import make_sample
    from fitem.config import FitConfig
    from fitem.models import load_model

    model = load_model("demo") if model_name == "demo" else sized_model(model_name)
    config = FitConfig(backend=backend, device=device, size=size, **({"rounds": rounds} if rounds else {}))
    samples = [make_sample(model, 500 + i, occluder="scarf", size=size) for i in range(repeats + 1)]
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
    if profile:
        write_profile(Path(profile) / f"profile_{model_name}_{size}.txt", samples[1], model, config, device)
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


def write_profile(path: Path, sample, model, config, device: str) -> None:
    """One more fit under ``torch.profiler``: the operators' table, sorted by self time on the device."""
    from torch.profiler import ProfilerActivity, profile

    from fitem.api import fit

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        fit(sample.image, landmarks=sample.landmarks68, model=model, config=config)
        wall = time.perf_counter() - t0
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{model.name} {config.size}² on {device}, one fit under the profiler: {wall:.3f} s wall\n"
                    f"{table}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--models", default="demo,bfm2009-sized", help="comma-separated: demo, " + ", ".join(SIZED))
    ap.add_argument("--size", type=int, default=224, help="image side and FitConfig.size")
    ap.add_argument("--rounds", type=int, default=0, help="FitConfig.rounds (0: FitConfig's default)")
    ap.add_argument("--profile", help="folder for one profiled fit's operators' table per model")
    ap.add_argument("--device", default="cpu", help="torch device of the fit (cpu, cuda)")
    ap.add_argument("--backend", default="torch", help="rasterizer backend (torch, nvdiffrast, auto)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_fit.json"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.repeats, args.threads, args.device, args.backend, args.size,
                                 args.profile, args.rounds)))
        return
    results = []
    for name in args.models.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(args.repeats),
                               "--threads", str(args.threads), "--device", args.device, "--backend", args.backend,
                               "--size", str(args.size), "--rounds", str(args.rounds)]
                              + (["--profile", args.profile] if args.profile else []),
                              capture_output=True, text=True)
        if proc.returncode != 0:  # report and go on with the next model
            print(f"{name}: the child process failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            results.append({"model": name, "error": proc.stderr[-3000:]})
            continue
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
