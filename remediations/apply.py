"""Stage 6, apply: write a plan's changes, each guarded, verified and journaled; and roll an apply back.

For each change: re-read the resource from its own API (not from CAI, which can lag); if the live state already
has what the change asks for, skip it (re-running an applied plan changes nothing); if the live token is not the
planned one, report a conflict and write nothing; run the guards, edit by edit, on the live state (a refused edit
does not hold back the others); journal the before-state; write with the token; read back and verify; journal the
after-state. One resource's failure never stops the others.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from auditor.errors import AuditorError
from remediations.edits import EditError
from remediations.families import apply_edits, section
from remediations.families import family as get_family
from remediations.families.base import DEFAULT_RETRY, Live, WriteConflict, Writer
from remediations.guards import (
    GuardConfig,
    check_approval,
    check_cap,
    check_change,
    check_plan_age,
    partition_edits,
)
from remediations.journal import Journal
from remediations.plan import Change, Plan
from remediations.targets import Target


class Outcome(StrEnum):
    applied = "applied"
    skipped = "skipped"  # already in the planned state
    conflict = "conflict"  # the resource changed since the plan (or since the apply, for a rollback)
    refused = "refused"  # a guard refused it
    failed = "failed"


WriterFactory = Callable[[str], Writer]  # family -> writer
__all__ = ["DEFAULT_RETRY", "Live", "WriteConflict", "Writer", "WriterFactory", "apply_plan", "rollback"]

@dataclass
class ChangeResult:
    change_id: str | None
    resource: str
    family: str
    edits: list[str]
    rules: list[str]
    outcome: Outcome
    reason: str = ""
    token_before: str | None = None
    token_after: str | None = None
    # Edits a guard refused while the others of the change were written: {edit, kind, rules, reason}.
    refused_edits: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "change": self.change_id,
            "resource": self.resource,
            "family": self.family,
            "edits": self.edits,
            "rules": self.rules,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "token_before": self.token_before,
            "token_after": self.token_after,
            "refused_edits": self.refused_edits,
        }


@dataclass
class ApplyReport:
    apply_id: str | None
    plan_id: str | None
    action: str  # apply | rollback
    results: list[ChangeResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(r.outcome.value for r in self.results)
        return {o.value: c.get(o.value, 0) for o in Outcome}

    @property
    def refused_edits(self) -> int:
        return sum(len(r.refused_edits) for r in self.results)

    @property
    def ok(self) -> bool:
        """Nothing conflicted, was refused (not even one edit of an applied change) or failed."""
        c = self.counts()
        return c["conflict"] == 0 and c["refused"] == 0 and c["failed"] == 0 and self.refused_edits == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "apply_id": self.apply_id,
            "plan_id": self.plan_id,
            "action": self.action,
            "counts": self.counts(),
            "refused_edits": self.refused_edits,
            "results": [r.to_dict() for r in self.results],
        }

    def summary_line(self) -> str:
        c = self.counts()
        parts = ", ".join(f"{v} {k}" for k, v in c.items())
        extra = f" ({self.refused_edits} edit(s) of applied changes refused)" if self.refused_edits else ""
        return f"{self.action} {self.apply_id or '(nothing written)'} of plan {self.plan_id}: {parts}{extra}"


def _describe(e: Exception) -> str:
    """One line for an error: a Google API error as its status and message (and the permission it lacks)."""
    message = getattr(e, "message", None)
    if isinstance(message, str) and isinstance(getattr(e, "code", None), int):
        meta = getattr(e, "metadata", None)
        perm = meta.get("permission") if isinstance(meta, dict) else None
        lacking = f" (lacks {perm})" if perm else ""
        message = re.sub(r"^(GET|POST|PUT|PATCH|DELETE) \S+: ", "", message.strip())  # the REST transport's prefix
        return f"{type(e).__name__} {e.code}: {message}{lacking}"[:500]  # type: ignore[attr-defined]
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:500]


def _guarded_write(
    *,
    writer: Writer,
    target: Target,
    family: str,
    live: Live,
    new: dict[str, Any] | None,
    result: ChangeResult,
    journal: Journal,
    apply_id: str,
    change_id: str | None,
) -> ChangeResult:
    """Journal the before-state, write, read back, verify, journal the after-state."""
    entry = journal.begin(apply_id, change_id, result.resource, family, target.to_dict(), result.edits, result.rules,
                          live.token, live.state)
    try:
        writer.write(target, live, new)
    except WriteConflict as exc:
        # A retried write whose first attempt went through sees its own change as a conflict: recognise it.
        try:
            mine = section(family, writer.read(target).state) == section(family, new)
        except Exception:
            mine = False
        if not mine:
            journal.finish(entry, "conflict", reason=str(exc))
            result.outcome, result.reason = Outcome.conflict, f"the API refused the token: {exc}"
            return result
    except Exception as exc:  # any API or network error: reported, the other changes go on
        # The write may have gone through with its answer lost (a dropped connection, a timeout), or in part
        # (Cloud Armor writes rule by rule): re-read to settle it. The planned state is an applied change; any
        # other change is journaled as it is now, so a rollback can restore the before-state.
        try:
            partial = writer.read(target)
        except Exception:
            partial = None
        if partial is not None and section(family, partial.state) == section(family, new) != section(
                family, live.state):
            result.token_after = partial.token
            result.reason = f"the write's answer was lost ({_describe(exc)}); the state read back is the planned one"
            journal.finish(entry, "applied", after=partial.state, token_after=partial.token, reason=result.reason)
            result.outcome = Outcome.applied
            return result
        if partial is not None and section(family, partial.state) != section(family, live.state):
            journal.finish(entry, "failed", after=partial.state, token_after=partial.token, reason=_describe(exc))
            result.token_after = partial.token
        else:
            journal.finish(entry, "failed", reason=_describe(exc))
        result.outcome, result.reason = Outcome.failed, f"write failed: {_describe(exc)}"
        return result
    try:
        back = writer.read(target)
    except Exception as exc:
        # Written, so journal what was written: a rollback can restore the before-state if nothing else changed.
        journal.finish(entry, "failed", after=new, reason=f"read back: {_describe(exc)}")
        result.outcome, result.reason = Outcome.failed, f"written, but the read back failed: {_describe(exc)}"
        return result
    result.token_after = back.token
    if section(family, back.state) != section(family, new):
        journal.finish(entry, "failed", after=back.state, token_after=back.token, reason="verification failed")
        result.outcome = Outcome.failed
        result.reason = "written, but the state read back is not the planned one (changed concurrently?)"
        return result
    journal.finish(entry, "applied", after=back.state, token_after=back.token)
    result.outcome = Outcome.applied
    return result


def apply_change(change: Change, writer: Writer, cfg: GuardConfig, journal: Journal, apply_id: str) -> ChangeResult:
    family = change.family
    result = ChangeResult(change.id, change.resource, family, [e.describe() for e in change.edits], change.rules,
                          Outcome.failed, token_before=change.token)
    try:
        live = writer.read(change.target)
    except Exception as exc:
        result.reason = f"cannot read the live resource: {_describe(exc)}"
        return result
    try:
        # Edits the live state already satisfies are done (re-running an applied plan changes nothing).
        todo = [e for e in change.edits
                if section(family, apply_edits(family, live.state, [e])) != section(family, live.state)]
        new = apply_edits(family, live.state, todo)
    except EditError as exc:
        result.reason = f"cannot make the change to the live state: {exc}"
        return result
    if not todo or section(family, new) == section(family, live.state):
        result.outcome, result.reason = Outcome.skipped, "the live resource already is in the planned state"
        return result
    accepted, refused = partition_edits(family, change.target, live.state, todo, cfg)
    if not accepted:
        reasons = dict.fromkeys(str(r) for _, why in refused for r in why)
        result.outcome, result.reason = Outcome.refused, "; ".join(reasons)
        return result
    stale = get_family(family).moved(change.target, change.token, change.before, live)
    if stale is not None:
        result.outcome, result.reason = Outcome.conflict, stale
        return result
    result.edits = [e.describe() for e in accepted]
    if refused:
        new = apply_edits(family, live.state, accepted)
        result.refused_edits = [
            {"edit": e.describe(), "kind": e.kind, "rules": e.rules, "reason": "; ".join(str(r) for r in why)}
            for e, why in refused
        ]
        result.reason = "refused: " + "; ".join(f"{x['edit']} ({x['reason']})" for x in result.refused_edits)
    return _guarded_write(writer=writer, target=change.target, family=family, live=live, new=new, result=result,
                          journal=journal, apply_id=apply_id, change_id=change.id)


def apply_plan(
    plan: Plan,
    writers: WriterFactory,
    journal: Journal,
    cfg: GuardConfig,
    *,
    approved: bool,
    actor: str = "operator",
    cap: int | None = None,
    now: datetime | None = None,
    changes: Iterable[Change] | None = None,
) -> ApplyReport:
    """Apply the plan's changes (or the given subset). Plan-level guards raise GuardRefused before any read."""
    check_approval(approved, "`auditor apply --yes`, or an answer at the prompt" if actor == "operator"
                   else "remediation.enabled")
    check_plan_age(plan.created_at, cfg, now)
    todo = list(changes if changes is not None else plan.changes)
    check_cap(sum(len(c.edits) for c in todo), cap, "max-changes-per-apply" if actor == "operator"
              else "max-changes-per-cycle")
    report = ApplyReport(None, plan.id, "apply")
    if not todo:
        return report
    report.apply_id = journal.start_apply(plan.id, "apply", actor)
    cache: dict[str, Writer] = {}
    for change in todo:
        try:
            writer = cache.get(change.family) or writers(change.family)
            cache[change.family] = writer
        except AuditorError as exc:
            report.results.append(ChangeResult(change.id, change.resource, change.family,
                                               [e.describe() for e in change.edits], change.rules, Outcome.failed,
                                               f"no client: {exc}"))
            continue
        report.results.append(apply_change(change, writer, cfg, journal, report.apply_id))
    journal.finish_apply(report.apply_id, report.to_dict())
    return report


