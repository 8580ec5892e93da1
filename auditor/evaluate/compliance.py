"""Compliance frameworks a rule can map to (`compliance:` in a rule file) and the per-control verdict of a scan.

Only controls that an automated check of IAM policies, Cloud Armor policies or Kubernetes RBAC can judge are
listed; the rest of each benchmark (MFA, logging sinks, node images, ...) is out of scope and never shown as
passed. A rule naming a control missing here is refused at load time, so a typo cannot hide a control.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class RuleLike(Protocol):
    """What the verdict reads of a rule (a rulebook Rule): its id and its control mapping."""

    @property
    def id(self) -> str: ...

    @property
    def compliance(self) -> Mapping[str, Sequence[str]]: ...


@dataclass(frozen=True)
class Framework:
    key: str
    title: str
    controls: dict[str, str]  # control id -> title


FRAMEWORKS: dict[str, Framework] = {
    f.key: f
    for f in (
        Framework(
            "cis-gcp",
            "CIS Google Cloud Platform Foundation Benchmark 2.0.0",
            {
                "1.1": "Ensure that corporate login credentials are used",
                "1.4": "Ensure that there are only GCP-managed service account keys for each service account",
                "1.5": "Ensure that Service Account has no Admin privileges",
                "1.6": "Ensure that IAM users are not assigned the Service Account User or Service Account Token "
                "Creator roles at project level",
                "1.8": "Ensure that Separation of duties is enforced while assigning service account related roles "
                "to users",
                "2.1": "Ensure that Cloud Audit Logging is configured properly",
                "5.1": "Ensure that Cloud Storage bucket is not anonymously or publicly accessible",
                "5.2": "Ensure that Cloud Storage buckets have uniform bucket-level access enabled",
                "7.1": "Ensure that BigQuery datasets are not anonymously or publicly accessible",
            },
        ),
        Framework(
            "cis-gke",
            "CIS Google Kubernetes Engine (GKE) Benchmark 1.6",
            {
                "4.1.1": "Ensure that the cluster-admin role is only used where required",
                "4.1.2": "Minimize access to secrets",
                "4.1.3": "Minimize wildcard use in Roles and ClusterRoles",
                "4.1.4": "Minimize access to create pods",
                "4.1.8": "Avoid bindings to system:anonymous",
                "4.1.9": "Avoid non-default bindings to system:unauthenticated",
                "4.1.10": "Avoid non-default bindings to system:authenticated",
                "4.6.1": "Create administrative boundaries between resources using namespaces",
                "5.2.1": "Ensure GKE clusters are not running using the Compute Engine default service account",
                "5.2.2": "Prefer using dedicated GCP Service Accounts and Workload Identity",
                "5.4.1": "Ensure legacy Compute Engine instance metadata APIs are Disabled",
                "5.4.2": "Ensure the GKE Metadata Server is Enabled",
                "5.5.5": "Ensure Shielded GKE Nodes are Enabled",
                "5.6.3": "Ensure Control Plane Authorized Networks is Enabled",
                "5.6.4": "Ensure clusters are created with Private Endpoint Enabled and Public Access Disabled",
                "5.6.7": "Ensure Network Policy is Enabled and set as appropriate",
                "5.8.4": "Ensure Legacy Authorization (ABAC) is Disabled",
                "5.10.4": "Consider GKE Sandbox for running untrusted workloads",
            },
        ),
    )
}

_CONTROL = re.compile(r"^\d+(\.\d+)*$")


def check_controls(framework: str, controls: Iterable[str]) -> None:
    """Raise ValueError naming the framework or control a rule file got wrong."""
    fw = FRAMEWORKS.get(framework)
    if fw is None:
        raise ValueError(f"unknown compliance framework {framework!r}; known: {', '.join(sorted(FRAMEWORKS))}")
    for c in controls:
        if not isinstance(c, str) or not _CONTROL.match(c):
            raise ValueError(f"{framework}: control {c!r} is not a control number like 5.1 or 4.1.8")
        if c not in fw.controls:
            raise ValueError(f"{framework}: control {c} is not one this tool can check; known: "
                             f"{', '.join(sorted(fw.controls, key=control_key))}")


def control_key(control: str) -> tuple[int, ...]:
    return tuple(int(p) for p in control.split("."))


@dataclass
class ControlResult:
    """One control of a framework after a scan."""

    control: str
    title: str
    rules: list[str] = field(default_factory=list)
    findings: int = 0  # open (not exempted) findings of its rules
    exempted: int = 0
    not_evaluated: list[str] = field(default_factory=list)  # rules that could not judge every asset

    @property
    def status(self) -> str:
        """fail: an open finding; unknown: a rule could not be evaluated completely; no rule: not checked here;
        pass: every mapped rule ran over a complete snapshot and found nothing open."""
        if not self.rules:
            return "no rule"
        if self.findings:
            return "fail"
        if self.not_evaluated:
            return "unknown"
        return "pass"

    def to_dict(self) -> dict[str, object]:
        return {
            "control": self.control,
            "title": self.title,
            "status": self.status,
            "rules": self.rules,
            "findings": self.findings,
            "exempted": self.exempted,
            "not_evaluated": self.not_evaluated,
        }


def framework_rules(framework: str, rules: Iterable[RuleLike]) -> list[str]:
    """Ids of the rules mapped to a framework."""
    return [r.id for r in rules if framework in r.compliance]


def assess(
    framework: str,
    rules: Iterable[RuleLike],
    open_by_rule: dict[str, int],
    exempted_by_rule: dict[str, int],
    not_evaluated: set[str],
) -> list[ControlResult]:
    """Every control of the framework with its verdict, in benchmark order."""
    fw = FRAMEWORKS[framework]
    out = {c: ControlResult(c, t) for c, t in fw.controls.items()}
    for r in rules:
        for c in r.compliance.get(framework, ()):
            res = out[c]
            res.rules.append(r.id)
            res.findings += open_by_rule.get(r.id, 0)
            res.exempted += exempted_by_rule.get(r.id, 0)
            if r.id in not_evaluated:
                res.not_evaluated.append(r.id)
    return [out[c] for c in sorted(out, key=control_key)]
