"""A real Prometheus (Debian's `prometheus`) scrapes a running `auditor serve` and loads the shipped alert rules;
the test reads the findings and the cycle metrics back through Prometheus's HTTP API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from tests.daemon.support import (
    REPO,
    Served,
    example_org,
    free_port,
    http_get,
    require_binary,
    wait_until,
    write_config,
)


def query(base: str, expr: str) -> list[dict[str, Any]]:
    status, body, _ = http_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "success", doc
    return list(doc["data"]["result"])


def value(base: str, expr: str) -> float | None:
    result = query(base, expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_findings_and_cycle_metrics(tmp_path: Path) -> None:
    prometheus = require_binary("prometheus")
    example_org(tmp_path)
    cfg = write_config(tmp_path / "config.yaml", schedule={"interval_seconds": 2, "jitter_seconds": 0})
    with Served(cfg) as served:
        first = served.wait_event(lambda e: e.get("event") == "cycle", 60, "the first cycle")
        port = free_port()
        prom_cfg = tmp_path / "prometheus.yml"
        prom_cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(REPO / "deploy" / "prometheus" / "alerts.yaml")],
            "scrape_configs": [{
                "job_name": "drift-auditor",
                "static_configs": [{"targets": [f"127.0.0.1:{served.port}"]}],
            }],
        }))
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [prometheus, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            def ready() -> bool:
                try:
                    return http_get(f"{base}/-/ready", timeout=2)[0] == 200
                except OSError:
                    assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                    return False

            wait_until(ready, 60, "Prometheus to start")
            wait_until(lambda: value(base, 'up{job="drift-auditor"}') == 1, 60, "the first scrape")
            # The findings, as Prometheus stored them, add up to what the cycle logged.
            total = wait_until(lambda: value(base, "sum(auditor_findings)"), 30, "auditor_findings")
            assert total == first["findings"]
            by_severity = {r["metric"]["severity"]: float(r["value"][1])
                           for r in query(base, "sum by (severity) (auditor_findings)")}
            assert by_severity == {k: float(v) for k, v in first["by_severity"].items()}
            # Cycles keep running on the schedule: the counter and the duration histogram grow.
            wait_until(lambda: (value(base, 'auditor_cycles_total{outcome="success"}') or 0) >= 2, 60,
                       "a second scheduled cycle")
            count = value(base, 'auditor_cycle_duration_seconds_count{stage="collect_evaluate"}')
            assert count is not None and count >= 1
            p90 = value(base, 'histogram_quantile(0.9, sum by (le) (auditor_cycle_duration_seconds_bucket'
                              '{stage="record"}))')
            assert p90 is not None and p90 > 0
            last = value(base, "auditor_last_success_timestamp_seconds")
            assert last is not None and 0 < last <= time.time()
            assert value(base, "auditor_up") == 1 and value(base, "auditor_rules_loaded") == float(
                served.events[0]["rules"])
            # The shipped alert rules load and evaluate against real data without errors.
            def rules_evaluated() -> list[dict[str, Any]] | None:
                groups = json.loads(http_get(f"{base}/api/v1/rules")[1])["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

            rules = wait_until(rules_evaluated, 30, "the alert rules to be evaluated")
            assert [r["name"] for r in rules if r["health"] != "ok"] == []
            assert {r["name"] for r in rules} >= {"AuditorDown", "AuditorNewHighSeverityFinding", "AuditorDataStale"}
            # Nothing says the auditor is down while it is up.
            firing = {r["name"] for r in rules if r["state"] == "firing"}
            assert not firing & {"AuditorDown", "AuditorMetricsMissing", "AuditorCollectionErrors"}

            # Every dashboard query runs against the real data; the state and health panels show something
            # (rates need two scrapes that saw the counters grow).
            wait_until(lambda: (value(base, "sum(rate(auditor_cycle_duration_seconds_count[1m]))") or 0) > 0, 60,
                       "cycle counters to grow between scrapes")
            dashboard = json.loads((REPO / "deploy" / "grafana" / "drift-auditor.json").read_text())
            results = {}
            for panel in dashboard["panels"]:
                for target in panel.get("targets", []):
                    expr = target["expr"]
                    for var, val in (("$__rate_interval", "1m"), ("$__range", "10m"), ("$project", ".*"),
                                     ("$severity", ".*"), ("$scope", ".*")):
                        expr = expr.replace(var, val)
                    results.setdefault(panel["title"], []).extend(query(base, expr))
            for title in ("Open critical findings", "Open findings by severity", "Open findings by rule",
                          "Data age", "Auditors up", "Data freshness", "Assets in the snapshot",
                          "Cycle duration by stage (p90)", "Errors and cycle outcomes"):
                assert results[title], f"dashboard panel {title!r} shows no data"
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()
