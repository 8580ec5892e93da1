"""Config Validator semantics field by field, each test next to the clause of the template's rego it follows.

The templates (tests/data/specs/config-validator-templates, policy-library's own files) are read here so that each
test states the rego it mirrors: if a template changes its meaning, the clause is no longer found and the test says
which field to look at again. How `match` is applied (by the GCP target, before the rego) is in tests/data/SOURCES.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.evaluate.engine import Engine
from auditor.evaluate.rulebook import load_file
from auditor.model import Asset, Finding

TEMPLATES = Path(__file__).resolve().parents[2] / "data" / "specs" / "config-validator-templates"
ORG, FOLDER, PROJECT = (f"cloudresourcemanager.googleapis.com/{t}" for t in ("Organization", "Folder", "Project"))
BUCKET = "storage.googleapis.com/Bucket"
CRM = "//cloudresourcemanager.googleapis.com/"


def rego(template: str) -> str:
    doc = yaml.safe_load((TEMPLATES / template).read_text())
    (target,) = doc["spec"]["targets"].values()  # validation.gcp.forsetisecurity.org
    text: str = target["rego"]
    return " ".join(text.split())  # whitespace-insensitive, for clause lookups


def clause(template: str, *texts: str) -> None:
    body = rego(template)
    for t in texts:
        assert " ".join(t.split()) in body, f"{template} no longer says {t!r}: review the field's semantics"


def asset(name: str, asset_type: str, path: str, *bindings: tuple[str, list[str]], audit: Any = None,
          conditional: tuple[str, list[str]] | None = None) -> Asset:
    """An asset whose ancestry path (top down, as Config Validator's `ancestry_path`) is `path`."""
    policy: dict[str, Any] = {"bindings": [{"role": r, "members": m} for r, m in bindings]}
    if conditional:
        policy["bindings"].append({"role": conditional[0], "members": conditional[1],
                                   "condition": {"title": "temp", "expression": "true"}})
    if audit is not None:
        policy["auditConfigs"] = audit
    parts = path.split("/") if path else []
    ancestors = tuple(reversed([f"{parts[i]}/{parts[i + 1]}" for i in range(0, len(parts), 2)]))
    return Asset(name, asset_type, resource={}, iam_policy=policy, ancestors=ancestors)


ORG_A = asset(f"{CRM}organizations/100", ORG, "organizations/100", ("roles/owner", ["user:root@example.com"]))
FOLDER_A = asset(f"{CRM}folders/200", FOLDER, "organizations/100/folders/200",
                 ("roles/owner", ["user:eve@gmail.com"]))
PROJECT_A = asset(f"{CRM}projects/300", PROJECT, "organizations/100/folders/200/projects/300",
                  ("roles/owner", ["user:alice@example.com", "user:mallory@evil.com"]),
                  ("roles/editor", ["group:ml@example.com"]))
PROJECT_B = asset(f"{CRM}projects/301", PROJECT, "organizations/100/projects/301",
                  ("roles/owner", ["user:carol@example.com"]))
OTHER_ORG = asset(f"{CRM}projects/900", PROJECT, "organizations/999/projects/900",
                  ("roles/owner", ["user:x@other.example"]))
NO_ANCESTRY = asset("//storage.googleapis.com/loose", BUCKET, "", ("roles/owner", ["user:y@example.com"]))
ALL = [ORG_A, FOLDER_A, PROJECT_A, PROJECT_B, OTHER_ORG, NO_ANCESTRY]


def constraint(tmp_path: Path, kind: str, params: dict[str, Any], match: Any = None) -> list[Finding]:
    spec: dict[str, Any] = {"severity": "high", "parameters": params}
    if match is not None:
        spec["match"] = match
    doc = {"apiVersion": "constraints.gatekeeper.sh/v1alpha1", "kind": kind, "metadata": {"name": "c"}, "spec": spec}
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(doc))
    return run(f)


def run(f: Path, assets: list[Asset] | None = None) -> list[Finding]:
    result = Engine(load_file(f)).evaluate(assets if assets is not None else ALL)
    assert not result.errors, result.errors
    assert len({x.id for x in result.findings}) == len(result.findings)
    return result.findings


def names(findings: list[Finding]) -> set[str]:
    return {f.asset.rsplit("/", 1)[-1] for f in findings}


BAN_OWNER = ("GCPIAMAllowBanRolesConstraintV1", {"mode": "ban", "roles": ["roles/owner"]})


