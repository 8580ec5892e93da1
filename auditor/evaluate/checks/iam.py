"""Stage: evaluate. IAM checks: they read the IAM policy of any asset that carries one.

Conventions shared by every check here:
- member globs use `.` as the separator (`user:*@example.com` does not match `user:a.b@example.com`; use
  `user:**@example.com`), a lone `*` matches every member; role and asset-name globs use `/`;
- a conditional binding is a binding of its own: findings on it carry the condition title in their details and
  in their key, so a conditional and an unconditional grant of one role to one member are two findings;
- findings on a member carry details `role`, `member` and, when the binding is conditional, `condition`
  (its title); desired-state findings add `change: missing | extra`. The key is `role|member[|condition]`;
- roles Google grants its own service agents and default service accounts (see auditor.evaluate.principals)
  are not reported by the role checks unless `allow_google_managed: false`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from auditor.evaluate.globs import compile_globs
from auditor.evaluate.policy import (
    LOG_TYPES,
    Binding,
    asset_audit_log_configs,
    asset_bindings,
    binding_details,
    binding_key,
    bindings,
    known_log_types,
)
from auditor.evaluate.principals import (
    CONVENIENCE_TYPES,
    default_service_account_kind,
    domain_in,
    google_grants,
    google_managed_member,
    is_public,
    is_service_agent,
    parse_member,
    service_account_project,
    service_account_project_of,
)
from auditor.evaluate.registry import Context, Outcome, Params, Prefilter, Unevaluated, Violation, check
from auditor.model import Asset
from auditor.remedies import AddMember, RemoveMember
from auditor.vocabulary import HIERARCHY_TYPES, ORGANIZATION, PROJECT

SERVICE_ACCOUNT_KEY = "iam.googleapis.com/ServiceAccountKey"

ADMIN_ROLE_GLOBS = ["roles/owner", "roles/editor", "roles/*admin", "roles/*Admin"]
IMPERSONATION_ROLES = ["roles/iam.serviceAccountUser", "roles/iam.serviceAccountTokenCreator"]


def any_match(patterns: Sequence[str], text: str) -> bool:
    """Path globs (roles, asset names, project ids): `*` stops at `/`."""
    m = compile_globs(tuple(patterns), "/")
    return m is not None and m.match(text) is not None


def any_member_match(patterns: Sequence[str], member: str) -> bool:
    """Member globs: `*` stops at `.`, a lone `*` is every member."""
    m = compile_globs(tuple(patterns), ".")
    return m is not None and m.match(member) is not None


def grants(asset: Asset, roles: Sequence[str]) -> Iterator[tuple[Binding, str]]:
    """(binding, member) for every member of the asset's bindings whose role matches one of the role globs."""
    for b in asset_bindings(asset):
        if any_match(roles, b.role):
            for m in b.members:
                yield b, m


def _lines(values: list[str]) -> str | None:
    text = "\n".join(values)
    # A value with a line break (never a real member or role) cannot be searched for in lines: None, run the rules.
    # The text has one line break fewer than values unless a value holds one (counted in C, not per value).
    return text if text.count("\n") < max(len(values), 1) else None


def _members_text(asset: Asset) -> str | None:
    return _lines([m for b in asset_bindings(asset) for m in b.members])


def _roles_text(asset: Asset) -> str | None:
    return _lines([b.role for b in asset_bindings(asset)])


MEMBER_LINES = "iam.members"
ROLE_LINES = "iam.roles"


def members_prefilter(globs: Callable[[Any], Sequence[str] | None]) -> Prefilter:
    """For a check that reports only members matching `globs(params)`."""
    return Prefilter(MEMBER_LINES, _members_text, globs, ".")


def roles_prefilter(globs: Callable[[Any], Sequence[str] | None]) -> Prefilter:
    """For a check that reports only on bindings whose role matches `globs(params)`."""
    return Prefilter(ROLE_LINES, _roles_text, globs, "/")


def _when(b: Binding) -> str:
    return f" (condition: {b.condition_title})" if b.condition else ""


def member_violation(b: Binding, member: str, message: str, **extra: Any) -> Violation:
    details = binding_details(b, member)
    details.update(extra)
    return Violation(message + _when(b), binding_key(b, member), details, (RemoveMember(b.role, member, b.condition),))


class MemberFilter(Params):
    except_members: list[str] = Field(default_factory=list, description="Member globs never reported.")
    allow_google_managed: bool = Field(
        default=True, description="Skip the roles Google grants its own service agents and default service accounts."
    )

    def skipped(self, member: str, role: str) -> bool:
        if self.allow_google_managed and google_grants(member, role):
            return True
        return bool(self.except_members) and any_member_match(self.except_members, member)


# -- members ----------------------------------------------------------------------------------------------------------
class ForbiddenMembersParams(Params):
    members: list[str] = Field(min_length=1, description="Member globs (`.` separates; lone `*` is everything).")
    roles: list[str] = Field(default_factory=lambda: ["**"], description="Only bindings of these role globs.")
    except_members: list[str] = Field(default_factory=list, description="Member globs never reported.")


