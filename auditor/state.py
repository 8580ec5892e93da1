"""Stage 4, findings -> state: the SQLite store of cycles, the finding lifecycle and drift between cycles.

One file, WAL mode (`auditor history` and `auditor findings` read while the daemon writes). This module versions its
tables in `schema_versions` under "auditor.state" (`migrate` serves any component the same way); the remediation
journal keeps its own tables in the same file, and no migration here touches a table it does not own.

Drift is computed when a cycle is recorded, against the findings still open in the store:
- a finding seen now and not open before is `new` (also one that was resolved and came back);
- an open finding not seen now is `resolved`, unless its asset type was not read completely this cycle
  (ScanResult.incomplete_types(); "*" means every type): then it stays open and is marked stale;
- an open finding whose rule is no longer loaded is closed without a drift event (the organization did not change);
- the rest are still open: their last-seen time moves, their first-seen time never does.
Until a cycle has read everything, cycles are the baseline (that complete cycle included): stored and logged, not
counted as drift.
Counters behind the Prometheus counters (cycles, drift events, source errors, remediations) live here too, so
they survive restarts and never go backwards.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.errors import AuditorError
from auditor.evaluate.globs import compile_glob
from auditor.model import Finding

COMPONENT = "auditor.state"
BUSY_TIMEOUT_MS = 30_000

OUTCOMES = ("success", "partial", "failed")
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
)


class StateError(AuditorError):
    """The state file cannot be opened or was written by a newer version."""


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection on the state file: WAL, a busy timeout, foreign keys, rows by name, autocommit.

    Other modules (the remediation journal) use this to keep their tables in the same file; they open
    their transactions with `BEGIN IMMEDIATE` as this module does.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(p, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateError(f"{p}: cannot switch the state file to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{p}: cannot open the state file ({exc})") from None
    except OSError as exc:
        raise StateError(f"{p}: cannot create the state folder ({exc.strerror or exc})") from None
    return conn


def migrate(conn: sqlite3.Connection, component: str, migrations: tuple[str, ...]) -> int:
    """Bring `component`'s tables to the latest version; returns the version. Other components' tables are untouched."""
    with transaction(conn):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions "
            "(component TEXT PRIMARY KEY, version INTEGER NOT NULL, updated_at REAL NOT NULL)"
        )
        row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
        current = row[0] if row else 0
        if current > len(migrations):
            raise StateError(
                f"the state file has {component} schema version {current}, newer than this version knows "
                f"({len(migrations)}); upgrade drift-auditor or use another state_path"
            )
        for version in range(current + 1, len(migrations) + 1):
            for stmt in _statements(migrations[version - 1]):
                conn.execute(stmt)
        if current < len(migrations):
            conn.execute(
                "INSERT INTO schema_versions (component, version, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                (component, len(migrations), time.time()),
            )
    return len(migrations)


def _statements(script: str) -> Iterator[str]:
    for stmt in script.split(";"):
        if stmt.strip():
            yield stmt


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): a writer takes the lock up front, so it never deadlocks."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _labels(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"))


@dataclass(frozen=True)
class DriftEvent:
    change: str  # new | resolved
    finding_id: str
    rule: str
    severity: str
    asset: str
    asset_type: str
    exempted: bool
    message: str
    at: float
    cycle_id: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "finding_id": self.finding_id,
            "rule": self.rule,
            "severity": self.severity,
            "asset": self.asset,
            "asset_type": self.asset_type,
            "exempted": self.exempted,
            "message": self.message,
            "at": iso(self.at),
            "cycle": self.cycle_id,
        }


@dataclass(frozen=True)
class StoredFinding:
    id: str
    rule: str
    check: str
    severity: str
    mode: str
    asset: str
    asset_type: str
    message: str
    details: dict[str, Any]
    exempted: bool
    exemption: dict[str, Any] | None
    first_seen: float
    last_seen: float
    resolved_at: float | None
    stale: bool

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "id": self.id,
            "rule": self.rule,
            "check": self.check,
            "severity": self.severity,
            "mode": self.mode,
            "asset": self.asset,
            "asset_type": self.asset_type,
            "message": self.message,
            "details": self.details,
            "exempted": self.exempted,
            "exemption": self.exemption,
            "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen),
            "resolved_at": iso(self.resolved_at) if self.resolved_at else None,
            "age_seconds": round(now - self.first_seen, 3),
            "stale": self.stale,
        }


@dataclass(frozen=True)
class CycleRecord:
    id: int
    started_at: float
    ended_at: float | None
    outcome: str
    complete: bool
    incomplete: dict[str, str]
    snapshot_at: float | None
    assets: int
    findings: int
    exempted: int
    new: int
    resolved: int
    stale: int
    rules: int
    by_severity: dict[str, int]
    durations: dict[str, float]
    sources: list[dict[str, Any]]
    error: str | None
    baseline: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "baseline": self.baseline,
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at) if self.ended_at else None,
            "outcome": self.outcome,
            "complete": self.complete,
            "incomplete": self.incomplete,
            "snapshot_at": iso(self.snapshot_at) if self.snapshot_at else None,
            "assets": self.assets,
            "findings": self.findings,
            "exempted": self.exempted,
            "new": self.new,
            "resolved": self.resolved,
            "stale": self.stale,
            "rules": self.rules,
            "by_severity": self.by_severity,
            "durations": self.durations,
            "sources": self.sources,
            "error": self.error,
        }


@dataclass
class Recorded:
    """What recording one cycle changed."""

    cycle_id: int
    drift: list[DriftEvent] = field(default_factory=list)
    still_open: int = 0
    stale: int = 0
    open: int = 0  # open, not exempted findings after this cycle (stale ones included): what the metrics show
    retired: int = 0  # closed because their rule is no longer loaded (not drift)
    baseline: bool = False  # the first cycle with findings: its "new" findings are not counted as drift

    @property
    def new(self) -> list[DriftEvent]:
        return [e for e in self.drift if e.change == "new"]

    @property
    def resolved(self) -> list[DriftEvent]:
        return [e for e in self.drift if e.change == "resolved"]


@dataclass(frozen=True)
class SourceState:
    source: str
    last_read_at: float | None
    last_complete_at: float | None
    data_at: float | None
    last_error: str | None


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


@dataclass
class CycleInput:
    """One cycle as the store records it (built by auditor.cycle from a ScanResult, or from the error)."""

    started_at: float
    ended_at: float
    outcome: str
    findings: list[Finding] | None  # None: the cycle failed before producing findings
    incomplete: dict[str, str] = field(default_factory=dict)
    snapshot_at: float | None = None
    assets_by_type: Mapping[str, int] = field(default_factory=dict)
    rules: int = 0
    durations: dict[str, float] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    source_errors: list[tuple[str, str]] = field(default_factory=list)  # (source, code) to count
    rule_ids: frozenset[str] | None = None  # the rules loaded: findings of other rules are retired, not resolved
    error: str | None = None


class Store:
    """The state store. Thread-safe: one connection, one lock (SQLite serializes writers anyway)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = connect(self.path)
        self._lock = threading.RLock()
        migrate(self._conn, COMPONENT, MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------------------------
    def record_cycle(self, c: CycleInput) -> Recorded:
        if c.outcome not in OUTCOMES:
            raise ValueError(f"unknown cycle outcome {c.outcome!r}")
        with self._lock, transaction(self._conn) as db:
            cur = db.execute(
                "INSERT INTO cycles (started_at, ended_at, outcome, complete, incomplete, snapshot_at, rules, "
                "durations, sources, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    c.started_at,
                    c.ended_at,
                    c.outcome,
                    int(c.outcome == "success"),
                    json.dumps(c.incomplete),
                    c.snapshot_at,
                    c.rules,
                    json.dumps(c.durations),
                    json.dumps(c.sources),
                    c.error,
                ),
            )
            cycle_id = int(cur.lastrowid or 0)
            rec = Recorded(cycle_id)
            self._bump(db, "cycles_total", {"outcome": c.outcome})
            for source, code in c.source_errors:
                self._bump(db, "source_errors_total", {"source": source, "code": code})
            self._record_sources(db, c)
            if c.findings is not None:
                self._record_findings(db, c, rec)
                self._record_assets(db, c)
            totals = db.execute(
                "SELECT count(*) FILTER (WHERE exempted = 0), count(*) FILTER (WHERE exempted = 1), "
                "count(*) FILTER (WHERE stale = 1) FROM findings WHERE resolved_at IS NULL"
            ).fetchone()
            by_sev = {
                r[0]: r[1]
                for r in db.execute(
                    "SELECT severity, count(*) FROM findings WHERE resolved_at IS NULL AND exempted = 0 "
                    "GROUP BY severity"
                )
            }
            assets = db.execute("SELECT coalesce(sum(count), 0) FROM asset_counts").fetchone()[0]
            rec.open, rec.stale = totals[0], totals[2]
            db.execute(
                "UPDATE cycles SET findings = ?, exempted = ?, stale = ?, new = ?, resolved = ?, by_severity = ?, "
                "assets = ? WHERE id = ?",
                (totals[0], totals[1], totals[2], len(rec.new), len(rec.resolved), json.dumps(by_sev), assets,
                 cycle_id),
            )
        return rec

    def _record_sources(self, db: sqlite3.Connection, c: CycleInput) -> None:
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

    def _record_findings(self, db: sqlite3.Connection, c: CycleInput, rec: Recorded) -> None:
        now = c.ended_at
        seen: dict[str, Finding] = {}
        for f in c.findings or ():
            seen.setdefault(f.id, f)
        known = {
            r["id"]: r
            for r in db.execute(
                "SELECT id, resolved_at, asset_type, exempted, rule FROM findings "
                "WHERE id IN (SELECT value FROM json_each(?)) OR resolved_at IS NULL",
                (json.dumps(list(seen)),),
            )
        }
        every_type = "*" in c.incomplete
        # Sources report what they could not read as asset types or globs (`compute.googleapis.com/*`).
        unread = [compile_glob(t) for t in c.incomplete]
        updates, inserts = [], []
        for fid, f in seen.items():
            exemption = json.dumps(_exemption(f)) if f.exempted or f.expired_exemption else None
            row = known.get(fid)
            values = (
                f.rule, f.check, f.severity.value, f.mode.value, f.asset, f.asset_type, f.message,
                json.dumps(f.details, default=str, sort_keys=True), int(f.exempted is not None), exemption,
            )
            if row is not None and row["resolved_at"] is None:
                updates.append((*values, now, rec.cycle_id, fid))
                if bool(row["exempted"]) != (f.exempted is not None):
                    # An exemption expired (the finding counts again) or was granted (it stops counting): the set
                    # of open, not exempted findings changed, which is what the drift counters and alerts follow.
                    if f.exempted is None:
                        change, why = "new", "exemption ended: "
                    else:
                        change, why = "resolved", f"exempted ({f.exempted.reason}, {f.exempted.owner}): "
                    rec.drift.append(self._event(change, f.id, f.rule, f.severity.value, f.asset, f.asset_type, False,
                                                 why + f.message, now, rec.cycle_id))
                continue
            # New, or resolved earlier and back again: a new occurrence, first seen now.
            inserts.append((fid, *values, now, now, rec.cycle_id, rec.cycle_id))
            rec.drift.append(self._event("new", f.id, f.rule, f.severity.value, f.asset, f.asset_type,
                                         f.exempted is not None, f.message, now, rec.cycle_id))
        db.executemany(
            "UPDATE findings SET rule = ?, check_name = ?, severity = ?, mode = ?, asset = ?, asset_type = ?, "
            "message = ?, details = ?, exempted = ?, exemption = ?, last_seen = ?, last_cycle = ?, stale = 0 "
            "WHERE id = ?",
            updates,
        )
        db.executemany(
            "INSERT INTO findings (id, rule, check_name, severity, mode, asset, asset_type, message, details, "
            "exempted, exemption, first_seen, last_seen, first_cycle, last_cycle) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "rule = excluded.rule, check_name = excluded.check_name, severity = excluded.severity, "
            "mode = excluded.mode, asset = excluded.asset, asset_type = excluded.asset_type, "
            "message = excluded.message, details = excluded.details, exempted = excluded.exempted, "
            "exemption = excluded.exemption, first_seen = excluded.first_seen, last_seen = excluded.last_seen, "
            "resolved_at = NULL, stale = 0, first_cycle = excluded.first_cycle, last_cycle = excluded.last_cycle",
            inserts,
        )
        gone = [r["id"] for r in known.values() if r["resolved_at"] is None and r["id"] not in seen]
        stale_ids, resolved_ids, retired = [], [], []
        for fid in gone:
            if c.rule_ids is not None and known[fid]["rule"] not in c.rule_ids:
                # Its rule was removed from the rule files: nothing changed in the organization, so it is closed
                # without a drift event (no "resolved" alert for a rule someone deleted).
                retired.append((now, fid))
            # Not seen, but its type was not read completely: absence of evidence, so it stays open (stale).
            elif every_type or any(p.match(known[fid]["asset_type"]) for p in unread):
                stale_ids.append((fid,))
            else:
                resolved_ids.append(fid)
        db.executemany("UPDATE findings SET stale = 1 WHERE id = ?", stale_ids)
        db.executemany("UPDATE findings SET resolved_at = ?, stale = 0 WHERE id = ?", retired)
        rec.retired = len(retired)
        for fid in resolved_ids:
            r = db.execute(
                "UPDATE findings SET resolved_at = ?, stale = 0 WHERE id = ? "
                "RETURNING rule, severity, asset, asset_type, exempted, message",
                (now, fid),
            ).fetchone()
            rec.drift.append(self._event("resolved", fid, r["rule"], r["severity"], r["asset"], r["asset_type"],
                                         bool(r["exempted"]), r["message"], now, rec.cycle_id))
        db.executemany(
            "INSERT INTO drift_events (cycle_id, at, change, finding_id, rule, severity, asset, asset_type, "
            "exempted, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(e.cycle_id, e.at, e.change, e.finding_id, e.rule, e.severity, e.asset, e.asset_type, int(e.exempted),
              e.message) for e in rec.drift],
        )
        # The first cycle that records findings is the baseline: its findings are stored and logged as new, but they
        # are what the organization already was, not drift, so the counters (and the alerts on them) stay quiet; a
        # lost state file does not page for every existing finding either.
        # A partial cycle is no baseline: the baseline lasts until a cycle has read everything (an API error at
        # install would otherwise make every finding that already existed arrive as new drift on the next cycle).
        rec.baseline = db.execute(
            "SELECT 1 FROM cycles WHERE id < ? AND outcome = 'success' LIMIT 1", (rec.cycle_id,)
        ).fetchone() is None
        db.execute("UPDATE cycles SET baseline = ? WHERE id = ?", (int(rec.baseline), rec.cycle_id))
        for e in rec.drift:
            # Exempted findings coming and going are bookkeeping, not drift anyone should be paged for.
            if not e.exempted and not rec.baseline:
                self._bump(db, "drift_events_total", {"rule": e.rule, "severity": e.severity, "change": e.change})
        rec.still_open = len(updates)

    @staticmethod
    def _event(change: str, fid: str, rule: str, severity: str, asset: str, asset_type: str, exempted: bool,
               message: str, at: float, cycle_id: int) -> DriftEvent:
        return DriftEvent(change, fid, rule, severity, asset, asset_type, exempted, message, at, cycle_id)

    def _record_assets(self, db: sqlite3.Connection, c: CycleInput) -> None:
        """Asset counts of the snapshot; types not read completely keep their last good count."""
        unread = [compile_glob(t) for t in c.incomplete]
        keep = {r[0] for r in db.execute("SELECT asset_type FROM asset_counts") if any(p.match(r[0]) for p in unread)}
        db.execute(
            "DELETE FROM asset_counts WHERE asset_type NOT IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted(keep)),),
        )
        db.executemany(
            "INSERT INTO asset_counts (asset_type, count, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (asset_type) DO NOTHING",
            [(t, n, c.ended_at) for t, n in c.assets_by_type.items()],
        )
        db.executemany(
            "UPDATE asset_counts SET count = ?, updated_at = ? WHERE asset_type = ?",
            [(n, c.ended_at, t) for t, n in c.assets_by_type.items() if t not in keep],
        )

    def update_durations(self, cycle_id: int, durations: Mapping[str, float]) -> None:
        """The stage durations, known once the cycle has reported (its ended_at stays the time it was recorded)."""
        with self._lock, transaction(self._conn) as db:
            db.execute("UPDATE cycles SET durations = ? WHERE id = ?", (json.dumps(dict(durations)), cycle_id))

    def bump(self, metric: str, labels: Mapping[str, str], by: float = 1.0) -> None:
        """Add to a persistent counter (used by the remediation step for auditor_remediations_total)."""
        with self._lock, transaction(self._conn) as db:
            self._bump(db, metric, labels, by)

    @staticmethod
    def _bump(db: sqlite3.Connection, metric: str, labels: Mapping[str, str], by: float = 1.0) -> None:
        db.execute(
            "INSERT INTO counters (metric, labels, value) VALUES (?, ?, ?) "
            "ON CONFLICT (metric, labels) DO UPDATE SET value = value + excluded.value",
            (metric, _labels(labels), by),
        )

    def prune(self, keep_seconds: float, now: float | None = None) -> int:
        """Forget cycles, drift events and resolved findings older than `keep_seconds`. Counters are kept."""
        cutoff = (time.time() if now is None else now) - keep_seconds
        with self._lock, transaction(self._conn) as db:
            last = db.execute("SELECT max(id) FROM cycles").fetchone()[0] or 0
            n = db.execute("DELETE FROM cycles WHERE started_at < ? AND id < ?", (cutoff, last)).rowcount
            db.execute("DELETE FROM findings WHERE resolved_at IS NOT NULL AND resolved_at < ?", (cutoff,))
        return n

    # -- reading ---------------------------------------------------------------------------------------------------
    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def open_findings(self, include_exempted: bool = True) -> list[StoredFinding]:
        where = "resolved_at IS NULL" + ("" if include_exempted else " AND exempted = 0")
        rows = self._rows(
            f"SELECT * FROM findings WHERE {where} ORDER BY "
            "CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 "
            "WHEN 'low' THEN 3 ELSE 4 END, "
            "rule, asset, id"
        )
        return [_finding(r) for r in rows]

    def finding(self, fid: str) -> StoredFinding | None:
        rows = self._rows("SELECT * FROM findings WHERE id = ?", (fid,))
        return _finding(rows[0]) if rows else None

    def finding_counts(self) -> list[tuple[str, str, str, str, bool, int]]:
        """(rule, severity, asset_type, mode, exempted, count) over open findings: what the metrics export."""
        rows = self._rows(
            "SELECT rule, severity, asset_type, mode, exempted, count(*) FROM findings WHERE resolved_at IS NULL "
            "GROUP BY rule, severity, asset_type, mode, exempted"
        )
        return [(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]

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
        return [
            DriftEvent(r["change"], r["finding_id"], r["rule"], r["severity"], r["asset"], r["asset_type"],
                       bool(r["exempted"]), r["message"], r["at"], r["cycle_id"])
            for r in rows
        ]

    def last_drift(self) -> tuple[CycleRecord | None, list[DriftEvent]]:
        """The drift of the last cycle that recorded findings (a failed cycle records none)."""
        c = self.last_cycle(("success", "partial"))
        return c, self.drift(c.id) if c else []

    def counters(self, metric: str) -> list[tuple[dict[str, str], float]]:
        rows = self._rows("SELECT labels, value FROM counters WHERE metric = ? ORDER BY labels", (metric,))
        return [(json.loads(r[0]), r[1]) for r in rows]

    def source_reads(self, source: str, limit: int = 10, complete: bool | None = None) -> list[dict[str, Any]]:
        """What the last cycles recorded of one source (its entry of `CycleInput.sources`), newest first; with
        `complete`, only the reads that were (or were not) complete."""
        sql = ("SELECT s.value FROM cycles c, json_each(c.sources) s WHERE json_extract(s.value, '$.source') = ?"
               + ("" if complete is None else " AND coalesce(json_extract(s.value, '$.complete'), 0) = ?")
               + " ORDER BY c.id DESC LIMIT ?")
        args: tuple[Any, ...] = (source, limit) if complete is None else (source, int(complete), limit)
        return [json.loads(r[0]) for r in self._rows(sql, args)]

    def asset_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._rows("SELECT asset_type, count FROM asset_counts ORDER BY asset_type")}

    def sources(self) -> list[SourceState]:
        return [
            SourceState(r["source"], r["last_read_at"], r["last_complete_at"], r["data_at"], r["last_error"])
            for r in self._rows("SELECT * FROM source_state ORDER BY source")
        ]


def _exemption(f: Finding) -> dict[str, Any]:
    e = f.exempted or f.expired_exemption
    assert e is not None
    return {"reason": e.reason, "owner": e.owner, "ticket": e.ticket, "expires": e.expires,
            "expired": f.exempted is None}


def _finding(r: sqlite3.Row) -> StoredFinding:
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
        last_seen=r["last_seen"],
        resolved_at=r["resolved_at"],
        stale=bool(r["stale"]),
    )


def _cycle(r: sqlite3.Row) -> CycleRecord:
    return CycleRecord(
        id=r["id"],
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
