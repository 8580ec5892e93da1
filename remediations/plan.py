"""Stage 6, plan (pure, offline): findings -> a reviewable plan of changes, one write per resource.

Only findings of rules in `dryrun` or `enforce` mode that name a `remediation` become changes; exempted findings
never do. Each change names its target, the concurrency token it was planned against (IAM etag, Cloud Armor
fingerprint, Kubernetes resourceVersion), the before and after of what it touches, the edits and the findings and
rules they answer. The plan id is a hash of the changes, so the same findings on the same state give the same id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditor import __version__
from auditor.errors import AuditorError
from auditor.evaluate.rulebook import LoadedRule, Rule
from auditor.model import Asset, Finding, Mode
from remediations.edits import Edit, EditError, canonical_json
from remediations.families import apply_edits, diff_items, family, family_of, kinds, manual_steps, planned_only
from remediations.manual import ManualStep, ManualStepError, merge
from remediations.targets import Target, UnsupportedTarget

PLAN_FORMAT = 1
ACTIVE_MODES = (Mode.dryrun.value, Mode.enforce.value)


class PlanError(AuditorError):
    """A plan file that cannot be used (unreadable, edited after it was written, wrong format)."""


@dataclass
class Change:
    """Every edit to one resource, merged into one write."""

    resource: str  # the asset name
    asset_type: str
    target: Target
    token: str | None  # the concurrency token the change was planned against
    edits: list[Edit]
    before: Any  # section (bindings, rules, subjects) before
    after: Any  # ... and after the edits
    notes: list[str] = field(default_factory=list)  # guard warnings found at plan time

    @property
    def family(self) -> str:
        return self.target.family

    @property
    def token_field(self) -> str:
        return family(self.family).token_field

    @property
    def rules(self) -> list[str]:
        return sorted({r for e in self.edits for r in e.rules})

    @property
    def findings(self) -> list[str]:
        return sorted({f for e in self.edits for f in e.findings})

    @property
    def modes(self) -> list[str]:
        return sorted({m for e in self.edits for m in e.modes})

    @property
    def diff(self) -> list[dict[str, Any]]:
        return diff_items(self.family, self.before, self.after)

    @property
    def id(self) -> str:
        return _digest({"resource": self.resource, "token": self.token, "edits": [e.key for e in self.edits]})

    def members(self) -> set[str]:
        """The principals (IAM members, RBAC subjects) this change adds or removes."""
        return family(self.family).principals(self.edits, self.diff)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "resource": self.resource,
            "asset_type": self.asset_type,
            "target": self.target.to_dict(),
            "token_field": self.token_field,
            "token": self.token,
            "edits": [e.to_dict() for e in self.edits],
            "before": self.before,
            "after": self.after,
            "diff": self.diff,
            "rules": self.rules,
            "findings": self.findings,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Change:
        return cls(
            resource=d["resource"],
            asset_type=d["asset_type"],
            target=Target.from_dict(d["target"]),
            token=d.get("token"),
            edits=[Edit.from_dict(e) for e in d["edits"]],
            before=d.get("before"),
            after=d.get("after"),
            notes=list(d.get("notes", [])),
        )


@dataclass
class Plan:
    changes: list[Change]
    created_at: datetime
    skipped: list[dict[str, Any]] = field(default_factory=list)  # findings that could not be planned, and why
    sources: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=lambda: list(ACTIVE_MODES))
    # Planned-only fixes (cluster settings): shown with their command, API call and impact; apply never runs them.
    manual: list[ManualStep] = field(default_factory=list)

    @property
    def id(self) -> str:
        if self.manual:
            return _digest([[c.to_dict() for c in self.changes], [m.to_dict() for m in self.manual]])
        return _digest([c.to_dict() for c in self.changes])

    def summary(self) -> dict[str, Any]:
        """The blast radius: how many resources, members and rules the plan touches."""
        by_kind: dict[str, int] = {}
        for c in self.changes:
            for e in c.edits:
                by_kind[e.kind] = by_kind.get(e.kind, 0) + 1
        members = set().union(*(c.members() for c in self.changes)) if self.changes else set()
        return {
            "resources": len(self.changes),
            "edits": sum(len(c.edits) for c in self.changes),
            "members": len(members),
            "rules": len({r for c in self.changes for r in c.rules}),
            "findings": len({f for c in self.changes for f in c.findings}),
            "by_kind": dict(sorted(by_kind.items())),
            "by_family": _count(c.family for c in self.changes),
            "skipped_findings": len(self.skipped),
            "manual_steps": len(self.manual),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "id": self.id,
            "tool_version": __version__,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "modes": self.modes,
            "sources": self.sources,
            "summary": self.summary(),
            "changes": [c.to_dict() for c in self.changes],
            "manual": [m.to_dict() for m in self.manual],
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "plan") -> Plan:
        if d.get("format") != PLAN_FORMAT:
            raise PlanError(f"{origin}: not a plan file of format {PLAN_FORMAT} (format: {d.get('format')!r})")
        try:
            plan = cls(
                changes=[Change.from_dict(c) for c in d["changes"]],
                created_at=datetime.fromisoformat(str(d["created_at"]).replace("Z", "+00:00")),
                skipped=list(d.get("skipped", [])),
                sources=list(d.get("sources", [])),
                modes=list(d.get("modes", ACTIVE_MODES)),
                manual=[ManualStep.from_dict(m) for m in d.get("manual", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"{origin}: malformed plan: {type(exc).__name__}: {exc}") from None
        if d.get("id") != plan.id:
            raise PlanError(
                f"{origin}: the plan's content does not match its id {d.get('id')!r} (edited after it was written?); "
                "make a new plan"
            )
        return plan

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")


def load_plan(path: str | Path) -> Plan:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"{path}: no such plan file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"{path}: cannot read the plan: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError(f"{path}: a plan is a JSON object")
    return Plan.from_dict(data, str(path))


def _digest(v: Any) -> str:
    return hashlib.sha256(canonical_json(v).encode()).hexdigest()[:16]


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return dict(sorted(out.items()))


# -- findings -> edits --------------------------------------------------------------------------------------------
def _rule_of(r: LoadedRule | Rule) -> Rule:
    return r.rule if isinstance(r, LoadedRule) else r


def remediable(findings: Iterable[Finding], rules: Iterable[LoadedRule | Rule], modes: Iterable[str] = ACTIVE_MODES
               ) -> list[tuple[Finding, Rule]]:
    """The findings a plan answers: open (not exempted), from rules in the given modes that name a remediation."""
    by_id = {_rule_of(r).id: _rule_of(r) for r in rules}
    wanted = set(modes)
    out = []
    for f in findings:
        rule = by_id.get(f.rule)
        if rule is None or rule.remediation is None or f.exempted is not None:
            continue
        if f.mode.value in wanted:
            out.append((f, rule))
    return out


def needed_assets(findings: Iterable[Finding], rules: Iterable[LoadedRule | Rule],
                  modes: Iterable[str] = ACTIVE_MODES) -> set[str]:
    """The asset names a plan needs to read (the few with planned changes; planned-only steps read none)."""
    return {f.asset for f, r in remediable(findings, rules, modes) if not planned_only(r.remediation or "")}


def edits_for(f: Finding, rule: Rule, asset: Asset) -> list[Edit]:
    """The edits a finding asks for (usually one); EditError says why it cannot be planned."""
    return family_of(rule.remediation or "").edits_for(f, rule, asset)


def _merge(family_name: str, edits: list[Edit]) -> tuple[list[Edit], list[str]]:
    """One edit per distinct change (rules and findings merged); edits that contradict each other cancel out."""
    merged: dict[str, Edit] = {}
    for e in edits:
        m = merged.get(e.key)
        if m is None:
            merged[e.key] = Edit(e.kind, e.args, list(e.rules), list(e.modes), list(e.findings))
        else:
            m.rules = sorted(set(m.rules) | set(e.rules))
            m.modes = sorted(set(m.modes) | set(e.modes))
            m.findings = sorted(set(m.findings) | set(e.findings))
    out, problems = family(family_name).contradictions(list(merged.values()))
    order = {k: i for i, k in enumerate(kinds())}
    out.sort(key=lambda e: (order.get(e.kind, 99), e.key))
    return out, problems


def build_plan(
    findings: Iterable[Finding],
    rules: Iterable[LoadedRule | Rule],
    assets: Mapping[str, Asset],
    *,
    modes: Iterable[str] = ACTIVE_MODES,
    now: datetime | None = None,
    sources: Iterable[str] = (),
    notes: Callable[[Change], Iterable[str]] | None = None,
) -> Plan:
    """The plan for the findings. `assets` holds (at least) the assets the findings point to.

    `notes`, when given, is called as notes(change) -> list[str] to annotate each change (the guards use it to
    show at plan time what apply would refuse).
    """
    modes = list(modes)
    per_asset: dict[str, list[Edit]] = {}
    skipped: list[dict[str, Any]] = []

    def skip(f: Finding, reason: str) -> None:
        skipped.append({"finding": f.id, "rule": f.rule, "asset": f.asset, "reason": reason})

    manual: list[ManualStep] = []
    for f, rule in remediable(findings, rules, modes):
        if planned_only(rule.remediation or ""):
            try:
                manual.extend(manual_steps(rule.remediation or "", f))
            except ManualStepError as exc:
                skip(f, str(exc))
            continue
        asset = assets.get(f.asset)
        if asset is None:
            skip(f, "the asset could not be read again (gone from the sources, or its API refused: see the log)")
            continue
        try:
            family_of(rule.remediation or "").target_for(asset.name, asset.asset_type)
            per_asset.setdefault(asset.name, []).extend(edits_for(f, rule, asset))
        except (UnsupportedTarget, EditError) as exc:
            skip(f, str(exc))
    changes: list[Change] = []
    for name in sorted(per_asset):
        asset = assets[name]
        by_family: dict[str, list[Edit]] = {}
        for e in per_asset[name]:
            by_family.setdefault(family_of(e.kind).name, []).append(e)
        for family_name, raw in sorted(by_family.items()):
            fam = family(family_name)
            fam_edits, problems = _merge(family_name, raw)
            for p in problems:
                skipped.append({"finding": None, "rule": None, "asset": name, "reason": p})
            if not fam_edits:
                continue
            state = fam.state_of(asset)
            try:
                after_state = apply_edits(family_name, state, fam_edits)
            except EditError as exc:
                for e in fam_edits:
                    for fid in e.findings:
                        skipped.append({"finding": fid, "rule": ",".join(e.rules), "asset": name, "reason": str(exc)})
                continue
            before, after = fam.section(state), fam.section(after_state)
            if before == after:
                for e in fam_edits:
                    for fid in e.findings:
                        skipped.append({"finding": fid, "rule": ",".join(e.rules), "asset": name,
                                        "reason": "the snapshot already has the planned state (nothing to change)"})
                continue
            change = Change(
                resource=name,
                asset_type=asset.asset_type,
                target=fam.target_for(name, asset.asset_type),
                token=fam.token_of(state),
                edits=fam_edits,
                before=before,
                after=after,
            )
            if notes is not None:
                change.notes = list(notes(change))
            changes.append(change)
    return Plan(changes=changes, created_at=now or datetime.now(UTC), skipped=skipped, sources=list(sources),
                modes=modes, manual=merge(manual))

