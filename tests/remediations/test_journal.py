"""The journal shares the daemon's state database (SQLite or PostgreSQL): its own tables and schema version, and the
store untouched."""

from __future__ import annotations

import pytest

from auditor.errors import AuditorError
from auditor.state import Store, open_database
from remediations.journal import COMPONENT, Journal


def test_journal_lives_beside_the_state_store(state_target: str) -> None:
    path = state_target
    store = Store(path)
    with Journal(path) as journal:
        apply_id = journal.start_apply("plan1", "apply", "operator")
        entry = journal.begin(apply_id, "c1", "//r", "iam", {"api": "resourcemanager"}, ["remove x"], ["rule"],
                              "etag1", {"bindings": []})
        journal.finish(entry, "applied", after={"bindings": [{"role": "r", "members": ["m"]}]}, token_after="etag2")
        journal.finish_apply(apply_id, {"counts": {"applied": 1}})
    with Journal(path) as journal:  # reopening migrates nothing and reads what was written
        (e,) = journal.entries(apply_id)
        assert (e.outcome, e.token_before, e.token_after, e.before) == ("applied", "etag1", "etag2", {"bindings": []})
        assert journal.apply_info(apply_id)["summary"] == {"counts": {"applied": 1}}  # type: ignore[index]
        assert [a["apply_id"] for a in journal.applies()] == [apply_id]
    versions = store.schema_versions()
    assert versions[COMPONENT] == 1 and "auditor.state" in versions
    store.close()


def test_a_newer_journal_schema_is_refused(state_target: str) -> None:
    path = state_target
    Journal(path).close()
    db = open_database(path)
    db.execute("UPDATE schema_versions SET version = 9 WHERE component = ?", (COMPONENT,))
    db.close()
    with pytest.raises(AuditorError, match=r"remediations\.journal schema version 9, newer than this version knows"):
        Journal(path)
