"""Stage: evaluate. The security posture of a GKE cluster, read from its `container.googleapis.com/Cluster` asset.

CAI carries the GKE API's Cluster object in `resource.data`. Its field names moved over the years; both spellings are
read into one typed model, so the checks never guess keys:
- Workload Identity: `workloadIdentityConfig.workloadPool` (v1), `identityNamespace` (v1beta1, older exports);
- node metadata: `workloadMetadataConfig.mode: GKE_METADATA` (v1), `nodeMetadata: GKE_METADATA_SERVER` (older);
- sandbox: `sandboxConfig.type: GVISOR` (v1), `sandboxType: gvisor` (v1beta1);
- the control plane: `privateClusterConfig.enablePrivateEndpoint` and `masterAuthorizedNetworksConfig`, or their
  successors under `controlPlaneEndpointsConfig.ipEndpointsConfig` (`enablePublicEndpoint`,
  `authorizedNetworksConfig`);
- enums as names (`ADVANCED_DATAPATH`) or, as CAI's REST form sends them, numbers.
A cluster without `nodePools` (exports of very old clusters) is read through its top-level `nodeConfig`.

Clusters are named `//container.googleapis.com/[v1/]projects/P/{locations,zones}/L/clusters/C`; in-cluster assets
`.../clusters/C/k8s/...`. `cluster_key` gives both one spelling, so a Namespace finds its cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from auditor.evaluate.registry import Context
from auditor.model import Asset
from auditor.vocabulary import GKE_CLUSTER

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_DEFAULT_SA = re.compile(r"^\d+-compute@developer\.gserviceaccount\.com$")
_NAME = re.compile(r"^(?://container\.googleapis\.com/)?(?:v1[a-z0-9]*/)?(.*?)(?:/k8s(?:/.*)?)?$")

# Enum numbers as the REST form of CAI sends them (google.container.v1 protos)
_DATAPATH = {0: "DATAPATH_PROVIDER_UNSPECIFIED", 1: "LEGACY_DATAPATH", 2: "ADVANCED_DATAPATH"}
_METADATA_MODE = {0: "MODE_UNSPECIFIED", 1: "GCE_METADATA", 2: "GKE_METADATA"}
_NODE_METADATA = {0: "UNSPECIFIED", 1: "SECURE", 2: "EXPOSE", 3: "GKE_METADATA_SERVER"}
_SANDBOX = {0: "UNSPECIFIED", 1: "GVISOR"}


@lru_cache(maxsize=256)  # the rules of one in-cluster asset ask for its cluster one after the other
def cluster_key(name: str) -> str:
    """`projects/P/locations/L/clusters/C` for a cluster's asset name or any in-cluster asset's name (`zones/` read
    as `locations/`, the API version dropped); `clusters/C` for a cluster known by its bare name."""
    m = _NAME.match(name)
    path = (m.group(1) if m else name).strip("/")
    return path.replace("/zones/", "/locations/", 1)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _enum(v: Any, numbers: dict[int, str]) -> str:
    if isinstance(v, bool):
        return ""
    if isinstance(v, int):
        return numbers.get(v, str(v))
    return str(v).upper() if v is not None else ""


def _true(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() == "true")


@dataclass(frozen=True)
class NodePool:
    name: str
    service_account: str  # as given; "default" or "" mean the project's default Compute Engine account
    scopes: tuple[str, ...]
    metadata_mode: str  # GKE_METADATA, GCE_METADATA, ... (older nodeMetadata values mapped onto these)
    legacy_endpoints_disabled: bool
    sandbox: str  # GVISOR or ""
    secure_boot: bool
    integrity_monitoring: bool

    @property
    def default_service_account(self) -> bool:
        sa = self.service_account
        return sa in ("", "default") or bool(_DEFAULT_SA.match(sa))

    @property
    def cloud_platform(self) -> bool:
        return CLOUD_PLATFORM_SCOPE in self.scopes

    @property
    def gke_metadata(self) -> bool:
        return self.metadata_mode == "GKE_METADATA"


def _metadata_mode(cfg: dict[str, Any]) -> str:
    wmc = _dict(cfg.get("workloadMetadataConfig"))
    mode = _enum(wmc.get("mode"), _METADATA_MODE)
    if mode and mode != "MODE_UNSPECIFIED":
        return mode
    older = _enum(wmc.get("nodeMetadata"), _NODE_METADATA)
    if older == "GKE_METADATA_SERVER":
        return "GKE_METADATA"
    if older in ("SECURE", "EXPOSE"):
        return "GCE_METADATA"  # the node's own metadata server (concealed or not): the node's credentials
    return mode or older


def _sandbox(cfg: dict[str, Any]) -> str:
    sc = _dict(cfg.get("sandboxConfig"))
    kind = _enum(sc.get("type"), _SANDBOX) or _enum(sc.get("sandboxType"), _SANDBOX)
    return "GVISOR" if kind == "GVISOR" else ""


def _node_pool(name: str, cfg: dict[str, Any]) -> NodePool:
    metadata = _dict(cfg.get("metadata"))
    shielded = _dict(cfg.get("shieldedInstanceConfig"))
    return NodePool(
        name=name,
        service_account=str(cfg.get("serviceAccount") or ""),
        scopes=tuple(str(s) for s in cfg.get("oauthScopes") or () if isinstance(s, str)),
        metadata_mode=_metadata_mode(cfg),
        legacy_endpoints_disabled=_true(metadata.get("disable-legacy-endpoints")),
        sandbox=_sandbox(cfg),
        secure_boot=_true(shielded.get("enableSecureBoot")),
        integrity_monitoring=_true(shielded.get("enableIntegrityMonitoring")),
    )


@dataclass(frozen=True)
class ClusterPosture:
    """What the checks read of one cluster, whatever the spelling of its object."""

    key: str  # see cluster_key
    name: str
    network_policy_addon: bool  # addonsConfig.networkPolicyConfig not disabled
    network_policy_enabled: bool  # networkPolicy.enabled (Calico)
    datapath: str  # networkConfig.datapathProvider
    legacy_abac: bool
    workload_pool: str  # workloadPool or identityNamespace; "" when Workload Identity is off
    private_endpoint: bool  # no public endpoint for the control plane
    authorized_networks: tuple[str, ...] | None  # None: authorized networks off; else the CIDR blocks allowed
    shielded_nodes: bool
    autopilot: bool
    node_pools: tuple[NodePool, ...]

    @property
    def enforces_network_policy(self) -> bool:
        """NetworkPolicies are enforced: Dataplane V2, or the Calico addon enabled and turned on."""
        if self.datapath == "ADVANCED_DATAPATH":
            return True
        return self.network_policy_addon and self.network_policy_enabled

    @property
    def network_policy_state(self) -> str:
        if self.enforces_network_policy:
            return "Dataplane V2" if self.datapath == "ADVANCED_DATAPATH" else "Calico network policy"
        if not self.network_policy_addon:
            return "the network policy addon is disabled and Dataplane V2 is off"
        return "networkPolicy.enabled is false and Dataplane V2 is off"

    @property
    def workload_identity(self) -> bool:
        return bool(self.workload_pool)

    @property
    def location(self) -> str:
        parts = self.key.split("/")
        return parts[3] if len(parts) >= 6 and parts[2] == "locations" else ""

    @property
    def project(self) -> str:
        parts = self.key.split("/")
        return parts[1] if parts[0] == "projects" and len(parts) > 1 else ""


def _private_endpoint(data: dict[str, Any]) -> bool:
    ip = _dict(_dict(data.get("controlPlaneEndpointsConfig")).get("ipEndpointsConfig"))
    if ip.get("enabled") is False:  # no IP endpoint at all: the control plane is reached by its DNS endpoint
        return True
    if "enablePublicEndpoint" in ip:
        return not _true(ip.get("enablePublicEndpoint"))
    return _true(_dict(data.get("privateClusterConfig")).get("enablePrivateEndpoint"))


def _authorized_networks(data: dict[str, Any]) -> tuple[str, ...] | None:
    ip = _dict(_dict(data.get("controlPlaneEndpointsConfig")).get("ipEndpointsConfig"))
    cfg = _dict(ip.get("authorizedNetworksConfig")) if "authorizedNetworksConfig" in ip else _dict(
        data.get("masterAuthorizedNetworksConfig")
    )
    if not _true(cfg.get("enabled")):
        return None
    return tuple(str(_dict(b).get("cidrBlock", "")) for b in cfg.get("cidrBlocks") or ())


def posture(asset: Asset) -> ClusterPosture:
    """The posture of a Cluster asset (derived once per asset)."""
    return asset.derived("gke.posture", _read)


def _read(asset: Asset) -> ClusterPosture:
    data = asset.resource
    addons = _dict(data.get("addonsConfig"))
    wi = _dict(data.get("workloadIdentityConfig"))
    pools = [
        _node_pool(str(_dict(p).get("name") or f"#{i}"), _dict(_dict(p).get("config")))
        for i, p in enumerate(data.get("nodePools") or ())
    ]
    if not pools and isinstance(data.get("nodeConfig"), dict):
        pools = [_node_pool("(nodeConfig)", data["nodeConfig"])]
    return ClusterPosture(
        key=cluster_key(asset.name),
        name=str(data.get("name") or asset.name.rsplit("/", 1)[-1]),
        network_policy_addon=not _true(_dict(addons.get("networkPolicyConfig")).get("disabled"))
        and "networkPolicyConfig" in addons,
        network_policy_enabled=_true(_dict(data.get("networkPolicy")).get("enabled")),
        datapath=_enum(_dict(data.get("networkConfig")).get("datapathProvider"), _DATAPATH),
        legacy_abac=_true(_dict(data.get("legacyAbac")).get("enabled")),
        workload_pool=str(wi.get("workloadPool") or wi.get("identityNamespace") or ""),
        private_endpoint=_private_endpoint(data),
        authorized_networks=_authorized_networks(data),
        shielded_nodes=_true(_dict(data.get("shieldedNodes")).get("enabled")),
        autopilot=_true(_dict(data.get("autopilot")).get("enabled")),
        node_pools=tuple(pools),
    )


def clusters(ctx: Context) -> dict[str, ClusterPosture]:
    """The postures of the snapshot's clusters by `cluster_key` (for checks that keep Cluster assets as context).

    A cluster known by its bare name (`clusters/C`, a kubectl list scanned with `--cluster C`) finds the one
    cluster of that name, when the snapshot holds exactly one."""

    def build() -> dict[str, ClusterPosture]:
        out: dict[str, ClusterPosture] = {}
        by_name: dict[str, list[ClusterPosture]] = {}
        for a in ctx.assets(GKE_CLUSTER):
            try:
                p = posture(a)
            except Exception:  # a malformed cluster: the posture checks on it report what is wrong
                continue
            out[p.key] = p
            by_name.setdefault(f"clusters/{p.key.rsplit('/', 1)[-1]}", []).append(p)
        for short, found in by_name.items():
            if len(found) == 1:
                out.setdefault(short, found[0])
        return out

    result: dict[str, ClusterPosture] = ctx.memo("gke.clusters", build)
    return result


def cluster_of_asset(ctx: Context, asset_name: str) -> ClusterPosture | None:
    """The posture of the cluster an in-cluster asset lives in, when the snapshot has its Cluster asset."""
    return clusters(ctx).get(cluster_key(asset_name))
