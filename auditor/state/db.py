"""One connection to the state database, SQLite (a file) or PostgreSQL (a URL), behind the same small API.

Statements are written once, with `?` placeholders and SQL that both engines accept (`ON CONFLICT`, `RETURNING`,
`UPDATE ... FROM`, `IS DISTINCT FROM`, `count(*) FILTER`); `Database.execute` adapts the placeholders for psycopg.
Table definitions are written in SQLite's spelling and translated for PostgreSQL by `ddl()` (REAL timestamps become
DOUBLE PRECISION, so no precision is lost; integer keys become identities).

Each component (the store, the remediation journal) versions its own tables in `schema_versions`; `migrate` runs its
missing migrations on open, under a lock so two replicas starting together migrate once, and refuses a database whose
version is newer than the code knows.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from auditor.errors import AuditorError

BUSY_TIMEOUT_MS = 30_000
WAL_LIMIT_BYTES = 64 << 20
PAGE_SIZE = 16384  # of a new SQLite state file
# Helper threads SQLite may start for one large sort (building an index, ORDER BY, GROUP BY over many rows): a first
# cycle of a million findings builds six indexes and sorts for its counts, 3 s less of wall time on 2 cores.
SORT_THREADS = min(4, os.cpu_count() or 1)
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


class StateError(AuditorError):
    """The state database cannot be opened or was written by a newer version."""


class Row(Protocol):
    def __getitem__(self, key: int | str) -> Any: ...

    def keys(self) -> Sequence[str]: ...


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


def is_url(target: str | Path) -> bool:
    return str(target).split("://", 1)[0].lower() in _POSTGRES_SCHEMES and "://" in str(target)


def redact(target: str | Path) -> str:
    """A URL without its password, for messages and logs."""
    s = str(target)
    if not is_url(s):
        return s
    u = urllib.parse.urlsplit(s)
    if u.password is None:
        return s
    netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
    return urllib.parse.urlunsplit(u._replace(netloc=netloc))


class _PgRow(tuple[Any, ...]):
    """A row by position and by column name, as sqlite3.Row."""

    _index: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _pg_row_factory(cursor: Any) -> Any:
    names = [c.name for c in cursor.description or ()]
    index = {n: i for i, n in enumerate(names)}

    def make(values: Sequence[Any]) -> _PgRow:
        row = _PgRow(values)
        row._index = index
        return row

    return make


class Database:
    """A connection in autocommit mode; `transaction()` groups statements. Thread-safe through one lock."""

    def __init__(self, target: str | Path, password_file: str | Path | None = None) -> None:
        self.target = str(target)
        self.dialect = "postgresql" if is_url(target) else "sqlite"
        self.lock = threading.RLock()
        self._password_file = password_file
        self._conn: Any = self._connect_pg() if self.dialect == "postgresql" else self._connect_sqlite()

    @property
    def name(self) -> str:
        return redact(self.target)

    # -- connecting ----------------------------------------------------------------------------------------------
    def _connect_sqlite(self) -> sqlite3.Connection:
        p = Path(self.target)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(p, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # A new file only (a page size is fixed once the file has content): a first cycle of a million findings
            # writes a gigabyte through the WAL, a read or write call a page, and each call costs where system calls
            # are dear (a virtual machine); 16 KiB pages make a quarter of the calls (2 s less there).
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StateError(f"{p}: cannot switch the state file to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            # A first cycle of a million findings passes through the WAL (about the size of the state file): once
            # checkpointed, the WAL is cut back to this size instead of keeping that much disk for good.
            conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA threads = {SORT_THREADS}")
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{p}: cannot open the state file ({exc})") from None
        except OSError as exc:
            raise StateError(f"{p}: cannot create the state folder ({exc.strerror or exc})") from None
        return conn

    def _connect_pg(self) -> Any:
        import psycopg

        url = self.target.replace("postgresql+psycopg://", "postgresql://", 1)
        # Keepalives: a replica on a lost node is noticed, and its leader lock freed, within about half a minute.
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10, "application_name": "drift-auditor",
                                  "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                                  "keepalives_count": 3}
        if self._password_file:
            try:
                kwargs["password"] = Path(self._password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise StateError(f"state password file {self._password_file}: {exc.strerror or exc}") from None
        try:
            conn = psycopg.connect(url, row_factory=_pg_row_factory, **kwargs)
        except psycopg.Error as exc:
            raise StateError(f"{self.name}: cannot connect to the state database ({_one_line(exc)})") from None
        return conn

    def close(self) -> None:
        with self.lock:
            self._conn.close()

    def reconnect_if_broken(self) -> None:
        """After a lost PostgreSQL connection (server restart, failover), open a new one."""
        if self.dialect == "postgresql" and self._conn.closed:
            self._conn = self._connect_pg()

    # -- statements ----------------------------------------------------------------------------------------------
    def sql(self, statement: str) -> str:
        if self.dialect == "postgresql":
            return statement.replace("%", "%%").replace("?", "%s")
        return statement

    def execute(self, statement: str, args: Sequence[Any] = ()) -> Cursor:
        with self.lock:
            self.reconnect_if_broken()
            if self.dialect == "postgresql" and not args:
                return self._conn.execute(statement)
            return self._conn.execute(self.sql(statement), tuple(args))

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self.lock:
            if self.dialect == "postgresql":
                with self._conn.cursor() as cur:
                    cur.executemany(self.sql(statement), rows)
            else:
                self._conn.executemany(statement, rows)

    def rows(self, statement: str, args: Sequence[Any] = ()) -> list[Any]:
        with self.lock:
            return self.execute(statement, args).fetchall()

    def stream(self, statement: str, args: Sequence[Any] = (), size: int = 10_000) -> Iterator[Any]:
        """The rows of a large result a few thousand at a time, never all at once, as plain tuples (a row object with
        names for each of a million rows cost 0.4 s): SQLite steps its cursor; PostgreSQL reads through a server-side
        cursor (a client-side one would receive every row first). Holds the connection until the rows are read: read
        them all before another statement."""
        with self.lock:
            if self.dialect == "sqlite":
                cursor = self._conn.cursor()
                cursor.row_factory = None
                yield from cursor.execute(statement, tuple(args))
                return
            from psycopg.rows import tuple_row

            with self.transaction(), self._conn.cursor(name="auditor_stream", row_factory=tuple_row) as cur:
                cur.itersize = size
                cur.execute(self.sql(statement), tuple(args))
                yield from cur

    @contextmanager
    def transaction(self, immediate: bool = True) -> Iterator[Database]:
        """One transaction; a writer on SQLite takes the lock up front (BEGIN IMMEDIATE), so it never deadlocks.
        `immediate=False` for one that writes only TEMP tables: it takes no lock on the state database."""
        with self.lock:
            self.reconnect_if_broken()
            self._conn.execute(("BEGIN IMMEDIATE" if immediate else "BEGIN") if self.dialect == "sqlite" else "BEGIN")
            try:
                yield self
            except BaseException:
                if not (self.dialect == "postgresql" and self._conn.closed):
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def repeated_key(self, exc: BaseException) -> bool:
        """Whether `exc` is a unique index or key refusing a repeated value, on either engine."""
        if isinstance(exc, sqlite3.IntegrityError):
            return True
        if self.dialect == "postgresql":
            import psycopg

            return isinstance(exc, psycopg.errors.UniqueViolation)
        return False

    def ddl(self, script: str) -> str:
        """Table definitions in SQLite's spelling, translated for PostgreSQL."""
        if self.dialect == "sqlite":
            return script
        script = re.sub(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                        script)
        script = re.sub(r"\bINTEGER\b", "BIGINT", script)
        return re.sub(r"\bREAL\b", "DOUBLE PRECISION", script)

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """`column IN (?, ?, ...)` for a short list (never empty: an empty list matches nothing)."""
        if not values:
            return "1 = 0", []
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def tables(self) -> set[str]:
        if self.dialect == "sqlite":
            return {r[0] for r in self.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {r[0] for r in self.rows("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def open_database(target: str | Path, password_file: str | Path | None = None) -> Database:
    return Database(target, password_file)


# An arbitrary constant: the advisory lock that serializes migrations of replicas starting together.
_MIGRATION_LOCK = 0x64726966


def migrate(db: Database, component: str, migrations: Sequence[str]) -> int:
    """Bring `component`'s tables to the latest version; returns the version. Other components' tables are untouched."""
    with db.transaction():
        if db.dialect == "postgresql":
            db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        db.execute(db.ddl(
            "CREATE TABLE IF NOT EXISTS schema_versions "
            "(component TEXT PRIMARY KEY, version INTEGER NOT NULL, updated_at REAL NOT NULL)"
        ))
        row = db.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
        current = int(row[0]) if row else 0
        if current > len(migrations):
            raise StateError(
                f"{db.name}: the state database has {component} schema version {current}, newer than this version "
                f"knows ({len(migrations)}); upgrade drift-auditor or use another state_path/state_url"
            )
        for version in range(current + 1, len(migrations) + 1):
            for stmt in _statements(db.ddl(migrations[version - 1])):
                db.execute(stmt)
        if current < len(migrations):
            db.execute(
                "INSERT INTO schema_versions (component, version, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                (component, len(migrations), time.time()),
            )
    return len(migrations)


def _statements(script: str) -> Iterator[str]:
    for stmt in re.sub(r"--[^\n]*", "", script).split(";"):
        if stmt.strip():
            yield stmt


def state_target(settings: Any) -> tuple[str, str | None]:
    """(URL or path, password file) of the configured state: `state_url` wins over `state_path`."""
    url = getattr(settings, "state_url", None)
    pw = getattr(settings, "state_password_file", None)
    return (str(url) if url else str(settings.state_path)), (str(pw) if pw else None)
