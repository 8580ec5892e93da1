"""Each guard refuses the write with a reason an operator can act on, and nothing is written.

IAM guards run against the fake Google Cloud APIs, RBAC guards against kmock; plan-level guards refuse the
whole apply before anything is read.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_rules
from auditor.model import Finding, Mode, Severity, finding_id
from auditor.scan import run_scan
from remediations.apply import Outcome, apply_plan
from remediations.assets import collect_assets
from remediations.guards import GuardConfig, GuardRefused, is_service_agent
from remediations.journal import Journal
from remediations.plan import Plan, build_plan
from remediations.planning import plan_from_scan
from remediations.writers import writers
from tests.fakes.gcp import FakeGcp
from tests.remediations.kube import KubeServer

PROJECT = "projects/guarded"
AGENT = "serviceAccount:service-77@gcp-sa-aiplatform.iam.gserviceaccount.com"
POLICY = {
    "version": 1,
    "etag": "BwYAAAAAAAA=",
    "bindings": [
        {"role": "roles/owner", "members": ["user:solo-owner@example.com"]},
        {"role": "roles/editor", "members": ["user:dev@example.com", "user:breakglass-1@example.com",
                                             "serviceAccount:auditor@sec.iam.gserviceaccount.com", AGENT]},
    ],
}


def _rule(members: list[str], roles: list[str], mode: str = "dryrun") -> str:
    return (f"- {{id: strip, check: iam.forbidden_members, severity: high, mode: {mode}, "
            f"remediation: iam.remove_member, params: {{members: {json.dumps(members)}, roles: {json.dumps(roles)}}}}}")


@pytest.fixture
def guarded(fake_gcp: FakeGcp, gcp_endpoint: str, tmp_path: Path) -> Path:
    export = tmp_path / "org.ndjson"
    record = {"name": f"//cloudresourcemanager.googleapis.com/{PROJECT}",
              "asset_type": "cloudresourcemanager.googleapis.com/Project",
              "ancestors": [PROJECT, "organizations/1"], "iam_policy": POLICY,
              "resource": {"data": {"projectId": "guarded", "name": PROJECT}}}
    export.write_text(json.dumps(record) + "\n", encoding="utf-8")
    fake_gcp.load(export)
    return export


def _plan(export: Path, rule: str, tmp_path: Path, cfg: GuardConfig | None = None) -> Plan:
    rules = tmp_path / "rules.yaml"
    rules.write_text(rule, encoding="utf-8")
    result = run_scan([str(export)], load_rules([rules]), SourceOptions())
    return plan_from_scan(result, [str(export)], guard_config=cfg or GuardConfig())


def _apply(plan: Plan, tmp_path: Path, cfg: GuardConfig, **kw: Any) -> Any:
    with Journal(tmp_path / "state.db") as journal:
        return apply_plan(plan, writers(), journal, cfg, approved=kw.pop("approved", True), **kw)


def _only_refusal(report: Any, fake: FakeGcp) -> str:
    (result,) = report.results
    assert result.outcome == Outcome.refused
    assert not fake.calls("POST", r":setIamPolicy$"), "nothing is written"
    return str(result.reason)


def test_nothing_is_written_without_explicit_approval(guarded: Path, fake_gcp: FakeGcp, tmp_path: Path) -> None:
    plan = _plan(guarded, _rule(["user:dev@example.com"], ["roles/editor"]), tmp_path)
    with pytest.raises(GuardRefused, match="explicit-apply: nothing is written without explicit approval"):
        _apply(plan, tmp_path, GuardConfig(), approved=False)
    assert not fake_gcp.calls(path=r":(get|set)IamPolicy$")


def test_daemon_applies_only_enforce_rules(guarded: Path, fake_gcp: FakeGcp, tmp_path: Path) -> None:
    plan = _plan(guarded, _rule(["user:dev@example.com"], ["roles/editor"], mode="dryrun"), tmp_path)
    reason = _only_refusal(_apply(plan, tmp_path, GuardConfig(enforce_only=True), actor="daemon"), fake_gcp)
    assert reason == "enforce-only: rules strip are not in enforce mode"


def test_cap_on_changes_per_apply(guarded: Path, fake_gcp: FakeGcp, tmp_path: Path) -> None:
    plan = _plan(guarded, _rule(["user:dev@example.com", "user:breakglass-1@example.com"], ["roles/editor"]),
                 tmp_path)
    with pytest.raises(GuardRefused, match="max-changes-per-apply: the plan makes 2 changes, over the cap of 1"):
        _apply(plan, tmp_path, GuardConfig(), cap=1)
    with pytest.raises(GuardRefused, match="max-changes-per-cycle"):
        _apply(plan, tmp_path, GuardConfig(), cap=1, actor="daemon")
    assert not fake_gcp.calls(path=r":(get|set)IamPolicy$")


def test_plan_older_than_allowed_is_refused(guarded: Path, fake_gcp: FakeGcp, tmp_path: Path) -> None:
    plan = _plan(guarded, _rule(["user:dev@example.com"], ["roles/editor"]), tmp_path)
    later = plan.created_at + timedelta(hours=2)
    with pytest.raises(GuardRefused, match=r"plan-age: the plan is 7200s old, older than the 3600s allowed"):
        _apply(plan, tmp_path, GuardConfig(plan_max_age_seconds=3600), now=later)
    assert not fake_gcp.calls(path=r":(get|set)IamPolicy$")


def test_protected_principal_is_never_removed(guarded: Path, fake_gcp: FakeGcp, tmp_path: Path) -> None:
    cfg = GuardConfig(protected_principals=["user:breakglass-*@example.com"])
    plan = _plan(guarded, _rule(["user:breakglass-1@example.com"], ["roles/editor"]), tmp_path, cfg)
    assert plan.changes[0].notes, "the plan already says apply will refuse"
    reason = _only_refusal(_apply(plan, tmp_path, cfg), fake_gcp)
    assert reason == "protected-principal: user:breakglass-1@example.com is protected and is never removed " \
        "(roles/editor)"


def test_auditor_own_access_is_never_removed(guarded: Path, fake_gcp: FakeGcp, tmp_path: Path) -> None:
    me = "serviceAccount:auditor@sec.iam.gserviceaccount.com"
    cfg = GuardConfig(auditor_identities=[me])
    plan = _plan(guarded, _rule([me], ["roles/editor"]), tmp_path)
    reason = _only_refusal(_apply(plan, tmp_path, cfg), fake_gcp)
    assert reason == f"auditor-access: removing {me} from roles/editor removes the auditor's own access"


def test_resource_is_never_left_without_an_owner(guarded: Path, fake_gcp: FakeGcp, tmp_path: Path) -> None:
    plan = _plan(guarded, _rule(["user:solo-owner@example.com"], ["roles/owner"]), tmp_path)
    reason = _only_refusal(_apply(plan, tmp_path, GuardConfig()), fake_gcp)
    assert reason == "last-owner: the change would leave projects/guarded with no roles/owner"


def test_google_managed_service_agent_is_never_touched(guarded: Path, fake_gcp: FakeGcp, tmp_path: Path) -> None:
    plan = _plan(guarded, _rule([AGENT], ["roles/editor"]), tmp_path)
    reason = _only_refusal(_apply(plan, tmp_path, GuardConfig()), fake_gcp)
    assert reason == f"service-agent: {AGENT} is a Google-managed service agent (roles/editor)"


@pytest.mark.parametrize(
    ("member", "agent"),
    [
        ("serviceAccount:service-123@gcp-sa-aiplatform.iam.gserviceaccount.com", True),
        ("serviceAccount:123@cloudservices.gserviceaccount.com", True),
        ("serviceAccount:123-compute@developer.gserviceaccount.com", True),
        ("serviceAccount:service-123@container-engine-robot.iam.gserviceaccount.com", True),
        ("serviceAccount:trainer@ml-prod.iam.gserviceaccount.com", False),
        ("user:service-1@example.com", False),
    ],
)
def test_service_agent_patterns(member: str, agent: bool) -> None:
    assert is_service_agent(member) is agent


SYSTEM = """
apiVersion: v1
kind: List
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: "system:controller:job-admin", resourceVersion: "5"}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
  subjects: [{kind: User, name: mallory}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: ops-admins, resourceVersion: "6"}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
  subjects: [{kind: Group, name: "system:nodes"}, {kind: User, name: ops-lead}]
