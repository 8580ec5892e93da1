"""GKE cluster posture: each rule of rules/gke-cluster.yaml fires on the risky setting and is silent on its safe twin,
for the current (v1) and the older (v1beta1 / older export) field names; the cross-layer finding on a tenant namespace
with NetworkPolicies in a cluster that enforces none.

The Cluster objects follow the GKE API reference (projects.locations.clusters, v1 and v1beta1) as CAI carries them in
resource.data; the Forseti dump's cluster (tests/data/cai) is a real export of an old cluster.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from auditor.collect.files import iter_file_assets
from auditor.collect.k8s_objects import object_asset
from auditor.evaluate.engine import Engine
from auditor.evaluate.gke_posture import cluster_key
from auditor.evaluate.rulebook import load_file, shipped_rules_dir
from auditor.model import Asset, Finding

CLUSTER_TYPE = "container.googleapis.com/Cluster"
NAME = "//container.googleapis.com/projects/ml-prod/locations/us-central1/clusters/train"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
NARROW_SCOPES = [
    "https://www.googleapis.com/auth/devstorage.read_only",
    "https://www.googleapis.com/auth/logging.write",
    "https://www.googleapis.com/auth/monitoring",
]
Data = dict[str, Any]


def pool_v1(name: str, sandbox: bool = False) -> Data:
    config: Data = {
        "machineType": "a2-highgpu-1g",
        "diskSizeGb": 200,
        "imageType": "COS_CONTAINERD",
        "serviceAccount": "gke-nodes@ml-prod.iam.gserviceaccount.com",
        "oauthScopes": [CLOUD_PLATFORM],
        "metadata": {"disable-legacy-endpoints": "true"},
        "workloadMetadataConfig": {"mode": "GKE_METADATA"},
        "shieldedInstanceConfig": {"enableSecureBoot": True, "enableIntegrityMonitoring": True},
        "accelerators": [{"acceleratorCount": "1", "acceleratorType": "nvidia-tesla-a100"}],
    }
    if sandbox:
        config["sandboxConfig"] = {"type": "GVISOR"}
    return {"name": name, "config": config, "initialNodeCount": 1, "status": "RUNNING", "version": "1.31.4-gke.1000"}


def safe_v1() -> Data:
    """A hardened cluster as the v1 API returns it: Dataplane V2, DNS-based control plane access."""
    return {
        "name": "train",
        "location": "us-central1",
        "status": "RUNNING",
        "currentMasterVersion": "1.31.4-gke.1000",
        "addonsConfig": {"httpLoadBalancing": {}, "horizontalPodAutoscaling": {}},
        "networkConfig": {
            "network": "projects/ml-prod/global/networks/ml",
            "subnetwork": "projects/ml-prod/regions/us-central1/subnetworks/gke",
            "datapathProvider": "ADVANCED_DATAPATH",
        },
        "legacyAbac": {},
        "workloadIdentityConfig": {"workloadPool": "ml-prod.svc.id.goog"},
        "controlPlaneEndpointsConfig": {
            "dnsEndpointConfig": {"endpoint": "gke-0123.us-central1.gke.goog", "allowExternalTraffic": True},
            "ipEndpointsConfig": {
                "enabled": True,
                "enablePublicEndpoint": True,
                "globalAccess": False,
                "authorizedNetworksConfig": {
                    "enabled": True,
                    "cidrBlocks": [{"displayName": "corp", "cidrBlock": "203.0.113.0/24"}],
                },
            },
        },
        "shieldedNodes": {"enabled": True},
        "nodePools": [pool_v1("gpu"), pool_v1("notebooks", sandbox=True)],
    }


def safe_old() -> Data:
    """The same hardening in the older spelling (v1beta1 and older exports): Calico, a private endpoint."""
    return {
        "name": "train",
        "zone": "us-central1-a",
        "status": "RUNNING",
        "currentMasterVersion": "1.15.12-gke.2",
        "addonsConfig": {"httpLoadBalancing": {}, "networkPolicyConfig": {}},
        "networkPolicy": {"provider": "CALICO", "enabled": True},
        "legacyAbac": {},
        "workloadIdentityConfig": {"identityNamespace": "ml-prod.svc.id.goog"},
        "privateClusterConfig": {"enablePrivateNodes": True, "enablePrivateEndpoint": True,
                                 "masterIpv4CidrBlock": "172.16.0.0/28"},
        "masterAuthorizedNetworksConfig": {},
        "shieldedNodes": {"enabled": True},
        "nodePools": [
            {"name": "gpu", "config": {
                "serviceAccount": "gke-nodes@ml-prod.iam.gserviceaccount.com",
                "oauthScopes": NARROW_SCOPES,
                "metadata": {"disable-legacy-endpoints": "true"},
                "workloadMetadataConfig": {"nodeMetadata": "GKE_METADATA_SERVER"},
            }},
            {"name": "notebooks", "config": {
                "serviceAccount": "gke-nodes@ml-prod.iam.gserviceaccount.com",
                "oauthScopes": NARROW_SCOPES,
                "metadata": {"disable-legacy-endpoints": "true"},
                "workloadMetadataConfig": {"nodeMetadata": "GKE_METADATA_SERVER"},
                "sandboxConfig": {"sandboxType": "gvisor"},
            }},
        ],
    }


def safe_rest() -> Data:
    """The v1 cluster with enums as numbers, as CAI's REST form sends them."""
    data = safe_v1()
    data["networkConfig"]["datapathProvider"] = 2
    for p in data["nodePools"]:
        p["config"]["workloadMetadataConfig"] = {"mode": 2}
        if "sandboxConfig" in p["config"]:
            p["config"]["sandboxConfig"] = {"type": 1}
    return data