@check(
    "iam.forbidden_members",
    params=ForbiddenMembersParams,
    iam=True,
    prefilter=members_prefilter(lambda p: p.members),
)
def forbidden_members(asset: Asset, params: ForbiddenMembersParams, ctx: Context) -> Iterator[Violation]:
    """Members that must never appear in an IAM policy (a deny list of member globs), in any role or in the listed ones.

    ```yaml
    - id: iam-no-public-members
      check: iam.forbidden_members
      severity: critical
      params:
        members: [allUsers, allAuthenticatedUsers, "user:**@gmail.com"]   # `**` crosses the dots of a.b@gmail.com
        roles: ["**"]                   # optional: only bindings of these role globs
        except_members: []              # optional member globs
    ```
    """
    for b, m in grants(asset, params.roles):
        if any_member_match(params.members, m) and not any_member_match(params.except_members, m):
            yield member_violation(b, m, f"{m} holds {b.role}")


class AllowedMembersParams(MemberFilter):
    members: list[str] = Field(min_length=1, description="Member globs allowed in the matching roles.")
    roles: list[str] = Field(default_factory=lambda: ["**"], description="Only bindings of these role globs.")


@check("iam.allowed_members", params=AllowedMembersParams, iam=True)
def allowed_members(asset: Asset, params: AllowedMembersParams, ctx: Context) -> Iterator[Violation]:
    """Only the listed members may hold the matching roles (an allow list of member globs).

    ```yaml
    - id: iam-only-platform-owns-projects
      check: iam.allowed_members
      severity: high
      match: {asset_types: [cloudresourcemanager.googleapis.com/Project]}
      params:
        roles: [roles/owner]
        members: ["group:platform-admins@example.com", "group:break-glass@example.com"]
    ```
    """
    for b, m in grants(asset, params.roles):
        if any_member_match(params.members, m) or params.skipped(m, b.role):
            continue
        yield member_violation(b, m, f"{m} holds {b.role} but is not an allowed member")


class DomainParams(MemberFilter):
    domains: list[str] = Field(default_factory=list, description="Allowed member domains (example.com).")
    allow_sub_domains: bool = Field(default=True, description="a@eu.example.com is in example.com.")
    allow_convenience_members: bool = Field(
        default=True, description="Skip projectOwner:/projectEditor:/projectViewer: (project role holders, no domain)."
    )
    service_account_projects: list[str] = Field(
        default_factory=list, description="Project id globs whose user-managed service accounts are internal."
    )
    allowed_members: list[str] = Field(default_factory=list, description="Member globs allowed from any domain.")
    roles: list[str] = Field(default_factory=lambda: ["**"], description="Only bindings of these role globs.")
    include_public: bool = Field(
        default=True, description="Report allUsers/allAuthenticatedUsers too (false when another rule reports them)."
    )

    @field_validator("domains")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [d.lower().lstrip("@.") for d in v]


_LEFT_OUT = ("", None)  # the traits of a member the params never count as outside


class _Judge:
    """One rule's verdicts on members (iam.allowed_domains, iam.external_members).

    What of a member does not depend on the domains and projects known (whether the params leave it out, its
    domain, its service account's project) is worked out once per member: the same groups and accounts recur in
    thousands of policies. `inside` holds the members known to be inside: domains and projects can only be added
    to, never removed, while it is in use."""

    __slots__ = ("inside", "params", "traits")

    def __init__(self, params: DomainParams) -> None:
        self.params = params
        self.inside: set[str] = set()
        self.traits: dict[str, tuple[str, str | None]] = {}

    def _traits(self, member: str) -> tuple[str, str | None]:
        params = self.params
        parsed = parse_member(member)  # once for every question below
        if (
            (not params.include_public and is_public(member))
            or (params.allow_convenience_members and parsed.type in CONVENIENCE_TYPES)
            or (params.allow_google_managed and google_managed_member(parsed))
            or (params.except_members and any_member_match(params.except_members, member))
            or (params.allowed_members and any_member_match(params.allowed_members, member))
        ):
            return _LEFT_OUT
        return parsed.domain or "", service_account_project_of(member, parsed)

    def outside(self, member: str, domains: AbstractSet[str], projects: AbstractSet[str]) -> bool:
        """Whether a member is outside the domains and projects, for these params (the tests hold this to a plain
        statement of it, question by question)."""
        traits = self.traits.get(member)
        if traits is None:
            if len(self.traits) >= 20_000:
                self.traits.clear()
            traits = self.traits[member] = self._traits(member)
        if traits is _LEFT_OUT:
            return False
        domain, project = traits
        if domain_in(domain, domains, self.params.allow_sub_domains):
            return False
        if project is None:
            return True
        return project not in projects and not any_match(self.params.service_account_projects, project)

    def keep_inside(self, member: str) -> None:
        inside = self.inside
        if len(inside) >= 20_000:
            inside.clear()
        inside.add(member)

    def any_outside(self, asset: Asset, domains: AbstractSet[str], projects: AbstractSet[str]) -> bool:
        """Whether `_domain_violations` would give anything (with the projects known): its first member outside
        found without making the violation."""
        inside = self.inside
        for _, m in grants(asset, self.params.roles):
            if m in inside:
                continue
            if self.outside(m, domains, projects):
                return True
            self.keep_inside(m)
        return False


