"""Stage 6, apply: the journal of every write, in the daemon's state database (SQLite file or PostgreSQL).

Each apply (and each rollback) gets an id; each resource it writes gets a row with the full before-state, written
before the write, and the after-state read back once it is verified. A row left `started` means the process
stopped mid-write: the before-state is there for a rollback. The tables are this module's own, versioned under
the component "remediations.journal" in the state file's `schema_versions` (see `auditor.state.migrate`), so the
journal lives in the daemon's state file without touching its tables.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditor.errors import AuditorError
from auditor.state import Database, StateError, migrate, open_database

COMPONENT = "remediations.journal"

# One entry per schema version; a new version appends a migration, never edits an old one.
_V1 = """
CREATE TABLE IF NOT EXISTS remediation_applies (
    apply_id TEXT PRIMARY KEY,
    plan_id TEXT,
    action TEXT NOT NULL,            -- apply | rollback
    rollback_of TEXT,
    actor TEXT NOT NULL,             -- operator | daemon
    started_at TEXT NOT NULL,
    finished_at TEXT,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS remediation_journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    apply_id TEXT NOT NULL REFERENCES remediation_applies(apply_id),
    change_id TEXT,
    resource TEXT NOT NULL,
    family TEXT NOT NULL,
    target TEXT NOT NULL,
    edits TEXT NOT NULL,
    rules TEXT NOT NULL,
    token_before TEXT,
    token_after TEXT,
    before TEXT,
    after TEXT,
    outcome TEXT NOT NULL,           -- started | applied | conflict | failed
    reason TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS remediation_journal_apply ON remediation_journal(apply_id);
"""
MIGRATIONS = (_V1,)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def new_apply_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


@dataclass
class Entry:
    id: int
    apply_id: str
    change_id: str | None
    resource: str
    family: str
    target: dict[str, Any]
    edits: list[str]
    rules: list[str]
    token_before: str | None
    token_after: str | None
    before: Any
    after: Any
    outcome: str
    reason: str | None
    started_at: str
    finished_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Journal:
    def __init__(self, target: str | Path, password_file: str | Path | None = None) -> None:
        self.path = Path(target)
        self.db: Database = open_database(target, password_file)
        try:
            migrate(self.db, COMPONENT, MIGRATIONS)
        except StateError:
            self.db.close()
            raise
        except Exception as exc:
            self.db.close()
            raise AuditorError(f"{self.db.name}: cannot create the remediation journal: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Database]:
        with self.db.transaction() as db:
            yield db

    # -- writes -----------------------------------------------------------------------------------------------------
    def start_apply(self, plan_id: str | None, action: str, actor: str, rollback_of: str | None = None) -> str:
        apply_id = new_apply_id()
        with self._tx() as db:
            db.execute(
                "INSERT INTO remediation_applies (apply_id, plan_id, action, rollback_of, actor, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (apply_id, plan_id, action, rollback_of, actor, _now()),
            )
        return apply_id

    def finish_apply(self, apply_id: str, summary: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE remediation_applies SET finished_at=?, summary=? WHERE apply_id=?",
                (_now(), json.dumps(summary, sort_keys=True), apply_id),
            )

    def begin(
        self,
        apply_id: str,
        change_id: str | None,
        resource: str,
        family: str,
        target: dict[str, Any],
        edits: list[str],
        rules: list[str],
        token_before: str | None,
        before: Any,
    ) -> int:
        """Record the before-state; called before the write, so a crash mid-write leaves it behind."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO remediation_journal (apply_id, change_id, resource, family, target, edits, rules, "
                "token_before, before, outcome, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'started', ?) "
                "RETURNING id",
                (apply_id, change_id, resource, family, json.dumps(target, sort_keys=True), json.dumps(edits),
                 json.dumps(rules), token_before, json.dumps(before, sort_keys=True), _now()),
            )
            return int(cur.fetchone()[0])

    def finish(self, entry_id: int, outcome: str, *, after: Any = None, token_after: str | None = None,
               reason: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE remediation_journal SET outcome=?, after=?, token_after=?, reason=?, finished_at=? WHERE id=?",
                (outcome, json.dumps(after, sort_keys=True) if after is not None else None, token_after, reason,
                 _now(), entry_id),
            )

    # -- reads ------------------------------------------------------------------------------------------------------
    def entries(self, apply_id: str) -> list[Entry]:
        rows = self.db.execute(
            "SELECT id, apply_id, change_id, resource, family, target, edits, rules, token_before, token_after, "
            "before, after, outcome, reason, started_at, finished_at FROM remediation_journal WHERE apply_id=? "
            "ORDER BY id",
            (apply_id,),
        ).fetchall()
        return [
            Entry(
                id=r[0], apply_id=r[1], change_id=r[2], resource=r[3], family=r[4], target=json.loads(r[5]),
                edits=json.loads(r[6]), rules=json.loads(r[7]), token_before=r[8], token_after=r[9],
                before=json.loads(r[10]) if r[10] is not None else None,
                after=json.loads(r[11]) if r[11] is not None else None,
                outcome=r[12], reason=r[13], started_at=r[14], finished_at=r[15],
            )
            for r in rows
        ]

    def apply_info(self, apply_id: str) -> dict[str, Any] | None:
        r = self.db.execute(
            "SELECT apply_id, plan_id, action, rollback_of, actor, started_at, finished_at, summary "
            "FROM remediation_applies WHERE apply_id=?",
            (apply_id,),
        ).fetchone()
        if r is None:
            return None
        return {"apply_id": r[0], "plan_id": r[1], "action": r[2], "rollback_of": r[3], "actor": r[4],
                "started_at": r[5], "finished_at": r[6], "summary": json.loads(r[7]) if r[7] else None}

    def applies(self, limit: int = 50) -> list[dict[str, Any]]:
        ids = [r[0] for r in self.db.execute(
            "SELECT apply_id FROM remediation_applies ORDER BY started_at DESC, apply_id DESC LIMIT ?", (limit,))]
        return [i for i in (self.apply_info(x) for x in ids) if i is not None]
