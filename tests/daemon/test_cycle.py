"""Audit cycles on the example organization, in process: drift made to a copy of it shows up exactly in the store,
the metrics and the logs; failing and partial sources keep the last good values and age them."""

from __future__ import annotations

import io
import json
import multiprocessing
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import auditor.cycle as auditor_cycle
from auditor.cycle import Auditor, error_code, normalise_remediation
from auditor.errors import AuditorError
from auditor.evaluate.rulebook import load_rules
from auditor.logs import configure
from auditor.parallel import MIN_RANGE_BYTES
from auditor.report.metrics import AuditorCollector
from auditor.scan import run_scan
from auditor.settings import load_settings
from auditor.state import Store
from bench.generate import generate
from tests.daemon.support import PUBLIC_RULE, example_org, free_port, make_drift, write_config


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    configure("json", "info", stream=buf)
    yield buf
    configure("console", "warning")


def events(buf: io.StringIO, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, buf.getvalue().splitlines()) if e["event"] == name]


def samples(collector: AuditorCollector, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in collector.collect():
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_auditor(cfg: Path, clock: Clock | None = None) -> Auditor:
    settings = load_settings(cfg)
    return Auditor(settings, Store(settings.state_path), **({"clock": clock} if clock else {}))


def test_second_cycle_reports_exactly_the_drift_made(tmp_path: Path, logs: io.StringIO) -> None:
    org, k8s = example_org(tmp_path)
    cfg = write_config(tmp_path / "config.yaml")
    auditor = make_auditor(cfg)
    rules = load_rules()

    def scan() -> dict[str, Any]:
        return {f.id: f for f in run_scan([str(org), str(k8s)], rules, auditor.settings.sources_options()).findings}

    before = scan()

    first = auditor.run_cycle()
    assert first.outcome == "success" and first.recorded is not None
    # The first cycle is the baseline: every finding stored and counted, none of them drift.
    assert first.recorded.baseline and first.recorded.new_count == len(before) and first.recorded.drift == []
    assert {f.id for f in auditor.store.open_findings(include_exempted=True)} == set(before)
    drift = make_drift(org)
    after = scan()
    second = auditor.run_cycle()

    # What the store says changed is the set difference of the two snapshots, nothing more.
    assert second.outcome == "success" and second.recorded is not None
    new = {e.finding_id for e in second.recorded.new}
    resolved = {e.finding_id for e in second.recorded.resolved}
    assert new == set(after) - set(before) and new
    assert resolved == set(before) - set(after) and resolved
    assert {e.asset for e in second.recorded.new} == {drift.made_public}
    assert {e.asset for e in second.recorded.resolved} == {drift.made_private}
    assert PUBLIC_RULE in {e.rule for e in second.recorded.new} & {e.rule for e in second.recorded.resolved}
    stored = auditor.store.drift(second.cycle_id)
    assert {(e.change, e.finding_id) for e in stored} == {("new", i) for i in new} | {("resolved", i) for i in resolved}
    # Findings still open kept their first-seen time from the first cycle.
    kept = {f.id: f for f in auditor.store.open_findings()}
    assert set(kept) == set(after)
    first_end = auditor.store.cycles()[-1].ended_at
    assert {kept[i].first_seen for i in set(before) & set(after)} == {first_end}

    # The metrics: drift counters hold exactly the second cycle's events (the first one is the baseline);
    # findings are the new snapshot.
    assert first.recorded.baseline and not second.recorded.baseline
    collector = AuditorCollector(lambda: auditor.published.view, auditor.histogram)
    expected: Counter[tuple[tuple[str, str], ...]] = Counter()
    for e in second.recorded.drift:
        if not e.exempted:
            expected[(("change", e.change), ("rule", e.rule), ("severity", e.severity))] += 1
    drift_counts = samples(collector, "auditor_drift_events_total")
    assert {k: v for k, v in drift_counts.items() if v} == expected
    findings = samples(collector, "auditor_findings")
    assert sum(findings.values()) == sum(1 for f in after.values() if f.exempted is None)

    # The logs: one cycle event per cycle with counts and durations, one drift event per change.
    cycles = events(logs, "cycle")
    assert [(c["cycle"], c["new"], c["resolved"]) for c in cycles] == [
        (1, len(before), 0), (2, len(new), len(resolved))
    ]
    assert set(cycles[1]["durations"]) == {"collect_evaluate", "record", "report"}
    logged = {(e["change"], e["finding"], e["asset"]) for e in events(logs, "drift") if e["cycle"] == 2}
    assert logged == {(e.change, e.finding_id, e.asset) for e in second.recorded.drift}
    assert {a for _, _, a in logged} == {drift.made_public, drift.made_private}

    # The report shows the drift and the rule's rationale.
    html = auditor.published.report_html.decode()
    assert drift.made_public.removeprefix("//") in html and f"{len(new)} new" in html
    doc = json.loads(auditor.published.findings_json)
    assert {e["finding_id"] for e in doc["drift"]["events"]} == new | resolved
    auditor.store.close()


def test_restart_keeps_first_seen_and_reports_nothing_new(tmp_path: Path, logs: io.StringIO) -> None:
    example_org(tmp_path)
    cfg = write_config(tmp_path / "config.yaml")
    auditor = make_auditor(cfg)
    auditor.run_cycle()
    first_seen = {f.id: f.first_seen for f in auditor.store.open_findings()}
    exempted = sum(1 for f in auditor.store.open_findings() if f.exempted)
    # The baseline records no drift event: the report counts its findings from the cycle.
    assert f"whose {len(first_seen)} finding(s) were already there" in auditor.published.report_html.decode()
    auditor.store.close()

    again = make_auditor(cfg)
    # Before any cycle of the new process, the metrics already show the kept findings.
    collector = AuditorCollector(lambda: again.published.view, again.histogram)
    assert sum(samples(collector, "auditor_findings").values()) == len(first_seen)
    out = again.run_cycle()
    assert out.recorded is not None and out.recorded.drift == []
    assert {f.id: f.first_seen for f in again.store.open_findings()} == first_seen
    assert events(logs, "drift") == []  # the first cycle is a baseline, the second changed nothing
    assert [(e["cycle"], e["findings"], e["exempted"]) for e in events(logs, "baseline")] == [
        (1, len(first_seen), exempted)]
    again.store.close()


def test_a_source_that_disappears_keeps_the_last_good_numbers_and_ages_them(tmp_path: Path,
                                                                          logs: io.StringIO) -> None:
    org, k8s = example_org(tmp_path)
    policies = org / "iam-policies.ndjson"
    cfg = write_config(tmp_path / "config.yaml", sources=[str(policies), str(org / "resources.ndjson"), str(k8s)])
    clock = Clock(2_000_000_000.0)
    auditor = make_auditor(cfg, clock)
    assert auditor.run_cycle().outcome == "success"
    collector = AuditorCollector(lambda: auditor.published.view, auditor.histogram, clock=clock)
    findings = samples(collector, "auditor_findings")
    assets = samples(collector, "auditor_assets")
    last_success = samples(collector, "auditor_last_success_timestamp_seconds")[()]
    age = samples(collector, "auditor_snapshot_age_seconds")[()]
    assert findings and assets and last_success == clock.t

    policies.unlink()
    clock.t += 600
    out = auditor.run_cycle()
    assert out.outcome == "failed" and out.error is not None and str(policies) in out.error
    assert samples(collector, "auditor_findings") == findings
    assert samples(collector, "auditor_assets") == assets
    assert samples(collector, "auditor_last_success_timestamp_seconds")[()] == last_success
    assert samples(collector, "auditor_snapshot_age_seconds")[()] == age + 600
    assert samples(collector, "auditor_cycles_total") == {
        (("outcome", "success"),): 1, (("outcome", "partial"),): 0, (("outcome", "failed"),): 1
    }
    assert samples(collector, "auditor_source_errors_total") == {
        (("code", "unreadable"), ("source", str(policies))): 1
    }
    assert "The last cycle failed" in auditor.published.report_html.decode()
    assert events(logs, "cycle")[-1]["outcome"] == "failed"
    auditor.store.close()


def test_malformed_records_make_a_partial_cycle_that_resolves_nothing(tmp_path: Path, logs: io.StringIO) -> None:
    org, _ = example_org(tmp_path)
    cfg = write_config(tmp_path / "config.yaml")
    auditor = make_auditor(cfg)
    auditor.run_cycle()
    open_before = {f.id for f in auditor.store.open_findings()}
    drift = make_drift(org)  # a fix that a partial snapshot must not be trusted to show
    with (org / "iam-policies.ndjson").open("a") as fh:
        fh.write("{this is not json\n")
    out = auditor.run_cycle()
    assert out.outcome == "partial" and out.recorded is not None
    assert out.recorded.resolved == []
    assert {(e.change, e.asset) for e in out.recorded.drift} == {("new", drift.made_public)}
    stale = [f for f in auditor.store.open_findings() if f.stale]
    assert {f.asset for f in stale} == {drift.made_private}
    assert open_before <= {f.id for f in auditor.store.open_findings()}
    # The cycle event says how many are open now, stale ones included: the number the metrics show.
    assert events(logs, "cycle")[-1]["open"] == len(auditor.store.open_findings(include_exempted=False))
    collector = AuditorCollector(lambda: auditor.published.view, auditor.histogram)
    assert samples(collector, "auditor_cycles_total")[(("outcome", "partial"),)] == 1
    assert list(samples(collector, "auditor_source_errors_total")) == [
        (("code", "malformed"), ("source", str(org)))
    ]
    auditor.store.close()


def test_a_rule_that_could_not_run_keeps_its_findings_open(tmp_path: Path, logs: io.StringIO) -> None:
    """Without the Organization asset, iam-no-external-members has no domain to compare with: it is not evaluated,
    and its finding of the last cycle stays open (stale), never resolved; the other rules' findings are as before."""
    org, _ = example_org(tmp_path)
    auditor = make_auditor(write_config(tmp_path / "config.yaml"))
    auditor.run_cycle()
    rule = "iam-no-external-members"
    before = {f.id: f for f in auditor.store.open_findings()}
    external = {i for i, f in before.items() if f.rule == rule}
    assert external
    path = org / "resources.ndjson"
    organization = '"cloudresourcemanager.googleapis.com/Organization"'
    kept = [line for line in path.read_text().splitlines() if organization not in line]
    path.write_text("\n".join(kept) + "\n")
    out = auditor.run_cycle()
    assert out.outcome == "partial" and out.recorded is not None and out.result is not None
    assert [n.rule_id for n in out.result.not_evaluated] == [rule]
    assert out.recorded.drift == []  # nothing resolved: the rule said nothing
    now = {f.id: f for f in auditor.store.open_findings()}
    assert set(now) == set(before)
    assert {i for i, f in now.items() if f.stale} == external
    doc = json.loads(auditor.findings_json({"stale": ["true"]}))
    assert [f["id"] for f in doc["findings"]] == sorted(external)
    auditor.store.close()


def test_a_later_copy_read_second_takes_back_the_first_copys_findings(tmp_path: Path, logs: io.StringIO) -> None:
    """The same bucket in two files, public in the older copy read first: the staged findings of that copy are taken
    back (the cycle stays complete), and the store holds what the newer copy says."""

    def bucket(members: list[str], update_time: str) -> str:
        return json.dumps({
            "name": "//storage.googleapis.com/training-data", "asset_type": "storage.googleapis.com/Bucket",
            "iam_policy": {"bindings": [{"role": "roles/storage.objectViewer", "members": members}]},
            "ancestors": ["projects/1", "organizations/2"], "update_time": update_time,
        }) + "\n"

    export = tmp_path / "export"
    export.mkdir()
    (export / "1.ndjson").write_text(bucket(["allUsers", "user:a@x.example"], "2026-01-01T00:00:00Z"))
    (export / "2.ndjson").write_text(bucket(["user:a@x.example"], "2026-03-01T00:00:00Z"))
    auditor = make_auditor(write_config(tmp_path / "config.yaml", sources=[str(export)]))
    out = auditor.run_cycle()
    assert out.result is not None and out.result.sources[0].duplicate_count == 1
    assert "the later copy replaces the first" in out.result.sources[0].duplicates[0]
    assert out.result.incomplete_types() == {}  # (partial only because this snapshot holds no Organization)
    assert [f for f in auditor.store.open_findings() if f.rule == PUBLIC_RULE] == []
    assert out.result.summary()["findings"] == len(auditor.store.open_findings(include_exempted=False))
    auditor.store.close()


def test_a_live_source_against_a_dead_endpoint_is_partial_and_never_fresh(tmp_path: Path,
                                                                          logs: io.StringIO) -> None:
    _, k8s = example_org(tmp_path)
    cai = "cai://organizations/583920174615"
    cfg = write_config(
        tmp_path / "config.yaml", sources=[str(k8s), cai], gcp_endpoint=f"http://127.0.0.1:{free_port()}",
        source_options={"retry_attempts": 1},
    )
    auditor = make_auditor(cfg)
    out = auditor.run_cycle()
    assert out.outcome == "partial"
    collector = AuditorCollector(lambda: auditor.published.view, auditor.histogram)
    assert samples(collector, "auditor_source_errors_total") == {(("code", "unavailable"), ("source", cai)): 1}
    # No cycle has read everything: the last success is "never" and there is no data age to claim.
    assert samples(collector, "auditor_last_success_timestamp_seconds")[()] == 0
    assert samples(collector, "auditor_snapshot_age_seconds") == {}
    assert sum(samples(collector, "auditor_findings").values()) >= 1  # the Kubernetes findings are there
    auditor.store.close()


def test_a_rule_file_broken_after_start_fails_the_cycle_and_the_next_one_runs(tmp_path: Path,
                                                                              logs: io.StringIO) -> None:
    example_org(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"- {{id: {PUBLIC_RULE}, check: iam.forbidden_members, severity: critical, "
                     "params: {members: [allUsers]}}\n")
    cfg = write_config(tmp_path / "config.yaml", rules=[str(rules)])
    auditor = make_auditor(cfg)
    assert auditor.run_cycle().outcome == "success"
    rules.write_text("- {id: broken, check: no.such.check, severity: high}\n")
    out = auditor.run_cycle()
    assert out.outcome == "failed" and out.error is not None and "no.such.check" in out.error
    assert auditor.store.open_findings()  # kept
    # A rule problem is not a collection problem: no source error is counted, the sources' state is untouched.
    assert auditor.store.counters("source_errors_total") == []
    assert all(s.last_error is None for s in auditor.store.sources())
    rules.write_text(f"- {{id: {PUBLIC_RULE}, check: iam.forbidden_members, severity: critical, "
                     "params: {members: [allUsers]}}\n")
    assert auditor.run_cycle().outcome == "success"
    assert [c.outcome for c in auditor.store.cycles()] == ["success", "failed", "success"]
    auditor.store.close()


def test_remediation_step_publishes_the_pending_plan(tmp_path: Path, logs: io.StringIO) -> None:
    example_org(tmp_path)
    cfg = write_config(tmp_path / "config.yaml", remediation={"enabled": True})
    auditor = make_auditor(cfg)
    out = auditor.run_cycle()
    assert out.outcome == "success" and "remediate" in out.durations
    assert out.remediation is not None and out.remediation.plan is not None
    changes = out.remediation.plan["changes"]
    assert changes  # the example organization has findings of rules in dryrun mode with a remediation
    collector = AuditorCollector(lambda: auditor.published.view, auditor.histogram)
    planned = samples(collector, "auditor_plan_changes")
    edits = sum(len(e.get("rules") or c["rules"]) for c in changes for e in c["edits"])
    assert sum(planned.values()) == edits
    assert {dict(k)["rule"] for k in planned} <= {r.id for r in auditor.rules}
    assert "Planned fixes" in auditor.published.report_html.decode()
    assert json.loads(auditor.published.findings_json)["plan"]["id"] == out.remediation.plan["id"]
    auditor.store.close()


def test_remediation_enabled_without_the_step_still_audits(tmp_path: Path, logs: io.StringIO,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import auditor.cycle as cycle_module

    example_org(tmp_path)
    monkeypatch.setattr(cycle_module, "REMEDIATION_STEP", "not-installed")
    auditor = make_auditor(write_config(tmp_path / "config.yaml", remediation={"enabled": True}))
    out = auditor.run_cycle()
    assert out.outcome == "success" and out.remediation is None
    assert [e["reason"] for e in events(logs, "remediation_unavailable")] == [
        "no remediation step is installed"
    ]
    auditor.store.close()


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("403 Forbidden: caller lacks cloudasset.assets.listResource", "permission_denied"),
        ("RESOURCE_EXHAUSTED: quota", "resource_exhausted"),
        ("source /x: no such file or folder", "unreadable"),
        ("2 malformed record(s) skipped", "malformed"),
        ("read timed out", "deadline_exceeded"),
        ("something else", "incomplete"),
    ],
)
def test_error_codes_are_bounded(reason: str, code: str) -> None:
    assert error_code(reason) == code


