"""Plan, apply, verify, journal and roll back RBAC changes against kmock (with resourceVersion conflicts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_rules
from auditor.scan import ScanResult, run_scan
from remediations.apply import Outcome, apply_plan, rollback
from remediations.guards import GuardConfig
from remediations.journal import Journal
from remediations.plan import Plan
from remediations.planning import plan_from_scan
from remediations.writers import writers
from tests.remediations.kube import KubeServer

CLUSTER = "projects/ml-platform-prod/locations/us-central1/clusters/training"
SERVER_FIELDS = ("resourceVersion", "uid")


def _scan(sources: list[str], rules: list[Path]) -> ScanResult:
    return run_scan(sources, load_rules(rules), SourceOptions(cluster=CLUSTER))


def _plan(sources: list[str], rules: list[Path], cfg: GuardConfig | None = None) -> tuple[ScanResult, Plan]:
    result = _scan(sources, rules)
    return result, plan_from_scan(result, sources, SourceOptions(cluster=CLUSTER), guard_config=cfg or GuardConfig())


def _writers(kube: KubeServer) -> Any:
    return writers(kube_client_factory=lambda cluster: kube.api_client())


def _bare(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    if obj is None:
        return None
    out = dict(obj)
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in SERVER_FIELDS}
    return out


def _by_key(kube: KubeServer) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in kube.stored()}


def test_example_cluster_plan_applies_rescan_and_rollback(kube: KubeServer, repo: Path, tmp_path: Path) -> None:
    gke = repo / "examples" / "org" / "gke.ndjson"
    assert kube.load_cai(gke, CLUSTER) > 10
    rules = [repo / "rules" / "rbac.yaml"]
    before_objects = _by_key(kube)
    scan0, plan = _plan([str(gke)], rules)
    kinds = {e.kind for c in plan.changes for e in c.edits}
    assert {"rbac.remove_subject", "rbac.replace_role_rules"} <= kinds, kinds
    assert all(c.token for c in plan.changes), "every change is planned against a resourceVersion"

    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, _writers(kube), journal, GuardConfig(), approved=True)
        by_resource = {r.resource: r for r in report.results}
        for c in plan.changes:
            r = by_resource[c.resource]
            assert r.outcome == (Outcome.refused if c.notes else Outcome.applied), r.to_dict()
        applied = [c for c in plan.changes if by_resource[c.resource].outcome == Outcome.applied]
        assert applied

        # The findings the applied changes answer are gone when the cluster is scanned again.
        after_ids = {f.id for f in _scan([str(kube.export(tmp_path / "after.yaml"))], rules).findings}
        for c in applied:
            assert not set(c.findings) & after_ids, c.resource

        # Each change wrote with the planned resourceVersion and left a new one; the journal has both states.
        entries = {e.resource: e for e in journal.entries(report.apply_id or "")}
        assert set(entries) == {c.resource for c in applied}
        for c in applied:
            e = entries[c.resource]
            assert e.token_before == c.token and e.token_after not in (None, c.token)
            assert _bare(e.before) == _bare(before_objects[(c.target.kind or "", c.target.namespace, c.target.name
                                                            or "")])

        back = rollback(report.apply_id or "", _writers(kube), journal, GuardConfig(), approved=True)
        assert back.ok and back.counts()["applied"] == len(applied), back.to_dict()
    restored = _by_key(kube)
    assert {k: _bare(v) for k, v in restored.items()} == {k: _bare(v) for k, v in before_objects.items()}
    # the cluster's own objects give back every finding but those of the cluster settings (GKE rules of rbac.yaml
    # that read the Cluster asset, which the export of Kubernetes objects does not hold)
    assert {f.id for f in _scan([str(kube.export(tmp_path / "back.yaml"))], rules).findings} == {
        f.id for f in scan0.findings if not f.rule.startswith("gke-")}


BINDINGS = """
apiVersion: v1
kind: List
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: alice-admin, resourceVersion: "11"}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
  subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice@example.com}
  - {apiGroup: rbac.authorization.k8s.io, kind: Group, name: platform-admins}
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: bob-admin, resourceVersion: "12"}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
  subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: bob@example.com}
