"""deploy/grafana/drift-auditor.json: a dashboard an operator can import: a datasource variable, project and
severity filters, the panels the issue asks for, every query valid PromQL (promtool) over metrics the daemon
really exports, and only bounded labels."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon.support import REPO, promql_metric_names, require_binary, scrape_metric_names

DASHBOARD = REPO / "deploy" / "grafana" / "drift-auditor.json"
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d", "$project": ".*",
                     "$severity": ".*", "$scope": ".*"}
BOUNDED_LABELS = {"rule", "severity", "asset_type", "mode", "outcome", "stage", "change", "source", "code",
                  "exemption", "kind", "le", "project", "sink"}  # sink: the configured notification sinks


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def substitute(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr.replace('"$1"', ""), f"unknown variable in {expr}"
    return expr


def test_variables_datasource_project_and_severity() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["project"]["includeAll"] and variables["project"]["allValue"] == ".*"
    assert "label_values(" in variables["project"]["definition"]
    assert variables["severity"]["includeAll"]
    assert set(variables["severity"]["query"].split(",")) == {"critical", "high", "medium", "low", "info"}


def test_every_query_uses_the_datasource_variable_and_the_project_filter() -> None:
    for p in panels():
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert 'project=~"$project"' in t["expr"], p["title"]
            assert 'scope=~"$scope"' in t["expr"], p["title"]


def test_a_scope_variable_and_a_link_to_the_report() -> None:
    """Sharded auditors label every series by scope: the dashboard filters by it, and links to /report."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    scope = variables["scope"]
    assert scope["definition"] == "label_values(auditor_up, scope)" and scope["includeAll"]
    assert scope["allValue"] == ".*"  # one unsharded auditor has no scope label: All still matches it
    assert variables["report_url"]["type"] == "textbox"
    assert variables["report_url"]["query"].endswith("/report")
    (link,) = dashboard()["links"]
    assert link["url"] == "${report_url}" and "/report" in link["title"]


@pytest.mark.parametrize(
    ("title", "metric"),
    [
        ("Open findings by severity", "auditor_findings"),
        ("Open findings by rule", "auditor_findings"),
        ("New vs resolved findings", "auditor_drift_events_total"),
        ("Cycle duration by stage (p90)", "auditor_cycle_duration_seconds_bucket"),
        ("Data freshness", "auditor_snapshot_age_seconds"),
        ("Errors and cycle outcomes", "auditor_source_errors_total"),
        # A receiver that is down hides drift: the queue's age and what it dropped are on the dashboard too.
        ("Oldest notification waiting", "auditor_notifications_oldest_age_seconds"),
        ("Notifications queued, delivered and dropped", "auditor_notifications_total"),
    ],
)
def test_the_panels_the_issue_asks_for(title: str, metric: str) -> None:
    by_title = {p["title"]: p for p in panels()}
    assert metric in " ".join(t["expr"] for t in by_title[title]["targets"])


def test_severity_filter_applies_to_findings_and_drift() -> None:
    for title, expr in exprs():
        if re.search(r"auditor_(findings|drift_events_total)\{", expr) and "severity=\"" not in expr:
            assert 'severity=~"$severity"' in expr, title


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = [{"record": f"dashboard:query_{i}", "expr": substitute(e)} for i, (_, e) in enumerate(exprs())]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_queries_read_only_metrics_the_daemon_exports(tmp_path: Path) -> None:
    exported = scrape_metric_names(tmp_path)
    for title, expr in exprs():
        used = promql_metric_names(expr)
        assert used and used <= exported, f"{title}: {sorted(used - exported)} not exported"


def test_queries_group_only_by_bounded_labels() -> None:
    for title, expr in exprs():
        # `without (instance, pod)` drops labels (one value per scope out of its replicas); `by` keeps them.
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            labels = {x.strip() for x in group.split(",") if x.strip()}
            assert labels <= BOUNDED_LABELS, f"{title}: {labels - BOUNDED_LABELS}"


def test_replicas_of_one_scope_are_counted_once() -> None:
    """Two replicas audit the same scope: findings, assets and drift are taken once per scope before summing."""
    for title, expr in exprs():
        for metric in ("auditor_findings", "auditor_assets", "auditor_plan_changes", "auditor_drift_events_total",
                       "auditor_remediations_total", "auditor_notifications_total"):
            for m in re.finditer(rf"\b{metric}\{{", expr):
                before = expr[: m.start()]
                assert re.search(r"max without \(instance, pod\) \((increase\()?$", before), f"{title}: {expr}"
