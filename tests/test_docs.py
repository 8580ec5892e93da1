"""The documentation: the MkDocs site builds with --strict, its generated pages match the registry and rules/, every
alert has its runbook anchor, and the README stays a three-minute read that starts with the two commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from auditor.docs import render
from tests.conftest import REPO

README_MAX_BYTES = 15 * 1024


def test_generated_reference_pages_are_current(tmp_path: Path) -> None:
    # Rendered by a process of its own: a test module that registers a check of its own (tests/hostile) may have
    # been imported into this one, and its check is no shipped check.
    subprocess.run([sys.executable, "-m", "auditor.docs", str(tmp_path)], check=True, cwd=REPO, capture_output=True)
    for rel in render():
        committed = (REPO / "docs" / rel).read_text(encoding="utf-8")
        assert committed == (tmp_path / rel).read_text(encoding="utf-8"), (
            f"docs/{rel} is stale: run `python -m auditor.docs docs`"
        )


def test_site_builds_strictly_with_a_runbook_anchor_per_alert(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs, "mkdocs is a dev dependency"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (tmp_path / "site" / "operations" / "runbooks" / "index.html").read_text(encoding="utf-8")
    rules = [r for f in sorted((REPO / "deploy" / "prometheus").glob("*.y*ml")) if "test" not in f.name
             for g in (yaml.safe_load(f.read_text()) or {}).get("groups", []) for r in g["rules"] if "alert" in r]
    alerts = [r["alert"] for r in rules]
    assert alerts
    missing = [a for a in alerts if f'id="{a.lower()}"' not in page]
    assert not missing, f"docs/operations/runbooks.md needs a section (## Name) for: {', '.join(missing)}"
    urls = {(r.get("annotations") or {}).get("runbook_url") for r in rules}
    for url in urls - {None}:
        anchor = url.rsplit("#", 1)[-1]
        assert f'id="{anchor}"' in page, f"runbook_url {url} points at no section"


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    readme = (REPO / "README.md").read_bytes()
    assert len(readme) < README_MAX_BYTES, f"README.md is {len(readme)} bytes; move detail into docs/"
    top = readme.decode()[:3000]
    assert "make demo" in top and "make test" in top
    text = readme.decode()
    for must in ("gcloud auth application-default login", "cai://", "Forseti", "Cloud Custodian",
                 "Config Validator", "Prowler"):
        assert must in text, must
    # links into the docs site point at pages that exist
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / target).exists(), target
