"""Render the README picture of the demo model: ``docs/img/demo_model.png``.

Top row: the mean and four samples, seen from the front; bottom row: the same
faces turned 35 degrees. Samples: the leading shape, expression and colour
components at +2σ and at -2σ, and two random draws with every coefficient
clipped to ±2σ (seeded). Shading: Lambert with ambient 0.55 and one light from
the upper left; painter's algorithm with matplotlib (no GPU, no fitem
renderer needed).

    python scripts/render_demo_model_figure.py [--out docs/img/demo_model.png] [--dpi 110]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def draw(ax, verts: np.ndarray, tris: np.ndarray, albedo: np.ndarray, yaw_deg: float) -> None:
    """Shaded faces of ``(verts, tris)`` turned by ``yaw_deg``, orthographic, onto ``ax``."""
    from matplotlib.collections import PolyCollection

    y = np.radians(yaw_deg)
    rot = np.array([[np.cos(y), 0.0, np.sin(y)], [0.0, 1.0, 0.0], [-np.sin(y), 0.0, np.cos(y)]])
    v = verts @ rot.T
    n = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    light = np.array([-0.35, 0.45, 1.0])
    light /= np.linalg.norm(light)
    shade = 0.55 + 0.5 * np.clip(n @ light, 0.0, 1.0)
    colour = np.clip(albedo[tris].mean(1) * shade[:, None], 0.0, 1.0)
    order = np.argsort(v[tris, 2].mean(1))
    order = order[n[order, 2] > 0]
    ax.add_collection(PolyCollection(v[tris[order]][:, :, :2], facecolors=colour[order],
                                     edgecolors=colour[order], linewidths=0.2))
    ax.set_xlim(-95, 95)
    ax.set_ylim(-105, 105)
    ax.set_aspect("equal")
    ax.axis("off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--out", type=Path, default=root / "docs" / "img" / "demo_model.png")
    parser.add_argument("--dpi", type=int, default=110)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fitem.models.demo import build_demo_model

    model = build_demo_model()
    rng = np.random.default_rng(args.seed)
    ks, ke, kc = model.n_shape, model.n_expression, model.n_colour

    def leading(sign: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cs, ce, cc = np.zeros(ks), np.zeros(ke), np.zeros(kc)
        cs[:3], ce[:2], cc[:2] = sign * 2.0, sign * 2.0, sign * 2.0
        return cs, ce, cc

    def random() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.clip(rng.normal(size=k), -2.0, 2.0) for k in (ks, ke, kc))

    faces = [("mean", (np.zeros(ks), np.zeros(ke), np.zeros(kc))), ("leading components +2σ", leading(1.0)),
             ("leading components −2σ", leading(-1.0)), ("random, clipped to ±2σ", random()),
             ("random, clipped to ±2σ", random())]
    fig, axes = plt.subplots(2, len(faces), figsize=(2.2 * len(faces), 5.0))
    for col, (title, (cs, ce, cc)) in enumerate(faces):
        verts = (model.shape.mean + model.expression.mean
                 + (model.shape.basis @ cs + model.expression.basis @ ce).reshape(-1, 3))
        albedo = np.clip(model.colour.mean + (model.colour.basis @ cc).reshape(-1, 3), 0.0, 1.0)
        for row, yaw in enumerate((0.0, 35.0)):
            draw(axes[row, col], verts.astype(np.float64), model.triangles, albedo.astype(np.float64), yaw)
        axes[0, col].set_title(title, fontsize=8)
    fig.suptitle(f"fitem demo model: {model.n_vertices} vertices, {model.n_shape} shape / "
                 f"{model.n_expression} expression / {model.n_colour} colour components", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
