"""GKE in the example: three clusters (one hardened, two not), tenant namespaces and their RBAC, in CAI form and as a
kubectl List."""

from __future__ import annotations

from typing import Any

import yaml

from .common import DOMAIN, ancestors, resource_line

PROJECT = "ml-platform-prod"
TRAINING = f"projects/{PROJECT}/locations/us-central1/clusters/training"
INFERENCE = f"projects/{PROJECT}/locations/us-central1/clusters/inference"
RBAC = "rbac.authorization.k8s.io"

KIND_TYPES = {
    "Role": (f"{RBAC}/Role", f"{RBAC}/roles", True),
    "RoleBinding": (f"{RBAC}/RoleBinding", f"{RBAC}/rolebindings", True),
    "ClusterRole": (f"{RBAC}/ClusterRole", f"{RBAC}/clusterroles", False),
    "ClusterRoleBinding": (f"{RBAC}/ClusterRoleBinding", f"{RBAC}/clusterrolebindings", False),
    "Namespace": ("k8s.io/Namespace", "namespaces", False),
    "ResourceQuota": ("k8s.io/ResourceQuota", "resourcequotas", True),
    "NetworkPolicy": ("networking.k8s.io/NetworkPolicy", "networking.k8s.io/networkpolicies", True),
}
API_VERSIONS = {"Namespace": "v1", "ResourceQuota": "v1", "NetworkPolicy": "networking.k8s.io/v1"}

TENANTS = ("vision", "nlp", "speech")


