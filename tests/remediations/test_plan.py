"""The pure planner: which findings become changes, merged per resource, with tokens, diffs and a stable id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditor.collect import SourceOptions
from auditor.errors import RuleError
from auditor.evaluate.rulebook import load_rules
from auditor.plugins import remediation_kinds
from auditor.scan import run_scan
from remediations.plan import Plan, PlanError
from remediations.planning import plan_from_scan
from remediations.render import render_html, render_markdown

PROJECT = "//cloudresourcemanager.googleapis.com/projects/p1"
INSTANCE = "//spanner.googleapis.com/projects/p1/instances/shared"  # has a policy; no writer for it yet
ARMOR = "//compute.googleapis.com/projects/p1/global/securityPolicies/edge"
COND = {"title": "temp", "expression": "request.time < timestamp('2027-01-01T00:00:00Z')"}


def _export(tmp_path: Path) -> Path:
    records = [
        {"name": PROJECT, "asset_type": "cloudresourcemanager.googleapis.com/Project", "ancestors": ["projects/p1"],
         "iam_policy": {"etag": "BwAAAAAAAAE=", "version": 3, "bindings": [
             {"role": "roles/owner", "members": ["user:owner@example.com"]},
             {"role": "roles/viewer", "members": ["allUsers", "user:a@example.com"]},
             {"role": "roles/viewer", "members": ["allUsers"], "condition": COND},
             {"role": "roles/storage.admin", "members": ["user:extra@example.com"]}]}},
        {"name": INSTANCE, "asset_type": "spanner.googleapis.com/Instance", "ancestors": ["projects/p1"],
         "iam_policy": {"etag": "BwAAAAAAAAI=", "bindings": [{"role": "roles/spanner.databaseReader",
                                                             "members": ["allUsers"]}]}},
        # CAI spelling: singular `rule`, `srcIpRange`.
        {"name": ARMOR, "asset_type": "compute.googleapis.com/SecurityPolicy", "ancestors": ["projects/p1"],
         "resource": {"data": {"name": "edge", "fingerprint": "Fp00000000A=", "rule": [
             {"priority": 100, "action": "allow", "match": {"versionedExpr": "SRC_IPS_V1",
                                                           "config": {"srcIpRange": ["0.0.0.0/0"]}}},
             {"priority": 2147483647, "action": "allow", "match": {"versionedExpr": "SRC_IPS_V1",
                                                                  "config": {"srcIpRange": ["*"]}}}]}}},
    ]
    path = tmp_path / "export.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _plan(tmp_path: Path, rules: str) -> Plan:
    export = _export(tmp_path)
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules, encoding="utf-8")
    result = run_scan([str(export)], load_rules([rules_file]), SourceOptions())
    return plan_from_scan(result, [str(export)])


PUBLIC = """
- id: no-public
  check: iam.forbidden_members
  severity: critical
  params: {members: [allUsers]}
  mode: {mode}
  remediation: iam.remove_member
"""


def test_unknown_remediation_is_a_load_error_naming_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("- id: x\n  check: iam.forbidden_members\n  severity: low\n  params: {members: [allUsers]}\n"
                    "  remediation: iam.remove_members\n", encoding="utf-8")
    with pytest.raises(RuleError) as exc:
        load_rules([path])
    msg = str(exc.value)
    assert f"{path}:5: rule x: unknown remediation 'iam.remove_members'" in msg
    assert ", ".join(remediation_kinds()) in msg


def test_audit_rules_plan_nothing_dryrun_and_enforce_do(tmp_path: Path) -> None:
    assert _plan(tmp_path, PUBLIC.replace("{mode}", "audit")).changes == []
    for mode in ("dryrun", "enforce"):
        plan = _plan(tmp_path, PUBLIC.replace("{mode}", mode))
        assert [c.resource for c in plan.changes] == [PROJECT]
        assert plan.changes[0].edits[0].modes == [mode]


def test_one_write_per_resource_with_token_diff_and_condition(tmp_path: Path) -> None:
    plan = _plan(tmp_path, PUBLIC.replace("{mode}", "dryrun"))
    (change,) = plan.changes
    assert change.token == "BwAAAAAAAAE=" and change.token_field == "etag"
    assert change.target.api == "resourcemanager" and change.target.resource == "projects/p1"
    # Two findings (the plain and the conditional viewer binding), two edits, one write.
    assert sorted(e.describe() for e in change.edits) == [
        "remove allUsers from roles/viewer", "remove allUsers from roles/viewer (condition temp)"]
    assert len(change.findings) == 2 and change.rules == ["no-public"]
    diff = {d["item"]: d for d in change.diff}
    assert diff["binding roles/viewer"]["after"] == {"role": "roles/viewer", "members": ["user:a@example.com"]}
    assert diff["binding roles/viewer if temp"] == {
        "item": "binding roles/viewer if temp",
        "before": {"role": "roles/viewer", "members": ["allUsers"], "condition": COND}, "after": None}
    # The instance cannot be written by a writer: reported, not dropped.
    assert [(s["asset"], "spanner.googleapis.com/Instance" in s["reason"]) for s in plan.skipped] == [(INSTANCE, True)]
    s = plan.summary()
    assert (s["resources"], s["edits"], s["members"], s["rules"], s["findings"]) == (1, 2, 1, 1, 2)


def test_plan_id_is_a_hash_of_the_content(tmp_path: Path) -> None:
    a = _plan(tmp_path, PUBLIC.replace("{mode}", "dryrun"))
    b = _plan(tmp_path, PUBLIC.replace("{mode}", "dryrun"))
    assert a.id == b.id, "same findings on the same state: same id, whenever it is made"
    c = _plan(tmp_path, PUBLIC.replace("{mode}", "enforce"))
    assert c.id != a.id
    again = Plan.from_dict(json.loads(json.dumps(a.to_dict())))
    assert again.id == a.id and again.to_dict()["changes"] == a.to_dict()["changes"]
    edited = a.to_dict()
    edited["changes"][0]["token"] = "BwAAAAAAAAX="
    with pytest.raises(PlanError, match="does not match its id"):
        Plan.from_dict(edited)


def test_rules_asking_for_the_same_edit_merge(tmp_path: Path) -> None:
    rules = PUBLIC.replace("{mode}", "dryrun") + PUBLIC.replace("{mode}", "enforce").replace("no-public", "no-pub2")
    (change,) = _plan(tmp_path, rules).changes
    assert len(change.edits) == 2
    assert all(e.rules == ["no-pub2", "no-public"] for e in change.edits)
    assert all(e.modes == ["dryrun", "enforce"] for e in change.edits)


DESIRED = """
- id: desired-remove
  check: iam.desired_bindings
  severity: high
  mode: dryrun
  remediation: iam.remove_member
  params:
    managed_roles: [roles/storage.admin]
    bindings: [{role: roles/storage.admin, members: ["user:wanted@example.com"]}]
