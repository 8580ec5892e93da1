"""A cycle's findings on their way into the store: written to a TEMP table of the store's connection a batch at a
time, as the evaluation makes them, so that neither the daemon nor the store ever holds all of them.

`Staging` is the evaluation's sink (`add`, and `withdraw` for the findings of an asset a later copy replaces);
`Store.record_cycle` then computes drift in SQL from the staged rows. A TEMP table never grows the state file and
takes no lock on the state database (its batches run in deferred transactions that touch only TEMP). The first of a
repeated finding id wins, as in a report. Memory: one batch of rows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from itertools import islice
from typing import Any

import msgspec

from auditor.model import Finding
from auditor.state.db import Database

BATCH = 2000  # findings per staging insert: bounded memory, few round trips

STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS cycle_seen (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    check_name TEXT NOT NULL,
    severity TEXT NOT NULL,
    mode TEXT NOT NULL,
    asset TEXT NOT NULL,
    asset_type TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL,
    exempted INTEGER NOT NULL,
    exemption TEXT,
    project TEXT,
    ancestry TEXT NOT NULL,
    note TEXT NOT NULL
)
"""
# Rules that could not be evaluated this cycle, on one asset (an evaluation error) or on all of them (asset ''):
# their open findings that were not seen are carried (kept open, stale), never resolved.
UNEVALUATED_DDL = """
CREATE TEMP TABLE IF NOT EXISTS cycle_unevaluated (
    rule TEXT NOT NULL,
    asset TEXT NOT NULL
)
"""
# The open findings a cycle did not see (usually few): found once, read by the statements that carry or resolve them.
GONE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS cycle_gone (
    id TEXT PRIMARY KEY
)
"""
STAGED_COLUMNS = ("id, rule, check_name, severity, mode, asset, asset_type, message, details, exempted, exemption, "
                  "project, ancestry")
_INSERT = (f"INSERT INTO cycle_seen ({STAGED_COLUMNS}, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
           "ON CONFLICT (id) DO NOTHING")


# Keys sorted, so that the same details are the same text every cycle (a cycle with no change writes no row); values
# JSON cannot hold are written as text.
_encode = msgspec.json.Encoder(order="sorted", enc_hook=str).encode


def staged_row(f: Finding) -> tuple[Any, ...]:
    e = f.exempted or f.expired_exemption
    exemption = _encode({"reason": e.reason, "owner": e.owner, "ticket": e.ticket, "expires": e.expires,
                         "expired": f.exempted is None}).decode() if e is not None else None
    # The message of the drift event if this finding's exemption started or ended while it stayed open.
    note = (f"exempted ({f.exempted.reason}, {f.exempted.owner}): " if f.exempted else "exemption ended: ") + f.message
    return (f.id, f.rule, f.check, f.severity.value, f.mode.value, f.asset, f.asset_type, f.message,
            _encode(f.details).decode(), int(f.exempted is not None), exemption, f.project,
            f.ancestry, note)


def prepare(db: Database) -> None:
    """The connection's staging tables, created if needed and emptied."""
    with db.lock:
        db.execute(db.ddl(STAGING_DDL))
        db.execute(db.ddl(UNEVALUATED_DDL))
        db.execute(db.ddl(GONE_DDL))
        db.execute("DELETE FROM cycle_seen")
        db.execute("DELETE FROM cycle_unevaluated")
        db.execute("DELETE FROM cycle_gone")


def clear(db: Database) -> None:
    with db.lock:
        db.execute("DELETE FROM cycle_seen")
        db.execute("DELETE FROM cycle_unevaluated")
        db.execute("DELETE FROM cycle_gone")


class Staging:
    """The findings of one cycle in progress (see the module's docstring). Use one per cycle, from one thread."""

    def __init__(self, db: Database, batch: int = BATCH) -> None:
        self.db = db
        self.batch = batch
        self._rows: list[tuple[Any, ...]] = []
        self.added = 0  # findings handed in (repeated ids included)
        prepare(db)

    def add(self, finding: Finding) -> None:
        self._rows.append(staged_row(finding))
        self.added += 1
        if len(self._rows) >= self.batch:
            self.flush()

    def extend(self, findings: Iterable[Finding]) -> None:
        for f in findings:
            self.add(f)
        self.flush()

    def withdraw(self, asset: str, rules: Collection[str]) -> None:
        """Forget the findings these rules gave on this asset (a later copy of the asset replaces it)."""
        if not rules:
            return
        self.flush()
        db = self.db
        in_rules, args = db.in_list("rule", sorted(rules))
        with db.transaction(immediate=False):
            db.execute(f"DELETE FROM cycle_seen WHERE asset = ? AND {in_rules}", (asset, *args))

    def discard(self) -> None:
        """Drop what was staged (a cycle that is not recorded)."""
        self._rows = []
        clear(self.db)

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        with self.db.transaction(immediate=False):  # TEMP only: no lock a reader or writer of the state waits on
            self.db.executemany(_INSERT, rows)

    def not_evaluated(self, pairs: Iterable[tuple[str, str]]) -> None:
        """(rule, asset) that could not be evaluated this cycle; asset '' for a rule not evaluated at all."""
        it = iter(pairs)
        while chunk := list(islice(it, self.batch)):
            with self.db.transaction(immediate=False):
                self.db.executemany("INSERT INTO cycle_unevaluated (rule, asset) VALUES (?, ?)", chunk)

    def counts(self) -> Iterator[tuple[str, str, bool, int]]:
        """(rule, severity, exempted, number) of the distinct findings staged so far."""
        self.flush()
        for r in self.db.rows(
            "SELECT rule, severity, exempted, count(*) FROM cycle_seen GROUP BY rule, severity, exempted "
            "ORDER BY rule, severity, exempted"
        ):
            yield str(r[0]), str(r[1]), bool(r[2]), int(r[3])
