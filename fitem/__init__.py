"""fitem: fit a 3D Morphable Model to one photograph and segment what occludes the face.

>>> import fitem
>>> result = fitem.fit("photo.jpg")          # doctest: +SKIP
>>> result.mask, result.params.shape          # doctest: +SKIP
>>> fitem.annotate("photos/", "annotations/", n_jobs=2)   # doctest: +SKIP
>>> fitem.segment("photo.jpg", net="net.pt").mask        # doctest: +SKIP

See README.md for the command line and the models.
"""
from __future__ import annotations

__version__ = "0.1.0"

from fitem.api import fit  # noqa: E402
from fitem.annotation import annotate  # noqa: E402
from fitem.config import FitConfig  # noqa: E402
from fitem.errors import FitemError, NoFaceError  # noqa: E402
from fitem.models import MorphableModel, load_model  # noqa: E402
from fitem.params import FaceParams  # noqa: E402
from fitem.result import FitResult, FitStatus  # noqa: E402
from fitem.segnet.infer import segment  # noqa: E402

__all__ = [
    "__version__",
    "FaceParams",
    "FitConfig",
    "FitResult",
    "FitStatus",
    "FitemError",
    "MorphableModel",
    "NoFaceError",
    "annotate",
    "fit",
    "load_model",
    "segment",
]