def test_remediation_results_in_several_shapes_are_understood() -> None:
    plan = {"changes": [{"rules": ["r"], "edits": [{"kind": "iam.remove_member", "rules": ["r"]}]}]}
    a = normalise_remediation({"counts": {("r", "iam.remove_member", "applied"): 2}, "plan": plan, "html": "<p>x</p>"})
    b = normalise_remediation(
        type("R", (), {"counts": [{"rule": "r", "kind": "iam.remove_member", "outcome": "applied", "count": 2}],
                       "plan": plan, "html": "<p>x</p>", "markdown": None})()
    )
    assert a.counts == b.counts == [("r", "iam.remove_member", "applied", 2)]
    assert a.plan == b.plan == plan and a.html == b.html == "<p>x</p>"


def test_an_unexpected_error_is_logged_counted_and_the_next_cycle_runs(tmp_path: Path, logs: io.StringIO) -> None:
    example_org(tmp_path)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "public.yaml").write_text(f"- {{id: {PUBLIC_RULE}, check: iam.forbidden_members, severity: critical, "
                                       "params: {members: [allUsers]}}\n")
    auditor = make_auditor(write_config(tmp_path / "config.yaml", rules=[str(rules)]))
    assert auditor.run_cycle().outcome == "success"
    (rules / "binary.yaml").write_bytes(b"\xff\xfe\x00 not text")  # a file nobody meant to put there
    out = auditor.run_cycle()
    assert out.outcome == "failed" and out.error is not None and "binary.yaml:1: not UTF-8" in out.error
    (rules / "binary.yaml").unlink()
    assert auditor.run_cycle().outcome == "success"

    def bug(*_a: Any, **_k: Any) -> Any:  # what a bug in a stage looks like: not an AuditorError
        raise ZeroDivisionError("division by zero")

    real = auditor_cycle.run_scan
    auditor_cycle.run_scan = bug  # type: ignore[assignment]
    try:
        out = auditor.run_cycle()
    finally:
        auditor_cycle.run_scan = real  # type: ignore[assignment]
    assert out.outcome == "failed" and out.error is not None and "ZeroDivisionError" in out.error
    errors = events(logs, "cycle_error")
    assert errors and "Traceback" in errors[-1]["exception"]  # a bug-like failure keeps its traceback in the log
    assert auditor.run_cycle().outcome == "success"
    collector = AuditorCollector(lambda: auditor.published.view, auditor.histogram)
    assert samples(collector, "auditor_cycles_total")[(("outcome", "failed"),)] == 2
    auditor.store.close()
    # The same file at start refuses to start, with one line naming it.
    (rules / "binary.yaml").write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(AuditorError, match=r"binary\.yaml:1: not UTF-8"):
        make_auditor(write_config(tmp_path / "config.yaml", rules=[str(rules)]))


