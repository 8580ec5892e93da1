"""The records the state store takes and gives: a cycle to record, stored findings, drift events, cycles."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from auditor.model import Finding

if TYPE_CHECKING:
    from auditor.state.staging import Staging


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


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
    project: str | None = None  # projects/NUMBER the asset is in, when it is in one
    ancestry: str = ""  # organizations/1/folders/2/projects/3: the asset's ancestors from the top down

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
            "project": self.project,
            "ancestry": self.ancestry,
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
    project: str | None = None
    ancestry: str = ""

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
            "project": self.project,
            "ancestry": self.ancestry,
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
    """What recording one cycle changed: counts, with the drift events themselves read from the store on demand
    (a baseline of a million findings is a million events: they are never all held at once by the daemon)."""

    cycle_id: int
    new_count: int = 0
    resolved_count: int = 0
    still_open: int = 0
    stale: int = 0
    open: int = 0  # open, not exempted findings after this cycle (stale ones included): what the metrics show
    retired: int = 0  # closed because their rule is no longer loaded (not drift)
    baseline: bool = False  # the first cycle with findings: its "new" findings are not counted as drift
    new_exempted: int = 0  # (a baseline, which records no drift event) how many of its new findings are exempted
    changed: int = 0  # finding rows written (inserted, updated, resolved, marked stale): 0 when nothing changed
    load_drift: Callable[[], Iterator[DriftEvent]] | None = field(default=None, repr=False, compare=False)

    @property
    def drift(self) -> list[DriftEvent]:
        """Every drift event of the cycle (tests and small cycles; the daemon streams them with `iter_drift`)."""
        return list(self.load_drift()) if self.load_drift else []

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


@dataclass
class CycleInput:
    """One cycle as the store records it (built by auditor.cycle from a ScanResult, or from the error)."""

    started_at: float
    ended_at: float
    outcome: str
    # None: the cycle failed before producing findings. Else read once, in batches, or already staged as they were
    # made (Store.staging()).
    findings: Iterable[Finding] | Staging | None
    incomplete: dict[str, str] = field(default_factory=dict)
    snapshot_at: float | None = None
    assets_by_type: Mapping[str, int] = field(default_factory=dict)
    rules: int = 0
    durations: dict[str, float] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    source_errors: list[tuple[str, str]] = field(default_factory=list)  # (source, code) to count
    rule_ids: frozenset[str] | None = None  # the rules loaded: findings of other rules are retired, not resolved
    # (rule, asset) not evaluated this cycle, asset "" for all its assets (a rule that could not run): their open
    # findings not seen are carried (open, stale), not resolved
    not_evaluated: Iterable[tuple[str, str]] = ()
    error: str | None = None


