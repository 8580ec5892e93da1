"""A cycle's findings on their way into the store: written to a scratch table of the store's connection a batch at
a time, as the evaluation makes them, so that neither the daemon nor the store ever holds all of them.

`Staging` is the evaluation's sink (`add`, and `withdraw` for the findings of an asset a later copy replaces);
`Store.record_cycle` then computes drift in SQL from the staged rows. The scratch tables never grow the state file
and take no lock on the state database (their batches run in deferred transactions that touch only them): TEMP tables
on PostgreSQL; on SQLite, the tables of a private temporary database attached to the connection for the cycle
(`SCRATCH`) and detached after it, which drops them at once (deleting a first cycle's rows from a TEMP table read and
journalled each of its pages: seconds at a million findings). The first of a repeated finding id wins, as in a report.

Most findings of a cycle are the open findings of the last one, unchanged. Each stored finding carries a digest of
its content (`digest`: its id and every column a cycle would write); when a staging starts it reads the digests of
the open findings into a compact table (`auditor.keys.KeyMap`, 16 to 32 bytes a finding), and a finding whose digest
is the stored one is only marked seen and counted: it is neither staged nor compared in SQL (a stale finding is
always staged: seeing it again clears its mark). The open findings not seen are the few left unmarked, handed to
the drift statements by `unseen()`. Memory: one batch of rows and that table (which also takes the ids staged
that are not open, so that a repeated one is dropped as it comes: 16 to 32 bytes a finding of a first cycle).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from itertools import islice
from typing import Any

import msgspec
from xxhash import xxh3_64_intdigest

from auditor.keys import KeyMap
from auditor.model import SEVERITIES, SEVERITY_RANK, SEVERITY_TEXT, Finding, place_of
from auditor.state.db import Database

BATCH = 2000  # findings per staging insert: bounded memory, few round trips

SCRATCH = "scratch"  # SQLite: the attached database that holds the staging tables during a cycle

# Appended to without an index on the id (random ids into an index of the whole cycle's findings made its pages
# go in and out of the cache: gigabytes of temporary file I/O for 200,000 findings); `Staging.seal` builds the unique
# index once (a sort) before the drift statements read it, dropping repeated ids first (the first staged winning) if
# there are any.
STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS cycle_seen (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
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
    digest INTEGER,
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
# The open findings not seen this cycle are among these: the first 16 hexadecimal digits of their ids (see `unseen`).
UNSEEN_DDL = """
CREATE TEMP TABLE IF NOT EXISTS cycle_unseen (
    prefix TEXT PRIMARY KEY
)
"""
STAGED_COLUMNS = ("id, rule, check_name, severity, mode, asset, asset_type, message, details, exempted, exemption, "
                  "project, ancestry, digest")
_INSERT = f"INSERT INTO cycle_seen ({STAGED_COLUMNS}, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SEALED_INSERT = _INSERT + " ON CONFLICT (id) DO NOTHING"  # once the unique index is built
SEEN_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS cycle_seen_id ON cycle_seen (id)"
_DEDUPLICATE = "DELETE FROM cycle_seen WHERE seq NOT IN (SELECT min(seq) FROM cycle_seen GROUP BY id)"


# Keys sorted, so that the same details are the same text every cycle (a cycle with no change writes no row); values
# JSON cannot hold are written as text.
_encode = msgspec.json.Encoder(order="sorted", enc_hook=str).encode


def content_row(f: Finding, digest: int | None = None) -> tuple[Any, ...]:
    """The id and the content columns of a finding as stored, with their digest last (`STAGED_COLUMNS`)."""
    e = f.exempted or f.expired_exemption
    exemption = _encode({"reason": e.reason, "owner": e.owner, "ticket": e.ticket, "expires": e.expires,
                         "expired": f.exempted is None}).decode() if e is not None else None
    return (f.id, f.rule, f.check, f.severity.value, f.mode.value, f.asset, f.asset_type, f.message,
            _encode(f.details).decode(), int(f.exempted is not None), exemption, *place_of(f.ancestors),
            finding_digest(f) if digest is None else digest)


def finding_digest(f: Finding) -> int:
    """A signed 64-bit digest of a finding's id and content (a column both backends hold): stable across processes
    and versions of Python, unlike `hash`. Taken from what the stored columns are made of, not from the columns (a
    cycle digests every finding and writes few): the details as one encoding, the ancestors the project and
    ancestry come from, the exemption's fields and whether it expired. Equal columns may have unequal digests
    only if their sources differ, which costs a row written, never a change missed.

    XXH3: a non-cryptographic hash is enough (nobody chooses a finding's content to collide with its last one), and
    hashlib's objects cost a microsecond a finding more than the hashing itself. (Digests stored by versions that
    used BLAKE2b differ from these: the first cycle after the upgrade writes every open finding once.)"""
    e = f.exempted or f.expired_exemption
    key = (f.id, f.rule, f.check, f.severity, f.mode, f.asset, f.asset_type, f.message, f.details,
           None if e is None else (f.exempted is None, e.reason, e.owner, e.ticket, e.expires), f.ancestors)
    d = xxh3_64_intdigest(_encode(key))
    return d - (d >> 63 << 64)  # signed, as both backends store integers


def note_of(f: Finding) -> str:
    """The message of the drift event if this finding's exemption started or ended while it stayed open."""
    return (f"exempted ({f.exempted.reason}, {f.exempted.owner}): " if f.exempted else "exemption ended: ") + f.message


