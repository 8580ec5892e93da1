"""Read IAM policies and Cloud Armor policies in every spelling CAI and the APIs use."""

from __future__ import annotations

from collections.abc import Iterator
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
from msgspec import UNSET, UnsetType

from auditor.model import Asset, Json

DEFAULT_RULE_PRIORITY = 2147483647


class Binding(NamedTuple):
    role: str
    members: tuple[str, ...]
    condition: dict[str, Any] | None

    @property
    def condition_title(self) -> str | None:
        if not self.condition:
            return None
        return str(self.condition.get("title") or self.condition.get("expression") or "condition")


def bindings(policy: dict[str, Any]) -> Iterator[Binding]:
    for b in policy.get("bindings") or ():
        if not isinstance(b, dict):
            continue
        yield Binding(str(b.get("role", "")), tuple(b.get("members") or ()), b.get("condition") or None)


def _bindings_of(asset: Asset) -> tuple[Binding, ...]:
    return tuple(bindings(asset.iam_policy))


def asset_bindings(asset: Asset) -> tuple[Binding, ...]:
    """The bindings of an asset's IAM policy, parsed once for every check that reads them."""
    return asset.derived("policy.bindings", _bindings_of)


def binding_details(b: Binding, member: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"role": b.role}
    if member is not None:
        d["member"] = member
    if b.condition:
        d["condition"] = b.condition_title
    return d


def binding_key(b: Binding, member: str | None = None) -> str:
    """Detail key for a finding id: role, member, and the condition when there is one."""
    key = b.role if member is None else f"{b.role}|{member}"
    return f"{key}|{b.condition_title}" if b.condition else key


LOG_TYPES = ("ADMIN_READ", "DATA_WRITE", "DATA_READ")


def known_log_types(v: list[str]) -> list[str]:
    """Validator for rule params naming audit log types."""
    bad = [t for t in v if t not in LOG_TYPES]
    if bad:
        raise ValueError(f"unknown log types {bad}; known: {', '.join(LOG_TYPES)}")
    return v
_LOG_TYPE_NUMBERS = {0: "LOG_TYPE_UNSPECIFIED", 1: "ADMIN_READ", 2: "DATA_WRITE", 3: "DATA_READ"}


class AuditLogConfig(NamedTuple):
    service: str
    log_type: str  # ADMIN_READ | DATA_WRITE | DATA_READ (numbers from exports are turned into names)
    exempted_members: tuple[str, ...]