# -- match (the GCP target) --------------------------------------------------------------------------------------------
def test_absent_match_means_every_ancestry(tmp_path: Path) -> None:
    assert names(constraint(tmp_path, *BAN_OWNER)) == {"100", "200", "300", "301", "900", "loose"}


def test_ancestries_match_the_ancestry_path(tmp_path: Path) -> None:
    found = constraint(tmp_path, *BAN_OWNER, match={"ancestries": ["organizations/100/folders/200/**"]})
    assert names(found) == {"300"}  # the folder's own path has no segment after 200/; 301 is not below it
    found = constraint(tmp_path, *BAN_OWNER, match={"ancestries": ["organizations/100/**"]})
    assert names(found) == {"200", "300", "301"}
    found = constraint(tmp_path, *BAN_OWNER, match={"ancestries": ["organizations/*/projects/*"]})
    assert names(found) == {"301", "900"}  # `*` stops at `/`


def test_singular_ancestry_spelling_is_read(tmp_path: Path) -> None:
    found = constraint(tmp_path, *BAN_OWNER, match={"ancestries": ["organization/100/folder/200/**"]})
    assert names(found) == {"300"}


def test_excluded_ancestries(tmp_path: Path) -> None:
    found = constraint(tmp_path, *BAN_OWNER, match={"ancestries": ["organizations/100/**"],
                                                    "excludedAncestries": ["organizations/100/folders/**"]})
    assert names(found) == {"301"}


@pytest.mark.parametrize("where", ["top", "gcp"])
def test_target_and_exclude_are_the_older_names(tmp_path: Path, where: str) -> None:
    m: dict[str, Any] = {"target": ["organizations/100/**"], "exclude": ["organizations/100/projects/301"]}
    found = constraint(tmp_path, *BAN_OWNER, match=m if where == "top" else {"gcp": m})
    assert names(found) == {"200", "300"}


# -- GCPIAMAllowedBindingsConstraintV3 ---------------------------------------------------------------------------------
ALLOWED = "GCPIAMAllowedBindingsConstraintV3"


def test_allowed_bindings_asset_type_is_compared_exactly(tmp_path: Path) -> None:
    clause("gcp_iam_allowed_bindings.yaml", "params.assetType == asset.asset_type")
    base = {"mode": "denylist", "role": "roles/owner", "members": ["user:**"]}
    assert names(constraint(tmp_path, ALLOWED, {**base, "assetType": PROJECT})) == {"300", "301", "900"}
    assert constraint(tmp_path, ALLOWED, {**base, "assetType": "cloudresourcemanager.googleapis.com/*"}) == []


def test_allowed_bindings_empty_asset_names_means_all(tmp_path: Path) -> None:
    clause("gcp_iam_allowed_bindings.yaml", 'include_list := lib.get_default(params, "assetNames", [])',
           "include_list == []")
    base = {"mode": "denylist", "role": "roles/owner", "members": ["user:**"]}
    everything = names(constraint(tmp_path, ALLOWED, base))
    assert len(everything) == 6 and names(constraint(tmp_path, ALLOWED, {**base, "assetNames": []})) == everything
    only = constraint(tmp_path, ALLOWED, {**base, "assetNames": [f"{CRM}projects/*"]})
    assert names(only) == {"300", "301", "900"}


def test_allowed_bindings_members_empty_or_absent(tmp_path: Path) -> None:
    """`params.members[_]` over an empty or absent list finds no match: in allowlist mode (desired count 1) every
    member of a matching binding is a violation, in denylist mode (desired 0) none is."""
    clause("gcp_iam_allowed_bindings.yaml", 'mode := lib.get_default(params, "mode", "allowlist")',
           "count(matches_found) != desired_count")
    allow_none = constraint(tmp_path, ALLOWED, {"role": "roles/owner", "members": []})
    assert len(allow_none) == 7  # every owner of the six assets (project 300 has two)
    assert len(constraint(tmp_path, ALLOWED, {"role": "roles/owner"})) == 7
    assert constraint(tmp_path, ALLOWED, {"mode": "denylist", "role": "roles/owner", "members": []}) == []


