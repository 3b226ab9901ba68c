"""Index mapping from MediaPipe's 478 face-mesh points to the 68 iBUG points.

``IBUG68_FROM_MEDIAPIPE[k]`` is the MediaPipe point used as iBUG point ``k``
(0-based iBUG numbering: 0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes,
48-67 mouth). iBUG numbers points from the image's left for a frontal face
(point 0 = the subject's right jaw), as MediaPipe does for its image-mirrored
point numbers.
"""
from __future__ import annotations

import numpy as np

__all__ = ["IBUG68_FROM_MEDIAPIPE"]

IBUG68_FROM_MEDIAPIPE = np.array(
    [
        # jaw 0-16
        162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
        # right brow 17-21, left brow 22-26
        71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
        # nose bridge 27-30, lower nose 31-35
        168, 197, 5, 4, 75, 97, 2, 326, 305,
        # right eye 36-41, left eye 42-47
        33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
        # outer lip 48-59, inner lip 60-67
        61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
    ],
    dtype=np.int64,
)