def obj(kind: str, name: str, namespace: str | None = None, **body: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": str(1000 + (hash_name(kind + name + str(namespace))))}
    if namespace:
        meta["namespace"] = namespace
    meta.update(body.pop("metadata", {}))
    return {"apiVersion": API_VERSIONS.get(kind, f"{RBAC}/v1"), "kind": kind, "metadata": meta, **body}


def hash_name(s: str) -> int:
    return sum(ord(c) * (i + 1) for i, c in enumerate(s)) % 90000


def subject(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"kind": kind, "name": name}
    if kind == "ServiceAccount":
        s["namespace"] = namespace
    else:
        s["apiGroup"] = RBAC
    return s


def binding(kind: str, name: str, role_kind: str, role: str, subjects: list[dict[str, Any]],
            namespace: str | None = None) -> dict[str, Any]:
    return obj(kind, name, namespace, roleRef={"apiGroup": RBAC, "kind": role_kind, "name": role}, subjects=subjects)


def tenant_objects(tenant: str) -> list[dict[str, Any]]:
    ns = f"tenant-{tenant}"
    out = [
        obj("Namespace", ns, metadata={"labels": {"platform.helix-ml.example/tenant": tenant}}),
        obj("Role", "trainer", ns, rules=[
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "delete"]},
            {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
        ]),
        binding("RoleBinding", "trainer", "Role", "trainer",
                [subject("ServiceAccount", "trainer", ns), subject("Group", f"ml-{tenant}@{DOMAIN}")], ns),
        binding("RoleBinding", "tenant-view", "ClusterRole", "view", [subject("Group", f"ml-{tenant}@{DOMAIN}")], ns),
    ]
    if tenant != "speech":  # speech has neither quota nor network isolation (hygiene violation)
        out.append(obj("ResourceQuota", "gpu-quota", ns, spec={"hard": {"requests.nvidia.com/gpu": "16"}}))
        out.append(obj("NetworkPolicy", "default-deny", ns,
                       spec={"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    return out


def training_cluster() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for t in TENANTS:
        objs += tenant_objects(t)
    objs += [
        obj("Namespace", "kube-system"),
        obj("Namespace", "default"),
        # Kubernetes' own bindings: never findings.
        binding("ClusterRoleBinding", "cluster-admin", "ClusterRole", "cluster-admin",
                [subject("Group", "system:masters")]),
        binding("ClusterRoleBinding", "system:basic-user", "ClusterRole", "system:basic-user",
                [subject("Group", "system:authenticated")]),
        obj("ClusterRole", "cluster-admin", rules=[
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        obj("ClusterRole", "view", rules=[
            {"apiGroups": [""], "resources": ["pods", "services", "configmaps"], "verbs": ["get", "list", "watch"]}]),
        # Violation: the vision tenant's lead bound to cluster-admin ("just for the migration").
        binding("ClusterRoleBinding", "vision-lead-admin", "ClusterRole", "cluster-admin",
                [subject("User", f"alice@{DOMAIN}")]),
        # Violation: a RoleBinding in tenant-nlp granting the vision tenant's trainer access to nlp's namespace.
        binding("RoleBinding", "share-with-vision", "Role", "trainer",
                [subject("ServiceAccount", "trainer", "tenant-vision")], "tenant-nlp"),
        # Violation: wildcard verbs and secrets in a tenant Role.
        obj("Role", "speech-operator", "tenant-speech", rules=[
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
        binding("RoleBinding", "speech-operator", "Role", "speech-operator",
                [subject("ServiceAccount", "operator", "tenant-speech")], "tenant-speech"),
        # Compliant: a read-only ClusterRole for the platform team (not a tenant group), bound cluster-wide.
        obj("ClusterRole", "ml-job-viewer", rules=[
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]}]),
        binding("ClusterRoleBinding", "platform-job-viewer", "ClusterRole", "ml-job-viewer",
                [subject("Group", f"ml-platform@{DOMAIN}")]),
        # Violation: a custom ClusterRole with every verb on every resource, bound to the CI robot.
        obj("ClusterRole", "ml-platform-superuser", rules=[
            {"apiGroups": ["", "apps", "batch"], "resources": ["*"], "verbs": ["*"]}]),
        binding("ClusterRoleBinding", "ci-superuser", "ClusterRole", "ml-platform-superuser",
                [subject("ServiceAccount", "deployer", "ci")]),
        # Violation: the nlp tenant's group bound cluster-wide (it can read jobs in every tenant's namespace).
        binding("ClusterRoleBinding", "nlp-job-viewer", "ClusterRole", "ml-job-viewer",
                [subject("Group", f"ml-nlp@{DOMAIN}")]),
        # Violation: every Google account (system:authenticated on GKE) may read jobs and pods.
        binding("ClusterRoleBinding", "all-users-view", "ClusterRole", "view",
                [subject("Group", "system:authenticated")]),
        # Violation: a contractor bound by name in a tenant namespace, mapped to no tenant.
        binding("RoleBinding", "contractor-debug", "ClusterRole", "view",
                [subject("User", "dev@contractor.example")], "tenant-vision"),
    ]
    return objs


def inference_cluster() -> list[dict[str, Any]]:
    return [
        obj("Namespace", "serving", metadata={"labels": {"platform.helix-ml.example/tenant": "serving"}}),
        obj("ResourceQuota", "quota", "serving", spec={"hard": {"requests.cpu": "200"}}),
        obj("NetworkPolicy", "default-deny", "serving", spec={"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        binding("RoleBinding", "deployer", "ClusterRole", "edit",
                [subject("ServiceAccount", "deployer", "serving")], "serving"),
        # Violation: anonymous users may read everything the view role allows.
        binding("ClusterRoleBinding", "anonymous-view", "ClusterRole", "view",
                [subject("User", "system:anonymous")]),
    ]


def cai_asset(o: dict[str, Any], cluster: str) -> dict[str, Any]:
    asset_type, segment, namespaced = KIND_TYPES[o["kind"]]
    prefix = f"//container.googleapis.com/{cluster}/k8s"
    m = o["metadata"]
    if namespaced:
        name = f"{prefix}/namespaces/{m['namespace']}/{segment}/{m['name']}"
    else:
        name = f"{prefix}/{segment}/{m['name']}"
    return resource_line(name, asset_type, o, ancestors(PROJECT))


NOTEBOOKS = f"projects/{PROJECT}/zones/us-central1-a/clusters/research-notebooks"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
NODE_SCOPES = [
    "https://www.googleapis.com/auth/devstorage.read_only",
    "https://www.googleapis.com/auth/logging.write",
    "https://www.googleapis.com/auth/monitoring",
]
NODE_SA = f"gke-nodes@{PROJECT}.iam.gserviceaccount.com"


def node_pool(name: str, machine: str, *, service_account: str = NODE_SA, scopes: list[str] | None = None,
              metadata_mode: str = "GKE_METADATA", sandbox: bool = False) -> dict[str, Any]:
    config: dict[str, Any] = {
        "machineType": machine, "imageType": "COS_CONTAINERD", "diskSizeGb": 200,
        "serviceAccount": service_account, "oauthScopes": scopes or NODE_SCOPES,
        "metadata": {"disable-legacy-endpoints": "true"},
        "workloadMetadataConfig": {"mode": metadata_mode},
        "shieldedInstanceConfig": {"enableSecureBoot": True, "enableIntegrityMonitoring": True},
    }
    if sandbox:
        config["sandboxConfig"] = {"type": "GVISOR"}
    return {"name": name, "config": config, "initialNodeCount": 1, "status": "RUNNING", "version": "1.31.4-gke.1000"}


def cluster_data(name: str, **settings: Any) -> dict[str, Any]:
    return {"name": name, "location": "us-central1", "status": "RUNNING", "currentMasterVersion": "1.31.4-gke.1000",
            "legacyAbac": {}, "shieldedNodes": {"enabled": True},
            "workloadIdentityConfig": {"workloadPool": f"{PROJECT}.svc.id.goog"}, **settings}


def training_cluster_data() -> dict[str, Any]:
    """The training cluster as many ML examples set it up: Calico never turned on (the tenants' NetworkPolicies are
    enforced by nothing), a public control plane, and a GPU pool on the default Compute Engine account with the
    cloud-platform scope, off the GKE metadata server, so that jobs "just work" with buckets. No sandboxed pool,
    though its tenants run notebooks."""
    return cluster_data(
        "training",
        addonsConfig={"httpLoadBalancing": {}, "networkPolicyConfig": {"disabled": True}},
        networkConfig={"network": f"projects/{PROJECT}/global/networks/ml", "datapathProvider": "LEGACY_DATAPATH"},
        masterAuthorizedNetworksConfig={},
        privateClusterConfig={"enablePrivateNodes": True},
        nodePools=[
            node_pool("system", "e2-standard-4"),
            node_pool("gpu-a100", "a2-highgpu-8g", service_account="default", scopes=[CLOUD_PLATFORM],
                      metadata_mode="GCE_METADATA"),
        ],
    )


def inference_cluster_data() -> dict[str, Any]:
    """The hardened twin: Dataplane V2, private endpoint, dedicated node accounts, a gVisor pool."""
    return cluster_data(
        "inference",
        addonsConfig={"httpLoadBalancing": {}},
        networkConfig={"network": f"projects/{PROJECT}/global/networks/ml", "datapathProvider": "ADVANCED_DATAPATH"},
        privateClusterConfig={"enablePrivateNodes": True, "enablePrivateEndpoint": True,
                              "masterIpv4CidrBlock": "172.16.0.32/28"},
        masterAuthorizedNetworksConfig={"enabled": True, "cidrBlocks": [{"displayName": "corp",
                                                                         "cidrBlock": "198.51.100.0/24"}]},
        nodePools=[node_pool("serving", "g2-standard-8"), node_pool("sandbox", "n2-standard-8", sandbox=True)],
    )


def notebooks_cluster_data() -> dict[str, Any]:
    """A research cluster created years ago and never revisited, in the older field names (v1beta1 exports):
    legacy ABAC on, nodes exposing the node metadata and the legacy endpoints, the default account."""
    return {
        "name": "research-notebooks", "zone": "us-central1-a", "status": "RUNNING",
        "currentMasterVersion": "1.27.16-gke.1000",
        "addonsConfig": {"networkPolicyConfig": {}},
        "networkPolicy": {"provider": "CALICO", "enabled": True},
        "legacyAbac": {"enabled": True},
        "workloadIdentityConfig": {"identityNamespace": f"{PROJECT}.svc.id.goog"},
        "privateClusterConfig": {"enablePrivateNodes": True, "enablePrivateEndpoint": True},
        "nodePools": [{"name": "default-pool", "config": {
            "machineType": "n1-standard-8", "serviceAccount": "default", "oauthScopes": NODE_SCOPES,
            "metadata": {"disable-legacy-endpoints": "false"},
            "workloadMetadataConfig": {"nodeMetadata": "GKE_METADATA_SERVER"},
        }}],
    }


def clusters() -> list[dict[str, Any]]:
    out = []
    for path, data in ((TRAINING, training_cluster_data()), (INFERENCE, inference_cluster_data()),
                       (NOTEBOOKS, notebooks_cluster_data())):
        out.append(resource_line(f"//container.googleapis.com/{path}", "container.googleapis.com/Cluster", data,
                                 ancestors(PROJECT)))
    return out


def assets() -> list[dict[str, Any]]:
    """The training cluster as CAI exports it (the inference cluster ships as a kubectl List instead)."""
    return clusters() + [cai_asset(o, TRAINING) for o in training_cluster()]


def kubectl_list_yaml() -> str:
    header = (
        "# kubectl get namespaces,roles,rolebindings,clusterroles,clusterrolebindings,resourcequotas,networkpolicies\n"
        "#   -A -o yaml, from the inference cluster. Scan with --cluster " + INFERENCE + "\n"
    )
    return header + yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": inference_cluster()}, sort_keys=False)
