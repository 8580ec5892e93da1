"""The state store: finding lifecycle, drift between cycles, stale findings of partial snapshots, restarts,
migrations and the shared file."""

from __future__ import annotations

import gc
import os
import sqlite3
import tracemalloc
from collections.abc import Iterable
from pathlib import Path

import msgspec
import pytest

from auditor.model import Exempted, Finding, Mode, Severity, finding_id
from auditor.state import (
    COMPONENT,
    MIGRATIONS,
    CycleInput,
    StateError,
    Store,
    migrate,
    open_database,
    state_target,
)
from auditor.state.db import PAGE_SIZE
from auditor.state.staging import prepare
from auditor.state.store import _SEVERITY_ORDER
from tests.fakes.postgres import PostgresServer

BUCKET = "storage.googleapis.com/Bucket"
PROJECT = "cloudresourcemanager.googleapis.com/Project"


def finding(rule: str, asset: str, atype: str = BUCKET, sev: str = "high", exempt: bool = False,
            ancestors: tuple[str, ...] = ()) -> Finding:
    return Finding(
        id=finding_id(rule, asset, "k"),
        rule=rule,
        check="iam.forbidden_members",
        severity=Severity(sev),
        mode=Mode.audit,
        asset=asset,
        asset_type=atype,
        message=f"{rule} on {asset}",
        exempted=Exempted("reason", "team", "SEC-1", None) if exempt else None,
        ancestors=ancestors,
    )


def cycle(at: float, findings: Iterable[Finding] | None, outcome: str = "success", **kw: object) -> CycleInput:
    return CycleInput(started_at=at, ended_at=at + 1, outcome=outcome, findings=findings, **kw)  # type: ignore[arg-type]


def test_drift_new_resolved_and_still_open(state_target: str) -> None:
    a, b, c = finding("r1", "//a"), finding("r1", "//b"), finding("r2", "//c", sev="critical")
    with Store(state_target) as store:
        first = store.record_cycle(cycle(100, [a, b]))
        # The baseline counts its findings and records no drift event (they were already there).
        assert (first.new_count, first.resolved_count, first.drift) == (2, 0, [])
        second = store.record_cycle(cycle(200, [b, c]))
        assert [(e.change, e.asset) for e in second.new] == [("new", "//c")]
        assert [(e.change, e.asset) for e in second.resolved] == [("resolved", "//a")]
        assert second.still_open == 1
        open_ = {f.asset: f for f in store.open_findings()}
        assert set(open_) == {"//b", "//c"}
        assert open_["//b"].first_seen == 101 and open_["//b"].last_seen == 201
        gone = store.finding(a.id)
        assert gone is not None and gone.resolved_at == 201
        # The drift of the last cycle is what the store kept, and the counters count it by rule/severity/change.
        last, events = store.last_drift()
        assert last is not None and last.id == second.cycle_id
        assert sorted((e.change, e.rule) for e in events) == [("new", "r2"), ("resolved", "r1")]
        # The first cycle is the baseline: only the second cycle's drift is counted.
        assert first.baseline and not second.baseline
        counters = {tuple(sorted(lb.items())): v for lb, v in store.counters("drift_events_total")}
        assert counters == {
            (("change", "resolved"), ("rule", "r1"), ("severity", "high")): 1,
            (("change", "new"), ("rule", "r2"), ("severity", "critical")): 1,
        }
        cycles = store.cycles()
        assert [(c.id, c.new, c.resolved, c.findings) for c in cycles] == [(2, 1, 1, 2), (1, 2, 0, 2)]


def test_the_baseline_is_the_first_cycle_that_records_findings(state_target: str) -> None:
    a = finding("r1", "//a")
    with Store(state_target) as store:
        failed = store.record_cycle(cycle(50, None, outcome="failed", error="x"))
        assert failed.drift == []
        first = store.record_cycle(cycle(100, [a]))
        assert first.baseline and (first.new_count, first.new_exempted, first.drift) == (1, 0, [])
        assert [c.baseline for c in store.cycles()] == [True, False]
        assert store.counters("drift_events_total") == []
        b = finding("r1", "//b")
        assert not store.record_cycle(cycle(200, [a, b])).baseline
        assert store.counters("drift_events_total") == [({"change": "new", "rule": "r1", "severity": "high"}, 1.0)]


