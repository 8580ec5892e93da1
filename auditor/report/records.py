"""What a report says about a rule and a finding, typed: the rule's facts every format repeats (description,
rationale, remedy, labels, severity) and the finding as JSON (`FindingRecord`), encoded with msgspec."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from auditor.evaluate.rulebook import LoadedRule
from auditor.model import Exempted, Finding
from auditor.plugins import remediation_kinds


class ExemptionRecord(msgspec.Struct):
    reason: str
    owner: str
    ticket: str | None
    expires: str | None


class FindingRecord(msgspec.Struct, omit_defaults=True):
    """A finding in JSON and NDJSON reports; the rule's `rationale`, `remedy` and `labels` follow it."""

    id: str
    rule: str
    check: str
    severity: str
    mode: str
    asset: str
    asset_type: str
    project: str | None
    ancestry: str
    message: str
    details: dict[str, Any]
    exempted: bool
    exemption: ExemptionRecord | None = None
    expired_exemption: ExemptionRecord | None = None


class Remedy(msgspec.Struct):
    text: str
    kind: str | None  # the remediation (plan kind) that fixes it, when there is one


def _exemption(e: Exempted | None) -> ExemptionRecord | None:
    return None if e is None else ExemptionRecord(e.reason, e.owner, e.ticket, e.expires)


def finding_record(f: Finding, project: str | None, ancestry: str) -> FindingRecord:
    """The finding's record; its `project` and `ancestry` (`Finding.project`, `Finding.ancestry`) given, as the
    findings of one asset share them. Fields by position: this runs for every finding of a report."""
    return FindingRecord(
        f.id, f.rule, f.check, f.severity, f.mode, f.asset, f.asset_type, project, ancestry, f.message, f.details,
        f.exempted is not None, _exemption(f.exempted), _exemption(f.expired_exemption),
    )  # fmt: skip


@dataclass(frozen=True)
class RuleFacts:
    """One rule as reports describe it."""

    id: str
    check: str
    severity: str
    rank: int
    mode: str
    description: str
    rationale: str
    remedy: Remedy
    labels: dict[str, str]
    origin: str

    @classmethod
    def of(cls, r: LoadedRule) -> RuleFacts:
        kinds = remediation_kinds()  # what the installed remediation families offer, as the rulebook reads it
        kind = r.rule.remediation
        if kind is not None and kind in kinds:
            text = f"{kinds[kind].summary[0].upper()}{kinds[kind].summary[1:]}: `auditor plan` proposes the change"
        else:
            text = "no automatic fix: change the resource by hand, or exempt it with a reason, an owner and an expiry"
        return cls(
            id=r.id,
            check=r.rule.check,
            severity=r.rule.severity.value,
            rank=r.rule.severity.rank,
            mode=r.rule.mode.value,
            description=r.rule.description.strip(),
            rationale=" ".join(r.rule.rationale.split()),
            remedy=Remedy(text, kind),
            labels=dict(r.rule.labels),
            origin=r.origin,
        )

    @property
    def title(self) -> str:
        return self.description or self.check


def report_order(rules: Iterable[LoadedRule]) -> list[RuleFacts]:
    """Rules as reports list them: worst severity first, then by id."""
    facts = {r.id: RuleFacts.of(r) for r in rules}
    return sorted(facts.values(), key=lambda r: (-r.rank, r.id))
