"""Stage: evaluate (shared with the remediation guards). What an IAM member string says about its principal.

One place knows the shapes of IAM members: their type and e-mail, their domain, and which identities Google
creates and grants roles to by itself. Checks use it to stay quiet where Google grants its own service agents
their roles; the remediation guards use it to never remove those grants.

Google-managed identities come in two families:

- service agents: identities Google runs on the customer's behalf, never usable by the customer
  (`service-PROJECTNUMBER@gcp-sa-*.iam.gserviceaccount.com`, `service-PROJECTNUMBER@compute-system...`,
  `service-PROJECTNUMBER@container-engine-robot...`, org- and folder-level `service-org-N@...`/`service-folder-N@...`,
  log sink writers `pN-M@gcp-sa-logging...`, the Google APIs service agent `PROJECTNUMBER@cloudservices...`);
- default service accounts: created by Google in the customer's project and granted a role at creation
  (`PROJECTNUMBER-compute@developer.gserviceaccount.com` and `PROJECT_ID@appspot.gserviceaccount.com` get
  roles/editor; the legacy Cloud Build account `PROJECTNUMBER@cloudbuild.gserviceaccount.com` gets
  roles/cloudbuild.builds.builder). Unlike service agents, workloads can run as them.

`google_grants(member, role)` is true only for the pair Google itself makes: a service agent holding a service-agent
role (`roles/*.serviceAgent`, `roles/*ServiceAgent`...), the Google APIs service agent or a default service account
holding the role Google gives it. Anything else (a service agent made owner, the compute default account made
`roles/iam.securityAdmin`) is somebody's grant and is reported like any other.

Convenience members (`projectOwner:P`, `projectEditor:P`, `projectViewer:P`) are not principals: they stand for
"whoever holds owner/editor/viewer on project P" on legacy bucket and dataset ACL-style bindings. They have no
domain; checks that reason about domains skip them by default.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from typing import NamedTuple

PUBLIC_MEMBERS = frozenset({"allUsers", "allAuthenticatedUsers"})
CONVENIENCE_TYPES = frozenset({"projectOwner", "projectEditor", "projectViewer"})
SA_DOMAIN_SUFFIX = ".iam.gserviceaccount.com"


class Member(NamedTuple):
    """An IAM member split into its parts: `deleted:user:a@b.com?uid=1` -> type user, email a@b.com, deleted."""

    text: str
    type: str  # user, group, serviceAccount, domain, allUsers, allAuthenticatedUsers, projectOwner, principal...
    value: str  # what follows `type:` (e-mail, domain, project id, principal URI); empty for allUsers
    deleted: bool

    @property
    def email(self) -> str | None:
        return self.value if self.type in ("user", "group", "serviceAccount") and "@" in self.value else None

    @property
    def domain(self) -> str | None:
        """The e-mail domain (or the `domain:` value), lower-cased; None for members without one."""
        if self.type == "domain":
            return self.value.lower() or None
        email = self.email
        return email.rsplit("@", 1)[1].lower() if email else None


def parse_member(member: str) -> Member:
    text = member
    deleted = False
    if member.startswith("deleted:"):
        deleted = True
        member = member[len("deleted:") :]
        # deleted members carry the id of the deleted principal: `deleted:user:a@b.com?uid=123`
        member = member.split("?", 1)[0]
    if member.startswith(("principal://", "principalSet://")):
        return Member(text, member.split(":", 1)[0], member, deleted)
    if ":" not in member:
        return Member(text, member, "", deleted)
    kind, value = member.split(":", 1)
    return Member(text, kind, value, deleted)


def is_public(member: str) -> bool:
    return member in PUBLIC_MEMBERS


def is_convenience_member(member: str) -> bool:
    """`projectOwner:P` and friends: role holders of a project, not an identity."""
    return parse_member(member).type in CONVENIENCE_TYPES


# -- Google-managed identities ----------------------------------------------------------------------------------------
_SERVICE_AGENT_PATTERNS = tuple(
    re.compile(p)
    for p in (
        # service-PROJECTNUMBER@<anything>.iam.gserviceaccount.com: every per-product service agent
        r"service-\d+@[a-z0-9.-]+\.iam\.gserviceaccount\.com",
        r"service-(?:org|folder)-\d+@[a-z0-9.-]+\.iam\.gserviceaccount\.com",
        # any account in a gcp-sa-* domain belongs to Google (log sink writers pN-M@gcp-sa-logging, ...)
        r"[a-z0-9-]+@gcp-sa-[a-z0-9-]+\.iam\.gserviceaccount\.com",
        r"[a-z0-9-]+@container-engine-robot\.iam\.gserviceaccount\.com",
        r"[a-z0-9-]+@compute-system\.iam\.gserviceaccount\.com",
        r"[a-z0-9-]+@cloudcomposer-accounts\.iam\.gserviceaccount\.com",
        # the Google APIs service agent
        r"\d+@cloudservices\.gserviceaccount\.com",
        # Google's own system accounts (legacy log sink writer cloud-logs@system.gserviceaccount.com, ...)
        r"[a-z0-9-]+@system\.gserviceaccount\.com",
    )
)
# (pattern, what it is, the roles Google grants it when it creates it)
_DEFAULT_SA_PATTERNS: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = (
    (
        re.compile(r"\d+-compute@developer\.gserviceaccount\.com"),
        "Compute Engine default service account",
        ("roles/editor",),
    ),
    (
        # PROJECT_ID@appspot (domain-scoped projects: example.com:proj -> proj.example.com@appspot...)
        re.compile(r"[a-z][a-z0-9-]*(?:\.[a-z0-9.-]+)?@appspot\.gserviceaccount\.com"),
        "App Engine default service account",
        ("roles/editor",),
    ),
    (
        re.compile(r"\d+@cloudbuild\.gserviceaccount\.com"),
        "Cloud Build legacy service account",
        ("roles/cloudbuild.builds.builder",),
    ),
)
_GOOGLE_APIS_AGENT = re.compile(r"\d+@cloudservices\.gserviceaccount\.com")
# The roles Google grants its service agents are named roles/<product>.serviceAgent (or ...ServiceAgent, and a
# few like roles/containerregistry.ServiceAgent or roles/cloudtpu.serviceAgent): the last segment says so.
_SERVICE_AGENT_ROLE = re.compile(r"roles/[A-Za-z0-9_.]*[sS]erviceAgent[A-Za-z0-9_]*")


# Every Google-managed identity above is an account of a gserviceaccount.com domain: the many that are not are told
# apart without a regular expression, and the others by one expression of each family.
_GOOGLE_DOMAIN = "gserviceaccount.com"
_SERVICE_AGENT = re.compile("|".join(f"(?:{p.pattern})" for p in _SERVICE_AGENT_PATTERNS))
_GOOGLE_MANAGED = re.compile(
    "|".join(f"(?:{p.pattern})" for p in (*_SERVICE_AGENT_PATTERNS, *(p for p, _, _ in _DEFAULT_SA_PATTERNS)))
)


def _sa_email(member: str) -> str | None:
    return _sa_email_of(parse_member(member))


def _sa_email_of(m: Member) -> str | None:
    if m.deleted or m.type != "serviceAccount":
        return None
    return m.value.lower()


def _is_agent_email(email: str) -> bool:
    return email.endswith(_GOOGLE_DOMAIN) and _SERVICE_AGENT.fullmatch(email) is not None


def is_service_agent(member: str) -> bool:
    """A Google-managed service agent: Google runs it, the customer cannot act as it."""
    email = _sa_email(member)
    return email is not None and _is_agent_email(email)


def default_service_account_kind(member: str) -> str | None:
    """`Compute Engine default service account` and the like, or None."""
    email = _sa_email(member)
    if email is None or not email.endswith(_GOOGLE_DOMAIN):
        return None
    for pattern, kind, _ in _DEFAULT_SA_PATTERNS:
        if pattern.fullmatch(email):
            return kind
    return None


def is_google_managed(member: str) -> bool:
    """A service agent or a default service account: an identity Google created."""
    return google_managed_member(parse_member(member))


def google_managed_member(m: Member) -> bool:
    """`is_google_managed` of a member already parsed."""
    email = _sa_email_of(m)
    return email is not None and email.endswith(_GOOGLE_DOMAIN) and _GOOGLE_MANAGED.fullmatch(email) is not None


def is_service_agent_role(role: str) -> bool:
    return _SERVICE_AGENT_ROLE.fullmatch(role) is not None


def google_grants(member: str, role: str) -> bool:
    """True when Google itself grants `role` to `member` (so a baseline must not report or remove it)."""
    email = _sa_email(member)
    if email is None or not email.endswith(_GOOGLE_DOMAIN):  # most members: none of Google's accounts
        return False
    if _SERVICE_AGENT.fullmatch(email) is not None:
        if is_service_agent_role(role):
            return True
        # The Google APIs service agent is granted roles/editor on every project when the project is created.
        return role == "roles/editor" and _GOOGLE_APIS_AGENT.fullmatch(email) is not None
    for pattern, _, roles in _DEFAULT_SA_PATTERNS:
        if pattern.fullmatch(email):
            return role in roles
    return False


def google_managed_reason(member: str) -> str | None:
    """Why a member is Google's (for messages and plan guards), or None."""
    if is_service_agent(member):
        return "Google-managed service agent"
    return default_service_account_kind(member)


