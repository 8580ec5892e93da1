"""Rule selection (`--rule`, `--skip-rule`, `--min-severity`), `--framework` control tables, and tables without a
terminal (a pipe, `kubectl exec` without -t): full ids, nothing cut."""

from __future__ import annotations

import json
import re
from pathlib import Path

from auditor.evaluate.compliance import FRAMEWORKS
from auditor.evaluate.rulebook import load_rules
from tests.cli.test_scan import INFERENCE, assert_clean_error, auditor


def _rules_of(proc_stdout: str) -> set[str]:
    return {f["rule"] for f in json.loads(proc_stdout)["findings"]}


def test_rule_globs_select_and_skip() -> None:
    proc = auditor("scan", "--source", "examples/org", "--format", "json", "--rule", "iam-*",
                   "--skip-rule", "iam-no-public-members", "--fail-on", "never")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rules = _rules_of(proc.stdout)
    assert rules and all(r.startswith("iam-") for r in rules)
    assert "iam-no-public-members" not in rules
    assert doc["summary"]["rules"] == sum(1 for r in load_rules() if r.id.startswith("iam-")) - 1


def test_min_severity_keeps_rules_at_or_above() -> None:
    proc = auditor("scan", "--source", "examples/org", "--format", "json", "--min-severity", "critical",
                   "--fail-on", "never")
    assert proc.returncode == 0, proc.stderr
    sev = {f["severity"] for f in json.loads(proc.stdout)["findings"]}
    assert sev == {"critical"}


def test_a_selection_matching_nothing_is_refused() -> None:
    assert_clean_error(auditor("scan", "--source", "examples/org", "--rule", "iam-no-such-rule"),
                       "--rule iam-no-such-rule", "matches no loaded rule")
    assert_clean_error(auditor("scan", "--source", "examples/org", "--rule", "iam-*", "--skip-rule", "iam-*"),
                       "leaves no rule")


def test_framework_table_judges_each_control() -> None:
    proc = auditor("scan", "--source", "examples/org", "--source", "examples/k8s", "--cluster", INFERENCE,
                   "--framework", "cis-gcp", "--format", "json", "--fail-on", "never")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    controls = {c["control"]: c for c in doc["compliance"]["controls"]}
    assert set(controls) == set(FRAMEWORKS["cis-gcp"].controls)
    # 5.1: public buckets in the example organization; 1.8 has no rule here, so it is never shown as passed
    assert controls["5.1"]["status"] == "fail" and controls["5.1"]["findings"] >= 1
    assert "iam-no-public-members" in controls["5.1"]["rules"]
    assert controls["1.8"]["status"] == "no rule"
    # only rules mapped to the framework ran
    assert all(r.startswith("iam-") for r in _rules_of(proc.stdout))

    table = auditor("scan", "--source", "examples/org", "--framework", "cis-gcp", "--fail-on", "never")
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith("5.1 "))
    assert re.match(r"^5\.1\s+fail\s+Ensure that Cloud Storage bucket", line)


def test_a_control_passes_when_its_rule_finds_nothing(tmp_path: Path) -> None:
    clean = tmp_path / "clean.ndjson"
    clean.write_text(json.dumps({
        "name": "//storage.googleapis.com/private", "asset_type": "storage.googleapis.com/Bucket",
        "ancestors": ["projects/1", "organizations/2"],
        "iam_policy": {"bindings": [{"role": "roles/storage.objectViewer", "members": ["group:a@example.com"]}]},
    }) + "\n")
    proc = auditor("scan", "--source", str(clean), "--framework", "cis-gcp", "--rule", "iam-no-public-members",
                   "--format", "json")
    assert proc.returncode == 0, proc.stderr
    controls = {c["control"]: c["status"] for c in json.loads(proc.stdout)["compliance"]["controls"]}
    assert controls["5.1"] == "pass" and controls["7.1"] == "pass"
    assert controls["1.4"] == "no rule"  # its rule was not selected


def test_piped_table_keeps_whole_ids_and_rule_names() -> None:
    proc = auditor("scan", "--source", "examples/org", "--source", "examples/k8s", "--cluster", INFERENCE,
                   "--fail-on", "never")
    assert proc.returncode == 0
    full = json.loads(auditor("scan", "--source", "examples/org", "--source", "examples/k8s", "--cluster",
                              INFERENCE, "--format", "json").stdout)
    lines = proc.stdout.splitlines()
    assert not any(ch in proc.stdout for ch in "│┃━…"), "no box drawing or ellipsis when piped"
    for f in full["findings"]:
        row = next((ln for ln in lines if ln.startswith(f["id"][:12] + " ")), None)
        assert row is not None, f["id"]
        assert f" {f['rule']} " in row and f["asset"].removeprefix("//") in row and f["message"] in row