def staged_row(f: Finding) -> tuple[Any, ...]:
    return (*content_row(f), note_of(f))


def id_key(fid: str) -> int:
    """The 64-bit key of a finding id (its first 16 hexadecimal digits, see `auditor.model.finding_id`)."""
    return int(fid[:16], 16)


# The value of an open finding in `Staging`'s table: the top 56 bits of its stored digest, then flags. A finding
# that is not open (`_NEW`) is put in as it is staged, with the last 4 of its id's 20 hexadecimal digits above the
# flags: with its key, that is the whole id, so a repeated id is dropped as it comes instead of by `seal` (a statement
# that grouped every staged row: 3 s at a million findings).
_SEEN = 1  # seen unchanged this cycle: counted, not staged
_STAGED = 2  # seen and staged (changed, or stale; or new)
_ALWAYS = 4  # stale, or stored before digests: staged whatever its digest
_EXEMPTED = 8  # (when seen) it was exempted
_SEVERITY = 4  # (when seen) its severity's index in SEVERITIES, in the 3 bits from this one
_NEW = 128  # not an open finding: staged this cycle (or withdrawn since, without _STAGED)
_FLAGS = 0xFF
_M64 = (1 << 64) - 1


def _new(fid: str) -> int:
    """The value of a new id as it is staged: its last 4 hexadecimal digits (or `_ALWAYS`: an id of another shape,
    never taken for a repeat)."""
    return int(fid[16:], 16) << 8 | _NEW | _STAGED if len(fid) == 20 else _NEW | _STAGED | _ALWAYS


def _scratch(db: Database, statement: str) -> str:
    """A staging table's (or its index's) statement for this connection's engine (see the module's docstring):
    SQLite names the attached database, as an index is otherwise made in `main`."""
    if db.dialect != "sqlite":
        return db.ddl(statement)
    return (statement.replace("CREATE TEMP TABLE IF NOT EXISTS ", f"CREATE TABLE IF NOT EXISTS {SCRATCH}.")
            .replace("INDEX IF NOT EXISTS ", f"INDEX IF NOT EXISTS {SCRATCH}."))


def prepare(db: Database) -> None:
    """The connection's staging tables, created empty."""
    with db.lock:
        if db.dialect == "sqlite":
            clear(db)  # what an earlier staging left
            db.execute(f"ATTACH DATABASE '' AS {SCRATCH}")  # '': private, deleted when detached
        for ddl in (STAGING_DDL, UNEVALUATED_DDL, GONE_DDL, UNSEEN_DDL):
            db.execute(_scratch(db, ddl))
        if db.dialect != "sqlite":
            clear(db)


def clear(db: Database) -> None:
    """Empty the staging tables (SQLite: drop them with their database)."""
    with db.lock:
        if db.dialect == "sqlite":
            if any(r[1] == SCRATCH for r in db.rows("PRAGMA database_list")):
                db.execute(f"DETACH DATABASE {SCRATCH}")
            return
        db.execute("DROP INDEX IF EXISTS cycle_seen_id")
        for table in ("cycle_seen", "cycle_unevaluated", "cycle_gone", "cycle_unseen"):
            db.execute(f"DELETE FROM {table}")


