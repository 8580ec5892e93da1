"""What each outbound sink was last given: one small table (`sink_marks`) in the state database.

A mark is a short string per (sink, key): for Security Command Center the state and content digest last written
for a finding, for notifications the last change announced for it (so a finding that comes back after being
resolved is announced as `reopened`). The table belongs to this component (`auditor.sinks` in schema_versions);
the state store's own tables are only read, to walk its findings page by page.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from auditor.state import Database, Store, migrate

COMPONENT = "auditor.sinks"
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sink_marks (
        sink TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (sink, key)
    );
    """,
)
PAGE = 500


@dataclass(frozen=True)
class FindingRow:
    """A finding of the state store as a sink sees it, with the sink's mark for it."""

    id: str
    rule: str
    check: str
    severity: str
    mode: str
    asset: str
    asset_type: str
    message: str
    exempted: bool
    exemption: str | None  # JSON
    first_seen: float
    last_seen: float
    resolved_at: float | None
    mark: str | None
    project: str | None = None
    ancestry: str = ""

    @property
    def open(self) -> bool:
        return self.resolved_at is None


class Ledger:
    """The marks, in the store's own database (SQLite file or PostgreSQL): one connection, one transaction each."""

    def __init__(self, store: Store) -> None:
        self.db: Database = store.db
        migrate(self.db, COMPONENT, MIGRATIONS)

    def close(self) -> None:
        pass  # the connection is the store's

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, sink: str, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM sink_marks WHERE sink = ? AND key = ?", (sink, key)).fetchone()
        return str(row[0]) if row else None

    def put(self, sink: str, marks: Iterable[tuple[str, str]]) -> None:
        rows = [(sink, k, v, time.time()) for k, v in marks]
        if not rows:
            return
        with self.db.transaction() as db:
            db.executemany(
                "INSERT INTO sink_marks (sink, key, value, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sink, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                rows,
            )

    def count(self, sink: str) -> int:
        return int(self.db.execute("SELECT count(*) FROM sink_marks WHERE sink = ?", (sink,)).fetchone()[0])

    def findings(self, sink: str, page: int = PAGE) -> Iterator[FindingRow]:
        """Every finding of the state store (open, exempted and resolved), in id order, a page at a time: memory
        stays flat whatever the number of findings."""
        after = ""
        while True:
            rows = self.db.rows(
                "SELECT f.id, f.rule, f.check_name, f.severity, f.mode, f.asset, f.asset_type, f.message, f.exempted, "
                "f.exemption, f.first_seen, f.last_seen, f.resolved_at, f.project, f.ancestry, m.value AS mark "
                "FROM findings f LEFT JOIN sink_marks m ON m.sink = ? AND m.key = f.id WHERE f.id > ? ORDER BY f.id "
                "LIMIT ?",
                (sink, after, page),
            )
            for r in rows:
                yield _row(r)
            if len(rows) < page:
                return
            after = rows[-1]["id"]

    def orphans(self, sink: str) -> Iterator[tuple[str, str]]:
        """Marks of findings the store no longer has (pruned after being resolved)."""
        rows = self.db.rows(
            "SELECT key, value FROM sink_marks m WHERE sink = ? AND NOT EXISTS "
            "(SELECT 1 FROM findings f WHERE f.id = m.key) ORDER BY key",
            (sink,),
        )
        for r in rows:
            yield str(r[0]), str(r[1])


def _row(r: Any) -> FindingRow:
    return FindingRow(
        id=r["id"], rule=r["rule"], check=r["check_name"], severity=r["severity"], mode=r["mode"], asset=r["asset"],
        asset_type=r["asset_type"], message=r["message"], exempted=bool(r["exempted"]), exemption=r["exemption"],
        first_seen=r["first_seen"], last_seen=r["last_seen"], resolved_at=r["resolved_at"], mark=r["mark"],
        project=r["project"], ancestry=r["ancestry"],
    )
