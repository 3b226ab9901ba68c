"""``load_model``: one entry point for built-in names, files and model objects."""
from __future__ import annotations

from pathlib import Path

from fitem.models.morphable import MorphableModel

__all__ = ["load_model"]


def load_model(model: "str | Path | MorphableModel" = "demo") -> MorphableModel:
    """Load a morphable model by built-in name, file path, or pass one through.

    Args:
        model: ``"demo"`` (the built-in Gaussian-process demo model, built on
            first use and cached), a path to a BFM 2017 ``.h5``, BFM 2009
            ``01_MorphableModel.mat``, ``BFM_model_front.mat`` or fitem
            ``.npz``/``.h5`` file, or a :class:`MorphableModel` (returned as is).

    Raises:
        fitem.errors.ModelFileError: missing file or unknown layout.
    """
    if isinstance(model, MorphableModel):
        return model
    if isinstance(model, str) and model == "demo":
        from fitem.models.demo import demo_model

        return demo_model()
    from fitem.models.io import load_model_file

    return load_model_file(Path(model))
