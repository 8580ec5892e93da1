"""Which replica records cycles when several share one PostgreSQL state database: the holder of an advisory lock.

The lock is a session lock taken on the store's own writing connection, so leadership and the right to write are one
thing: a leader whose process dies (kill -9, a lost node) loses its connection, PostgreSQL ends the session and frees
the lock at once, and nothing it had not committed is kept (a cycle is recorded in one transaction). Before it records,
the store checks inside that transaction that its session still holds the lock (`fence`), so a replica that lost its
connection and reconnected (and so lost the lock) can never record a cycle another replica also records.

Followers try the lock every `lease_seconds`; the first to get it after the leader is gone runs a cycle at once, so a
takeover takes at most one lease period (plus the connection's end being noticed: immediate for a dead process, the
TCP keepalive for a lost node). A SQLite state file has one writer by construction: every replica on it leads.
"""

from __future__ import annotations

import os
import socket

from auditor.state.db import Database

# An arbitrary constant below 2**31 (pg_locks shows it as objid with classid 0): "drft".
LEADER_KEY = 0x64726674


class NotLeader(Exception):
    """The session no longer holds the leader lock: this replica must not record."""


class AdvisoryLeader:
    """Leader election on a PostgreSQL advisory lock held by `db`'s session; always the leader on SQLite."""

    def __init__(self, db: Database, key: int = LEADER_KEY) -> None:
        self.db = db
        self.key = key
        self.identity = f"{socket.gethostname()}-{os.getpid()}"

    def holds(self) -> bool:
        if self.db.dialect != "postgresql":
            return True
        row = self.db.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 AND objid = ? "
            "AND objsubid = 1 AND pid = pg_backend_pid() AND granted",
            (self.key,),
        ).fetchone()
        return bool(row and int(row[0]))

    def is_leader(self) -> bool:
        """Take the lock if free (or keep it); False while another replica holds it."""
        if self.db.dialect != "postgresql":
            return True
        with self.db.lock:
            if self.holds():
                return True
            return bool(self.db.execute("SELECT pg_try_advisory_lock(?)", (self.key,)).fetchone()[0])

    def fence(self) -> None:
        """Inside the recording transaction: refuse unless this database connection still holds the lock."""
        if not self.holds():
            raise NotLeader("this replica no longer holds the leader lock; the cycle is not recorded")

    def stop(self) -> None:
        """Hand leadership over now (a clean shutdown) rather than when the connection ends."""
        if self.db.dialect == "postgresql":
            self.db.execute("SELECT pg_advisory_unlock_all()")
