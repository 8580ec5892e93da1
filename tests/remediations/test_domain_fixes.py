"""Members outside the allowed domains (Config Validator's GCPIAMAllowedPolicyMemberDomainsConstraintV2, read as
the `config_validator.member_domains` check) are fixed through the generic IAM family: one RemoveMember a binding
that lists the member, conditions kept, planned and applied against the fake Google Cloud server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditor import vocabulary as v
from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_rules
from auditor.remedies import RemoveMember
from auditor.scan import run_scan
from remediations.apply import Outcome, apply_plan
from remediations.families.iam import iam_section
from remediations.guards import GuardConfig
from remediations.journal import Journal
from remediations.planning import plan_from_scan
from remediations.writers import writers
from tests.fakes.gcp import FakeGcp

OUTSIDER = "user:ml.contractor@gmail.com"
CONDITION = {"title": "until-2027", "expression": 'request.time < timestamp("2027-01-01T00:00:00Z")'}
RULE = ("- {id: members-in-example-com, check: config_validator.member_domains, severity: high, mode: dryrun, "
        "remediation: iam.remove_member, params: {domains: [example.com]}}\n")
ASSETS = {
    v.BUCKET: ("//storage.googleapis.com/eval-bucket", r"^/storage/v1/b/eval-bucket/iam$"),
    v.PROJECT: ("//cloudresourcemanager.googleapis.com/projects/402000000009",
                r"/v3/projects/402000000009:setIamPolicy$"),
}
POLICY = {"version": 3, "etag": "BwYDOMAINAA=", "bindings": [
    {"role": "roles/viewer", "members": [OUTSIDER, "group:ml-team@example.com"]},
    {"role": "roles/editor", "members": ["group:ml-admins@example.com", "user:owner@example.com"]},
    # The outsider holds a conditional grant too; the insider beside it keeps the same condition.
    {"role": "roles/viewer", "members": [OUTSIDER, "user:oncall@example.com"], "condition": CONDITION},
    {"role": "roles/owner", "members": ["user:owner@example.com"]},
]}


def _export(fake: FakeGcp, tmp_path: Path, asset_type: str, name: str) -> Path:
    record = {"name": name, "asset_type": asset_type, "ancestors": ["projects/402000000009", "organizations/1"],
              "iam_policy": POLICY, "resource": {"data": {"name": name}}}
    export = tmp_path / "export.ndjson"
    export.write_text(json.dumps(record) + "\n", encoding="utf-8")
    fake.load(export)
    return export


def _live(fake: FakeGcp, name: str) -> dict[str, Any]:
    return (fake.state.asset(name) or {}).get("iamPolicy") or {}


@pytest.mark.parametrize("asset_type", sorted(ASSETS))
def test_a_member_outside_the_domains_leaves_every_binding_conditions_kept(
    asset_type: str, fake_gcp: FakeGcp, gcp_endpoint: str, tmp_path: Path
) -> None:
    name, write_path = ASSETS[asset_type]
    export = _export(fake_gcp, tmp_path, asset_type, name)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE, encoding="utf-8")
    result = run_scan([str(export)], load_rules([rules]), SourceOptions())
    (finding,) = result.findings
    assert finding.details["member"] == OUTSIDER
    assert finding.remedies == (RemoveMember("roles/viewer", OUTSIDER, None),
                                RemoveMember("roles/viewer", OUTSIDER, CONDITION))

    plan = plan_from_scan(result, [str(export)], guard_config=GuardConfig())
    (change,) = plan.changes
    assert change.token == "BwYDOMAINAA=" and not plan.skipped
    assert sorted(e.describe() for e in change.edits) == [
        f"remove {OUTSIDER} from roles/viewer", f"remove {OUTSIDER} from roles/viewer (condition until-2027)"]
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
    assert report.ok, report.to_dict()
    (write,) = [r for r in fake_gcp.calls(path=write_path) if r.method in ("POST", "PUT")]
    body = write.body or {}
    assert (body.get("policy") or body).get("etag") == "BwYDOMAINAA="
    assert iam_section(_live(fake_gcp, name)) == iam_section({"bindings": [
        {"role": "roles/viewer", "members": ["group:ml-team@example.com"]},
        {"role": "roles/editor", "members": ["group:ml-admins@example.com", "user:owner@example.com"]},
        {"role": "roles/viewer", "members": ["user:oncall@example.com"], "condition": CONDITION},
        {"role": "roles/owner", "members": ["user:owner@example.com"]},
    ]})
    # Fixed: the same rule finds nothing on the policy as it is now.
    fake_export = tmp_path / "after.ndjson"
    fake_export.write_text(json.dumps({"name": name, "asset_type": asset_type, "iam_policy": _live(fake_gcp, name),
                                       "resource": {"data": {"name": name}}}) + "\n", encoding="utf-8")
    assert run_scan([str(fake_export)], load_rules([rules]), SourceOptions()).findings == []


def test_an_outsider_granted_again_before_the_apply_is_a_conflict(
    fake_gcp: FakeGcp, gcp_endpoint: str, tmp_path: Path
) -> None:
    name, write_path = ASSETS[v.BUCKET]
    export = _export(fake_gcp, tmp_path, v.BUCKET, name)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE, encoding="utf-8")
    plan = plan_from_scan(run_scan([str(export)], load_rules([rules]), SourceOptions()), [str(export)])
    moved = json.loads(json.dumps(POLICY))
    moved["etag"] = "BwYMOVEDAAA="
    moved["bindings"][1]["members"].append("user:another@gmail.com")
    fake_gcp.state.update_asset(name, iamPolicy=moved)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
    assert [r.outcome for r in report.results] == [Outcome.conflict]
    assert not [r for r in fake_gcp.calls(path=write_path) if r.method == "PUT"]
    assert _live(fake_gcp, name) == moved
