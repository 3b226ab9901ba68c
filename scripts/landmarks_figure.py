"""Draw ``docs/img/landmarks_init.png``: detected landmarks and the initial model fit on the astronaut photo.

Left: the input photo (around the face) with MediaPipe's 478 points (small,
grey), the 68 iBUG points taken from them (green), the initial model's
iBUG-68 landmark vertices projected with the initial pose and coefficients
(red crosses) and the model's mesh vertices (blue dots, every 8th; only with
the demo model), all mapped from the 224² crop back to input pixels. Right:
the 224² aligned crop the fit works on, with the same overlays in crop pixels.

Usage:
    python scripts/landmarks_figure.py [--out docs/img/landmarks_init.png]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "landmarks_init.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import skimage.data
    import torch

    from fitem.image import load_image
    from fitem.init import initialise
    from fitem.landmarks import align_transform, detect_landmarks
    from fitem.render.camera import Camera, to_camera

    img = load_image(skimage.data.astronaut())
    det = detect_landmarks(img)
    T = align_transform(det.ibug68, size=224, input_shape=img.shape)
    crop = T.warp_image(img)
    cam = Camera.default(224)
    try:
        from fitem.models.demo import demo_model

        model, label = demo_model(), "demo model"
    except (ImportError, AttributeError):
        sys.path.insert(0, str(ROOT))
        from tests.landmarks.synthetic import synthetic_model

        model, label = synthetic_model(), "synthetic test model"
    res = initialise(model, T.to_crop(det.ibug68), cam)
    p = res.params
    with torch.no_grad():
        verts, _ = model.instance(p.shape.double(), p.expression.double())
        uv = cam.project(to_camera(verts, p.rotation.double(), p.translation.double()))[:, :2].numpy()
    lm_crop = uv[model.landmark_indices("ibug68")]
    mesh_crop = uv[::8] if label == "demo model" else None

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.6), dpi=100)
    x0, y0, x1, y1 = det.box
    pad = 0.35 * (x1 - x0)
    ax = axes[0]
    ax.imshow(img, extent=(0, img.shape[1], img.shape[0], 0))  # continuous pixel coordinates
    if mesh_crop is not None:
        m_in = T.to_input(mesh_crop)
        ax.plot(m_in[:, 0], m_in[:, 1], ".", ms=1.2, color="#3b7dd8", alpha=0.6, label="model mesh (every 8th vertex)")
    ax.plot(det.points478[:, 0], det.points478[:, 1], ".", ms=1.5, color="0.85", label="MediaPipe 478")
    ax.plot(det.ibug68[:, 0], det.ibug68[:, 1], "o", ms=3, color="#2ca02c", label="detected iBUG-68")
    li = T.to_input(lm_crop)
    ax.plot(li[:, 0], li[:, 1], "x", ms=4, mew=1.2, color="#d62728", label="initial model landmarks")
    ax.set_xlim(x0 - pad, x1 + pad)
    ax.set_ylim(y1 + pad, y0 - pad)
    ax.set_title(f"input (detector: {det.source}, score {det.score:.2f})", fontsize=10)
    ax.legend(loc="lower left", fontsize=7, framealpha=0.8)
    ax = axes[1]
    ax.imshow(crop, extent=(0, 224, 224, 0))
    if mesh_crop is not None:
        ax.plot(mesh_crop[:, 0], mesh_crop[:, 1], ".", ms=1.2, color="#3b7dd8", alpha=0.6)
    lc = T.to_crop(det.ibug68)
    ax.plot(lc[:, 0], lc[:, 1], "o", ms=3, color="#2ca02c")
    ax.plot(lm_crop[:, 0], lm_crop[:, 1], "x", ms=4, mew=1.2, color="#d62728")
    pitch, yaw, roll = np.degrees(p.rotation.numpy())
    ax.set_title(f"224² crop, {label}: pitch {pitch:.0f}°, yaw {yaw:.0f}°, roll {roll:.0f}°,\n"
                 f"reprojection {res.reprojection_error:.1f} px, distance {float(p.translation[2]):.0f} mm", fontsize=10)
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    logging.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
