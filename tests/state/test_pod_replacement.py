"""A pod replaced (a rollout, a rescheduled StatefulSet pod): a new `auditor serve` process on the same state volume
keeps the history, the findings' first-seen times (their ages) and the remediation journal, and its first cycle is
no baseline: only what changed in between is reported as drift. Real processes, on each state backend."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from auditor.state import Store
from remediations.journal import Journal
from tests.daemon.support import Served, example_org, make_drift, write_config


def test_a_new_process_on_the_same_volume_keeps_history_ages_and_journal(tmp_path: Path, state_target: str) -> None:
    org, _ = example_org(tmp_path)
    overrides = {"state_url": state_target} if "://" in state_target else {"state_path": state_target}
    cfg = write_config(tmp_path / "config.yaml", **overrides)

    with Served(cfg) as first:
        first.wait_event(lambda e: e.get("event") == "cycle", 60, "the first pod's cycle")
        before = {f["id"]: f for f in json.loads(first.get("/findings.json?per_page=5000")[1])["findings"]}
        assert first.stop(signal.SIGTERM) == 0  # the rollout's SIGTERM
    # What an operator's apply left in the journal between the two pods.
    with Journal(state_target) as journal:
        apply_id = journal.start_apply("plan-1", "apply", "operator")
        journal.finish(journal.begin(apply_id, "c1", "//r", "iam", {"api": "x"}, ["remove m"], ["rule"], "etag1",
                                     {"bindings": []}), "applied", after={"bindings": []}, token_after="etag2")
    made = make_drift(org)

    with Served(cfg) as second:
        cycle = second.wait_event(lambda e: e.get("event") == "cycle", 60, "the new pod's cycle")
        after = {f["id"]: f for f in json.loads(second.get("/findings.json?per_page=5000")[1])["findings"]}
        drift = [e for e in second.events if e.get("event") == "drift"]
        assert second.stop(signal.SIGTERM) == 0

    assert "baseline" not in cycle
    assert {e["asset"] for e in drift} == {made.made_public, made.made_private}
    for fid in set(before) & set(after):
        assert after[fid]["first_seen"] == before[fid]["first_seen"]
        assert after[fid]["age_seconds"] >= before[fid]["age_seconds"]
    with Store(state_target) as store:
        assert [c.id for c in store.cycles()] == [2, 1] and store.cycles()[-1].baseline
    with Journal(state_target) as journal:
        (entry,) = journal.entries(apply_id)
        assert (entry.outcome, entry.token_after) == ("applied", "etag2")
