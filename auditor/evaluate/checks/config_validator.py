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
from auditor.evaluate.policy import asset_audit_log_configs, asset_bindings, binding_key, known_log_types
from auditor.evaluate.registry import Context, Params, Violation, check
from auditor.model import Asset
from auditor.remedies import RemoveBinding

CONVENIENCE_DEFAULT = ["projectOwner", "projectEditor", "projectViewer"]


class _Scoped(Params):
    assetType: str | None = Field(default=None, description="Only assets of this type (glob).")
    assetNames: list[str] | None = Field(default=None, description="Only assets whose name matches (globs).")

    def in_scope(self, asset: Asset) -> bool:
        if self.assetType is not None and not glob_match(self.assetType, asset.asset_type):
            return False
        return self.assetNames is None or any_match(self.assetNames, asset.name)


# -- GCPIAMAllowedBindingsConstraintV3 ---------------------------------------------------------------------------------
class AllowedBindingsParams(_Scoped):
    mode: Literal["allowlist", "denylist", "whitelist", "blacklist"] = "allowlist"
    role: str = Field(min_length=1, description="Role glob.")
    members: list[str] = Field(description="Member globs.")

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
    projectEditor, projectViewer) are skipped. Details: `member`, `roles` (every role it holds here).

    ```yaml
    - id: members-in-company-domain
      check: config_validator.member_domains
      severity: high
      params: {domains: [example.com], allow_sub_domains: true}
    ```
    """
    roles: dict[str, list[str]] = {}
    for b in asset_bindings(asset):
        for m in b.members:
            roles.setdefault(m, [])
            if b.role not in roles[m]:
                roles[m].append(b.role)
    for m, held in roles.items():
        mtype = m.split(":", 1)[0] if ":" in m else None
        if mtype is not None and mtype in params.member_type_allowlist:
            continue
        if _in_domain(m, params.domains, params.allow_sub_domains):
            continue
        yield Violation(
            f"{m} is not in the allowed domains {', '.join(params.domains)}", m, {"member": m, "roles": held}
        )


# -- GCPIAMRequiredBindingsConstraintV1 --------------------------------------------------------------------------------
class RequiredBindingsParams(_Scoped):
    role: str = Field(min_length=1, description="Role glob.")
    members: list[str] = Field(min_length=1, description="Required members (globs).")


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
    allowed_exemptions: list[str] = Field(default_factory=list)

    _known = field_validator("log_types")(known_log_types)


@check("config_validator.audit_log", params=AuditLogParams, iam=True, asset_types=HIERARCHY_TYPES)
def audit_log(asset: Asset, params: AuditLogParams, ctx: Context) -> Iterator[Violation]:
    """Audit log types every listed service must enable (GCPIAMAuditLogConstraintV1).

    GCPIAMAuditLogConstraintV1: on organizations, folders and projects, each listed service that does not
    enable a listed log type is one violation per (service, log type), services compared literally (a config for
    `allServices` satisfies only `allServices`); each exempted member of a listed service that is not in
    `allowed_exemptions` is one violation per (service, log type, member). Reads both spellings and numeric log
    types (1 ADMIN_READ, 2 DATA_WRITE, 3 DATA_READ). iam.audit_logging is the variant that understands
    allServices and inheritance.

    ```yaml
    - id: audit-everything
      check: config_validator.audit_log
      severity: medium
      params: {services: [allServices], log_types: [ADMIN_READ, DATA_READ, DATA_WRITE], allowed_exemptions: []}
    ```
    """
    configs = asset_audit_log_configs(asset)
    enabled = {(c.service, c.log_type) for c in configs}
    for service in params.services:
        for log_type in params.log_types:
            if (service, log_type) not in enabled:
                yield Violation(
                    f"{log_type} audit logs are not enabled for {service}",
                    f"missing|{service}|{log_type}",
                    {"service": service, "log_type": log_type, "change": "missing"},
                )
    for c in configs:
        if c.service not in params.services:
            continue
        for m in c.exempted_members:
            if any_member_match(params.allowed_exemptions, m):
                continue
            yield Violation(
                f"{m} is exempted from {c.log_type} audit logs of {c.service} and is not an allowed exemption",
                f"exempt|{c.service}|{c.log_type}|{m}",
                {"service": c.service, "log_type": c.log_type, "member": m},
            )
