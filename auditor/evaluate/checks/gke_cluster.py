"""Stage: evaluate. GKE cluster posture: the settings of the cluster that is meant to enforce the tenancy.

The tenancy checks (rbac.py) judge namespaces, bindings, quotas and NetworkPolicies; these judge the
`container.googleapis.com/Cluster` that enforces them (read through `auditor.evaluate.gke_posture`, which accepts
the current and older field names), and connect the two: NetworkPolicies in a cluster that enforces none, and
untrusted tenants on a cluster without a sandboxed node pool.

Every finding carries `cluster` (`projects/P/locations/L/clusters/C`), `setting` (what is wrong, one word) and,
for node pool findings, `node_pool`, for people and reports; the fix is offered as a typed remedy
(`auditor.remedies`: FixClusterSetting, FixNodePoolSetting, ReplaceNodePool, AddSandboxNodePool), which the
remediation planner turns into the command and API call that fix it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from pydantic import Field

from auditor.collect.k8s_objects import cluster_of, namespace_of
from auditor.evaluate.checks.rbac import (
    TENANT_CONTEXT,
    TENANT_CONTEXT_NAMES,
    TenantParams,
    object_name,
    own_tenant,
    tenancy_of,
)
from auditor.evaluate.gke_posture import ClusterPosture, NodePool, cluster_key, cluster_of_asset, posture
from auditor.evaluate.globs import any_match
from auditor.evaluate.registry import Context, NoParams, Params, Violation, check
from auditor.model import Asset
from auditor.remedies import (
    AddSandboxNodePool,
    ClusterSetting,
    FixClusterSetting,
    FixNodePoolSetting,
    PoolSetting,
    ReplacedPoolSetting,
    ReplaceNodePool,
)
from auditor.vocabulary import GKE_CLUSTER, NAMESPACE, NETWORK_POLICY


def _details(p: ClusterPosture, setting: str, pool: NodePool | None = None, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"cluster": p.key, "setting": setting, "node_pool": pool.name if pool else None}
    d.update(extra)
    return d


def _cluster_fix(p: ClusterPosture, setting: ClusterSetting) -> tuple[FixClusterSetting]:
    return (FixClusterSetting(p.key, setting),)


def _pool_fix(p: ClusterPosture, pool: NodePool, setting: PoolSetting) -> tuple[FixNodePoolSetting]:
    return (FixNodePoolSetting(p.key, pool.name, setting),)


def _pool_replacement(p: ClusterPosture, pool: NodePool, setting: ReplacedPoolSetting) -> tuple[ReplaceNodePool]:
    return (ReplaceNodePool(p.key, pool.name, setting),)


@check("gke.network_policy_enforced", asset_types=[GKE_CLUSTER])
def network_policy_enforced(asset: Asset, params: NoParams, ctx: Context) -> Iterator[Violation]:
    """The cluster enforces NetworkPolicies: Dataplane V2, or the network policy addon enabled and turned on.

    Enforcement is `networkConfig.datapathProvider: ADVANCED_DATAPATH`, or both `addonsConfig.networkPolicyConfig`
    not disabled and `networkPolicy.enabled: true` (Calico). Otherwise the API server accepts NetworkPolicies and
    nothing enforces them.

    ```yaml
    - id: gke-network-policy-enforced
      check: gke.network_policy_enforced
      severity: high
    ```
    """
    p = posture(asset)
    if not p.enforces_network_policy:
        yield Violation(
            f"cluster {p.name} does not enforce NetworkPolicies: {p.network_policy_state}",
            "network_policy",
            _details(p, "network_policy", datapath=p.datapath or None, addon=p.network_policy_addon,
                     enabled=p.network_policy_enabled),
            _cluster_fix(p, "network_policy"),
        )


@check("gke.legacy_abac_disabled", asset_types=[GKE_CLUSTER])
def legacy_abac_disabled(asset: Asset, params: NoParams, ctx: Context) -> Iterator[Violation]:
    """Legacy ABAC (`legacyAbac.enabled`) is off: with it on, the API server authorizes through ABAC as well, and
    every RBAC rule of the cluster is moot.

    ```yaml
    - id: gke-legacy-abac-disabled
      check: gke.legacy_abac_disabled
      severity: critical
    ```
    """
    p = posture(asset)
    if p.legacy_abac:
        yield Violation(
            f"cluster {p.name} has legacy ABAC enabled: RBAC is not the only authorizer", "legacy_abac",
            _details(p, "legacy_abac"), _cluster_fix(p, "legacy_abac"),
        )


@check("gke.workload_identity", asset_types=[GKE_CLUSTER])
def workload_identity(asset: Asset, params: NoParams, ctx: Context) -> Iterator[Violation]:
    """Workload Identity is on (`workloadIdentityConfig.workloadPool`, older `identityNamespace`) and every node
    pool runs the GKE metadata server (`workloadMetadataConfig.mode: GKE_METADATA`, older `nodeMetadata:
    GKE_METADATA_SERVER`).

    Without both, any pod of any tenant reads the node's service account token from the metadata server. One
    finding for the cluster, and one per node pool not on the GKE metadata server.

    ```yaml
    - id: gke-workload-identity
      check: gke.workload_identity
      severity: high
    ```
    """
    p = posture(asset)
    if not p.workload_identity:
        yield Violation(
            f"cluster {p.name} has Workload Identity off: every pod can use its node's service account",
            "workload_identity",
            _details(p, "workload_identity"), _cluster_fix(p, "workload_identity"),
        )
    for pool in p.node_pools:
        if not pool.gke_metadata:
            yield Violation(
                f"node pool {pool.name} of cluster {p.name} is not on the GKE metadata server "
                f"(metadata mode {pool.metadata_mode or 'unset'}): its pods read the node's credentials",
                f"metadata|{pool.name}",
                _details(p, "gke_metadata", pool, metadata_mode=pool.metadata_mode or None,
                         workload_pool=p.workload_pool or None),
                _pool_fix(p, pool, "gke_metadata"),
            )


class NodeServiceAccountParams(Params):
    only_with_cloud_platform: bool = Field(
        default=False,
        description="Report a node pool on the default Compute Engine account only when it also holds the "
        "cloud-platform scope (the two together let a node's token edit the project).",
    )


@check("gke.node_service_account", params=NodeServiceAccountParams, asset_types=[GKE_CLUSTER])
def node_service_account(asset: Asset, params: NodeServiceAccountParams, ctx: Context) -> Iterator[Violation]:
    """No node pool runs as the project's default Compute Engine service account (`serviceAccount` unset,
    `default`, or `NUMBER-compute@developer.gserviceaccount.com`); with `only_with_cloud_platform`, only those also
    holding the `cloud-platform` OAuth scope are reported.

    The default account holds roles/editor on the project unless someone removed it; with the cloud-platform
    scope, a token read from the node (any pod, without Workload Identity) can use all of it. Details:
    `service_account`, `cloud_platform`.

    ```yaml
    - id: gke-nodes-default-sa-cloud-platform
      check: gke.node_service_account
      severity: critical
      params: {only_with_cloud_platform: true}
    ```
    """
    p = posture(asset)
    for pool in p.node_pools:
        if not pool.default_service_account or (params.only_with_cloud_platform and not pool.cloud_platform):
            continue
        with_scope = " with the cloud-platform scope" if pool.cloud_platform else ""
        yield Violation(
            f"node pool {pool.name} of cluster {p.name} runs as the default Compute Engine service account"
            f"{with_scope}",
            f"service_account|{pool.name}",
            _details(p, "node_service_account", pool, service_account=pool.service_account or "default",
                     cloud_platform=pool.cloud_platform),
            _pool_replacement(p, pool, "node_service_account"),
        )


class ControlPlaneParams(Params):
    forbidden_networks: list[str] = Field(
        default_factory=lambda: ["0.0.0.0/0", "::/0"],
        description="Authorized networks that count as none (they admit the whole internet).",
    )


@check("gke.control_plane_access", params=ControlPlaneParams, asset_types=[GKE_CLUSTER])
def control_plane_access(asset: Asset, params: ControlPlaneParams, ctx: Context) -> Iterator[Violation]:
    """The control plane is private (no public endpoint) or limited to authorized networks.

    Read from `privateClusterConfig.enablePrivateEndpoint` and `masterAuthorizedNetworksConfig`, or their
    successors under `controlPlaneEndpointsConfig.ipEndpointsConfig`. Authorized networks listing one of
    `forbidden_networks` count as none.

    ```yaml
    - id: gke-control-plane-not-public
      check: gke.control_plane_access
      severity: high
    ```
    """
    p = posture(asset)
    if p.private_endpoint:
        return
    nets = p.authorized_networks
    if nets is None:
        yield Violation(
            f"cluster {p.name} has a public control plane endpoint and no authorized networks",
            "control_plane", _details(p, "authorized_networks", authorized_networks=None),
            _cluster_fix(p, "authorized_networks"),
        )
        return
    open_to = sorted(n for n in nets if n in params.forbidden_networks)
    if open_to:
        yield Violation(
            f"cluster {p.name} has a public control plane endpoint whose authorized networks admit "
            f"{', '.join(open_to)}",
            "control_plane", _details(p, "authorized_networks", authorized_networks=list(nets)),
            _cluster_fix(p, "authorized_networks"),
        )


class ShieldedNodesParams(Params):
    require_secure_boot: bool = Field(default=False, description="Also require secure boot on every node pool.")


@check("gke.shielded_nodes", params=ShieldedNodesParams, asset_types=[GKE_CLUSTER])
def shielded_nodes(asset: Asset, params: ShieldedNodesParams, ctx: Context) -> Iterator[Violation]:
    """Shielded GKE nodes are on (`shieldedNodes.enabled`): a node proves its identity to the control plane, so a
    stolen node bootstrap credential cannot impersonate a node. With `require_secure_boot`, every node pool
    also boots verified (`shieldedInstanceConfig.enableSecureBoot`).

    ```yaml
    - id: gke-shielded-nodes
      check: gke.shielded_nodes
      severity: medium
    ```
    """
    p = posture(asset)
    if not p.shielded_nodes:
        yield Violation(f"cluster {p.name} has shielded nodes off", "shielded_nodes", _details(p, "shielded_nodes"),
                        _cluster_fix(p, "shielded_nodes"))
    if params.require_secure_boot:
        for pool in p.node_pools:
            if not pool.secure_boot:
                yield Violation(
                    f"node pool {pool.name} of cluster {p.name} has secure boot off",
                    f"secure_boot|{pool.name}",
                    _details(p, "secure_boot", pool), _pool_fix(p, pool, "secure_boot"),
                )


@check("gke.legacy_metadata_endpoints_disabled", asset_types=[GKE_CLUSTER])
def legacy_metadata_endpoints_disabled(asset: Asset, params: NoParams, ctx: Context) -> Iterator[Violation]:
    """Every node pool has the legacy metadata endpoints off (node metadata `disable-legacy-endpoints: "true"`):
    the v0.1 and v1beta1 endpoints answer without the `Metadata-Flavor` header, so a server-side request forgery
    in any pod reads the node's credentials and its kube-env.

    ```yaml
    - id: gke-legacy-metadata-endpoints-disabled
      check: gke.legacy_metadata_endpoints_disabled
      severity: medium
    ```
    """
    p = posture(asset)
    for pool in p.node_pools:
        if not pool.legacy_endpoints_disabled:
            yield Violation(
                f"node pool {pool.name} of cluster {p.name} serves the legacy metadata endpoints",
                f"legacy_endpoints|{pool.name}",
                _details(p, "legacy_endpoints", pool), _pool_replacement(p, pool, "legacy_endpoints"),
            )


# -- across layers: the cluster and its tenants -----------------------------------------------------------------------
def _tenants_by_cluster(ctx: Context, params: TenantParams) -> dict[str, dict[str, set[str]]]:
    """cluster_key -> tenant -> its namespaces, by the tenancy of the snapshot's Namespaces."""

    def build() -> dict[str, dict[str, set[str]]]:
        out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for (cluster, tenant), namespaces in tenancy_of(ctx, params).namespaces.items():
            out[cluster_key(cluster)][tenant] |= namespaces
        return {k: dict(v) for k, v in out.items()}

    result: dict[str, dict[str, set[str]]] = ctx.memo(f"gke.tenants.{params.model_dump_json()}", build)
    return result


