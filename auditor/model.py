"""The typed objects that flow between stages: Asset, Finding, and the snapshot's completeness record.

Assets are decoded lazily: the reader keeps the raw JSON bytes of `resource.data` and `iam_policy`, and a
check that reads them pays for the decoding. Assets that no rule needs are never decoded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any, TypeVar

import msgspec

SEVERITIES = ("info", "low", "medium", "high", "critical")
# A severity's rank by its text; str-valued, so a Severity looks itself up too (cheaper than its `rank` property in
# a loop over every finding)
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


class Severity(StrEnum):
    info = "info"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"

    @property
    def rank(self) -> int:
        return SEVERITY_RANK[self]


# A Severity's plain text, by a lookup (the enum's `value` property costs more, once for every finding)
SEVERITY_TEXT: dict[Severity, str] = {s: s.value for s in Severity}


class Mode(StrEnum):
    audit = "audit"
    dryrun = "dryrun"
    enforce = "enforce"


_json_decoder = msgspec.json.Decoder()
# Undecoded JSON: a msgspec.Raw as a reader decoded it, or bytes (one object where a Raw is two: what a scan keeps)
Json = msgspec.Raw | bytes
T = TypeVar("T")


def project_of(ancestors: tuple[str, ...]) -> str | None:
    """The project among an asset's ancestors (from the asset upwards), if it is in one."""
    return next((a for a in ancestors if a.startswith("projects/")), None)


def ancestry_of(ancestors: tuple[str, ...]) -> str:
    """`organizations/1/folders/2/projects/3`: ancestors (from the asset upwards) written from the top down."""
    return "/".join(reversed(ancestors))


@lru_cache(maxsize=1 << 16)
def place_of(ancestors: tuple[str, ...]) -> tuple[str | None, str]:
    """`project_of` and `ancestry_of` together, made once for the many findings (a report's, a cycle's) under the
    same ancestors: an organization has about as many distinct ancestries as projects."""
    return project_of(ancestors), ancestry_of(ancestors)