SPELLINGS: dict[str, Callable[[], Data]] = {"v1": safe_v1, "older": safe_old, "rest": safe_rest}


def _gpu(d: Data) -> Data:
    cfg: Data = d["nodePools"][0]["config"]
    return cfg


def _ip(d: Data) -> Data:
    ip: Data = d["controlPlaneEndpointsConfig"]["ipEndpointsConfig"]
    return ip


# rule id -> spelling -> what turns the safe cluster risky in that one respect
def no_enforcement(d: Data, spelling: str) -> None:
    if spelling == "older":
        d["networkPolicy"]["enabled"] = False  # the addon is there, the nodes do not enforce
    else:
        d["networkConfig"]["datapathProvider"] = "LEGACY_DATAPATH" if spelling == "v1" else 1
        d["addonsConfig"]["networkPolicyConfig"] = {"disabled": True}


def abac(d: Data, spelling: str) -> None:
    d["legacyAbac"] = {"enabled": True}


def no_workload_identity(d: Data, spelling: str) -> None:
    d["workloadIdentityConfig"] = {}


def node_metadata_exposed(d: Data, spelling: str) -> None:
    _gpu(d)["workloadMetadataConfig"] = (
        {"nodeMetadata": "EXPOSE"} if spelling == "older" else {"mode": "GCE_METADATA" if spelling == "v1" else 1}
    )


def default_sa_narrow(d: Data, spelling: str) -> None:
    default = "default" if spelling == "older" else "401000000001-compute@developer.gserviceaccount.com"
    _gpu(d)["serviceAccount"] = default
    _gpu(d)["oauthScopes"] = NARROW_SCOPES


def default_sa_cloud_platform(d: Data, spelling: str) -> None:
    default_sa_narrow(d, spelling)
    _gpu(d)["oauthScopes"] = [CLOUD_PLATFORM]


def public_control_plane(d: Data, spelling: str) -> None:
    if spelling == "older":
        d["privateClusterConfig"]["enablePrivateEndpoint"] = False
    else:
        _ip(d)["authorizedNetworksConfig"] = {"enabled": False}


def open_authorized_networks(d: Data, spelling: str) -> None:
    if spelling == "older":
        d["privateClusterConfig"] = {"enablePrivateNodes": True}
        d["masterAuthorizedNetworksConfig"] = {"enabled": True, "cidrBlocks": [{"cidrBlock": "0.0.0.0/0"}]}
    else:
        _ip(d)["authorizedNetworksConfig"]["cidrBlocks"].append({"displayName": "any", "cidrBlock": "0.0.0.0/0"})


def unshielded(d: Data, spelling: str) -> None:
    d["shieldedNodes"] = {}


def legacy_endpoints(d: Data, spelling: str) -> None:
    _gpu(d)["metadata"] = {"disable-legacy-endpoints": "false"} if spelling == "older" else {}


def no_sandbox(d: Data, spelling: str) -> None:
    d["nodePools"] = d["nodePools"][:1]


