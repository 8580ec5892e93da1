"""Typed remedies: what a check says would fix a finding, as a small model the remediation planner reads.

A check that can offer a fix yields it next to the finding's details (`Violation.remedies`); the planner turns the
remedy the rule's `remediation:` kind asks for into an edit of the live resource, and never reads the details,
which are for people and reports. A finding may offer several remedies: the alternatives (remove the rule, or set
its action to deny) or the parts (each extra subject of a binding); the rule's kind picks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

DENY = "deny(403)"


@dataclass(frozen=True)
class Remedy:
    family: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"remedy": type(self).__name__, **asdict(self)}


# -- IAM policies -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoveMember(Remedy):
    """Take `member` out of the binding of `role` (and `condition`, the full condition when there is one)."""

    family: ClassVar[str] = "iam"
    role: str
    member: str
    condition: dict[str, Any] | None = None


@dataclass(frozen=True)
class AddMember(Remedy):
    """Grant `role` to `member` (a desired state's missing member); a condition is created with its expression."""

    family: ClassVar[str] = "iam"
    role: str
    member: str
    condition: dict[str, Any] | None = None


@dataclass(frozen=True)
class RemoveBinding(Remedy):
    """Remove the whole binding of `role` (and `condition`)."""

    family: ClassVar[str] = "iam"
    role: str
    condition: dict[str, Any] | None = None


# -- Cloud Armor security policies ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoveRule(Remedy):
    family: ClassVar[str] = "cloud_armor"
    priority: int


@dataclass(frozen=True)
class SetRuleAction(Remedy):
    family: ClassVar[str] = "cloud_armor"
    priority: int
    action: str = DENY


@dataclass(frozen=True)
class SetRule(Remedy):
    """Make the rule at the rule's priority the given one (added, or written over the one there)."""

    family: ClassVar[str] = "cloud_armor"
    rule: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SetDefaultDeny(Remedy):
    """Make the default rule (priority 2147483647) deny(403)."""

    family: ClassVar[str] = "cloud_armor"


# -- Kubernetes RBAC --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoveSubject(Remedy):
    """Take one subject (as the binding lists it) out of a (Cluster)RoleBinding."""

    family: ClassVar[str] = "rbac"
    subject: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # as findings show it: `User:alice`, `ServiceAccount:ns/name`


@dataclass(frozen=True)
class DeleteRoleBinding(Remedy):
    family: ClassVar[str] = "rbac"


@dataclass(frozen=True)
class ReplaceRoleBinding(Remedy):
    """Make a RoleBinding exactly the declared one: this roleRef and these subjects. A roleRef cannot be changed in
    place, so a binding whose roleRef differs is deleted and created again."""

    family: ClassVar[str] = "rbac"
    role_ref: dict[str, Any] = field(default_factory=dict)
    subjects: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ReplaceRoleRules(Remedy):
    """Give a (Cluster)Role exactly these rules."""

    family: ClassVar[str] = "rbac"
    rules: tuple[dict[str, Any], ...] = ()


# -- GKE clusters (planned only: the plan shows the command, the API call and the impact) -----------------------------
# Settings of the cluster itself (clusters.update or its own method), of a node pool changed in place (its nodes are
# recreated), and of a node pool that can only be replaced by a new one.
ClusterSetting = Literal["network_policy", "legacy_abac", "workload_identity", "authorized_networks", "shielded_nodes"]
PoolSetting = Literal["gke_metadata", "secure_boot"]
ReplacedPoolSetting = Literal["node_service_account", "legacy_endpoints"]


@dataclass(frozen=True)
class FixClusterSetting(Remedy):
    """Turn on the cluster's `setting` (legacy ABAC: turn it off)."""

    family: ClassVar[str] = "gke"
    cluster: str  # projects/P/locations/L/clusters/C
    setting: ClusterSetting


@dataclass(frozen=True)
class FixNodePoolSetting(Remedy):
    """Change a node pool's `setting` in place (the pool's nodes are recreated)."""

    family: ClassVar[str] = "gke"
    cluster: str
    node_pool: str
    setting: PoolSetting


@dataclass(frozen=True)
class ReplaceNodePool(Remedy):
    """Replace a node pool by a new one with `setting` fixed (it cannot be changed on the pool)."""

    family: ClassVar[str] = "gke"
    cluster: str
    node_pool: str
    setting: ReplacedPoolSetting


@dataclass(frozen=True)
class AddSandboxNodePool(Remedy):
    """Add a GKE Sandbox (gVisor) node pool for the untrusted tenants' pods."""

    family: ClassVar[str] = "gke"
    cluster: str


def first(remedies: tuple[Remedy, ...], *types: type[Remedy]) -> Remedy | None:
    """The first remedy of one of the types (None when the check offers none of them)."""
    return next((r for r in remedies if isinstance(r, types)), None)
