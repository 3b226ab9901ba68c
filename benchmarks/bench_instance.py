"""Benchmark ``MorphableModel.instance()`` (and model file loading) on the CPU.

Models:
  - ``bfm2017-size``: random, the size of BFM 2017 ``model2017-1_bfm_nomouth.h5``
    (53,149 vertices; 199 shape / 100 expression / 199 colour components).
  - ``demo``: fitem's built-in demo model, if ``fitem.models.demo`` exists.

For each: median wall time of ``instance()`` over repeats, batch 1 and 8,
float32, forward only (``torch.no_grad``) and forward + backward to the
coefficients (what a Gauss-Newton fit pays). With ``--io`` (default) it also
writes the random model as a statismo ``.h5`` in BFM 2017's layout and as fitem
``.npz``/``.h5`` in a temporary folder and times loading each.

Usage:
    python benchmarks/bench_instance.py [--repeats 20] [--no-io] [--out benchmarks/results/bench_instance.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from fitem.errors import FitemError
from fitem.models.io import load_model_file, save_model
from fitem.models.morphable import LinearBlock, MorphableModel

BFM2017_VERTICES = 53149
BFM2017_TRIANGLES = 105694
BFM2017_COMPONENTS = (199, 100, 199)


def random_bfm_sized(seed: int = 0) -> MorphableModel:
    """A random model with BFM 2017's sizes (the content is noise; only the sizes matter here)."""
    rng = np.random.default_rng(seed)
    n = BFM2017_VERTICES
    ks, ke, kc = BFM2017_COMPONENTS

    def block(k: int, mean_range: tuple[float, float], std0: float) -> LinearBlock:
        std = (std0 / np.sqrt(np.arange(1, k + 1))).astype(np.float32)
        basis = rng.standard_normal((3 * n, k), dtype=np.float32)
        basis /= np.linalg.norm(basis, axis=0, keepdims=True)
        basis *= std[None, :]
        mean = rng.uniform(*mean_range, size=(n, 3)).astype(np.float32)
        return LinearBlock(mean, basis, std ** 2)

    tri = rng.integers(0, n, size=(BFM2017_TRIANGLES, 3), dtype=np.int64)
    return MorphableModel("bfm2017-size", block(ks, (-80.0, 80.0), 30.0), block(ke, (0.0, 0.0), 10.0),
                          block(kc, (0.2, 0.8), 0.3), tri)


def _median_ms(fn, repeats: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "repeats": repeats}


def time_instance(model: MorphableModel, repeats: int) -> dict:
    out: dict = {"vertices": model.n_vertices, "triangles": model.n_triangles,
                 "components": [model.n_shape, model.n_expression, model.n_colour]}
    t0 = time.perf_counter()
    model.tensors("cpu", torch.float32)
    out["tensors_first_call_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    g = torch.Generator().manual_seed(0)
    for batch in (1, 8):
        shape = (batch,) if batch > 1 else ()
        cs = torch.randn(*shape, model.n_shape, generator=g)
        ce = torch.randn(*shape, model.n_expression, generator=g)
        cc = torch.randn(*shape, model.n_colour, generator=g)

        def forward() -> None:
            with torch.no_grad():
                model.instance(cs, ce, cc)

        def forward_backward() -> None:
            s, e, c = (x.clone().requires_grad_(True) for x in (cs, ce, cc))
            v, a = model.instance(s, e, c)
            (v.square().sum() + a.square().sum()).backward()

        out[f"batch{batch}"] = {"forward": _median_ms(forward, repeats),
                                "forward_backward": _median_ms(forward_backward, max(3, repeats // 2))}
    return out


def write_statismo_like_bfm2017(model: MorphableModel, path: Path) -> None:
    """Write ``model`` in BFM 2017's statismo layout (orthonormal pcaBasis, (3, T) cells)."""
    with h5py.File(path, "w") as f:
        for name, block in (("shape", model.shape), ("color", model.colour), ("expression", model.expression)):
            std = np.sqrt(block.variance)
            g = f.create_group(name)
            g["model/mean"] = block.mean.reshape(-1)
            g["model/pcaBasis"] = block.basis / np.where(std > 0, std, 1.0)[None, :]
            g["model/pcaVariance"] = block.variance
            g["model/noiseVariance"] = np.zeros(1, np.float32)
            g["version/majorVersion"] = np.int32(0)
            g["version/minorVersion"] = np.int32(9)
            g["representer/points"] = model.shape.mean.T
            g["representer/cells"] = model.triangles.T.astype(np.int32)


def time_io(model: MorphableModel, repeats: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"statismo_h5": Path(tmp) / "model2017-like.h5",
                 "fitem_npz": Path(tmp) / "m.npz", "fitem_h5": Path(tmp) / "m.h5"}
        t0 = time.perf_counter()
        write_statismo_like_bfm2017(model, files["statismo_h5"])
        out["write_statismo_h5_s"] = round(time.perf_counter() - t0, 3)
        for key in ("fitem_npz", "fitem_h5"):
            t0 = time.perf_counter()
            save_model(model, files[key])
            out[f"save_{key}_s"] = round(time.perf_counter() - t0, 3)
        for key, path in files.items():
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                loaded = load_model_file(path)
                times.append(time.perf_counter() - t0)
            del loaded
            out[f"load_{key}"] = {"median_s": round(statistics.median(times), 3), "repeats": repeats,
                                  "file_mb": round(path.stat().st_size / 2 ** 20, 1)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--io-repeats", type=int, default=3)
    parser.add_argument("--no-io", action="store_true", help="skip the file loading timings")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_instance.json")
    args = parser.parse_args(argv)

    result: dict = {
        "benchmark": "MorphableModel.instance",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "numpy": np.__version__, "device": "cpu", "gpu": False},
        "dtype": "float32",
        "models": {},
        "notes": [],
    }
    model = random_bfm_sized()
    result["models"]["bfm2017-size"] = time_instance(model, args.repeats)
    if not args.no_io:
        result["models"]["bfm2017-size"]["io"] = time_io(model, args.io_repeats)
    del model

    try:
        from fitem.models.demo import demo_model
    except ImportError as e:
        result["notes"].append(f"demo model skipped: fitem.models.demo is not importable ({e})")
    else:
        t0 = time.perf_counter()
        try:
            demo = demo_model()
        except FitemError as e:
            result["notes"].append(f"demo model skipped: building it failed ({type(e).__name__}: {e})")
        else:
            build_s = time.perf_counter() - t0
            result["models"]["demo"] = time_instance(demo, args.repeats)
            result["models"]["demo"]["load_or_build_s"] = round(build_s, 3)

    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
