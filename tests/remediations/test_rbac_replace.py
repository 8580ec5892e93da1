"""A declared RoleBinding whose live roleRef differs: roleRef is immutable, so the fix deletes the binding (with its
resourceVersion and uid as preconditions) and creates it with the declared roleRef and subjects; re-read before,
verified after, journaled, rolled back the same way, and refused on a concurrent change. Against kmock with
resourceVersions (tests/remediations/kube.py), through the real `kubernetes` client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_rules
from auditor.remedies import ReplaceRoleBinding
from auditor.scan import run_scan
from remediations.apply import Outcome, apply_plan, rollback
from remediations.families.rbac import RbacWriter
from remediations.guards import GuardConfig
from remediations.journal import Journal
from remediations.plan import Plan
from remediations.planning import plan_from_scan
from remediations.writers import writers
from tests.remediations.kube import KubeServer

CLUSTER = "projects/ml-platform-prod/locations/us-central1/clusters/training"
NS = "team-a"
RULES = """\
- id: tenant-bindings-as-declared
  check: rbac.tenant_desired_state
  severity: medium
  mode: enforce
  remediation: rbac.replace_binding
  params:
    tenant_labels: [tenant]
    roles:
      trainer:
        - {apiGroups: [batch], resources: [jobs], verbs: [get, list, watch, create, delete]}
    role_bindings:
      trainer: {role: trainer, subjects: ["Group:ml-{tenant}@example.com", "ServiceAccount:{namespace}/trainer"]}