def test_a_finding_that_comes_back_is_new_again_with_a_new_first_seen(state_target: str) -> None:
    a = finding("r1", "//a")
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a]))
        store.record_cycle(cycle(200, []))
        back = store.record_cycle(cycle(300, [a]))
        assert [e.asset for e in back.new] == ["//a"]
        f = store.finding(a.id)
        assert f is not None and f.resolved_at is None and f.first_seen == 301


def test_partial_snapshot_keeps_findings_of_unread_types_open_and_stale(state_target: str) -> None:
    bucket, project = finding("r1", "//bucket"), finding("r2", "//project", atype=PROJECT)
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [bucket, project], assets_by_type={BUCKET: 5, PROJECT: 3}))
        # Buckets could not be read: the bucket finding is not evidence of a fix. Projects were read: resolved.
        rec = store.record_cycle(
            cycle(200, [], outcome="partial", incomplete={BUCKET: "src: 403"}, assets_by_type={PROJECT: 2})
        )
        assert [e.asset for e in rec.resolved] == ["//project"] and rec.stale == 1
        open_ = store.open_findings()
        assert [(f.asset, f.stale) for f in open_] == [("//bucket", True)]
        # Asset counts: the unread type keeps its last good count, the read one is updated.
        assert store.asset_counts() == {BUCKET: 5, PROJECT: 2}
        # Seen again in a complete cycle: no longer stale, first seen unchanged, not new.
        rec = store.record_cycle(cycle(300, [bucket], assets_by_type={BUCKET: 5}))
        assert rec.new == [] and rec.stale == 0
        f = store.finding(bucket.id)
        assert f is not None and not f.stale and f.first_seen == 101


def test_every_type_incomplete_resolves_nothing(state_target: str) -> None:
    a, b = finding("r1", "//a"), finding("r2", "//b", atype=PROJECT)
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a, b], assets_by_type={BUCKET: 1, PROJECT: 1}))
        rec = store.record_cycle(cycle(200, [], outcome="partial", incomplete={"*": "src: 2 malformed records"}))
        assert rec.drift == [] and rec.stale == 2
        assert store.asset_counts() == {BUCKET: 1, PROJECT: 1}


def test_a_glob_of_unread_types_keeps_their_findings_open(state_target: str) -> None:
    """A source that failed on `storage.googleapis.com/*` says nothing about buckets: their findings stay open."""
    bucket, project = finding("r1", "//bucket"), finding("r2", "//project", atype=PROJECT)
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [bucket, project], assets_by_type={BUCKET: 5, PROJECT: 3}))
        rec = store.record_cycle(cycle(200, [], outcome="partial", incomplete={"storage.googleapis.com/*": "src: 503"},
                                       assets_by_type={PROJECT: 3}))
        assert [e.asset for e in rec.resolved] == ["//project"] and rec.stale == 1
        assert store.asset_counts() == {BUCKET: 5, PROJECT: 3}


def test_failed_cycle_changes_no_finding_and_is_counted(state_target: str) -> None:
    a = finding("r1", "//a")
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a], assets_by_type={BUCKET: 1}))
        rec = store.record_cycle(
            cycle(200, None, outcome="failed", error="source x: no such file", source_errors=[("x", "unreadable")])
        )
        assert rec.drift == []
        assert [f.asset for f in store.open_findings()] == ["//a"]
        assert store.asset_counts() == {BUCKET: 1}
        outcomes = {lb["outcome"]: v for lb, v in store.counters("cycles_total")}
        assert outcomes == {"success": 1, "failed": 1}
        assert store.counters("source_errors_total") == [({"code": "unreadable", "source": "x"}, 1.0)]
        last = store.last_cycle()
        assert last is not None and last.outcome == "failed" and last.error == "source x: no such file"
        assert last.findings == 1  # still open, kept from the last good cycle


def test_exempted_findings_are_tracked_but_not_counted_as_drift(state_target: str) -> None:
    a = finding("r1", "//a", exempt=True)
    with Store(state_target) as store:
        assert store.record_cycle(cycle(50, [])).baseline
        rec = store.record_cycle(cycle(100, [a]))
        assert [e.exempted for e in rec.new] == [True]
        assert store.counters("drift_events_total") == []
        assert store.finding_counts() == [("r1", "high", BUCKET, "audit", True, 1)]
        assert store.open_findings(include_exempted=False) == []


