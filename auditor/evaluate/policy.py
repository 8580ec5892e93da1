"""Read IAM policies and Cloud Armor policies in every spelling CAI and the APIs use."""

from __future__ import annotations

from collections.abc import Iterator
from operator import itemgetter
from typing import Any, NamedTuple

from auditor.model import Asset

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


class ArmorRule(NamedTuple):
    priority: int
    action: str
    preview: bool
    src_ranges: tuple[str, ...]
    expression: str | None
    description: str
    raw: dict[str, Any]

    @property
    def is_default(self) -> bool:
        return self.priority == DEFAULT_RULE_PRIORITY

    @property
    def allows(self) -> bool:
        return self.action == "allow"

    @property
    def denies(self) -> bool:
        return self.action.startswith("deny")


def _armor_rules_of(asset: Asset) -> tuple[ArmorRule, ...]:
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
    """The rules of a security policy: `rules` (Compute API) or `rule` (CAI), `srcIpRanges` or `srcIpRange`."""
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
            ArmorRule(  # by position: this runs for every rule of every policy
                priority,
                str(r.get("action") or ""),
                preview is True or (preview is not False and str(preview).lower() == "true"),
                tuple(map(str, ranges)),
                expr,
                str(r.get("description") or ""),
                r,
            )
        )
    out.sort(key=_priority)
    return out


_priority = itemgetter(0)  # ArmorRule.priority
