"""Hostile cases for remediation: crafted rules, lost answers and bad guard settings never widen the blast radius.

Every case runs the real clients against the fake Google Cloud server (`tests/fakes/gcp.py`): plans are made from
a scan of an export, applied through the resource's own API, and the fake's state says what was really written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.collect import SourceOptions
from auditor.errors import AuditorError
from auditor.evaluate.globs import any_member_match
from auditor.evaluate.rulebook import load_rules
from auditor.scan import run_scan
from auditor.settings import load_settings
from remediations.apply import Outcome, apply_plan
from remediations.guards import GuardConfig
from remediations.journal import Journal
from remediations.plan import Plan
from remediations.planning import plan_from_scan
from remediations.writers import writers
from tests.fakes.gcp import ENDPOINT_ENV, Fault
from tests.fakes.gcp_extra import FakeGcpPlus

ORG = "organizations/990000000001"
PROJECT = "projects/hostile-proj"
ORG_POLICY = {
    "version": 1,
    "etag": "BwYAAAAAAAE=",
    "bindings": [
        {"role": "roles/resourcemanager.organizationAdmin", "members": ["group:org-admins@example.com"]},
        {"role": "roles/owner", "members": ["user:founder@example.com"]},
        {"role": "roles/browser", "members": ["domain:example.com"]},
    ],
}
ANY_MEMBER = ("- {id: strip-everyone, check: iam.forbidden_members, severity: high, mode: enforce, "
              "remediation: iam.remove_member, params: {members: ['*']}}\n")


def _record(name: str, asset_type: str, policy: dict[str, Any], ancestors: list[str]) -> dict[str, Any]:
    return {"name": name, "asset_type": asset_type, "ancestors": ancestors, "iam_policy": policy,
            "resource": {"data": {"name": name.rsplit("/", 1)[-1]}}}


def _org_record(policy: dict[str, Any] | None = None) -> dict[str, Any]:
    return _record(f"//cloudresourcemanager.googleapis.com/{ORG}", "cloudresourcemanager.googleapis.com/Organization",
                   policy or ORG_POLICY, [ORG])


def _project_record(policy: dict[str, Any]) -> dict[str, Any]:
    rec = _record(f"//cloudresourcemanager.googleapis.com/{PROJECT}", "cloudresourcemanager.googleapis.com/Project",
                  policy, [PROJECT, ORG])
    rec["resource"]["data"]["projectId"] = PROJECT.split("/", 1)[1]
    return rec


@pytest.fixture
def fake_gcp(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGcpPlus]:
    """The fake, started and empty; every client of the auditor talks to it."""
    with FakeGcpPlus() as fake:
        monkeypatch.setenv(ENDPOINT_ENV, fake.url)
        yield fake


@pytest.fixture
def load(fake_gcp: FakeGcpPlus, tmp_path: Path) -> Any:
    """Write the records as an export, load them in the fake, return the export's path."""

    def write(*records: dict[str, Any]) -> Path:
        export = tmp_path / "export.ndjson"
        export.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        fake_gcp.load(export)
        return export

    return write


def _plan(export: Path, rule: str, tmp_path: Path, cfg: GuardConfig | None = None) -> Plan:
    rules = tmp_path / "rules.yaml"
    rules.write_text(rule, encoding="utf-8")
    result = run_scan([str(export)], load_rules([rules]), SourceOptions())
    return plan_from_scan(result, [str(export)], guard_config=cfg or GuardConfig())


def _apply(plan: Plan, tmp_path: Path, cfg: GuardConfig | None = None) -> Any:
    with Journal(tmp_path / "state.db") as journal:
        return apply_plan(plan, writers(), journal, cfg or GuardConfig(), approved=True)


def _bindings(fake: FakeGcpPlus, resource: str) -> dict[str, list[str]]:
    return {b["role"]: sorted(b["members"]) for b in fake.state.get_policy(resource, 3).get("bindings") or ()}


