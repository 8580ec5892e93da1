"""Report formats on the example organization, checked with what others wrote: SARIF against the OASIS 2.1.0
schema, JUnit read by junitparser, CSV read back by the csv module; all agree with the JSON report, and a report
spilled to disk says the same as one held in memory."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from junitparser import Error, Failure, JUnitXml

from auditor.cli import cli
from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_rules
from auditor.report.formats import CSV_COLUMNS, StreamedReport, format_names
from auditor.scan import ScanResult, run_scan
from tests.conftest import DATA, EXAMPLES, REPO

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
CLUSTER = "projects/ml-platform-prod/locations/us-central1/clusters/inference"
SARIF_SCHEMA = json.loads((DATA / "specs" / "sarif-schema-2.1.0.json").read_text())
REPORT_SCHEMA = json.loads((REPO / "auditor/report/schemas/scan-report.schema.json").read_text())
EXEMPTION = """
- id: exempted-public-bucket
  check: iam.forbidden_members
  severity: critical
  description: Nothing is public, but for the model cards site.
  params: {members: [allUsers]}
  labels: {team: web}
  exemptions:
    - {resource: "//storage.googleapis.com/helix-model-cards-site", reason: public model cards, owner: web-team,
       ticket: SEC-1, expires: 2099-01-01}