NO_PROJECTS = (
    "no Project asset in the snapshot: the service accounts of the organization's own projects cannot be told from "
    "external ones (list them in `service_account_projects`, or read the projects too)"
)


def _domain_violations(
    asset: Asset,
    params: DomainParams,
    domains: AbstractSet[str],
    projects: AbstractSet[str],
    judge: _Judge,
    projects_known: bool = True,
) -> Iterator[Outcome]:
    """The members outside, as `judge` (of these params) tells them; the members found inside are added to
    `judge.inside`. Without `projects_known` (the snapshot holds no Project), a project's service account is not
    judged."""
    listed = sorted(domains)
    allowed = ", ".join(listed[:3]) + (f" and {len(listed) - 3} more domains" if len(listed) > 3 else "")
    inside = judge.inside
    for b, m in grants(asset, params.roles):
        if m in inside:
            continue
        if judge.outside(m, domains, projects):
            if not projects_known and service_account_project(m) is not None:
                yield Unevaluated(NO_PROJECTS)
                continue
            parsed = parse_member(m)
            where = f"domain {parsed.domain}" if parsed.domain else "no domain"
            yield member_violation(b, m, f"{m} ({where}) holds {b.role} but is outside {allowed}")
        else:
            judge.keep_inside(m)


def _judge(ctx: Context, params: DomainParams, key: str) -> _Judge:
    found: _Judge = ctx.memo(f"iam.inside.{key}.{id(params)}", lambda: _Judge(params))
    return found


@check("iam.allowed_domains", params=DomainParams, iam=True)
def allowed_domains(asset: Asset, params: DomainParams, ctx: Context) -> Iterator[Outcome]:
    """Members must belong to the listed domains (`user:`, `group:`, `serviceAccount:` e-mails and `domain:`).

    Public members (allUsers, allAuthenticatedUsers) and workforce/workload identity principals have no domain and
    are reported unless allowed by `allowed_members`. Google-managed service agents and default service accounts
    are skipped (`allow_google_managed`), and so are `projectOwner:`-style convenience members
    (`allow_convenience_members`). User-managed service accounts are in the `PROJECT.iam.gserviceaccount.com`
    domain: allow your projects with `service_account_projects`.

    ```yaml
    - id: iam-members-in-company-domains
      check: iam.allowed_domains
      severity: high
      params:
        domains: [example.com, example-research.org]
        allow_sub_domains: true
        service_account_projects: ["ml-*"]
        allowed_members: ["serviceAccount:ci@vendor-build.iam.gserviceaccount.com"]
    ```
    """
    yield from _domain_violations(asset, params, frozenset(params.domains), frozenset(), _judge(ctx, params, "fixed"))


def _org_domain(org: Asset) -> str | None:
    name = str(org.resource.get("displayName") or "").lower()
    return name if "." in name and " " not in name else None  # an organization's display name is its primary domain


def _project_ids(project: Asset) -> Iterator[str]:
    for k in ("projectId", "projectNumber"):
        if project.resource.get(k):
            yield str(project.resource[k])


def _org_index(ctx: Context) -> tuple[frozenset[str], frozenset[str]]:
    def build() -> tuple[frozenset[str], frozenset[str]]:
        domains = {d for org in ctx.assets(ORGANIZATION) if (d := _org_domain(org))}
        projects = {i for p in ctx.assets(PROJECT) for i in _project_ids(p)}
        return frozenset(domains), frozenset(projects)

    result: tuple[frozenset[str], frozenset[str]] = ctx.memo("iam.org_index", build)
    return result


class _OrgSoFar:
    """The organization's domains and projects among the context assets read so far, grown as they stream by."""

    def __init__(self) -> None:
        self.domains: frozenset[str] = frozenset()  # one or two: replaced when one is added
        self.projects: set[str] = set()

    def update(self, ctx: Context) -> _OrgSoFar:
        for org in ctx.arrived(ORGANIZATION, "iam.org_so_far"):
            if d := _org_domain(org):
                self.domains = self.domains | {d}
        for project in ctx.arrived(PROJECT, "iam.org_so_far"):
            self.projects.update(_project_ids(project))
        return self


def _screen_external(asset: Asset, params: DomainParams, ctx: Context) -> bool:
    """Whether a member is outside the domains and projects seen so far: more of them can only make fewer members
    external, so an asset without such a member has none at the end either."""
    seen: _OrgSoFar = ctx.memo("iam.org_so_far", _OrgSoFar).update(ctx)
    domains = seen.domains.union(params.domains)
    if not domains:
        return bool(asset_bindings(asset))  # nothing to compare with yet: an Organization may come later
    return _judge(ctx, params, "org").any_outside(asset, domains, seen.projects)