class SandboxParams(TenantParams):
    untrusted_tenants: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Tenant globs that run untrusted code (notebooks, user-submitted jobs); empty: none does.",
    )


def _screen_sandbox(asset: Asset, params: SandboxParams, ctx: Context) -> bool:
    """A cluster with a sandboxed pool never needs one; any other may, once its tenants are known."""
    return bool(params.untrusted_tenants) and not any(pool.sandbox == "GVISOR" for pool in posture(asset).node_pools)


@check(
    "gke.sandboxed_node_pool",
    params=SandboxParams,
    asset_types=[GKE_CLUSTER],
    context=TENANT_CONTEXT,
    context_names=TENANT_CONTEXT_NAMES,
    screen=_screen_sandbox,
)
def sandboxed_node_pool(asset: Asset, params: SandboxParams, ctx: Context) -> Iterator[Violation]:
    """A cluster hosting tenants that run untrusted code has a GKE Sandbox node pool (`sandboxConfig.type:
    GVISOR`, older `sandboxType: gvisor`) for their pods.

    Tenants are recognised as the tenancy checks do (the tenancy params); `untrusted_tenants` says which of them run
    untrusted code. A cluster none of whose Namespaces in the snapshot belongs to such a tenant is not reported.
    Details: `tenants`, the untrusted tenants found in the cluster.

    ```yaml
    - id: gke-sandbox-for-untrusted-tenants
      check: gke.sandboxed_node_pool
      severity: high
      params: {tenant_labels: [tenant], untrusted_tenants: ["*"]}
    ```
    """
    p = posture(asset)
    if not params.untrusted_tenants or any(pool.sandbox == "GVISOR" for pool in p.node_pools):
        return
    by_cluster = _tenants_by_cluster(ctx, params)
    found = {**by_cluster.get(f"clusters/{p.key.rsplit('/', 1)[-1]}", {}), **by_cluster.get(p.key, {})}
    untrusted = sorted(t for t in found if any_match(params.untrusted_tenants, t))
    if untrusted:
        yield Violation(
            f"cluster {p.name} hosts tenants running untrusted code ({', '.join(untrusted[:5])}"
            f"{' and more' if len(untrusted) > 5 else ''}) and has no GKE Sandbox (gVisor) node pool",
            "sandbox",
            _details(p, "sandbox", tenants=untrusted), (AddSandboxNodePool(p.key),),
        )


