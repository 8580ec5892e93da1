"""Stage 6, apply: the guards every write passes, each refusing with a reason an operator can act on.

Plan-level guards (explicit approval, plan age, caps) refuse the whole apply before anything is read; change-level
guards look at the live before-state and the after-state the applier is about to write, so they hold even when
the plan was built from stale data. Pure: no client library is imported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from auditor.errors import AuditorError
from auditor.evaluate.checks.rbac import subject_name
from auditor.evaluate.globs import any_match, any_member_match
from auditor.evaluate.principals import is_google_managed, member_pattern_problem
from auditor.vocabulary import (
    DEFAULT_MAX_MEMBER_SHARE,
    DEFAULT_PROTECTED_ROLES,
    OWNER_ROLE,
    PUBLIC_MEMBERS,
    is_hierarchy_node,
    is_hierarchy_top,
    is_system_subject,
)
from remediations.edits import iam_section, rbac_section
from remediations.kinds import IAM, RBAC
from remediations.targets import Target


class GuardRefused(AuditorError):
    """The whole apply is refused before anything is read or written."""

    def __init__(self, guard: str, reason: str) -> None:
        super().__init__(f"refused by guard {guard}: {reason}")
        self.guard = guard
        self.reason = reason


class Refusal(NamedTuple):
    guard: str
    reason: str

    def __str__(self) -> str:
        return f"{self.guard}: {self.reason}"


@dataclass
class GuardConfig:
    """What the guards protect. Globs: `.` separates in IAM members, `*` stops at it, `**` crosses it."""

    auditor_identities: list[str] = field(default_factory=list)  # members the auditor itself runs as
    protected_principals: list[str] = field(default_factory=list)  # break-glass accounts and other globs
    max_changes_per_apply: int | None = None
    max_changes_per_cycle: int | None = None
    plan_max_age_seconds: int | None = 3600
    enforce_only: bool = False  # the daemon: only edits of rules in enforce mode
    # Blast radius, on by default: roles never removed from an organization or folder unless the resource is
    # allowed (globs of `organizations/N`, `folders/N` or their full names), and the largest share of a
    # resource's member grants (role, member) one apply may remove (None: no cap).
    protected_roles: list[str] = field(default_factory=lambda: list(DEFAULT_PROTECTED_ROLES))
    protected_role_allowances: list[str] = field(default_factory=list)
    max_member_share: float | None = DEFAULT_MAX_MEMBER_SHARE

    def __post_init__(self) -> None:
        bad = [p for p in (*self.auditor_identities, *self.protected_principals) if member_pattern_problem(p)]
        if bad:
            raise AuditorError("; ".join(str(member_pattern_problem(p)) for p in bad))


def is_service_agent(member: str) -> bool:
    """Members Google creates and manages (service agents, default service accounts): never removed.

    The one list of such identities lives in auditor.evaluate.principals, which the checks use to stay quiet.
    """
    return is_google_managed(member)


# -- plan-level -----------------------------------------------------------------------------------------------------
def check_approval(approved: bool, how: str) -> None:
    if not approved:
        raise GuardRefused("explicit-apply", f"nothing is written without explicit approval ({how})")


def check_plan_age(created_at: datetime, cfg: GuardConfig, now: datetime | None = None) -> None:
    if cfg.plan_max_age_seconds is None:
        return
    age = ((now or datetime.now(UTC)) - created_at).total_seconds()
    if age > cfg.plan_max_age_seconds:
        raise GuardRefused(
            "plan-age",
            f"the plan is {int(age)}s old, older than the {cfg.plan_max_age_seconds}s allowed; make a new plan",
        )


def check_cap(edits: int, cap: int | None, what: str) -> None:
    if cap is not None and edits > cap:
        raise GuardRefused(
            what, f"the plan makes {edits} changes, over the cap of {cap}; review it and raise the cap or split it"
        )


# -- change-level ---------------------------------------------------------------------------------------------------
def _iam_members(policy: dict[str, Any] | None) -> set[tuple[str, str, str]]:
    out = set()
    for b in iam_section(policy):
        cond = str(b.get("condition") or "")
        for m in b["members"]:
            out.add((b["role"], cond, m))
    return out


def _subjects(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    sec = rbac_section(obj)
    return list(sec.get("subjects") or ()) if sec else []


def check_change(
    family: str,
    target: Target,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    edits: Iterable[Any],
    cfg: GuardConfig,
    *,
    restoring: bool = False,
    origin: dict[str, Any] | None = None,
) -> list[Refusal]:
    """Every guard the write from `before` to `after` (live states) breaks; empty when it may go ahead.

    `restoring`: a rollback writing back a journaled before-state; it may grant again what was there (public
    members included), everything else is guarded as any write. `origin`: the state before the whole change when
    `before` is an intermediate one (edits judged one by one): the member-share cap counts from it.
    """
    refusals: list[Refusal] = []
    edits = list(edits)
    if cfg.enforce_only:
        passive = sorted({r for e in edits if "enforce" not in e.modes for r in e.rules})
        if passive:
            refusals.append(Refusal("enforce-only", f"rules {', '.join(passive)} are not in enforce mode"))
    protected = list(cfg.protected_principals)
    if family == IAM:
        b, a = _iam_members(before), _iam_members(after)
        removed = b - a
        touched = removed | (a - b)
        for role, _, m in sorted(touched):
            if is_service_agent(m):
                refusals.append(Refusal("service-agent", f"{m} is a Google-managed service agent ({role})"))
        for role, _, m in sorted(a - b):
            if m in PUBLIC_MEMBERS and not restoring:
                refusals.append(Refusal("public-member", f"a remediation never grants {role} to {m}"))
        resource = target.resource
        if target.api == "iam_admin" and is_service_agent("serviceAccount:" + resource.rsplit("/", 1)[-1]):
            refusals.append(Refusal("service-agent", f"{resource} is a Google-managed service agent"))
        for role, _, m in sorted(removed):
            if cfg.auditor_identities and any_member_match(cfg.auditor_identities, m):
                refusals.append(Refusal("auditor-access", f"removing {m} from {role} removes the auditor's own access"))
            elif protected and any_member_match(protected, m):
                refusals.append(Refusal("protected-principal", f"{m} is protected and is never removed ({role})"))
        had_owner = any(r == OWNER_ROLE for r, _, _ in b)
        has_owner = any(r == OWNER_ROLE for r, _, _ in a)
        if had_owner and not has_owner:
            refusals.append(Refusal("last-owner", f"the change would leave {resource} with no {OWNER_ROLE}"))
        refusals.extend(_blast_radius(target, b, a, _iam_members(origin) if origin is not None else b, cfg,
                                      restoring))
    elif family == RBAC:
        meta = (before or {}).get("metadata") or {}
        name = str(target.name or meta.get("name", ""))
        if name.startswith("system:") or target.namespace == "kube-system":
            refusals.append(Refusal("system-rbac", f"{name} is a Kubernetes system object and is never touched"))
        ns = meta.get("namespace")
        after_keys = {subject_name(s, ns) for s in _subjects(after)}
        for s in _subjects(before):
            who = subject_name(s, ns)
            if who in after_keys:
                continue
            if is_system_subject(s):
                refusals.append(Refusal("system-rbac", f"{who} is a Kubernetes system subject and is never removed"))
            elif cfg.auditor_identities and any_match(cfg.auditor_identities, who):
                refusals.append(Refusal("auditor-access", f"removing {who} removes the auditor's own access"))
            elif protected and any_match(protected, who):
                refusals.append(Refusal("protected-principal", f"{who} is protected and is never removed"))
    return refusals


def _allowed(target: Target, cfg: GuardConfig) -> bool:
    names = {target.resource, *([target.name] if target.name else [])}
    return any(any_match(cfg.protected_role_allowances, n) for n in names)


def _named(grants: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    return {g for g in grants if g[2] not in PUBLIC_MEMBERS}


def _blast_radius(target: Target, before: set[tuple[str, str, str]], after: set[tuple[str, str, str]],
                  origin: set[tuple[str, str, str]], cfg: GuardConfig, restoring: bool) -> list[Refusal]:
    """The guards against one write taking too much: an emptied policy, a protected role gone from the top of the
    hierarchy, too large a share of the resource's grants removed at once.

    Grants to everyone (allUsers, allAuthenticatedUsers) are not counted: taking them away locks nobody out.
    """
    out: list[Refusal] = []
    before, after, origin = (_named(x) for x in (before, after, origin))
    removed = before - after
    if not removed:
        return out
    # Below a project an empty policy is how resources are made (access comes from above); on the hierarchy it
    # leaves nobody able to manage the resource.
    if before and not after and not restoring and is_hierarchy_node(target.resource):
        out.append(Refusal("empty-policy", f"the change would remove every binding of {target.resource}"))
    if is_hierarchy_top(target.resource) and cfg.protected_roles and not _allowed(target, cfg):
        for role in sorted({r for r, _, _ in removed if any_match(cfg.protected_roles, r)}):
            out.append(Refusal(
                "protected-role",
                f"{role} is a protected role on {target.resource}: a remediation never removes its members there "
                "unless the resource is listed in remediation.allow_protected_roles_on",
            ))
    if cfg.max_member_share is not None and origin and not restoring:
        gone = len(origin - after)
        if gone > 1 and gone / len(origin) > cfg.max_member_share:  # one grant is always within the cap
            out.append(Refusal(
                "member-share",
                f"the apply would remove {gone} of the {len(origin)} member grants of {target.resource}, over the "
                f"cap of {cfg.max_member_share:.0%} (remediation.max_member_share_per_apply)",
            ))
    return out


def partition_edits(
    family: str, target: Target, before: dict[str, Any] | None, edits: Iterable[Any], cfg: GuardConfig
) -> tuple[list[Any], list[tuple[Any, list[Refusal]]]]:
    """The edits that may be written, and those a guard refuses (with why), taken one at a time in plan order.

    Refusing one edit does not refuse its neighbours: removing the last owner is refused, removing the other
    members of the same policy still goes ahead. Each edit is judged on the state the accepted ones leave.
    """
    from remediations.edits import apply_edits

    accepted: list[Any] = []
    refused: list[tuple[Any, list[Refusal]]] = []
    state = before
    for e in edits:
        after = apply_edits(family, state, [e])
        why = check_change(family, target, state, after, [e], cfg, origin=before)
        if why:
            refused.append((e, why))
        else:
            accepted.append(e)
            state = after
    return accepted, refused