def test_allowed_bindings_member_globs(tmp_path: Path) -> None:
    clause("gcp_iam_allowed_bindings.yaml", 'config_pattern(old_pattern) = "**"', "glob.match(m, [], member)")
    # a lone `*` is every member; otherwise `.` separates, so `*` does not cross the dot of example.com
    assert constraint(tmp_path, ALLOWED, {"role": "roles/owner", "members": ["*"]}) == []
    found = constraint(tmp_path, ALLOWED, {"role": "roles/owner", "members": ["user:*@example.com"]})
    assert {f.details["member"] for f in found} == {"user:eve@gmail.com", "user:mallory@evil.com",
                                                     "user:x@other.example"}
    dotted = asset(f"{CRM}projects/6", PROJECT, "organizations/100/projects/6",
                   ("roles/owner", ["user:first.last@example.com", "user:solo@example.com"]))
    f = tmp_path / "c.yaml"  # written by the calls above: the same constraint
    assert {x.details["member"] for x in run(f, [dotted])} == {"user:first.last@example.com"}


def test_allowed_bindings_role_glob_stops_at_slash(tmp_path: Path) -> None:
    clause("gcp_iam_allowed_bindings.yaml", 'glob.match(params.role, ["/"], role)')
    found = constraint(tmp_path, ALLOWED, {"mode": "denylist", "role": "roles/*", "members": ["group:**"]})
    assert {f.details["member"] for f in found} == {"group:ml@example.com"}


# -- GCPIAMAllowBanRolesConstraintV1 -----------------------------------------------------------------------------------
def test_allow_ban_roles_mode_defaults_to_allow(tmp_path: Path) -> None:
    clause("gcp_iam_allow_ban_roles_v1.yaml", 'mode := lib.get_default(params, "mode", "allow")')
    found = constraint(tmp_path, "GCPIAMAllowBanRolesConstraintV1", {"roles": ["roles/owner"]})
    assert {f.details["role"] for f in found} == {"roles/editor"}
    found = constraint(tmp_path, "GCPIAMAllowBanRolesConstraintV1", {"mode": "ban", "roles": ["roles/e*"]})
    assert {f.details["role"] for f in found} == {"roles/editor"}


# -- GCPIAMAllowedPolicyMemberDomainsConstraintV2 ----------------------------------------------------------------------
DOMAINS = "GCPIAMAllowedPolicyMemberDomainsConstraintV2"


def test_member_domains_sub_domains_and_type_allowlist(tmp_path: Path) -> None:
    clause("gcp_iam_allowed_policy_member_domains.yaml", 're_match(sprintf("[:@.]%v$", [domains[_]]), member)',
           're_match(sprintf("[:@]%v$", [domains[_]]), member)', 'startswith(member, sprintf("%v:", [member_type]))')
    sub = asset(f"{CRM}projects/5", PROJECT, "organizations/100/projects/5",
                ("roles/viewer", ["user:a@eu.example.com", "user:b@example.com", "domain:example.com",
                                  "projectViewer:p5", "allUsers"]))
    f = tmp_path / "d.yaml"

    def members(params: dict[str, Any]) -> set[str]:
        doc = {"apiVersion": "constraints.gatekeeper.sh/v1alpha1", "kind": DOMAINS, "metadata": {"name": "d"},
               "spec": {"parameters": params}}
        f.write_text(yaml.safe_dump(doc))
        return {x.details["member"] for x in run(f, [sub])}

    assert members({"domains": ["example.com"]}) == {"allUsers"}
    assert members({"domains": ["example.com"], "allow_sub_domains": False}) == {"user:a@eu.example.com", "allUsers"}
    assert members({"domains": ["example.com"], "member_type_allowlist": []}) == {"projectViewer:p5", "allUsers"}


# -- GCPIAMRequiredBindingsConstraintV1 --------------------------------------------------------------------------------
REQUIRED = "GCPIAMRequiredBindingsConstraintV1"


def test_required_bindings_reports_per_binding(tmp_path: Path) -> None:
    """`binding := asset.iam_policy.bindings[_]` with `params_member := params.members[_]`: each binding of the
    role missing a required member is one violation; a policy without such a binding gives none."""
    clause("gcp_iam_required_bindings_v1.yaml", "binding := asset.iam_policy.bindings[_]",
           "params_member := params.members[_]", "no_required_match(params_member, binding)")
    two = asset(f"{CRM}projects/7", PROJECT, "organizations/100/projects/7",
                ("roles/owner", ["user:alice@example.com"]), conditional=("roles/owner", ["user:bob@example.com"]))
    f = tmp_path / "r.yaml"
    doc = {"apiVersion": "constraints.gatekeeper.sh/v1alpha1", "kind": REQUIRED, "metadata": {"name": "r"},
           "spec": {"parameters": {"role": "roles/owner", "members": ["group:break-glass@example.com"]}}}
    f.write_text(yaml.safe_dump(doc))
    found = run(f, [two, asset(f"{CRM}projects/8", PROJECT, "organizations/100/projects/8")])
    assert len(found) == 2 and {x.details.get("condition") for x in found} == {None, "temp"}
    assert {x.details["member"] for x in found} == {"group:break-glass@example.com"}
    doc["spec"]["parameters"]["members"] = ["user:*@example.com"]  # satisfied by each binding's own member
    f.write_text(yaml.safe_dump(doc))
    assert run(f, [two]) == []