def _screen_tenant_namespace(asset: Asset, params: TenantParams, ctx: Context) -> bool:
    return own_tenant(ctx, params, asset) is not None


@check(
    "gke.tenant_network_policies_enforced",
    params=TenantParams,
    asset_types=[NAMESPACE],
    context=[*TENANT_CONTEXT, GKE_CLUSTER],
    context_names=[*TENANT_CONTEXT_NAMES, NETWORK_POLICY],
    screen=_screen_tenant_namespace,
)
def tenant_network_policies_enforced(asset: Asset, params: TenantParams, ctx: Context) -> Iterator[Violation]:
    """A tenant namespace whose NetworkPolicies its cluster does not enforce: the tenant looks fenced and is not.

    Reported on the Namespace, naming the cluster (details `cluster`, `network_policies`, `enforcement`), when the
    snapshot holds the namespace's NetworkPolicies and its cluster's `container.googleapis.com/Cluster` asset, and
    the cluster has neither Dataplane V2 nor the network policy addon turned on. A namespace whose cluster is not
    in the snapshot is not judged here (the cluster's own posture is judged by gke.network_policy_enforced).

    ```yaml
    - id: gke-tenant-network-policies-enforced
      check: gke.tenant_network_policies_enforced
      severity: high
      params: {tenant_labels: [tenant]}
    ```
    """
    ns = object_name(asset.resource, asset)
    tenant = tenancy_of(ctx, params).tenant_of(cluster_of(asset.name), ns)
    if tenant is None:
        return
    p = cluster_of_asset(ctx, asset.name)
    if p is None or p.enforces_network_policy:
        return
    policies = _policies_by_namespace(ctx).get((cluster_key(asset.name), ns), [])
    if not policies:
        return
    yield Violation(
        f"tenant {tenant}'s namespace {ns} has {len(policies)} NetworkPolicy(ies) ({', '.join(policies[:3])}), but "
        f"cluster {p.key} does not enforce them ({p.network_policy_state}): the API server accepts them and "
        "nothing enforces them",
        "network_policy_unenforced",
        {"namespace": ns, "tenant": tenant, "cluster": p.key, "setting": "network_policy",
         "network_policies": policies, "enforcement": p.network_policy_state,
         "role": None, "binding": None, "subject": None},
    )


def _policies_by_namespace(ctx: Context) -> dict[tuple[str, str], list[str]]:
    def build() -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = defaultdict(list)
        for a in ctx.assets(NETWORK_POLICY):
            ns = namespace_of(a.name)
            if ns:
                out[(cluster_key(a.name), ns)].append(a.name.rsplit("/", 1)[-1])
        return {k: sorted(v) for k, v in out.items()}

    result: dict[tuple[str, str], list[str]] = ctx.memo("gke.policies_by_namespace", build)
    return result
