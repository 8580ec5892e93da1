"""Changes reported by events between cycles (feeds, watches), recorded asset by asset (auditor.incremental).

Three tables (the store's migration v3):
- `change_inbox`: each change received and not yet recorded. A push is answered once its change is written here, so
  an answer means "recorded or will be": a crash before the change is recorded leaves it in the inbox, and the next
  leader records it. Rows are deleted in the transaction that records their change (never twice, never lost).
- `change_marks`: per asset and content (resource or IAM policy), the ordering key (window start time, or a key made
  from a Kubernetes resourceVersion) of the newest change recorded. A change not newer than its mark is a redelivery
  or an older state and changes nothing, across restarts and replicas.
- `drift_events.origin`: `event` for drift recorded from a change. Event drift is attached to the last cycle that
  recorded findings (the table's key), and counted in the same `drift_events_total` counters.

A change's verdicts replace, per asset, the open findings of the rules that were evaluated on it (a deletion: all of
the asset's findings): a finding found and not open is `new` (reopened if it was resolved), an open one not found
any more is `resolved`, the rest are still open (their rows written only when something about them changed), with
the same records, ages and counters as a cycle's drift.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from auditor.model import Finding
from auditor.state.db import Database
from auditor.state.staging import STAGED_COLUMNS, Staging, staged_row

_CONTENT = ("rule", "check_name", "severity", "mode", "asset", "asset_type", "message", "details", "exempted",
            "exemption", "project", "ancestry", "digest")  # the stored columns of a finding, as a cycle writes them
_EVENTS = ("INSERT INTO drift_events (cycle_id, at, change, finding_id, rule, severity, asset, asset_type, exempted, "
           "message, project, ancestry, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'event')")


@dataclass(frozen=True)
class AssetVerdict:
    """The findings of the rules evaluated on one asset. `rules` None: every rule (a deleted asset, no findings)."""

    asset: str
    rules: frozenset[str] | None
    findings: Sequence[Finding] = ()


@dataclass
class ChangeInput:
    """One change to record: its asset and content, ordering key, inbox row and verdicts (its own asset's and its
    dependents')."""

    asset: str
    content: str
    asset_type: str
    window_start: str
    inbox_id: int | None = None
    verdicts: list[AssetVerdict] = field(default_factory=list)


@dataclass
class ChangeOutcome:
    outcome: str  # recorded | redelivery | out_of_order
    new: int = 0
    resolved: int = 0


@dataclass
class ChangesRecorded:
    cycle_id: int
    at: float
    baseline: bool
    outcomes: list[ChangeOutcome]
    first_event: int | None = None  # drift_events ids written, first and last
    last_event: int | None = None

    @property
    def new_count(self) -> int:
        return sum(o.new for o in self.outcomes)

    @property
    def resolved_count(self) -> int:
        return sum(o.resolved for o in self.outcomes)


def encode_finding(f: Finding) -> tuple[tuple[Any, ...], str]:
    """The content columns of a finding as stored (the order of _CONTENT, encoded as a cycle's staging encodes
    them: the same finding is the same row), and the note of an exemption change."""
    row = staged_row(f)
    return row[1:14], row[14]


def enqueue(db: Database, rows: Iterable[tuple[float, str, str, str, str]]) -> None:
    """(received_at, asset, content, window_start, payload) into the inbox, in one transaction."""
    batch = list(rows)
    with db.transaction():
        db.executemany("INSERT INTO change_inbox (received_at, asset, content, window_start, payload) "
                       "VALUES (?, ?, ?, ?, ?)", batch)


def pending(db: Database, limit: int) -> list[tuple[int, float, str]]:
    """The oldest changes of the inbox: (id, received_at, payload)."""
    return [(int(r[0]), float(r[1]), str(r[2])) for r in db.rows(
        "SELECT id, received_at, payload FROM change_inbox ORDER BY id LIMIT ?", (limit,))]


def pending_count(db: Database) -> int:
    return int(db.rows("SELECT count(*) FROM change_inbox")[0][0])


def discard(db: Database, ids: Sequence[int]) -> None:
    """Inbox rows that cannot be read (logged by the caller): removed, or they would block the inbox for good."""
    with db.transaction():
        for i in ids:
            db.execute("DELETE FROM change_inbox WHERE id = ?", (i,))


def marks(db: Database, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The newest ordering key recorded for each (asset, content) asked."""
    out: dict[tuple[str, str], str] = {}
    want = sorted(set(keys))
    for i in range(0, len(want), 200):
        part = want[i:i + 200]
        names, args = db.in_list("asset", sorted({a for a, _ in part}))
        for r in db.rows(f"SELECT asset, content, window_start FROM change_marks WHERE {names}", args):
            if (r[0], r[1]) in part:
                out[(r[0], r[1])] = r[2]
    return out


def record(db: Database, changes: Sequence[ChangeInput], now: float) -> ChangesRecorded | None:
    """Record changes in order, inside the caller's transaction. None when no cycle has recorded findings yet (event
    drift needs the baseline a cycle makes: the changes stay in the inbox)."""
    row = db.execute("SELECT max(id) FROM cycles WHERE outcome != 'failed'").fetchone()
    if row is None or row[0] is None:
        return None
    cid = int(row[0])
    baseline = db.execute("SELECT 1 FROM cycles WHERE outcome = 'success' LIMIT 1").fetchone() is None
    out = ChangesRecorded(cid, now, baseline, [])
    known = marks(db, [(c.asset, c.content) for c in changes])
    for c in changes:
        last = known.get((c.asset, c.content))
        if last is not None and c.window_start <= last:
            out.outcomes.append(ChangeOutcome("redelivery" if c.window_start == last else "out_of_order"))
        else:
            known[(c.asset, c.content)] = c.window_start
            o = ChangeOutcome("recorded")
            for v in c.verdicts:
                _apply(db, v, cid, now, o, out)
            db.execute(
                "INSERT INTO change_marks (asset, content, asset_type, window_start, recorded_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (asset, content) DO UPDATE SET window_start = excluded.window_start, "
                "asset_type = excluded.asset_type, recorded_at = excluded.recorded_at",
                (c.asset, c.content, c.asset_type, c.window_start, now),
            )
            out.outcomes.append(o)
        if c.inbox_id is not None:
            db.execute("DELETE FROM change_inbox WHERE id = ?", (c.inbox_id,))
    return out


def _event(db: Database, out: ChangesRecorded, values: tuple[Any, ...]) -> None:
    eid = int(db.execute(_EVENTS + " RETURNING id", values).fetchone()[0])
    if out.first_event is None:
        out.first_event = eid
    out.last_event = eid
    change, rule, severity, exempted = values[2], values[4], values[5], values[8]
    if not out.baseline and not exempted:
        db.execute(
            "INSERT INTO counters (metric, labels, value) VALUES (?, ?, 1) "
            "ON CONFLICT (metric, labels) DO UPDATE SET value = counters.value + excluded.value",
            ("drift_events_total", json.dumps({"change": change, "rule": rule, "severity": severity},
                                              separators=(",", ":"))),
        )


def _apply(db: Database, v: AssetVerdict, cid: int, now: float, o: ChangeOutcome, out: ChangesRecorded) -> None:
    where, args = "asset = ? AND resolved_at IS NULL", [v.asset]
    if v.rules is not None:
        clause, rule_args = db.in_list("rule", sorted(v.rules))
        where += f" AND {clause}"
        args += rule_args
    open_rows = {r["id"]: r for r in db.rows(f"SELECT * FROM findings WHERE {where}", args)}
    seen: set[str] = set()
    for f in v.findings:
        if f.id in seen:
            continue
        seen.add(f.id)
        content, note = encode_finding(f)
        row = open_rows.get(f.id)
        if row is not None:
            if row["stale"] or tuple(row[k] for k in _CONTENT) != content:
                db.execute(
                    "UPDATE findings SET " + ", ".join(f"{k} = ?" for k in _CONTENT)
                    + ", last_seen = ?, last_cycle = ?, stale = 0 WHERE id = ?",
                    (*content, now, cid, f.id),
                )
            if bool(row["exempted"]) != bool(content[8]):
                # its exemption started or ended while it stayed open: the open, not exempted set changed
                _event(db, out, (cid, now, "resolved" if f.exempted else "new", f.id, f.rule, f.severity.value,
                                 f.asset, f.asset_type, 0, note, f.project, f.ancestry))
                if f.exempted:
                    o.resolved += 1
                else:
                    o.new += 1
            continue
        db.execute(
            "INSERT INTO findings (id, " + ", ".join(_CONTENT) + ", first_seen, last_seen, first_cycle, last_cycle) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            + ", ".join(f"{k} = excluded.{k}" for k in _CONTENT)
            + ", first_seen = excluded.first_seen, last_seen = excluded.last_seen, resolved_at = NULL, stale = 0, "
            "first_cycle = excluded.first_cycle, last_cycle = excluded.last_cycle",
            (f.id, *content, now, now, cid, cid),
        )
        _event(db, out, (cid, now, "new", f.id, f.rule, f.severity.value, f.asset, f.asset_type,
                         int(f.exempted is not None), f.message, f.project, f.ancestry))
        o.new += 1
    for fid, row in open_rows.items():
        if fid in seen:
            continue
        db.execute("UPDATE findings SET resolved_at = ?, stale = 0, last_seen = ? WHERE id = ?", (now, now, fid))
        _event(db, out, (cid, now, "resolved", fid, row["rule"], row["severity"], row["asset"], row["asset_type"],
                         int(row["exempted"]), row["message"], row["project"], row["ancestry"]))
        o.resolved += 1


def event_drift(db: Database, first: int, last: int) -> Iterator[Any]:
    """The drift events ids first..last (one batch of changes), as rows."""
    yield from db.rows("SELECT * FROM drift_events WHERE id >= ? AND id <= ? AND origin = 'event' ORDER BY id",
                       (first, last))


def keep_event_state(db: Database, since: float, staging: Staging | None = None) -> int:
    """Inside a cycle's recording, with its findings staged: the assets a change recorded at or after `since` keep
    the findings that change gave them (the cycle's snapshot may have been read before it). Returns how many."""
    fresh = "SELECT asset FROM change_marks WHERE recorded_at >= ?"
    n = int(db.execute("SELECT count(DISTINCT asset) FROM change_marks WHERE recorded_at >= ?", (since,))
            .fetchone()[0])
    if not n:
        return 0
    db.execute(f"DELETE FROM cycle_seen WHERE asset IN ({fresh})", (since,))
    if staging is not None:
        staging.unmark(f"asset IN ({fresh})", (since,))  # nor seen unchanged: what the change recorded is
    columns = STAGED_COLUMNS
    db.execute(
        f"INSERT INTO cycle_seen ({columns}, note) SELECT {columns}, message FROM findings "
        f"WHERE resolved_at IS NULL AND asset IN ({fresh}) ON CONFLICT (id) DO NOTHING",
        (since,),
    )
    return n


def missed(db: Database, cycle_id: int) -> dict[str, int]:
    """Asset type -> drift events a cycle recorded (not exempted) on the asset types events report: what the events
    missed. Empty until some change was recorded from an event."""
    types = [r[0] for r in db.rows("SELECT DISTINCT asset_type FROM change_marks")]
    if not types:
        return {}
    clause, args = db.in_list("asset_type", types)
    return {r[0]: int(r[1]) for r in db.rows(
        "SELECT asset_type, count(*) FROM drift_events WHERE cycle_id = ? AND origin = 'cycle' AND exempted = 0 "
        f"AND {clause} GROUP BY asset_type", (cycle_id, *args))}
