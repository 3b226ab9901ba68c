"""Pool several ``fitem bench`` runs: per occluder class, means over the unique images (by seed).

Sets of 20 images per class are small: hand occluder F1 has a standard deviation of about 0.2
between images, so one set's mean moves by ±0.045 (one standard error). This script pools runs
made with different ``--seed`` (images met twice, same seed and class, are counted once) and
reports the mean and its standard error per class.

Usage: ``python benchmarks/pool_bench.py RESULTS.json... [--out pooled.json]``
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

METRICS = ("em_occluder_f1", "em_f1", "em_3d_median_mm")


def pool(paths: list[str]) -> dict:
    rows: dict[tuple[int, str], dict] = {}
    for p in paths:
        for r in json.loads(Path(p).read_text())["rows"]:  # every image, as fitem bench's own means
            rows[(int(r["seed"]), r["occluder_class"])] = r
    out = {}
    for cls in sorted({c for _, c in rows}):
        rs = [r for (_, c), r in rows.items() if c == cls]
        entry = {"n_images": len(rs)}
        for m in METRICS:
            v = [float(r[m]) for r in rs if r.get(m) is not None and not math.isnan(float(r[m]))]
            if len(v) < 2:
                continue
            mean = sum(v) / len(v)
            sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
            entry[m] = {"mean": round(mean, 4), "sd": round(sd, 4), "se": round(sd / math.sqrt(len(v)), 4),
                        "n": len(v)}
        out[cls] = entry
    return {"runs": paths, "classes": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="results.json files of fitem bench")
    ap.add_argument("--out", help="write the pooled numbers here (JSON)")
    args = ap.parse_args()
    res = pool(args.results)
    for cls, e in res["classes"].items():
        parts = [f"{m} {e[m]['mean']:.3f} ± {e[m]['se']:.3f}" for m in METRICS if m in e]
        print(f"{cls:<8} n={e['n_images']:>4}  " + "  ".join(parts))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
