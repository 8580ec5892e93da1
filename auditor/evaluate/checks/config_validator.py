"""Stage: evaluate. Checks with the semantics of the Config Validator (Forseti policy-library) IAM templates.

Constraint files of the supported kinds (see auditor.evaluate.constraints) become rules on these checks, with
the constraint's `spec.parameters` as params, spelled as in the templates (`assetType`, `allow_sub_domains`...).
The checks can also be named directly in a rule file.

Glob rules as in the templates: in roles and asset names `*` stops at `/` and `**` crosses it; in members the
separator is `.` (`user:*@example.com` does not match `user:a.b@example.com`) and a lone `*` matches everything.
One deliberate difference: a lone `*` as a role matches every role here (the templates' glob would match none).
Conditional bindings are evaluated like the others; their findings carry the condition title in details and key.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, field_validator

from auditor.evaluate.checks.iam import HIERARCHY_TYPES, member_violation
from auditor.evaluate.globs import any_match, any_member_match, glob_match, member_match
from auditor.evaluate.policy import (
    AuditLogConfig,
    asset_audit_log_configs,
    asset_bindings,
    binding_key,
    known_log_types,
)
from auditor.evaluate.registry import Context, Params, Violation, check
from auditor.model import Asset
from auditor.remedies import RemoveBinding, RemoveMember

CONVENIENCE_DEFAULT = ["projectOwner", "projectEditor", "projectViewer"]


class _Scoped(Params):
    assetType: str | None = Field(
        default=None, description="Only assets of exactly this type (the template compares with `==`)."
    )
    assetNames: list[str] = Field(
        default_factory=list, description="Only assets whose name matches one of these globs; empty or absent: all."
    )

    def in_scope(self, asset: Asset) -> bool:
        # check_asset_type: `params.assetType == asset.asset_type`; is_included: an empty list includes every asset
        if self.assetType is not None and self.assetType != asset.asset_type:
            return False
        return not self.assetNames or any_match(self.assetNames, asset.name)


# -- GCPIAMAllowedBindingsConstraintV3 ---------------------------------------------------------------------------------
class AllowedBindingsParams(_Scoped):
    mode: Literal["allowlist", "denylist", "whitelist", "blacklist"] = "allowlist"
    role: str = Field(min_length=1, description="Role glob.")
    members: list[str] = Field(
        default_factory=list,
        description="Member globs. Empty or absent, as in the template: in allowlist mode no member is allowed, in "
        "denylist mode none is denied.",
    )

    @property
    def deny(self) -> bool:
        return self.mode in ("denylist", "blacklist")


@check("config_validator.allowed_bindings", params=AllowedBindingsParams, iam=True)
def allowed_bindings(asset: Asset, params: AllowedBindingsParams, ctx: Context) -> Iterator[Violation]:
    """Members allowed or denied in the roles matching a glob (GCPIAMAllowedBindingsConstraintV3).

    GCPIAMAllowedBindingsConstraintV3: for each binding whose role matches `role` and each of its members, in
    `denylist` mode a member matching any of `members` is a violation; in `allowlist` mode (the default) a member
    matching none is. Optional `assetType` and `assetNames` narrow the assets.

    ```yaml
    - id: only-corp-users-own-projects
      check: config_validator.allowed_bindings
      severity: high
      params: {mode: allowlist, role: roles/owner, members: ["user:*@example.com", "group:*@example.com"]}
    ```
    """
    if not params.in_scope(asset):
        return
    for b in asset_bindings(asset):
        if not glob_match(params.role, b.role):
            continue
        for m in b.members:
            hit = any_member_match(params.members, m)
            if hit == params.deny:
                why = "is denied" if params.deny else "is not allowed"
                yield member_violation(b, m, f"{m} {why} in {b.role}")


# -- GCPIAMAllowBanRolesConstraintV1 -----------------------------------------------------------------------------------
class AllowBanRolesParams(Params):
    mode: Literal["allow", "ban", "allowlist", "denylist", "whitelist", "blacklist"] = "allow"
    roles: list[str] = Field(description="Role globs.")

    @property
    def ban(self) -> bool:
        return self.mode in ("ban", "denylist", "blacklist")


@check("config_validator.allow_ban_roles", params=AllowBanRolesParams, iam=True)
def allow_ban_roles(asset: Asset, params: AllowBanRolesParams, ctx: Context) -> Iterator[Violation]:
    """Roles allowed or banned (Config Validator GCPIAMAllowBanRolesConstraintV1).

    GCPIAMAllowBanRolesConstraintV1: each binding whose role matches `roles` (mode `ban`) or matches none
    (mode `allow`, the default) is one violation (details `role`, `members`, `condition`; remediation
    iam.remove_binding).

    ```yaml
    - id: ban-primitive-roles
      check: config_validator.allow_ban_roles
      severity: high
      params: {mode: ban, roles: [roles/owner, roles/editor]}
    ```
    """
    for b in asset_bindings(asset):
        if any_match(params.roles, b.role) != params.ban:
            continue
        why = "is banned" if params.ban else "is not an allowed role"
        when = f" (condition: {b.condition_title})" if b.condition else ""
        details: dict[str, Any] = {"role": b.role, "members": list(b.members)}
        if b.condition:
            details["condition"] = b.condition_title
        yield Violation(f"binding of {b.role} {why}{when}", binding_key(b), details,
                        (RemoveBinding(b.role, b.condition),))


# -- GCPIAMAllowedPolicyMemberDomainsConstraintV2 ----------------------------------------------------------------------
class MemberDomainsParams(Params):
    domains: list[str] = Field(min_length=1)
    allow_sub_domains: bool = True
    member_type_allowlist: list[str] = Field(default_factory=lambda: list(CONVENIENCE_DEFAULT))


def _in_domain(member: str, domains: list[str], sub: bool) -> bool:
    for d in domains:
        if member.endswith("@" + d) or member.endswith(":" + d) or (sub and member.endswith("." + d)):
            return True
    return False


@check("config_validator.member_domains", params=MemberDomainsParams, iam=True)
def member_domains(asset: Asset, params: MemberDomainsParams, ctx: Context) -> Iterator[Violation]:
    """Members must belong to the listed domains (GCPIAMAllowedPolicyMemberDomainsConstraintV2).

    GCPIAMAllowedPolicyMemberDomainsConstraintV2: each distinct member of the policy whose text does not end with
    `@domain` or `:domain` (or, with `allow_sub_domains`, the default, `.domain`) for some listed domain is one
    violation. Members whose type (the text before `:`) is in `member_type_allowlist` (default projectOwner,
    projectEditor, projectViewer) are skipped. Details: `member`, `roles` (every role it holds here). The fix
    offered (`iam.remove_member`) takes the member out of every binding that lists it, each binding's condition
    kept, so a conditional binding loses that member and nothing else.

    ```yaml
    - id: members-in-company-domain
      check: config_validator.member_domains
      severity: high
      params: {domains: [example.com], allow_sub_domains: true}
    ```
    """
    roles: dict[str, list[str]] = {}
    held_in: dict[str, list[RemoveMember]] = {}  # the member out of each binding (role and condition) that lists it
    for b in asset_bindings(asset):
        for m in b.members:
            roles.setdefault(m, [])
            if b.role not in roles[m]:
                roles[m].append(b.role)
            out = RemoveMember(b.role, m, b.condition)
            if out not in held_in.setdefault(m, []):
                held_in[m].append(out)
    for m, held in roles.items():
        mtype = m.split(":", 1)[0] if ":" in m else None
        if mtype is not None and mtype in params.member_type_allowlist:
            continue
        if _in_domain(m, params.domains, params.allow_sub_domains):
            continue
        yield Violation(
            f"{m} is not in the allowed domains {', '.join(params.domains)}", m, {"member": m, "roles": held},
            tuple(held_in[m]),
        )


# -- GCPIAMRequiredBindingsConstraintV1 --------------------------------------------------------------------------------
class RequiredBindingsParams(_Scoped):
    role: str = Field(min_length=1, description="Role glob.")
    members: list[str] = Field(
        default_factory=list, description="Required members (globs); empty, as in the template, requires none."
    )


@check("config_validator.required_bindings", params=RequiredBindingsParams, iam=True)
def required_bindings(asset: Asset, params: RequiredBindingsParams, ctx: Context) -> Iterator[Violation]:
    """Members the bindings of a role must include (GCPIAMRequiredBindingsConstraintV1).

    GCPIAMRequiredBindingsConstraintV1: for each binding whose role matches `role`, each required member that
    matches none of the binding's members is one violation (`change: missing`). A policy with no binding of the
    role gives none, as in the template.

    ```yaml
    - id: security-team-reviews-everything
      check: config_validator.required_bindings
      severity: medium
      params: {role: roles/iam.securityReviewer, members: ["group:security@example.com"]}
    ```
    """
    if not params.in_scope(asset):
        return
    for b in asset_bindings(asset):
        if not glob_match(params.role, b.role):
            continue
        for required in params.members:
            if any(member_match(required, m) for m in b.members):
                continue
            yield member_violation(b, required, f"{required} is required in {b.role} and is missing", change="missing")


# -- GCPIAMAuditLogConstraintV1 ----------------------------------------------------------------------------------------
class AuditLogParams(Params):
    services: list[str] = Field(min_length=1)
    log_types: list[str] = Field(min_length=1)
    allowed_exemptions: list[str] | None = Field(
        default=None,
        description="Members that may be exempted. Absent: any exemption is accepted; a list (even empty): an "
        "exempted member outside it disqualifies the service's config, as in the template.",
    )

    _known = field_validator("log_types")(known_log_types)


def _service_gaps(configs: tuple[AuditLogConfig, ...], service: str, params: AuditLogParams) -> list[str]:
    """Why the audit config of one listed service does not satisfy the constraint (empty when it does)."""
    mine = [c for c in configs if c.service == service]
    if not mine:
        return ["no audit config"]
    got = {c.log_type for c in mine}
    out = [f"{t} not enabled" for t in params.log_types if t not in got]
    if params.allowed_exemptions is not None:
        for c in mine:
            out.extend(
                f"{m} exempted from {c.log_type}"
                for m in c.exempted_members
                if not any_member_match(params.allowed_exemptions, m)
            )
    return out


@check("config_validator.audit_log", params=AuditLogParams, iam=True, asset_types=HIERARCHY_TYPES)
def audit_log(asset: Asset, params: AuditLogParams, ctx: Context) -> Iterator[Violation]:
    """Audit logs an organization, folder or project must enable (GCPIAMAuditLogConstraintV1).

    GCPIAMAuditLogConstraintV1, as its rego reads: an organization, folder or project is one violation when none
    of its audit configs satisfies the constraint. A config satisfies it when its service is one of `services`
    (compared literally: a config for `allServices` is the `allServices` entry, not every service), it enables
    every one of `log_types`, and, when `allowed_exemptions` is given, exempts no member outside it. Details name
    each listed service's gaps. Reads both spellings and numeric log types (1 ADMIN_READ, 2 DATA_WRITE,
    3 DATA_READ). One deliberate difference: a log config without `exemptedMembers` exempts nobody (the rego,
    reading an absent field, would reject such a config). iam.audit_logging is the variant that checks every
    service and understands allServices and inheritance.

    ```yaml
    - id: audit-everything
      check: config_validator.audit_log
      severity: medium
      params: {services: [allServices], log_types: [ADMIN_READ, DATA_READ, DATA_WRITE], allowed_exemptions: []}
    ```
    """
    configs = asset_audit_log_configs(asset)
    gaps: dict[str, list[str]] = {}
    for service in params.services:
        why = _service_gaps(configs, service, params)
        if not why:
            return
        gaps[service] = why
    listed = ", ".join(params.services)
    detail = "; ".join(f"{svc}: {', '.join(why)}" for svc, why in gaps.items())
    yield Violation(
        f"IAM policy for {asset.name} does not have correct audit logs enabled in service(s) {listed} ({detail})",
        "audit-configs",
        {"services": list(params.services), "log_types": list(params.log_types), "gaps": gaps},
    )