def test_an_exemption_ending_or_starting_is_drift_of_the_open_findings(state_target: str) -> None:
    exempt, plain = finding("r1", "//a", exempt=True), finding("r1", "//a")
    assert exempt.id == plain.id
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [exempt]))
        ended = store.record_cycle(cycle(200, [plain]))  # the exemption expired: the finding counts again
        assert [(e.change, e.exempted, e.message) for e in ended.drift] == [
            ("new", False, "exemption ended: r1 on //a")
        ]
        granted = store.record_cycle(cycle(300, [exempt]))
        assert [(e.change, e.message) for e in granted.drift] == [("resolved", "exempted (reason, team): r1 on //a")]
        counters = {(lb["change"]): v for lb, v in store.counters("drift_events_total")}
        assert counters == {"new": 1, "resolved": 1}
        f = store.finding(plain.id)
        assert f is not None and f.first_seen == 101 and f.resolved_at is None and f.exempted


def test_findings_of_a_removed_rule_are_retired_not_resolved(state_target: str) -> None:
    a, b = finding("r1", "//a"), finding("r2", "//b")
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a, b], rule_ids=frozenset({"r1", "r2"})))
        rec = store.record_cycle(cycle(200, [a], rule_ids=frozenset({"r1"})))
        assert rec.drift == [] and rec.retired == 1
        gone = store.finding(b.id)
        assert gone is not None and gone.resolved_at == 201
        assert [f.id for f in store.open_findings()] == [a.id]


def test_findings_of_a_rule_not_evaluated_are_carried_not_resolved(state_target: str) -> None:
    """A rule that could not run says nothing about its findings: they stay open (stale), with no drift; a rule that
    failed on one asset carries that asset's findings only."""
    a, b, c = finding("r1", "//a"), finding("r1", "//b"), finding("r2", "//c")
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a, b, c], rule_ids=frozenset({"r1", "r2"})))
        rec = store.record_cycle(cycle(200, [], outcome="partial", rule_ids=frozenset({"r1", "r2"}),
                                       not_evaluated=[("r1", "")]))
        assert [(e.change, e.asset) for e in rec.drift] == [("resolved", "//c")]
        assert rec.stale == 2 and rec.open == 2
        assert {(f.asset, f.stale, f.last_seen) for f in store.open_findings()} == {("//a", True, 101),
                                                                                      ("//b", True, 101)}
        # An evaluation error of r1 on //a: only //a's finding is carried; //b was evaluated and is gone.
        rec = store.record_cycle(cycle(300, [], outcome="partial", rule_ids=frozenset({"r1", "r2"}),
                                       not_evaluated=[("r1", "//a")]))
        assert [(e.change, e.asset) for e in rec.drift] == [("resolved", "//b")]
        assert [(f.asset, f.stale) for f in store.open_findings()] == [("//a", True)]
        # Evaluated again and seen: open, no longer stale, not new.
        rec = store.record_cycle(cycle(400, [a], rule_ids=frozenset({"r1", "r2"})))
        assert rec.drift == [] and rec.stale == 0
        f = store.finding(a.id)
        assert f is not None and f.first_seen == 101 and not f.stale


def test_findings_keep_their_project_and_ancestry(state_target: str) -> None:
    where = ("projects/123", "folders/45", "organizations/6")
    a, b = finding("r1", "//a", ancestors=where), finding("r1", "//b")
    with Store(state_target) as store:
        store.record_cycle(cycle(50, []))  # the baseline
        rec = store.record_cycle(cycle(100, [a, b]))
        events = {e.asset: e for e in rec.drift}
        assert (events["//a"].project, events["//a"].ancestry) == ("projects/123",
                                                                     "organizations/6/folders/45/projects/123")
        assert (events["//b"].project, events["//b"].ancestry) == (None, "")
        f = store.finding(a.id)
        assert f is not None and f.project == "projects/123"
        assert f.to_dict(200)["ancestry"] == "organizations/6/folders/45/projects/123"
        # The project moved to another folder: the row follows (no drift), and its resolution event says where.
        moved = msgspec.structs.replace(a, ancestors=("projects/123", "folders/78", "organizations/6"))
        rec = store.record_cycle(cycle(200, [moved, b]))
        assert rec.drift == [] and rec.changed == 1
        rec = store.record_cycle(cycle(300, [b]))
        assert [(e.asset, e.ancestry) for e in rec.resolved] == [("//a", "organizations/6/folders/78/projects/123")]