@check(
    "iam.external_members",
    params=DomainParams,
    iam=True,
    context=[ORGANIZATION, PROJECT],
    screen=_screen_external,
    screen_reads_context=True,
)
def external_members(asset: Asset, params: DomainParams, ctx: Context) -> Iterator[Outcome]:
    """Members from outside the organization (its domain, its projects' service accounts).

    Members from outside the organization: the allowed domains are the organization's own domain (the display
    name of the Organization assets in the snapshot) plus `domains`, and the service accounts, GKE Workload
    Identity members (`PROJECT.svc.id.goog[ns/ksa]`) and workload identity pool principals of every project in the
    snapshot are internal. Same params and exceptions as iam.allowed_domains. Without an Organization asset and
    without `domains` the check has nothing to compare against: the rule is reported as not evaluated (the
    snapshot is partial), never as clean.

    ```yaml
    - id: iam-no-external-members
      check: iam.external_members
      severity: high
      params: {domains: [partner-lab.example.org]}   # optional extra domains
    ```
    """
    org_domains, projects = _org_index(ctx)
    domains = org_domains | frozenset(params.domains)
    if not domains:
        if asset_bindings(asset):
            yield Unevaluated(
                "no Organization asset in the snapshot (its display name is the domain members are compared with) "
                "and no `domains` in the rule's params"
            )
        return
    yield from _domain_violations(asset, params, domains, projects, _judge(ctx, params, "org"), bool(projects))


# -- roles ------------------------------------------------------------------------------------------------------------
class BannedRolesParams(MemberFilter):
    roles: list[str] = Field(min_length=1, description="Role globs that must not be granted.")


@check("iam.banned_roles", params=BannedRolesParams, iam=True, prefilter=roles_prefilter(lambda p: p.roles))
def banned_roles(asset: Asset, params: BannedRolesParams, ctx: Context) -> Iterator[Violation]:
    """Roles that must not be granted on the matched assets (one finding per member).

    Scope it per asset type with `match.asset_types`. Google's own grants (roles/editor of the Google APIs service
    agent and of the Compute Engine default service account, service-agent roles) are skipped unless
    `allow_google_managed: false`.

    ```yaml
    - id: iam-no-primitive-roles-on-projects
      check: iam.banned_roles
      severity: high
      match: {asset_types: [cloudresourcemanager.googleapis.com/Project]}
      params:
        roles: [roles/owner, roles/editor]
        except_members: ["group:break-glass@example.com"]
    ```
    """
    for b, m in grants(asset, params.roles):
        if not params.skipped(m, b.role):
            yield member_violation(b, m, f"{m} holds banned role {b.role}")


class AllowedRolesParams(MemberFilter):
    roles: list[str] = Field(min_length=1, description="Role globs that may be granted; any other is reported.")


@check("iam.allowed_roles", params=AllowedRolesParams, iam=True)
def allowed_roles(asset: Asset, params: AllowedRolesParams, ctx: Context) -> Iterator[Violation]:
    """Only the listed roles may be granted on the matched assets (one finding per member of any other role).

    ```yaml
    - id: iam-dataset-buckets-read-only-roles
      check: iam.allowed_roles
      severity: medium
      match: {asset_types: [storage.googleapis.com/Bucket]}
      params:
        roles: [roles/storage.objectViewer, roles/storage.legacyBucket*, "roles/storage.object*"]
    ```
    """
    for b in asset_bindings(asset):
        if any_match(params.roles, b.role):
            continue
        for m in b.members:
            if not params.skipped(m, b.role):
                yield member_violation(b, m, f"{m} holds {b.role}, which is not an allowed role here")


class RequiredBindingsParams(Params):
    role: str = Field(min_length=1, description="The role (exact name) that must include the members.")
    members: list[str] = Field(min_length=1, description="Members (exact) that must hold the role.")
    condition: str | None = Field(
        default=None, description="Title of the condition the binding must carry; default: an unconditional binding."
    )


@check("iam.required_bindings", params=RequiredBindingsParams, iam=True)
def required_bindings(asset: Asset, params: RequiredBindingsParams, ctx: Context) -> Iterator[Violation]:
    """A role must include the given members.

    A grant under a condition does not satisfy an unconditional
    requirement (it may expire or apply to some resources only); name the condition's title to require it.
    One finding per missing member, with `change: missing` (remediation iam.add_member).

    ```yaml
    - id: iam-break-glass-owner
      check: iam.required_bindings
      severity: high
      match: {asset_types: [cloudresourcemanager.googleapis.com/Organization]}
      params: {role: roles/owner, members: ["group:break-glass@example.com"]}
    ```
    """
    present: set[str] = set()
    for b in asset_bindings(asset):
        if b.role == params.role and (b.condition_title if b.condition else None) == params.condition:
            present.update(_norm(m) for m in b.members)
    for m in params.members:
        if _norm(m) in present:
            continue
        details: dict[str, Any] = {"role": params.role, "member": m, "change": "missing"}
        key = f"{params.role}|{m}"
        if params.condition:
            details["condition"] = params.condition
            key += f"|{params.condition}"
        when = f" under condition {params.condition!r}" if params.condition else ""
        cond = {"title": params.condition} if params.condition else None
        yield Violation(f"{m} is required in {params.role}{when} and is missing", key, details,
                        (AddMember(params.role, m, cond),))


