"""Stage 6, plan and apply: an edit (one atomic change to a resource) and the pure helpers families share.

The planner applies a family's edits to the snapshot's state to show the after-state; the writers apply the very
same functions to the live state they re-read, so what is written is exactly what the reviewer saw (the token
check guarantees the live state is the planned one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from auditor.evaluate.rulebook import Rule
    from auditor.model import Finding


class EditError(ValueError):
    """An edit that cannot be made to this state (the reason says why)."""


@dataclass
class Edit:
    """One atomic change to a resource, and the rules and findings that ask for it."""

    kind: str
    args: dict[str, Any]
    rules: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.kind}:{canonical_json(self.args)}"

    def describe(self) -> str:
        from remediations.families import family_of

        try:
            return family_of(self.kind).describe(self)
        except (EditError, KeyError):
            return self.kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "description": self.describe(),
            "args": self.args,
            "rules": self.rules,
            "modes": self.modes,
            "findings": self.findings,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Edit:
        return cls(kind=d["kind"], args=d["args"], rules=list(d.get("rules", [])), modes=list(d.get("modes", [])),
                   findings=list(d.get("findings", [])))


def asked_by(finding: Finding, rule: Rule) -> dict[str, Any]:
    """The rules, modes and findings fields of an Edit that `finding` of `rule` asks for (every family's edits)."""
    return {"rules": [rule.id], "modes": [finding.mode.value], "findings": [finding.id]}


def canonical_json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


def condition_title(cond: dict[str, Any] | None) -> str | None:
    if not cond:
        return None
    return str(cond.get("title") or cond.get("expression") or "condition")


def prune(v: Any) -> Any:
    """Drop empty values and API bookkeeping so the same state reads the same from CAI, a file or an API."""
    if isinstance(v, dict):
        # `kind: compute#securityPolicyRule` is API bookkeeping; an RBAC subject's `kind` is data.
        out = {k: prune(x) for k, x in v.items() if not (k == "kind" and "#" in str(x))}
        return {k: x for k, x in out.items() if x not in (None, False, "", {}, [])}
    if isinstance(v, list):
        return [prune(x) for x in v]
    return v