class Asset:
    """One Cloud Asset Inventory asset (or a Kubernetes object turned into one).

    `resource` is the resource's `data` (the API object); `iam_policy` is the IAM policy as a dict, or None.
    `ancestors` run from the asset upwards, as CAI lists them (`projects/1`, `folders/2`, `organizations/3`).
    """

    __slots__ = (
        "_derived",
        "_held",
        "_iam",
        "_iam_raw",
        "_line",
        "_origin",
        "_res",
        "_res_raw",
        "ancestors",
        "asset_type",
        "name",
        "update_time",
    )

    def __init__(
        self,
        name: str,
        asset_type: str,
        resource: dict[str, Any] | Json | None = None,
        iam_policy: dict[str, Any] | Json | None = None,
        ancestors: tuple[str, ...] = (),
        update_time: str | None = None,
        origin: str = "",
        line: int = 0,
    ) -> None:
        self.name = name
        self.asset_type = asset_type
        self.ancestors = ancestors
        self.update_time = update_time
        # Where it was read, for messages: a source URI, or a file and a line number kept apart (the file's name is
        # one string shared by every asset read from it) and joined only when asked for.
        self._origin = origin
        self._line = line
        self._res: dict[str, Any] | None = None
        self._res_raw: Json | None = None
        self._iam: dict[str, Any] | None = None
        self._iam_raw: Json | None = None
        self._held = False
        self._derived: dict[str, Any] | None = None
        if isinstance(resource, Json):
            self._res_raw = resource
        else:
            self._res = resource
        if isinstance(iam_policy, Json):
            self._iam_raw = iam_policy
        else:
            self._iam = iam_policy

    @property
    def origin(self) -> str:
        """Where the asset was read: `file:line`, or the source URI."""
        return f"{self._origin}:{self._line}" if self._line else self._origin

    @origin.setter
    def origin(self, value: str) -> None:
        self._origin, self._line = value, 0

    @property
    def line(self) -> int:
        """The line of its file the asset was read at (0 when it was not read from a file)."""
        return self._line

    def renumber(self, offset: int) -> None:
        """Move the line the asset was read at by `offset` (a worker numbered it from the start of its range)."""
        if self._line:
            self._line += offset

    @property
    def resource(self) -> dict[str, Any]:
        """The resource data (`resource.data` in CAI); an empty dict when the asset carries none."""
        if self._res is None:
            self._res = _json_decoder.decode(self._res_raw) if self._res_raw is not None else {}
            if not self._held:
                self._res_raw = None
            if not isinstance(self._res, dict):
                self._res = {}
        return self._res

    @property
    def resource_json(self) -> Json | None:
        """The resource data's JSON as read, while the asset keeps it (None when the asset was made from a dict, or
        once `resource` decoded it and dropped it): for a reader that decodes only what it needs, into typed structs."""
        return self._res_raw

    @property
    def has_resource(self) -> bool:
        return self._res is not None or self._res_raw is not None

    @property
    def has_iam_policy(self) -> bool:
        return self._iam is not None or self._iam_raw is not None

    @property
    def iam_policy(self) -> dict[str, Any]:
        """The IAM policy as CAI gives it (either spelling); an empty dict when the asset carries none."""
        if self._iam is None:
            self._iam = _json_decoder.decode(self._iam_raw) if self._iam_raw is not None else {}
            if not self._held:
                self._iam_raw = None
            if not isinstance(self._iam, dict):
                self._iam = {}
        return self._iam

    def derived(self, key: str, build: Callable[[Asset], T]) -> T:
        """What `build` makes of this asset, made once: the parsed bindings or Cloud Armor rules that several
        checks read. Dropped with the decoded forms by `release`."""
        cache = self._derived
        if cache is None:
            cache = self._derived = {}
        elif key in cache:
            hit: T = cache[key]
            return hit
        value = cache[key] = build(self)
        return value

    def stub(self) -> Asset:
        """The asset without its payload (name, type, ancestors and origin shared): what a check that reads only
        names needs to keep."""
        return Asset(self.name, self.asset_type, ancestors=self.ancestors, origin=self._origin, line=self._line)

    def hold(self) -> None:
        """Keep the raw JSON once decoded, so that `release` can later drop the decoded form.

        The engine holds some assets until the end of a scan (context and deferred checks); between reads, each
        then costs its JSON bytes rather than a tree of dicts several times larger.
        """
        self._held = True

    def release(self) -> None:
        """Forget the decoded resource and IAM policy where their raw JSON is kept (they decode again when read),
        and what was derived from them. The raw JSON kept is then bytes of its own: a reader's Raw view of its line
        is copied (most assets are never kept, and never copied)."""
        self._derived = None
        if self._res_raw is not None:
            self._res = None
            if type(self._res_raw) is msgspec.Raw:
                self._res_raw = bytes(self._res_raw)
        if self._iam_raw is not None:
            self._iam = None
            if type(self._iam_raw) is msgspec.Raw:
                self._iam_raw = bytes(self._iam_raw)

    @property
    def ancestry_path(self) -> str:
        """`organizations/1/folders/2/projects/3`: the ancestors from the top down, for ancestry globs."""
        return ancestry_of(self.ancestors)

    @property
    def project(self) -> str | None:
        return project_of(self.ancestors)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "asset_type": self.asset_type}
        if self._res is not None or self._res_raw is not None:
            out["resource"] = {"data": self.resource}
        if self.has_iam_policy:
            out["iam_policy"] = self.iam_policy
        if self.ancestors:
            out["ancestors"] = list(self.ancestors)
        if self.update_time:
            out["update_time"] = self.update_time
        return out

    def __repr__(self) -> str:
        return f"Asset({self.asset_type} {self.name})"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled as its parts, raw JSON as bytes: compact and quick to load for a process that receives many.
        res: Any = bytes(self._res_raw) if self._res_raw is not None else self._res
        iam: Any = bytes(self._iam_raw) if self._iam_raw is not None else self._iam
        return (
            _restore_asset,
            (self.name, self.asset_type, res, iam, self.ancestors, self.update_time, self._origin, self._line,
             self._held),
        )


def _restore_asset(
    name: str,
    asset_type: str,
    res: bytes | dict[str, Any] | None,
    iam: bytes | dict[str, Any] | None,
    ancestors: tuple[str, ...],
    update_time: str | None,
    origin: str,
    line: int,
    held: bool,
) -> Asset:
    asset = Asset(name, asset_type, res, iam, ancestors, update_time, origin, line)
    asset._held = held
    return asset