"""


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rules")
    for f in (REPO / "rules").glob("*.yaml"):
        (d / f.name).write_text(f.read_text())
    (d / "exempted.yaml").write_text(EXEMPTION)
    return d


def scan_report(
    fmt: str, rules_dir: Path, *, budget: int | None = None, partial: bool = False
) -> tuple[bytes, ScanResult]:
    rules = load_rules([rules_dir])
    report = StreamedReport(fmt, rules, budget)
    result = run_scan([str(EXAMPLES / "org"), str(EXAMPLES / "k8s")], rules, SourceOptions(cluster=CLUSTER),
                      on_finding=report.add, now=NOW)
    if partial:
        result.sources[0].fail("compute.googleapis.com/SecurityPolicy", "HTTP 403 from the API")
    out = io.BytesIO()
    report.write(out, result)
    return out.getvalue(), result


@pytest.fixture(scope="module")
def json_report(rules_dir: Path) -> dict[str, Any]:
    body, result = scan_report("json", rules_dir)
    assert result.findings == []  # streamed: the result kept none of them
    doc: dict[str, Any] = json.loads(body)
    return doc


def test_json_report_has_the_documented_shape_and_the_rule_facts(json_report: dict[str, Any]) -> None:
    jsonschema.validate(json_report, REPORT_SCHEMA)
    findings = json_report["findings"]
    assert json_report["summary"]["findings"] == sum(1 for f in findings if not f["exempted"]) > 10
    bucket = next(f for f in findings if f["rule"] == "iam-no-public-members"
                  and f["asset"] == "//storage.googleapis.com/helix-open-datasets-mirror")
    assert bucket["project"] == "projects/401000000003"
    assert bucket["ancestry"].startswith("organizations/") and bucket["ancestry"].endswith("/projects/401000000003")
    assert bucket["rationale"].startswith("allUsers and allAuthenticatedUsers")
    assert bucket["remedy"]["kind"] == "iam.remove_member" and bucket["remedy"]["text"]
    manual = next(f for f in findings if f["rule"] == "exempted-public-bucket")
    assert manual["remedy"]["kind"] is None and manual["remedy"]["text"]
    assert manual["labels"] == {"team": "web"}
    exempted = [f for f in findings if f["exempted"]]
    assert [f["exemption"]["ticket"] for f in exempted] == ["SEC-1"]
    # worst first, then by rule id
    ranks = ["critical", "high", "medium", "low", "info"]
    order = [(ranks.index(f["severity"]), f["rule"]) for f in findings]
    assert order == sorted(order)


def test_spilled_report_equals_report_held_in_memory(rules_dir: Path) -> None:
    for fmt in format_names():
        held, _ = scan_report(fmt, rules_dir)
        spilled, _ = scan_report(fmt, rules_dir, budget=200)  # every few findings go to the temporary file
        assert held == spilled, fmt


def test_ndjson_is_the_json_findings_one_per_line(rules_dir: Path, json_report: dict[str, Any]) -> None:
    body, _ = scan_report("ndjson", rules_dir)
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines == json_report["findings"]


def test_csv_round_trips(rules_dir: Path, json_report: dict[str, Any]) -> None:
    body, _ = scan_report("csv", rules_dir)
    rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(json_report["findings"])
    for row, f in zip(rows, json_report["findings"], strict=True):
        for col in ("id", "rule", "severity", "mode", "check", "asset", "asset_type", "ancestry", "message"):
            assert row[col] == f[col]
        assert row["project"] == (f["project"] or "")
        assert json.loads(row["details"]) == f["details"]
        assert (row["exempted"] == "true") is f["exempted"]
        assert row["remediation"] == (f["remedy"]["kind"] or "")
        if f["exempted"]:
            assert (row["exemption_owner"], row["exemption_expires"]) == ("web-team", "2099-01-01")


def test_sarif_is_valid_2_1_0_with_a_rule_per_baseline_rule(rules_dir: Path, json_report: dict[str, Any]) -> None:
    body, _ = scan_report("sarif", rules_dir)
    doc = json.loads(body)
    jsonschema.validate(doc, SARIF_SCHEMA)
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    loaded = load_rules([rules_dir])
    assert sorted(r["id"] for r in rules) == sorted(r.id for r in loaded)
    public = next(r for r in rules if r["id"] == "iam-no-public-members")
    assert public["defaultConfiguration"]["level"] == "error"
    assert public["properties"]["security-severity"] == "9.5"
    assert public["fullDescription"]["text"].startswith("allUsers and allAuthenticatedUsers")
    assert public["properties"]["remediation"] == "iam.remove_member"
    labelled = next(r for r in rules if r["id"] == "exempted-public-bucket")
    assert "team:web" in labelled["properties"]["tags"] and labelled["properties"]["labels"] == {"team": "web"}
    results = run["results"]
    assert [r["partialFingerprints"]["findingId/v1"] for r in results] == [f["id"] for f in json_report["findings"]]
    for r in results:
        assert rules[r["ruleIndex"]]["id"] == r["ruleId"]
        loc = r["locations"][0]["logicalLocations"][0]
        assert loc["kind"] == "resource" and loc["fullyQualifiedName"].startswith("//")
    levels = {r["properties"]["severity"]: r["level"] for r in results}
    assert levels["critical"] == "error" and levels["medium"] == "warning" and levels["low"] == "note"
    suppressed = [r for r in results if "suppressions" in r]
    assert len(suppressed) == 1 and "public model cards" in suppressed[0]["suppressions"][0]["justification"]
    assert run["invocations"][0]["executionSuccessful"] is True


def test_junit_has_a_case_per_rule_and_a_failure_per_open_finding(rules_dir: Path,
                                                                   json_report: dict[str, Any]) -> None:
    body, _ = scan_report("junit", rules_dir)
    xml = JUnitXml.fromstring(body.decode())
    suite = next(iter(xml))
    cases = {case.name: case for case in suite}
    assert set(cases) == {r.id for r in load_rules([rules_dir])}
    open_by_rule: dict[str, int] = {}
    for f in json_report["findings"]:
        if not f["exempted"]:
            open_by_rule[f["rule"]] = open_by_rule.get(f["rule"], 0) + 1
    for name, case in cases.items():
        failures = [r for r in case.result if isinstance(r, Failure)]
        assert len(failures) == open_by_rule.get(name, 0), name
    # the exempted finding is no failure, but is listed in the case's output
    case = cases["exempted-public-bucket"]
    assert not any("helix-model-cards-site" in (r.message or "") for r in case.result)
    assert "helix-model-cards-site" in (cases["exempted-public-bucket"].system_out or "")
    assert suite.failures == sum(1 for n in cases if open_by_rule.get(n)) and suite.tests == len(cases)


def test_partial_snapshot_is_an_error_in_junit_and_sarif(rules_dir: Path) -> None:
    body, _ = scan_report("junit", rules_dir, partial=True)
    suite = next(iter(JUnitXml.fromstring(body.decode())))
    snapshot = next(c for c in suite if c.name == "snapshot")
    assert isinstance(snapshot.result[0], Error) and "HTTP 403" in (snapshot.result[0].text or "")
    body, _ = scan_report("sarif", rules_dir, partial=True)
    doc = json.loads(body)
    jsonschema.validate(doc, SARIF_SCHEMA)
    invocation = doc["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    assert any("HTTP 403" in n["message"]["text"] for n in invocation["toolExecutionNotifications"])


@pytest.mark.parametrize("fmt", format_names())
def test_scan_command_writes_every_format(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"report.{fmt}"
    runner = CliRunner()
    res = runner.invoke(cli, ["scan", "--source", str(EXAMPLES / "org"), "--format", fmt, "-o", str(out)])
    assert res.exit_code == 1, res.output  # the example has findings
    assert out.stat().st_size > 1000
    stdout = runner.invoke(cli, ["scan", "--source", str(EXAMPLES / "org"), "--format", fmt])
    assert stdout.exit_code == 1
    if fmt in ("json", "sarif"):
        assert json.loads(stdout.stdout_bytes)["version"] in (1, "2.1.0")
    assert stdout.stdout_bytes.count(b"\n") == out.read_bytes().count(b"\n")
