"""``load_model``: one entry point for built-in names, files and model objects."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from fitem.errors import FitemError
from fitem.models.morphable import MorphableModel

__all__ = ["load_model"]

log = logging.getLogger(__name__)


def load_model(
    model: "str | Path | MorphableModel" = "demo",
    *,
    derive_landmarks: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> MorphableModel:
    """Load a morphable model by built-in name, file path, or pass one through.

    A model file without iBUG-68 landmark vertices (the Basel files, your own
    ``.npz``) gets them picked on a frontal render of its mean face
    (:func:`fitem.models.landmarks.ibug68_from_render`, logged at INFO level),
    once per model file: the picks are cached in the user cache folder, keyed
    by the model's checksum. If the picking fails the model still loads
    (with a warning) and :func:`fitem.fit` explains what to do.

    Args:
        model: ``"demo"`` (the built-in Gaussian-process demo model, built on
            first use and cached), a path to a BFM 2017 ``.h5``, BFM 2009
            ``01_MorphableModel.mat``, ``BFM_model_front.mat`` or fitem
            ``.npz``/``.h5`` file, or a :class:`MorphableModel` (returned as is,
            never changed).
        derive_landmarks: pick missing iBUG-68 landmarks as above; ``None``
            (default): yes, unless the environment variable
            ``FITEM_DERIVE_LANDMARKS`` is ``0``/``false``/``no``/``off``.
        cache_dir: fitem's cache folder for the demo model and the picked
            landmarks (default ``platformdirs.user_cache_dir("fitem")``).

    Raises:
        fitem.errors.ModelFileError: missing file or unknown layout.
        fitem.errors.ConfigError: ``FITEM_DERIVE_LANDMARKS`` holds an unknown value.

    Example:
        >>> model = load_model("model2017-1_face12_nomouth.h5")    # doctest: +SKIP
        >>> sorted(model.landmarks)                                # doctest: +SKIP
        ['bfm2017', 'ibug68']
    """
    if isinstance(model, MorphableModel):
        return model
    if isinstance(model, str) and model == "demo":
        from fitem.models.demo import demo_model

        return demo_model(cache_dir=cache_dir)
    from fitem.models.io import load_model_file
    from fitem.models.landmarks import DERIVATION_VERSION, cached_ibug68, derive_landmarks_enabled

    loaded = load_model_file(Path(model))
    if "ibug68" in loaded.landmarks or not derive_landmarks_enabled(derive_landmarks):
        return loaded
    try:
        indices = cached_ibug68(loaded, cache_dir=cache_dir)
    except FitemError as exc:
        log.warning("model %r (%s) has no iBUG-68 landmark vertices and picking them on a render failed: %s",
                    loaded.name, model, exc)
        return loaded
    log.info("model %r (%s) has no iBUG-68 landmark vertices: using vertices picked on a frontal render of "
             "its mean face (fitem.models.landmarks.ibug68_from_render)", loaded.name, model)
    with_ibug68 = loaded.with_landmarks("ibug68", indices)
    note = f"picked on a frontal render of the mean face (fitem.models.landmarks, v{DERIVATION_VERSION})"
    return dataclasses.replace(with_ibug68, metadata={**with_ibug68.metadata, "ibug68_landmarks": note})
