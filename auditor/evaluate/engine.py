"""The engine: each asset is evaluated only against the rules that can match its type.

Rules are indexed by asset type (computed once per type seen, then a dict lookup per asset). Checks without
context run as the assets stream by; checks with context (tenant isolation needs the Namespaces) run when the
stream ends, on the assets their screens kept (an asset a screen rules out is forgotten at once), with the context
types kept whole or, where only names are read, as stubs. Rules of one check share its prefilter: one search over
an asset's members, roles or subjects skips every rule none of whose globs matches. Rules sharing a check and
params run it once. Exemptions turn a finding into an exempted one (never dropped); an expired exemption no longer
exempts and the finding says so.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import NamedTuple

from auditor.evaluate.globs import compile_glob, compile_line_globs
from auditor.evaluate.registry import Context, Outcome, Params, Prefilter, ScreenFn, Unevaluated, Violation
from auditor.evaluate.rulebook import Exemption, LoadedRule
from auditor.model import Asset, Exempted, Finding, NotEvaluated, finding_id

# What a check may not swallow. Anything else it raises, a BaseException included (the CEL library's Rust panics
# arrive as pyo3's PanicException, a BaseException), is an evaluation error of that rule on that asset.
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


@dataclass
class EvaluationError:
    rule: str
    asset: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "asset": self.asset, "error": self.error}


@dataclass
class Evaluation:
    """What an evaluation found. With `sink`, each finding is handed to it as it is made (a scan writing its report
    as it goes) and `findings` stays empty; without, they are kept in `findings`, ordered once the run finishes."""

    findings: list[Finding] = field(default_factory=list)
    assets_by_type: Counter[str] = field(default_factory=Counter)
    errors: list[EvaluationError] = field(default_factory=list)
    # (rule id, exemption index) -> findings it exempted (or would have, when expired)
    exemption_hits: Counter[tuple[str, int]] = field(default_factory=Counter)
    # rules that could not be evaluated, with the reason: the snapshot is then partial (exit 3), never clean
    not_evaluated: list[NotEvaluated] = field(default_factory=list)
    sink: Callable[[Finding], None] | None = None
    # With a sink that can take findings back (the daemon's state staging): (asset name, rule ids) -> forget them
    withdraw: Callable[[str, frozenset[str]], None] | None = None

    def add(self, finding: Finding) -> None:
        if self.sink is not None:
            self.sink(finding)
        else:
            self.findings.append(finding)

    @property
    def assets(self) -> int:
        return sum(self.assets_by_type.values())


def _expiry(e: Exemption) -> str | None:
    return e.expires.isoformat() if e.expires else None


def _exempted(e: Exemption) -> Exempted:
    return Exempted(reason=e.reason, owner=e.owner, ticket=e.ticket, expires=_expiry(e))


MAX_REASONS_PER_RULE = 20  # distinct reasons kept per rule (one per cluster, say): a report, not a log


def _not_evaluated(result: Evaluation, r: LoadedRule, u: Unevaluated) -> None:
    """Record, once per reason, that a rule could not be evaluated (on some assets or at all)."""
    entry = NotEvaluated(r.id, u.reason)
    if entry in result.not_evaluated:
        return
    if sum(1 for n in result.not_evaluated if n.rule_id == r.id) >= MAX_REASONS_PER_RULE:
        return
    result.not_evaluated.append(entry)


def finding_order(f: Finding) -> tuple[int, str, str, str]:
    """The order of findings in a result: worst severity first, then rule, asset and id."""
    return (-f.severity.rank, f.rule, f.asset, f.id)


def _params_key(r: LoadedRule) -> str:
    try:
        return r.params.model_dump_json()
    except Exception:  # params that do not serialise (a compiled object): this rule shares its check with none
        return f"rule:{r.id}"


def _all_ancestries(r: LoadedRule) -> bool:
    return "**" in r.rule.match.ancestries and not r.rule.match.excluded_ancestries


class _Filter(NamedTuple):
    """The rules of one check with a prefilter, and the union of their globs (None: no glob, nothing matches)."""

    prefilter: Prefilter
    union: re.Pattern[str] | None
    rules: frozenset[int]  # id() of the rules it decides for
    each: tuple[tuple[int, re.Pattern[str] | None], ...]  # and each one's own globs, asked when the union matches


class _Screen(NamedTuple):
    """What `Engine.screen` asks of one deferred rule, gathered once."""

    position: int  # the rule's place in Engine.rules
    rule: int  # id() of the rule
    test: ScreenFn | None
    params: Params
    key: tuple[str, str] | None  # its check key, when rules share check and params (they share the answer)
    reads_context: bool


class _Rules(NamedTuple):
    rules: tuple[LoadedRule, ...]
    needs_path: bool  # some rule restricts ancestries: the asset's ancestry path is computed
    keys: tuple[tuple[str, str], ...] | None  # check keys, when two rules share check and params
    distinct: tuple[tuple[tuple[str, str], LoadedRule], ...] = ()  # then: the first rule of each check key
    filters: tuple[_Filter, ...] = ()
    screens: tuple[_Screen, ...] = ()


def _filters(rules: tuple[LoadedRule, ...]) -> tuple[_Filter, ...]:
    groups: dict[str, list[tuple[LoadedRule, tuple[str, ...]]]] = {}
    for r in rules:
        pf = r.spec.prefilter
        globs = pf.globs(r.params) if pf is not None else None
        if globs is not None:
            groups.setdefault(r.spec.name, []).append((r, tuple(globs)))
    out = []
    for members in groups.values():
        pf = members[0][0].spec.prefilter
        assert pf is not None
        union = compile_line_globs(tuple(dict.fromkeys(g for _, globs in members for g in globs)), pf.sep)
        each = tuple((id(r), compile_line_globs(globs, pf.sep)) for r, globs in members)
        out.append(_Filter(pf, union, frozenset(id(r) for r, _ in members), each if len(each) > 1 else ()))
    return tuple(out)


_NONE: frozenset[int] = frozenset()


def _skipped(asset: Asset, filters: tuple[_Filter, ...]) -> frozenset[int]:
    """id() of the rules whose prefilter finds nothing of theirs in the asset: they would report nothing."""
    out: frozenset[int] = frozenset()
    for f in filters:
        try:
            text = asset.derived(f.prefilter.key, f.prefilter.text)
        except Exception:  # malformed data: the rules run, and their checks report what is wrong
            continue
        if text is None:
            continue
        if f.union is None or f.union.search(text) is None:
            out = out | f.rules
        elif f.each:  # something matched: which of the rules does it concern (seldom asked)
            out = out | {rid for rid, rx in f.each if rx is None or rx.search(text) is None}
    return out


# What checks with context keep of an asset type's assets
NO_CONTEXT, NAMES, WHOLE = 0, 1, 2


class _Plan(NamedTuple):
    """The rules for one asset type: streamed and deferred, for assets with and without an IAM policy."""

    streamed_iam: _Rules
    streamed: _Rules
    deferred_iam: _Rules
    deferred: _Rules
    context: int  # NO_CONTEXT, NAMES (a stub with the asset's name is kept) or WHOLE (the asset is kept)


class Engine:
    def __init__(self, rules: Iterable[LoadedRule], now: datetime | None = None, *, shortcuts: bool = True) -> None:
        """`shortcuts=False` turns off screens and prefilters: every rule runs on every asset it reads, and every
        asset a deferred rule reads is kept to the end (the same findings, slower and with more memory)."""
        self.rules = list(rules)
        self.now = now or datetime.now(UTC)
        self.shortcuts = shortcuts
        self._by_type: dict[str, tuple[tuple[LoadedRule, ...], tuple[LoadedRule, ...]]] = {}
        self._plans: dict[str, _Plan] = {}
        self._context_types = frozenset(t for r in self.rules for t in r.spec.context_types)
        self._name_types = frozenset(t for r in self.rules for t in r.spec.context_names) - self._context_types
        # Rules that share a check and params give the same violations on an asset: the check runs once for them.
        self._check_key = {id(r): (r.spec.name, _params_key(r)) for r in self.rules}
        self._index = {id(r): i for i, r in enumerate(self.rules)}
        self._subsets: dict[tuple[int, ...], _Rules] = {}

    # -- what the rules need --------------------------------------------------------------------------------------
    def asset_type_globs(self) -> frozenset[str]:
        """Every asset type a loaded rule can read (globs); live sources list only these."""
        out: set[str] = set(self._context_types | self._name_types)
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

    def _plan(self, asset_type: str) -> _Plan:
        """What to do with an asset of this type, with and without an IAM policy (computed once per type)."""
        streamed, later = self.rules_for(asset_type)

        def pick(rules: tuple[LoadedRule, ...], has_iam: bool) -> _Rules:
            return self._rules(tuple(r for r in rules if has_iam or not r.spec.needs_iam))

        context = WHOLE if asset_type in self._context_types else NAMES if asset_type in self._name_types else 0
        plan = _Plan(pick(streamed, True), pick(streamed, False), pick(later, True), pick(later, False), context)
        self._plans[asset_type] = plan
        return plan

    def _rules(self, chosen: tuple[LoadedRule, ...]) -> _Rules:
        keys = [self._check_key[id(r)] for r in chosen]
        filters = _filters(chosen)
        needs_path = any(not _all_ancestries(r) for r in chosen)
        shared = len(set(keys)) != len(keys)
        screens = tuple(
            _Screen(self._index[id(r)], id(r), r.spec.screen if self.shortcuts else None, r.params,
                    k if shared else None, r.spec.screen_reads_context)
            for r, k in zip(chosen, keys, strict=True)
        )
        if not shared:
            return _Rules(chosen, needs_path, None, (), filters, screens)
        first: dict[tuple[str, str], LoadedRule] = {}
        for k, r in zip(keys, chosen, strict=True):
            first.setdefault(k, r)
        return _Rules(chosen, needs_path, tuple(keys), tuple(first.items()), filters, screens)

    def subset(self, indices: tuple[int, ...]) -> _Rules:
        """The rules at these positions of `self.rules` (made once per distinct subset)."""
        hit = self._subsets.get(indices)
        if hit is None:
            hit = self._subsets[indices] = self._rules(tuple(self.rules[i] for i in indices))
        return hit

    def screen(self, asset: Asset, later: _Rules, ctx: Context, again: bool = False) -> tuple[int, ...]:
        """The positions of the deferred rules that may still report on this asset (see CheckSpec.screen).

        `again`: the asset passed these screens elsewhere, with less context: only screens that read it run again.
        """
        kept: list[int] = []
        passed: dict[tuple[str, str], bool] = {}  # rules sharing a check and params share its screen's answer
        skip = _skipped(asset, later.filters) if later.filters and self.shortcuts else _NONE
        for position, rule, test, params, key, reads_context in later.screens:
            if rule in skip:
                continue
            if test is not None and (not again or reads_context):
                ok = passed.get(key) if key is not None else None
                if ok is None:
                    try:
                        ok = bool(test(asset, params, ctx))
                    except _FATAL:
                        raise
                    except BaseException:  # kept: the check itself reports the error when it runs at the end
                        ok = True
                    if key is not None:
                        passed[key] = ok
                if not ok:
                    continue
            kept.append(position)
        return tuple(kept)

    def wants(self, asset_type: str, has_iam_policy: bool) -> bool:
        """Whether any rule reads (or keeps as context) an asset of this type; readers skip building the others."""
        plan = self._plans.get(asset_type) or self._plan(asset_type)
        if plan.context != NO_CONTEXT:
            return True
        if has_iam_policy:
            return bool(plan.streamed_iam.rules or plan.deferred_iam.rules)
        return bool(plan.streamed.rules or plan.deferred.rules)

    # -- evaluation ------------------------------------------------------------------------------------------------
    def evaluate(self, assets: Iterable[Asset], result: Evaluation | None = None) -> Evaluation:
        """Evaluate a stream of assets. `result` may be given beforehand so that a reader that skips the assets
        no rule reads counts them in `result.assets_by_type` as they stream by (see `wants`)."""
        run = self.start(result)
        run.feed(assets)
        return run.finish()

    def start(self, result: Evaluation | None = None, on_held: Callable[[Held], None] | None = None) -> EvaluationRun:
        """An evaluation fed piece by piece (`feed`, `absorb`) and closed by `finish`.

        With `on_held`, the assets that checks with context need at the end are handed to it instead of being kept
        (with the positions of the deferred rules still to run on them): a worker evaluating part of a snapshot
        sends them to the process that finishes the evaluation.
        """
        return EvaluationRun(self, result if result is not None else Evaluation(), on_held)

    def _run(self, asset: Asset, rules: _Rules, ctx: Context, result: Evaluation) -> None:
        skip = _skipped(asset, rules.filters) if rules.filters and self.shortcuts else frozenset()
        if len(skip) == len(rules.rules):  # every rule's prefilter said no (or there are none)
            return
        if rules.keys is None and not rules.needs_path:  # the usual case, kept lean: it runs for every asset
            for r in rules.rules:
                if id(r) in skip:
                    continue
                try:
                    violations = list(r.spec.fn(asset, r.params, ctx))
                except _FATAL:
                    raise
                except BaseException as exc:  # a check must never take the scan down (a native panic neither)
                    result.errors.append(EvaluationError(r.id, asset.name, f"{type(exc).__name__}: {exc}"))
                    continue
                for v in violations:
                    if isinstance(v, Unevaluated):
                        _not_evaluated(result, r, v)
                    else:
                        result.add(self._finding(r, asset, v, result))
            return
        memo: dict[tuple[str, str], list[Outcome] | BaseException] | None = None
        if rules.keys is not None and not rules.needs_path:
            # Each distinct check once; when none finds anything (most assets), the rules sharing them have nothing
            # to report either. Otherwise the rules are gone through in order with these outcomes.
            memo = {}
            for key, r in rules.distinct:
                if id(r) in skip:  # rules sharing the key share the params, and the prefilter's answer
                    memo[key] = []
                    continue
                try:
                    memo[key] = list(r.spec.fn(asset, r.params, ctx))
                except _FATAL:
                    raise
                except BaseException as exc:  # reported below, for each rule that shares the check
                    memo[key] = exc
            if not any(memo.values()):
                return
        path = asset.ancestry_path if rules.needs_path else ""
        if memo is None and rules.keys is not None:
            memo = {}
        for i, r in enumerate(rules.rules):
            if id(r) in skip or (rules.needs_path and not r.matches_ancestry(path)):
                continue
            outcome: list[Outcome] | BaseException | None = None
            if memo is not None and rules.keys is not None:
                outcome = memo.get(rules.keys[i])
            if outcome is None:
                try:
                    outcome = list(r.spec.fn(asset, r.params, ctx))
                except _FATAL:
                    raise
                except BaseException as exc:  # a check must never take the scan down; the error is reported
                    outcome = exc
                if memo is not None and rules.keys is not None:
                    memo[rules.keys[i]] = outcome
            if isinstance(outcome, BaseException):
                result.errors.append(EvaluationError(r.id, asset.name, f"{type(outcome).__name__}: {outcome}"))
                continue
            for v in outcome:
                if isinstance(v, Unevaluated):
                    _not_evaluated(result, r, v)
                else:
                    result.add(self._finding(r, asset, v, result))

    def _finding(self, r: LoadedRule, asset: Asset, v: Violation, result: Evaluation) -> Finding:
        rule = r.rule
        message, key, details, remedies = v.message, v.key, v.details, v.remedies
        severity = rule.severity
        if v.severity is not None and v.severity.rank < severity.rank:
            severity = v.severity
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
            severity=severity,
            mode=rule.mode,
            asset=asset.name,
            asset_type=asset.asset_type,
            ancestors=asset.ancestors,
            message=message,
            details=details,
            exempted=exempted,
            expired_exemption=None if exempted else expired,
            remedies=remedies,
        )

    def evaluate_one(self, asset: Asset, ctx: Context, result: Evaluation, *,
                     context_only: bool = False) -> tuple[LoadedRule, ...]:
        """Evaluate one asset against a context already read (the daemon re-evaluating a changed asset between
        cycles, auditor.incremental): its streamed rules (unless `context_only`) and its rules with context, without
        screens. Returns the rules that ran."""
        plan = self._plans.get(asset.asset_type) or self._plan(asset.asset_type)
        streamed, later = (plan.streamed_iam, plan.deferred_iam) if asset.has_iam_policy else (plan.streamed,
                                                                                                plan.deferred)
        ran: tuple[LoadedRule, ...] = ()
        if streamed.rules and not context_only:
            self._run(asset, streamed, ctx, result)
            ran += streamed.rules
        if later.rules:
            self._run(asset, later, ctx, result)
            ran += later.rules
        return ran

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


Held = tuple[Asset, tuple[int, ...]]  # a kept asset, and the positions of the deferred rules to run on it


class EvaluationRun:
    """One evaluation in progress: streamed checks run as assets arrive, checks with context run in `finish`."""

    def __init__(self, engine: Engine, result: Evaluation, on_held: Callable[[Held], None] | None) -> None:
        self.engine = engine
        self.result = result
        self.ctx = Context(now=engine.now)
        self.deferred: list[tuple[Asset, _Rules]] = []
        # Replaced copies (see `forget`): a key of the asset -> how many deferred entries there were when its copy
        # was replaced (the entries of that asset before that place are the replaced copy's); `finish` drops them
        self._gone: dict[Hashable, int] = {}
        self._gone_hashed: dict[int, int] = {}
        self._hash: Callable[[Asset], int] | None = None
        self.on_held = on_held

    def feed(self, assets: Iterable[Asset]) -> None:
        engine, result, ctx, deferred, on_held = self.engine, self.result, self.ctx, self.deferred, self.on_held
        counts = result.assets_by_type
        plans = engine._plans
        by_type = ctx.by_type
        for asset in assets:
            atype = asset.asset_type
            counts[atype] += 1
            plan = plans.get(atype) or engine._plan(atype)
            if asset.has_iam_policy:
                streamed, later = plan.streamed_iam, plan.deferred_iam
            else:
                streamed, later = plan.streamed, plan.deferred
            context = plan.context
            if context == WHOLE or later.rules:
                asset.hold()  # perhaps kept until the end: then its JSON bytes, not the dicts a check decodes
            if context == WHOLE:
                # before the screens run, which may read the context seen so far (this asset included)
                by_type[atype].append(asset)
            if streamed.rules:
                engine._run(asset, streamed, ctx, result)
            kept: tuple[int, ...] = ()
            if later.rules:
                kept = engine.screen(asset, later, ctx)
            if context == NO_CONTEXT and not kept:
                continue
            entry = asset
            if context == NAMES:
                # only its name is read at the end, unless a deferred rule still needs the whole asset: then a stub
                # without payload (sharing the name string) stands for it
                entry = asset if kept else asset.stub()
                by_type[atype].append(entry)
            if on_held is not None:
                on_held((entry, kept))  # a worker: the parent keeps it (this run's context only served the screens)
            elif kept:
                deferred.append((asset, engine.subset(kept)))
            asset.release()

    def absorb(self, part: Evaluation, held: Iterable[Held]) -> None:
        """Add the outcome of another run over the next part of the stream (with `on_held`), in stream order."""
        result = self.result
        result.assets_by_type.update(part.assets_by_type)
        if result.sink is None:
            result.findings.extend(part.findings)
        else:
            for f in part.findings:
                result.sink(f)
        result.errors.extend(part.errors)
        result.exemption_hits.update(part.exemption_hits)
        result.not_evaluated.extend(n for n in part.not_evaluated if n not in result.not_evaluated)
        engine, ctx = self.engine, self.ctx
        plans = engine._plans
        for asset, kept in held:
            atype = asset.asset_type
            plan = plans.get(atype) or engine._plan(atype)
            if plan.context != NO_CONTEXT:
                ctx.by_type[atype].append(asset)
            if kept:
                # Screened again: the worker saw the context of its own part, this run has seen everything before.
                later = engine.subset(kept)
                if any(r.spec.screen_reads_context for r in later.rules):
                    kept = engine.screen(asset, later, ctx, again=True)
                    later = engine.subset(kept)
                    asset.release()
                if kept:
                    self.deferred.append((asset, later))

    def streamed_rule_ids(self, asset_type: str, has_iam_policy: bool) -> frozenset[str]:
        """The rules run on an asset of this type as it streams by (those a replaced copy's findings came from)."""
        plan = self.engine._plans.get(asset_type) or self.engine._plan(asset_type)
        return frozenset(r.id for r in (plan.streamed_iam if has_iam_policy else plan.streamed).rules)

    def forget(self, asset: Asset) -> None:
        """Withdraw an asset fed earlier, which a later copy of it (same name and content) replaces: its count, the
        findings its streamed rules gave, and the deferred rules still to run on it. (What context checks kept of it
        stays: context is read by name.)"""
        rules = self.streamed_rule_ids(asset.asset_type, asset.has_iam_policy)
        result = self.result
        result.assets_by_type[asset.asset_type] -= 1
        if rules and result.withdraw is not None:
            result.withdraw(asset.name, rules)
        elif rules:
            result.findings[:] = [f for f in result.findings if f.asset != asset.name or f.rule not in rules]
        # dropped in `finish`: filtering the list here took time in the number of copies replaced times its length
        self._gone[(asset.name, asset.has_iam_policy, asset.has_resource)] = len(self.deferred)

    def forget_hashed(self, keys: Iterable[int], hash_: Callable[[Asset], int]) -> None:
        """`forget`'s part for the deferred rules, for copies known by a hash of what makes them one (`hash_`)."""
        self._hash = hash_
        for key in keys:
            self._gone_hashed[key] = len(self.deferred)

    def _live(self) -> list[tuple[Asset, _Rules]]:
        """The deferred entries but those of replaced copies."""
        gone, hashed, hash_ = self._gone, self._gone_hashed, self._hash
        if not gone and not hashed:
            return self.deferred
        return [
            (a, later)
            for i, (a, later) in enumerate(self.deferred)
            if not (gone and i < gone.get((a.name, a.has_iam_policy, a.has_resource), 0))
            and not (hashed and hash_ is not None and i < hashed.get(hash_(a), 0))
        ]

    def finish(self) -> Evaluation:
        """Run the checks with context, then order the findings."""
        engine, result, ctx = self.engine, self.result, self.ctx
        for asset, later in self._live():
            engine._run(asset, later, ctx, result)
            asset.release()
        self.deferred = []
        if result.sink is None:
            result.findings.sort(key=finding_order)
        return result