def finding_id(rule: str, asset: str, key: str) -> str:
    """A stable id: the same rule, asset and detail give the same id in every cycle."""
    return hashlib.sha256(f"{rule}\x1f{asset}\x1f{key}".encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class Exempted:
    reason: str
    owner: str
    ticket: str | None
    expires: str | None


class Finding(msgspec.Struct, frozen=True, gc=False):
    """One violation of one rule by one asset.

    A msgspec Struct rather than a dataclass: a scan makes one per finding (about a million on a messy organization),
    and a frozen dataclass set each of its fields through `object.__setattr__`, several times the cost. Nothing it
    holds refers back to it: no cycle for the collector to track (`gc=False`).
    """

    id: str
    rule: str
    check: str
    severity: Severity
    mode: Mode
    asset: str
    asset_type: str
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    exempted: Exempted | None = None
    # An exemption that matched but has expired: the finding counts, and says why it is no longer exempt.
    expired_exemption: Exempted | None = None
    ancestors: tuple[str, ...] = ()  # the asset's, from the asset upwards (shared with it, not copied)
    # The fixes the check offers (auditor.remedies models): what the remediation planner reads, never `details`.
    remedies: tuple[Any, ...] = ()

    @property
    def project(self) -> str | None:
        return project_of(self.ancestors)

    @property
    def ancestry(self) -> str:
        """`organizations/1/folders/2/projects/3`: the asset's ancestors from the top down."""
        return ancestry_of(self.ancestors)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "rule": self.rule,
            "check": self.check,
            "severity": self.severity.value,
            "mode": self.mode.value,
            "asset": self.asset,
            "asset_type": self.asset_type,
            "message": self.message,
            "details": self.details,
            "exempted": self.exempted is not None,
        }
        if self.exempted is not None:
            out["exemption"] = _exempted_dict(self.exempted)
        if self.expired_exemption is not None:
            out["expired_exemption"] = _exempted_dict(self.expired_exemption)
        return out


def _exempted_dict(e: Exempted) -> dict[str, Any]:
    return {"reason": e.reason, "owner": e.owner, "ticket": e.ticket, "expires": e.expires}


@dataclass(frozen=True, slots=True)
class NotEvaluated:
    """A rule that could not be evaluated (a check lacking the context it needs, such as the Organization asset
    whose domain it compares with): the scan says so instead of reporting the rule as clean, and is partial."""

    rule_id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule_id, "reason": self.reason}


@dataclass(slots=True)
class SourceStatus:
    """What one source read: whether each asset type was read completely, and what went wrong."""

    source: str
    complete: bool = True
    assets: int = 0
    skipped: int = 0  # malformed records reported and skipped
    failed_types: dict[str, str] = field(default_factory=dict)  # asset type ("*" for all) -> reason
    errors: list[str] = field(default_factory=list)
    read_time: str | None = None  # the moment the data describes (CAI read_time), when known
    requests: int = 0  # API requests a live source made (pages, retries included)
    # objects of kinds no reader knows, by kind (`Deployment`, `compute#instance`, "a mapping with keys ..."): shown,
    # never assets
    unknown: dict[str, int] = field(default_factory=dict)
    # assets read more than once (the same name and content in two files or sources): name -> where the copy kept
    # was read and the copies dropped; a bounded sample, `duplicate_count` counts them all
    duplicates: list[str] = field(default_factory=list)
    duplicate_count: int = 0

    def fail(self, asset_type: str, reason: str) -> None:
        self.complete = False
        self.failed_types[asset_type] = reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "complete": self.complete,
            "assets": self.assets,
            "skipped": self.skipped,
            "failed": [{"asset_type": t, "reason": r} for t, r in sorted(self.failed_types.items())],
            "errors": self.errors[:50],
            "read_time": self.read_time,
            "requests": self.requests,
            "unknown": dict(sorted(self.unknown.items())),
            "duplicates": self.duplicate_count,
            "duplicate_assets": self.duplicates[:50],
        }


def iter_members(policy: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(binding, member) for every member of every binding of an IAM policy."""
    for binding in policy.get("bindings") or ():
        for member in binding.get("members") or ():
            yield binding, member
