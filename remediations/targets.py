"""Stage 6, plan: which API object an asset is, and the concurrency token it carries.

CAI names assets by their full resource name; the appliers write through the resource's own API, so each asset
name is turned into the identifiers that API takes. Pure: no client library is imported here.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from auditor.collect.k8s_objects import (
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    ROLE,
    ROLE_BINDING,
    cluster_of,
    namespace_of,
)
from auditor.model import Asset
from remediations.iam_policies.endpoints import ENDPOINTS, endpoint_for
from remediations.kinds import CLOUD_ARMOR, IAM, RBAC

SECURITY_POLICY = "compute.googleapis.com/SecurityPolicy"
RBAC_KINDS = {
    ROLE: "Role",
    ROLE_BINDING: "RoleBinding",
    CLUSTER_ROLE: "ClusterRole",
    CLUSTER_ROLE_BINDING: "ClusterRoleBinding",
}
TOKEN_FIELDS = {IAM: "etag", CLOUD_ARMOR: "fingerprint", RBAC: "resourceVersion"}

_ARMOR = re.compile(r"^//compute\.googleapis\.com/projects/([^/]+)/global/securityPolicies/([^/]+)$")


class UnsupportedTarget(ValueError):
    """The asset cannot be written by any applier (the reason says why)."""


@dataclass(frozen=True)
class Target:
    """The object an applier reads and writes.

    api: `resourcemanager` (organizations, folders, projects), `iam_admin` (service accounts), `storage` (buckets),
    `compute` (security policies) or `kubernetes`. `resource` is the name that API takes: `projects/123`,
    `projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com`, `projects/p/global/securityPolicies/n`, or
    `<cluster>/<Kind>/<namespace>/<name>` for Kubernetes objects.
    """

    family: str
    api: str
    resource: str
    project: str | None = None
    policy: str | None = None
    cluster: str | None = None
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        return cls(**d)


def target_for(asset_name: str, asset_type: str, family: str) -> Target:
    """The API object for an asset; UnsupportedTarget names what cannot be written and why."""
    if family == IAM:
        found = endpoint_for(asset_name, asset_type)
        if found is None:
            raise UnsupportedTarget(f"IAM remediation supports {', '.join(e.label for e in ENDPOINTS.values())}, "
                                    f"not {asset_type}")
        e, resource = found
        if e.service.api == "storage":
            return Target(IAM, "storage", f"projects/_/buckets/{resource}", name=resource)
        return Target(IAM, e.service.api, resource)
    if family == CLOUD_ARMOR:
        m = _ARMOR.match(asset_name)
        if not m:
            raise UnsupportedTarget("Cloud Armor remediation supports global security policies only")
        return Target(CLOUD_ARMOR, "compute", f"projects/{m.group(1)}/global/securityPolicies/{m.group(2)}",
                      project=m.group(1), policy=m.group(2))
    if family == RBAC:
        kind = RBAC_KINDS.get(asset_type)
        if kind is None:
            raise UnsupportedTarget(f"RBAC remediation writes Roles, ClusterRoles and their bindings, not {asset_type}")
        cluster = cluster_of(asset_name)
        if not cluster:
            raise UnsupportedTarget("not an in-cluster object name")
        ns = namespace_of(asset_name) if kind in ("Role", "RoleBinding") else None
        name = asset_name.rsplit("/", 1)[-1]
        return Target(RBAC, "kubernetes", f"{cluster}/{kind}/{ns or '-'}/{name}", cluster=cluster, kind=kind,
                      namespace=ns, name=name)
    raise UnsupportedTarget(f"unknown remediation family {family!r}")


def state_of(asset: Asset, family: str) -> dict[str, Any] | None:
    """The part of the asset a family's applier reads and writes: the IAM policy, the security policy, the object."""
    if family == IAM:
        return asset.iam_policy if asset.has_iam_policy else None
    return asset.resource or None


def token_of(state: dict[str, Any] | None, family: str) -> str | None:
    if state is None:
        return None
    meta = state.get("metadata") or {}
    value = meta.get("resourceVersion") if family == RBAC else state.get(TOKEN_FIELDS[family])
    return str(value) if value not in (None, "") else None
