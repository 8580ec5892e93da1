"""Kubernetes objects turned into the assets Cloud Asset Inventory gives for them.

CAI names a GKE object `//container.googleapis.com/projects/P/locations/L/clusters/C/k8s/...`; a cluster given
by a bare name (`--cluster training`) becomes `//container.googleapis.com/clusters/training/k8s/...`.
Used by both the file reader and the live Kubernetes source, so both give identical assets.
"""

from __future__ import annotations

from typing import Any

from auditor.model import Asset
from auditor.vocabulary import (
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    NAMESPACE,
    NETWORK_POLICY,
    RESOURCE_QUOTA,
    ROLE,
    ROLE_BINDING,
)

# kind -> (asset type, path segment under the namespace or cluster, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "Role": (ROLE, "rbac.authorization.k8s.io/roles", True),
    "RoleBinding": (ROLE_BINDING, "rbac.authorization.k8s.io/rolebindings", True),
    "ClusterRole": (CLUSTER_ROLE, "rbac.authorization.k8s.io/clusterroles", False),
    "ClusterRoleBinding": (CLUSTER_ROLE_BINDING, "rbac.authorization.k8s.io/clusterrolebindings", False),
    "Namespace": (NAMESPACE, "namespaces", False),
    "ResourceQuota": (RESOURCE_QUOTA, "resourcequotas", True),
    "NetworkPolicy": (NETWORK_POLICY, "networking.k8s.io/networkpolicies", True),
}


def cluster_path(cluster: str) -> str:
    """`projects/P/locations/L/clusters/C` as given, or `clusters/NAME` for a bare name."""
    cluster = cluster.strip("/")
    if cluster.startswith("//container.googleapis.com/"):
        cluster = cluster[len("//container.googleapis.com/") :]
    return cluster if "/" in cluster else f"clusters/{cluster}"


def cluster_ancestors(cluster: str) -> tuple[str, ...]:
    parts = cluster_path(cluster).split("/")
    if len(parts) >= 2 and parts[0] == "projects":
        return (f"projects/{parts[1]}",)
    return ()


def object_asset(obj: dict[str, Any], cluster: str, origin: str = "") -> Asset | None:
    """The asset for one Kubernetes object, or None for kinds the auditor does not read."""
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        return None
    asset_type, segment, namespaced = KINDS[kind]
    meta = obj.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ValueError(f"{kind}: 'metadata' is not a mapping")
    name = meta.get("name")
    if not name:
        raise ValueError(f"{kind} without metadata.name")
    if not isinstance(name, str):
        raise ValueError(f"{kind}: metadata.name is not a string")
    if not isinstance(meta.get("namespace") or "", str):
        raise ValueError(f"{kind} {name}: metadata.namespace is not a string")
    _check_fields(kind, name, obj)
    prefix = f"//container.googleapis.com/{cluster_path(cluster)}/k8s"
    if namespaced:
        namespace = meta.get("namespace") or "default"
        asset_name = f"{prefix}/namespaces/{namespace}/{segment}/{name}"
    else:
        asset_name = f"{prefix}/{segment}/{name}"
    return Asset(
        name=asset_name,
        asset_type=asset_type,
        resource=obj,
        ancestors=cluster_ancestors(cluster),
        update_time=meta.get("creationTimestamp") if isinstance(meta.get("creationTimestamp"), str) else None,
        origin=origin,
    )


# Fields whose type the checks rely on: (field, expected type, the type of each element or None)
_FIELDS: dict[str, tuple[tuple[str, type[Any], type[Any] | None], ...]] = {
    "Role": (("rules", list, dict),),
    "ClusterRole": (("rules", list, dict), ("aggregationRule", dict, None)),
    "RoleBinding": (("subjects", list, dict), ("roleRef", dict, None)),
    "ClusterRoleBinding": (("subjects", list, dict), ("roleRef", dict, None)),
    "Namespace": (),
    "ResourceQuota": (("spec", dict, None),),
    "NetworkPolicy": (("spec", dict, None),),
}
_TYPE_NAMES: dict[type[Any], str] = {list: "a list", dict: "a mapping"}


def _check_fields(kind: str, name: str, obj: dict[str, Any]) -> None:
    """ValueError when a field the checks iterate has the wrong type (a mapping where a list belongs, a string
    iterated per character): the object is then malformed, never read as something else."""
    for key, want, each in _FIELDS.get(kind, ()):
        value: Any = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, want):
            raise ValueError(f"{kind} {name}: '{key}' is not {_TYPE_NAMES[want]}")
        if each is not None and not all(isinstance(v, each) for v in value):
            raise ValueError(f"{kind} {name}: an item of '{key}' is not {_TYPE_NAMES[each]}")
    if kind in ("Role", "ClusterRole"):
        for rule in obj.get("rules") or ():
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                value = rule.get(key)
                if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise ValueError(f"{kind} {name}: a rule's '{key}' is not a list of strings")


_clusters: dict[str, str] = {}


def cluster_of(asset_name: str) -> str:
    """`//container.googleapis.com/.../clusters/C` for the name of any asset inside a cluster."""
    head, sep, _ = asset_name.partition("/k8s/")
    if not sep:
        head, sep, _ = asset_name.partition("/k8s")
    # one string per cluster: indexes keyed by cluster hold tens of thousands of keys naming a few clusters
    if len(_clusters) > 100_000:
        _clusters.clear()
    return _clusters.setdefault(head, head)


def namespace_of(asset_name: str) -> str | None:
    """The namespace an in-cluster asset lives in (or names, for a Namespace), from its CAI name."""
    _, sep, rest = asset_name.partition("/k8s/namespaces/")
    if not sep:
        return None
    return rest.split("/", 1)[0]