RISKS: list[tuple[Callable[[Data, str], None], dict[str, int]]] = [
    (no_enforcement, {"gke-network-policy-enforced": 1, "gke-tenant-network-policies-enforced": 1}),
    (abac, {"gke-legacy-abac-disabled": 1}),
    (no_workload_identity, {"gke-workload-identity": 1}),
    (node_metadata_exposed, {"gke-workload-identity": 1}),
    (default_sa_narrow, {"gke-nodes-not-default-service-account": 1}),
    (default_sa_cloud_platform, {"gke-nodes-not-default-service-account": 1, "gke-nodes-default-sa-cloud-platform": 1}),
    (public_control_plane, {"gke-control-plane-not-public": 1}),
    (open_authorized_networks, {"gke-control-plane-not-public": 1}),
    (unshielded, {"gke-shielded-nodes": 1}),
    (legacy_endpoints, {"gke-legacy-metadata-endpoints-disabled": 1}),
    (no_sandbox, {"gke-sandbox-for-untrusted-tenants": 1}),
]


def cluster_asset(data: Data, name: str = NAME) -> Asset:
    return Asset(name, CLUSTER_TYPE, resource=data, ancestors=("projects/401000000001", "organizations/1"))


def tenant_objects(cluster: str = "projects/ml-prod/locations/us-central1/clusters/train") -> list[Asset]:
    objs = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "tenant-vision", "labels": {"tenant": "vision"}}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "default-deny", "namespace": "tenant-vision"},
         "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}},
    ]
    out = [object_asset(o, cluster) for o in objs]
    return [a for a in out if a is not None]


def pack() -> list[Any]:
    """The cluster posture rules: gke-cluster.yaml, and those reading tenancy, which live in rbac.yaml beside it."""
    tenancy = [r for r in load_file(shipped_rules_dir() / "rbac.yaml") if r.id.startswith("gke-")]
    return load_file(shipped_rules_dir() / "gke-cluster.yaml") + tenancy


def evaluate(assets: list[Asset], shortcuts: bool = True) -> list[Finding]:
    result = Engine(pack(), shortcuts=shortcuts).evaluate(assets)
    assert not result.errors, result.errors
    return result.findings


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_safe_cluster_is_silent(spelling: str) -> None:
    assert evaluate([cluster_asset(SPELLINGS[spelling]()), *tenant_objects()]) == []


@pytest.mark.parametrize("shortcuts", [True, False], ids=["screens", "no-shortcuts"])
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
@pytest.mark.parametrize("risk,expected", RISKS, ids=[r.__name__ for r, _ in RISKS])
def test_each_risky_setting_fires(
    risk: Callable[[Data, str], None], expected: dict[str, int], spelling: str, shortcuts: bool
) -> None:
    data = copy.deepcopy(SPELLINGS[spelling]())
    risk(data, spelling)
    # the cluster after its tenants, and before them: screens must not depend on the order
    for assets in ([*tenant_objects(), cluster_asset(data)], [cluster_asset(data), *tenant_objects()]):
        findings = evaluate(assets, shortcuts=shortcuts)
        assert Counter(f.rule for f in findings) == expected, [f.message for f in findings]
        for f in findings:
            assert f.details["cluster"] == "projects/ml-prod/locations/us-central1/clusters/train"


def test_node_pool_findings_name_the_pool_and_the_account() -> None:
    data = safe_v1()
    default_sa_cloud_platform(data, "v1")
    node_metadata_exposed(data, "v1")
    by_rule = {f.rule: f for f in evaluate([cluster_asset(data)])}
    critical = by_rule["gke-nodes-default-sa-cloud-platform"]
    assert critical.details["node_pool"] == "gpu" and critical.details["cloud_platform"] is True
    assert "cloud-platform" in critical.message
    assert by_rule["gke-workload-identity"].details["metadata_mode"] == "GCE_METADATA"


def test_tenant_namespace_with_policies_in_a_non_enforcing_cluster() -> None:
    data = safe_old()
    no_enforcement(data, "older")
    findings = [f for f in evaluate([cluster_asset(data), *tenant_objects()])
                if f.rule == "gke-tenant-network-policies-enforced"]
    assert len(findings) == 1
    f = findings[0]
    assert f.asset.endswith("/k8s/namespaces/tenant-vision") and f.asset_type == "k8s.io/Namespace"
    assert f.severity.value == "high"
    assert "projects/ml-prod/locations/us-central1/clusters/train" in f.message
    assert f.details["network_policies"] == ["default-deny"] and f.details["tenant"] == "vision"


