"""Stage 6, plan: manual steps, the fixes a planned-only family shows and apply never runs.

A step is a change for a person to carry out: the exact command, the API calls (method, URL, body), what it
disrupts and the permissions whoever runs it needs. The family that owns the kind builds it from the finding's typed
remedy (`Remediator.manual_steps`); the plan lists the steps, merged per resource and setting, and apply skips them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ManualStepError(ValueError):
    """A finding the family cannot turn into a step (no remedy it knows)."""


@dataclass(frozen=True)
class ManualStep:
    """One change for a person to carry out: what to run, through which API call, and what it disrupts."""

    kind: str
    resource: str  # the asset's name
    setting: str
    node_pool: str | None
    gcloud: str
    api: list[dict[str, Any]]  # the API calls, in order: {"method", "url", "body"}
    impact: str
    rules: tuple[str, ...]
    findings: tuple[str, ...]
    permissions: tuple[str, ...] = ()  # what whoever runs the step needs (the auditor never holds them)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "resource": self.resource,
            "setting": self.setting,
            "node_pool": self.node_pool,
            "gcloud": self.gcloud,
            "api": self.api,
            "impact": self.impact,
            "permissions": list(self.permissions),
            "rules": list(self.rules),
            "findings": list(self.findings),
            "applied": False,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManualStep:
        return cls(
            kind=d["kind"], resource=d["resource"], setting=d["setting"], node_pool=d.get("node_pool"),
            gcloud=d["gcloud"], api=[dict(c) for c in d["api"]], impact=d["impact"], rules=tuple(d.get("rules", ())),
            findings=tuple(d.get("findings", ())), permissions=tuple(d.get("permissions", ())),
        )


def merge(steps: list[ManualStep]) -> list[ManualStep]:
    """One step per (cluster, setting, node pool): findings of several rules answered by one command merge."""
    merged: dict[tuple[str, str, str | None], ManualStep] = {}
    for s in steps:
        key = (s.resource, s.setting, s.node_pool)
        m = merged.get(key)
        merged[key] = s if m is None else ManualStep(
            m.kind, m.resource, m.setting, m.node_pool, m.gcloud, m.api, m.impact,
            tuple(sorted(set(m.rules) | set(s.rules))), tuple(sorted(set(m.findings) | set(s.findings))),
            m.permissions,
        )
    return [merged[k] for k in sorted(merged, key=lambda k: (k[0], k[1], k[2] or ""))]
