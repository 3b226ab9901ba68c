"""fitem: fit a 3D Morphable Model to one photograph and segment what occludes the face.

The public surface grows as the layers land; see README.md.
"""
from __future__ import annotations

__version__ = "0.1.0"

from fitem.errors import FitemError  # noqa: E402
from fitem.models import MorphableModel, load_model  # noqa: E402

__all__ = ["__version__", "FitemError", "MorphableModel", "load_model"]
