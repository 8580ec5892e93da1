"""The engine: each asset is evaluated only against the rules that can match its type.

Rules are indexed by asset type (computed once per type seen, then a dict lookup per asset). Checks without
context run as the assets stream by; checks with context (tenant isolation needs the Namespaces) keep just the
assets they need and run when the stream ends. Exemptions turn a finding into an exempted one (never dropped);
an expired exemption no longer exempts and the finding says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from auditor.evaluate.globs import compile_glob
from auditor.evaluate.registry import Context
from auditor.evaluate.rulebook import Exemption, LoadedRule
from auditor.model import Asset, Exempted, Finding, finding_id


@dataclass
class EvaluationError:
    rule: str
    asset: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "asset": self.asset, "error": self.error}


@dataclass
class Evaluation:
    findings: list[Finding] = field(default_factory=list)
    assets_by_type: Counter[str] = field(default_factory=Counter)
    errors: list[EvaluationError] = field(default_factory=list)
    # (rule id, exemption index) -> findings it exempted (or would have, when expired)
    exemption_hits: Counter[tuple[str, int]] = field(default_factory=Counter)

    @property
    def assets(self) -> int:
        return sum(self.assets_by_type.values())


def _expiry(e: Exemption) -> str | None:
    return e.expires.isoformat() if e.expires else None


def _exempted(e: Exemption) -> Exempted:
    return Exempted(reason=e.reason, owner=e.owner, ticket=e.ticket, expires=_expiry(e))


def _finding_order(f: Finding) -> tuple[int, str, str, str]:
    return (-f.severity.rank, f.rule, f.asset, f.id)


class Engine:
    def __init__(self, rules: Iterable[LoadedRule], now: datetime | None = None) -> None:
        self.rules = list(rules)
        self.now = now or datetime.now(UTC)
        self._by_type: dict[str, tuple[tuple[LoadedRule, ...], tuple[LoadedRule, ...]]] = {}
        self._context_types = frozenset(t for r in self.rules for t in r.spec.context_types)

    # -- what the rules need --------------------------------------------------------------------------------------
    def asset_type_globs(self) -> frozenset[str]:
        """Every asset type a loaded rule can read (globs); live sources list only these."""
        out: set[str] = set(self._context_types)
        for r in self.rules:
            for t in r.rule.match.asset_types:
                if t in ("*", "**"):
                    out.update(x for x in r.spec.asset_types)
                else:
                    out.add(t)
        return frozenset(out)

    def needs_iam(self) -> bool:
        return any(r.spec.needs_iam for r in self.rules)

    def rules_for(self, asset_type: str) -> tuple[tuple[LoadedRule, ...], tuple[LoadedRule, ...]]:
        """(streamed rules, deferred rules) whose match and check accept this asset type."""
        hit = self._by_type.get(asset_type)
        if hit is None:
            rules = [r for r in self.rules if r.matches_type(asset_type)]
            hit = (tuple(r for r in rules if not r.spec.deferred), tuple(r for r in rules if r.spec.deferred))
            self._by_type[asset_type] = hit
        return hit

    # -- evaluation ------------------------------------------------------------------------------------------------
    def evaluate(self, assets: Iterable[Asset]) -> Evaluation:
        result = Evaluation()
        ctx = Context(now=self.now)
        deferred: list[tuple[Asset, tuple[LoadedRule, ...]]] = []
        counts = result.assets_by_type
        context_types = self._context_types
        for asset in assets:
            atype = asset.asset_type
            counts[atype] += 1
            streamed, later = self.rules_for(atype)
            if atype in context_types:
                ctx.by_type[atype].append(asset)
            if later:
                deferred.append((asset, later))
            if streamed:
                self._run(asset, streamed, ctx, result)
        for asset, later in deferred:
            self._run(asset, later, ctx, result)
        result.findings.sort(key=_finding_order)
        return result

    def _run(self, asset: Asset, rules: tuple[LoadedRule, ...], ctx: Context, result: Evaluation) -> None:
        path = asset.ancestry_path
        for r in rules:
            if r.spec.needs_iam and not asset.has_iam_policy:
                continue
            if not r.matches_ancestry(path):
                continue
            try:
                violations = list(r.spec.fn(asset, r.params, ctx))
            except Exception as exc:  # a check must never take the scan down; the error is reported
                result.errors.append(EvaluationError(r.id, asset.name, f"{type(exc).__name__}: {exc}"))
                continue
            for v in violations:
                result.findings.append(self._finding(r, asset, v.message, v.key, v.details, result))

    def _finding(
        self, r: LoadedRule, asset: Asset, message: str, key: str, details: dict[str, Any], result: Evaluation
    ) -> Finding:
        rule = r.rule
        exempted = expired = None
        for i, e in enumerate(rule.exemptions):
            if not compile_glob(e.resource).match(asset.name):
                continue
            if e.details and not all(
                compile_glob(g, ".").match(str(details.get(k, ""))) for k, g in e.details.items()
            ):
                continue
            result.exemption_hits[(rule.id, i)] += 1
            if e.expires is not None and e.expires < self.today:
                expired = expired or _exempted(e)
                continue
            exempted = _exempted(e)
            break
        return Finding(
            id=finding_id(rule.id, asset.name, key),
            rule=rule.id,
            check=rule.check,
            severity=rule.severity,
            mode=rule.mode,
            asset=asset.name,
            asset_type=asset.asset_type,
            message=message,
            details=details,
            exempted=exempted,
            expired_exemption=None if exempted else expired,
        )

    @property
    def today(self) -> date:
        return self.now.date()

    def stale_exemptions(self, result: Evaluation) -> list[tuple[LoadedRule, int, Exemption]]:
        """Exemptions that matched no finding in this evaluation: candidates for removal."""
        return [
            (r, i, e)
            for r in self.rules
            for i, e in enumerate(r.rule.exemptions)
            if result.exemption_hits[(r.id, i)] == 0
        ]