"""

RULES = """
- id: no-cluster-admin-for-alice
  check: rbac.no_powerful_role_binding
  severity: critical
  params: {allowed_subjects: ["Group:platform-admins", "User:bob@example.com"]}
  mode: enforce
  remediation: rbac.remove_subject
- id: no-bob-admin-binding
  check: rbac.no_powerful_role_binding
  severity: critical
  params: {allowed_subjects: ["Group:platform-admins", "User:alice@example.com"]}
  mode: dryrun
  remediation: rbac.delete_binding
"""


def _load_bindings(kube: KubeServer, tmp_path: Path, write_rules: Any) -> tuple[Path, Path]:
    import yaml

    listing = tmp_path / "bindings.yaml"
    listing.write_text(BINDINGS, encoding="utf-8")
    for obj in yaml.safe_load(BINDINGS)["items"]:
        kube.put(obj, keep_version=True)
    return listing, write_rules(RULES)


def test_resource_version_conflict_writes_nothing(kube: KubeServer, tmp_path: Path, write_rules: Any) -> None:
    listing, rules = _load_bindings(kube, tmp_path, write_rules)
    _, plan = _plan([str(listing)], [rules])
    assert {c.target.name for c in plan.changes} == {"alice-admin", "bob-admin"}
    # Someone edits both bindings between plan and apply: their resourceVersions move.
    for name in ("alice-admin", "bob-admin"):
        obj = kube.get("ClusterRoleBinding", name)
        assert obj is not None
        obj["metadata"]["labels"] = {"touched": "yes"}
        kube.put(obj)
    moved = _by_key(kube)
    writes = len(kube.k.writes)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, _writers(kube), journal, GuardConfig(), approved=True)
    assert [r.outcome for r in report.results] == [Outcome.conflict, Outcome.conflict]
    assert all("resourceVersion" in r.reason for r in report.results)
    assert len(kube.k.writes) == writes
    assert _by_key(kube) == moved


def test_conflict_raised_by_the_api_server_is_a_conflict(kube: KubeServer, tmp_path: Path, write_rules: Any) -> None:
    """The token moves after the applier's re-read: the API server's 409 is reported as a conflict."""
    from remediations.families.rbac import RbacWriter

    listing, rules = _load_bindings(kube, tmp_path, write_rules)
    _, plan = _plan([str(listing)], [rules])
    change = next(c for c in plan.changes if c.target.name == "alice-admin")

    class Racing(RbacWriter):
        def write(self, target: Any, live: Any, new: Any) -> None:
            obj = kube.get("ClusterRoleBinding", "alice-admin")
            assert obj is not None
            kube.put(obj)  # a concurrent writer wins the race
            super().write(target, live, new)

    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, lambda family: Racing(lambda c: kube.api_client()), journal, GuardConfig(),
                            approved=True, changes=[change])
        (result,) = report.results
        assert result.outcome == Outcome.conflict and "409" in result.reason
        (entry,) = journal.entries(report.apply_id or "")
        assert entry.outcome == "conflict" and entry.after is None
    subjects = (kube.get("ClusterRoleBinding", "alice-admin") or {}).get("subjects") or []
    assert len(subjects) == 2


def test_delete_binding_and_rollback_recreates_it(kube: KubeServer, tmp_path: Path, write_rules: Any) -> None:
    listing, rules = _load_bindings(kube, tmp_path, write_rules)
    original = kube.get("ClusterRoleBinding", "bob-admin")
    _, plan = _plan([str(listing)], [rules])
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, _writers(kube), journal, GuardConfig(), approved=True)
        assert report.ok, report.to_dict()
        assert kube.get("ClusterRoleBinding", "bob-admin") is None
        alice = kube.get("ClusterRoleBinding", "alice-admin") or {}
        assert [s["name"] for s in alice["subjects"]] == ["platform-admins"]
        back = rollback(report.apply_id or "", _writers(kube), journal, GuardConfig(), approved=True)
        assert back.ok, back.to_dict()
    assert _bare(kube.get("ClusterRoleBinding", "bob-admin")) == _bare(original)


def test_rollback_refuses_where_the_resource_changed_again(
    kube: KubeServer, tmp_path: Path, write_rules: Any
) -> None:
    listing, rules = _load_bindings(kube, tmp_path, write_rules)
    _, plan = _plan([str(listing)], [rules])
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, _writers(kube), journal, GuardConfig(), approved=True)
        alice = kube.get("ClusterRoleBinding", "alice-admin")
        assert alice is not None
        alice["subjects"].append({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "carol"})
        kube.put(alice)
        changed = kube.get("ClusterRoleBinding", "alice-admin")
        back = rollback(report.apply_id or "", _writers(kube), journal, GuardConfig(), approved=True)
    outcomes = {r.resource.rsplit("/", 1)[-1]: r for r in back.results}
    assert outcomes["alice-admin"].outcome == Outcome.conflict
    assert "changed again" in outcomes["alice-admin"].reason
    assert outcomes["bob-admin"].outcome == Outcome.applied
    assert kube.get("ClusterRoleBinding", "alice-admin") == changed


TENANT = """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: team-a, labels: {tenant: a}, resourceVersion: "20"}
- apiVersion: rbac.authorization.k8s.io/v1
  kind: Role
  metadata: {name: trainer, namespace: team-a, resourceVersion: "21"}
  rules:
  - {apiGroups: [batch], resources: [jobs], verbs: [get, list, create]}