def test_restart_keeps_first_seen_and_reports_nothing_new(state_target: str) -> None:
    a, b = finding("r1", "//a"), finding("r1", "//b")
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a, b]))
    with Store(state_target) as store:
        rec = store.record_cycle(cycle(500, [a, b]))
        assert rec.drift == []
        assert {f.first_seen for f in store.open_findings()} == {101}


def test_sqlite_file_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store(path).close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Store(path) as store:  # the WAL of a first big cycle is cut back once checkpointed
        assert store.db.execute("PRAGMA journal_size_limit").fetchone()[0] == 64 << 20
        # large sorts (a first cycle's index builds) may use helper threads: one per core, up to 4
        assert store.db.execute("PRAGMA threads").fetchone()[0] == min(4, os.cpu_count() or 1) >= 1
    check.close()


def test_keeps_tables_of_other_components(state_target: str) -> None:
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [finding("r1", "//a")]))
    other = open_database(state_target)
    # Another component (the remediation journal) versions its own tables in the same database.
    assert migrate(other, "remediations.journal", ("CREATE TABLE journal (id INTEGER PRIMARY KEY, note TEXT)",)) == 1
    other.execute("INSERT INTO journal (id, note) VALUES (1, 'applied')")
    other.close()
    with Store(state_target) as store:
        assert [f.asset for f in store.open_findings()] == ["//a"]
        assert [tuple(r) for r in store.db.rows("SELECT note FROM journal")] == [("applied",)]
        assert store.schema_versions() == {COMPONENT: len(MIGRATIONS), "remediations.journal": 1}


def test_a_database_of_the_first_schema_is_upgraded_in_place(state_target: str) -> None:
    old = open_database(state_target)
    assert migrate(old, COMPONENT, MIGRATIONS[:1]) == 1
    old.execute("INSERT INTO cycles (started_at, ended_at, outcome, complete) VALUES (1, 2, 'success', 1)")
    old.close()
    with Store(state_target) as store:
        assert [(c.id, c.baseline) for c in store.cycles()] == [(1, False)]  # kept, with the new column's default
        rec = store.record_cycle(cycle(100, [finding("r1", "//a")]))
        assert not rec.baseline  # a cycle existed before: this one is drift
        assert store.schema_versions()[COMPONENT] == len(MIGRATIONS)


def test_findings_of_the_second_schema_get_their_ancestry_on_the_next_cycle(state_target: str) -> None:
    a = finding("r1", "//a", ancestors=("projects/9", "organizations/1"))
    old = open_database(state_target)
    migrate(old, COMPONENT, MIGRATIONS[:2])
    old.execute(
        "INSERT INTO findings (id, rule, check_name, severity, mode, asset, asset_type, message, details, first_seen, "
        "last_seen) VALUES (?, 'r1', 'iam.forbidden_members', 'high', 'audit', '//a', ?, 'r1 on //a', '{}', 1, 1)",
        (a.id, BUCKET),
    )
    old.execute("INSERT INTO cycles (started_at, ended_at, outcome, complete) VALUES (0, 1, 'success', 1)")
    old.close()
    with Store(state_target) as store:
        f = store.finding(a.id)
        assert f is not None and (f.project, f.ancestry) == (None, "")
        rec = store.record_cycle(cycle(100, [a]))
        assert rec.drift == [] and rec.changed == 1
        f = store.finding(a.id)
        assert f is not None and f.first_seen == 1
        assert (f.project, f.ancestry) == ("projects/9", "organizations/1/projects/9")


def test_a_newer_schema_is_refused(state_target: str) -> None:
    Store(state_target).close()
    db = open_database(state_target)
    db.execute("UPDATE schema_versions SET version = ? WHERE component = ?", (len(MIGRATIONS) + 1, COMPONENT))
    db.close()
    with pytest.raises(StateError, match="newer than this version knows"):
        Store(state_target)


def test_timestamps_keep_their_precision(state_target: str) -> None:
    """Times are stored as double precision on both backends (PostgreSQL's REAL would round them to seconds)."""
    at = 1_765_000_000.123456
    with Store(state_target) as store:
        store.record_cycle(cycle(at, [finding("r1", "//a")]))
        f = store.open_findings()[0]
        assert f.first_seen == at + 1


