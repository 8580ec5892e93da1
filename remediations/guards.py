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
from auditor.evaluate.principals import is_google_managed, member_pattern_problem
from auditor.vocabulary import DEFAULT_MAX_MEMBER_SHARE, DEFAULT_PROTECTED_ROLES
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

    The shared guards, then the family's own. `restoring`: a rollback writing back a journaled before-state; it may
    grant again what was there (public members included), everything else is guarded as any write. `origin`: the
    state before the whole change when `before` is an intermediate one (edits judged one by one): the member-share
    cap counts from it.
    """
    from remediations.families import family as get_family

    refusals: list[Refusal] = []
    edits = list(edits)
    if cfg.enforce_only:
        passive = sorted({r for e in edits if "enforce" not in e.modes for r in e.rules})
        if passive:
            refusals.append(Refusal("enforce-only", f"rules {', '.join(passive)} are not in enforce mode"))
    refusals.extend(get_family(family).guard(target, before, after, cfg, restoring=restoring, origin=origin))
    return refusals


def partition_edits(
    family: str, target: Target, before: dict[str, Any] | None, edits: Iterable[Any], cfg: GuardConfig
) -> tuple[list[Any], list[tuple[Any, list[Refusal]]]]:
    """The edits that may be written, and those a guard refuses (with why), taken one at a time in plan order.

    Refusing one edit does not refuse its neighbours: removing the last owner is refused, removing the other
    members of the same policy still goes ahead. Each edit is judged on the state the accepted ones leave.
    """
    from remediations.families import apply_edits

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