_WORKLOAD_IDENTITY_KSA = re.compile(r"([a-z][a-z0-9-]*(?:\.[a-z0-9.-]+)?)\.svc\.id\.goog\[[^\]]+\]")
_POOL_PRINCIPAL = re.compile(r"principal(?:Set)?://iam\.googleapis\.com/projects/(\d+)/locations/[^/]+/workloadIdentityPools/")


def service_account_project(member: str) -> str | None:
    """The project of a workload identity in the customer's hands, or None: the project id of a user-managed
    service account `NAME@PROJECT.iam.gserviceaccount.com` or of a GKE Workload Identity member
    `serviceAccount:PROJECT.svc.id.goog[NAMESPACE/KSA]`, the project number of a workload identity pool principal
    `principal://iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/...`."""
    return service_account_project_of(member, parse_member(member))


def service_account_project_of(member: str, m: Member) -> str | None:
    """`service_account_project` of a member and its parsed form (`parse_member(member)`)."""
    pool = _POOL_PRINCIPAL.match(member)
    if pool:
        return pool.group(1)
    if m.deleted or m.type != "serviceAccount":
        return None
    ksa = _WORKLOAD_IDENTITY_KSA.fullmatch(m.value)
    if ksa:
        return ksa.group(1)
    email = m.value.lower()
    if not email.endswith(SA_DOMAIN_SUFFIX) or _is_agent_email(email):
        return None
    project = email.rsplit("@", 1)[1][: -len(SA_DOMAIN_SUFFIX)]
    return project or None