def test_a_cycle_with_no_change_writes_no_finding_row(state_target: str) -> None:
    a, b = finding("r1", "//a"), finding("r2", "//b", exempt=True)
    with Store(state_target) as store:
        first = store.record_cycle(cycle(100, [a, b]))
        assert first.changed == 2
        again = store.record_cycle(cycle(200, [a, b]))
        assert again.changed == 0 and again.drift == [] and again.still_open == 2
        # Their last-seen time still moves: it is the end of the last cycle that recorded findings.
        assert {f.last_seen for f in store.open_findings()} == {201}
        rec = store.record_cycle(cycle(300, [msgspec.structs.replace(a, message="r1 on //a, now worse"), b]))
        assert rec.changed == 1 and rec.drift == []
        f = store.finding(a.id)
        assert f is not None and f.message == "r1 on //a, now worse" and f.first_seen == 101


def test_findings_stream_in_batches_and_repeated_ids_count_once(state_target: str) -> None:
    many = (finding("r1", f"//a{i}") for i in range(5000))  # a generator: read once, never held whole
    with Store(state_target) as store:
        rec = store.record_cycle(cycle(100, many))
        assert rec.new_count == 5000 and rec.open == 5000
        dup = [finding("r1", "//a1"), finding("r1", "//a1"), finding("r1", "//b")]
        rec = store.record_cycle(cycle(200, dup))
        assert rec.new_count == 1 and rec.resolved_count == 4999 and rec.still_open == 1
        assert sum(1 for _ in store.iter_drift(rec.cycle_id, page=100)) == 5000
        total, page = store.find(limit=10, offset=0)
        assert total == 2 and [f.asset for f in page] == ["//a1", "//b"]


def test_staged_findings_are_recorded_without_being_held(state_target: str) -> None:
    """Findings handed to the store as they are made (the daemon's path): the memory held while staging and recording
    ten times more findings stays that of one batch and the staging's compact table of ids (8 bytes a slot for the
    key and 8 for its value, at most half full, twice that while it grows; a finding held would be a kilobyte):
    tracemalloc sees the Python side; SQLite pages are its own."""

    def peak(n: int) -> int:
        with Store(state_target) as store:
            store.db.execute("DELETE FROM findings")
            store.record_cycle(cycle(1.0, []))  # a baseline (the first time): the cycle measured records drift events
            gc.collect()
            tracemalloc.start()
            staging = store.staging()
            for i in range(n):
                staging.add(finding("r1", f"//a{i}", ancestors=("projects/1", "organizations/2")))
            rec = store.record_cycle(cycle(100.0 * n, staging))
            assert rec.open == n
            assert sum(1 for _ in store.iter_drift(rec.cycle_id)) == n
            top = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return top

    small, big = peak(3000), peak(30000)
    assert big - small < 27000 * 96, (small, big)


def test_a_page_of_the_worst_findings_is_read_from_the_index(tmp_path: Path) -> None:
    """SQLite walks findings_worst for a page instead of sorting every open finding (EXPLAIN QUERY PLAN)."""
    with Store(tmp_path / "s.db") as store:
        sevs = ("low", "critical", "high", "medium", "info")
        store.record_cycle(cycle(100, [finding(f"r{i % 3}", f"//a{i}", sev=sevs[i % 5]) for i in range(500)]))
        total, page = store.find(exempted=False, limit=50, offset=100)
        ranks = [("critical", "high", "medium", "low", "info").index(f.severity) for f in page]
        assert total == 500 and ranks == sorted(ranks) and len(page) == 50
        where = "resolved_at IS NULL AND exempted = ?"
        plan = " ".join(str(r[-1]) for r in store.db.rows(
            f"EXPLAIN QUERY PLAN SELECT * FROM findings WHERE {where} ORDER BY {_SEVERITY_ORDER}, rule, asset, id "
            "LIMIT 50 OFFSET 100", (0,)))
        assert "findings_worst" in plan and "TEMP B-TREE" not in plan, plan


