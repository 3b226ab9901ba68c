"""Fixtures shared by the end-to-end fit tests (``test_fit.py``, ``test_fit_gpu.py``).

A test module that defines its own ``model`` fixture (as ``tests/models/`` do) overrides this one.
"""
from __future__ import annotations

import pytest

from fitem.bench.synthetic import make_sample
from fitem.models import load_model


@pytest.fixture(scope="session")
def model():
    """The built-in demo model."""
    return load_model("demo")


@pytest.fixture(scope="session")
def scarf(model):
    """A synthetic render of the demo model with a scarf occluder and its exact ground truth."""
    return make_sample(model, 1200, occluder="scarf")