def in_domains(member: str, domains: AbstractSet[str], allow_sub_domains: bool) -> bool:
    """Whether the member's domain is one of `domains` (or, when allowed, a sub-domain of one)."""
    return domain_in(parse_member(member).domain, domains, allow_sub_domains)


def domain_in(domain: str | None, domains: AbstractSet[str], allow_sub_domains: bool) -> bool:
    """Whether a domain is one of `domains` (or, when allowed, a sub-domain of one); no domain is in none."""
    if not domain:
        return False
    if domain in domains:
        return True
    return allow_sub_domains and any(domain.endswith("." + d) for d in domains)


# -- member patterns --------------------------------------------------------------------------------------------------
EMAIL_TYPES = frozenset({"user", "group", "serviceAccount"})
KUBERNETES_SUBJECT_KINDS = frozenset({"User", "Group", "ServiceAccount"})
MEMBER_TYPES = EMAIL_TYPES | CONVENIENCE_TYPES | PUBLIC_MEMBERS | frozenset(
    {"domain", "principal", "principalSet", "deleted"}
)


def member_pattern_problem(pattern: str) -> str | None:
    """Why a member glob can match no valid IAM member (None when it can match one).

    Member globs take `.` as the separator: `*` stops at it and `**` crosses it. An e-mail domain always has a dot,
    so `group:break-glass@*` matches no real address (`group:break-glass@**` or `group:break-glass@example.com`
    does); a type that is no member type (`usr:`) matches nothing either.
    """
    if pattern.strip() in ("*", "**"):
        return None
    if not pattern.strip():
        return "an empty pattern matches no member"
    kind, sep, value = pattern.partition(":")
    if pattern.startswith(("principal://", "principalSet://")) or "*" in kind or "?" in kind:
        return None
    if not sep:
        return None if kind in PUBLIC_MEMBERS else f"{pattern!r} is no member (members look like type:value)"
    if kind in KUBERNETES_SUBJECT_KINDS:
        return None  # an RBAC subject pattern (`User:alice@example.com`), matched with `/` as the separator
    if kind not in MEMBER_TYPES:
        return f"{pattern!r}: {kind!r} is no IAM member type ({', '.join(sorted(MEMBER_TYPES))})"
    if kind == "deleted":
        return member_pattern_problem(value.split("?", 1)[0])
    if kind in EMAIL_TYPES or kind == "domain":
        domain = value.rsplit("@", 1)[1] if "@" in value else (value if kind == "domain" else "")
        if kind in EMAIL_TYPES and "@" not in value and "**" not in value:
            return f"{pattern!r} can match no e-mail address (no '@', and '*' stops at '.'; use '**')"
        # The domain part must be able to hold a dot: a literal one, or a `**` that crosses it.
        if ("@" in value or kind == "domain") and "." not in domain and "**" not in domain:
            return (f"{pattern!r} can match no e-mail domain: '*' stops at '.', so it never matches a domain "
                    f"like example.com (use '**' or name the domain)")
    return None
