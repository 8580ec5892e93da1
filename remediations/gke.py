"""Stage 6, plan: GKE cluster settings, a planned-only family.

A cluster's posture is fixed by an operator, never by the auditor: turning on network policy enforcement recreates
every node, and a node pool's service account, scopes, metadata settings and sandbox are fixed only by creating a new
pool and draining the old one. So a finding of the gke-cluster pack becomes a manual step in the plan: the exact
`gcloud` command, the Kubernetes Engine API call (method, URL, body) and what it disrupts. Apply never runs one.

Built from the finding's details (`cluster` as `projects/P/locations/L/clusters/C`, `setting`, `node_pool`), which the
checks of `auditor.evaluate.checks.gke_cluster` write; nothing is read again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from auditor.model import Finding

API = "https://container.googleapis.com/v1"
FAMILY = "gke"


class ManualStepError(ValueError):
    """A finding the family cannot turn into a step (details missing)."""


@dataclass(frozen=True)
class ManualStep:
    """One change for a person to carry out: what to run, through which API call, and what it disrupts."""

    kind: str
    resource: str  # the cluster's asset name
    setting: str
    node_pool: str | None
    gcloud: str
    api: list[dict[str, Any]]  # the Kubernetes Engine API calls, in order: {"method", "url", "body"}
    impact: str
    rules: tuple[str, ...]
    findings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "resource": self.resource,
            "setting": self.setting,
            "node_pool": self.node_pool,
            "gcloud": self.gcloud,
            "api": self.api,
            "impact": self.impact,
            "rules": list(self.rules),
            "findings": list(self.findings),
            "applied": False,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManualStep:
        return cls(
            kind=d["kind"], resource=d["resource"], setting=d["setting"], node_pool=d.get("node_pool"),
            gcloud=d["gcloud"], api=[dict(c) for c in d["api"]], impact=d["impact"], rules=tuple(d.get("rules", ())),
            findings=tuple(d.get("findings", ())),
        )


def _where(cluster: str) -> tuple[str, str, str]:
    parts = cluster.split("/")
    if len(parts) != 6 or parts[0] != "projects" or parts[2] != "locations" or parts[4] != "clusters":
        raise ManualStepError(f"cluster {cluster!r} is not projects/P/locations/L/clusters/C")
    return parts[1], parts[3], parts[5]


def _update(cluster: str, update: dict[str, Any]) -> dict[str, Any]:
    return {"method": "PUT", "url": f"{API}/{cluster}", "body": {"update": update}}


_RECREATE = (
    "node pool settings cannot be changed in place: create a new pool with the setting, cordon and drain the old "
    "pool (its pods are evicted and rescheduled, GPU jobs restart from their last checkpoint), then delete it"
)


Call = dict[str, Any]


def _cluster_step(setting: str, cluster: str, pool: str | None) -> tuple[str, list[Call] | Call, str]:
    """(gcloud arguments after `gcloud container ...`, the API call or calls, impact) for one setting."""
    project, location, name = _where(cluster)
    at = f"{name} --location {location} --project {project}"
    if setting == "network_policy":
        return (
            f"clusters update {at} --update-addons=NetworkPolicy=ENABLED && "
            f"gcloud container clusters update {at} --enable-network-policy",
            [_update(cluster, {"desiredAddonsConfig": {"networkPolicyConfig": {"disabled": False}}}),
             {"method": "POST", "url": f"{API}/{cluster}:setNetworkPolicy",
              "body": {"networkPolicy": {"provider": "CALICO", "enabled": True}}}],
            "enabling the addon restarts the control plane; enabling enforcement recreates every node pool (nodes "
            "are drained one by one). Existing NetworkPolicies take effect at once: traffic they do not allow stops. "
            "Dataplane V2 (ADVANCED_DATAPATH) instead needs a new cluster",
        )
    if setting == "legacy_abac":
        return (
            f"clusters update {at} --no-enable-legacy-authorization",
            {"method": "POST", "url": f"{API}/{cluster}:setLegacyAbac", "body": {"enabled": False}},
            "requests that only ABAC allowed are refused from then on: grant what is still needed through RBAC first",
        )
    if setting == "workload_identity":
        return (
            f"clusters update {at} --workload-pool={project}.svc.id.goog",
            _update(cluster, {"desiredWorkloadIdentityConfig": {"workloadPool": f"{project}.svc.id.goog"}}),
            "the control plane is updated; node pools keep the node metadata until each is switched to the GKE "
            "metadata server (which recreates its nodes)",
        )
    if setting == "gke_metadata":
        if not pool:
            raise ManualStepError("the finding names no node pool")
        return (
            f"node-pools update {pool} --cluster {at} --workload-metadata=GKE_METADATA",
            {"method": "PUT", "url": f"{API}/{cluster}/nodePools/{pool}",
             "body": {"workloadMetadataConfig": {"mode": "GKE_METADATA"}}},
            "recreates the pool's nodes (drained one by one); pods that used the node's service account lose it "
            "and need a Kubernetes service account mapped through Workload Identity",
        )
    if setting == "authorized_networks":
        return (
            f"clusters update {at} --enable-master-authorized-networks --master-authorized-networks=CIDR[,CIDR...]",
            _update(cluster, {"desiredControlPlaneEndpointsConfig": {"ipEndpointsConfig": {
                "authorizedNetworksConfig": {"enabled": True, "cidrBlocks": [{"cidrBlock": "CIDR"}]}}}}),
            "callers outside the listed networks (CI runners, laptops off the VPN) lose access to the API server; "
            "fill in the networks that need it",
        )
    if setting == "shielded_nodes":
        return (
            f"clusters update {at} --enable-shielded-nodes",
            _update(cluster, {"desiredShieldedNodes": {"enabled": True}}),
            "every node pool is recreated (nodes drained one by one)",
        )
    if setting == "secure_boot" and pool:
        return (
            f"node-pools update {pool} --cluster {at} --shielded-secure-boot",
            {"method": "PUT", "url": f"{API}/{cluster}/nodePools/{pool}",
             "body": {"shieldedInstanceConfig": {"enableSecureBoot": True}}},
            "recreates the pool's nodes; nodes with unsigned kernel modules (some GPU drivers) no longer boot",
        )
    if setting in ("node_service_account", "legacy_endpoints"):
        if not pool:
            raise ManualStepError("the finding names no node pool")
        flags = (
            "--service-account=NODE_SA@PROJECT.iam.gserviceaccount.com --scopes=cloud-platform"
            if setting == "node_service_account"
            else "--metadata=disable-legacy-endpoints=true"
        )
        config: dict[str, Any] = (
            {"serviceAccount": "NODE_SA@PROJECT.iam.gserviceaccount.com",
             "oauthScopes": ["https://www.googleapis.com/auth/cloud-platform"]}
            if setting == "node_service_account"
            else {"metadata": {"disable-legacy-endpoints": "true"}}
        )
        return (
            f"node-pools create {pool}-v2 --cluster {at} {flags} (with the old pool's machine type and "
            f"accelerators), then gcloud container node-pools delete {pool} --cluster {at}",
            {"method": "POST", "url": f"{API}/{cluster}/nodePools",
             "body": {"nodePool": {"name": f"{pool}-v2", "config": config}}},
            _RECREATE
            + (". Give the dedicated account roles/container.defaultNodeServiceAccount only (its IAM roles, not the "
               "scope, then limit what a node's token can do); jobs reach buckets through Workload Identity"
               if setting == "node_service_account" else ""),
        )
    if setting == "sandbox":
        return (
            f"node-pools create gvisor --cluster {at} --sandbox type=gvisor --image-type=cos_containerd",
            {"method": "POST", "url": f"{API}/{cluster}/nodePools",
             "body": {"nodePool": {"name": "gvisor", "config": {"imageType": "COS_CONTAINERD",
                                                                "sandboxConfig": {"type": "GVISOR"}}}}},
            "adds nodes (cost); nothing moves until the untrusted tenants' pods ask for runtimeClassName: gvisor "
            "(GPU workloads need a GPU-capable machine type and driver support in the sandbox)",
        )
    raise ManualStepError(f"no planned step for setting {setting!r}")


def step_for(kind: str, f: Finding) -> ManualStep:
    """The manual step a GKE finding asks for."""
    d = f.details or {}
    cluster, setting = d.get("cluster"), d.get("setting")
    if not isinstance(cluster, str) or not isinstance(setting, str):
        raise ManualStepError("the finding carries no cluster and setting")
    pool = d.get("node_pool") if isinstance(d.get("node_pool"), str) else None
    args, api, impact = _cluster_step(setting, cluster, pool)
    return ManualStep(
        kind=kind, resource=f.asset, setting=setting, node_pool=pool, gcloud=f"gcloud container {args}",
        api=api if isinstance(api, list) else [api],
        impact=impact, rules=(f.rule,), findings=(f.id,),
    )


def merge(steps: list[ManualStep]) -> list[ManualStep]:
    """One step per (cluster, setting, node pool): findings of several rules answered by one command merge."""
    merged: dict[tuple[str, str, str | None], ManualStep] = {}
    for s in steps:
        key = (s.resource, s.setting, s.node_pool)
        m = merged.get(key)
        merged[key] = s if m is None else ManualStep(
            m.kind, m.resource, m.setting, m.node_pool, m.gcloud, m.api, m.impact,
            tuple(sorted(set(m.rules) | set(s.rules))), tuple(sorted(set(m.findings) | set(s.findings))),
        )
    return [merged[k] for k in sorted(merged, key=lambda k: (k[0], k[1], k[2] or ""))]
