"""Remediation families, one module per kind of resource a fix writes, each behind the `Remediator` protocol.

`iam` (the IAM policy of every resource that has one), `cloud_armor` (security policy rules), `rbac` (Kubernetes
Roles and bindings) and `gke` (GKE clusters: Workload Identity written, the other settings planned only as manual
steps) register themselves in `auditor.plugins.remediation_families` when imported; the shared stages (plan,
apply, guards) reach a family through `family(name)` or `family_of(kind)` and never name one. Adding a family is
one module (or package) here and its name in the import at the bottom of this file.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from auditor.plugins import remediation_families
from remediations.families.base import Kind, ManualPlanner, Remediator

if TYPE_CHECKING:
    from auditor.model import Finding
    from remediations.edits import Edit
    from remediations.manual import ManualStep


def family(name: str) -> Remediator:
    found: Remediator | None = remediation_families.get(name)
    if found is None:
        from remediations.targets import UnsupportedTarget

        raise UnsupportedTarget(f"unknown remediation family {name!r}")
    return found


def kinds() -> dict[str, Kind]:
    return {k.name: k for fam in remediation_families.items().values() for k in fam.kinds}


def family_of(kind: str) -> Remediator:
    found = kinds().get(kind)
    if found is None:
        from remediations.edits import EditError

        raise EditError(f"unknown remediation {kind!r}")
    return family(found.family)


def planned_only(kind: str) -> bool:
    k = kinds().get(kind)
    return k is not None and k.planned_only


def manual_steps(kind: str, finding: Finding) -> list[ManualStep]:
    """The manual steps a finding asks for under a planned-only kind (its family's `manual_steps`)."""
    fam: ManualPlanner = family_of(kind)  # type: ignore[assignment]
    return fam.manual_steps(kind, finding)


def apply_edits(name: str, state: dict[str, Any] | None, edits: Iterable[Edit]) -> dict[str, Any] | None:
    """The state after the edits (a new object; the input is not modified)."""
    fam = family(name)
    new = copy.deepcopy(state)
    for e in edits:
        new = fam.apply(new, e)
    return new


def section(name: str, state: dict[str, Any] | None) -> Any:
    return family(name).section(state)


def diff_items(name: str, before: Any, after: Any) -> list[dict[str, Any]]:
    return family(name).diff(before, after)


# The families register on import.
from remediations.families import cloud_armor, gke, iam, rbac  # noqa: E402, F401
