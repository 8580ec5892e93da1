"""Stage 4, findings -> state: the store of cycles, the finding lifecycle and drift between cycles.

SQLite (one file, WAL: `auditor history` reads while the daemon writes) or PostgreSQL (replicas share it), through
`auditor.state.db`. This module versions its tables in `schema_versions` under "auditor.state"; the remediation
journal keeps its own tables in the same database, and no migration here touches a table it does not own.

Findings stream in: the daemon stages them as the evaluation makes them (`staging()`, auditor.state.staging), or
`record_cycle` reads them once, in batches, into the connection's staging table (TEMP: it never grows the state
file); drift is computed in SQL against the findings still open:
- a finding seen now and not open before is `new` (also one that was resolved and came back);
- an open finding not seen now is `resolved`, unless its asset type was not read completely this cycle
  (ScanResult.incomplete_types(); "*" means every type) or its rule could not be evaluated (at all, or on its
  asset: `CycleInput.not_evaluated`): then it is carried, open and marked stale;
- an open finding whose rule is no longer loaded is closed without a drift event (the organization did not change);
- the rest are still open; their rows are written only when something about them changed, so a cycle with no
  change writes no finding row. Their last-seen time is the end of the last cycle that recorded findings (a stale
  finding keeps the time it was last actually seen); their first-seen time never moves.
Until a cycle has read everything, cycles are the baseline (that complete cycle included): their findings are stored
and counted (the cycle's new and resolved), not drift; they record no drift event (a first cycle on a messy
organization would copy a million findings into events nobody reads as drift).
Counters behind the Prometheus counters (cycles, drift events, source errors, remediations) live here too, so
they survive restarts and never go backwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from auditor.evaluate.globs import compile_glob
from auditor.state import changes
from auditor.state.db import Database, Row, StateError, migrate, open_database
from auditor.state.records import (
    CycleInput,
    CycleRecord,
    DriftEvent,
    Recorded,
    SourceState,
    StoredFinding,
)
from auditor.state.staging import BATCH, STAGED_COLUMNS, Staging, clear

COMPONENT = "auditor.state"

OUTCOMES = ("success", "partial", "failed")
BULK_LOAD_ROWS = 10_000  # findings a first cycle inserts before its indexes are built after them
CHANGES = ("new", "resolved")

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE cycles (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at REAL NOT NULL,
        ended_at REAL,
        outcome TEXT NOT NULL CHECK (outcome IN ('success', 'partial', 'failed')),
        complete INTEGER NOT NULL,
        incomplete TEXT NOT NULL DEFAULT '{}',
        snapshot_at REAL,
        assets INTEGER NOT NULL DEFAULT 0,
        findings INTEGER NOT NULL DEFAULT 0,
        exempted INTEGER NOT NULL DEFAULT 0,
        new INTEGER NOT NULL DEFAULT 0,
        resolved INTEGER NOT NULL DEFAULT 0,
        stale INTEGER NOT NULL DEFAULT 0,
        rules INTEGER NOT NULL DEFAULT 0,
        by_severity TEXT NOT NULL DEFAULT '{}',
        durations TEXT NOT NULL DEFAULT '{}',
        sources TEXT NOT NULL DEFAULT '[]',
        error TEXT
    );
    CREATE INDEX cycles_started ON cycles (started_at);
    CREATE TABLE findings (
        id TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        check_name TEXT NOT NULL,
        severity TEXT NOT NULL,
        mode TEXT NOT NULL,
        asset TEXT NOT NULL,
        asset_type TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '{}',
        exempted INTEGER NOT NULL DEFAULT 0,
        exemption TEXT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        resolved_at REAL,
        stale INTEGER NOT NULL DEFAULT 0,
        first_cycle INTEGER,
        last_cycle INTEGER
    );
    CREATE INDEX findings_open ON findings (resolved_at, severity);
    CREATE TABLE drift_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cycle_id INTEGER NOT NULL REFERENCES cycles (id) ON DELETE CASCADE,
        at REAL NOT NULL,
        change TEXT NOT NULL CHECK (change IN ('new', 'resolved')),
        finding_id TEXT NOT NULL,
        rule TEXT NOT NULL,
        severity TEXT NOT NULL,
        asset TEXT NOT NULL,
        asset_type TEXT NOT NULL,
        exempted INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX drift_cycle ON drift_events (cycle_id);
    CREATE TABLE counters (
        metric TEXT NOT NULL,
        labels TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (metric, labels)
    );
    CREATE TABLE source_state (
        source TEXT PRIMARY KEY,
        last_read_at REAL,
        last_complete_at REAL,
        data_at REAL,
        last_error TEXT
    );
    CREATE TABLE asset_counts (
        asset_type TEXT PRIMARY KEY,
        count INTEGER NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # v2: the baseline cycle is marked, so history and the report do not present it as drift.
    """
    ALTER TABLE cycles ADD COLUMN baseline INTEGER NOT NULL DEFAULT 0;
    """,
    # v3: where the asset of a finding sits (its project, its ancestry from the top down), for /findings.json,
    # notifications and Security Command Center. Rows written before are filled by the next cycle that sees them.
    """
    ALTER TABLE findings ADD COLUMN project TEXT;
    ALTER TABLE findings ADD COLUMN ancestry TEXT NOT NULL DEFAULT '';
    ALTER TABLE drift_events ADD COLUMN project TEXT;
    ALTER TABLE drift_events ADD COLUMN ancestry TEXT NOT NULL DEFAULT '';
    """,
    # v4: changes reported by events (feeds, watches) between cycles (auditor.incremental, auditor.state.changes):
    # the inbox of changes received and not yet recorded, the newest state recorded per asset and content (its
    # window start time or resourceVersion key: older and repeated messages change nothing, across restarts), and
    # where a drift event came from (a cycle, or an event).
    """
    CREATE TABLE change_inbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at REAL NOT NULL,
        asset TEXT NOT NULL,
        content TEXT NOT NULL,
        window_start TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE TABLE change_marks (
        asset TEXT NOT NULL,
        content TEXT NOT NULL,
        asset_type TEXT NOT NULL,
        window_start TEXT NOT NULL,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (asset, content)
    );
    CREATE INDEX change_marks_recorded ON change_marks (recorded_at);
    CREATE INDEX findings_asset ON findings (asset, resolved_at);
    ALTER TABLE drift_events ADD COLUMN origin TEXT NOT NULL DEFAULT 'cycle';
    """,
    # v5: the open findings in report order (worst first): a page of /findings.json and the report's worst findings
    # are read from this index instead of sorting every open finding (a million of them) for each request.
    """
    CREATE INDEX findings_worst ON findings (resolved_at, (CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1
        WHEN 'medium' THEN 2 WHEN 'low' THEN 3 ELSE 4 END), rule, asset, id);
    """,
    # v6: a digest of each finding's id and content (auditor.state.staging): a cycle compares the findings it makes
    # with the open ones by digest in memory, and stages only those that differ. Rows written before have none: the
    # next cycle that sees them stages them and fills it in.
    """
    ALTER TABLE findings ADD COLUMN digest INTEGER;
    """,
    # v7: the open, exempted findings in report order, alone: the report lists and counts them (a few among a million
    # open findings) without walking findings_worst and reading every row to test `exempted`.
    """
    CREATE INDEX findings_exempted ON findings ((CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1
        WHEN 'medium' THEN 2 WHEN 'low' THEN 3 ELSE 4 END), rule, asset, id) WHERE resolved_at IS NULL AND exempted = 1;
    """,
    # v8: the open findings newest first: the report's newest findings are the first entries of this index instead of
    # a sort of every open finding each cycle.
    """
    CREATE INDEX findings_newest ON findings (resolved_at, first_seen DESC, id);
    """,
)



_CONTENT = ("rule", "check_name", "severity", "mode", "asset", "asset_type", "message", "details", "exempted",
            "exemption", "project", "ancestry", "digest")
# The order of the index findings_worst (v5): the same expression, or the index is not used.
_SEVERITY_ORDER = (
    "CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 WHEN 'low' THEN 3 ELSE 4 END"
)
_OPEN = "findings.resolved_at IS NULL"
# The same test on rows found by their id: the unary plus keeps SQLite from walking every open finding through the
# index findings_open (it takes `resolved_at IS NULL` for a selective equality) to find the few a cycle names.
_OPEN_BY_ID = "+findings.resolved_at IS NULL"
_NOT_SEEN = "NOT EXISTS (SELECT 1 FROM cycle_seen s WHERE s.id = findings.id)"
_GONE = "findings.id IN (SELECT g.id FROM cycle_gone g)"  # open and not seen this cycle (see _record_findings)
# Among the open findings whose id starts with a prefix the staging did not see (`Staging.unseen`; the prefix is
# 16 hexadecimal digits, so `prefix || 'g'` is past every id that starts with it, in any collation).
_UNSEEN = ("SELECT f.id FROM cycle_unseen u JOIN findings f ON f.id >= u.prefix AND f.id < u.prefix || 'g' "
           "WHERE +f.resolved_at IS NULL AND NOT EXISTS (SELECT 1 FROM cycle_seen s WHERE s.id = f.id)")
# Its rule could not be evaluated this cycle (at all, or on its asset): its absence is no evidence of a fix.
_UNEVALUATED = ("EXISTS (SELECT 1 FROM cycle_unevaluated u WHERE u.rule = findings.rule "
                "AND (u.asset = '' OR u.asset = findings.asset))")


def _labels(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"))


class Store:
    """The state store on a SQLite file or a PostgreSQL URL. Thread-safe: one connection behind one lock."""

    def __init__(self, target: str | Path, password_file: str | Path | None = None) -> None:
        self.password_file = password_file
        self.db: Database = open_database(target, password_file)
        self.path = target if isinstance(target, Path) else Path(target) if self.db.dialect == "sqlite" else None
        self.target = str(target)
        try:
            migrate(self.db, COMPONENT, MIGRATIONS)
        except StateError:
            self.db.close()
            raise
        except Exception as exc:  # not a database, a server that refuses: one clear line
            self.db.close()
            raise StateError(f"{self.db.name}: cannot open the state database ({exc})") from None

    def reopen(self) -> Store:
        """Another store on the same database, with a connection of its own (readers beside the writer)."""
        return Store(self.target, self.password_file)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------------------------
    def record_cycle(self, c: CycleInput, fence: Callable[[], None] | None = None,
                     events_since: float | None = None) -> Recorded:
        """Record one cycle in one transaction. `fence` runs first inside it and may refuse (an HA follower).

        `events_since` (the daemon, which also records changes from events): the assets a change was recorded for
        since then keep what that change recorded (the snapshot may be older), and the drift this cycle finds on the
        asset types events report is counted as missed by them (`reconcile_missed_total`)."""
        if c.outcome not in OUTCOMES:
            raise ValueError(f"unknown cycle outcome {c.outcome!r}")
        db = self.db
        with db.lock:
            staging: Staging | None = None
            if isinstance(c.findings, Staging):
                if c.findings.db is not db:
                    raise ValueError("findings staged on another connection")
                staging = c.findings
                staging.flush()
            elif c.findings is not None:
                staging = Staging(db, compare=True)
                staging.extend(c.findings)
            if staging is not None:
                staging.seal()
                staging.not_evaluated(c.not_evaluated)
            try:
                rec = self._record(db, c, fence, events_since, staging)
            finally:
                if staging is not None:
                    clear(db)
        return rec

    def _record(self, db: Database, c: CycleInput, fence: Callable[[], None] | None,
                events_since: float | None = None, staging: Staging | None = None) -> Recorded:
        with db.transaction():
            if fence is not None:
                fence()
            cycle_id = int(db.execute(
                "INSERT INTO cycles (started_at, ended_at, outcome, complete, incomplete, snapshot_at, rules, "
                "durations, sources, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (c.started_at, c.ended_at, c.outcome, int(c.outcome == "success"), json.dumps(c.incomplete),
                 c.snapshot_at, c.rules, json.dumps(c.durations), json.dumps(c.sources), c.error),
            ).fetchone()[0])
            rec = Recorded(cycle_id, load_drift=lambda: self.iter_drift(cycle_id))
            self._bump(db, "cycles_total", {"outcome": c.outcome})
            for source, code in c.source_errors:
                self._bump(db, "source_errors_total", {"source": source, "code": code})
            self._record_sources(db, c)
            if c.findings is not None and staging is not None:
                if events_since is not None:
                    changes.keep_event_state(db, events_since, staging)
                self._record_findings(db, c, rec, staging)
                self._record_assets(db, c)
                if events_since is not None and not rec.baseline:
                    for asset_type, n in changes.missed(db, cycle_id).items():
                        self._bump(db, "reconcile_missed_total", {"asset_type": asset_type}, n)
            # The open findings counted in one pass (per severity, in the order of findings_open).
            by_sev, totals = {}, [0, 0, 0]
            for severity, *counts in db.execute(
                "SELECT severity, count(*) FILTER (WHERE exempted = 0), count(*) FILTER (WHERE exempted = 1), "
                "count(*) FILTER (WHERE stale = 1) FROM findings WHERE resolved_at IS NULL GROUP BY severity"
            ).fetchall():
                totals = [t + int(n) for t, n in zip(totals, counts, strict=True)]
                if counts[0]:
                    by_sev[severity] = int(counts[0])
            assets = int(db.execute("SELECT coalesce(sum(count), 0) FROM asset_counts").fetchone()[0])
            rec.open, rec.stale = int(totals[0]), int(totals[2])
            db.execute(
                "UPDATE cycles SET findings = ?, exempted = ?, stale = ?, new = ?, resolved = ?, by_severity = ?, "
                "assets = ? WHERE id = ?",
                (int(totals[0]), int(totals[1]), int(totals[2]), rec.new_count, rec.resolved_count,
                 json.dumps(by_sev), assets, cycle_id),
            )
        return rec

    def staging(self) -> Staging:
        """A sink for the findings of the cycle about to be recorded: they go to the connection's staging table a
        batch at a time as they are made; record them with `record_cycle(CycleInput(findings=staging, ...))`."""
        return Staging(self.db, compare=True)

    def _record_sources(self, db: Database, c: CycleInput) -> None:
        for s in c.sources:
            name = str(s.get("source"))
            complete = bool(s.get("complete")) and c.findings is not None
            err = None if complete else "; ".join(
                [f"{f['asset_type']}: {f['reason']}" for f in s.get("failed", [])] or [c.error or "not read"]
            )
            db.execute(
                "INSERT INTO source_state (source, last_read_at, last_complete_at, data_at, last_error) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET last_read_at = excluded.last_read_at, "
                "last_complete_at = coalesce(excluded.last_complete_at, source_state.last_complete_at), "
                "data_at = coalesce(excluded.data_at, source_state.data_at), last_error = excluded.last_error",
                (
                    name,
                    c.ended_at,
                    c.ended_at if complete else None,
                    (s.get("data_at") or c.snapshot_at) if complete else None,
                    err,
                ),
            )

    def _record_findings(self, db: Database, c: CycleInput, rec: Recorded, staging: Staging) -> None:
        """Drift as set differences in SQL between the staged findings and the open ones (the findings seen
        unchanged were only counted by the staging: nothing about them is written)."""
        now, cid = c.ended_at, rec.cycle_id
        # When the open findings were last actually seen: the end of the previous cycle that recorded findings.
        prev = db.execute(
            "SELECT max(ended_at) FROM cycles WHERE id < ? AND outcome != 'failed'", (cid,)
        ).fetchone()[0]
        # A partial cycle is no baseline: the baseline lasts until a cycle has read everything (an API error at
        # install would otherwise make every finding that already existed arrive as new drift on the next cycle).
        rec.baseline = db.execute(
            "SELECT 1 FROM cycles WHERE id < ? AND outcome = 'success' LIMIT 1", (cid,)
        ).fetchone() is None
        seen_before = prev if prev is not None else now
        events = ("INSERT INTO drift_events (cycle_id, at, change, finding_id, rule, severity, asset, asset_type, "
                  "exempted, message, project, ancestry) ")
        # None open (a first cycle, or every finding resolved): no staged finding is an open one, so the statements
        # that join the staged rows to the open findings are left out (each read every staged id: a second at a
        # million findings).
        any_open = db.execute("SELECT 1 FROM findings WHERE resolved_at IS NULL LIMIT 1").fetchone() is not None
        # Still open, with an exemption that started or ended: the set of open, not exempted findings changed, which
        # is what the drift counters and alerts follow.
        if not rec.baseline and any_open:
            db.execute(
                events + "SELECT ?, ?, CASE WHEN s.exempted = 1 THEN 'resolved' ELSE 'new' END, s.id, s.rule, "
                "s.severity, s.asset, s.asset_type, 0, s.note, s.project, s.ancestry FROM cycle_seen s JOIN findings f "
                "ON f.id = s.id WHERE +f.resolved_at IS NULL AND f.exempted != s.exempted ORDER BY s.id",
                (cid, now),
            )
        staged = int(db.execute("SELECT count(*) FROM cycle_seen").fetchone()[0])
        # New, or resolved earlier and back again: a new occurrence, first seen now. The others seen were open. (None
        # open: every staged finding arrived.)
        arrived = "FROM cycle_seen s WHERE " + (
            "NOT EXISTS (SELECT 1 FROM findings f WHERE f.id = s.id AND f.resolved_at IS NULL)" if any_open else "1 = 1"
        )
        if rec.baseline:
            # None open: every staged row arrived, and the staging counted the exempted ones as they came.
            if not any_open and (exempted := staging.staged_exempted()) is not None:
                n_new, n_exempted = staged, exempted
            else:
                n_new, n_exempted = db.execute(
                    f"SELECT count(*), count(*) FILTER (WHERE s.exempted = 1) {arrived}"
                ).fetchone()
            rec.new_count, rec.new_exempted = int(n_new), int(n_exempted or 0)
        else:
            rec.new_count = db.execute(
                events + "SELECT ?, ?, 'new', s.id, s.rule, s.severity, s.asset, s.asset_type, s.exempted, s.message, "
                f"s.project, s.ancestry {arrived} ORDER BY s.id",
                (cid, now),
            ).rowcount
        rec.still_open = staging.unchanged + staged - rec.new_count
        staged_open = f"FROM cycle_seen s WHERE findings.id IN (SELECT id FROM cycle_seen) AND findings.id = s.id " \
                      f"AND {_OPEN_BY_ID}"
        changed = " OR ".join(f"findings.{k} IS DISTINCT FROM s.{k}" for k in _CONTENT if k != "digest")
        if any_open:
            rec.changed += db.execute(
                "UPDATE findings SET " + ", ".join(f"{k} = s.{k}" for k in _CONTENT) + ", last_seen = ?, "
                f"last_cycle = ?, stale = 0 {staged_open} AND (findings.stale = 1 OR {changed})",
                (now, cid),
            ).rowcount
            # Only the digest differs (the content is what it was: a row stored before digests, or by a version that
            # digested otherwise): the digest alone is written, and no index entry is touched.
            rec.changed += db.execute(
                f"UPDATE findings SET digest = s.digest {staged_open} AND findings.digest IS DISTINCT FROM s.digest"
            ).rowcount
        rebuild = _drop_indexes_for_bulk_load(db, staged)
        rec.changed += db.execute(
            f"INSERT INTO findings ({STAGED_COLUMNS}, first_seen, last_seen, first_cycle, last_cycle) "
            # In id order: the rows' ids go into the primary key's index in its order, not at random places of an
            # index far larger than the page cache (a first cycle of a million findings: 1.5 s less).
            f"SELECT {STAGED_COLUMNS}, ?, ?, ?, ? {arrived} ORDER BY s.id ON CONFLICT (id) DO UPDATE SET "
            + ", ".join(f"{k} = excluded.{k}" for k in _CONTENT)
            + ", first_seen = excluded.first_seen, last_seen = excluded.last_seen, resolved_at = NULL, stale = 0, "
            "first_cycle = excluded.first_cycle, last_cycle = excluded.last_cycle",
            (now, now, cid, cid),
        ).rowcount
        for statement in rebuild:
            db.execute(statement)
        # Open and not seen now: their ids, found in one pass, drive the statements below. The staging knows which
        # of the open findings it neither saw unchanged nor staged: only those are looked at.
        if staging.compared:
            if staging.unseen():  # none on a first cycle or an unchanged one: no join of every open finding
                db.execute(f"INSERT INTO cycle_gone (id) {_UNSEEN}")
        else:
            db.execute(f"INSERT INTO cycle_gone (id) SELECT id FROM findings WHERE {_OPEN} AND {_NOT_SEEN}")
        # Its rule was removed from the rule files: nothing changed in the organization, so
        # it is closed without a drift event (no "resolved" alert for a rule someone deleted).
        if c.rule_ids is not None:
            rules = sorted(c.rule_ids)
            kept, args = db.in_list("findings.rule", rules)
            rec.retired = db.execute(
                f"UPDATE findings SET resolved_at = ?, stale = 0 WHERE {_OPEN_BY_ID} AND {_GONE} AND NOT ({kept})",
                (now, *args),
            ).rowcount
            rec.changed += rec.retired
        # Not seen, but its type was not read completely: absence of evidence, so it stays open (stale). Sources
        # report what they could not read as asset types or globs (`compute.googleapis.com/*`): matched against the
        # few distinct asset types of the missing findings.
        unread = [compile_glob(t) for t in c.incomplete]
        types = [r[0] for r in db.execute(f"SELECT DISTINCT asset_type FROM findings WHERE {_OPEN_BY_ID} AND {_GONE}")]
        stale_types = types if "*" in c.incomplete else [t for t in types if any(p.match(t) for p in unread)]
        in_types, stale_args = db.in_list("findings.asset_type", stale_types)
        in_stale = f"({in_types} OR {_UNEVALUATED})"
        rec.changed += db.execute(
            f"UPDATE findings SET stale = 1, last_seen = CASE WHEN last_seen > ? THEN last_seen ELSE ? END "
            f"WHERE {_OPEN_BY_ID} AND {_GONE} AND stale = 0 AND {in_stale}",
            (seen_before, seen_before, *stale_args),
        ).rowcount
        # The rest is resolved.
        if not rec.baseline:
            db.execute(
                events + "SELECT ?, ?, 'resolved', id, rule, severity, asset, asset_type, exempted, message, project, "
                "ancestry FROM findings "
                f"WHERE {_OPEN_BY_ID} AND {_GONE} AND NOT ({in_stale}) ORDER BY id",
                (cid, now, *stale_args),
            )
        resolved = db.execute(
            f"UPDATE findings SET resolved_at = ?, stale = 0, last_seen = CASE WHEN stale = 1 THEN last_seen "
            f"WHEN last_seen > ? THEN last_seen ELSE ? END WHERE {_OPEN_BY_ID} AND {_GONE} AND NOT ({in_stale})",
            (now, seen_before, seen_before, *stale_args),
        ).rowcount
        rec.changed += resolved
        db.execute("UPDATE cycles SET baseline = ? WHERE id = ?", (int(rec.baseline), cid))
        if rec.baseline:
            # The baseline is what the organization already was, not drift: its findings are stored and counted,
            # the counters (and the alerts on them) stay quiet, and a lost state file does not page for every
            # existing finding.
            rec.resolved_count = resolved
            return
        for rule, severity, change, n in db.execute(
            "SELECT rule, severity, change, count(*) FROM drift_events WHERE cycle_id = ? AND exempted = 0 "
            "GROUP BY rule, severity, change ORDER BY rule, severity, change",
            (cid,),
        ).fetchall():
            # Exempted findings coming and going are bookkeeping, not drift anyone is paged for.
            self._bump(db, "drift_events_total", {"rule": rule, "severity": severity, "change": change}, int(n))
        counts = dict(db.execute(
            "SELECT change, count(*) FROM drift_events WHERE cycle_id = ? GROUP BY change", (cid,)
        ).fetchall())
        rec.new_count, rec.resolved_count = int(counts.get("new", 0)), int(counts.get("resolved", 0))

    def _record_assets(self, db: Database, c: CycleInput) -> None:
        """Asset counts of the snapshot; types not read completely keep their last good count."""
        unread = [compile_glob(t) for t in c.incomplete]
        keep = sorted(
            r[0] for r in db.execute("SELECT asset_type FROM asset_counts") if any(p.match(r[0]) for p in unread)
        )
        kept, args = db.in_list("asset_type", keep)
        db.execute(f"DELETE FROM asset_counts WHERE NOT ({kept})", args)
        db.executemany(
            "INSERT INTO asset_counts (asset_type, count, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (asset_type) DO NOTHING",
            [(t, n, c.ended_at) for t, n in c.assets_by_type.items()],
        )
        db.executemany(
            "UPDATE asset_counts SET count = ?, updated_at = ? WHERE asset_type = ?",
            [(n, c.ended_at, t) for t, n in c.assets_by_type.items() if t not in keep],
        )

    # -- changes between cycles (auditor.incremental; the tables and rules are in auditor.state.changes) -----------
    def enqueue_changes(self, rows: Iterable[tuple[float, str, str, str, str]]) -> None:
        """(received_at, asset, content, window_start, payload) of changes received, into the inbox."""
        changes.enqueue(self.db, rows)

    def pending_changes(self, limit: int) -> list[tuple[int, float, str]]:
        return changes.pending(self.db, limit)

    def pending_change_count(self) -> int:
        return changes.pending_count(self.db)

    def discard_changes(self, ids: Sequence[int]) -> None:
        changes.discard(self.db, ids)

    def change_marks(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        return changes.marks(self.db, keys)

    def record_changes(self, items: Sequence[changes.ChangeInput], now: float,
                       fence: Callable[[], None] | None = None) -> changes.ChangesRecorded | None:
        """Record changes from events in one transaction (see auditor.state.changes); None before the first cycle."""
        with self.db.transaction() as db:
            if fence is not None:
                fence()
            return changes.record(db, items, now)

    def event_drift(self, rec: changes.ChangesRecorded) -> Iterator[DriftEvent]:
        """The drift events that recording these changes wrote."""
        if rec.first_event is None or rec.last_event is None:
            return iter(())
        return (_event(r) for r in changes.event_drift(self.db, rec.first_event, rec.last_event))

    def update_durations(self, cycle_id: int, durations: Mapping[str, float]) -> None:
        """The stage durations, known once the cycle has reported (its ended_at stays the time it was recorded)."""
        with self.db.transaction() as db:
            db.execute("UPDATE cycles SET durations = ? WHERE id = ?", (json.dumps(dict(durations)), cycle_id))

    def bump(self, metric: str, labels: Mapping[str, str], by: float = 1.0) -> None:
        """Add to a persistent counter (used by the remediation step for auditor_remediations_total)."""
        with self.db.transaction() as db:
            self._bump(db, metric, labels, by)

    @staticmethod
    def _bump(db: Database, metric: str, labels: Mapping[str, str], by: float = 1.0) -> None:
        db.execute(
            "INSERT INTO counters (metric, labels, value) VALUES (?, ?, ?) "
            "ON CONFLICT (metric, labels) DO UPDATE SET value = counters.value + excluded.value",
            (metric, _labels(labels), by),
        )

    def prune(self, keep_seconds: float, now: float | None = None) -> int:
        """Forget cycles, drift events and resolved findings older than `keep_seconds`. Counters are kept."""
        import time

        cutoff = (time.time() if now is None else now) - keep_seconds
        with self.db.transaction() as db:
            last = db.execute("SELECT max(id) FROM cycles").fetchone()[0] or 0
            n = db.execute("DELETE FROM cycles WHERE started_at < ? AND id < ?", (cutoff, last)).rowcount
            db.execute("DELETE FROM findings WHERE resolved_at IS NOT NULL AND resolved_at < ?", (cutoff,))
        return n

    # -- reading ---------------------------------------------------------------------------------------------------
    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[Row]:
        return self.db.rows(sql, tuple(args))

    def _seen_at(self) -> float:
        """When open findings that are not stale were last seen: the end of the last cycle that recorded findings."""
        row = self._rows("SELECT max(ended_at) FROM cycles WHERE outcome != 'failed'")
        return float(row[0][0]) if row and row[0][0] is not None else 0.0

    def _findings(self, where: str, args: Sequence[Any] = (), order: str = "", limit: int | None = None,
                  offset: int = 0, table: str = "findings") -> list[StoredFinding]:
        seen_at = self._seen_at()
        sql = f"SELECT * FROM {table} WHERE {where}" + (f" ORDER BY {order}" if order else "")
        if limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        return [_finding(r, seen_at) for r in self._rows(sql, args)]

    def open_findings(self, include_exempted: bool = True) -> list[StoredFinding]:
        """Every open finding, worst first (the CLI and tests; the daemon pages with `find`)."""
        where = "resolved_at IS NULL" + ("" if include_exempted else " AND exempted = 0")
        return self._findings(where, order=f"{_SEVERITY_ORDER}, rule, asset, id")

    def find(self, *, severities: Sequence[str] = (), rules: Sequence[str] = (), asset_types: Sequence[str] = (),
             stale: bool | None = None, exempted: bool | None = None, limit: int = 100, offset: int = 0,
             newest: bool = False, count: bool = True) -> tuple[int, list[StoredFinding]]:
        """(total, one page) of the open findings matching the filters, worst first (or newest first). `count`
        False: the page only, total -1 (counting reads every open finding)."""
        clauses, args = ["resolved_at IS NULL"], []
        for column, values in (("severity", severities), ("rule", rules), ("asset_type", asset_types)):
            if values:
                clause, a = self.db.in_list(column, sorted(set(values)))
                clauses.append(clause)
                args += a
        for column, flag in (("stale", stale), ("exempted", exempted)):
            if flag is not None:
                # A literal, not a parameter: SQLite takes the partial index findings_exempted only for a query
                # whose WHERE states its condition.
                clauses.append(f"{column} = {int(flag)}")
        where = " AND ".join(clauses)
        table = "findings"
        if exempted and self.dialect == "sqlite":  # else it counts them through findings_open, reading every row
            table += " INDEXED BY findings_exempted"
        total = int(self._rows(f"SELECT count(*) FROM {table} WHERE {where}", args)[0][0]) if count else -1
        order = "first_seen DESC, id" if newest else f"{_SEVERITY_ORDER}, rule, asset, id"
        return total, self._findings(where, args, order, limit, offset, table)

    def finding(self, fid: str) -> StoredFinding | None:
        rows = self._findings("id = ?", (fid,))
        return rows[0] if rows else None

    def finding_counts(self) -> list[tuple[str, str, str, str, bool, int]]:
        """(rule, severity, asset_type, mode, exempted, count) over open findings: what the metrics export."""
        rows = self._rows(
            "SELECT rule, severity, asset_type, mode, exempted, count(*) FROM findings WHERE resolved_at IS NULL "
            "GROUP BY rule, severity, asset_type, mode, exempted"
        )
        return [(r[0], r[1], r[2], r[3], bool(r[4]), int(r[5])) for r in rows]

    def cycles(self, limit: int = 20) -> list[CycleRecord]:
        rows = self._rows("SELECT * FROM cycles ORDER BY id DESC LIMIT ?", (limit,))
        return [_cycle(r) for r in rows]

    def last_cycle(self, outcomes: Iterable[str] = OUTCOMES) -> CycleRecord | None:
        outs = list(outcomes)
        rows = self._rows(
            f"SELECT * FROM cycles WHERE outcome IN ({','.join('?' * len(outs))}) ORDER BY id DESC LIMIT 1", outs
        )
        return _cycle(rows[0]) if rows else None

    def drift(self, cycle_id: int | None = None, limit: int = 1000) -> list[DriftEvent]:
        """Drift events of one cycle, or the latest ones over all cycles."""
        if cycle_id is not None:
            rows = self._rows("SELECT * FROM drift_events WHERE cycle_id = ? ORDER BY id LIMIT ?", (cycle_id, limit))
        else:
            rows = self._rows("SELECT * FROM drift_events ORDER BY id DESC LIMIT ?", (limit,))
        return [_event(r) for r in rows]

    def iter_drift(self, cycle_id: int, page: int = BATCH) -> Iterator[DriftEvent]:
        """Every drift event a cycle recorded, a page at a time (memory bounded by the page, not the cycle). Events
        recorded between cycles are attached to the cycle before them but are not its own: they are left out."""
        after = 0
        while rows := self._rows(
            "SELECT * FROM drift_events WHERE cycle_id = ? AND origin = 'cycle' AND id > ? ORDER BY id LIMIT ?",
            (cycle_id, after, page),
        ):
            for r in rows:
                yield _event(r)
            after = int(rows[-1]["id"])

    def drift_counts(self, cycle_id: int) -> dict[tuple[str, bool], int]:
        """(change, exempted) -> number of drift events of a cycle."""
        return {
            (r[0], bool(r[1])): int(r[2])
            for r in self._rows(
                "SELECT change, exempted, count(*) FROM drift_events WHERE cycle_id = ? GROUP BY change, exempted",
                (cycle_id,),
            )
        }

    def drift_totals(self, c: CycleRecord) -> tuple[int, int]:
        """(new, resolved) of a cycle's drift events; a baseline's, which records no drift event, as it counted them."""
        if c.baseline:
            return c.new, c.resolved
        counts = self.drift_counts(c.id)
        return (sum(n for (change, _), n in counts.items() if change == "new"),
                sum(n for (change, _), n in counts.items() if change == "resolved"))

    def last_drift(self, limit: int = 1000) -> tuple[CycleRecord | None, list[DriftEvent]]:
        """The drift of the last cycle that recorded findings (a failed cycle records none), the first `limit`."""
        c = self.last_cycle(("success", "partial"))
        return c, self.drift(c.id, limit) if c else []

    def counters(self, metric: str) -> list[tuple[dict[str, str], float]]:
        rows = self._rows("SELECT labels, value FROM counters WHERE metric = ? ORDER BY labels", (metric,))
        return [(json.loads(r[0]), float(r[1])) for r in rows]

    def source_reads(self, source: str, limit: int = 10, complete: bool | None = None) -> list[dict[str, Any]]:
        """What the last cycles recorded of one source (its entry of `CycleInput.sources`), newest first; with
        `complete`, only the reads that were (or were not) complete. Read back a page of cycles at a time."""
        out: list[dict[str, Any]] = []
        before: int | None = None
        while len(out) < limit:
            rows = self._rows(
                "SELECT id, sources FROM cycles" + (" WHERE id < ?" if before is not None else "")
                + " ORDER BY id DESC LIMIT 200", (before,) if before is not None else ()
            )
            for r in rows:
                read = next((s for s in json.loads(r["sources"] or "[]") if s.get("source") == source), None)
                if read is not None and (complete is None or bool(read.get("complete")) == complete):
                    out.append(read)
                    if len(out) >= limit:
                        break
            if len(rows) < 200:
                break
            before = int(rows[-1]["id"])
        return out

    def asset_counts(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self._rows("SELECT asset_type, count FROM asset_counts ORDER BY asset_type")}

    def sources(self) -> list[SourceState]:
        return [
            SourceState(r["source"], r["last_read_at"], r["last_complete_at"], r["data_at"], r["last_error"])
            for r in self._rows("SELECT * FROM source_state ORDER BY source")
        ]

    def schema_versions(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self._rows("SELECT component, version FROM schema_versions")}


def _drop_indexes_for_bulk_load(db: Database, rows: int) -> list[str]:
    """A first cycle fills an empty findings table: on SQLite its secondary indexes are dropped before and built after
    the rows (one sort each), instead of taking the rows' random keys one at a time into indexes far larger than the
    page cache (each insert read and wrote back index pages through the WAL). Returns the statements that build them
    again, in the same transaction."""
    if db.dialect != "sqlite" or rows < BULK_LOAD_ROWS or db.execute("SELECT 1 FROM findings LIMIT 1").fetchone():
        return []
    indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'findings' "
                         "AND sql IS NOT NULL ORDER BY name").fetchall()
    for name, _ in indexes:
        db.execute(f'DROP INDEX "{name}"')
    return [str(sql) for _, sql in indexes]


def _event(r: Row) -> DriftEvent:
    return DriftEvent(r["change"], r["finding_id"], r["rule"], r["severity"], r["asset"], r["asset_type"],
                      bool(r["exempted"]), r["message"], r["at"], int(r["cycle_id"]), r["project"], r["ancestry"])


def _finding(r: Row, seen_at: float = 0.0) -> StoredFinding:
    return StoredFinding(
        id=r["id"],
        rule=r["rule"],
        check=r["check_name"],
        severity=r["severity"],
        mode=r["mode"],
        asset=r["asset"],
        asset_type=r["asset_type"],
        message=r["message"],
        details=json.loads(r["details"]),
        exempted=bool(r["exempted"]),
        exemption=json.loads(r["exemption"]) if r["exemption"] else None,
        first_seen=r["first_seen"],
        last_seen=max(r["last_seen"], seen_at) if r["resolved_at"] is None and not r["stale"] else r["last_seen"],
        resolved_at=r["resolved_at"],
        stale=bool(r["stale"]),
        project=r["project"],
        ancestry=r["ancestry"],
    )


def _cycle(r: Row) -> CycleRecord:
    return CycleRecord(
        id=int(r["id"]),
        started_at=r["started_at"],
        ended_at=r["ended_at"],
        outcome=r["outcome"],
        complete=bool(r["complete"]),
        incomplete=json.loads(r["incomplete"]),
        snapshot_at=r["snapshot_at"],
        assets=r["assets"],
        findings=r["findings"],
        exempted=r["exempted"],
        new=r["new"],
        resolved=r["resolved"],
        stale=r["stale"],
        rules=r["rules"],
        by_severity=json.loads(r["by_severity"]),
        durations=json.loads(r["durations"]),
        sources=json.loads(r["sources"]),
        error=r["error"],
        baseline=bool(r["baseline"]),
    )
