"""`auditor scan` and `auditor rules` end to end, as an operator runs them: output, exit codes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import EXAMPLES, REPO

SCHEMA = json.loads((REPO / "auditor/report/schemas/scan-report.schema.json").read_text())
INFERENCE = "projects/ml-platform-prod/locations/us-central1/clusters/inference"


def auditor(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "auditor", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def assert_clean_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for frag in fragments:
        assert frag in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def example_report() -> dict:
    proc = auditor("scan", "--source", "examples/org", "--source", "examples/k8s", "--cluster", INFERENCE,
                   "--format", "json")
    assert proc.returncode == 1, proc.stderr  # the example has findings at or above `low`
    return json.loads(proc.stdout)


def test_json_report_matches_the_documented_shape(example_report: dict) -> None:
    jsonschema.validate(example_report, SCHEMA)
    assert example_report["complete"] is True
    summary = example_report["summary"]
    assert summary["findings"] == sum(1 for f in example_report["findings"] if not f["exempted"])
    assert summary["findings"] == sum(summary["by_severity"].values())
    assert summary["assets"] == sum(s["assets"] for s in example_report["sources"])


def test_example_has_findings_in_all_three_domains(example_report: dict) -> None:
    types = {f["asset_type"] for f in example_report["findings"]}
    assert any(t.startswith("cloudresourcemanager.googleapis.com/") or t.startswith("storage.") for t in types)
    assert "compute.googleapis.com/SecurityPolicy" in types
    assert any(t.startswith("rbac.authorization.k8s.io/") for t in types)
    # the kubectl list was read too (its objects are named under --cluster; see tests/collect/test_files.py)
    k8s = next(s for s in example_report["sources"] if s["source"] == "examples/k8s")
    assert k8s["assets"] > 0 and k8s["complete"]


def test_fail_on_thresholds(tmp_path: Path) -> None:
    assert auditor("scan", "--source", "examples/org", "--fail-on", "never").returncode == 0
    assert auditor("scan", "--source", "examples/org", "--fail-on", "critical").returncode == 1
    clean = tmp_path / "clean.ndjson"
    clean.write_text(json.dumps({"name": "//storage.googleapis.com/ok", "asset_type": "storage.googleapis.com/Bucket",
                                 "iam_policy": {"bindings": [{"role": "roles/storage.objectViewer",
                                                              "members": ["group:ml@helix-ml.example"]}]}}) + "\n")
    # One bucket and no Organization: the external members rule has no domain to compare with. That is not
    # "checked and clean": exit 3 with the reason, and 0 only when partial results are accepted.
    proc = auditor("scan", "--source", str(clean))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "1 assets" in proc.stdout and "0 findings" in proc.stdout
    assert "rule iam-no-external-members not evaluated: no Organization asset" in proc.stdout + proc.stderr
    proc = auditor("scan", "--source", str(clean), "--allow-partial")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_markdown_and_output_file(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    proc = auditor("scan", "--source", "examples/org", "--format", "markdown", "-o", str(out), "--fail-on", "never")
    assert proc.returncode == 0
    text = out.read_text()
    assert text.startswith("# Baseline audit")
    assert "## Critical" in text and "*Why:*" in text
    assert "findings" in proc.stderr  # the summary line goes to stderr when the report goes to a file


def test_malformed_line_is_skipped_counted_or_fatal_with_strict(tmp_path: Path) -> None:
    f = tmp_path / "export.ndjson"
    good = (EXAMPLES / "org" / "iam-policies.ndjson").read_text().splitlines()[:3]
    f.write_text("\n".join([good[0], '{"name": "//x", "asset_type": ', *good[1:]]) + "\n")
    proc = auditor("scan", "--source", str(f), "--format", "json", "--fail-on", "never")
    assert proc.returncode == 3, proc.stderr  # partial: never a clean exit
    assert auditor("scan", "--source", str(f), "--fail-on", "never", "--allow-partial").returncode == 0
    report = json.loads(proc.stdout)
    assert report["summary"]["skipped_records"] == 1
    assert report["complete"] is False
    assert f"{f}:2: malformed asset line" in proc.stderr
    assert_clean_error(auditor("scan", "--source", str(f), "--strict"), f"error: {f}:2: malformed asset line")
    assert_clean_error(auditor("scan", "--source", str(f), "--require-complete"), "error: partial snapshot")


def test_bad_rules_give_one_line_reasons(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: a\n    check: iam.nope\n    severity: high\n")
    proc = auditor("scan", "--source", "examples/org", "--rules", str(bad))
    assert_clean_error(proc, f"error: {bad}:3: rule a: unknown check 'iam.nope'", "known checks:")
    proc = auditor("rules", "validate", str(bad))
    assert_clean_error(proc, "unknown check 'iam.nope'")
    dup = tmp_path / "dup"
    dup.mkdir()
    for n in ("a", "b"):
        (dup / f"{n}.yaml").write_text("- {id: same, check: iam.forbidden_members, severity: low, "
                                       "params: {members: [allUsers]}}\n")
    assert_clean_error(auditor("rules", "validate", str(dup)), "rule same: duplicate rule id")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert_clean_error(auditor("scan"), "no --source given")
    assert_clean_error(auditor("scan", "--source", str(tmp_path / "missing.json")), "no such file or folder")
    assert auditor("scan", "--source", "examples/org", "--format", "xml").returncode == 2
    for jobs in ("0", "-2", "many", ""):
        assert_clean_error(auditor("scan", "--source", "examples/org", "--jobs", jobs),
                           "neither a number of processes (1 or more) nor 'auto'")


def test_rules_list_validate_and_exemptions() -> None:
    proc = auditor("rules", "list", "--format", "json")
    assert proc.returncode == 0
    rows = json.loads(proc.stdout)
    assert {"id", "check", "severity", "mode", "description"} <= set(rows[0])
    assert auditor("rules", "validate", "rules").returncode == 0
    proc = auditor("rules", "list", "--exemptions", "--format", "json")
    assert proc.returncode == 0
    for row in json.loads(proc.stdout):
        assert {"rule", "resource", "reason", "owner", "days_left"} <= set(row)


def test_published_schema_is_current() -> None:
    proc = auditor("rules", "schema")
    assert proc.returncode == 0
    published = json.loads((REPO / "rules" / "schema.json").read_text())
    stale = "rules/schema.json is stale: run `auditor rules schema > rules/schema.json`"
    assert json.loads(proc.stdout) == published, stale
