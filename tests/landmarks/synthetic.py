"""A small synthetic morphable model for landmark/initialisation tests (face-like, random smooth bases)."""
from __future__ import annotations

import numpy as np
from scipy.spatial import Delaunay

from fitem.landmarks.template import IBUG68_TEMPLATE_MM
from fitem.models.morphable import LinearBlock, MorphableModel


def synthetic_model(n_shape: int = 20, n_expression: int = 10, seed: int = 0) -> MorphableModel:
    """68 iBUG template vertices plus 300 points on an ellipsoidal face cap; smooth random bases (mm)."""
    rng = np.random.default_rng(seed)
    # face cap: ellipsoid x²/a² + y²/b² + (z - z0)²/c² = 1, front half
    a, b, c, z0 = 75.0, 100.0, 60.0, -20.0
    xy = rng.uniform(-1, 1, size=(2000, 2))
    xy = xy[(xy ** 2).sum(1) < 0.95][:300] * np.array([a, b])
    z = z0 + c * np.sqrt(np.clip(1 - (xy[:, 0] / a) ** 2 - (xy[:, 1] / b) ** 2, 0, None))
    cap = np.column_stack([xy, z])
    verts = np.vstack([IBUG68_TEMPLATE_MM, cap]).astype(np.float64)
    n = len(verts)
    tri = Delaunay(verts[:, :2]).simplices.astype(np.int64)
    # smooth, local random fields (like anatomical variation): Gaussian bumps of 30 mm around 12 random centres
    centres = verts[rng.choice(n, 12, replace=False)]
    feats = np.exp(-((verts[:, None, :] - centres[None]) ** 2).sum(-1) / (2 * 30.0 ** 2))  # (n, 12)

    # rigid motions (3 translations, 3 small rotations) and scale: like a Procrustes-aligned PCA model,
    # the random bases are made orthogonal to them so that shape cannot imitate pose
    centred = verts - verts.mean(0)
    rigid = [np.tile(np.eye(3)[i], (n, 1)).reshape(-1) for i in range(3)]
    rigid += [np.cross(np.eye(3)[i], centred).reshape(-1) for i in range(3)]
    rigid.append(centred.reshape(-1))
    q, _ = np.linalg.qr(np.stack(rigid, axis=1))

    def basis(k: int, std_mm: float, region: np.ndarray | None = None) -> np.ndarray:
        """``k`` components with RMS displacements decaying from ``std_mm`` like a PCA spectrum."""
        cols = []
        for i in range(k):
            field = feats @ rng.normal(size=(feats.shape[1], 3))  # (n, 3)
            if region is not None:
                field = field * region[:, None]
            f = field.reshape(-1)
            f = f - q @ (q.T @ f)
            f *= (std_mm / (1.0 + i / 2.0)) / np.sqrt((f ** 2).mean() * 3)
            cols.append(f)
        return np.stack(cols, axis=1)

    bs = basis(n_shape, 4.0)
    bs[:, 0] = (centred * 0.03).reshape(-1)  # component 0: overall size, 3 % per standard deviation
    mouth = np.exp(-((verts[:, 1] + 45.0) ** 2 + verts[:, 0] ** 2) / (2 * 25.0 ** 2))
    be = basis(n_expression, 3.0, mouth)
    colour_mean = np.full((n, 3), 0.6)
    return MorphableModel(
        name="synthetic",
        shape=LinearBlock(verts, bs, np.ones(n_shape)),
        expression=LinearBlock(np.zeros((n, 3)), be, np.ones(n_expression)),
        colour=LinearBlock(colour_mean, np.zeros((3 * n, 2)), np.ones(2)),
        triangles=tri,
        landmarks={"ibug68": np.arange(68)},
    )
