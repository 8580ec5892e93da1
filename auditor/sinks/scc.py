"""Security Command Center: one SCC finding per drift-auditor finding, in a source of the operator's choosing.

The SCC finding id is the finding id itself (20 hexadecimal digits: alphanumeric and at most 32 characters, as
SCC requires); `category` is the rule id, `resourceName` the asset's full resource name, `severity` the rule's
(info maps to LOW, SCC having nothing lower), `findingClass` MISCONFIGURATION, and `sourceProperties` carry the
check, the message, the asset type, the mode, when it was first seen and any exemption. An open finding is
ACTIVE; a resolved or exempted one is INACTIVE.

Only changes are written. The ledger keeps, per finding, the state and a digest of the content last written:
- never written: `createFinding` (a finding already there, from a lost ledger or another replica, is patched);
- content changed: `PATCH` with an update mask of the mutable fields (category and resourceName are immutable,
  and cannot change anyway: they are part of the finding id);
- only the state changed: `setState`.
A rerun with nothing changed writes nothing. A write that fails (after retries of transient errors) leaves the
mark untouched, so the next sync tries again; the sync goes on with the other findings and reports the failure.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from auditor.collect.retry import RetryPolicy
from auditor.logs import get_logger
from auditor.permissions import declare
from auditor.sinks.ledger import FindingRow, Ledger
from auditor.state import iso

# `auditor permissions --config` adds these to the role when scc.enabled: CreateFinding and UpdateFinding need
# findings.update, SetFindingState findings.setState (on the source).
declare("sinks.scc", ["securitycenter.findings.update", "securitycenter.findings.setState"],
        why="write each finding to the configured Security Command Center source and set its state")

SINK = "scc"
SEVERITY = {"critical": "CRITICAL", "high": "HIGH", "medium": "MEDIUM", "low": "LOW", "info": "LOW"}
SOURCE_NAME = re.compile(r"^organizations/\d+/sources/\d+$")
_SCC_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
PATCH_MASK = ("state", "severity", "finding_class", "external_uri", "source_properties", "event_time")


def scc_finding_id(finding_id: str) -> str:
    """A valid SCC finding id (alphanumeric, 1 to 32 characters) for a finding id: ours already is one; anything
    else (ids of another version) is hashed to 32 hexadecimal digits."""
    if _SCC_ID.match(finding_id):
        return finding_id
    return hashlib.sha256(finding_id.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Desired:
    """What SCC should hold for one finding."""

    finding_id: str
    state: str  # ACTIVE | INACTIVE
    category: str
    resource_name: str
    severity: str
    source_properties: dict[str, Any]
    external_uri: str
    event_time: float

    @property
    def digest(self) -> str:
        content = [self.category, self.resource_name, self.severity, self.source_properties, self.external_uri]
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def mark(self) -> str:
        return f"{self.state}:{self.digest}"

    def finding(self) -> dict[str, Any]:
        from google.protobuf.timestamp_pb2 import Timestamp

        ts = Timestamp()
        ts.FromNanoseconds(int(self.event_time * 1e9))
        return {
            "state": self.state,
            "category": self.category,
            "resource_name": self.resource_name,
            "severity": self.severity,
            "finding_class": "MISCONFIGURATION",
            "source_properties": self.source_properties,
            "external_uri": self.external_uri,
            "event_time": ts,
        }


def desired(row: FindingRow, external_uri: str | None = None) -> Desired:
    props: dict[str, Any] = {
        "drift_auditor_finding_id": row.id,
        "rule": row.rule,
        "check": row.check,
        "asset_type": row.asset_type,
        "message": row.message,
        "mode": row.mode,
        "first_seen": iso(row.first_seen),
        "exempted": row.exempted,
    }
    if row.project:  # where the asset sits: SCC's own resource fields are filled by SCC for Google resources only
        props["project"] = row.project
    if row.ancestry:
        props["ancestry"] = row.ancestry
    if row.exemption:
        ex = json.loads(row.exemption)
        for key in ("reason", "owner", "ticket", "expires"):
            if ex.get(key):
                props[f"exemption_{key}"] = str(ex[key])
    state = "ACTIVE" if row.open and not row.exempted else "INACTIVE"
    when = row.resolved_at if row.resolved_at is not None else row.last_seen
    uri = external_uri.format(id=row.id) if external_uri else ""
    return Desired(row.id, state, row.rule, row.asset, SEVERITY.get(row.severity, "LOW"), props, uri, when)


@dataclass
class SyncResult:
    created: int = 0
    updated: int = 0
    state_changed: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return self.created + self.updated + self.state_changed

    def to_dict(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "state_changed": self.state_changed,
                "unchanged": self.unchanged, "failed": self.failed, "errors": self.errors[:20]}


class SccSync:
    """Writes the store's findings to one SCC source through a `securitycenter_v1.SecurityCenterClient`."""

    def __init__(self, client: Any, source: str, ledger: Ledger, external_uri: str | None = None,
                 retry: RetryPolicy | None = None, timeout: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not SOURCE_NAME.match(source):
            raise ValueError(f"SCC source must look like organizations/ORG_ID/sources/SOURCE_ID, got {source!r}")
        self.client = client
        self.source = source
        self.ledger = ledger
        self.external_uri = external_uri
        self.retry = retry or RetryPolicy(attempts=5)
        self.timeout = timeout
        self.clock = clock
        self.log = get_logger("auditor.sinks.scc")

    def sync(self, dry_run: bool = False) -> SyncResult:
        out = SyncResult()
        batch: list[tuple[str, str]] = []
        for row in self.ledger.findings(SINK):
            want = desired(row, self.external_uri)
            if row.mark == want.mark:
                out.unchanged += 1
                continue
            if dry_run:
                self._count(out, row.mark, want)
                continue
            try:
                self._write(row.mark, want, out)
            except Exception as exc:  # one finding failing must not stop the others; it is retried next sync
                out.failed += 1
                out.errors.append(f"{row.id}: {type(exc).__name__}: {exc}")
                self.log.warning("scc_write_failed", finding=row.id, error=f"{type(exc).__name__}: {exc}")
                continue
            batch.append((row.id, want.mark))
            if len(batch) >= 200:
                self.ledger.put(SINK, batch)
                batch = []
        self.ledger.put(SINK, batch)
        self._close_orphans(out, dry_run)
        return out

    @staticmethod
    def _count(out: SyncResult, mark: str | None, want: Desired) -> None:
        if mark is None:
            out.created += 1
        elif mark.split(":", 1)[1] != want.digest:
            out.updated += 1
        else:
            out.state_changed += 1

    def _name(self, finding_id: str) -> str:
        return f"{self.source}/findings/{scc_finding_id(finding_id)}"

    def _write(self, mark: str | None, want: Desired, out: SyncResult) -> None:
        from google.api_core import exceptions as gexc

        if mark is None:
            try:
                self.retry.call(lambda: self.client.create_finding(
                    parent=self.source, finding_id=scc_finding_id(want.finding_id), finding=want.finding(),
                    retry=None, timeout=self.timeout))
                out.created += 1
                return
            except gexc.Conflict:  # 409 ALREADY_EXISTS
                pass  # written before (a lost ledger, another replica): bring it up to date
            self._patch(want)
            out.updated += 1
        elif mark.split(":", 1)[1] != want.digest:
            self._patch(want)
            out.updated += 1
        else:
            from google.protobuf.timestamp_pb2 import Timestamp

            ts = Timestamp()
            ts.FromNanoseconds(int(want.event_time * 1e9))
            self.retry.call(lambda: self.client.set_finding_state(
                name=self._name(want.finding_id), state=want.state, start_time=ts, retry=None, timeout=self.timeout))
            out.state_changed += 1

    def _patch(self, want: Desired) -> None:
        from google.protobuf.field_mask_pb2 import FieldMask

        finding = {**want.finding(), "name": self._name(want.finding_id)}
        request = {"finding": finding, "update_mask": FieldMask(paths=list(PATCH_MASK))}
        self.retry.call(lambda: self.client.update_finding(request=request, retry=None, timeout=self.timeout))

    def _close_orphans(self, out: SyncResult, dry_run: bool) -> None:
        """A finding pruned from the store while still ACTIVE in SCC (no sync ran between its resolution and the
        pruning) is set INACTIVE: SCC never keeps an active finding the store has forgotten."""
        from google.protobuf.timestamp_pb2 import Timestamp

        done = []
        for key, mark in self.ledger.orphans(SINK):
            if not mark.startswith("ACTIVE:"):
                continue
            if dry_run:
                out.state_changed += 1
                continue
            ts = Timestamp()
            ts.FromNanoseconds(int(self.clock() * 1e9))
            try:
                self.retry.call(lambda k=key, t=ts: self.client.set_finding_state(  # type: ignore[misc]
                    name=self._name(k), state="INACTIVE", start_time=t, retry=None, timeout=self.timeout))
            except Exception as exc:
                out.failed += 1
                out.errors.append(f"{key}: {type(exc).__name__}: {exc}")
                continue
            out.state_changed += 1
            done.append((key, "INACTIVE:" + mark.split(":", 1)[1]))
        self.ledger.put(SINK, done)
