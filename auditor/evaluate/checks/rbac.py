"""Kubernetes RBAC checks for multi-tenant clusters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import Field

from auditor.collect.k8s_objects import CLUSTER_ROLE_BINDING, ROLE_BINDING
from auditor.evaluate.globs import any_match
from auditor.evaluate.registry import Context, Params, Violation, check
from auditor.model import Asset


def subject_name(s: dict[str, Any], binding_namespace: str | None = None) -> str:
    """`User:alice`, `Group:team`, `ServiceAccount:ns/name`: one string per subject, as findings show it."""
    kind = s.get("kind", "?")
    if kind == "ServiceAccount":
        return f"ServiceAccount:{s.get('namespace') or binding_namespace or '?'}/{s.get('name', '?')}"
    return f"{kind}:{s.get('name', '?')}"


def is_system_subject(s: dict[str, Any]) -> bool:
    """Subjects that belong to Kubernetes itself: `system:` users and groups, and kube-system service accounts."""
    name = str(s.get("name", ""))
    if s.get("kind") == "ServiceAccount":
        return s.get("namespace") == "kube-system"
    return name.startswith("system:")


class PowerfulRoleParams(Params):
    roles: list[str] = Field(default_factory=lambda: ["cluster-admin"], description="ClusterRole name globs.")
    allowed_subjects: list[str] = Field(
        default_factory=list, description="Subject globs (`User:*`, `Group:platform-admins`) allowed to hold them."
    )


@check(
    "rbac.no_powerful_role_binding",
    params=PowerfulRoleParams,
    asset_types=[ROLE_BINDING, CLUSTER_ROLE_BINDING],
)
def no_powerful_role_binding(asset: Asset, params: PowerfulRoleParams, ctx: Context) -> Iterator[Violation]:
    """No binding of cluster-admin (or the listed ClusterRoles) to subjects other than `system:` ones.

    ```yaml
    - id: rbac-no-cluster-admin
      check: rbac.no_powerful_role_binding
      severity: critical
      params: {roles: [cluster-admin], allowed_subjects: ["Group:gke-platform-admins"]}
    ```
    """
    obj = asset.resource
    ref = obj.get("roleRef") or {}
    if ref.get("kind") != "ClusterRole" or not any_match(params.roles, str(ref.get("name", ""))):
        return
    ns = (obj.get("metadata") or {}).get("namespace")
    for s in obj.get("subjects") or ():
        if is_system_subject(s):
            continue
        who = subject_name(s, ns)
        if params.allowed_subjects and any_match(params.allowed_subjects, who):
            continue
        yield Violation(
            f"{who} is bound to ClusterRole {ref.get('name')}",
            who,
            {"subject": who, "role": ref.get("name"), "binding": (obj.get("metadata") or {}).get("name")},
        )
