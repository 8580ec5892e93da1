"""The words checks and remediations share: principals, Kubernetes subjects, the resource hierarchy, asset types.

Checks use them to find what is wrong, remediations to fix it and to judge the blast radius of a fix; both import
them from here, so the two never disagree about which subject is a system one or which asset is an organization.
Pure data and small predicates: no client library, no network.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from auditor.evaluate.globs import any_match

# -- asset types (Cloud Asset Inventory names) ------------------------------------------------------------------------
ORGANIZATION = "cloudresourcemanager.googleapis.com/Organization"
FOLDER = "cloudresourcemanager.googleapis.com/Folder"
PROJECT = "cloudresourcemanager.googleapis.com/Project"
HIERARCHY_TYPES = (ORGANIZATION, FOLDER, PROJECT)
SECURITY_POLICY = "compute.googleapis.com/SecurityPolicy"
BUCKET = "storage.googleapis.com/Bucket"
SERVICE_ACCOUNT = "iam.googleapis.com/ServiceAccount"
TOPIC = "pubsub.googleapis.com/Topic"
SUBSCRIPTION = "pubsub.googleapis.com/Subscription"
KEY_RING = "cloudkms.googleapis.com/KeyRing"
CRYPTO_KEY = "cloudkms.googleapis.com/CryptoKey"
SECRET = "secretmanager.googleapis.com/Secret"
REPOSITORY = "artifactregistry.googleapis.com/Repository"
RUN_SERVICE = "run.googleapis.com/Service"
ML_MODEL = "ml.googleapis.com/Model"
DATASET = "bigquery.googleapis.com/Dataset"
ROLE = "rbac.authorization.k8s.io/Role"
ROLE_BINDING = "rbac.authorization.k8s.io/RoleBinding"
CLUSTER_ROLE = "rbac.authorization.k8s.io/ClusterRole"
CLUSTER_ROLE_BINDING = "rbac.authorization.k8s.io/ClusterRoleBinding"
NAMESPACE = "k8s.io/Namespace"
RESOURCE_QUOTA = "k8s.io/ResourceQuota"
NETWORK_POLICY = "networking.k8s.io/NetworkPolicy"
GKE_CLUSTER = "container.googleapis.com/Cluster"
# The Kubernetes asset types of a cluster (the readers' kinds, auditor/collect/k8s_objects.py, map onto these)
K8S_ASSET_TYPES = frozenset(
    {ROLE, ROLE_BINDING, CLUSTER_ROLE, CLUSTER_ROLE_BINDING, NAMESPACE, RESOURCE_QUOTA, NETWORK_POLICY}
)


def is_hierarchy_node(resource: str) -> bool:
    """`organizations/N`, `folders/N` or `projects/P` itself (not a resource inside a project)."""
    kind, _, rest = resource.partition("/")
    return kind in ("organizations", "folders", "projects") and bool(rest) and "/" not in rest


def is_hierarchy_top(resource: str) -> bool:
    """An organization or folder: access lost there is lost on everything below."""
    return is_hierarchy_node(resource) and not resource.startswith("projects/")

# -- principals -------------------------------------------------------------------------------------------------------
PUBLIC_MEMBERS = frozenset({"allUsers", "allAuthenticatedUsers"})
OWNER_ROLE = "roles/owner"
# Roles a remediation never removes from an organization or folder without a per-resource allowance: losing them
# locks everyone out of the hierarchy below. Path globs (`*` stops at `/`).
DEFAULT_PROTECTED_ROLES = (
    "roles/owner",
    "roles/resourcemanager.organizationAdmin",
    "roles/iam.securityAdmin",
    "roles/iam.*Admin",
)
# The largest share of a resource's member grants one apply may remove by default.
DEFAULT_MAX_MEMBER_SHARE = 0.5

# -- Kubernetes subjects ----------------------------------------------------------------------------------------------
SUBJECT_KINDS = ("User", "Group", "ServiceAccount")
# Namespaces that belong to Kubernetes and GKE: their service accounts are the cluster's own.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "gke-*", "gmp-*")
# Not identities but "everyone": a binding to them is somebody's grant (a finding, and removing it is the fix).
PUBLIC_SUBJECTS = frozenset({"system:anonymous", "system:unauthenticated", "system:authenticated"})


def subject_name(s: dict[str, Any], binding_namespace: str | None = None) -> str:
    """`User:alice`, `Group:team`, `ServiceAccount:ns/name`: one string per subject, as findings show it."""
    kind = s.get("kind", "?")
    if kind == "ServiceAccount":
        return f"ServiceAccount:{s.get('namespace') or binding_namespace or '?'}/{s.get('name', '?')}"
    return f"{kind}:{s.get('name', '?')}"


def service_account_of(s: dict[str, Any], binding_namespace: str | None = None) -> tuple[str, str | None] | None:
    """(namespace, name or None for all of them) when the subject is one or all service accounts of a namespace.

    Kubernetes also names service accounts as users (`system:serviceaccount:NS:NAME`) and the service accounts of
    a namespace as a group (`system:serviceaccounts:NS`).
    """
    kind, name = s.get("kind"), str(s.get("name", ""))
    if kind == "ServiceAccount":
        return str(s.get("namespace") or binding_namespace or ""), name
    if kind == "User" and name.startswith("system:serviceaccount:"):
        parts = name.split(":")
        if len(parts) == 4:
            return parts[2], parts[3]
    if kind == "Group" and name.startswith("system:serviceaccounts:"):
        return name.split(":", 2)[2], None
    return None


def is_system_subject(
    s: dict[str, Any], binding_namespace: str | None = None, system_namespaces: Iterable[str] = SYSTEM_NAMESPACES
) -> bool:
    """Kubernetes' own identities: `system:` users and groups (not the public ones, which stand for everyone), and
    the service accounts of the system namespaces. Checks skip them; remediations never remove them."""
    sa = service_account_of(s, binding_namespace)
    if sa is not None:
        return any_match(system_namespaces, sa[0])
    name = str(s.get("name", ""))
    return name.startswith("system:") and name not in PUBLIC_SUBJECTS
