"""Write a contact sheet of the synthetic occlusion benchmark: 2 samples per occluder class.

Each row is one occluder class; each sample shows the image and, next to it,
an overlay: occluder mask in red, visible face in green tint, the face
region's outline in yellow and the 68 projected landmarks as dots.

Usage::

    python scripts/synthetic_contact_sheet.py [--out docs/img/synthetic_samples.png] [--seed 0] [--size 224]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from fitem.bench.synthetic import OCCLUDER_CLASSES, SyntheticSample, make_sample
from fitem.models import load_model
from fitem.render.camera import Camera
from fitem.render.raster import make_rasterizer

logger = logging.getLogger("synthetic_contact_sheet")


def overlay(s: SyntheticSample) -> np.ndarray:
    """The sample's image with its ground truth drawn on it, ``(H, W, 3)`` uint8 RGB."""
    img = s.image.copy()
    img[s.visible_face] = 0.7 * img[s.visible_face] + 0.3 * np.array([0.0, 1.0, 0.0])
    img[s.occluder_mask] = 0.45 * img[s.occluder_mask] + 0.55 * np.array([1.0, 0.0, 0.0])
    out = np.ascontiguousarray(np.round(img * 255).astype(np.uint8))
    contours, _ = cv2.findContours(s.face_region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 230, 0), 1)
    for u, v in s.landmarks68:
        cv2.circle(out, (int(u), int(v)), 1, (0, 120, 255), -1)
    return out


def contact_sheet(samples: list[list[SyntheticSample]]) -> np.ndarray:
    """Rows of samples → one RGB uint8 image with a label strip per tile."""
    rows = []
    for row in samples:
        tiles = []
        for s in row:
            for kind, tile in (("image", np.round(s.image * 255).astype(np.uint8)), ("truth", overlay(s))):
                strip = np.full((18, tile.shape[1], 3), 255, np.uint8)
                label = f"{s.occluder_class} seed {s.seed}" if kind == "image" else \
                    f"occluded {100 * s.occluder_fraction:.0f}% of face"
                cv2.putText(strip, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
                tiles.append(np.concatenate([strip, tile], 0))
                tiles.append(np.full((tiles[-1].shape[0], 4, 3), 255, np.uint8))
        rows.append(np.concatenate(tiles[:-1], 1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], 0)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/synthetic_samples.png"))
    parser.add_argument("--seed", type=int, default=0, help="first seed; sample k of a class uses seed + k")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = load_model("demo")
    camera = Camera.default(args.size)
    rast = make_rasterizer(model.tensors().triangles, camera.image_size, backend="torch")
    grid = []
    for c, cls in enumerate(OCCLUDER_CLASSES):
        seeds = [args.seed + c * args.per_class + k for k in range(args.per_class)]
        grid.append([make_sample(model, s, occluder=cls, camera=camera, rasterizer=rast) for s in seeds])
    sheet = contact_sheet(grid)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), sheet[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    logger.info("wrote %s (%dx%d)", args.out, sheet.shape[1], sheet.shape[0])
    return args.out


if __name__ == "__main__":
    main()
