"""Morphable models: the model type, file loaders and the built-in demo model."""
from fitem.models.morphable import LinearBlock, ModelTensors, MorphableModel
from fitem.models.registry import load_model

__all__ = ["LinearBlock", "ModelTensors", "MorphableModel", "load_model"]
