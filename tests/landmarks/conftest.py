"""Shared fixtures for the landmark tests: one MediaPipe detector for the whole session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mp_detector():
    from fitem.landmarks import get_detector

    return get_detector("mediapipe")