def test_cron_schedule_with_jitter(tmp_path: Path) -> None:
    from apscheduler.triggers.cron import CronTrigger

    from auditor.daemon import Daemon

    example_org(tmp_path)
    cfg = write_config(tmp_path / "config.yaml",
                       schedule={"cron": "*/15 * * * *", "jitter_seconds": 20, "timezone": "Europe/Paris"})
    auditor = make_auditor(cfg)
    trigger = Daemon(auditor.settings, auditor).trigger()
    assert isinstance(trigger, CronTrigger) and trigger.jitter == 20
    start = datetime(2030, 1, 1, 10, 1, tzinfo=UTC)
    fire = trigger.get_next_fire_time(None, start)
    # The next quarter hour (cron minutes are the same in Paris and UTC), plus up to 20 s of jitter.
    expected = datetime(2030, 1, 1, 10, 15, tzinfo=UTC)
    assert fire is not None and expected <= fire <= expected + timedelta(seconds=20)
    hourly = write_config(tmp_path / "config.yaml", schedule={"cron": "0 9 * * *", "jitter_seconds": 0,
                                                              "timezone": "Europe/Paris"})
    auditor.settings = load_settings(hourly)
    daily = Daemon(auditor.settings, auditor).trigger().get_next_fire_time(None, start)
    assert daily == datetime(2030, 1, 2, 8, 0, tzinfo=UTC)  # 09:00 in Paris is 08:00 UTC in winter
    auditor.store.close()