def test_required_bindings_empty_members_and_asset_names(tmp_path: Path) -> None:
    clause("gcp_iam_required_bindings_v1.yaml", 'include_list := lib.get_default(params, "assetNames", [])')
    assert constraint(tmp_path, REQUIRED, {"role": "roles/owner", "members": []}) == []  # nothing is required
    base = {"role": "roles/owner", "members": ["group:break-glass@example.com"], "assetNames": []}
    assert len(names(constraint(tmp_path, REQUIRED, base))) == 6
    assert names(constraint(tmp_path, REQUIRED, {**base, "assetType": ORG})) == {"100"}


# -- GCPIAMAuditLogConstraintV1 ----------------------------------------------------------------------------------------
AUDIT = "GCPIAMAuditLogConstraintV1"


def cfg(service: str, *log_types: Any, exempt: dict[Any, list[str]] | None = None) -> dict[str, Any]:
    exempt = exempt or {}
    return {"service": service, "auditLogConfigs": [
        {"logType": t, **({"exemptedMembers": exempt[t]} if t in exempt else {})} for t in log_types]}


def audited(num: str, *configs: dict[str, Any]) -> Asset:
    return asset(f"{CRM}projects/{num}", PROJECT, f"organizations/100/projects/{num}", audit=list(configs))


def test_audit_log_one_violation_per_asset_none_of_whose_configs_satisfies(tmp_path: Path) -> None:
    clause("gcp_iam_audit_log.yaml", "count(expected_audit_configs) == 0", "config.service == params.services[_]",
           "missing_log_types := want_log_types - got_log_types")
    assets = [
        audited("1", cfg("allServices", "ADMIN_READ", "DATA_READ", "DATA_WRITE")),  # satisfies
        audited("2", cfg("allServices", "ADMIN_READ"), cfg("storage.googleapis.com", 1, 2, 3)),  # storage does
        audited("3", cfg("allServices", "ADMIN_READ"), cfg("storage.googleapis.com", "DATA_READ")),  # none
        audited("4"),  # no audit config
        audited("5", cfg("bigquery.googleapis.com", "ADMIN_READ", "DATA_READ", "DATA_WRITE")),  # not listed
    ]
    f = tmp_path / "a.yaml"
    doc = {"apiVersion": "constraints.gatekeeper.sh/v1alpha1", "kind": AUDIT, "metadata": {"name": "a"},
           "spec": {"parameters": {"services": ["allServices", "storage.googleapis.com"],
                                   "log_types": ["ADMIN_READ", "DATA_READ", "DATA_WRITE"]}}}
    f.write_text(yaml.safe_dump(doc))
    found = run(f, assets)
    assert sorted(names(found)) == ["3", "4", "5"] and len(found) == 3
    three = next(x for x in found if x.asset.endswith("/3"))
    assert three.details["gaps"]["storage.googleapis.com"] == ["ADMIN_READ not enabled", "DATA_WRITE not enabled"]


def test_audit_log_allowed_exemptions_absent_empty_or_listed(tmp_path: Path) -> None:
    clause("gcp_iam_audit_log.yaml", "not params.allowed_exemptions",
           "unexpected_exemptions := got_exemptions - want_exemptions")
    p = audited("1", cfg("allServices", "ADMIN_READ", "DATA_READ", exempt={"DATA_READ": ["user:bulk@example.com"]}))
    f = tmp_path / "a.yaml"

    def count(extra: dict[str, Any]) -> int:
        doc = {"apiVersion": "constraints.gatekeeper.sh/v1alpha1", "kind": AUDIT, "metadata": {"name": "a"},
               "spec": {"parameters": {"services": ["allServices"], "log_types": ["ADMIN_READ", "DATA_READ"],
                                       **extra}}}
        f.write_text(yaml.safe_dump(doc))
        return len(run(f, [p]))

    assert count({}) == 0  # absent: any exemption is accepted
    assert count({"allowed_exemptions": []}) == 1  # an empty list accepts none
    assert count({"allowed_exemptions": ["user:bulk@example.com"]}) == 0