# -- 13.8: blast radius -------------------------------------------------------------------------------------------
def test_crafted_everyone_rule_with_apply_yes_cannot_empty_an_organization(
    load: Any, fake_gcp: FakeGcpPlus, tmp_path: Path
) -> None:
    """`iam.forbidden_members` with members ['*'] and `apply --yes`: the organization keeps its admin and owner."""
    export = load(_org_record())
    rules = tmp_path / "rules.yaml"
    rules.write_text(ANY_MEMBER, encoding="utf-8")
    runner = CliRunner()
    plan_file, state = tmp_path / "plan.json", tmp_path / "state.db"
    res = runner.invoke(cli, ["plan", "--source", str(export), "--rules", str(rules), "--output", str(plan_file)],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(plan_file.read_text())["summary"]["edits"] == 3, "the plan asks for every member"
    res = runner.invoke(cli, ["apply", str(plan_file), "--yes", "--json", "--state", str(state)],
                        catch_exceptions=False)
    report = json.loads(res.output)
    after = _bindings(fake_gcp, ORG)
    assert after["roles/resourcemanager.organizationAdmin"] == ["group:org-admins@example.com"]
    assert after["roles/owner"] == ["user:founder@example.com"]
    assert after, "the organization policy is not empty"
    refused = {x["edit"]: x["reason"] for r in report["results"] for x in r["refused_edits"]}
    assert any("protected-role" in why for why in refused.values()), refused
    assert res.exit_code != 0, "refused edits are not a clean apply"


def test_a_policy_is_never_emptied(load: Any, fake_gcp: FakeGcpPlus, tmp_path: Path) -> None:
    """Removing every binding of a project is refused at the last one, even with the share cap off."""
    export = load(_project_record({"etag": "BwYAAAAAAAI=", "bindings": [
        {"role": "roles/viewer", "members": ["user:a@example.com"]},
        {"role": "roles/editor", "members": ["user:b@example.com"]},
    ]}))
    cfg = GuardConfig(max_member_share=None)
    plan = _plan(export, ANY_MEMBER.replace("enforce", "dryrun"), tmp_path, cfg)
    (change,) = plan.changes
    assert any("empty-policy" in n for n in change.notes), "the plan says so beforehand"
    report = _apply(plan, tmp_path, cfg)
    (result,) = report.results
    assert result.outcome == Outcome.applied and len(result.refused_edits) == 1
    assert "empty-policy: the change would remove every binding" in result.refused_edits[0]["reason"]
    assert len(_bindings(fake_gcp, PROJECT)) == 1


def test_protected_role_on_an_organization_needs_an_allowance(load: Any, fake_gcp: FakeGcpPlus,
                                                              tmp_path: Path) -> None:
    rule = ("- {id: no-admins, check: iam.forbidden_members, severity: high, mode: dryrun, "
            "remediation: iam.remove_member, params: {members: ['group:org-admins@example.com']}}\n")
    export = load(_org_record())
    report = _apply(_plan(export, rule, tmp_path), tmp_path)
    (result,) = report.results
    assert result.outcome == Outcome.refused
    assert result.reason.startswith("protected-role: roles/resourcemanager.organizationAdmin is a protected role")
    assert not fake_gcp.calls("POST", r":setIamPolicy$")
    # iam.*Admin roles are protected too, by the glob.
    cfg = GuardConfig()
    assert "roles/iam.*Admin" in cfg.protected_roles
    # The allowance names the resource: then the member goes.
    allowed = GuardConfig(protected_role_allowances=[ORG])
    report = _apply(_plan(export, rule, tmp_path, allowed), tmp_path, allowed)
    assert report.ok, report.to_dict()
    assert "roles/resourcemanager.organizationAdmin" not in _bindings(fake_gcp, ORG)


def test_protected_iam_admin_role_on_a_folder(load: Any, fake_gcp: FakeGcpPlus, tmp_path: Path) -> None:
    folder = "folders/880000000001"
    export = load(_record(f"//cloudresourcemanager.googleapis.com/{folder}",
                          "cloudresourcemanager.googleapis.com/Folder",
                          {"etag": "BwYAAAAAAAM=", "bindings": [
                              {"role": "roles/iam.organizationRoleAdmin", "members": ["user:x@example.com"]},
                              {"role": "roles/viewer", "members": ["user:x@example.com", "user:y@example.com"]}]},
                          [folder, ORG]))
    rule = ("- {id: no-x, check: iam.forbidden_members, severity: high, mode: dryrun, "
            "remediation: iam.remove_member, params: {members: ['user:x@example.com']}}\n")
    report = _apply(_plan(export, rule, tmp_path), tmp_path)
    (result,) = report.results
    # The viewer grant goes; the admin role stays.
    assert result.outcome == Outcome.applied
    assert [x["reason"].split(":")[0] for x in result.refused_edits] == ["protected-role"]
    assert _bindings(fake_gcp, folder) == {"roles/iam.organizationRoleAdmin": ["user:x@example.com"],
                                           "roles/viewer": ["user:y@example.com"]}


def test_member_share_cap(load: Any, fake_gcp: FakeGcpPlus, tmp_path: Path) -> None:
    members = [f"user:u{i}@example.com" for i in range(4)]
    export = load(_project_record({"etag": "BwYAAAAAAAQ=", "bindings": [
        {"role": "roles/owner", "members": ["group:owners@example.com"]},
        {"role": "roles/viewer", "members": members},
    ]}))
    rule = ("- {id: no-users, check: iam.forbidden_members, severity: high, mode: dryrun, "
            "remediation: iam.remove_member, params: {members: ['user:**']}}\n")
    report = _apply(_plan(export, rule, tmp_path), tmp_path)
    (result,) = report.results
    # 5 grants: 2 may go (40%), the third would make it 60%, over the default 50%.
    assert result.outcome == Outcome.applied
    assert len(result.refused_edits) == 2
    assert all("member-share" in x["reason"] for x in result.refused_edits)
    assert len(_bindings(fake_gcp, PROJECT)["roles/viewer"]) == 2
    # With the cap raised, the rest goes (planned on the state as it is now).
    export = load(_project_record(fake_gcp.state.get_policy(PROJECT, 3)))
    cfg = GuardConfig(max_member_share=1.0)
    report = _apply(_plan(export, rule, tmp_path, cfg), tmp_path, cfg)
    assert report.ok, report.to_dict()
    assert _bindings(fake_gcp, PROJECT) == {"roles/owner": ["group:owners@example.com"]}


def test_public_grants_are_not_counted_by_the_caps(load: Any, fake_gcp: FakeGcpPlus, tmp_path: Path) -> None:
    """A project whose only extra grants are public ones loses them all: nobody is locked out."""
    export = load(_project_record({"etag": "BwYAAAAAAAU=", "bindings": [
        {"role": "roles/owner", "members": ["group:owners@example.com"]},
        {"role": "roles/viewer", "members": ["allUsers", "allAuthenticatedUsers"]},
    ]}))
    rule = ("- {id: public, check: iam.forbidden_members, severity: high, mode: dryrun, "
            "remediation: iam.remove_member, params: {members: [allUsers, allAuthenticatedUsers]}}\n")
    report = _apply(_plan(export, rule, tmp_path), tmp_path)
    assert report.ok, report.to_dict()
    assert _bindings(fake_gcp, PROJECT) == {"roles/owner": ["group:owners@example.com"]}


@pytest.mark.parametrize("pattern", ["group:break-glass@*", "user:*", "domain:*", "usr:someone@example.com"])
def test_a_protected_pattern_that_matches_no_member_is_a_configuration_error(pattern: str, tmp_path: Path) -> None:
    with pytest.raises(AuditorError, match=r"can match no|no IAM member type"):
        GuardConfig(protected_principals=[pattern])
    config = tmp_path / "config.yaml"
    config.write_text(f"sources: [org]\nremediation:\n  protected_principals: ['{pattern}']\n", encoding="utf-8")
    with pytest.raises(AuditorError, match="protected_principals"):
        load_settings(config)


def test_the_example_protects_break_glass_for_real(repo: Path) -> None:
    settings = load_settings(repo / "examples" / "config.yaml")
    protected = settings.remediation.protected_principals
    assert any_member_match(protected, "group:break-glass@helix-ml.example")
    assert any_member_match(protected, "serviceAccount:drift-auditor@sec-tools.iam.gserviceaccount.com")
    assert not any_member_match(protected, "group:break-glass-not@helix-ml.example")


# -- 13.9: a lost answer ----------------------------------------------------------------------------------------------
def test_a_write_whose_answer_is_lost_is_settled_by_reading_back(load: Any, fake_gcp: FakeGcpPlus,
                                                                 tmp_path: Path) -> None:
    export = load(_project_record({"etag": "BwYAAAAAAAY=", "bindings": [
        {"role": "roles/owner", "members": ["group:owners@example.com"]},
        {"role": "roles/viewer", "members": ["user:gone@gmail.com", "user:stays@example.com"]},
    ]}))
    rule = ("- {id: no-gmail, check: iam.forbidden_members, severity: high, mode: dryrun, "
            "remediation: iam.remove_member, params: {members: ['user:*@gmail.com']}}\n")
    plan = _plan(export, rule, tmp_path)
    # Every write is done and its answer dropped: the client's retries see the connection close each time.
    fake_gcp.inject(Fault(drop=True, times=None, method="POST", path=r":setIamPolicy$"))
    report = _apply(plan, tmp_path)
    (result,) = report.results
    assert result.outcome == Outcome.applied, result.reason
    assert "answer was lost" in result.reason
    assert _bindings(fake_gcp, PROJECT)["roles/viewer"] == ["user:stays@example.com"]
    with Journal(tmp_path / "state.db") as journal:
        (entry,) = journal.entries(report.apply_id or "")
    assert entry.outcome == "applied" and entry.after is not None


def test_a_lost_answer_to_a_write_that_did_not_happen_is_a_failure(load: Any, fake_gcp: FakeGcpPlus,
                                                                   tmp_path: Path) -> None:
    export = load(_project_record({"etag": "BwYAAAAAAAc=", "bindings": [
        {"role": "roles/owner", "members": ["group:owners@example.com"]},
        {"role": "roles/viewer", "members": ["user:gone@gmail.com", "user:stays@example.com"]},
    ]}))
    rule = ("- {id: no-gmail, check: iam.forbidden_members, severity: high, mode: dryrun, "
            "remediation: iam.remove_member, params: {members: ['user:*@gmail.com']}}\n")
    plan = _plan(export, rule, tmp_path)
    fake_gcp.inject(Fault(status=503, times=None, method="POST", path=r":setIamPolicy$"))
    report = _apply(plan, tmp_path)
    (result,) = report.results
    assert result.outcome == Outcome.failed
    assert "user:gone@gmail.com" in _bindings(fake_gcp, PROJECT)["roles/viewer"]
