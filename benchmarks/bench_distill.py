"""The distillation experiment: does a net distilled from EM fits segment as well as the fits,
and do fits seeded by it do better?

1. Render ``--n`` synthetic demo-model faces (``fitem.bench.synthetic``, occluder classes
   cycled) and save ONLY the images as PNGs (``WORK/images/``); the ground truth (visible
   face, face region, class) goes to ``WORK/truth.npz`` and is never used for training.
2. ``fitem.annotation.annotate`` the image folder (``FitConfig()`` unless ``--config``;
   landmarks detected by MediaPipe unless ``--gt-landmarks`` writes ``.pts`` sidecars).
3. ``fitem.segnet.distill`` on the first ``--train`` done images (by image index).
4. On the held-out done images (all the others), with the landmarks each fit used:
   visible-face F1 inside the ground-truth face region (``segmentation_scores``) of
   - the net alone (``segment``),
   - the EM fits it learned from (the annotation's ``mask.png``; their rounds from ``params.json``),
   - fits seeded by the net (``fit(..., segnet=NET)``: prior + first mask), with their rounds,
   - the trivial all-face mask;
   per occluder class and overall.

Usage (the full experiment; hours on 2 CPU cores, run it on a quiet machine)::

    python benchmarks/bench_distill.py --n 720 --train 500 --epochs 30 --jobs 2 --work /tmp/distill720

(MediaPipe finds no face in about 15 % of the synthetic images — strong yaw, hands — so 720
images leave about 100 done images held out after the 500 for training.)

Smoke run: ``python benchmarks/bench_distill.py --n 16 --train 10 --epochs 1 --config size=112,rounds=2``
Prints a table and writes ``benchmarks/results/bench_distill.json`` (``--out``).
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


def _parse_config(text: str) -> dict:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, _, v = part.partition("=")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v.strip()
    return out


def make_images(work: Path, n: int, seed: int, gt_landmarks: bool, progress: bool = True) -> None:
    """Write images/NNNNNN.png (+ .pts sidecars if asked) and truth.npz; skip if already there."""
    from fitem._files import atomic_write_bytes, png_bytes
    from fitem.bench.synthetic import iter_dataset
    from fitem.landmarks.pts import write_pts
    from fitem.models import load_model

    truth = work / "truth.npz"
    if truth.is_file():
        with np.load(truth) as z:
            if len(z["classes"]) == n:
                return
    img_dir = work / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    visible, region, classes = [], [], []
    for i, s in enumerate(iter_dataset(load_model("demo"), n, seed=seed, classes=CLASSES, progress=progress)):
        path = img_dir / f"{i:06d}.png"
        atomic_write_bytes(path, png_bytes(np.round(s.image * 255).astype(np.uint8)))
        if gt_landmarks:
            write_pts(path.with_suffix(".pts"), s.landmarks68)
        visible.append(s.visible_face)
        region.append(s.face_region)
        classes.append(s.occluder_class)
    buf = __import__("io").BytesIO()
    np.savez_compressed(buf, visible=np.stack(visible), region=np.stack(region), classes=np.array(classes))
    atomic_write_bytes(truth, buf.getvalue())


def evaluate_one(image_path: str, result_dir: str, net_path: str, config: dict, visible: np.ndarray,
                 region: np.ndarray, threads: int) -> dict:
    import cv2
    import torch

    if threads:
        torch.set_num_threads(threads)
    from fitem.annotation.worker import cached_model
    from fitem.api import fit
    from fitem.bench.metrics import segmentation_scores
    from fitem.config import FitConfig
    from fitem.image import load_image
    from fitem.segnet import load_segnet, segment

    net = load_segnet(net_path)  # a few ms; functions of a script cannot share a cache with loky workers

    meta = json.loads((Path(result_dir) / "params.json").read_text())
    lms = np.asarray(meta["landmarks"], np.float32)
    image = load_image(image_path)
    row: dict = {"image": image_path}
    em_mask = cv2.imread(str(Path(result_dir) / "mask.png"), cv2.IMREAD_GRAYSCALE) > 127
    row["em_f1"] = segmentation_scores(em_mask, visible, region)["f1"]
    row["em_rounds"] = len(meta["rounds"])
    row["em_seconds"] = meta["timings"].get("total", float("nan"))
    t0 = time.perf_counter()
    seg = segment(image, net=net, landmarks=lms)
    row["net_seconds"] = time.perf_counter() - t0
    row["net_ms_net_only"] = 1000 * seg.timings["net"]
    row["net_f1"] = segmentation_scores(seg.mask, visible, region)["f1"]
    row["net_vs_em_f1"] = segmentation_scores(seg.mask, em_mask, region | em_mask)["f1"]
    cfg = FitConfig(**{**config, "progress": False})
    t0 = time.perf_counter()
    r = fit(image, landmarks=lms, model=cached_model("demo"), config=cfg, segnet=net)
    row["seeded_seconds"] = time.perf_counter() - t0
    row["seeded_status"] = r.status.value
    row["seeded_f1"] = segmentation_scores(r.mask, visible, region)["f1"]
    row["seeded_rounds"] = len(r.rounds)
    row["allface_f1"] = segmentation_scores(region, visible, region)["f1"]
    return row


def _mean(rows, key):
    v = np.array([r[key] for r in rows], float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=720,
                    help="synthetic images (MediaPipe misses ~15 %% of them, so 720 leave ~100 held out of 500)")
    ap.add_argument("--train", type=int, default=500, help="distil on the first this many done images")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--in-channels", type=int, choices=[3, 6], default=3)
    ap.add_argument("--base", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2, help="parallel fits (annotation and seeded fits)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--config", default="", help="FitConfig overrides, e.g. 'size=112,rounds=2' (default FitConfig())")
    ap.add_argument("--gt-landmarks", action="store_true", help="give annotate the true landmarks (.pts sidecars)")
    ap.add_argument("--work", default="/tmp/fitem_bench_distill", help="working folder (images, annotation, net)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_distill.json"))
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()
    from joblib import Parallel, delayed

    from fitem.annotation import annotate
    from fitem.config import FitConfig
    from fitem.segnet import distill
    from fitem.segnet.data import done_records, read_annotation

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = FitConfig(**_parse_config(args.config))
    timings = {}
    t0 = time.perf_counter()
    make_images(work, args.n, args.seed, args.gt_landmarks, progress=not args.quiet)
    timings["make_images"] = time.perf_counter() - t0
    with np.load(work / "truth.npz") as z:
        visible, region, classes = z["visible"], z["region"], [str(c) for c in z["classes"]]

    t0 = time.perf_counter()
    ann = work / "annotation"
    summary = annotate(work / "images", ann, config=config, n_jobs=args.jobs, progress=not args.quiet)
    timings["annotate"] = time.perf_counter() - t0
    _, records = read_annotation(ann)
    done = done_records(records)
    index = {r["key"]: int(Path(r["input"]).stem) for r in done}
    done.sort(key=lambda r: index[r["key"]])
    train_keys = [r["key"] for r in done[:args.train]]
    held = [r for r in done[args.train:]]
    if not held:
        raise SystemExit(f"no held-out images: {len(done)} done, --train {args.train}; raise --n")
    if len(held) < 50:
        print(f"warning: only {len(held)} held-out images ({len(done)} done, {len(train_keys)} for training); "
              "the comparison is noisy — raise --n")

    t0 = time.perf_counter()
    net_path = work / f"net_in{args.in_channels}.pt"
    report = distill(ann, net_path, epochs=args.epochs, batch_size=args.batch_size, in_channels=args.in_channels,
                     base=args.base, keys=train_keys, progress=not args.quiet)
    timings["distill"] = time.perf_counter() - t0
    print(report.table())

    t0 = time.perf_counter()
    threads = 1 if args.jobs > 1 else 0
    rows = Parallel(n_jobs=args.jobs)(
        delayed(evaluate_one)(r["input"], str(ann / r["result"]), str(net_path), config.as_dict(),
                              visible[index[r["key"]]], region[index[r["key"]]], threads) for r in held)
    timings["evaluate"] = time.perf_counter() - t0
    for r, rec in zip(rows, held):
        r["occluder_class"] = classes[index[rec["key"]]]
    table = []
    for c in (*CLASSES, "all"):
        rs = [r for r in rows if c == "all" or r["occluder_class"] == c]
        if not rs:
            continue
        table.append({
            "class": c, "n": len(rs),
            "net_f1": _mean(rs, "net_f1"), "em_f1": _mean(rs, "em_f1"), "seeded_f1": _mean(rs, "seeded_f1"),
            "allface_f1": _mean(rs, "allface_f1"), "net_vs_em_f1": _mean(rs, "net_vs_em_f1"),
            "em_rounds": _mean(rs, "em_rounds"), "seeded_rounds": _mean(rs, "seeded_rounds"),
            "em_seconds": _mean(rs, "em_seconds"), "seeded_seconds": _mean(rs, "seeded_seconds"),
        })
    hdr = ("class", "n", "net F1", "EM F1", "seeded F1", "allface F1", "net~EM F1", "EM rounds", "seeded rounds")
    print(" | ".join(hdr))
    for t in table:
        print(" | ".join([t["class"], str(t["n"]), *(f"{t[k]:.3f}" for k in ("net_f1", "em_f1", "seeded_f1",
                                                                             "allface_f1", "net_vs_em_f1")),
                          f"{t['em_rounds']:.2f}", f"{t['seeded_rounds']:.2f}"]))
    overall = table[-1]
    verdict = {
        "net_within_0.03_of_em": bool(overall["net_f1"] >= overall["em_f1"] - 0.03),
        "seeded_fewer_rounds": bool(overall["seeded_rounds"] < overall["em_rounds"]),
        "seeded_higher_f1": bool(overall["seeded_f1"] > overall["em_f1"]),
        "net_ms_per_image_median": float(np.median([r["net_ms_net_only"] for r in rows])),
    }
    print(json.dumps(verdict))
    out = {
        "benchmark": "distill", "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                            "processor": platform.processor(), "load_average": os.getloadavg()},
        "n_images": args.n, "n_done": len(done), "n_train": len(train_keys), "n_held_out": len(held),
        "annotate_this_call": {"done": summary.done, "failed": summary.failed, "skipped": summary.skipped,
                     "images_per_second": summary.images_per_second},
        "fit_config": config.as_dict(), "gt_landmarks": args.gt_landmarks,
        "distill": report.as_dict(), "timings": timings, "table": table, "verdict": verdict, "rows": rows,
        "work": str(work),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
