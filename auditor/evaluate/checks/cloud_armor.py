"""Stage evaluate: Cloud Armor checks on `compute.googleapis.com/SecurityPolicy` assets.

Rules are read through `policy.armor_rules`, so both spellings work: `rules` and `srcIpRanges` (Compute API), `rule`
and `srcIpRange` (CAI resource data). Every finding names the rule it is about in its details (`priority`,
`action`, `src_ranges`), which is what the remediation planner reads; desired-state findings also carry `change`
(missing, extra, changed) and, for missing and changed rules, the rule as it should be (`desired`, Compute API
spelling).

Rules whose match is a CEL expression (`match.expr`) cannot be judged on their source addresses: the checks that
reason about ranges skip them and say so in their docstrings.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator
from functools import lru_cache
from itertools import compress
from operator import attrgetter, eq
from typing import Any

import msgspec
from pydantic import Field, field_validator, model_validator

from auditor.evaluate import ranges
from auditor.evaluate.globs import any_match, glob_match
from auditor.evaluate.policy import DEFAULT_RULE_PRIORITY, ArmorRule, asset_armor_rules
from auditor.evaluate.ranges import Interval
from auditor.evaluate.registry import Context, NoParams, Params, Violation, check
from auditor.model import Asset
from auditor.remedies import Remedy, RemoveRule, SetDefaultDeny, SetRule, SetRuleAction

SECURITY_POLICY = "compute.googleapis.com/SecurityPolicy"
OPEN_RANGES = ("*", "0.0.0.0/0", "::/0")
# Actions that let matching traffic through: `allow`, and the rate-limit actions, whose conforming requests are
# allowed (their conformAction can only be "allow").
ADMITTING_ACTIONS = ("allow", "throttle", "rate_based_ban")
RATE_LIMIT_ACTIONS = ("throttle", "rate_based_ban")
ACTION_PATTERN = r"^(allow|deny(\((403|404|502)\))?|redirect|throttle|rate_based_ban)$"

# -- helpers ------------------------------------------------------------------------------------------------------
def parse_ranges(texts: Iterable[str]) -> list[Interval] | None:
    """Every range as intervals (see auditor/evaluate/ranges.py), or None when one of them is not an address (the
    rule is then not judged)."""
    out: list[Interval] = []
    for t in texts:
        ivs = ranges.parse(t)
        if ivs is None:
            return None
        out.extend(ivs)
    return out


@lru_cache(maxsize=65536)
def _canonical(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return text


def normalized_ranges(texts: Iterable[str]) -> list[str]:
    """Ranges in one canonical spelling (sorted, `1.2.3.4` as `1.2.3.4/32`), to compare two rules."""
    return sorted({"*" if t.strip() == "*" else _canonical(t.strip()) for t in texts})


class RuleRanges(msgspec.Struct, frozen=True, gc=False):
    """A rule's source ranges, parsed: the intervals of those that are addresses (`valid`), the same list when all
    of them are (`all`, else None), and `each` range's intervals (None: not an address).

    `each` is kept only when a range is not one interval (`*`, not an address): in the usual rule range k is
    interval k of `valid`, and a tuple around each would cost a sixth of the parse. A Struct (made in C, a quarter of
    a NamedTuple's time: there is one per rule), untracked by the garbage collector (it holds tuples and lists of
    intervals, never itself)."""

    valid: list[Interval]
    all: list[Interval] | None
    odd: tuple[tuple[Interval, ...] | None, ...] | None  # `each` when not one interval per range

    @property
    def each(self) -> tuple[tuple[Interval, ...] | None, ...]:
        return tuple((iv,) for iv in self.valid) if self.odd is None else self.odd


def _rule_ranges(asset: Asset) -> tuple[RuleRanges, ...]:
    many = ranges.parse_many
    out = []
    for r in asset_armor_rules(asset):
        valid, odd = many(r.src_ranges)
        out.append(RuleRanges(valid, valid if odd is None or None not in odd else None, odd))
    return tuple(out)


def armor_rule_ranges(asset: Asset) -> tuple[RuleRanges, ...]:
    """The parsed ranges of each rule of `asset_armor_rules(asset)` (same order), made once per asset."""
    return asset.derived("cloud_armor.rule_ranges", _rule_ranges)


def _union_covers_a_family(rr: RuleRanges) -> bool:
    ivs = sorted(rr.valid)
    # A union covering a family has an interval starting at its first address: most rules are ruled out by two
    # lookups, without building their union.
    if not ivs or (ivs[0][0] != 0 and ivs[min(bisect_left(ivs, (ranges.V6, -1)), len(ivs) - 1)][0] != ranges.V6):
        return False
    u = ranges.Union(ivs)
    return u.covers(*ranges.V4_ALL) or u.covers(*ranges.V6_ALL)


# Every CIDR block starting at the first address of a family (0.0.0.0/0 to /32, ::/0 to /128): a union of blocks
# covers a family only if it holds one of them.
_ORIGIN_BLOCKS = frozenset(
    [(0, (1 << bits) - 1) for bits in range(33)] + [(ranges.V6, ranges.V6 + (1 << bits) - 1) for bits in range(129)]
)


def only_source_ip_match(r: ArmorRule) -> bool:
    """The rule matches on source ranges alone (SRC_IPS_V1), not on a CEL expression or anything else."""
    return r.expression is None and bool(r.src_ranges) and r.source_match


def rule_details(r: ArmorRule, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"priority": r.priority, "action": r.action, "src_ranges": list(r.src_ranges)}
    if r.expression is not None:
        d["expression"] = r.expression
    if r.preview:
        d["preview"] = True
    if r.description:
        d["description"] = r.description
    d.update(extra)
    return d


def offered(r: ArmorRule) -> tuple[Remedy, ...]:
    """The fixes of a rule-level finding: the default rule is made to deny; another rule is removed, or made to
    deny (the rule's `remediation:` kind picks)."""
    if r.is_default:
        return (SetDefaultDeny(),)
    # Remedies are frozen: one tuple per priority serves every finding at it (most findings of a messy
    # organization are rule-level ones), up to a bound, since priorities are the data's.
    hit = _OFFERED.get(r.priority)
    if hit is None:
        hit = (RemoveRule(r.priority), SetRuleAction(r.priority))
        if len(_OFFERED) < 4096:
            _OFFERED[r.priority] = hit
    return hit


_OFFERED: dict[int, tuple[Remedy, ...]] = {}
_priority_of = attrgetter("priority")


def _default_deny(priority: int) -> tuple[Remedy, ...]:
    return (SetDefaultDeny(),) if priority == DEFAULT_RULE_PRIORITY else ()


def policy_name(asset: Asset) -> str:
    return str(asset.resource.get("name") or asset.name.rsplit("/", 1)[-1])


def _validate_ranges(values: list[str]) -> list[str]:
    """Ranges written in a rule file: strict, so that `10.0.0.1/8` (a typo for a host or a network) is refused."""
    problems = []
    for v in values:
        if v.strip() == "*":
            continue
        try:
            ipaddress.ip_network(v.strip())
        except ValueError as exc:
            problems.append(f"{v} ({exc})" if "host bits" in str(exc) else v)
    if problems:
        raise ValueError(f"not an IP address or CIDR range: {', '.join(problems)}")
    return values


# -- default rule ---------------------------------------------------------------------------------------------------
@check("cloud_armor.default_rule_denies", params=NoParams, asset_types=[SECURITY_POLICY])
def default_rule_denies(asset: Asset, params: NoParams, ctx: Context) -> Iterator[Violation]:
    """The default rule (priority 2147483647) must deny, and be enforced (not in preview).

    A default rule that allows turns the policy into a deny list: every source not explicitly blocked gets in.
    A policy without a default rule (possible in hand-written or truncated data) is reported too.

    ```yaml
    - id: armor-default-rule-denies
      check: cloud_armor.default_rule_denies
      severity: high
      mode: dryrun
      remediation: cloud_armor.set_default_deny
    ```
    """
    rules = asset_armor_rules(asset)
    i = len(rules)  # rules come by priority: the default rule is among the last
    while i and rules[i - 1].priority >= DEFAULT_RULE_PRIORITY:
        i -= 1
    default = next((r for r in rules[i:] if r.is_default), None)
    if default is None:
        yield Violation(
            "the policy has no default rule (priority 2147483647)",
            "default",
            {"priority": DEFAULT_RULE_PRIORITY, "action": None, "src_ranges": []},
            (SetDefaultDeny(),),
        )
    elif not default.denies:
        yield Violation(
            f"the default rule's action is {default.action or 'empty'}: traffic no rule matches is let through",
            "default",
            rule_details(default),
            offered(default),
        )
    elif default.preview:
        yield Violation(
            f"the default rule denies ({default.action}) but is in preview: it is only logged, traffic gets through",
            "default",
            rule_details(default),
            offered(default),
        )


# -- open and untrusted sources -----------------------------------------------------------------------------------
class OpenAllowParams(Params):
    open_ranges: list[str] = Field(
        default_factory=lambda: list(OPEN_RANGES),
        description="Source ranges that mean everyone (any /0 counts too, however it is spelled).",
    )
    actions: list[str] = Field(
        default_factory=lambda: list(ADMITTING_ACTIONS),
        description="Actions that let traffic through (throttle and rate_based_ban allow requests under the limit).",
    )


@check("cloud_armor.no_open_allow", params=OpenAllowParams, asset_types=[SECURITY_POLICY])
def no_open_allow(asset: Asset, params: OpenAllowParams, ctx: Context) -> Iterator[Violation]:
    """No rule other than the default may let every source address in (`*`, `0.0.0.0/0`, `::/0`).

    Ranges that together cover a whole address family (`0.0.0.0/1` and `128.0.0.0/1`) count as open.

    `throttle` and `rate_based_ban` rules count: requests under their limit are allowed, so a rate limit on `*`
    above a default deny lets everyone in. Rules matched by a CEL expression are not judged (an expression cannot
    be read as a set of addresses). A deliberate exception goes in the rule's `exemptions`, narrowed with
    `details: {priority: "1000"}`.

    ```yaml
    - id: armor-no-open-allow
      check: cloud_armor.no_open_allow
      severity: high
      params: {actions: [allow]}   # default: allow, throttle, rate_based_ban
      mode: dryrun
      remediation: cloud_armor.remove_rule
    ```
    """
    actions, open_ranges, families = params.actions, frozenset(params.open_ranges), ranges.FAMILIES
    listed = _listed_open_ranges(open_ranges)
    rules, rrs = asset_armor_rules(asset), armor_rule_ranges(asset)
    if listed:
        suspects: Iterable[int] = range(len(rules))
    else:
        # Without listed strings a rule opens a family only through a block starting at the family's first
        # address (the family itself, or the lowest of blocks that together are the family): one set question per
        # rule, in C, leaves the few rules worth reading.
        origins = _ORIGIN_BLOCKS
        suspects = [k for k, rr in enumerate(rrs) if not origins.isdisjoint(rr.valid)]
    for k in suspects:
        r, rr = rules[k], rrs[k]
        if r.action not in actions or r.is_default:
            continue
        if families.isdisjoint(rr.valid) and not (listed and any(s.strip() in listed for s in r.src_ranges)):
            opened = []  # the usual rule: no range is open by itself (one set lookup per range, in C)
        else:
            # a range is open when it is a whole family (`*`, any /0) or listed as open
            opened = [s for s, ivs in zip(r.src_ranges, rr.each, strict=True)
                      if (ivs is not None and (len(ivs) > 1 or ivs[0] in families))
                      or s.strip() in open_ranges]  # fmt: skip
        if not opened and r.src_ranges and _union_covers_a_family(rr):
            opened = list(r.src_ranges)  # halves that together are every address: 0.0.0.0/1 and 128.0.0.0/1
        if opened:
            how = " (requests under the rate limit are allowed)" if r.action in RATE_LIMIT_ACTIONS else ""
            yield Violation(
                f"rule {r.priority} ({r.action}) lets every address in: {', '.join(opened)}{how}",
                str(r.priority),
                rule_details(r),
                offered(r),
            )


@lru_cache(maxsize=64)
def _listed_open_ranges(open_ranges: frozenset[str]) -> frozenset[str]:
    """Open ranges that are not whole families (the others are found by their intervals): compared as strings."""
    return frozenset(o for o in open_ranges if not ranges.FAMILIES.issuperset(ranges.parse(o) or ((0, 0),)))


class TrustedRangesParams(Params):
    trusted_ranges: list[str] = Field(
        min_length=1, description="CIDR ranges (IPv4 and IPv6) an allow rule may open to; `*` is not accepted."
    )
    actions: list[str] = Field(
        default_factory=lambda: list(ADMITTING_ACTIONS), description="Actions whose sources must be trusted."
    )

    @field_validator("trusted_ranges")
    @classmethod
    def _ranges(cls, v: list[str]) -> list[str]:
        _validate_ranges(v)
        if any(t.strip() == "*" for t in v):
            raise ValueError("'*' cannot be a trusted range: list the ranges")
        return v


@check("cloud_armor.trusted_source_ranges", params=TrustedRangesParams, asset_types=[SECURITY_POLICY])
def trusted_source_ranges(asset: Asset, params: TrustedRangesParams, ctx: Context) -> Iterator[Violation]:
    """Rules that let traffic in may only name source ranges inside the declared trusted ranges.

    A range is trusted when it is a subnet of one trusted range (or of their union: two adjacent /25 cover a /24),
    IPv4 and IPv6 alike; a single address counts as a /32 or /128. `*` is never trusted. The default rule is left
    to `cloud_armor.default_rule_denies`. Rules matched by a CEL expression are not judged. A source range that is
    not an address at all is reported as such.

    ```yaml
    - id: armor-allow-only-trusted-ranges
      check: cloud_armor.trusted_source_ranges
      severity: medium
      params:
        trusted_ranges: [203.0.113.0/24, 198.51.100.0/24, "2001:db8:100::/48"]
    ```
    """
    trusted = ranges.cached_union(tuple(params.trusted_ranges))
    outside, outside_each = trusted.outside, trusted.outside_each
    actions = params.actions
    for r, rr in zip(asset_armor_rules(asset), armor_rule_ranges(asset), strict=True):
        if r.action not in actions or r.expression is not None or r.priority == DEFAULT_RULE_PRIORITY:
            continue
        untrusted = outside(r.src_ranges, rr.valid) if rr.odd is None else outside_each(r.src_ranges, rr.odd)
        if untrusted:
            yield Violation(
                f"rule {r.priority} ({r.action}) lets in {', '.join(untrusted)}, outside the trusted ranges",
                str(r.priority),
                rule_details(r, untrusted=untrusted),
                offered(r),
            )


# -- rule hygiene -------------------------------------------------------------------------------------------------
class PreviewParams(Params):
    actions: list[str] = Field(default_factory=lambda: ["*"], description="Action globs of the rules to look at.")


@check("cloud_armor.no_preview_rules", params=PreviewParams, asset_types=[SECURITY_POLICY])
def no_preview_rules(asset: Asset, params: PreviewParams, ctx: Context) -> Iterator[Violation]:
    """Rules left in preview: they only log what they would do, so the protection they describe is not there.

    Preview is how a rule is tried before it is enforced; one left there for good is a deny that never denies.

    ```yaml
    - id: armor-no-preview-rules
      check: cloud_armor.no_preview_rules
      severity: medium
      params: {actions: ["deny*", throttle, rate_based_ban]}
    ```
    """
    for r in asset_armor_rules(asset):
        if r.preview and any_match(params.actions, r.action):
            yield Violation(
                f"rule {r.priority} ({r.action}) is in preview: it is logged, not enforced",
                str(r.priority),
                rule_details(r),
                offered(r),
            )


@check("cloud_armor.unique_priorities", params=NoParams, asset_types=[SECURITY_POLICY])
def unique_priorities(asset: Asset, params: NoParams, ctx: Context) -> Iterator[Violation]:
    """No two rules share a priority: which one is evaluated first is then undefined.

    The Compute API refuses duplicates, but exported, generated and hand-edited policies have them.

    ```yaml
    - id: armor-unique-priorities
      check: cloud_armor.unique_priorities
      severity: medium
    ```
    """
    rules = asset_armor_rules(asset)
    priorities = list(map(_priority_of, rules))
    if len(set(priorities)) == len(priorities):
        return  # the usual policy
    # Rules come by priority: those sharing one are neighbours, found by comparing each priority with the next (in C).
    shared = sorted(set(compress(priorities, map(eq, priorities, priorities[1:]))))
    for priority in shared:
        i = bisect_left(priorities, priority)
        rs = rules[i : bisect_right(priorities, priority, i)]
        yield Violation(
            f"{len(rs)} rules share priority {priority} ({', '.join(r.action for r in rs)})",
            str(priority),
            {
                "priority": priority,
                "action": rs[0].action,
                "src_ranges": sorted({s for r in rs for s in r.src_ranges}),
                "actions": [r.action for r in rs],
            },
        )


class ShadowParams(Params):
    open_rules_shadow: bool = Field(
        default=False,
        description="Count rules matching every address (`*`, /0) as shadowing. Off: they are no_open_allow's "
        "business, and removing the rules below them along with them would change what the policy does.",
    )


@check("cloud_armor.no_shadowed_rules", params=ShadowParams, asset_types=[SECURITY_POLICY])
def no_shadowed_rules(asset: Asset, params: ShadowParams, ctx: Context) -> Iterator[Violation]:
    """Rules that can never fire: every source range they match is matched first by higher-priority rules.

    Cloud Armor evaluates rules from the lowest priority number up and stops at the first match, so a rule whose
    source ranges lie inside the ranges of enforced rules above it (one superset rule, or several that together
    cover it) is dead: a reviewer reading it believes in a protection that is not there. Only rules whose match is
    purely `srcIpRanges` are compared, on both sides: a rule with an `expr` match (CEL) cannot be judged, since
    what it matches is not a set of addresses. Rules in preview do not shadow (they do not stop evaluation), and
    rules sharing one priority are left to `cloud_armor.unique_priorities`. A rule matching every address (an
    allow-all or a deny-all above the default) shadows everything below it: by default it is not counted, since
    `cloud_armor.no_open_allow` reports it and the fix is to remove it, not the rules it hides
    (`open_rules_shadow: true` counts it).

    ```yaml
    - id: armor-no-shadowed-rules
      check: cloud_armor.no_shadowed_rules
      severity: low
      mode: dryrun
      remediation: cloud_armor.remove_rule
    ```
    """
    rules, rrs = asset_armor_rules(asset), armor_rule_ranges(asset)
    for k, by in _dead_rules(rules, rrs, params.open_rules_shadow):
        r = rules[k]
        yield Violation(
            f"rule {r.priority} ({r.action}) never fires: its sources are all matched first by "
            f"rule{'s' if len(by) > 1 else ''} {', '.join(map(str, by))}",
            str(r.priority),
            rule_details(r, shadowed_by=by),
            offered(r),
        )


def _dead_rules(
    rules: tuple[ArmorRule, ...], rrs: tuple[RuleRanges, ...], open_rules_shadow: bool
) -> list[tuple[int, list[int]]]:
    """The dead rules of a policy (their positions in `rules`), each with the priorities of the rules shadowing it.

    One walk by priority keeps the union of the enforced rules met so far; a rule joins it once a rule of a higher
    priority number is reached (rules sharing a priority do not shadow one another). A dead rule joins nothing
    (what it matches is matched already). Which rules shadow the dead ones is asked afterwards, of an index built
    once (`_Shadowers`). A policy costs its rules times their ranges, times a logarithm.
    """
    families = ranges.FAMILIES
    union = ranges.GrowingUnion()
    joined: list[int] = []  # positions of the rules in the union, in the order they joined
    pending: list[int] = []  # enforced rules of the priority being walked: they join once it is passed
    pending_priority = 0
    dead: list[tuple[int, int]] = []  # (position, how many rules had joined then)
    for k, r in enumerate(rules):
        ivs = rrs[k].all
        # `only_source_ip_match`: with every range an address, `ivs` is empty only when the rule has no range
        if not ivs or r.expression is not None or not r.source_match:
            continue
        priority = r.priority
        if pending and pending_priority < priority:
            for q in pending:
                union.add_all(rrs[q].valid)
            joined += pending
            pending = []
        if joined and priority != DEFAULT_RULE_PRIORITY and union.covers_all(ivs):
            dead.append((k, len(joined)))
            continue
        if not r.preview and (open_rules_shadow or families.isdisjoint(ivs)):
            pending.append(k)
            pending_priority = priority
    if not dead:
        return []
    index = _Shadowers(rules, rrs, joined[: dead[-1][1]], [rrs[k].valid for k, _ in dead])
    return [(k, index.overlapping(rrs[k].valid, limit)) for k, limit in dead]


class _Shadowers:
    """Which of the rules that joined the union have a range overlapping a dead rule's, for `no_shadowed_rules`.

    Built once per policy with dead rules, of the joined rules' ranges that meet one of the dead rules' (one
    binary search each in the union of those: a few ranges stay); a question names how many rules had joined when
    its dead rule was met. Ranges are CIDR blocks, nested or disjoint, so a block overlapping a range either starts
    inside it (a slice of the blocks sorted by start) or contains it (one lookup per larger block size of its
    family).
    """

    __slots__ = ("blocks", "by_start", "priorities", "sizes")

    def __init__(
        self, rules: tuple[ArmorRule, ...], rrs: tuple[RuleRanges, ...], joined: list[int], dead: list[list[Interval]]
    ) -> None:
        self.priorities = [rules[k].priority for k in joined]
        self.by_start: list[tuple[int, int]] = []  # (start, join order), sorted
        self.blocks: dict[Interval, list[int]] = defaultdict(list)  # block -> join orders, ascending
        sizes: tuple[set[int], set[int]] = (set(), set())  # block sizes present, IPv4 and IPv6
        by_start, blocks = self.by_start, self.blocks
        near = ranges.Union(iv for ivs in dead for iv in ivs).bounds
        near.append(ranges.V6 << 1)  # past every address: no search lands at the end
        v6 = ranges.V6
        for n, k in enumerate(joined):
            for iv in rrs[k].valid:
                lo, hi = iv
                i = bisect_right(near, lo)
                if not i & 1 and near[i] > hi:
                    continue  # meets no dead rule's range
                by_start.append((lo, n))
                if hi != lo:  # a single address contains nothing larger than itself: found by its start alone
                    blocks[iv].append(n)
                    sizes[lo >= v6].add(hi - lo + 1)
        by_start.sort()
        self.sizes = (sorted(sizes[0]), sorted(sizes[1]))

    def overlapping(self, ivs: list[Interval], limit: int) -> list[int]:
        """Priorities of the first `limit` joined rules with a range overlapping one of `ivs`, in join order."""
        found: set[int] = set()
        starts, blocks = self.by_start, self.blocks
        for lo, hi in ivs:
            i = bisect_left(starts, (lo, -1))
            j = bisect_right(starts, (hi, limit))
            found.update(n for _, n in starts[i:j] if n < limit)
            v6 = lo >= ranges.V6
            base = ranges.V6 if v6 else 0
            sizes = self.sizes[v6]
            for size in sizes[bisect_right(sizes, hi - lo + 1):]:
                start = base + (lo - base) // size * size
                for n in blocks.get((start, start + size - 1), ()):
                    if n >= limit:
                        break
                    found.add(n)
        return [self.priorities[n] for n in sorted(found)]


# -- required rules and desired state -------------------------------------------------------------------------------
class ArmorRuleSpec(Params):
    """One rule as the team wants it, in the rule file; `body()` gives it in Compute API spelling."""

    priority: int = Field(ge=0, le=DEFAULT_RULE_PRIORITY)
    action: str = Field(pattern=ACTION_PATTERN)
    src_ranges: list[str] = Field(default_factory=list, description="Source ranges (`*` for every address).")
    expression: str | None = Field(default=None, description="A CEL match expression, instead of src_ranges.")
    preview: bool = False
    description: str = ""
    rate_limit_options: dict[str, Any] | None = Field(
        default=None, description="`rateLimitOptions` as the Compute API spells it (throttle, rate_based_ban)."
    )

    @field_validator("src_ranges")
    @classmethod
    def _ranges(cls, v: list[str]) -> list[str]:
        return _validate_ranges(v)

    @model_validator(mode="after")
    def _one_match(self) -> ArmorRuleSpec:
        if bool(self.src_ranges) == (self.expression is not None):
            raise ValueError(f"rule {self.priority}: give either src_ranges or expression (exactly one)")
        if self.action in RATE_LIMIT_ACTIONS and self.rate_limit_options is None:
            raise ValueError(f"rule {self.priority}: a {self.action} rule needs rate_limit_options")
        return self

    def body(self) -> dict[str, Any]:
        match: dict[str, Any]
        if self.expression is not None:
            match = {"expr": {"expression": self.expression}}
        else:
            match = {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": list(self.src_ranges)}}
        out: dict[str, Any] = {
            "priority": self.priority,
            "action": self.action,
            "preview": self.preview,
            "match": match,
        }
        if self.description:
            out["description"] = self.description
        if self.rate_limit_options is not None:
            out["rateLimitOptions"] = self.rate_limit_options
        return out

    def differences(self, r: ArmorRule) -> list[str]:
        """What differs between this desired rule and the policy's rule at the same priority."""
        diffs = []
        if r.action != self.action:
            diffs.append(f"action {r.action} (want {self.action})")
        if r.preview != self.preview:
            diffs.append(f"preview {r.preview} (want {self.preview})")
        if normalized_ranges(r.src_ranges) != normalized_ranges(self.src_ranges):
            diffs.append(f"src_ranges {list(r.src_ranges)} (want {self.src_ranges})")
        if (r.expression or None) != self.expression:
            diffs.append(f"expression {r.expression!r} (want {self.expression!r})")
        if self.rate_limit_options is not None and r.raw.get("rateLimitOptions") != self.rate_limit_options:
            diffs.append("rateLimitOptions")
        return diffs


class RequiredRule(Params):
    name: str = Field(min_length=1, description="What the rule is for, as findings name it.")
    actions: list[str] = Field(
        default_factory=lambda: ["*"], description="Action globs, e.g. [throttle, rate_based_ban]."
    )
    src_ranges: list[str] = Field(
        default_factory=list, description="Ranges the rule must match (each inside the rule's ranges): a deny list."
    )
    expression: str | None = Field(default=None, description="Glob on the rule's CEL expression.")
    max_priority: int | None = Field(default=None, description="The rule must be evaluated at or before this priority.")
    enforced: bool = Field(default=True, description="A rule in preview does not count.")
    rule: ArmorRuleSpec | None = Field(default=None, description="The rule to add when none is found (add_rule).")

    @field_validator("src_ranges")
    @classmethod
    def _ranges(cls, v: list[str]) -> list[str]:
        return _validate_ranges(v)

    def satisfied_by(self, r: ArmorRule) -> bool:
        if not any_match(self.actions, r.action):
            return False
        if self.enforced and r.preview:
            return False
        if self.max_priority is not None and r.priority > self.max_priority:
            return False
        if self.expression is not None and (r.expression is None or not glob_match(self.expression, r.expression)):
            return False
        if self.src_ranges:
            have = parse_ranges(r.src_ranges)
            if have is None:
                return False
            union = ranges.Union(have)
            if not all(union.covers_all(ranges.parse(t) or ()) for t in self.src_ranges):
                return False
        return True


class RequiredRulesParams(Params):
    rules: list[RequiredRule] = Field(min_length=1)


@check("cloud_armor.required_rules", params=RequiredRulesParams, asset_types=[SECURITY_POLICY])
def required_rules(asset: Asset, params: RequiredRulesParams, ctx: Context) -> Iterator[Violation]:
    """Rules every policy must have: a rate limit, a deny list, a WAF rule... each described by what it must do.

    A requirement is met by one rule that matches all it states: an action glob, source ranges it must cover
    (each listed range inside the rule's ranges: a deny list), a glob on its CEL expression, a highest priority
    number, and (by default) being enforced rather than in preview. With `rule:`, the finding carries that rule as
    `desired`, for `cloud_armor.add_rule`.

    ```yaml
    - id: armor-rate-limit-required
      check: cloud_armor.required_rules
      severity: medium
      params:
        rules:
          - name: per-client rate limit
            actions: [throttle, rate_based_ban]
          - name: known-bad ranges denied
            actions: ["deny*"]
            src_ranges: [192.0.2.0/24]
            max_priority: 1000
            rule:
              priority: 100
              action: deny(403)
              src_ranges: [192.0.2.0/24]
              description: threat-intel deny list
    ```
    """
    rules = asset_armor_rules(asset)
    actions = {r.action for r in rules}
    for req in params.rules:
        # The action globs asked once per distinct action: most requirements fail there, without reading a rule.
        wanted = {a for a in actions if any_match(req.actions, a)}
        if wanted and any(req.satisfied_by(r) for r in rules if r.action in wanted):
            continue
        details: dict[str, Any] = {
            "requirement": req.name,
            "change": "missing",
            "priority": req.rule.priority if req.rule else None,
            "action": req.rule.action if req.rule else "|".join(req.actions),
            "src_ranges": list(req.rule.src_ranges if req.rule else req.src_ranges),
        }
        remedies: tuple[Remedy, ...] = ()
        if req.rule is not None:
            details["desired"] = req.rule.body()
            remedies = (SetRule(req.rule.body()),)
        yield Violation(f"no rule for the requirement {req.name!r}", f"required|{req.name}", details, remedies)


class DesiredStateParams(Params):
    policies: dict[str, list[ArmorRuleSpec]] = Field(
        min_length=1,
        description="Policy name glob -> its exact rules (first matching glob wins; other policies are skipped).",
    )

    @field_validator("policies")
    @classmethod
    def _unique(cls, v: dict[str, list[ArmorRuleSpec]]) -> dict[str, list[ArmorRuleSpec]]:
        for name, rules in v.items():
            seen: set[int] = set()
            for r in rules:
                if r.priority in seen:
                    raise ValueError(f"policy {name}: priority {r.priority} is declared twice")
                seen.add(r.priority)
        return v


@check("cloud_armor.desired_state", params=DesiredStateParams, asset_types=[SECURITY_POLICY])
def desired_state(asset: Asset, params: DesiredStateParams, ctx: Context) -> Iterator[Violation]:
    """The exact rules a policy must have, as an infrastructure-as-code stack would declare them.

    Drift is every missing rule (a declared priority absent), every extra rule (a priority not declared) and every
    changed rule (action, preview, source ranges, expression, or rateLimitOptions when declared, differ). Rules are
    matched by priority; descriptions are not compared. The default rule is compared only when declared (every
    policy has one). Policies are selected by their name (glob); the first matching entry applies. Two projects
    with policies of one name are told apart by the rule's `match.ancestries`.

    ```yaml
    - id: armor-inference-api-as-declared
      check: cloud_armor.desired_state
      severity: high
      params:
        policies:
          inference-*:
            - {priority: 1000, action: allow, src_ranges: [203.0.113.0/24]}
            - {priority: 2000, action: deny(403), expression: "evaluatePreconfiguredExpr('sqli-v33-stable')"}
            - {priority: 2147483647, action: deny(403), src_ranges: ["*"]}
    ```
    """
    name = policy_name(asset)
    desired = next((rules for glob, rules in params.policies.items() if glob_match(glob, name)), None)
    if desired is None:
        return
    actual: dict[int, ArmorRule] = {}
    for r in asset_armor_rules(asset):
        actual.setdefault(r.priority, r)
    wanted = {d.priority: d for d in desired}
    for priority in sorted(set(actual) | set(wanted)):
        have, want = actual.get(priority), wanted.get(priority)
        if have is None and want is not None:
            yield Violation(
                f"rule {priority} ({want.action}) is declared but missing",
                f"missing|{priority}",
                {
                    "change": "missing",
                    "priority": priority,
                    "action": want.action,
                    "src_ranges": list(want.src_ranges),
                    "desired": want.body(),
                },
                (SetRule(want.body()), *_default_deny(priority)),
            )
        elif want is None and have is not None:
            if have.is_default:
                continue
            yield Violation(
                f"rule {priority} ({have.action}) is not declared",
                f"extra|{priority}",
                rule_details(have, change="extra"),
                (RemoveRule(priority),),
            )
        elif have is not None and want is not None:
            diffs = want.differences(have)
            if diffs:
                yield Violation(
                    f"rule {priority} differs from its declaration: {'; '.join(diffs)}",
                    f"changed|{priority}",
                    rule_details(have, change="changed", desired=want.body(), desired_action=want.action),
                    (SetRule(want.body()), SetRuleAction(priority, want.action), *_default_deny(priority)),
                )
