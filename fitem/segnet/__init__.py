"""Distilled occlusion segmentation: a small UNet trained on the per-image EM's masks.

- :mod:`fitem.segnet.net`: :class:`UNet` (3 = image or 6 = image + render channels),
  :class:`SegNet` (a net + its metadata), :func:`save_segnet` / :func:`load_segnet`.
- :mod:`fitem.segnet.data`: aligned crops and fit masks from a ``fitem annotate`` folder.
- :mod:`fitem.segnet.train`: :func:`distill` (training, validation, self-training rounds).
- :mod:`fitem.segnet.infer`: :func:`segment` (image → probability of visible face) and
  the crop-level prior that ``fitem.fit(image, segnet=...)`` uses.

Example:
    >>> from fitem.segnet import distill, segment                      # doctest: +SKIP
    >>> report = distill("annotations/", "net.pt", epochs=30)           # doctest: +SKIP
    >>> seg = segment("photo.jpg", net="net.pt")                        # doctest: +SKIP
    >>> fitem.fit("photo.jpg", segnet="net.pt")                         # doctest: +SKIP
"""
from __future__ import annotations

from fitem.segnet.data import AnnotationCrops, load_crops, read_annotation
from fitem.segnet.infer import PRIOR_LOGIT_CLIP, Segmentation, crop_probability, initial_render, prior_logit, segment
from fitem.segnet.net import INPUT_MODES, SegNet, UNet, load_segnet, save_segnet
from fitem.segnet.train import (
    DistillConfig,
    DistillReport,
    EpochRecord,
    SelfTrainingRound,
    compare_annotations,
    distill,
    train_net,
)

__all__ = [
    "INPUT_MODES",
    "PRIOR_LOGIT_CLIP",
    "AnnotationCrops",
    "DistillConfig",
    "DistillReport",
    "EpochRecord",
    "SegNet",
    "Segmentation",
    "SelfTrainingRound",
    "UNet",
    "compare_annotations",
    "crop_probability",
    "distill",
    "initial_render",
    "load_crops",
    "load_segnet",
    "prior_logit",
    "read_annotation",
    "save_segnet",
    "segment",
    "train_net",
]
