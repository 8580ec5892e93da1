"""Fixtures of the remediation tests: the fake Google Cloud server, kmock with resourceVersion, rule files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.gcp import gcp_endpoint  # noqa: F401 - fixture
from tests.fakes.gcp_extra import fake_gcp  # noqa: F401 - fixture: the fake with bucket IAM
from tests.remediations.kube import kube  # noqa: F401 - fixture

ORG = "organizations/583920174615"


@pytest.fixture
def write_rules(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a rule file from YAML text and return its path."""
    n = 0

    def write(text: str) -> Path:
        nonlocal n
        n += 1
        path = tmp_path / f"rules-{n}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write
