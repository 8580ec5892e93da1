"""Stage 6, plan: the remediation kinds a rule may name in its `remediation:` field.

This module is data only (no client libraries, no network) so the rulebook can validate rule files offline.
"""

from __future__ import annotations

from dataclasses import dataclass

IAM = "iam"
CLOUD_ARMOR = "cloud_armor"
RBAC = "rbac"
GKE = "gke"


@dataclass(frozen=True)
class Kind:
    name: str
    family: str  # iam | cloud_armor | rbac: which applier writes it; gke: none (planned only)
    summary: str
    # A manual step in the plan (command, API call, impact) that apply never runs: cluster settings whose fix
    # recreates nodes.
    planned_only: bool = False


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("iam.remove_member", IAM, "remove the member from the role's binding (desired-state 'extra' members)"),
        Kind("iam.add_member", IAM, "add the member to the role (desired-state 'missing' members)"),
        Kind("iam.remove_binding", IAM, "remove the whole binding of the role (and condition)"),
        Kind("cloud_armor.set_rule_action", CLOUD_ARMOR, "change a rule's action (to the desired one, or deny(403))"),
        Kind("cloud_armor.add_rule", CLOUD_ARMOR, "add the desired rule"),
        Kind("cloud_armor.remove_rule", CLOUD_ARMOR, "remove the rule at the finding's priority"),
        Kind("cloud_armor.set_default_deny", CLOUD_ARMOR, "make the default rule (priority 2147483647) deny(403)"),
        Kind("rbac.remove_subject", RBAC, "remove the subject from the (Cluster)RoleBinding"),
        Kind("rbac.delete_binding", RBAC, "delete the (Cluster)RoleBinding"),
        Kind("rbac.replace_role_rules", RBAC, "replace the (Cluster)Role's rules with the desired ones"),
        Kind("gke.update_cluster", GKE, "change a cluster setting (planned only: command, API call, impact)", True),
        Kind("gke.recreate_node_pool", GKE, "replace a node pool with a fixed one (planned only)", True),
        Kind("gke.add_sandbox_node_pool", GKE, "add a GKE Sandbox (gVisor) node pool (planned only)", True),
    )
}


def known_kinds() -> list[str]:
    return sorted(KINDS)


def family_of(kind: str) -> str:
    return KINDS[kind].family


def planned_only(kind: str) -> bool:
    k = KINDS.get(kind)
    return k is not None and k.planned_only