def test_a_cycle_with_jobs_reads_a_large_export_in_worker_processes(tmp_path: Path, logs: io.StringIO) -> None:
    """`jobs: 2` in the daemon: workers come from a fork server (the daemon runs threads), and the cycle finds
    exactly what one process finds."""
    export = tmp_path / "org" / "org.ndjson"
    export.parent.mkdir()
    generate(14000, export, seed=11)
    assert export.stat().st_size > 2 * MIN_RANGE_BYTES  # large enough to be split
    one = run_scan([str(export)], load_rules(), load_settings(write_config(tmp_path / "c1.yaml")).sources_options())
    cfg = write_config(tmp_path / "config.yaml", sources=[str(export)], jobs=2)
    auditor = make_auditor(cfg)
    assert auditor.settings.jobs == 2
    out = auditor.run_cycle()
    assert out.outcome == "success" and out.result is not None
    # The findings went to the store as they were made; the cycle kept their counts, not them.
    assert out.result.findings == [] and one.findings
    assert sorted(f.id for f in auditor.store.open_findings()) == sorted(f.id for f in one.findings)
    assert out.result.summary()["findings"] == one.summary()["findings"]
    assert out.result.summary()["by_severity"] == one.summary()["by_severity"]
    assert multiprocessing.active_children() == []  # the workers are gone once the cycle ends


def test_jobs_setting_takes_a_number_or_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`jobs: auto` (one per usable core, resolved by the scan) from the file or AUDITOR_JOBS; nothing else."""
    assert load_settings(write_config(tmp_path / "a.yaml", jobs="auto")).jobs == "auto"
    assert load_settings(write_config(tmp_path / "b.yaml", jobs=3)).jobs == 3
    monkeypatch.setenv("AUDITOR_JOBS", "auto")
    assert load_settings(write_config(tmp_path / "c.yaml")).jobs == "auto"
    monkeypatch.setenv("AUDITOR_JOBS", "2")
    assert load_settings(write_config(tmp_path / "c.yaml")).jobs == 2
    monkeypatch.delenv("AUDITOR_JOBS")
    for bad in (0, 65, "many"):
        with pytest.raises(AuditorError, match="jobs"):
            load_settings(write_config(tmp_path / "d.yaml", jobs=bad))
