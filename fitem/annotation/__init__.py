"""Data-set annotation at scale: ``fitem annotate`` — parallel, resumable and crash-safe.

>>> from fitem.annotation import annotate, read_manifest
>>> summary = annotate("faces/", "annotations/", n_jobs=2)     # doctest: +SKIP
>>> print(summary.table())                                       # doctest: +SKIP

See :func:`annotate` for the behaviour and :mod:`fitem.annotation.manifest` for the output folder.
"""
from __future__ import annotations

from fitem.annotation.inputs import IMAGE_EXTENSIONS, InputItem, collect_inputs
from fitem.annotation.manifest import (
    MANIFEST_FILE,
    RESULTS_DIR,
    RUN_FILE,
    iter_manifest,
    read_manifest,
    read_run,
    result_is_complete,
)
from fitem.annotation.runner import BACKENDS, AnnotateInterrupted, AnnotateSummary, annotate
from fitem.annotation.worker import FitFailedError, SkipImage, fit_image

__all__ = [
    "BACKENDS",
    "IMAGE_EXTENSIONS",
    "MANIFEST_FILE",
    "RESULTS_DIR",
    "RUN_FILE",
    "AnnotateInterrupted",
    "AnnotateSummary",
    "FitFailedError",
    "InputItem",
    "SkipImage",
    "annotate",
    "collect_inputs",
    "fit_image",
    "iter_manifest",
    "read_manifest",
    "read_run",
    "result_is_complete",
]