class Staging:
    """The findings of one cycle in progress (see the module's docstring). Use one per cycle, from one thread.

    `compare`: read the open findings' digests first and stage only the findings that differ from them (the store's
    own stagings; a bare connection without the store's tables stages everything)."""

    def __init__(self, db: Database, batch: int = BATCH, compare: bool = False) -> None:
        self.db = db
        self.batch = batch
        self._rows: list[tuple[Any, ...]] = []
        self.added = 0  # findings handed in (repeated ids included)
        self.unchanged = 0  # distinct findings seen as stored: marked, not staged
        self._same: Counter[tuple[str, str, bool]] = Counter()  # their (rule, severity, exempted)
        # The staged rows' (rule, severity, exempted), counted as they come while every staged id is known to be
        # distinct (the store's staging: repeats are dropped as they come); else `counts` groups the staged rows.
        self._staged: Counter[tuple[str, str, bool]] | None = Counter() if compare else None
        self._sealed = False
        prepare(db)
        self._known: KeyMap | None = _open_digests(db) if compare else None

    @property
    def compared(self) -> bool:
        return self._known is not None

    def add(self, finding: Finding) -> None:
        self.added += 1
        known = self._known
        digest = None
        if known is not None:
            fid = finding.id
            key = int(fid[:16], 16)  # id_key
            place = known.find(key)
            if place < 0:
                known.add(key, _new(fid))
            elif (value := known.value_at(place)) & _NEW:
                new = _new(fid)
                if value == new and not value & _ALWAYS:
                    return  # a repeated id: the first staged wins (another id with its key is staged: see `seal`)
                if value & _STAGED:
                    self._staged = None  # perhaps the same id: sealing drops it
                known.set_at(place, new)
            elif value & _SEEN:
                return  # a repeated id: the first copy (unchanged) wins
            else:
                digest = finding_digest(finding)
                if not value & (_STAGED | _ALWAYS) and value >> 8 == (digest & _M64) >> 8:
                    # most findings of a cycle come this way: the severity's rank and text from the model's tables,
                    # not the enum's properties (a microsecond a finding less)
                    severity, exempted = finding.severity, finding.exempted is not None
                    known.set_at(place, value | _SEEN | exempted * _EXEMPTED | SEVERITY_RANK[severity] << _SEVERITY)
                    self._same[(finding.rule, SEVERITY_TEXT[severity], exempted)] += 1
                    self.unchanged += 1
                    return
                if value & _STAGED:
                    self._staged = None  # staged again: sealing drops it
                known.set_at(place, value | _STAGED)
        if self._staged is not None:
            self._staged[(finding.rule, finding.severity.value, finding.exempted is not None)] += 1
        self._rows.append((*content_row(finding, digest), note_of(finding)))
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
        db, known = self.db, self._known
        in_rules, args = db.in_list("rule", sorted(rules))
        with db.transaction(immediate=False):
            gone = db.rows(f"SELECT id, rule, severity, exempted FROM cycle_seen WHERE asset = ? AND {in_rules}",
                           (asset, *args)) if known is not None else []
            db.execute(f"DELETE FROM cycle_seen WHERE asset = ? AND {in_rules}", (asset, *args))
        if self._staged is not None:
            for _, rule, severity, exempted in gone:
                self._staged[(rule, severity, bool(exempted))] -= 1
        if known is not None:
            for fid, *_ in gone:  # the new ones may be staged again
                place = known.find(id_key(fid))
                if place >= 0 and (value := known.value_at(place)) & _NEW:
                    known.set_at(place, value & ~_STAGED)
            self.unmark(f"asset = ? AND {in_rules}", (asset, *args))

    def unmark(self, where: str, args: Iterable[Any] = ()) -> None:
        """The stored findings matching `where` are not seen (yet): their marks are cleared and their counts taken
        back (their staged rows are the caller's)."""
        known = self._known
        if known is None:
            return
        for fid, rule in self.db.rows(f"SELECT id, rule FROM findings WHERE {where}", tuple(args)):
            place = known.find(id_key(fid))
            if place < 0:
                continue
            value = known.value_at(place)
            if value & _NEW:
                continue  # not an open finding (one resolved earlier, staged again): its staged row is the mark
            if value & _SEEN:
                severity = SEVERITIES[value >> _SEVERITY & 7]
                self._same[(rule, severity, bool(value & _EXEMPTED))] -= 1
                self.unchanged -= 1
            known.set_at(place, value & ~_FLAGS | value & _ALWAYS)

    def unseen(self) -> int:
        """Into `cycle_unseen`: the id prefixes of the open findings read at the start that were neither seen
        unchanged nor staged (the drift statements look for the open findings not seen among them only). A key two
        open findings share stays in: that one of them was staged says nothing of the other. Returns how many."""
        known = self._known
        if known is None:
            raise ValueError("a staging that did not read the open findings cannot tell which were not seen")
        it = ((f"{key:016x}",) for key, value in known.items()
              if not value & _NEW and (not value & (_SEEN | _STAGED) or value & _ALWAYS))
        n = 0
        while chunk := list(islice(it, self.batch)):
            self.db.executemany("INSERT INTO cycle_unseen (prefix) VALUES (?)", chunk)
            n += len(chunk)
        return n

    def seal(self) -> None:
        """The staged rows, one per id (the first staged), with their unique index: what the drift statements read.
        Rows staged after this are dropped on a repeated id as they come."""
        self.flush()
        if self._sealed:
            return
        db, index = self.db, _scratch(self.db, SEEN_INDEX)
        with db.lock:
            try:  # the unique index refuses repeated ids if there are any, and only then are they looked for
                with db.transaction(immediate=False):
                    db.execute(index)
            except Exception as exc:
                if not db.repeated_key(exc):
                    raise
                self._staged = None
                with db.transaction(immediate=False):
                    db.execute(_DEDUPLICATE)
                    db.execute(index)
        self._sealed = True

    def discard(self) -> None:
        """Drop what was staged (a cycle that is not recorded)."""
        self._sealed = False
        self._staged = None
        self._rows = []
        self._known = None
        self._same.clear()
        clear(self.db)

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        with self.db.transaction(immediate=False):  # TEMP only: no lock a reader or writer of the state waits on
            self.db.executemany(_SEALED_INSERT if self._sealed else _INSERT, rows)

    def not_evaluated(self, pairs: Iterable[tuple[str, str]]) -> None:
        """(rule, asset) that could not be evaluated this cycle; asset '' for a rule not evaluated at all."""
        it = iter(pairs)
        while chunk := list(islice(it, self.batch)):
            with self.db.transaction(immediate=False):
                self.db.executemany("INSERT INTO cycle_unevaluated (rule, asset) VALUES (?, ?)", chunk)

    def staged_exempted(self) -> int | None:
        """How many of the staged rows are exempted, when they were counted as they came (else None: ask SQL)."""
        if self._staged is None:
            return None
        return sum(n for (_, _, exempted), n in self._staged.items() if exempted)

    def counts(self) -> Iterator[tuple[str, str, bool, int]]:
        """(rule, severity, exempted, number) of the distinct findings seen so far (staged, or unchanged)."""
        self.seal()
        counts = Counter(self._same)
        if self._staged is not None:
            counts.update(self._staged)
        else:
            for r in self.db.rows(
                "SELECT rule, severity, exempted, count(*) FROM cycle_seen GROUP BY rule, severity, exempted"
            ):
                counts[(str(r[0]), str(r[1]), bool(r[2]))] += int(r[3])
        for (rule, severity, exempted), n in sorted(counts.items()):
            if n:
                yield rule, severity, exempted, n


def _open_digests(db: Database) -> KeyMap:
    """The open findings' keys, each with its stored digest (or `_ALWAYS`: stale, no digest, or a key two open
    findings share)."""
    n = int(db.rows("SELECT count(*) FROM findings WHERE resolved_at IS NULL")[0][0])
    known = KeyMap(expected=n)
    add, bits = known.add, _M64 & ~_FLAGS  # a million rows each cycle: no lookups in the loop
    for fid, stored, stale in db.stream("SELECT id, digest, stale FROM findings WHERE +resolved_at IS NULL"):
        place = add(int(fid[:16], 16), _ALWAYS if stale or stored is None else stored & bits)  # id_key
        if place >= 0:
            known.set_at(place, _ALWAYS)
    return known