"""
DECLARED_REF = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "trainer"}
DRIFTED = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
    "metadata": {"name": "trainer", "namespace": NS, "labels": {"app": "training"}},
    # Someone bound the tenant's group to edit instead of the declared Role, and added a user.
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
    "subjects": [{"kind": "Group", "name": "ml-a@example.com", "apiGroup": "rbac.authorization.k8s.io"},
                 {"kind": "User", "name": "intern@example.com", "apiGroup": "rbac.authorization.k8s.io"}],
}


@pytest.fixture
def cluster(kube: KubeServer, tmp_path: Path) -> tuple[KubeServer, Path]:
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {"tenant": "a"}}})
    kube.put({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
              "metadata": {"name": "trainer", "namespace": NS},
              "rules": [{"apiGroups": ["batch"], "resources": ["jobs"],
                         "verbs": ["get", "list", "watch", "create", "delete"]}]})
    kube.put(DRIFTED)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    return kube, rules


def _plan(kube: KubeServer, rules: Path, tmp_path: Path) -> Plan:
    listing = str(kube.export(tmp_path / "cluster.yaml"))
    result = run_scan([listing], load_rules([rules]), SourceOptions(cluster=CLUSTER))
    (finding,) = result.findings
    assert [type(r) for r in finding.remedies] == [ReplaceRoleBinding]
    return plan_from_scan(result, [listing], SourceOptions(cluster=CLUSTER), guard_config=GuardConfig())


def _writers(kube: KubeServer) -> Any:
    return writers(kube_client_factory=lambda cluster: kube.api_client())


def _binding(kube: KubeServer) -> dict[str, Any]:
    obj = kube.get("RoleBinding", "trainer", NS)
    assert obj is not None
    return obj


def test_a_changed_role_ref_is_replaced_verified_journaled_and_rolled_back(
    cluster: tuple[KubeServer, Path], tmp_path: Path
) -> None:
    kube, rules = cluster
    before = _binding(kube)
    plan = _plan(kube, rules, tmp_path)
    (change,) = plan.changes
    assert change.token == before["metadata"]["resourceVersion"]
    assert [d["item"] for d in change.diff] == [
        "subject ServiceAccount:trainer", "subject User:intern@example.com", "roleRef"]
    writes = len(kube.k.writes)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, _writers(kube), journal, GuardConfig(), approved=True)
        assert report.ok, report.to_dict()
        # Deleted as read, then created: the roleRef and subjects are the declared ones, the labels are kept.
        assert [w[0] for w in kube.k.writes[writes:]] == ["action.DELETE", "action.CREATE"]
        after = _binding(kube)
        assert after["roleRef"] == DECLARED_REF
        assert {s["name"] for s in after["subjects"]} == {"ml-a@example.com", "trainer"}
        assert after["metadata"]["labels"] == {"app": "training"}
        (entry,) = journal.entries(report.apply_id or "")
        assert entry.before["roleRef"]["name"] == "edit" and entry.after["roleRef"] == DECLARED_REF
        assert entry.token_before == before["metadata"]["resourceVersion"] != entry.token_after
        # Scanned again, the binding is as declared.
        listing = str(kube.export(tmp_path / "after.yaml"))
        assert run_scan([listing], load_rules([rules]), SourceOptions(cluster=CLUSTER)).findings == []

        back = rollback(report.apply_id or "", _writers(kube), journal, GuardConfig(), approved=True)
        assert back.ok, back.to_dict()
    restored = _binding(kube)
    assert restored["roleRef"] == DRIFTED["roleRef"] and restored["subjects"] == DRIFTED["subjects"]


def test_a_binding_changed_since_the_plan_is_not_touched(cluster: tuple[KubeServer, Path], tmp_path: Path) -> None:
    kube, rules = cluster
    plan = _plan(kube, rules, tmp_path)
    moved = _binding(kube)
    moved["metadata"]["labels"] = {"app": "training", "touched": "yes"}
    kube.put(moved)
    writes = len(kube.k.writes)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, _writers(kube), journal, GuardConfig(), approved=True)
    (result,) = report.results
    assert result.outcome == Outcome.conflict and "resourceVersion" in result.reason
    assert len(kube.k.writes) == writes
    assert _binding(kube)["roleRef"]["name"] == "edit"


def test_a_change_between_the_read_and_the_delete_refuses_the_replace(
    cluster: tuple[KubeServer, Path], tmp_path: Path
) -> None:
    """The API server refuses the delete (its resourceVersion precondition): nothing is deleted or created."""
    kube, rules = cluster
    plan = _plan(kube, rules, tmp_path)

    class Racing(RbacWriter):
        def write(self, target: Any, live: Any, new: Any) -> None:
            kube.put(_binding(kube))  # a concurrent writer wins the race: a new resourceVersion
            super().write(target, live, new)

    writes = len(kube.k.writes)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, lambda family: Racing(lambda c: kube.api_client()), journal, GuardConfig(),
                            approved=True)
        (entry,) = journal.entries(report.apply_id or "")
    (result,) = report.results
    assert result.outcome == Outcome.conflict and "409" in result.reason
    assert entry.outcome == "conflict"
    assert kube.k.writes[writes:] == []  # the server refused the delete: nothing was written
    assert _binding(kube)["roleRef"]["name"] == "edit"


def test_a_failed_create_puts_the_binding_back(cluster: tuple[KubeServer, Path], tmp_path: Path) -> None:
    """The create after the delete fails (here a binding of that name appears in between): the binding as read is
    created again, the outcome is failed and the journal says why."""
    kube, rules = cluster
    plan = _plan(kube, rules, tmp_path)

    class CreateFails(RbacWriter):
        def _create(self, target: Any, obj: dict[str, Any]) -> None:
            if (obj.get("roleRef") or {}).get("name") == "trainer":
                from kubernetes.client.exceptions import ApiException

                raise ApiException(status=422, reason="Unprocessable Entity")
            super()._create(target, obj)

    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, lambda family: CreateFails(lambda c: kube.api_client()), journal, GuardConfig(),
                            approved=True)
        (entry,) = journal.entries(report.apply_id or "")
    (result,) = report.results
    assert result.outcome == Outcome.failed and "created again" in result.reason
    assert entry.outcome == "failed"
    back = _binding(kube)
    assert back["roleRef"] == DRIFTED["roleRef"] and back["subjects"] == DRIFTED["subjects"]
