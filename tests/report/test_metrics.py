"""The Prometheus collector: exact values from the state store, bounded labels, exemption expiries, drift
counters that start at zero, remediation metrics, and an exposition promtool accepts."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest

from auditor.evaluate.rulebook import load_rules
from auditor.model import Finding, Mode, Severity, finding_id
from auditor.report.metrics import (
    METRIC_NAMES,
    AuditorCollector,
    StageHistogram,
    build_view,
    make_registry,
    plan_change_counts,
)
from auditor.state import CycleInput, Store
from tests.daemon.support import require_binary

RULES = """
- id: public
  check: iam.forbidden_members
  severity: critical
  params: {members: [allUsers]}
  exemptions:
    - {resource: "//storage.googleapis.com/site", reason: web, owner: web, ticket: SEC-1, expires: 2030-01-10}
    - {resource: "//storage.googleapis.com/docs", reason: docs, owner: web, ticket: SEC-2, expires: 2030-01-01}
    - {resource: "//storage.googleapis.com/docs2", reason: docs, owner: web, ticket: SEC-2, expires: 2030-02-01}
    - {resource: "//storage.googleapis.com/forever", reason: assets, owner: web}
- id: owners
  check: iam.banned_roles
  severity: high
  params: {roles: [roles/owner]}
"""


def finding(rule: str, asset: str, sev: str, atype: str = "storage.googleapis.com/Bucket") -> Finding:
    return Finding(finding_id(rule, asset, ""), rule, "iam.forbidden_members", Severity(sev), Mode.dryrun, asset,
                   atype, "m")


def setup(tmp_path: Path) -> tuple[Store, list, Path]:  # type: ignore[type-arg]
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    rules = load_rules([path])
    store = Store(tmp_path / "s.db")
    return store, rules, path


def collect(collector: AuditorCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in collector.collect():
        out.setdefault(fam.name, {})
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_values_come_from_the_store_with_bounded_labels(tmp_path: Path) -> None:
    store, rules, _ = setup(tmp_path)
    fs = [finding("public", "//storage.googleapis.com/a", "critical"), finding("public", "//storage.googleapis.com/b",
          "critical"), finding("owners", "//cloudresourcemanager.googleapis.com/projects/1", "high",
                               "cloudresourcemanager.googleapis.com/Project")]
    store.record_cycle(CycleInput(100, 101, "success", fs, assets_by_type={"storage.googleapis.com/Bucket": 7},
                                  sources=[{"source": "org", "complete": True, "data_at": 90.0}]))
    view = build_view(store, rules, ["org"])
    got = collect(AuditorCollector(lambda: view, StageHistogram(), clock=lambda: 1000.0))
    assert got["auditor_findings"] == {
        (("asset_type", "storage.googleapis.com/Bucket"), ("mode", "dryrun"), ("rule", "public"),
         ("severity", "critical")): 2,
        (("asset_type", "cloudresourcemanager.googleapis.com/Project"), ("mode", "dryrun"), ("rule", "owners"),
         ("severity", "high")): 1,
    }
    assert got["auditor_assets"] == {(("asset_type", "storage.googleapis.com/Bucket"),): 7}
    assert got["auditor_snapshot_age_seconds"] == {(): 910.0}
    assert got["auditor_last_success_timestamp_seconds"] == {(): 101.0}
    assert got["auditor_rules_loaded"] == {(): 2}
    # No asset name in any label value.
    for series in got.values():
        for labels in series:
            assert not any(v.startswith("//") for _, v in labels)
    store.close()


def test_drift_counters_exist_at_zero_for_every_rule_before_any_cycle(tmp_path: Path) -> None:
    store, rules, _ = setup(tmp_path)
    got = collect(AuditorCollector(lambda: build_view(store, rules, ["org"]), StageHistogram()))
    assert got["auditor_drift_events_total"] == {
        (("change", c), ("rule", r), ("severity", s)): 0.0
        for r, s in (("public", "critical"), ("owners", "high")) for c in ("new", "resolved")
    }
    assert got["auditor_cycles_total"] == {(("outcome", o),): 0.0 for o in ("success", "partial", "failed")}
    assert got["auditor_last_success_timestamp_seconds"] == {(): 0.0}
    assert got["auditor_snapshot_age_seconds"] == {}  # no data yet: no age to claim
    store.close()


def test_exemptions_and_time_left(tmp_path: Path) -> None:
    store, rules, _ = setup(tmp_path)
    now = datetime(2030, 1, 5, 12, tzinfo=UTC).timestamp()
    got = collect(AuditorCollector(lambda: build_view(store, rules, []), StageHistogram(), clock=lambda: now))
    assert got["auditor_exemptions"] == {(("rule", "public"),): 4}
    day = 86400.0
    # An exemption applies through its last day: it expires at the next midnight UTC. A ticket used twice in a
    # rule cannot name one exemption, so those are named by their position.
    assert got["auditor_exemption_expiry_seconds"] == {
        (("exemption", "SEC-1"), ("rule", "public")): 5 * day + day / 2,
        (("exemption", "#1"), ("rule", "public")): -3 * day - day / 2,
        (("exemption", "#2"), ("rule", "public")): 27 * day + day / 2,
    }
    store.close()


def test_histogram_remediation_and_plan_metrics_pass_promtool(tmp_path: Path) -> None:
    store, rules, _ = setup(tmp_path)
    store.bump("remediations_total", {"rule": "public", "kind": "iam.remove_member", "outcome": "applied"}, 3)
    store.bump("remediations_total", {"rule": "public", "kind": "iam.remove_member", "outcome": "failed"})
    plan = {"changes": [
        {"rules": ["public"], "edits": [{"kind": "iam.remove_member", "rules": ["public"]},
                                        {"kind": "iam.remove_member", "rules": ["public"]}]},
        {"rules": ["owners"], "edits": [{"kind": "iam.remove_binding", "rules": ["owners", "public"]}]},
    ]}
    counts = plan_change_counts(plan)
    assert counts == [("owners", "iam.remove_binding", 1), ("public", "iam.remove_binding", 1),
                      ("public", "iam.remove_member", 2)]
    hist = StageHistogram()
    for seconds in (0.01, 0.2, 0.2, 7.0):
        hist.observe("collect_evaluate", seconds)
    collector = AuditorCollector(lambda: build_view(store, rules, [], counts), hist)
    got = collect(collector)
    assert got["auditor_remediations_total"][
        (("kind", "iam.remove_member"), ("outcome", "failed"), ("rule", "public"))] == 1
    assert got["auditor_plan_changes"][(("kind", "iam.remove_member"), ("rule", "public"))] == 2
    buckets = got["auditor_cycle_duration_seconds_bucket"]
    assert buckets[(("le", "0.05"), ("stage", "collect_evaluate"))] == 1
    assert buckets[(("le", "0.25"), ("stage", "collect_evaluate"))] == 3
    assert buckets[(("le", "10.0"), ("stage", "collect_evaluate"))] == 4
    assert buckets[(("le", "+Inf"), ("stage", "collect_evaluate"))] == 4
    assert got["auditor_cycle_duration_seconds_sum"][(("stage", "collect_evaluate"),)] == pytest.approx(7.41)
    text = generate_latest(make_registry(collector))
    typed = {line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE")}
    assert set(METRIC_NAMES) <= typed
    promtool = require_binary("promtool")
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store.close()


def test_a_shard_labels_every_series_with_its_scope(tmp_path: Path) -> None:
    store, rules, _ = setup(tmp_path)
    store.record_cycle(CycleInput(100, 101, "success", [finding("public", "//storage.googleapis.com/a", "critical")],
                                  assets_by_type={"storage.googleapis.com/Bucket": 1},
                                  sources=[{"source": "org", "complete": True, "data_at": 90.0}]))
    view = build_view(store, rules, ["org"])
    plain = collect(AuditorCollector(lambda: view, StageHistogram(), clock=lambda: 1000.0))
    scoped = collect(AuditorCollector(lambda: view, StageHistogram(), clock=lambda: 1000.0,
                                      const_labels={"scope": "folders/42"}))
    assert set(plain) == set(scoped)
    for name, series in plain.items():
        assert {tuple(sorted((*labels, ("scope", "folders/42")))) for labels in series} == set(scoped[name]), name
    text = generate_latest(make_registry(AuditorCollector(lambda: view, StageHistogram(),
                                                          const_labels={"scope": "folders/42"}))).decode()
    assert 'auditor_findings{asset_type="storage.googleapis.com/Bucket",mode="dryrun",rule="public",' \
           'scope="folders/42",severity="critical"} 1.0' in text
    store.close()


def test_a_rule_the_cycle_could_not_evaluate_is_zero_in_auditor_rule_evaluated(tmp_path: Path) -> None:
    """The example organization without its Organization asset (an export of one folder, say): the external members
    rule has no domain to compare with. It is 0 in auditor_rule_evaluated, the others 1, and promtool accepts it."""
    from auditor.cycle import Auditor
    from auditor.settings import load_settings
    from tests.daemon.support import example_org, write_config

    org, _ = example_org(tmp_path)
    for f in org.glob("*.ndjson"):
        lines = f.read_text().splitlines()
        kept = [line for line in lines if "cloudresourcemanager.googleapis.com/Organization" not in line]
        f.write_text("".join(line + "\n" for line in kept))
    settings = load_settings(write_config(tmp_path / "config.yaml"))
    auditor = Auditor(settings, Store(settings.state_path))
    before = collect(AuditorCollector(lambda: auditor.published.view, StageHistogram()))
    assert before.get("auditor_rule_evaluated", {}) == {}  # no cycle yet: nothing is claimed
    out = auditor.run_cycle()
    assert out.result is not None
    assert [(n.rule_id, "no Organization asset" in n.reason) for n in out.result.evaluation.not_evaluated] == [
        ("iam-no-external-members", True)
    ]
    collector = AuditorCollector(lambda: auditor.published.view, auditor.histogram)
    evaluated = collect(collector)["auditor_rule_evaluated"]
    assert evaluated[(("rule", "iam-no-external-members"),)] == 0
    assert evaluated[(("rule", "iam-no-public-members"),)] == 1
    assert len(evaluated) == len(auditor.rules)
    promtool = require_binary("promtool")
    text = generate_latest(make_registry(collector))
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    auditor.store.close()
