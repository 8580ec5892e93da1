"""Fixtures for the live-source tests: the fake Google Cloud server, kmock, and the example organization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DATA, EXAMPLES
from tests.fakes.gcp import fake_gcp, gcp_endpoint  # noqa: F401 - fixtures
from tests.fakes.kube import kube_api, kubeconfig  # noqa: F401 - fixtures


def _org_of(folder: Path) -> str:
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            if '"cloudresourcemanager.googleapis.com/Organization"' in line:
                return str(json.loads(line)["name"]).rsplit("/", 1)[-1]
    raise AssertionError(f"no Organization asset under {folder}")


@pytest.fixture(scope="session")
def example_org(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(folder of CAI export files, organization id): the bundled example organization, or else the shared
    forseti sample reduced to the assets under its organization (the fake serves only those for the org)."""
    folder = EXAMPLES / "org"
    if folder.is_dir() and any(folder.glob("*.ndjson")):
        return folder, _org_of(folder)
    src = DATA / "cai"
    org = _org_of(src)
    out = tmp_path_factory.mktemp("org")
    for f in sorted(src.iterdir()):
        lines = [x for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
        kept = [x for x in lines if f"organizations/{org}" in json.loads(x).get("ancestors", [f"organizations/{org}"])]
        (out / f.name).write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out, org