def test_namespace_without_policies_or_cluster_is_not_judged_here() -> None:
    data = safe_v1()
    no_enforcement(data, "v1")
    bare = [a for a in tenant_objects() if a.asset_type != "networking.k8s.io/NetworkPolicy"]
    assert not [f for f in evaluate([cluster_asset(data), *bare]) if f.rule == "gke-tenant-network-policies-enforced"]
    # no Cluster asset: whether the policies are enforced is unknown here
    assert evaluate(tenant_objects()) == []


def test_zonal_v1_name_and_kubectl_bare_name_find_their_cluster() -> None:
    data = safe_old()
    no_enforcement(data, "older")
    zonal = "//container.googleapis.com/v1/projects/ml-prod/zones/us-central1-a/clusters/train"
    in_cluster = tenant_objects("projects/ml-prod/zones/us-central1-a/clusters/train")
    assert cluster_key(zonal) == cluster_key(in_cluster[0].name.split("/k8s/")[0])
    rules = Counter(f.rule for f in evaluate([cluster_asset(data, zonal), *in_cluster]))
    assert rules["gke-tenant-network-policies-enforced"] == 1
    # scanned from a kubectl list with `--cluster train`: found by its bare name, the one cluster of that name
    rules = Counter(f.rule for f in evaluate([cluster_asset(data, zonal), *tenant_objects("train")]))
    assert rules["gke-tenant-network-policies-enforced"] == 1


def test_no_untrusted_tenants_means_no_sandbox_finding(tmp_path: Path) -> None:
    data = safe_v1()
    no_sandbox(data, "v1")
    rules = tmp_path / "r.yaml"
    rules.write_text(
        "rules:\n  - {id: sb, check: gke.sandboxed_node_pool, severity: high,"
        " params: {tenant_labels: [tenant], untrusted_tenants: [nlp]}}\n"
    )
    assert Engine(load_file(rules)).evaluate([cluster_asset(data), *tenant_objects()]).findings == []
    rules.write_text(rules.read_text().replace("[nlp]", "[vis*]"))
    found = Engine(load_file(rules)).evaluate([cluster_asset(data), *tenant_objects()]).findings
    assert [f.details["tenants"] for f in found] == [["vision"]]


def test_forseti_export_cluster(public_data: Path) -> None:
    """The real export of an old cluster: addon disabled, no Workload Identity, default account, public endpoint."""
    assets = [a for a in iter_file_assets(public_data / "cai" / "forseti_mock_cai_resources.dump")
              if a.asset_type == CLUSTER_TYPE]
    assert len(assets) == 1
    rules = Counter(f.rule for f in evaluate(assets))
    assert rules == {
        "gke-network-policy-enforced": 1,
        "gke-workload-identity": 2,  # the cluster, and its default-pool
        "gke-nodes-not-default-service-account": 1,  # serviceAccount "default", without cloud-platform
        "gke-control-plane-not-public": 1,
        "gke-shielded-nodes": 1,
        "gke-legacy-metadata-endpoints-disabled": 1,
    }


def _rbac_rules() -> list[Any]:
    return load_file(shipped_rules_dir() / "rbac.yaml")


@pytest.mark.parametrize("shortcuts", [True, False], ids=["screens", "no-shortcuts"])
@pytest.mark.parametrize("abac_on", [True, False], ids=["abac", "rbac-only"])
def test_rbac_findings_say_when_legacy_abac_is_on(abac_on: bool, shortcuts: bool) -> None:
    data = safe_v1()
    if abac_on:
        abac(data, "v1")
    cluster = "projects/ml-prod/locations/us-central1/clusters/train"
    objs = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "anon"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "outsider", "namespace": "tenant-vision"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev@contractor.example"}]},
    ]
    k8s = [a for a in (object_asset(o, cluster) for o in objs) if a is not None]
    # the RBAC objects stream by before their cluster, as in a CAI export ordered by asset type
    result = Engine(_rbac_rules(), shortcuts=shortcuts).evaluate([*k8s, *tenant_objects(), cluster_asset(data)])
    assert not result.errors
    rules = {f.rule: f for f in result.findings}
    assert {"rbac-no-public-subjects", "rbac-tenant-isolation"} <= set(rules)
    for rule in ("rbac-no-public-subjects", "rbac-tenant-isolation"):
        f = rules[rule]
        assert ("RBAC is not the only authorizer" in f.message) is abac_on
        assert f.details.get("legacy_abac", False) is abac_on
    # quota and network hygiene are not authorization findings: no note
    assert all("legacy_abac" not in f.details for f in result.findings if f.rule == "rbac-tenant-namespace-hygiene")
