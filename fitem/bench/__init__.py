"""Synthetic occlusion benchmark: a seeded data generator with exact masks, and the metrics.

- :mod:`fitem.bench.synthetic`: :func:`make_sample`, :func:`make_dataset`,
  :func:`save_dataset`, :func:`load_dataset` — faces rendered from a morphable
  model over textured backgrounds, with glasses, scarves, hands and objects
  whose pixel masks are known exactly.
- :mod:`fitem.bench.metrics`: FOCUS-style segmentation scores (inside the face
  region or a fitted face ellipse), NoW-style 3D errors, landmark NME and
  photometric RMSE.

Example:
    >>> from fitem.bench import make_sample, segmentation_scores, all_face_scores   # doctest: +SKIP
    >>> s = make_sample(fitem.load_model("demo"), 0, occluder="hand")                # doctest: +SKIP
    >>> all_face_scores(s.visible_face, s.face_region)["occluder_f1"]                 # doctest: +SKIP
    0.0
"""
from fitem.bench.metrics import (
    ErrorStats,
    Similarity,
    align_similarity,
    all_face_scores,
    face_ellipse,
    format_table,
    landmark_nme,
    photometric_rmse,
    point_to_surface_error,
    segmentation_scores,
    summarise,
    umeyama,
    vertex_error_same_topology,
)
from fitem.bench.synthetic import (
    OCCLUDER_CLASSES,
    SyntheticConfig,
    SyntheticSample,
    iter_dataset,
    load_dataset,
    make_dataset,
    make_sample,
    save_dataset,
)

__all__ = [
    "OCCLUDER_CLASSES",
    "SyntheticConfig",
    "SyntheticSample",
    "make_sample",
    "make_dataset",
    "iter_dataset",
    "save_dataset",
    "load_dataset",
    "segmentation_scores",
    "all_face_scores",
    "face_ellipse",
    "summarise",
    "format_table",
    "Similarity",
    "ErrorStats",
    "umeyama",
    "align_similarity",
    "point_to_surface_error",
    "vertex_error_same_topology",
    "landmark_nme",
    "photometric_rmse",
]