def rollback(
    apply_id: str,
    writers: WriterFactory,
    journal: Journal,
    cfg: GuardConfig,
    *,
    approved: bool,
    actor: str = "operator",
) -> ApplyReport:
    """Restore the journaled before-state of every resource the apply changed, newest first, with the same guards.

    A resource that changed again since the apply (its token is not the one the apply left) is a conflict.
    """
    check_approval(approved, "`auditor rollback --yes`, or an answer at the prompt")
    info = journal.apply_info(apply_id)
    if info is None:
        raise AuditorError(f"no apply with id {apply_id} in {journal.path}")
    # Applied changes, and failed ones whose write went through (their after-state was read back).
    entries = [e for e in journal.entries(apply_id) if e.outcome == "applied" or e.after is not None]
    report = ApplyReport(None, info["plan_id"], "rollback")
    if not entries:
        return report
    report.apply_id = journal.start_apply(info["plan_id"], "rollback", actor, rollback_of=apply_id)
    cache: dict[str, Writer] = {}
    for e in reversed(entries):
        target = Target.from_dict(e.target)
        result = ChangeResult(e.change_id, e.resource, e.family, [f"restore the state before {apply_id}"], e.rules,
                              Outcome.failed)
        report.results.append(result)
        try:
            writer = cache.get(e.family) or writers(e.family)
            cache[e.family] = writer
            live = writer.read(target)
        except Exception as exc:
            result.reason = f"cannot read the live resource: {_describe(exc)}"
            continue
        result.token_before = live.token
        if section(e.family, live.state) == section(e.family, e.before):
            result.outcome, result.reason = Outcome.skipped, "the live resource already is in the before-state"
            continue
        unchanged = live.token == e.token_after if e.token_after else section(e.family, live.state) == section(
            e.family, e.after
        )
        if not unchanged:
            result.outcome = Outcome.conflict
            result.reason = "the resource changed again since the apply; restore it by hand from the journal"
            continue
        refusals = check_change(e.family, target, live.state, e.before, [], cfg, restoring=True)
        if refusals:
            result.outcome, result.reason = Outcome.refused, "; ".join(str(r) for r in refusals)
            continue
        _guarded_write(writer=writer, target=target, family=e.family, live=live, new=e.before, result=result,
                       journal=journal, apply_id=report.apply_id, change_id=e.change_id)
    journal.finish_apply(report.apply_id, report.to_dict())
    return report
