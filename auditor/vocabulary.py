"""The words checks and remediations share: principals, Kubernetes subjects, the resource hierarchy, asset types.

Checks use them to find what is wrong, remediations to fix it and to judge the blast radius of a fix; both import
them from here, so the two never disagree about which subject is a system one or which asset is an organization.
Pure data and small predicates: no client library, no network.
"""

from __future__ import annotations

from typing import Any

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
# Not identities but "everyone": taking them out of a binding someone created is the fix, never a risk.
PUBLIC_SUBJECTS = frozenset({"system:anonymous", "system:unauthenticated", "system:authenticated"})


def is_system_subject(s: dict[str, Any]) -> bool:
    """Kubernetes' own identities: `system:` users and groups (but not the public ones), kube-system accounts."""
    name = str(s.get("name", ""))
    if s.get("kind") == "ServiceAccount":
        return s.get("namespace") == "kube-system" or name.startswith("system:")
    return name.startswith("system:") and name not in PUBLIC_SUBJECTS
