"""Cloud Armor checks on `compute.googleapis.com/SecurityPolicy` assets."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from auditor.evaluate.policy import DEFAULT_RULE_PRIORITY, armor_rules
from auditor.evaluate.registry import Context, NoParams, Params, Violation, check
from auditor.model import Asset

SECURITY_POLICY = "compute.googleapis.com/SecurityPolicy"
OPEN_RANGES = ("*", "0.0.0.0/0", "::/0")


@check("cloud_armor.default_rule_denies", params=NoParams, asset_types=[SECURITY_POLICY])
def default_rule_denies(asset: Asset, params: NoParams, ctx: Context) -> Iterator[Violation]:
    """The default rule (priority 2147483647) must deny: anything not explicitly allowed is refused.

    ```yaml
    - id: armor-default-deny
      check: cloud_armor.default_rule_denies
      severity: high
    ```
    """
    rules = armor_rules(asset.resource)
    default = next((r for r in rules if r.is_default), None)
    if default is None:
        yield Violation("the policy has no default rule", "missing", {"priority": DEFAULT_RULE_PRIORITY})
    elif not default.denies:
        yield Violation(
            f"the default rule {default.action}s all traffic",
            "default",
            {"priority": DEFAULT_RULE_PRIORITY, "action": default.action},
        )


class OpenAllowParams(Params):
    open_ranges: list[str] = Field(default_factory=lambda: list(OPEN_RANGES))


@check("cloud_armor.no_open_allow", params=OpenAllowParams, asset_types=[SECURITY_POLICY])
def no_open_allow(asset: Asset, params: OpenAllowParams, ctx: Context) -> Iterator[Violation]:
    """No non-default rule may allow every source address (`*`, `0.0.0.0/0`, `::/0`).

    ```yaml
    - id: armor-no-open-allow
      check: cloud_armor.no_open_allow
      severity: high
    ```
    """
    for r in armor_rules(asset.resource):
        if r.is_default or not r.allows:
            continue
        opened = [s for s in r.src_ranges if s in params.open_ranges]
        if opened:
            yield Violation(
                f"rule {r.priority} allows traffic from {', '.join(opened)}",
                str(r.priority),
                {"priority": r.priority, "action": r.action, "src_ranges": list(r.src_ranges)},
            )
