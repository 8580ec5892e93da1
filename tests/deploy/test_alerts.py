"""deploy/prometheus/alerts.yaml: promtool accepts it, its unit tests pass and cover every alert both ways,
every alert says what to do, and every metric it reads is one the daemon really exports."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon.support import REPO, promql_metric_names, require_binary, scrape_metric_names

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yaml"
# Series that Prometheus itself makes for every target.
PROMETHEUS_SERIES = {"up"}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_checks_the_rule_file() -> None:
    promtool = require_binary("promtool")
    proc = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    proc = subprocess.run([promtool, "test", "rules", TESTS.name], capture_output=True, text=True, timeout=120,
                          cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    doc = yaml.safe_load(TESTS.read_text(encoding="utf-8"))
    assert doc["rule_files"] == [ALERTS.name]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - fired == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_says_what_happened_and_what_to_do(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    for key in ("summary", "description", "runbook"):
        assert len(rule["annotations"].get(key, "").strip()) > 20 if key != "summary" else rule["annotations"][key]


RUNBOOKS = REPO / "docs" / "operations" / "runbooks.md"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_links_its_runbook_section_and_the_report(rule: dict[str, Any]) -> None:
    page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
    assert page == "docs/operations/runbooks.md" and anchor == rule["alert"].lower()
    # MkDocs' heading anchors: the heading text, lower-cased.
    headings = {line[3:].strip().lower() for line in RUNBOOKS.read_text(encoding="utf-8").splitlines()
                if line.startswith("## ")}
    assert anchor in headings, f"no section for {rule['alert']} in {RUNBOOKS.name}"
    assert rule["annotations"]["report_url"].endswith("/report")


def test_alerts_read_only_metrics_the_daemon_exports(tmp_path: Path) -> None:
    exported = scrape_metric_names(tmp_path)
    for rule in alert_rules():
        used = promql_metric_names(rule["expr"])
        assert used, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert used - exported - PROMETHEUS_SERIES == set(), f"{rule['alert']} reads metrics nobody exports"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_each_runbook_shows_the_expression_its_alert_evaluates(rule: dict[str, Any]) -> None:
    text = RUNBOOKS.read_text(encoding="utf-8")
    section = text.split(f"\n## {rule['alert']}\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0].strip() for b in section.split("```promql\n")[1:]]
    assert blocks == [rule["expr"].strip()], f"the runbook of {rule['alert']} shows another expression"