def test_the_newest_findings_are_read_from_the_index(tmp_path: Path) -> None:
    """The report's newest findings: the first entries of findings_newest, not a sort of every open finding."""
    with Store(tmp_path / "s.db") as store:
        store.record_cycle(cycle(100, [finding("r1", f"//a{i}") for i in range(300)]))
        store.record_cycle(cycle(200, [finding("r1", f"//a{i}") for i in range(310)]))
        statements: list[str] = []
        store.db._conn.set_trace_callback(statements.append)
        _, page = store.find(limit=5, newest=True, count=False)
        store.db._conn.set_trace_callback(None)
        newer = sorted(finding("r1", f"//a{i}").id for i in range(300, 310))[:5]
        assert [f.id for f in page] == newer and all(f.first_seen == 201 for f in page)
        (statement,) = [s for s in statements if "FROM findings WHERE" in s]
        plan = " ".join(str(r[-1]) for r in store.db.rows("EXPLAIN QUERY PLAN " + statement))
        assert "findings_newest" in plan and "TEMP B-TREE" not in plan, plan


def test_the_exempted_findings_are_listed_and_counted_from_their_own_index(tmp_path: Path) -> None:
    """A few exempted findings among many open ones: their page and count read the partial index findings_exempted
    (EXPLAIN QUERY PLAN of the statements `find` ran), not every open row."""
    with Store(tmp_path / "s.db") as store:
        sevs = ("low", "critical", "high")
        store.record_cycle(cycle(100, [finding("r1", f"//a{i}", sev=sevs[i % 3], exempt=i % 50 == 0)
                                       for i in range(500)]))
        statements: list[str] = []
        store.db._conn.set_trace_callback(statements.append)
        total, page = store.find(exempted=True, limit=5)
        store.db._conn.set_trace_callback(None)
        assert total == 10 and [f.severity for f in page] == ["critical", "critical", "critical", "high", "high"]
        assert all(f.exempted for f in page) and len(statements) >= 2
        for statement in statements:
            if "FROM findings WHERE" in statement:
                plan = " ".join(str(r[-1]) for r in store.db.rows("EXPLAIN QUERY PLAN " + statement))
                assert "findings_exempted" in plan and "TEMP B-TREE" not in plan, (statement, plan)


def test_a_cycle_looks_up_the_findings_it_names_instead_of_walking_the_open_ones(tmp_path: Path) -> None:
    """Without statistics SQLite takes `resolved_at IS NULL` for a selective equality and would walk every open
    finding through findings_open to find the few a cycle staged or did not see (seconds a cycle at a million open
    findings): each statement of a cycle that reads the staged or unseen findings must look the findings up by id
    (EXPLAIN QUERY PLAN of the statements as they ran)."""
    many = [finding("r1", f"//a{i}", exempt=i % 7 == 0) for i in range(60)]
    with Store(tmp_path / "s.db") as store:
        store.record_cycle(cycle(100, many))
        statements: list[str] = []
        store.db._conn.set_trace_callback(statements.append)
        staging = store.staging()
        changed = [msgspec.structs.replace(f, message="changed") for f in many[:5]]
        staging.extend([*changed, *many[5:49], msgspec.structs.replace(many[49], exempted=None)])  # 10 not seen
        rec = store.record_cycle(cycle(200, staging, incomplete={"other/Type": "x"}))
        store.db._conn.set_trace_callback(None)
        assert rec.resolved_count == 10 and rec.new_count == 1 and rec.changed == 5 + 1 + 10
        prepare(store.db)  # the staging tables, empty, for the plans
        looked = [s for s in statements if "findings" in s.split("FROM", 1)[-1] and ("cycle_seen" in s or
                  "cycle_gone" in s or "cycle_unseen" in s) and not s.startswith(("CREATE", "DELETE", "SELECT count"))]
        assert len(looked) >= 7, statements
        for statement in looked:
            plan = " ".join(str(r[-1]) for r in store.db.rows("EXPLAIN QUERY PLAN " + statement))
            assert "findings_open" not in plan and "SCAN findings" not in plan, (statement, plan)