def log_type_name(value: Any) -> str:
    """`ADMIN_READ` from `ADMIN_READ`, 1 or "1" (exports and CAI REST give the enum as a number)."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return _LOG_TYPE_NUMBERS.get(int(value), str(value))
    return str(value or "LOG_TYPE_UNSPECIFIED")


def audit_log_configs(policy: dict[str, Any]) -> list[AuditLogConfig]:
    """Every (service, log type, exempted members) of a policy: `auditConfigs` or `audit_configs` spellings."""
    out: list[AuditLogConfig] = []
    for ac in policy.get("auditConfigs") or policy.get("audit_configs") or ():
        if not isinstance(ac, dict):
            continue
        service = str(ac.get("service") or "")
        for lc in ac.get("auditLogConfigs") or ac.get("audit_log_configs") or ():
            if not isinstance(lc, dict):
                continue
            log_type = log_type_name(lc.get("logType", lc.get("log_type")))
            exempted = lc.get("exemptedMembers") or lc.get("exempted_members") or ()
            out.append(AuditLogConfig(service, log_type, tuple(str(m) for m in exempted)))
    return out


class ArmorRule(msgspec.Struct, frozen=True, gc=False):
    """One rule of a Cloud Armor security policy, as the checks read it.

    A Struct rather than a NamedTuple: a large organization has hundreds of thousands of rules, and a Struct is made
    in C (about a quarter of the time). Not tracked by the garbage collector: it holds strings, tuples and the
    rule's source, never itself.
    """

    priority: int
    action: str
    preview: bool
    src_ranges: tuple[str, ...]
    expression: str | None  # `match.expr.expression` as written, or None
    description: str
    source_match: bool  # its `match` holds nothing but source ranges (`config`, `versionedExpr`)
    _source: dict[str, Any] | _PolicyJson  # the rule's dict, or the policy's JSON it is decoded from on demand
    _index: int = 0  # the rule's place in the policy's rule list (for `_PolicyJson`)

    @property
    def raw(self) -> dict[str, Any]:
        """The rule as the policy spells it (decoded from the policy's JSON when first asked for)."""
        source = self._source
        return source if isinstance(source, dict) else source.rule(self._index)

    @property
    def is_default(self) -> bool:
        return self.priority == DEFAULT_RULE_PRIORITY

    @property
    def allows(self) -> bool:
        return self.action == "allow"

    @property
    def denies(self) -> bool:
        return self.action.startswith("deny")


class _PolicyJson:
    """A policy's JSON, decoded into dicts only if a rule's `raw` is asked for (once for all its rules)."""

    __slots__ = ("_json", "_rules")

    def __init__(self, json: Json) -> None:
        self._json = json
        self._rules: list[Any] | None = None

    def rule(self, index: int) -> dict[str, Any]:
        if self._rules is None:
            policy = msgspec.json.decode(self._json)
            self._rules = policy.get("rules") or policy.get("rule")
        rule: dict[str, Any] = self._rules[index]
        return rule


def _armor_rules_of(asset: Asset) -> tuple[ArmorRule, ...]:
    json = asset.resource_json
    if json is not None:
        try:
            return tuple(_typed_armor_rules(json))
        except msgspec.ValidationError:
            pass  # a spelling the typed form does not take (a priority as a string...): read as dicts
    return tuple(armor_rules(asset.resource))


def asset_armor_rules(asset: Asset) -> tuple[ArmorRule, ...]:
    """The rules of a security policy asset, by priority, parsed once for every check that reads them."""
    return asset.derived("policy.armor_rules", _armor_rules_of)


def _audit_log_configs_of(asset: Asset) -> tuple[AuditLogConfig, ...]:
    return tuple(audit_log_configs(asset.iam_policy))


def asset_audit_log_configs(asset: Asset) -> tuple[AuditLogConfig, ...]:
    """The audit log configs of an asset's IAM policy, parsed once."""
    return asset.derived("policy.audit_log_configs", _audit_log_configs_of)


def armor_rules(policy: dict[str, Any]) -> list[ArmorRule]:
    """The rules of a security policy: `rules` (Compute API) or `rule` (CAI), `srcIpRanges` or `srcIpRange`.

    Every spelling a policy dict may have: this is the reference `_typed_armor_rules` must agree with."""
    out: list[ArmorRule] = []
    for r in policy.get("rules") or policy.get("rule") or ():
        if not isinstance(r, dict):
            continue
        match = r.get("match") or {}
        config = match.get("config") or {}
        ranges = config.get("srcIpRanges") or config.get("srcIpRange") or ()
        if isinstance(ranges, str):  # a hand-written policy with one range, not a list of one
            ranges = [ranges]
        expr = (match.get("expr") or {}).get("expression")
        try:
            priority = int(r.get("priority", DEFAULT_RULE_PRIORITY))
        except (TypeError, ValueError):
            priority = DEFAULT_RULE_PRIORITY
        preview = r.get("preview")
        out.append(
            ArmorRule(
                priority,
                str(r.get("action") or ""),
                preview is True or (preview is not False and str(preview).lower() == "true"),
                tuple(map(str, ranges)),
                expr,
                str(r.get("description") or ""),
                match.keys() <= _SOURCE_MATCH_KEYS,
                r,
            )
        )
    out.sort(key=_priority)
    return out


_SOURCE_MATCH_KEYS = frozenset({"config", "versionedExpr"})
_priority = attrgetter("priority")


# The parts of a policy the checks read, as typed structs msgspec decodes the policy's JSON into, in C: no dict is
# made for the rest of the policy, and each field is read by name rather than looked up. They take the spelling of
# the Compute API and CAI; anything else (a priority as a string, a range that is not a string, a `match` key the
# Compute API does not have...) fails validation and the policy is read by `armor_rules` instead.
class _Expr(msgspec.Struct):
    expression: str | None = None


class _Config(msgspec.Struct):
    srcIpRanges: tuple[str, ...] | str | None = None  # decoded as the tuple a rule keeps
    srcIpRange: tuple[str, ...] | str | None = None


class _Match(msgspec.Struct, forbid_unknown_fields=True):  # which keys it holds decides `source_match`
    config: _Config | None = None
    versionedExpr: msgspec.Raw = msgspec.Raw()  # not read
    expr: _Expr | UnsetType | None = UNSET
    exprOptions: msgspec.Raw = msgspec.Raw()  # not read: its presence is what counts (empty when absent)


class _Rule(msgspec.Struct):
    priority: int | None = DEFAULT_RULE_PRIORITY
    action: str | None = None
    preview: bool | None = None
    description: str | None = None
    match: _Match | None = None


class _Policy(msgspec.Struct):
    rules: list[_Rule] | None = None
    rule: list[_Rule] | None = None


_policy_decoder = msgspec.json.Decoder(_Policy)


def _typed_armor_rules(json: Json) -> list[ArmorRule]:
    """`armor_rules` of a policy's JSON, through the typed structs (raises msgspec.ValidationError on another
    spelling). This runs for every rule of every policy: fields are read once into locals, rules made by position."""
    policy = _policy_decoder.decode(json)
    source = _PolicyJson(json)
    out: list[ArmorRule] = []
    for index, r in enumerate(policy.rules or policy.rule or ()):
        match = r.match
        ranges: tuple[str, ...] = ()
        if match is None:
            expression = None
            source_match = True
        else:
            config = match.config
            if config is not None:
                given = config.srcIpRanges or config.srcIpRange or ()
                ranges = (given,) if isinstance(given, str) else given  # a str: a hand-written policy's one range
            expr = match.expr
            expression = expr.expression if expr else None  # UNSET and None are false
            source_match = expr is UNSET and not match.exprOptions
        priority = r.priority
        out.append(
            ArmorRule(
                DEFAULT_RULE_PRIORITY if priority is None else priority,
                r.action or "",
                r.preview is True,
                ranges,
                expression,
                r.description or "",
                source_match,
                source,
                index,
            )
        )
    out.sort(key=_priority)
    return out
