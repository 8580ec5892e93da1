"""Typed remedies: checks offer them next to their details, and the planner reads only them (the package
boundaries are checked in test_boundaries)."""

from __future__ import annotations

import json
from pathlib import Path

from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import Rule, load_rules
from auditor.model import Asset, Finding, Mode, Severity, finding_id
from auditor.remedies import AddMember, RemoveMember, RemoveRule, RemoveSubject, SetRuleAction
from auditor.scan import run_scan
from remediations.plan import build_plan

REPO = Path(__file__).resolve().parents[2]
PROJECT = "//cloudresourcemanager.googleapis.com/projects/p1"
COND = {"title": "temp", "expression": "request.time < timestamp('2027-01-01T00:00:00Z')"}
POLICY = {"etag": "BwAAAAAAAAE=", "version": 3, "bindings": [
    {"role": "roles/owner", "members": ["user:owner@example.com"]},
    {"role": "roles/viewer", "members": ["allUsers", "user:a@example.com"]},
    {"role": "roles/viewer", "members": ["allUsers"], "condition": COND},
]}


def _scan(tmp_path: Path, rules: str, records: list[dict]) -> list[Finding]:  # type: ignore[type-arg]
    export = tmp_path / "export.ndjson"
    export.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    path = tmp_path / "rules.yaml"
    path.write_text(rules, encoding="utf-8")
    return run_scan([str(export)], load_rules([path]), SourceOptions()).findings


def test_iam_checks_offer_remove_member_with_the_full_condition(tmp_path: Path) -> None:
    findings = _scan(tmp_path, "- {id: pub, check: iam.forbidden_members, severity: high, "
                               "params: {members: [allUsers]}}\n",
                     [{"name": PROJECT, "asset_type": "cloudresourcemanager.googleapis.com/Project",
                       "iam_policy": POLICY}])
    assert sorted((f.remedies for f in findings), key=str) == sorted([
        (RemoveMember("roles/viewer", "allUsers", None),),
        (RemoveMember("roles/viewer", "allUsers", COND),),
    ], key=str)


def test_desired_state_offers_adds_and_removals(tmp_path: Path) -> None:
    rule = ("- id: want\n  check: iam.desired_bindings\n  severity: high\n"
            "  params: {managed_roles: ['roles/viewer'], bindings: [{role: roles/viewer, "
            "members: ['user:a@example.com', 'user:b@example.com']}]}\n")
    findings = _scan(tmp_path, rule, [{"name": PROJECT, "asset_type": "cloudresourcemanager.googleapis.com/Project",
                                       "iam_policy": POLICY}])
    offered = [r for f in findings for r in f.remedies]
    assert AddMember("roles/viewer", "user:b@example.com", None) in offered
    assert RemoveMember("roles/viewer", "allUsers", None) in offered


def test_cloud_armor_and_rbac_checks_offer_their_remedies(repo: Path) -> None:
    result = run_scan([str(repo / "examples" / "org"), str(repo / "examples" / "k8s")],
                      load_rules([]), SourceOptions(cluster="projects/ml-platform-prod/locations/us-central1/"
                                                            "clusters/inference"))
    by_check: dict[str, set[type]] = {}
    for f in result.findings:
        by_check.setdefault(f.check, set()).update(type(r) for r in f.remedies)
    assert {RemoveRule, SetRuleAction} <= by_check["cloud_armor.no_open_allow"]
    assert RemoveSubject in by_check["rbac.no_powerful_role_binding"]


def _finding(details: dict, remedies: tuple) -> Finding:  # type: ignore[type-arg]
    return Finding(id=finding_id("r", PROJECT, json.dumps(details, sort_keys=True)), rule="r",
                   check="iam.forbidden_members", severity=Severity.high, mode=Mode.dryrun, asset=PROJECT,
                   asset_type="cloudresourcemanager.googleapis.com/Project", message="m", details=details,
                   remedies=remedies)


def test_the_planner_reads_the_remedy_never_the_details() -> None:
    rule = Rule.model_validate({"id": "r", "check": "iam.forbidden_members", "severity": "high", "mode": "dryrun",
                                "remediation": "iam.remove_member", "params": {"members": ["allUsers"]}})
    asset = Asset(PROJECT, "cloudresourcemanager.googleapis.com/Project", iam_policy=POLICY)
    # Details that point elsewhere are ignored: the remedy says what to remove.
    misleading = _finding({"role": "roles/owner", "member": "user:owner@example.com"},
                          (RemoveMember("roles/viewer", "allUsers"),))
    # Details alone plan nothing.
    bare = _finding({"role": "roles/viewer", "member": "user:a@example.com"}, ())
    plan = build_plan([misleading, bare], [rule], {PROJECT: asset})
    (change,) = plan.changes
    assert [e.describe() for e in change.edits] == ["remove allUsers from roles/viewer"]
    assert [(s["finding"], s["reason"]) for s in plan.skipped] == [
        (bare.id, "the finding offers no IAM fix that iam.remove_member makes")]
