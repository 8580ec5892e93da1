"""The journal shares the daemon's state file: its own tables and schema version, WAL, and the store untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from auditor.errors import AuditorError
from auditor.state import Store
from remediations.journal import COMPONENT, Journal


def test_journal_lives_beside_the_state_store(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
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
    db = sqlite3.connect(path)
    versions = dict(db.execute("SELECT component, version FROM schema_versions").fetchall())
    assert versions[COMPONENT] == 1 and "auditor.state" in versions
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    store.close()


def test_a_newer_journal_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_versions SET version = 9 WHERE component = ?", (COMPONENT,))
    db.commit()
    db.close()
    with pytest.raises(AuditorError, match=r"remediations\.journal schema version 9, newer than this version knows"):
        Journal(path)