# -- service accounts -------------------------------------------------------------------------------------------------
class SAAdminParams(MemberFilter):
    roles: list[str] = Field(default_factory=lambda: list(ADMIN_ROLE_GLOBS), description="Admin-level role globs.")


@check("iam.service_account_admin_roles", params=SAAdminParams, iam=True)
def service_account_admin_roles(asset: Asset, params: SAAdminParams, ctx: Context) -> Iterator[Violation]:
    """Service accounts holding admin-level roles (owner, editor, *Admin, *admin).

    Service accounts must not hold admin-level roles (owner, editor, any `*Admin`/`*admin` role): a workload's
    identity, often with keys or metadata-server tokens on many machines, should not administer anything.
    Google's own grants to its service agents and default accounts are skipped (`allow_google_managed`).

    ```yaml
    - id: iam-service-accounts-no-admin-roles
      check: iam.service_account_admin_roles
      severity: high
      params:
        roles: [roles/owner, roles/editor, "roles/*admin", "roles/*Admin"]
        except_members: ["serviceAccount:terraform@seed-project.iam.gserviceaccount.com"]
    ```
    """
    for b, m in grants(asset, params.roles):
        if parse_member(m).type != "serviceAccount" or params.skipped(m, b.role):
            continue
        yield member_violation(b, m, f"service account {parse_member(m).value} holds admin-level role {b.role}")


DEFAULT_SA_KINDS = ["Compute Engine default service account", "App Engine default service account"]


class DefaultSABasicRolesParams(Params):
    roles: list[str] = Field(
        default_factory=lambda: ["roles/owner", "roles/editor"], description="Role globs (the basic roles)."
    )
    kinds: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SA_KINDS),
        description="Which default service accounts: `Compute Engine default service account`, `App Engine default "
        "service account`, `Cloud Build legacy service account`.",
    )
    except_members: list[str] = Field(default_factory=list, description="Member globs never reported.")


@check(
    "iam.default_service_account_basic_roles",
    params=DefaultSABasicRolesParams,
    iam=True,
    prefilter=roles_prefilter(lambda p: p.roles),
)
def default_service_account_basic_roles(
    asset: Asset, params: DefaultSABasicRolesParams, ctx: Context
) -> Iterator[Violation]:
    """Google's default service accounts holding basic roles (CIS GCP Foundations: default service accounts should
    not hold basic roles).

    The Compute Engine default service account (`PROJECT_NUMBER-compute@developer.gserviceaccount.com`) and the
    App Engine default service account (`PROJECT_ID@appspot.gserviceaccount.com`) are created with roles/editor
    on their project; every VM, GKE node pool and App Engine app that runs as them holds it. The other checks
    leave this grant alone because Google makes it: this one reports it on its own, so that it can be judged (and
    exempted) apart. Service agents are never reported.

    ```yaml
    - id: iam-default-service-accounts-no-basic-roles
      check: iam.default_service_account_basic_roles
      severity: medium
      params: {roles: [roles/owner, roles/editor]}
    ```
    """
    for b, m in grants(asset, params.roles):
        kind = default_service_account_kind(m)
        if kind is None or kind not in params.kinds or is_service_agent(m):
            continue
        if params.except_members and any_member_match(params.except_members, m):
            continue
        yield member_violation(b, m, f"{m} ({kind}) holds basic role {b.role}", kind=kind)


class ImpersonationParams(MemberFilter):
    roles: list[str] = Field(default_factory=lambda: list(IMPERSONATION_ROLES), description="Role globs.")


@check("iam.project_level_impersonation", params=ImpersonationParams, iam=True, asset_types=HIERARCHY_TYPES)
def project_level_impersonation(asset: Asset, params: ImpersonationParams, ctx: Context) -> Iterator[Violation]:
    """Service account impersonation roles granted on a project, folder or organization.

    roles/iam.serviceAccountUser and roles/iam.serviceAccountTokenCreator granted on a project, folder or
    organization let the holder act as every service account below it, including the most privileged one.
    Grant them on the one service account that is needed instead.

    ```yaml
    - id: iam-no-project-wide-impersonation
      check: iam.project_level_impersonation
      severity: high
      params: {roles: [roles/iam.serviceAccountUser, roles/iam.serviceAccountTokenCreator]}
    ```
    """
    level = asset.asset_type.rsplit("/", 1)[-1].lower()
    for b, m in grants(asset, params.roles):
        if not params.skipped(m, b.role):
            yield member_violation(
                b, m, f"{m} holds {b.role} on the {level}: it can act as every service account in it", level=level
            )


class KeyParams(Params):
    max_age_days: int | None = Field(
        default=None, ge=0, description="Only keys older than this are reported; default: every user-managed key."
    )
    allowed_accounts: list[str] = Field(
        default_factory=list, description="Service account e-mail globs allowed to have keys (`.` separates)."
    )
    include_disabled: bool = Field(default=False, description="Also report disabled keys.")


