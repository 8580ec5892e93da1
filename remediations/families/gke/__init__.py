"""The GKE family: cluster and node pool settings.

Most are planned only (`steps`): turning on network policy enforcement or shielded nodes recreates every node, a node
pool's service account, scopes, metadata settings and sandbox are fixed only by creating a new pool and draining the
old one; legacy ABAC is turned off by setLegacyAbac, which takes no concurrency token (no guarded write can be made
of it) and breaks whatever ABAC alone allowed; authorized networks need the operator's own ranges. Each such finding
becomes a manual step in the plan; apply never runs one.

One is written: `gke.enable_workload_identity` turns Workload Identity on (`clusters`: clusters.update with the
cluster's etag, verified by reading the cluster back, rolled back by turning it off). It touches the control plane
only, and its guard never turns Workload Identity off except in a rollback.

Every fix is built from the finding's typed remedy (`auditor.remedies`: FixClusterSetting, FixNodePoolSetting,
ReplaceNodePool, AddSandboxNodePool); the details are never read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from auditor.model import Asset, Finding
from auditor.plugins import remediation_families
from auditor.remedies import (
    AddSandboxNodePool,
    FixClusterSetting,
    FixNodePoolSetting,
    Remedy,
    ReplaceNodePool,
    first,
)
from auditor.vocabulary import GKE_CLUSTER
from remediations.edits import Edit, EditError, asked_by
from remediations.families.base import ApiObjectState, Kind, WriterContext
from remediations.families.gke.steps import step
from remediations.guards import GuardConfig, Refusal
from remediations.manual import ManualStep, ManualStepError
from remediations.targets import Target, UnsupportedTarget

if TYPE_CHECKING:
    from auditor.evaluate.rulebook import Rule
    from remediations.families.gke.clusters import GkeWriter

NAME = "gke"
WORKLOAD_IDENTITY = "gke.enable_workload_identity"
# CAI names a zonal cluster with zones/Z, a regional one with locations/L; the API takes locations/ for both.
_CLUSTER = re.compile(r"^//container\.googleapis\.com/projects/([^/]+)/(?:zones|locations)/([^/]+)/clusters/([^/]+)$")
# The remedies each planned-only kind answers.
_ANSWERS: dict[str, tuple[type[Remedy], ...]] = {
    "gke.update_cluster": (FixClusterSetting, FixNodePoolSetting),
    "gke.recreate_node_pool": (ReplaceNodePool,),
    "gke.add_sandbox_node_pool": (AddSandboxNodePool,),
}


def _pool(state: dict[str, Any] | None) -> str | None:
    return ((state or {}).get("workloadIdentityConfig") or {}).get("workloadPool") or None


class GkeFamily(ApiObjectState):
    name = NAME
    token_field = "etag"
    kinds = (
        Kind("gke.update_cluster", NAME, "change a cluster setting (planned only: command, API call, impact)", True),
        Kind("gke.recreate_node_pool", NAME, "replace a node pool with a fixed one (planned only)", True),
        Kind("gke.add_sandbox_node_pool", NAME, "add a GKE Sandbox (gVisor) node pool (planned only)", True),
        Kind(WORKLOAD_IDENTITY, NAME, "turn Workload Identity on (clusters.update with the cluster's etag; node "
             "pools keep their metadata mode)"),
    )

    # -- planned only -----------------------------------------------------------------------------------------------
    def manual_steps(self, kind: str, finding: Finding) -> list[ManualStep]:
        """The steps a finding's remedies ask for under the rule's kind; ManualStepError when it offers none."""
        wanted = _ANSWERS.get(kind, ())
        offered = [r for r in finding.remedies if isinstance(r, wanted)]
        if not offered:
            raise ManualStepError(f"the finding offers no fix that {kind} makes")
        return [step(kind, finding, r) for r in offered]

    # -- written: Workload Identity ---------------------------------------------------------------------------------
    def target_for(self, asset_name: str, asset_type: str) -> Target:
        m = _CLUSTER.match(asset_name)
        if asset_type != GKE_CLUSTER or m is None:
            raise UnsupportedTarget(f"GKE remediation writes {GKE_CLUSTER} clusters, not {asset_type} {asset_name}")
        project, location, name = m.groups()
        return Target(NAME, "container", f"projects/{project}/locations/{location}/clusters/{name}", project=project,
                      name=name)

    def edits_for(self, finding: Finding, rule: Rule, asset: Asset) -> list[Edit]:
        kind = rule.remediation or ""
        r = first(finding.remedies, FixClusterSetting)
        if kind != WORKLOAD_IDENTITY or not isinstance(r, FixClusterSetting) or r.setting != "workload_identity":
            raise EditError(f"the finding offers no fix that {kind} makes")
        project = r.cluster.split("/")[1]
        return [Edit(kind, {"workload_pool": f"{project}.svc.id.goog"}, **asked_by(finding, rule))]

    def apply(self, state: dict[str, Any] | None, edit: Edit) -> dict[str, Any] | None:
        if edit.kind != WORKLOAD_IDENTITY:
            raise EditError(f"{edit.kind} is not written by the GKE family")
        if state is None:
            raise EditError("the cluster does not exist")
        state["workloadIdentityConfig"] = {"workloadPool": edit.args["workload_pool"]}
        return state

    def section(self, state: dict[str, Any] | None) -> Any:
        return None if state is None else {"workloadPool": _pool(state)}

    def state_from_section(self, section: Any) -> dict[str, Any] | None:
        if not isinstance(section, dict):
            return None
        return {"workloadIdentityConfig": {"workloadPool": section["workloadPool"]}} if section.get(
            "workloadPool") else {}

    def diff(self, before: Any, after: Any) -> list[dict[str, Any]]:
        b, a = (before or {}).get("workloadPool"), (after or {}).get("workloadPool")
        if a == b:
            return []
        return [{"item": "workloadIdentityConfig", "before": {"workloadPool": b} if b else None,
                 "after": {"workloadPool": a} if a else None}]

    def describe(self, edit: Edit) -> str:
        return f"turn Workload Identity on (workload pool {edit.args.get('workload_pool')})"

    def principals(self, edits: Iterable[Edit], diff: Iterable[dict[str, Any]]) -> set[str]:
        return set()

    def contradictions(self, edits: list[Edit]) -> tuple[list[Edit], list[str]]:
        return edits, []

    def guard(self, target: Target, before: dict[str, Any] | None, after: dict[str, Any] | None, cfg: GuardConfig,
              *, restoring: bool, origin: dict[str, Any] | None) -> list[Refusal]:
        if _pool(before) and not _pool(after) and not restoring:
            return [Refusal("workload-identity",
                            f"a remediation never turns Workload Identity off ({target.resource})")]
        return []

    def writer(self, ctx: WriterContext) -> GkeWriter:
        from remediations.families.gke.clusters import GkeWriter  # the client libraries only when writing

        return GkeWriter(ctx.gcp_endpoint, ctx.retry)


FAMILY = remediation_families.add(NAME, GkeFamily())