"""


def test_system_rbac_objects_and_subjects_are_never_touched(kube: KubeServer, tmp_path: Path) -> None:
    import yaml

    listing = tmp_path / "system.yaml"
    listing.write_text(SYSTEM, encoding="utf-8")
    for obj in yaml.safe_load(SYSTEM)["items"]:
        kube.put(obj, keep_version=True)
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {id: bindings-gone, check: rbac.no_powerful_role_binding, severity: high, mode: dryrun, "
                     "remediation: rbac.delete_binding}\n", encoding="utf-8")
    loaded = load_rules([rules])
    result = run_scan([str(listing)], loaded, SourceOptions(cluster="c1"))
    # The checks never report system objects; a plan file can still name one (edited by hand, or a custom
    # check): the guard holds at apply whatever the plan says.
    system_name = "//container.googleapis.com/clusters/c1/k8s/rbac.authorization.k8s.io/clusterrolebindings/" \
        "system:controller:job-admin"
    forged = Finding(id=finding_id("bindings-gone", system_name, "x"), rule="bindings-gone",
                     check="rbac.no_powerful_role_binding", severity=Severity.high, mode=Mode.dryrun,
                     asset=system_name, asset_type="rbac.authorization.k8s.io/ClusterRoleBinding", message="forged",
                     details={"subject": "User:mallory"})
    assets = collect_assets([str(listing)], {f.asset for f in result.findings} | {system_name},
                            SourceOptions(cluster="c1"))
    plan = build_plan([*result.findings, forged], loaded, assets)
    assert {c.target.name for c in plan.changes} == {"system:controller:job-admin", "ops-admins"}
    writes = len(kube.k.writes)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(kube_client_factory=lambda c: kube.api_client()), journal, GuardConfig(),
                            approved=True)
    reasons = {r.resource.rsplit("/", 1)[-1]: r.reason for r in report.results}
    assert {r.outcome for r in report.results} == {Outcome.refused}
    assert reasons["system:controller:job-admin"] == (
        "system-rbac: system:controller:job-admin is a Kubernetes system object and is never touched")
    assert reasons["ops-admins"] == (
        "system-rbac: Group:system:nodes is a Kubernetes system subject and is never removed")
    assert len(kube.k.writes) == writes



def test_a_refused_edit_does_not_hold_back_the_others(guarded: Path, fake_gcp: FakeGcp, tmp_path: Path) -> None:
    rule = _rule(["user:solo-owner@example.com", "user:dev@example.com"], ["roles/owner", "roles/editor"])
    plan = _plan(guarded, rule, tmp_path)
    (change,) = plan.changes
    assert change.notes == ["remove user:solo-owner@example.com from roles/owner: last-owner: the change would "
                            "leave projects/guarded with no roles/owner"]
    report = _apply(plan, tmp_path, GuardConfig())
    (result,) = report.results
    assert result.outcome == Outcome.applied and not report.ok
    assert result.edits == ["remove user:dev@example.com from roles/editor"]
    assert [x["edit"] for x in result.refused_edits] == ["remove user:solo-owner@example.com from roles/owner"]
    policy = fake_gcp.state.get_policy(PROJECT, 3)
    members = {m for b in policy["bindings"] for m in b["members"]}
    assert "user:solo-owner@example.com" in members and "user:dev@example.com" not in members


def test_a_remediation_never_grants_public_access(guarded: Path, fake_gcp: FakeGcp, tmp_path: Path) -> None:
    rule = ("- {id: declared, check: iam.required_bindings, severity: high, mode: dryrun, remediation: iam.add_member,"
            " params: {role: roles/viewer, members: [allUsers, 'user:reader@example.com']}}")
    plan = _plan(guarded, rule, tmp_path)
    report = _apply(plan, tmp_path, GuardConfig())
    (result,) = report.results
    assert result.edits == ["add user:reader@example.com to roles/viewer"]
    assert result.refused_edits == [{"edit": "add allUsers to roles/viewer", "kind": "iam.add_member",
                                     "rules": ["declared"],
                                     "reason": "public-member: a remediation never grants roles/viewer to allUsers"}]
    viewers = [b for b in fake_gcp.state.get_policy(PROJECT, 3)["bindings"] if b["role"] == "roles/viewer"]
    assert viewers == [{"role": "roles/viewer", "members": ["user:reader@example.com"]}]