def _timestamp(value: Any) -> datetime | None:
    """RFC 3339 text (`2024-01-02T03:04:05Z`) or `{seconds: N}` (CAI REST)."""
    if isinstance(value, dict) and "seconds" in value:
        from datetime import UTC

        return datetime.fromtimestamp(int(value["seconds"]), UTC)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


@check("iam.user_managed_keys", params=KeyParams, asset_types=[SERVICE_ACCOUNT_KEY])
def user_managed_keys(asset: Asset, params: KeyParams, ctx: Context) -> Iterator[Violation]:
    """User-managed service account keys.

    iam.googleapis.com/ServiceAccountKey assets with keyType USER_MANAGED (or 1, as CAI REST sends enums):
    long-lived credentials that leave Google's control. Use workload identity or short-lived tokens instead.
    Google-managed (SYSTEM_MANAGED) keys are never reported.

    ```yaml
    - id: iam-no-user-managed-keys
      check: iam.user_managed_keys
      severity: high
      match: {asset_types: [iam.googleapis.com/ServiceAccountKey]}
      params:
        max_age_days: 90                      # optional: only keys older than this
        allowed_accounts: ["legacy-etl@*"]    # optional
    ```
    """
    data = asset.resource
    key_type = data.get("keyType", data.get("key_type"))
    if key_type not in ("USER_MANAGED", 1, "1"):
        return
    if data.get("disabled") and not params.include_disabled:
        return
    # name: projects/P/serviceAccounts/EMAIL/keys/KEYID (the asset name has the same tail)
    path = str(data.get("name") or asset.name)
    parts = path.split("/")
    account = parts[parts.index("serviceAccounts") + 1] if "serviceAccounts" in parts[:-1] else "?"
    key_id = parts[-1]
    if params.allowed_accounts and any_member_match(params.allowed_accounts, account):
        return
    created = _timestamp(data.get("validAfterTime", data.get("valid_after_time")))
    details: dict[str, Any] = {"service_account": account, "key_id": key_id}
    if created is not None:
        details["created"] = created.isoformat()
    if params.max_age_days is not None:
        if created is None:
            return  # age unknown: cannot say it is too old
        age = ctx.now - created
        if age <= timedelta(days=params.max_age_days):
            return
        details["age_days"] = age.days
        yield Violation(f"user-managed key {key_id} of {account} is {age.days} days old", key_id, details)
        return
    yield Violation(f"service account {account} has a user-managed key {key_id}", key_id, details)


# -- audit logs -------------------------------------------------------------------------------------------------------
class AuditLogParams(Params):
    services: list[str] = Field(default_factory=lambda: ["allServices"], description="Services that must log.")
    log_types: list[str] = Field(default_factory=lambda: list(LOG_TYPES), description="Log types that must be on.")
    allowed_exemptions: list[str] = Field(default_factory=list, description="Member globs that may be exempted.")
    inherited: bool = Field(
        default=True,
        description="A log type enabled on an ancestor folder or organization (in the snapshot) counts as enabled.",
    )

    _known = field_validator("log_types")(known_log_types)


def _short_name(asset: Asset) -> str:
    """`projects/123` from `//cloudresourcemanager.googleapis.com/projects/123`."""
    return asset.name.split("googleapis.com/", 1)[-1]


def _parent_of(asset: Asset) -> str | None:
    """The parent (`folders/1`, `organizations/2`) of a folder or project, from its ancestors or its data."""
    if len(asset.ancestors) > 1:
        return asset.ancestors[1]
    parent = asset.resource.get("parent")
    if isinstance(parent, str) and parent:
        return parent
    if isinstance(parent, dict) and parent.get("id"):
        return f"{parent.get('type', 'folder')}s/{parent['id']}"
    return None


def hierarchy_index(ctx: Context) -> tuple[dict[str, Asset], dict[str, str]]:
    """(short name -> asset with an IAM policy, short name -> parent) for the organization, folders and projects."""

    def build() -> tuple[dict[str, Asset], dict[str, str]]:
        policies: dict[str, Asset] = {}
        parents: dict[str, str] = {}
        for t in HIERARCHY_TYPES:
            for a in ctx.assets(t):
                short = _short_name(a)
                if a.has_iam_policy:
                    policies[short] = a
                parent = _parent_of(a)
                if parent:
                    parents.setdefault(short, parent)
        return policies, parents

    result: tuple[dict[str, Asset], dict[str, str]] = ctx.memo("iam.hierarchy", build)
    return result


def ancestor_chain(asset: Asset, ctx: Context) -> list[str]:
    """The asset's own short name and its ancestors upwards, from CAI ancestors or parents seen in the snapshot."""
    if asset.ancestors:
        return list(asset.ancestors)
    _, parents = hierarchy_index(ctx)
    chain = [_short_name(asset)]
    while chain[-1] in parents and len(chain) < 32 and parents[chain[-1]] not in chain:
        chain.append(parents[chain[-1]])
    return chain


