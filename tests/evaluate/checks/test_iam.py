"""IAM checks and the principals helper: compliant and violating policies, conditions, spellings, real dumps."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.collect.files import iter_file_assets
from auditor.errors import RuleError
from auditor.evaluate.checks.iam import NO_PROJECTS, DomainParams, _domain_violations, _Judge
from auditor.evaluate.engine import Engine
from auditor.evaluate.globs import any_match, any_member_match
from auditor.evaluate.principals import (
    default_service_account_kind,
    google_grants,
    in_domains,
    is_convenience_member,
    is_google_managed,
    is_public,
    is_service_agent,
    parse_member,
    service_account_project,
)
from auditor.evaluate.rulebook import load_file, load_rules, shipped_rules_dir
from auditor.model import Asset, Finding, finding_id

ORG = "cloudresourcemanager.googleapis.com/Organization"
FOLDER = "cloudresourcemanager.googleapis.com/Folder"
PROJECT = "cloudresourcemanager.googleapis.com/Project"
BUCKET = "storage.googleapis.com/Bucket"
KEY = "iam.googleapis.com/ServiceAccountKey"
CRM = "//cloudresourcemanager.googleapis.com/"
COND = {"title": "until-2027", "expression": "request.time < timestamp('2027-01-01T00:00:00Z')"}


def b(role: str, *members: str, condition: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "members": list(members)}
    if condition:
        out["condition"] = condition
    return out


def project(num: str, *bindings: dict[str, Any], pid: str | None = None, audit: list[Any] | None = None,
            ancestors: tuple[str, ...] | None = None, parent: dict[str, str] | None = None) -> Asset:
    policy: dict[str, Any] = {"bindings": list(bindings), "etag": "BwX="}
    if audit is not None:
        policy["auditConfigs"] = audit
    data: dict[str, Any] = {"projectNumber": num, "projectId": pid or f"p{num}"}
    if parent:
        data["parent"] = parent
    anc = ancestors if ancestors is not None else (f"projects/{num}", "organizations/1")
    return Asset(f"{CRM}projects/{num}", PROJECT, resource=data, iam_policy=policy, ancestors=anc)


def bucket(name: str, *bindings: dict[str, Any]) -> Asset:
    return Asset(f"//storage.googleapis.com/{name}", BUCKET, resource={"name": name},
                 iam_policy={"bindings": list(bindings)}, ancestors=("projects/10", "organizations/1"))


def org(*bindings: dict[str, Any], domain: str = "example.com", audit: list[Any] | None = None) -> Asset:
    policy: dict[str, Any] = {"bindings": list(bindings)}
    if audit is not None:
        policy["auditConfigs"] = audit
    return Asset(f"{CRM}organizations/1", ORG, resource={"displayName": domain, "name": "organizations/1"},
                 iam_policy=policy, ancestors=("organizations/1",))


def scan(tmp_path: Path, rules: list[dict[str, Any]], *assets: Asset, now: datetime | None = None) -> list[Finding]:
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump([{"severity": "high", **r} for r in rules], sort_keys=False))
    result = Engine(load_file(f), now=now).evaluate(assets)
    assert not result.errors, result.errors
    return result.findings


def members_of(findings: list[Finding]) -> set[str]:
    return {f.details["member"] for f in findings}


# -- principals -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "member",
    [
        "serviceAccount:service-123@gcp-sa-aiplatform.iam.gserviceaccount.com",
        "serviceAccount:service-123@container-engine-robot.iam.gserviceaccount.com",
        "serviceAccount:service-123@compute-system.iam.gserviceaccount.com",
        "serviceAccount:service-org-55@gcp-sa-ktd-hpsa.iam.gserviceaccount.com",
        "serviceAccount:p123-456@gcp-sa-logging.iam.gserviceaccount.com",
        "serviceAccount:123@cloudservices.gserviceaccount.com",
        "serviceAccount:service-123@dataflow-service-producer-prod.iam.gserviceaccount.com",
    ],
)
def test_service_agents_are_recognised(member: str) -> None:
    assert is_service_agent(member) and is_google_managed(member)
    assert service_account_project(member) is None


@pytest.mark.parametrize(
    "member",
    [
        "serviceAccount:trainer@ml-train.iam.gserviceaccount.com",
        "serviceAccount:service-123@ml-train.gserviceaccount.com.evil.com",
        "user:service-123@gcp-sa-aiplatform.iam.gserviceaccount.com",
        "deleted:serviceAccount:service-1@gcp-sa-x.iam.gserviceaccount.com?uid=1",
        "group:123@cloudservices.gserviceaccount.com",
    ],
)
def test_lookalikes_are_not_service_agents(member: str) -> None:
    assert not is_service_agent(member)


def test_google_grants_only_the_roles_google_gives() -> None:
    compute = "serviceAccount:123-compute@developer.gserviceaccount.com"
    apis = "serviceAccount:123@cloudservices.gserviceaccount.com"
    gke = "serviceAccount:service-123@container-engine-robot.iam.gserviceaccount.com"
    assert default_service_account_kind(compute) == "Compute Engine default service account"
    assert google_grants(compute, "roles/editor") and not google_grants(compute, "roles/owner")
    assert google_grants(apis, "roles/editor") and not google_grants(apis, "roles/iam.securityAdmin")
    assert google_grants(gke, "roles/container.serviceAgent") and not google_grants(gke, "roles/editor")
    assert google_grants("serviceAccount:service-1@gcp-sa-aiplatform.iam.gserviceaccount.com",
                         "roles/aiplatform.customCodeServiceAgent")
    assert not google_grants("serviceAccount:trainer@p.iam.gserviceaccount.com", "roles/editor")
    assert google_grants("serviceAccount:my-app@appspot.gserviceaccount.com", "roles/editor")
    assert google_grants("serviceAccount:123@cloudbuild.gserviceaccount.com", "roles/cloudbuild.builds.builder")


def test_member_parsing_and_domains() -> None:
    m = parse_member("deleted:user:Alice@Example.com?uid=123")
    assert (m.type, m.value, m.deleted, m.domain) == ("user", "Alice@Example.com", True, "example.com")
    assert parse_member("allUsers").domain is None
    assert parse_member("domain:example.com").domain == "example.com"
    assert parse_member("principalSet://iam.googleapis.com/locations/global/workforcePools/p/*").domain is None
    assert is_convenience_member("projectOwner:ml-train") and not is_convenience_member("user:a@b.c")
    assert in_domains("user:a@eu.example.com", {"example.com"}, True)
    assert not in_domains("user:a@eu.example.com", {"example.com"}, False)
    assert not in_domains("user:a@badexample.com", {"example.com"}, True)
    assert service_account_project("serviceAccount:trainer@ml-train.iam.gserviceaccount.com") == "ml-train"
    assert service_account_project("serviceAccount:ml-train.svc.id.goog[tenant-a/trainer]") == "ml-train"
    pool = "principal://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/gh/subject/repo:x"
    assert service_account_project(pool) == "123"
    assert service_account_project("user:trainer@ml-train.iam.gserviceaccount.com") is None


# -- members ----------------------------------------------------------------------------------------------------------
def test_forbidden_members_with_conditions_and_stable_ids(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.forbidden_members", "params": {"members": ["allUsers", "user:**@gmail.com"]}}]
    clean = bucket("clean", b("roles/storage.objectViewer", "group:ml@example.com"))
    public = bucket(
        "public",
        b("roles/storage.objectViewer", "allUsers", "user:first.last@gmail.com"),
        b("roles/storage.objectViewer", "allUsers", condition=COND),
    )
    found = scan(tmp_path, rules, clean, public)
    assert {f.asset for f in found} == {public.name}
    conditional = [f for f in found if "condition" in f.details]
    assert len(found) == 3 and len(conditional) == 1
    assert conditional[0].details == {"role": "roles/storage.objectViewer", "member": "allUsers",
                                      "condition": "until-2027"}
    assert "(condition: until-2027)" in conditional[0].message
    # the id is built from role|member|condition: the same grant gives the same id in the next cycle
    assert conditional[0].id == finding_id("r", public.name, "roles/storage.objectViewer|allUsers|until-2027")
    again = scan(tmp_path, rules, public)
    assert {f.id for f in again} == {f.id for f in found}


def test_member_globs_stop_at_dots(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.forbidden_members", "params": {"members": ["user:*@gmail.com"]}}]
    found = scan(tmp_path, rules, bucket("x", b("roles/viewer", "user:ab@gmail.com", "user:a.b@gmail.com")))
    assert members_of(found) == {"user:ab@gmail.com"}


def test_allowed_members(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.allowed_members",
              "params": {"roles": ["roles/owner"], "members": ["group:platform@example.com"]}}]
    ok = project("1", b("roles/owner", "group:platform@example.com"), b("roles/viewer", "user:x@other.org"))
    bad = project("2", b("roles/owner", "group:platform@example.com", "user:bob@example.com"))
    assert members_of(scan(tmp_path, rules, ok, bad)) == {"user:bob@example.com"}


def test_allowed_domains(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.allowed_domains",
              "params": {"domains": ["example.com"], "service_account_projects": ["ml-*"]}}]
    ok = bucket(
        "ok",
        b("roles/storage.objectViewer", "user:a@example.com", "user:b@eu.example.com", "domain:example.com",
          "projectViewer:ml-train", "serviceAccount:trainer@ml-train.iam.gserviceaccount.com",
          "serviceAccount:service-9@gcp-sa-aiplatform.iam.gserviceaccount.com"),
    )
    bad = bucket(
        "bad",
        b("roles/storage.objectViewer", "user:eve@gmail.com", "allAuthenticatedUsers",
          "serviceAccount:ci@vendor.iam.gserviceaccount.com", "user:x@example.com.evil.org"),
    )
    found = scan(tmp_path, rules, ok, bad)
    assert {f.asset for f in found} == {bad.name}
    assert members_of(found) == {"user:eve@gmail.com", "allAuthenticatedUsers",
                                 "serviceAccount:ci@vendor.iam.gserviceaccount.com", "user:x@example.com.evil.org"}
    strict = [{"id": "r", "check": "iam.allowed_domains",
               "params": {"domains": ["example.com"], "allow_sub_domains": False, "allow_convenience_members": False}}]
    assert members_of(scan(tmp_path, strict, ok)) == {
        "user:b@eu.example.com", "projectViewer:ml-train", "serviceAccount:trainer@ml-train.iam.gserviceaccount.com"}


def test_external_members_uses_the_organization_domain_and_projects(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.external_members"}]
    inside = project("10", b("roles/viewer", "user:a@example.com",
                             "serviceAccount:trainer@ml-train.iam.gserviceaccount.com"), pid="ml-train")
    outside = bucket("b", b("roles/storage.objectViewer", "user:eve@gmail.com", "allUsers",
                            "serviceAccount:trainer@ml-train.iam.gserviceaccount.com",
                            "serviceAccount:ml-train.svc.id.goog[tenant-a/loader]",
                            "serviceAccount:other-co.svc.id.goog[default/x]"))
    found = scan(tmp_path, rules, org(), inside, outside)
    assert members_of(found) == {"user:eve@gmail.com", "allUsers", "serviceAccount:other-co.svc.id.goog[default/x]"}
    quiet_public = [{"id": "r", "check": "iam.external_members", "params": {"include_public": False}}]
    assert "allUsers" not in members_of(scan(tmp_path, quiet_public, org(), inside, outside))
    # without an Organization asset and without domains there is nothing to compare with: no finding, and the rule
    # says it was not evaluated (the snapshot is then partial), never "checked and clean"
    f = tmp_path / "external.yaml"
    f.write_text(yaml.safe_dump([{"severity": "high", **rules[0]}]))
    blind = Engine(load_file(f)).evaluate([inside, outside])
    assert blind.findings == [] and [n.rule_id for n in blind.not_evaluated] == ["r"]
    assert "no Organization asset" in blind.not_evaluated[0].reason
    # with the Organization but no Project, a project's service account cannot be judged: not a finding, not clean
    no_projects = Engine(load_file(f)).evaluate([org(), outside])
    assert members_of(no_projects.findings) == {"user:eve@gmail.com", "allUsers"}  # the Workload Identity ones too
    assert [n.reason for n in no_projects.not_evaluated] == [NO_PROJECTS]
    assert Engine(load_file(f)).evaluate([org(), inside, outside]).not_evaluated == []


# -- roles ------------------------------------------------------------------------------------------------------------
def test_banned_roles_skip_google_grants_and_keep_others(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.banned_roles", "params": {"roles": ["roles/owner", "roles/editor"]}}]
    p = project(
        "1",
        b("roles/editor", "serviceAccount:1@cloudservices.gserviceaccount.com",
          "serviceAccount:1-compute@developer.gserviceaccount.com", "user:dev@example.com"),
        b("roles/owner", "serviceAccount:service-1@gcp-sa-aiplatform.iam.gserviceaccount.com"),
        b("roles/owner", "user:dev@example.com", condition=COND),
        b("roles/viewer", "user:dev@example.com"),
    )
    found = scan(tmp_path, rules, p)
    got = {(f.details["role"], f.details["member"], f.details.get("condition")) for f in found}
    assert got == {
        ("roles/editor", "user:dev@example.com", None),
        ("roles/owner", "serviceAccount:service-1@gcp-sa-aiplatform.iam.gserviceaccount.com", None),
        ("roles/owner", "user:dev@example.com", "until-2027"),
    }
    strict = [{"id": "r", "check": "iam.banned_roles", "params": {"roles": ["roles/editor"],
                                                                   "allow_google_managed": False}}]
    assert len(scan(tmp_path, strict, p)) == 3
    compliant = project("2", b("roles/viewer", "user:dev@example.com"))
    assert scan(tmp_path, rules, compliant) == []


def test_default_service_accounts_with_basic_roles_have_their_own_rule(tmp_path: Path) -> None:
    """CIS GCP Foundations: default service accounts should not hold basic roles. Google's grant of editor to the
    default compute account is not iam.banned_roles' finding, but it is this rule's, exemptible like any other."""
    shipped = [r for r in load_rules([shipped_rules_dir()]) if r.id == "iam-default-service-accounts-no-basic-roles"]
    assert [r.rule.severity for r in shipped] == ["medium"]
    p = project(
        "7",
        b("roles/editor", "serviceAccount:7-compute@developer.gserviceaccount.com",
          "serviceAccount:7@cloudservices.gserviceaccount.com",  # the Google APIs service agent: never reported
          "serviceAccount:p7@appspot.gserviceaccount.com"),
        b("roles/owner", "serviceAccount:service-7@gcp-sa-aiplatform.iam.gserviceaccount.com",  # a service agent
          "serviceAccount:7-compute@developer.gserviceaccount.com"),
        b("roles/viewer", "serviceAccount:8-compute@developer.gserviceaccount.com"),  # not a basic role it bans
        b("roles/editor", "serviceAccount:trainer@p7.iam.gserviceaccount.com"),  # user-managed: other rules' matter
    )
    found = Engine(shipped).evaluate([p]).findings
    assert sorted((f.details["role"], f.details["member"], f.severity) for f in found) == [
        ("roles/editor", "serviceAccount:7-compute@developer.gserviceaccount.com", "medium"),
        ("roles/editor", "serviceAccount:p7@appspot.gserviceaccount.com", "medium"),
        ("roles/owner", "serviceAccount:7-compute@developer.gserviceaccount.com", "medium"),
    ]
    assert {f.details["kind"] for f in found} == {
        "Compute Engine default service account", "App Engine default service account"}
    exempt = [{"id": "d", "check": "iam.default_service_account_basic_roles", "severity": "medium",
               "exemptions": [{"resource": f"{CRM}projects/7", "reason": "legacy VMs until migrated",
                               "owner": "platform", "details": {"member": "serviceAccount:*-compute@**"}}]}]
    found = scan(tmp_path, exempt, p)
    assert len(found) == 3 and {f.details["member"] for f in found if f.exempted} == {
        "serviceAccount:7-compute@developer.gserviceaccount.com"}
    only_compute = [{"id": "d", "check": "iam.default_service_account_basic_roles",
                     "params": {"kinds": ["Compute Engine default service account"], "roles": ["roles/owner"]}}]
    assert [f.details["role"] for f in scan(tmp_path, only_compute, p)] == ["roles/owner"]


def test_allowed_roles_per_asset_type(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.allowed_roles", "match": {"asset_types": [BUCKET]},
              "params": {"roles": ["roles/storage.object*", "roles/storage.legacy*"]}}]
    ok = bucket("ok", b("roles/storage.objectViewer", "group:a@example.com"))
    bad = bucket("bad", b("roles/storage.admin", "group:a@example.com"))
    proj = project("1", b("roles/storage.admin", "group:a@example.com"))  # not a bucket: out of the rule's match
    found = scan(tmp_path, rules, ok, bad, proj)
    assert [(f.asset, f.details["role"]) for f in found] == [(bad.name, "roles/storage.admin")]


def test_required_bindings(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.required_bindings",
              "params": {"role": "roles/owner", "members": ["group:break-glass@example.com"]}}]
    ok = project("1", b("roles/owner", "group:Break-Glass@example.com"))
    conditional = project("2", b("roles/owner", "group:break-glass@example.com", condition=COND))
    missing = project("3", b("roles/viewer", "group:break-glass@example.com"))
    found = scan(tmp_path, rules, ok, conditional, missing)
    assert sorted(f.asset for f in found) == [conditional.name, missing.name]
    assert found[0].details == {"role": "roles/owner", "member": "group:break-glass@example.com", "change": "missing"}
    with_cond = [{"id": "r", "check": "iam.required_bindings",
                  "params": {"role": "roles/owner", "members": ["group:break-glass@example.com"],
                             "condition": "until-2027"}}]
    assert [f.asset for f in scan(tmp_path, with_cond, ok, conditional)] == [ok.name]


# -- service accounts -------------------------------------------------------------------------------------------------
def test_service_account_admin_roles(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.service_account_admin_roles"}]
    p = project(
        "1",
        b("roles/editor", "serviceAccount:trainer@p1.iam.gserviceaccount.com",
          "serviceAccount:1-compute@developer.gserviceaccount.com", "user:dev@example.com"),
        b("roles/storage.admin", "serviceAccount:loader@p1.iam.gserviceaccount.com"),
        b("roles/iam.securityAdmin", "serviceAccount:1-compute@developer.gserviceaccount.com"),
        b("roles/storage.objectViewer", "serviceAccount:loader@p1.iam.gserviceaccount.com"),
        b("roles/container.serviceAgent", "serviceAccount:service-1@container-engine-robot.iam.gserviceaccount.com"),
    )
    found = scan(tmp_path, rules, p)
    assert {(f.details["role"], f.details["member"]) for f in found} == {
        ("roles/editor", "serviceAccount:trainer@p1.iam.gserviceaccount.com"),
        ("roles/storage.admin", "serviceAccount:loader@p1.iam.gserviceaccount.com"),
        # the default compute account is Google's, but Google never gives it securityAdmin: someone did
        ("roles/iam.securityAdmin", "serviceAccount:1-compute@developer.gserviceaccount.com"),
    }
    viewer = project("2", b("roles/storage.objectViewer", "serviceAccount:a@p.iam.gserviceaccount.com"))
    assert scan(tmp_path, rules, viewer) == []


def test_project_level_impersonation(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.project_level_impersonation"}]
    p = project("1", b("roles/iam.serviceAccountTokenCreator", "group:pipelines@example.com"),
                b("roles/iam.serviceAccountUser", "user:dev@example.com", condition=COND))
    on_sa = Asset("//iam.googleapis.com/projects/p1/serviceAccounts/trainer@p1.iam.gserviceaccount.com",
                  "iam.googleapis.com/ServiceAccount",
                  iam_policy={"bindings": [b("roles/iam.serviceAccountUser", "group:pipelines@example.com")]})
    found = scan(tmp_path, rules, p, on_sa)
    assert {f.asset for f in found} == {p.name} and len(found) == 2
    assert all(f.details["level"] == "project" for f in found)


def key(email: str, key_id: str, key_type: Any, created: str | None = None, **extra: Any) -> Asset:
    name = f"projects/p1/serviceAccounts/{email}/keys/{key_id}"
    data: dict[str, Any] = {"name": name, "keyType": key_type, **extra}
    if created:
        data["validAfterTime"] = created
    return Asset(f"//iam.googleapis.com/{name}", KEY, resource=data)


def test_user_managed_keys(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.user_managed_keys"}]
    user = key("trainer@p1.iam.gserviceaccount.com", "k1", "USER_MANAGED", "2025-01-01T00:00:00Z")
    numeric = key("loader@p1.iam.gserviceaccount.com", "k2", 1)
    system = key("trainer@p1.iam.gserviceaccount.com", "k3", "SYSTEM_MANAGED")
    disabled = key("trainer@p1.iam.gserviceaccount.com", "k4", "USER_MANAGED", disabled=True)
    found = scan(tmp_path, rules, user, numeric, system, disabled)
    assert sorted(f.details["key_id"] for f in found) == ["k1", "k2"]
    assert {f.details["service_account"] for f in found} == {"trainer@p1.iam.gserviceaccount.com",
                                                             "loader@p1.iam.gserviceaccount.com"}
    aged = [{"id": "r", "check": "iam.user_managed_keys", "params": {"max_age_days": 90}}]
    fresh = key("a@p1.iam.gserviceaccount.com", "k5", "USER_MANAGED", "2026-10-01T00:00:00Z")
    found = scan(tmp_path, aged, user, fresh, now=datetime(2026, 11, 1, tzinfo=UTC))
    assert [f.details["key_id"] for f in found] == ["k1"] and found[0].details["age_days"] == 669


# -- audit logs -------------------------------------------------------------------------------------------------------
def test_audit_logging_spellings_all_services_and_inheritance(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.audit_logging",
              "params": {"services": ["storage.googleapis.com"], "allowed_exemptions": ["group:sre@example.com"]}}]
    organization = org(audit=[{"service": "allServices", "auditLogConfigs": [{"logType": "ADMIN_READ"}]}])
    # snake_case and numeric log types, as exports give them
    snake = project("1", audit=[{"service": "storage.googleapis.com", "audit_log_configs": [
        {"log_type": 2}, {"log_type": 3, "exempted_members": ["group:sre@example.com", "user:eve@example.com"]}]}])
    nothing = project("2")
    found = scan(tmp_path, rules, organization, snake, nothing)
    by_asset: dict[str, set[str]] = {}
    for f in found:
        by_asset.setdefault(f.asset.split(".com/", 1)[1], set()).add(f.message)
    exempt = "user:eve@example.com is exempted from DATA_READ audit logs of storage.googleapis.com"
    assert by_asset["projects/1"] == {exempt}
    # ADMIN_READ comes from the organization's allServices config
    missing = {"DATA_READ audit logs are not enabled for storage.googleapis.com",
               "DATA_WRITE audit logs are not enabled for storage.googleapis.com"}
    assert by_asset["projects/2"] == missing and by_asset["organizations/1"] == missing
    own_only = [{**rules[0], "params": {**rules[0]["params"], "inherited": False}}]
    assert len([f for f in scan(tmp_path, own_only, organization, snake) if f.asset == snake.name]) == 2


def test_audit_logging_inherits_through_parents_without_ancestors(tmp_path: Path) -> None:
    rules = [{"id": "r", "check": "iam.audit_logging", "params": {"services": ["allServices"]}}]
    types = ("ADMIN_READ", "DATA_READ", "DATA_WRITE")
    full = [{"service": "allServices", "auditLogConfigs": [{"logType": t} for t in types]}]
    folder = Asset(f"{CRM}folders/5", FOLDER, resource={"parent": "organizations/1"}, iam_policy={"auditConfigs": full})
    child = project("7", ancestors=(), parent={"type": "folder", "id": "5"})
    assert scan(tmp_path, rules, folder, child) == []
    assert len(scan(tmp_path, rules, child)) == 3


def test_audit_logging_refuses_unknown_log_types(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("- {id: r, check: iam.audit_logging, severity: low, params: {log_types: [DATA_READS]}}\n")
    with pytest.raises(RuleError, match=r"rule r: params.log_types: .*unknown log types \['DATA_READS'\]"):
        load_file(f)


# -- desired state ----------------------------------------------------------------------------------------------------
DESIRED = {
    "id": "stack",
    "check": "iam.desired_bindings",
    "params": {
        "assets": [f"{CRM}projects/*"],
        "managed_roles": ["roles/storage.*", "roles/aiplatform.*"],
        "bindings": [
            {"role": "roles/storage.objectViewer", "members": ["serviceAccount:trainer@p.iam.gserviceaccount.com"]},
            {"role": "roles/aiplatform.user", "members": ["group:ml@example.com"],
             "condition": {"title": "until-2027", "expression": COND["expression"]}},
        ],
    },
}


def test_desired_state_compliant(tmp_path: Path) -> None:
    p = project("1",
                b("roles/storage.objectViewer", "serviceAccount:Trainer@p.iam.gserviceaccount.com"),
                b("roles/aiplatform.user", "group:ml@example.com", condition=COND),
                b("roles/owner", "user:unmanaged@example.com"),  # not a managed role: left alone
                b("roles/storage.serviceAgent", "serviceAccount:service-1@gs-project-accounts.iam.gserviceaccount.com"))
    assert scan(tmp_path, [DESIRED], p) == []


def test_desired_state_drift(tmp_path: Path) -> None:
    p = project("1",
                b("roles/storage.objectViewer", "user:intruder@example.com"),
                b("roles/aiplatform.user", "group:ml@example.com"),  # unconditional: not the declared binding
                b("roles/aiplatform.user", "group:ml@example.com",
                  condition={"title": "until-2027", "expression": "true"}))
    found = scan(tmp_path, [DESIRED], p)
    got = {(f.details["role"], f.details.get("member"), f.details.get("condition"), f.details["change"])
           for f in found}
    assert got == {
        ("roles/storage.objectViewer", "serviceAccount:trainer@p.iam.gserviceaccount.com", None, "missing"),
        ("roles/storage.objectViewer", "user:intruder@example.com", None, "extra"),
        ("roles/aiplatform.user", "group:ml@example.com", None, "extra"),
        ("roles/aiplatform.user", None, "until-2027", "condition_changed"),
    }
    assert len({f.id for f in found}) == len(found)
    # one rule per remediation: the extra members for iam.remove_member, the missing ones for iam.add_member
    only_extra = {**DESIRED, "params": {**DESIRED["params"], "changes": ["extra"]}}
    assert {f.details["change"] for f in scan(tmp_path, [only_extra], p)} == {"extra"}


def test_desired_state_params_are_checked_at_load(tmp_path: Path) -> None:
    bad = {**DESIRED, "params": {**DESIRED["params"], "managed_roles": ["roles/storage.*"]}}
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump([{"severity": "high", **bad}]))
    with pytest.raises(RuleError, match=r"rule stack: params: .*aiplatform\.user is not covered by managed_roles"):
        load_file(f)


def test_wrong_param_type_is_refused_with_rule_id(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("- id: r1\n  check: iam.banned_roles\n  severity: high\n  params:\n    roles: roles/owner\n")
    with pytest.raises(RuleError, match=r"r.yaml:5: rule r1: params.roles: Input should be a valid list"):
        load_file(f)


DEFAULT_COMPUTE_ACCOUNTS = [("1041", "1"), ("1042", "2"), ("1043", "3"), ("1044", "4")]


# -- the shipped pack on real dumps -----------------------------------------------------------------------------------
def test_shipped_iam_pack_on_forseti_dumps(public_data: Path) -> None:
    rules = [r for r in load_rules([shipped_rules_dir()]) if r.rule.check.startswith(("iam.", "cel", "cross_layer."))]
    assets = list(iter_file_assets(public_data / "cai"))
    result = Engine(rules).evaluate(assets)
    assert not result.errors
    by_rule: dict[str, list[Finding]] = {}
    for f in result.findings:
        by_rule.setdefault(f.rule, []).append(f)
    primitive = by_rule["iam-no-primitive-roles-on-projects"]
    # Google's own editors (N@cloudservices, N-compute@developer) on every project are not findings of the other
    # rules; the default compute account's editor grant is its own rule's (medium), the service agents' nobody's
    defaults = by_rule.pop("iam-default-service-accounts-no-basic-roles")
    assert {(f.asset.rsplit("/", 1)[1], f.details["member"], f.details["role"], f.severity) for f in defaults} == {
        (p, f"serviceAccount:{n}-compute@developer.gserviceaccount.com", "roles/editor", "medium")
        for p, n in DEFAULT_COMPUTE_ACCOUNTS
    }
    members = [f.details["member"] for fs in by_rule.values() for f in fs if "member" in f.details]
    assert members and not any(is_google_managed(m) for m in members)
    # ...the human owners are: a_user and c_grp own each of the 4 projects
    assert {(f.asset.rsplit("/", 1)[1], f.details["member"]) for f in primitive} == {
        (p, m)
        for p in ("1041", "1042", "1043", "1044")
        for m in ("user:a_user@forseti.test", "group:c_grp@forseti.test")
    }
    # allAuthenticatedUsers reads both BigQuery datasets
    public = by_rule["iam-no-public-members"]
    assert {f.details["member"] for f in public} == {"allAuthenticatedUsers"} and len(public) == 2
    # the organization's domain is forseti.test (its display name): forseti.testing members are external,
    # forseti.test ones and projectOwner:-style members are not
    external = {f.details["member"] for f in by_rule["iam-no-external-members"]}
    assert "user:user@forseti.testing" in external and not any(m.endswith("@forseti.test") for m in external)
    assert not any(m.startswith(("projectOwner:", "projectEditor:", "projectViewer:")) for m in external)
    # projects 1041 and 1042 enable every log type for allServices; the organization only ADMIN_READ
    logs = {f.asset.rsplit("/", 1)[1] for f in by_rule["iam-data-access-logs-on-storage"]}
    assert "1041" not in logs and "1042" not in logs and {"1043", "1044", "111222333"} <= logs


# -- the bundled example organization and the documentation ----------------------------------------------------------
MY_PREFIXES = ("iam.", "cel", "cross_layer.", "config_validator.")


def test_example_org_triggers_every_iam_rule_next_to_compliant_assets(repo: Path) -> None:
    rules = [r for r in load_rules([shipped_rules_dir()]) if r.rule.check.startswith(MY_PREFIXES)]
    assets = list(iter_file_assets(repo / "examples" / "org"))
    result = Engine(rules).evaluate(assets)
    assert not result.errors
    assert {f.rule for f in result.findings} == {r.id for r in rules}
    with_policy = {a.name for a in assets if a.has_iam_policy}
    assert with_policy - {f.asset for f in result.findings}, "compliant assets sit next to the violations"
    # Google's own grants in the example (service agents, the Google APIs agent with editor) are never findings,
    # but for the default compute account's editor grant under its own rule
    assert not any(
        is_google_managed(str(f.details.get("member", "")))
        for f in result.findings
        if f.rule != "iam-default-service-accounts-no-basic-roles"
    )


def docstring_examples() -> dict[str, str]:
    from auditor.evaluate.registry import all_checks

    out = {}
    for name, spec in all_checks().items():
        if name.startswith(MY_PREFIXES):
            assert "```yaml" in spec.doc, f"{name} has no YAML example"
            out[name] = spec.doc.split("```yaml", 1)[1].split("```", 1)[0]
    return out


@pytest.mark.parametrize("name", sorted(docstring_examples()))
def test_docstring_example_loads(tmp_path: Path, name: str) -> None:
    import textwrap

    f = tmp_path / "example.yaml"
    f.write_text(textwrap.dedent(docstring_examples()[name]))
    loaded = load_file(f)
    assert loaded and {r.rule.check for r in loaded} == {name}


def test_desired_state_stack_of_resources(tmp_path: Path) -> None:
    stack = {"id": "stack", "check": "iam.desired_bindings", "params": {"resources": {
        # the first glob that matches wins, in the order written
        "//storage.googleapis.com/datasets-*": [{"role": "roles/storage.objectViewer",
                                                 "members": ["group:ml@example.com"]}],
        "//storage.googleapis.com/**": [],   # every other bucket: no binding at all
    }}}
    ok = bucket("datasets-a", b("roles/storage.objectViewer", "group:ml@example.com"))
    drifted = bucket("datasets-b", b("roles/storage.objectViewer", "group:ml@example.com", "allUsers"))
    other = bucket("scratch", b("roles/storage.admin", "user:dev@example.com"))
    found = scan(tmp_path, [stack], ok, drifted, other)
    assert {(f.asset.rsplit("/", 1)[1], f.details["member"], f.details["change"]) for f in found} == {
        ("datasets-b", "allUsers", "extra"), ("scratch", "user:dev@example.com", "extra")}
    both = {**stack, "params": {**stack["params"], "bindings": []}}
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump([{"severity": "high", **both}]))
    with pytest.raises(RuleError, match=r"rule stack: params: .*or resources, not both"):
        load_file(f)


_JUDGED = st.sampled_from([
    "user:a@example.com", "user:b@eu.example.com", "user:c@other.org", "group:g@Example.com", "domain:example.com",
    "allUsers", "allAuthenticatedUsers", "projectOwner:p1", "serviceAccount:ci@proj-1.iam.gserviceaccount.com",
    "serviceAccount:ci@proj-9.iam.gserviceaccount.com",
    "serviceAccount:service-12@gcp-sa-logging.iam.gserviceaccount.com",
    "serviceAccount:12-compute@developer.gserviceaccount.com", "serviceAccount:proj-1.svc.id.goog[ns/ksa]",
    "deleted:user:x@example.com?uid=1",
    "principal://iam.googleapis.com/projects/77/locations/global/workloadIdentityPools/p/s",
    "serviceAccount:vendor@vendor-build.iam.gserviceaccount.com", "weird", "",
])


def _outside(
    member: str, role: str, params: DomainParams, domains: AbstractSet[str], projects: AbstractSet[str]
) -> bool:
    """The reference: whether a member is outside the domains and projects, for these params, each question asked
    of the member as written (`_Judge.outside` answers from what it keeps of each member)."""
    if not params.include_public and is_public(member):
        return False
    if params.allow_convenience_members and is_convenience_member(member):
        return False
    if params.allow_google_managed and is_google_managed(member):
        return False
    if params.except_members and any_member_match(params.except_members, member):
        return False
    if params.allowed_members and any_member_match(params.allowed_members, member):
        return False
    if in_domains(member, domains, params.allow_sub_domains):
        return False
    project = service_account_project(member)
    if project is None:
        return True
    return project not in projects and not any_match(params.service_account_projects, project)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    members=st.lists(_JUDGED, max_size=12),
    domains=st.frozensets(st.sampled_from(["example.com", "other.org", "com"]), max_size=2),
    projects=st.frozensets(st.sampled_from(["proj-1", "77", "p1"]), max_size=2),
    params=st.fixed_dictionaries({}, optional={
        "include_public": st.booleans(), "allow_convenience_members": st.booleans(),
        "allow_google_managed": st.booleans(), "allow_sub_domains": st.booleans(),
        "except_members": st.sampled_from([[], ["user:**@other.org"]]),
        "allowed_members": st.sampled_from([[], ["serviceAccount:vendor@**"]]),
        "service_account_projects": st.sampled_from([[], ["proj-*"]]),
    }),
)
def test_judge_agrees_with_outside(members: list[str], domains: frozenset[str], projects: frozenset[str],
                                   params: dict[str, Any]) -> None:
    p = DomainParams(**params)
    judge = _Judge(p)
    for m in members * 2:  # the second time from what was kept of each member
        assert judge.outside(m, domains, projects) is _outside(m, "roles/x", p, domains, projects), m
    policy = Asset("//x/a", "t", iam_policy={"bindings": [{"role": "roles/x", "members": members}]})
    found = next(_domain_violations(policy, p, domains, projects, _Judge(p)), None)
    assert _Judge(p).any_outside(policy, domains, projects) is (found is not None)


def test_member_and_role_lines() -> None:
    """The prefilters' texts: one line a member or role; None when a value holds a line break (the rules run)."""
    from auditor.evaluate.checks.iam import _members_text, _roles_text

    def policy(*bindings: dict[str, Any]) -> Asset:
        return Asset("//x/a", "t", iam_policy={"bindings": list(bindings)})

    assert _members_text(policy()) == "" and _roles_text(policy()) == ""
    two = policy(b("roles/a", "user:x@example.com", "user:y@example.com"), b("roles/b", "group:g@example.com"))
    assert _members_text(two) == "user:x@example.com\nuser:y@example.com\ngroup:g@example.com"
    assert _roles_text(two) == "roles/a\nroles/b"
    assert _members_text(policy(b("roles/a", "user:x@example.com\nuser:y@example.com"))) is None
    assert _members_text(policy(b("roles/a", "\n"))) is None
    assert _roles_text(policy(b("roles/a\n", "user:x@example.com"))) is None
