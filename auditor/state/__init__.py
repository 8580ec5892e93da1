"""Stage 4, findings -> state: cycles, the finding lifecycle, drift and persistent counters.

One interface (`Store`) over two backends: SQLite, a file (the embedded default), and PostgreSQL, a URL (replicas
share it). `db` holds the connection and the versioned migrations, `store` the lifecycle and drift, `records` the
typed records passed in and out, `leader` the PostgreSQL advisory lock that elects the replica recording cycles.
"""

from auditor.state.db import Database, StateError, is_url, migrate, open_database, redact, state_target
from auditor.state.leader import LEADER_KEY, AdvisoryLeader, NotLeader
from auditor.state.records import (
    CycleInput,
    CycleRecord,
    DriftEvent,
    Recorded,
    SourceState,
    StoredFinding,
    iso,
)
from auditor.state.store import CHANGES, COMPONENT, MIGRATIONS, OUTCOMES, Store

__all__ = [
    "CHANGES",
    "COMPONENT",
    "LEADER_KEY",
    "MIGRATIONS",
    "OUTCOMES",
    "AdvisoryLeader",
    "CycleInput",
    "CycleRecord",
    "Database",
    "DriftEvent",
    "NotLeader",
    "Recorded",
    "SourceState",
    "StateError",
    "Store",
    "StoredFinding",
    "is_url",
    "iso",
    "migrate",
    "open_database",
    "redact",
    "state_target",
]