@check("iam.audit_logging", params=AuditLogParams, iam=True, asset_types=HIERARCHY_TYPES, context=HIERARCHY_TYPES)
def audit_logging(asset: Asset, params: AuditLogParams, ctx: Context) -> Iterator[Violation]:
    """Cloud Audit Logs on for the listed services and log types, with only allowed exemptions.

    Cloud Audit Logs: every listed service must have every listed log type enabled on organizations, folders
    and projects, and only allowed members may be exempted. A config for `allServices` covers every service, and
    (with `inherited: true`) a log type enabled on an ancestor in the snapshot counts, as it does in Google Cloud.
    Reads `auditConfigs`/`audit_configs` in both spellings, log types as names or numbers (1, 2, 3).

    ```yaml
    - id: iam-data-access-logs-on-storage
      check: iam.audit_logging
      severity: medium
      params:
        services: [storage.googleapis.com]
        log_types: [ADMIN_READ, DATA_READ, DATA_WRITE]
        allowed_exemptions: ["serviceAccount:log-reader@ops.iam.gserviceaccount.com"]
    ```
    """
    policies, _ = hierarchy_index(ctx)
    sources: list[Asset] = [asset]
    if params.inherited:
        for name in ancestor_chain(asset, ctx)[1:]:
            if name in policies:
                sources.append(policies[name])
    enabled: set[tuple[str, str]] = set()
    for src in sources:
        for c in asset_audit_log_configs(src):
            enabled.add((c.service, c.log_type))
    for service in params.services:
        for log_type in params.log_types:
            if (service, log_type) in enabled or ("allServices", log_type) in enabled:
                continue
            yield Violation(
                f"{log_type} audit logs are not enabled for {service}",
                f"missing|{service}|{log_type}",
                {"service": service, "log_type": log_type, "change": "missing"},
            )
    # Exemptions are read on this asset's own policy only: its ancestors report their own.
    for c in asset_audit_log_configs(asset):
        if c.service not in params.services and "allServices" not in params.services and c.service != "allServices":
            continue
        for m in c.exempted_members:
            if params.allowed_exemptions and any_member_match(params.allowed_exemptions, m):
                continue
            yield Violation(
                f"{m} is exempted from {c.log_type} audit logs of {c.service}",
                f"exempt|{c.service}|{c.log_type}|{m}",
                {"service": c.service, "log_type": c.log_type, "member": m},
            )


# -- desired state ----------------------------------------------------------------------------------------------------
class ConditionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str = Field(min_length=1)
    expression: str | None = None
    description: str | None = None


class DesiredBinding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: str = Field(min_length=1)
    members: list[str] = Field(default_factory=list)
    condition: ConditionSpec | None = None


Change = Literal["missing", "extra", "condition_changed"]
CHANGES: tuple[Change, ...] = ("missing", "extra", "condition_changed")


class DesiredStateParams(MemberFilter):
    assets: list[str] = Field(default_factory=lambda: ["**"], description="Asset name globs `bindings` applies to.")
    bindings: list[DesiredBinding] | None = Field(default=None, description="The exact bindings the policy must have.")
    resources: dict[str, list[DesiredBinding]] | None = Field(
        default=None,
        description="A stack of many resources: asset name glob -> its exact bindings (the first matching glob wins).",
    )
    managed_roles: list[str] = Field(
        default_factory=lambda: ["**"],
        description="Role globs this state is authoritative for; bindings of other roles are left alone.",
    )
    changes: list[Change] = Field(
        default_factory=lambda: list(CHANGES),
        description="The kinds of drift reported (a rule per remediation: extra -> iam.remove_member, "
        "missing -> iam.add_member).",
    )

    @model_validator(mode="after")
    def _roles_managed(self) -> DesiredStateParams:
        if (self.bindings is None) == (self.resources is None):
            raise ValueError("give either bindings (with assets) or resources, not both")
        declared = list(self.bindings or ()) + [b for bs in (self.resources or {}).values() for b in bs]
        for b in declared:
            if not any_match(self.managed_roles, b.role):
                raise ValueError(f"desired role {b.role} is not covered by managed_roles {self.managed_roles}")
        return self

    def desired_for(self, asset_name: str) -> list[DesiredBinding] | None:
        if self.resources is not None:
            for glob, declared in self.resources.items():
                if any_match([glob], asset_name):
                    return declared
            return None
        return self.bindings if any_match(self.assets, asset_name) else None


def _norm(member: str) -> str:
    """Members compare without case in the e-mail part (IAM stores them lower-cased)."""
    if ":" in member and "@" in member and not member.startswith("principal"):
        kind, rest = member.split(":", 1)
        return f"{kind}:{rest.lower()}"
    return member


BindingId = tuple[str, str | None]  # (role, condition title)


State = tuple[dict[BindingId, dict[str, str]], dict[BindingId, str | None]]  # members (normalized -> as written), expr


