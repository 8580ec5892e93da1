"""Workload Identity turned on for real: `gke.enable_workload_identity` writes clusters.update with the cluster's
etag through the Kubernetes Engine API of the fake Google Cloud server, waits on the operation, reads the cluster
back, journals it and rolls it back; a cluster changed since the plan, or between the read and the write, is a
conflict with nothing written. The other GKE fixes stay planned only (test_gke_plan)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_rules
from auditor.scan import run_scan
from remediations.apply import Outcome, apply_plan, rollback
from remediations.families.gke.clusters import GkeWriter
from remediations.guards import GuardConfig
from remediations.journal import Journal
from remediations.plan import Plan
from remediations.planning import plan_from_scan
from remediations.writers import writers
from tests.fakes.gcp import FakeGcp

NAME = "//container.googleapis.com/projects/ml-platform-prod/locations/us-central1/clusters/batch"
API_PATH = r"^/v1/projects/ml-platform-prod/locations/us-central1/clusters/batch$"
CLUSTER = {"name": "batch", "location": "us-central1", "etag": "a1b2c3d4", "status": "RUNNING",
           "legacyAbac": {}, "shieldedNodes": {"enabled": True}}
RULE = ("- {id: gke-workload-identity, check: gke.workload_identity, severity: high, mode: dryrun, "
        "remediation: gke.enable_workload_identity}\n")


def _export(fake: FakeGcp, tmp_path: Path, data: dict[str, Any]) -> Path:
    export = tmp_path / "export.ndjson"
    export.write_text(json.dumps({"name": NAME, "asset_type": "container.googleapis.com/Cluster",
                                  "ancestors": ["projects/402000000009"], "resource": {"data": data}}) + "\n",
                      encoding="utf-8")
    return export


def _plan(fake: FakeGcp, tmp_path: Path) -> tuple[Plan, Path]:
    export = _export(fake, tmp_path, CLUSTER)
    fake.load(export)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE, encoding="utf-8")
    result = run_scan([str(export)], load_rules([rules]), SourceOptions())
    assert [f.details["setting"] for f in result.findings] == ["workload_identity"]
    return plan_from_scan(result, [str(export)], guard_config=GuardConfig()), rules


def _live(fake: FakeGcp) -> dict[str, Any]:
    return ((fake.state.asset(NAME) or {}).get("resource") or {}).get("data") or {}


def _writes(fake: FakeGcp) -> list[Any]:
    return [r for r in fake.calls(path=API_PATH) if r.method == "PUT"]


def test_workload_identity_is_turned_on_with_the_etag_verified_and_rolled_back(
    fake_gcp: FakeGcp, gcp_endpoint: str, tmp_path: Path
) -> None:
    plan, rules = _plan(fake_gcp, tmp_path)
    (change,) = plan.changes
    assert change.token == "a1b2c3d4" and change.target.resource == NAME.split("//container.googleapis.com/")[1]
    assert change.diff == [{"item": "workloadIdentityConfig", "before": None,
                            "after": {"workloadPool": "ml-platform-prod.svc.id.goog"}}]
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
        assert report.ok, report.to_dict()
        (write,) = _writes(fake_gcp)
        assert (write.body or {})["update"] == {
            "desiredWorkloadIdentityConfig": {"workloadPool": "ml-platform-prod.svc.id.goog"}, "etag": "a1b2c3d4"}
        assert fake_gcp.calls(path=r"/locations/us-central1/operations/operation-\d+$"), "the operation is waited on"
        assert _live(fake_gcp)["workloadIdentityConfig"] == {"workloadPool": "ml-platform-prod.svc.id.goog"}
        (entry,) = journal.entries(report.apply_id or "")
        assert entry.token_before == "a1b2c3d4" and entry.token_after == _live(fake_gcp)["etag"] != "a1b2c3d4"
        # Scanned again, the cluster is fixed; the other settings are as they were.
        after = _export(fake_gcp, tmp_path, _live(fake_gcp))
        assert run_scan([str(after)], load_rules([rules]), SourceOptions()).findings == []
        assert _live(fake_gcp)["shieldedNodes"] == {"enabled": True}

        back = rollback(report.apply_id or "", writers(), journal, GuardConfig(), approved=True)
        assert back.ok, back.to_dict()
    assert "workloadIdentityConfig" not in _live(fake_gcp)


def test_a_cluster_changed_since_the_plan_is_not_written(fake_gcp: FakeGcp, gcp_endpoint: str,
                                                         tmp_path: Path) -> None:
    plan, _ = _plan(fake_gcp, tmp_path)
    fake_gcp.state.update_asset(NAME, resource={"data": {**CLUSTER, "etag": "e5f6a7b8", "labels": {"x": "y"}}})
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
    (result,) = report.results
    assert result.outcome == Outcome.conflict and "etag is e5f6a7b8, planned against a1b2c3d4" in result.reason
    assert _writes(fake_gcp) == [] and "workloadIdentityConfig" not in _live(fake_gcp)


def test_a_change_between_the_read_and_the_update_is_refused_by_the_api(
    fake_gcp: FakeGcp, gcp_endpoint: str, tmp_path: Path
) -> None:
    plan, _ = _plan(fake_gcp, tmp_path)

    class Racing(GkeWriter):
        def write(self, target: Any, live: Any, new: Any) -> None:
            fake_gcp.state.update_asset(NAME, resource={"data": {**CLUSTER, "etag": "racing01"}})
            super().write(target, live, new)

    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, lambda family: Racing(), journal, GuardConfig(), approved=True)
        (entry,) = journal.entries(report.apply_id or "")
    (result,) = report.results
    assert result.outcome == Outcome.conflict and "etag mismatch" in result.reason
    assert entry.outcome == "conflict"
    (write,) = _writes(fake_gcp)
    assert (write.body or {})["update"]["etag"] == "a1b2c3d4"
    assert _live(fake_gcp)["etag"] == "racing01" and "workloadIdentityConfig" not in _live(fake_gcp)


def test_a_remediation_never_turns_workload_identity_off(fake_gcp: FakeGcp, gcp_endpoint: str) -> None:
    from remediations.families import family
    from remediations.guards import check_change

    fam = family("gke")
    target = fam.target_for(NAME, "container.googleapis.com/Cluster")
    on = {**CLUSTER, "workloadIdentityConfig": {"workloadPool": "ml-platform-prod.svc.id.goog"}}
    refused = check_change("gke", target, on, CLUSTER, [], GuardConfig())
    assert [r.guard for r in refused] == ["workload-identity"]
    assert check_change("gke", target, on, CLUSTER, [], GuardConfig(), restoring=True) == []


def test_an_operation_that_ends_in_error_is_a_failed_write(fake_gcp: FakeGcp, gcp_endpoint: str,
                                                           tmp_path: Path) -> None:
    plan, _ = _plan(fake_gcp, tmp_path)
    fake_gcp.ext["container_operation_error"] = {"code": 9, "message": "Workload Identity needs the IAM API"}
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
        (entry,) = journal.entries(report.apply_id or "")
    (result,) = report.results
    assert result.outcome == Outcome.failed and "Workload Identity needs the IAM API" in result.reason
    assert entry.outcome == "failed"
