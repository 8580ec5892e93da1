"""Cluster settings are planned only: the plan shows the gcloud command, the Kubernetes Engine API call and the impact
of each fix of the gke-cluster pack, and apply never runs one."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.collect import SourceOptions
from auditor.evaluate.gke_posture import cluster_key
from auditor.evaluate.rulebook import load_rules, shipped_rules_dir
from auditor.scan import run_scan
from remediations.apply import apply_plan
from remediations.guards import GuardConfig
from remediations.journal import Journal
from remediations.plan import Plan, load_plan
from remediations.planning import plan_from_scan
from remediations.render import render_html, render_markdown
from tests.conftest import EXAMPLES

INFERENCE = "projects/ml-platform-prod/locations/us-central1/clusters/inference"
TRAINING = "projects/ml-platform-prod/locations/us-central1/clusters/training"
NOTEBOOKS = "projects/ml-platform-prod/locations/us-central1-a/clusters/research-notebooks"
API = "https://container.googleapis.com/v1"


@pytest.fixture(scope="module")
def plan() -> Plan:
    # the cluster posture pack, and the cluster rules that read tenancy (they live in rbac.yaml)
    rules = load_rules([shipped_rules_dir() / "gke-cluster.yaml", shipped_rules_dir() / "rbac.yaml"])
    rules = [r for r in rules if r.id.startswith("gke-")]
    sources = [str(EXAMPLES / "org"), str(EXAMPLES / "k8s")]
    result = run_scan(sources, rules, SourceOptions(cluster=INFERENCE))
    return plan_from_scan(result, sources, SourceOptions(cluster=INFERENCE))


def _step(plan: Plan, cluster: str, setting: str, pool: str | None = None) -> dict:
    [m] = [m.to_dict() for m in plan.manual
           if cluster_key(m.resource) == cluster and m.setting == setting and m.node_pool == pool]
    return m


def test_cluster_findings_become_manual_steps_not_changes(plan: Plan) -> None:
    assert plan.changes == [] and plan.skipped == []
    assert {(m.resource.rsplit("/", 1)[-1], m.setting, m.node_pool) for m in plan.manual} == {
        ("training", "network_policy", None),
        ("training", "authorized_networks", None),
        ("training", "gke_metadata", "gpu-a100"),
        ("training", "node_service_account", "gpu-a100"),  # two rules, one step
        ("training", "sandbox", None),
        ("research-notebooks", "legacy_abac", None),
        ("research-notebooks", "shielded_nodes", None),
        ("research-notebooks", "node_service_account", "default-pool"),
        ("research-notebooks", "legacy_endpoints", "default-pool"),
    }
    assert plan.summary()["manual_steps"] == 9
    sa = _step(plan, TRAINING, "node_service_account", "gpu-a100")
    assert sa["rules"] == ["gke-nodes-default-sa-cloud-platform", "gke-nodes-not-default-service-account"]
    assert sa["applied"] is False


def test_each_step_names_the_exact_call(plan: Plan) -> None:
    abac = _step(plan, NOTEBOOKS, "legacy_abac")
    # the zonal cluster's location is its zone
    assert abac["gcloud"] == ("gcloud container clusters update research-notebooks --location us-central1-a "
                              "--project ml-platform-prod --no-enable-legacy-authorization")
    assert abac["api"] == [{"method": "POST", "url": f"{API}/{NOTEBOOKS}:setLegacyAbac", "body": {"enabled": False}}]
    assert "RBAC" in abac["impact"]

    metadata = _step(plan, TRAINING, "gke_metadata", "gpu-a100")
    assert metadata["api"] == [{"method": "PUT", "url": f"{API}/{TRAINING}/nodePools/gpu-a100",
                                "body": {"workloadMetadataConfig": {"mode": "GKE_METADATA"}}}]
    assert "--workload-metadata=GKE_METADATA" in metadata["gcloud"]

    netpol = _step(plan, TRAINING, "network_policy")
    assert [c["url"] for c in netpol["api"]] == [f"{API}/{TRAINING}", f"{API}/{TRAINING}:setNetworkPolicy"]
    assert "recreates every node pool" in netpol["impact"]

    pool = _step(plan, NOTEBOOKS, "legacy_endpoints", "default-pool")
    assert pool["gcloud"].startswith("gcloud container node-pools create default-pool-v2 ")
    assert "drain" in pool["impact"]


def test_plan_round_trips_and_renders_the_steps(plan: Plan, tmp_path: Path) -> None:
    plan.write(tmp_path / "plan.json")
    again = load_plan(tmp_path / "plan.json")
    assert again.id == plan.id and [m.to_dict() for m in again.manual] == [m.to_dict() for m in plan.manual]
    md = render_markdown(plan)
    assert "## Planned only" in md and "--no-enable-legacy-authorization" in md and ":setLegacyAbac" in md
    assert "- needs: container.clusters.get, container.clusters.update, container.operations.get" in md
    html = render_html(plan)
    assert "Planned only" in html and "setNetworkPolicy" in html


def test_apply_never_runs_a_manual_step(plan: Plan, tmp_path: Path) -> None:
    def no_writer(family: str) -> None:
        raise AssertionError(f"apply asked for a {family} writer")

    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, no_writer, journal, GuardConfig(), approved=True)  # type: ignore[arg-type]
    assert report.results == []


def test_every_cluster_finding_offers_a_typed_fix_and_steps_name_their_permissions(plan: Plan) -> None:
    rules = load_rules([shipped_rules_dir() / "gke-cluster.yaml"])
    result = run_scan([str(EXAMPLES / "org"), str(EXAMPLES / "k8s")], rules, SourceOptions(cluster=INFERENCE))
    by_rule = {r.rule.id: r.rule for r in rules}
    fixable = [f for f in result.findings if by_rule[f.rule].remediation]
    assert fixable and all(len(f.remedies) == 1 and f.remedies[0].family == "gke" for f in fixable)
    pool = _step(plan, TRAINING, "node_service_account", "gpu-a100")
    assert pool["permissions"] == ["container.clusters.get", "container.clusters.update", "container.operations.get",
                                   "iam.serviceAccounts.actAs"]
    assert "iam.serviceAccounts.actAs" not in _step(plan, NOTEBOOKS, "legacy_abac")["permissions"]


def test_the_planner_reads_the_remedy_never_the_details() -> None:
    from auditor.evaluate.rulebook import Rule
    from auditor.model import Finding, Mode, Severity
    from auditor.remedies import FixClusterSetting
    from remediations.plan import build_plan

    asset = f"//container.googleapis.com/{NOTEBOOKS}"
    rule = Rule.model_validate({"id": "abac", "check": "gke.legacy_abac_disabled", "severity": "critical",
                                "mode": "dryrun", "remediation": "gke.update_cluster"})

    def finding(fid: str, details: dict, remedies: tuple) -> Finding:  # type: ignore[type-arg]
        return Finding(id=fid, rule="abac", check="gke.legacy_abac_disabled", severity=Severity.critical,
                       mode=Mode.dryrun, asset=asset, asset_type="container.googleapis.com/Cluster", message="m",
                       details=details, remedies=remedies)

    # Details that name another setting are ignored; details alone plan nothing.
    typed = finding("f1", {"cluster": NOTEBOOKS, "setting": "shielded_nodes"},
                    (FixClusterSetting(NOTEBOOKS, "legacy_abac"),))
    bare = finding("f2", {"cluster": NOTEBOOKS, "setting": "legacy_abac", "node_pool": None}, ())
    plan = build_plan([typed, bare], [rule], {})
    assert [(m.setting, m.findings) for m in plan.manual] == [("legacy_abac", ("f1",))]
    assert [(s["finding"], s["reason"]) for s in plan.skipped] == [
        ("f2", "the finding offers no fix that gke.update_cluster makes")]