def test_a_cycle_with_no_open_finding_does_not_look_its_staged_ones_up_among_the_open(tmp_path: Path) -> None:
    """Nothing open (a first cycle, or every finding resolved since): no staged finding can be an open one, so the
    statements that look each staged id up among the open findings are left out, and the same is recorded."""
    many = [finding("r1", f"//a{i}", exempt=i % 7 == 0) for i in range(60)]
    with Store(tmp_path / "s.db") as store:
        statements: list[str] = []
        store.db._conn.set_trace_callback(statements.append)
        rec = store.record_cycle(cycle(100, many))
        store.db._conn.set_trace_callback(None)
        assert rec.baseline and (rec.new_count, rec.new_exempted, rec.changed) == (60, 9, 60)
        assert [s for s in statements if "cycle_seen" in s and "findings f" in s and "INSERT" not in s] == []
        assert [s for s in statements if s.startswith("UPDATE findings") and "cycle_seen" in s] == []
        assert len(store.open_findings()) == 60
        rec = store.record_cycle(cycle(200, [msgspec.structs.replace(f, message="changed") for f in many[:3]]))
        assert (rec.new_count, rec.resolved_count, rec.changed) == (0, 57, 60)
    # The baseline's counts come from the staging (no statement counts the staged rows) ...
    assert [s for s in statements if "count(*) FILTER" in s and "cycle_seen" in s] == []
    # ... unless it could not count them as they came (two ids sharing a key: one of them may be a repeat): SQL counts
    twins = [msgspec.structs.replace(many[i], id=many[0].id[:16] + f"{i:04x}") for i in (7, 8)]
    with Store(tmp_path / "t.db") as store:
        statements.clear()
        store.db._conn.set_trace_callback(statements.append)
        rec = store.record_cycle(cycle(100, [*many, *twins]))
        assert rec.baseline and (rec.new_count, rec.new_exempted) == (62, 9 + 1)
        assert [s for s in statements if "count(*) FILTER" in s and "cycle_seen" in s] != []


def test_a_new_state_file_has_large_pages_and_an_older_one_keeps_its_own(tmp_path: Path) -> None:
    with Store(tmp_path / "new.db") as store:
        assert store.db.rows("PRAGMA page_size")[0][0] == PAGE_SIZE
    older = sqlite3.connect(tmp_path / "old.db")
    older.execute("PRAGMA page_size = 4096")
    older.execute("CREATE TABLE unrelated (a)")
    older.close()
    with Store(tmp_path / "old.db") as store:
        store.record_cycle(cycle(100, [finding("r1", "//a")]))
        assert store.db.rows("PRAGMA page_size")[0][0] == 4096 and len(store.open_findings()) == 1


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_text("this is not sqlite " * 100)
    with pytest.raises(StateError, match=str(path)):
        Store(path)


def test_prune_forgets_old_history_but_not_the_last_cycle_or_open_findings(state_target: str) -> None:
    a, b = finding("r1", "//a"), finding("r1", "//b")
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a, b]))
        store.record_cycle(cycle(200, [a]))
        assert store.prune(keep_seconds=50, now=1000) == 1
        assert [c.id for c in store.cycles()] == [2]
        assert store.finding(b.id) is None  # resolved long ago
        assert [f.asset for f in store.open_findings()] == ["//a"]
        # Counters are not history: they never go backwards.
        assert {lb["outcome"]: v for lb, v in store.counters("cycles_total")} == {"success": 2}


def test_the_password_may_come_from_a_file_and_never_shows(postgres_server: PostgresServer, postgres_url: str,
                                                           tmp_path: Path) -> None:
    bare = postgres_url.replace(f":{postgres_server.password}@", "@")
    assert postgres_server.password not in bare
    secret = tmp_path / "password"
    secret.write_text(postgres_server.password + "\n")  # as a mounted Secret may end
    with Store(bare, password_file=secret) as store:
        assert store.record_cycle(cycle(100, [finding("r1", "//a")])).new_count == 1
    secret.write_text("wrong")
    with pytest.raises(StateError, match="cannot connect") as err:
        Store(bare, password_file=secret)
    with pytest.raises(StateError, match="cannot connect") as err2:
        Store(bare.replace("postgres@", "postgres:wrong-password@"))
    assert "wrong-password" not in str(err2.value) and "***" in str(err2.value)
    assert "wrong" not in str(err.value)


def test_settings_take_a_state_url_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from auditor.settings import Settings

    monkeypatch.setenv("AUDITOR_STATE_URL", "postgresql://auditor@db:5432/auditor")
    s = Settings(sources=["x"], state_password_file=tmp_path / "pw")
    assert s.state_target == "postgresql://auditor@db:5432/auditor"
    assert state_target(s) == ("postgresql://auditor@db:5432/auditor", str(tmp_path / "pw"))
    monkeypatch.setenv("AUDITOR_STATE_URL", "mysql://nope")
    with pytest.raises(ValueError, match="state_url"):
        Settings(sources=["x"])