- apiVersion: rbac.authorization.k8s.io/v1
  kind: RoleBinding
  metadata: {name: trainer, namespace: team-a, resourceVersion: "22"}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: trainer}
  subjects:
  - {kind: ServiceAccount, name: trainer, namespace: team-a}
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: intruder@example.com}
"""

TENANT_RULES = """
- id: tenant-rbac-as-declared
  check: rbac.tenant_desired_state
  severity: high
  mode: dryrun
  remediation: {remediation}
  params:
    tenant_labels: [tenant]
    roles:
      trainer:
        - {apiGroups: [batch], resources: [jobs], verbs: [get, list]}
    role_bindings:
      trainer: {role: trainer, subjects: ["ServiceAccount:{namespace}/trainer"]}
"""


def test_tenant_desired_state_subjects_and_rules(kube: KubeServer, tmp_path: Path, write_rules: Any) -> None:
    import yaml

    listing = tmp_path / "tenant.yaml"
    listing.write_text(TENANT, encoding="utf-8")
    for obj in yaml.safe_load(TENANT)["items"]:
        kube.put(obj, keep_version=True)
    rules = [write_rules(TENANT_RULES.replace("{remediation}", "rbac.remove_subject")),
             write_rules(TENANT_RULES.replace("{remediation}", "rbac.replace_role_rules").replace(
                 "tenant-rbac-as-declared", "tenant-roles-as-declared"))]
    _, plan = _plan([str(listing)], rules)
    edits = sorted((c.target.kind, e.describe()) for c in plan.changes for e in c.edits)
    assert edits == [("Role", "replace the rules with the 1 desired rules"),
                     ("RoleBinding", "remove subject User:intruder@example.com")]
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, _writers(kube), journal, GuardConfig(), approved=True)
    assert report.ok, report.to_dict()
    binding = kube.get("RoleBinding", "trainer", "team-a") or {}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "trainer", "namespace": "team-a"}]
    role = kube.get("Role", "trainer", "team-a") or {}
    assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list"]}]
    after = _scan([str(kube.export(tmp_path / "after.yaml"))], rules)
    assert not after.findings
