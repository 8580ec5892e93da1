"""IAM checks: they read the IAM policy of any asset that carries one."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from auditor.evaluate.globs import any_match, any_member_match
from auditor.evaluate.policy import binding_details, binding_key, bindings
from auditor.evaluate.registry import Context, Params, Violation, check
from auditor.model import Asset


class ForbiddenMembersParams(Params):
    members: list[str] = Field(min_length=1, description="Member globs (`.` separates; lone `*` is everything).")
    roles: list[str] = Field(default_factory=lambda: ["**"], description="Only bindings of these role globs.")


@check("iam.forbidden_members", params=ForbiddenMembersParams, iam=True)
def forbidden_members(asset: Asset, params: ForbiddenMembersParams, ctx: Context) -> Iterator[Violation]:
    """Members that must never appear in an IAM policy.

    ```yaml
    - id: iam-no-public-members
      check: iam.forbidden_members
      severity: critical
      params: {members: [allUsers, allAuthenticatedUsers, "user:*@gmail.com"]}
    ```
    """
    for b in bindings(asset.iam_policy):
        if not any_match(params.roles, b.role):
            continue
        for m in b.members:
            if any_member_match(params.members, m):
                yield Violation(f"{m} holds {b.role}", binding_key(b, m), binding_details(b, m))


class BannedRolesParams(Params):
    roles: list[str] = Field(min_length=1, description="Role globs that must not be granted.")
    except_members: list[str] = Field(default_factory=list, description="Member globs allowed to hold them.")


@check("iam.banned_roles", params=BannedRolesParams, iam=True)
def banned_roles(asset: Asset, params: BannedRolesParams, ctx: Context) -> Iterator[Violation]:
    """Roles that must not be granted on the matched assets (one finding per member).

    ```yaml
    - id: iam-no-primitive-roles-on-projects
      check: iam.banned_roles
      severity: high
      match: {asset_types: [cloudresourcemanager.googleapis.com/Project]}
      params: {roles: [roles/owner, roles/editor]}
    ```
    """
    for b in bindings(asset.iam_policy):
        if not any_match(params.roles, b.role):
            continue
        for m in b.members:
            if params.except_members and any_member_match(params.except_members, m):
                continue
            yield Violation(f"{m} holds banned role {b.role}", binding_key(b, m), binding_details(b, m))
