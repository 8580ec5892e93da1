"""Fixtures shared by every test package: paths to the repository's data and the real public samples in tests/data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def public_data() -> Path:
    """Real public samples copied into the repository (tests/data/SOURCES.md says where each comes from)."""
    return DATA


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
