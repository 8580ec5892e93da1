"""Changes from events recorded asset by asset (auditor.state.changes), on SQLite and PostgreSQL: drift against the
open findings of the rules evaluated, the per-asset marks that make redeliveries and older states change nothing,
the inbox rows consumed in the same transaction, and a cycle that keeps what a newer event recorded."""

from __future__ import annotations

from auditor.state import CycleInput, Store
from auditor.state.changes import AssetVerdict, ChangeInput
from tests.state.test_store import finding

A, B = "//storage.googleapis.com/a", "//storage.googleapis.com/b"


def _cycle(at: float, findings: list) -> CycleInput:  # type: ignore[type-arg]
    return CycleInput(started_at=at, ended_at=at + 1, outcome="success", findings=findings, rule_ids=frozenset(
        {"r1", "r2"}))


def test_changes_are_drift_like_a_cycle_and_marks_refuse_old_states(state_target: str) -> None:
    r1a, r2a, r1b = finding("r1", A), finding("r2", A), finding("r1", B)
    with Store(state_target) as store:
        assert store.record_changes([], 5.0) is None  # no cycle yet: nothing to attach drift to
        store.record_cycle(_cycle(10, [r1a]))
        store.enqueue_changes([(20.0, A, "iam_policy", "2026-12-07T01:00:00.000000000", "{}")])
        [(inbox_id, _, _)] = store.pending_changes(10)
        # A's policy now gives r2, not r1 (both evaluated); B's gives r1
        rec = store.record_changes([
            ChangeInput(A, "iam_policy", "t", "2026-12-07T01:00:00.000000000", inbox_id,
                        [AssetVerdict(A, frozenset({"r1", "r2"}), [r2a])]),
            ChangeInput(B, "iam_policy", "t", "2026-12-07T01:00:00.000000000", None,
                        [AssetVerdict(B, frozenset({"r1"}), [r1b])]),
        ], 21.0)
        assert rec is not None and [o.outcome for o in rec.outcomes] == ["recorded", "recorded"]
        assert (rec.new_count, rec.resolved_count) == (2, 1)
        assert sorted((e.change, e.rule, e.asset) for e in store.event_drift(rec)) == [
            ("new", "r1", B), ("new", "r2", A), ("resolved", "r1", A)]
        assert store.pending_change_count() == 0
        assert {f.id for f in store.open_findings()} == {r2a.id, r1b.id}
        assert store.finding(r1a.id).resolved_at == 21.0  # type: ignore[union-attr]
        # the same key again, and an older one: nothing changes
        again = store.record_changes([
            ChangeInput(A, "iam_policy", "t", "2026-12-07T01:00:00.000000000", None, [AssetVerdict(A, None, [])]),
            ChangeInput(A, "iam_policy", "t", "2026-12-07T00:59:00.000000000", None, [AssetVerdict(A, None, [])]),
        ], 22.0)
        assert again is not None and [o.outcome for o in again.outcomes] == ["redelivery", "out_of_order"]
        assert {f.id for f in store.open_findings()} == {r2a.id, r1b.id}
        # a rule that was not evaluated keeps its findings; a deletion (rules None) resolves them all
        store.record_changes([ChangeInput(B, "iam_policy", "t", "2026-12-07T01:00:01.000000000", None,
                                          [AssetVerdict(B, frozenset({"r2"}), [])])], 23.0)
        assert store.finding(r1b.id).resolved_at is None  # type: ignore[union-attr]
        store.record_changes([ChangeInput(B, "iam_policy", "t", "2026-12-07T01:00:02.000000000", None,
                                          [AssetVerdict(B, None, [])])], 24.0)
        assert store.finding(r1b.id).resolved_at == 24.0  # type: ignore[union-attr]
        # the baseline cycle was complete: event drift is counted like a cycle's
        counters = {tuple(sorted(lb.items())): v for lb, v in store.counters("drift_events_total")}
        assert counters[(("change", "new"), ("rule", "r2"), ("severity", "high"))] == 1
        # a reopened finding is the same finding, first seen anew
        store.record_changes([ChangeInput(A, "iam_policy", "t", "2026-12-07T01:00:03.000000000", None,
                                          [AssetVerdict(A, frozenset({"r1", "r2"}), [r1a, r2a])])], 25.0)
        f = store.finding(r1a.id)
        assert f is not None and f.resolved_at is None and f.first_seen == 25.0


def test_a_cycle_keeps_what_a_newer_event_recorded_and_counts_what_events_missed(state_target: str) -> None:
    r1a, r1b = finding("r1", A), finding("r1", B)
    with Store(state_target) as store:
        store.record_cycle(_cycle(10, []))
        # an event makes A drift at 100; a cycle that started at 90 read A before that
        store.record_changes([ChangeInput(A, "iam_policy", "storage.googleapis.com/Bucket", "k1", None,
                                          [AssetVerdict(A, frozenset({"r1"}), [r1a])])], 100.0)
        rec = store.record_cycle(_cycle(90, [r1b]), events_since=90.0)
        # A stays open (the event is newer than the snapshot); B is drift no event reported: counted
        assert {f.id for f in store.open_findings()} == {r1a.id, r1b.id}
        assert [(e.change, e.asset) for e in rec.drift] == [("new", B)]
        assert {lb["asset_type"]: v for lb, v in store.counters("reconcile_missed_total")} == {
            "storage.googleapis.com/Bucket": 1}
        # later cycles reconcile A as usual
        rec = store.record_cycle(_cycle(200, [r1b]), events_since=170.0)
        assert [(e.change, e.asset) for e in rec.drift] == [("resolved", A)]


def test_migration_adds_the_change_tables(state_target: str) -> None:
    with Store(state_target) as store:
        assert store.schema_versions()["auditor.state"] >= 4  # v4 brought them
        assert {"change_inbox", "change_marks"} <= store.db.tables()
