"""Fixtures shared by every test package: paths to the repository's data and the real public samples in tests/data."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis fails an example that runs longer than 200 ms by default: an assertion on wall-clock time, which a
# loaded machine (CI running the suite on two workers) breaks now and then. Examples are judged on what they give.
settings.register_profile("auditor", deadline=None)
settings.load_profile("auditor")

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


# A real PostgreSQL server for the state backends (one per session, a fresh database per test).
from tests.fakes.postgres import postgres_server, postgres_url  # noqa: E402, F401


@pytest.fixture(params=["sqlite", "postgresql"])
def state_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives, once on each backend: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return str(request.getfixturevalue("postgres_url"))