def _actual_state(policy: dict[str, Any], managed: list[str]) -> State:
    members: dict[BindingId, dict[str, str]] = defaultdict(dict)
    expressions: dict[BindingId, str | None] = {}
    for b in bindings(policy):
        if not any_match(managed, b.role):
            continue
        bid = (b.role, b.condition_title if b.condition else None)
        for m in b.members:
            members[bid].setdefault(_norm(m), m)
        if b.condition:
            expressions[bid] = (b.condition or {}).get("expression")
    return members, expressions


def _desired_state(desired: Iterable[DesiredBinding]) -> State:
    members: dict[BindingId, dict[str, str]] = defaultdict(dict)
    expressions: dict[BindingId, str | None] = {}
    for d in desired:
        bid = (d.role, d.condition.title if d.condition else None)
        members[bid].update({_norm(m): m for m in d.members})
        if d.condition:
            expressions[bid] = d.condition.expression
    return members, expressions


def _drift(bid: BindingId, member: str, change: str, expression: str | None = None) -> Violation:
    role, title = bid
    details: dict[str, Any] = {"role": role, "member": member, "change": change}
    cond = {"title": title, **({"expression": expression} if expression else {})} if title is not None else None
    remedy = AddMember(role, member, cond) if change == "missing" else RemoveMember(role, member, cond)
    key = f"{role}|{member}"
    when = ""
    if title is not None:
        details["condition"] = title
        key += f"|{title}"
        when = f" (condition: {title})"
    what = "is missing from" if change == "missing" else "is not declared in"
    return Violation(f"{member} {what} {role}{when}", key, details, (remedy,))


@check("iam.desired_bindings", params=DesiredStateParams, iam=True)
def desired_bindings(asset: Asset, params: DesiredStateParams, ctx: Context) -> Iterator[Violation]:
    """Desired state: the exact bindings the policy must have, declared like an infrastructure-as-code stack.
    Drift is every member missing from a declared binding (`change: missing`, remediation iam.add_member) and every
    member the policy has beyond the declaration (`change: extra`, remediation iam.remove_member), per role and
    condition (a conditional binding is identified by its role and condition title; a declared condition whose
    expression differs from the live one is reported once per binding). Only roles matching `managed_roles` are
    compared; Google's own grants are never extra (`allow_google_managed`). One resource set takes `assets` (globs)
    and `bindings`; a stack of many takes `resources: {asset-name-glob: [bindings]}`.

    ```yaml
    - id: ml-train-project-iam
      check: iam.desired_bindings
      severity: high
      mode: dryrun
      remediation: iam.remove_member           # plans the removal of extra members; a twin rule with
      match: {asset_types: [cloudresourcemanager.googleapis.com/Project]}   # changes: [missing] and
      params:                                                              # iam.add_member adds the missing ones
        changes: [extra, condition_changed]
        assets: ["//cloudresourcemanager.googleapis.com/projects/ml-train"]
        managed_roles: ["roles/storage.*", "roles/aiplatform.*"]
        bindings:
          - role: roles/storage.objectViewer
            members: ["serviceAccount:trainer@ml-train.iam.gserviceaccount.com"]
          - role: roles/aiplatform.user
            members: ["group:ml-researchers@example.com"]
            condition: {title: business-hours, expression: "request.time.getHours('Europe/Paris') < 20"}
    - id: dataset-buckets-iam
      check: iam.desired_bindings
      severity: high
      match: {asset_types: [storage.googleapis.com/Bucket]}
      params:
        resources:
          "//storage.googleapis.com/ml-datasets-*":
            - {role: roles/storage.objectViewer, members: ["group:ml-researchers@example.com"]}
          "//storage.googleapis.com/ml-checkpoints":
            - {role: roles/storage.objectAdmin, members: ["serviceAccount:trainer@ml-train.iam.gserviceaccount.com"]}
    ```
    """
    declared = params.desired_for(asset.name)
    if declared is None:
        return
    actual, actual_expr = _actual_state(asset.iam_policy, params.managed_roles)
    desired, desired_expr = _desired_state(declared)
    for bid in sorted(set(actual) | set(desired), key=lambda x: (x[0], x[1] or "")):
        want = desired.get(bid, {})
        have = actual.get(bid, {})
        if "missing" in params.changes:
            for norm, m in sorted(want.items()):
                if norm not in have:
                    yield _drift(bid, m, "missing", desired_expr.get(bid))
        if "extra" in params.changes:
            for norm, m in sorted(have.items()):
                if norm not in want and not params.skipped(m, bid[0]):
                    yield _drift(bid, m, "extra", actual_expr.get(bid))
        expected = desired_expr.get(bid)
        if "condition_changed" not in params.changes:
            continue
        if bid[1] is not None and bid in actual and expected is not None and actual_expr.get(bid) != expected:
            yield Violation(
                f"the condition {bid[1]!r} of {bid[0]} has expression {actual_expr.get(bid)!r}, expected {expected!r}",
                f"{bid[0]}||{bid[1]}|expression",
                {
                    "role": bid[0],
                    "condition": bid[1],
                    "change": "condition_changed",
                    "expected_expression": expected,
                    "actual_expression": actual_expr.get(bid),
                },
            )