def test_a_baseline_counts_its_findings_and_records_no_drift_event(state_target: str) -> None:
    """The baseline (every cycle until one reads everything) is what the organization already was: its new and
    resolved findings are counted on the cycle, its exempted new ones on the record, and no drift event is kept."""
    a, b, c = finding("r1", "//a"), finding("r1", "//b", exempt=True), finding("r2", "//c")
    with Store(state_target) as store:
        first = store.record_cycle(cycle(100, [a, b, c], outcome="partial", incomplete={"*": "403"}))
        second = store.record_cycle(cycle(200, [a, b]))  # c is resolved, still in the baseline
        assert (first.baseline, first.new_count, first.new_exempted, first.resolved_count) == (True, 3, 1, 0)
        assert (second.baseline, second.new_count, second.resolved_count, second.still_open) == (True, 0, 1, 2)
        assert store.drift(first.cycle_id) == store.drift(second.cycle_id) == [] == second.drift
        assert [(k.new, k.resolved, k.findings, k.exempted) for k in store.cycles()] == [(0, 1, 1, 1), (3, 0, 2, 1)]
        assert store.counters("drift_events_total") == []
        third = store.record_cycle(cycle(300, [a, c]))  # drift from here on
        assert sorted((e.change, e.asset, e.exempted) for e in third.drift) == [("new", "//c", False),
                                                                                ("resolved", "//b", True)]


def test_partial_cycles_stay_the_baseline_until_one_reads_everything(state_target: str) -> None:
    a, b = finding("r1", "//a"), finding("r1", "//b")
    with Store(state_target) as store:
        partial = store.record_cycle(cycle(100, [a], outcome="partial", incomplete={"*": "403"}))
        complete = store.record_cycle(cycle(200, [a, b]))
        after = store.record_cycle(cycle(300, [a]))
        assert (partial.baseline, complete.baseline, after.baseline) == (True, True, False)
        # b is stored and counted as new, but not drift: no event, no counter
        assert (complete.new_count, complete.drift) == (1, [])
        assert [(lb["change"], v) for lb, v in store.counters("drift_events_total")] == [("resolved", 1.0)]


def test_source_reads_newest_first_and_the_last_complete_one(state_target: str) -> None:
    def read(n: int, complete: bool = True) -> list[dict[str, object]]:
        return [{"source": "s", "complete": complete, "assets": n}, {"source": "other", "complete": True, "assets": 1}]

    with Store(state_target) as store:
        store.record_cycle(cycle(100, [], sources=read(40)))
        store.record_cycle(cycle(200, [], sources=read(10, complete=False)))
        store.record_cycle(cycle(300, [], sources=read(12, complete=False)))
        assert [r["assets"] for r in store.source_reads("s", 5)] == [12, 10, 40]
        assert [r["assets"] for r in store.source_reads("s", 1, complete=True)] == [40]
        assert [r["assets"] for r in store.source_reads("s", 1, complete=False)] == [12]
        assert store.source_reads("missing", 3) == []


def test_a_first_cycle_builds_its_indexes_after_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first cycle into an empty table drops the secondary indexes and builds them again after its rows: the same
    schema, rows and drift as inserting through them, and later cycles (whose table is not empty) keep them."""
    from auditor.state import store as store_module

    many = [finding(f"r{i % 3}", f"//a{i}", sev=("critical", "high", "low")[i % 3]) for i in range(40)]
    results = []
    for threshold in (10**9, 5):
        monkeypatch.setattr(store_module, "BULK_LOAD_ROWS", threshold)
        with Store(tmp_path / f"{threshold}.db") as store:
            indexes = "SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"
            schema = [tuple(r) for r in store.db.rows(indexes)]
            assert len(schema) > 3
            first = store.record_cycle(cycle(100, many))
            second = store.record_cycle(cycle(200, [*many[5:], finding("r9", "//z")]))
            assert [tuple(r) for r in store.db.rows(indexes)] == schema
            assert [tuple(r) for r in store.db.rows("PRAGMA integrity_check")] == [("ok",)]
            results.append((
                [(e.change, e.finding_id) for e in first.drift], [(e.change, e.finding_id) for e in second.drift],
                [(f.id, f.first_seen, f.last_seen) for f in store.find(limit=100)[1]],
                [(f.id, f.resolved_at) for f in map(store.finding, [g.id for g in many[:5]]) if f is not None],
            ))
    assert results[0] == results[1]