- id: desired-add
  check: iam.desired_bindings
  severity: high
  mode: dryrun
  remediation: iam.add_member
  params:
    managed_roles: [roles/storage.admin]
    bindings: [{role: roles/storage.admin, members: ["user:wanted@example.com"]}]
"""


def test_desired_state_adds_missing_and_removes_extra_members(tmp_path: Path) -> None:
    plan = _plan(tmp_path, DESIRED)
    (change,) = plan.changes
    assert sorted((e.kind, e.args["member"], e.rules[0]) for e in change.edits) == [
        ("iam.add_member", "user:wanted@example.com", "desired-add"),
        ("iam.remove_member", "user:extra@example.com", "desired-remove")]
    assert {"role": "roles/storage.admin", "members": ["user:wanted@example.com"]} in change.after
    # Each rule answers its own direction; the other direction's findings are reported as not planned by it.
    reasons = sorted(s["reason"] for s in plan.skipped if s["asset"] == PROJECT)
    assert len(reasons) == 2 and "does not add members" in reasons[1] and "does not remove" in reasons[0]


ARMOR_RULES = """
- id: open-allow
  check: cloud_armor.no_open_allow
  severity: high
  mode: dryrun
  remediation: cloud_armor.set_rule_action
- id: default-deny
  check: cloud_armor.default_rule_denies
  severity: high
  mode: dryrun
  remediation: cloud_armor.set_default_deny
"""


def test_cloud_armor_changes_in_api_spelling(tmp_path: Path) -> None:
    plan = _plan(tmp_path, ARMOR_RULES)
    (change,) = plan.changes
    assert change.token == "Fp00000000A=" and change.token_field == "fingerprint"
    assert change.target.project == "p1" and change.target.policy == "edge"
    assert [(r["priority"], r["action"], r["match"]["config"]["srcIpRanges"]) for r in change.after] == [
        (100, "deny(403)", ["0.0.0.0/0"]), (2147483647, "deny(403)", ["*"])]
    md = render_markdown(plan)
    assert "planned against fingerprint `Fp00000000A=`" in md and "-action: allow\n+action: deny(403)" in md
    html = render_html(plan)
    assert html.startswith("<!doctype html>") and "&lt;" not in change.resource and "deny(403)" in html


def test_plan_and_report_for_the_example_organization(repo: Path, tmp_path: Path) -> None:
    org = repo / "examples" / "org"
    result = run_scan([str(org)], load_rules(), SourceOptions())
    plan = plan_from_scan(result, [str(org)])
    assert plan.changes
    planned: set[str] = {f for c in plan.changes for f in c.findings}
    planned |= {f for m in plan.manual for f in m.findings}  # cluster settings: planned only
    skipped: set[Any] = {s["finding"] for s in plan.skipped}
    active = {f.id for f in result.findings if f.exempted is None and f.mode.value != "audit"
              and next(r for r in result.rules if r.id == f.rule).rule.remediation}
    assert planned | (skipped - {None}) == active, "every remediable finding is planned or said why not"
    for c in plan.changes:
        assert c.token, c.resource
        assert c.diff, c.resource
    md = render_markdown(plan)
    assert all(c.resource in md for c in plan.changes)


def test_exempted_findings_are_never_planned(tmp_path: Path) -> None:
    rules = PUBLIC.replace("{mode}", "enforce") + (
        "  exemptions:\n"
        f"    - {{resource: \"{PROJECT}\", reason: public docs, owner: web, details: {{condition: temp}}}}\n"
    )
    (change,) = _plan(tmp_path, rules).changes
    # The conditional binding's finding is exempted: only the plain binding is changed.
    assert [e.describe() for e in change.edits] == ["remove allUsers from roles/viewer"]
    assert {"role": "roles/viewer", "members": ["allUsers"], "condition": COND} in change.after
