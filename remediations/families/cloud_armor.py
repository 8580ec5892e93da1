"""The Cloud Armor family: the rules of global security policies, written through Compute Engine v1.

Kinds: `cloud_armor.set_rule_action`, `cloud_armor.add_rule`, `cloud_armor.remove_rule`,
`cloud_armor.set_default_deny`. The token is the policy's fingerprint; the diff one item per rule priority.

Compute writes a policy's rules only through its per-rule methods (addRule, patchRule, removeRule), which take no
fingerprint. So the fingerprint is checked on a fresh read right before the first rule write, the rules are
written one by one, and the whole policy is read back and compared with the planned rules: a concurrent change in
that short window shows up as a failed verification (never as silent success), and the journal holds the
before-state for a rollback.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from auditor.collect import gcp_clients
from auditor.collect.retry import RetryPolicy
from auditor.evaluate.policy import DEFAULT_RULE_PRIORITY
from auditor.model import Asset, Finding
from auditor.permissions import declare
from auditor.plugins import remediation_families
from auditor.remedies import DENY, Remedy, RemoveRule, SetDefaultDeny, SetRule, SetRuleAction, first
from remediations.edits import Edit, EditError, asked_by, prune
from remediations.families.base import DEFAULT_RETRY, ApiObjectState, Kind, Live, WriteConflict, WriterContext
from remediations.guards import GuardConfig, Refusal
from remediations.targets import Target, UnsupportedTarget

if TYPE_CHECKING:
    from auditor.evaluate.rulebook import Rule

declare(
    "remediations.cloud_armor",
    ["compute.securityPolicies.get", "compute.securityPolicies.update", "compute.globalOperations.get"],
    remediation=True,
    why="re-read security policies and add, patch or remove their rules",
)

NAME = "cloud_armor"
OPERATION_TIMEOUT = 120.0
_ARMOR = re.compile(r"^//compute\.googleapis\.com/projects/([^/]+)/global/securityPolicies/([^/]+)$")
# The remedy each kind makes of what a check offers.
_REMEDY: dict[str, type[Remedy]] = {
    "cloud_armor.add_rule": SetRule,
    "cloud_armor.remove_rule": RemoveRule,
    "cloud_armor.set_rule_action": SetRuleAction,
    "cloud_armor.set_default_deny": SetDefaultDeny,
}


def armor_rule_api(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule in Compute API spelling (CAI has been seen with `srcIpRange`)."""
    r = copy.deepcopy(rule)
    config = (r.get("match") or {}).get("config")
    if isinstance(config, dict) and "srcIpRange" in config:
        config["srcIpRanges"] = config.pop("srcIpRange")
    if "priority" in r:
        r["priority"] = int(r["priority"])
    return r


def armor_rules_api(policy: dict[str, Any] | None) -> list[dict[str, Any]]:
    policy = policy or {}
    return [armor_rule_api(r) for r in policy.get("rules") or policy.get("rule") or () if isinstance(r, dict)]


def armor_section(policy: dict[str, Any] | None) -> list[dict[str, Any]]:
    return sorted((prune(r) for r in armor_rules_api(policy)), key=lambda r: int(r.get("priority", 0)))


def default_deny_rule() -> dict[str, Any]:
    return {
        "priority": DEFAULT_RULE_PRIORITY,
        "action": DENY,
        "description": "default rule",
        "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}},
    }


class CloudArmorFamily(ApiObjectState):
    name = NAME
    token_field = "fingerprint"
    kinds = (
        Kind("cloud_armor.set_rule_action", NAME, "change a rule's action (to the desired one, or deny(403))"),
        Kind("cloud_armor.add_rule", NAME, "add the desired rule"),
        Kind("cloud_armor.remove_rule", NAME, "remove the rule at the finding's priority"),
        Kind("cloud_armor.set_default_deny", NAME, "make the default rule (priority 2147483647) deny(403)"),
    )

    def target_for(self, asset_name: str, asset_type: str) -> Target:
        m = _ARMOR.match(asset_name)
        if not m:
            raise UnsupportedTarget("Cloud Armor remediation supports global security policies only")
        return Target(NAME, "compute", f"projects/{m.group(1)}/global/securityPolicies/{m.group(2)}",
                      project=m.group(1), policy=m.group(2))

    def edits_for(self, finding: Finding, rule: Rule, asset: Asset) -> list[Edit]:
        """The edit of the remedy the finding offers that the rule's kind makes (typed remedies, never details)."""
        kind = rule.remediation or ""
        base = asked_by(finding, rule)
        r = first(finding.remedies, _REMEDY[kind])
        if r is None:
            offered = ", ".join(type(x).__name__ for x in finding.remedies) or "no fix"
            raise EditError(f"{kind} does not answer this finding (it offers {offered})")
        if isinstance(r, SetDefaultDeny):
            return [Edit(kind, {"priority": DEFAULT_RULE_PRIORITY, "action": DENY}, **base)]
        if isinstance(r, SetRule):
            if r.rule.get("priority") is None:
                raise EditError("the desired rule has no priority")
            return [Edit(kind, {"rule": {**r.rule, "priority": int(r.rule["priority"])}}, **base)]
        if isinstance(r, RemoveRule):
            return [Edit(kind, {"priority": int(r.priority)}, **base)]
        assert isinstance(r, SetRuleAction)
        return [Edit(kind, {"priority": int(r.priority), "action": r.action or DENY}, **base)]

    def apply(self, state: dict[str, Any] | None, edit: Edit) -> dict[str, Any] | None:
        if state is None:
            raise EditError("the security policy does not exist")
        rules = armor_rules_api(state)
        state.pop("rule", None)
        a = edit.args
        by_prio = {int(r.get("priority", DEFAULT_RULE_PRIORITY)): r for r in rules}
        if edit.kind == "cloud_armor.set_rule_action":
            rule = by_prio.get(int(a["priority"]))
            if rule is None:
                raise EditError(f"no rule at priority {a['priority']}")
            rule["action"] = a["action"]
        elif edit.kind == "cloud_armor.add_rule":
            desired = armor_rule_api(a["rule"])
            prio = int(desired["priority"])
            # Over an existing rule this is a patchRule, which keeps the fields the desired rule does not name.
            by_prio[prio] = {**by_prio[prio], **desired} if prio in by_prio else desired
        elif edit.kind == "cloud_armor.remove_rule":
            if int(a["priority"]) == DEFAULT_RULE_PRIORITY:
                raise EditError("the default rule cannot be removed (set it to deny instead)")
            by_prio.pop(int(a["priority"]), None)
        elif edit.kind == "cloud_armor.set_default_deny":
            rule = by_prio.get(DEFAULT_RULE_PRIORITY)
            if rule is None:
                by_prio[DEFAULT_RULE_PRIORITY] = default_deny_rule()
            else:
                rule["action"] = DENY
        else:
            raise EditError(f"{edit.kind} is not a Cloud Armor edit")
        state["rules"] = [by_prio[p] for p in sorted(by_prio)]
        return state

    def section(self, state: dict[str, Any] | None) -> Any:
        return armor_section(state) if state is not None else None

    def state_from_section(self, section: Any) -> dict[str, Any] | None:
        return {"rules": section or []}

    def diff(self, before: Any, after: Any) -> list[dict[str, Any]]:
        rb = {int(x.get("priority", 0)): x for x in before or ()}
        ra = {int(x.get("priority", 0)): x for x in after or ()}
        return [{"item": f"rule {p}", "before": rb.get(p), "after": ra.get(p)}
                for p in sorted(set(rb) | set(ra)) if rb.get(p) != ra.get(p)]

    def describe(self, edit: Edit) -> str:
        a = edit.args
        if edit.kind == "cloud_armor.set_rule_action":
            return f"set the action of rule {a['priority']} to {a['action']}"
        if edit.kind == "cloud_armor.add_rule":
            return f"add rule {a['rule'].get('priority')} ({a['rule'].get('action')})"
        if edit.kind == "cloud_armor.remove_rule":
            return f"remove rule {a['priority']}"
        return f"make the default rule {DENY}"

    def principals(self, edits: Iterable[Edit], diff: Iterable[dict[str, Any]]) -> set[str]:
        return set()

    def contradictions(self, edits: list[Edit]) -> tuple[list[Edit], list[str]]:
        return edits, []

    def guard(self, target: Target, before: dict[str, Any] | None, after: dict[str, Any] | None, cfg: GuardConfig,
              *, restoring: bool, origin: dict[str, Any] | None) -> list[Refusal]:
        return []  # the shared guards (approval, caps, plan age, enforce-only) cover rule writes

    def writer(self, ctx: WriterContext) -> CloudArmorWriter:
        return CloudArmorWriter(ctx.gcp_endpoint, ctx.retry)


class ConcurrentChange(Exception):
    """The security policy changed between two rule writes of one change."""


def _rule_pb(rule: dict[str, Any]) -> Any:
    from google.cloud import compute_v1

    r = {k: v for k, v in armor_rule_api(rule).items() if k != "kind"}
    return compute_v1.SecurityPolicyRule.from_json(json.dumps(r), ignore_unknown_fields=True)


class CloudArmorWriter:
    family = NAME

    def __init__(self, endpoint: gcp_clients.Endpoint | str | None = None, retry: RetryPolicy | None = None) -> None:
        self.endpoint = endpoint
        self.retry = retry or DEFAULT_RETRY
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = gcp_clients.security_policies_client(self.endpoint)
        return self._client

    def read(self, target: Target) -> Live:
        from google.api_core import exceptions as gexc
        from google.cloud import compute_v1

        try:
            pb = self.retry.call(lambda: self.client.get(project=target.project, security_policy=target.policy))
        except gexc.NotFound:
            return Live(None, None)
        policy = json.loads(compute_v1.SecurityPolicy.to_json(pb))
        return Live(policy, policy.get("fingerprint"))

    def write(self, target: Target, live: Live, new: dict[str, Any] | None) -> None:
        if new is None or live.state is None:
            raise ValueError("security policies are never created or deleted by a remediation")
        old = {int(r.get("priority", 0)): r for r in armor_rules_api(live.state)}
        want = {int(r.get("priority", 0)): r for r in armor_rules_api(new)}
        from google.cloud import compute_v1

        p, sp = target.project, target.policy
        ops: list[tuple[str, int, Any]] = []
        for prio in sorted(want):
            if prio in old and prune(old[prio]) != prune(want[prio]):
                ops.append(("patch", prio, compute_v1.PatchRuleSecurityPolicyRequest(
                    project=p, security_policy=sp, priority=prio, security_policy_rule_resource=_rule_pb(want[prio]))))
            elif prio not in old:
                ops.append(("add", prio, compute_v1.AddRuleSecurityPolicyRequest(
                    project=p, security_policy=sp, security_policy_rule_resource=_rule_pb(want[prio]))))
        for prio in sorted(set(old) - set(want)):
            ops.append(("remove", prio, compute_v1.RemoveRuleSecurityPolicyRequest(
                project=p, security_policy=sp, priority=prio)))
        expected = {prio: prune(r) for prio, r in old.items()}
        try:
            for n, (verb, prio, request) in enumerate(ops):
                if n:
                    # No fingerprint on rule writes: before each further write, the policy must be exactly what the
                    # writes so far made it, or someone else is changing it and the rest is not written.
                    now = {int(r.get("priority", 0)): prune(r) for r in armor_rules_api(self.read(target).state)}
                    if now != expected:
                        raise ConcurrentChange(
                            f"the policy changed while its rules were written ({n} of {len(ops)} written); "
                            "the rest was not written"
                        )
                method = {"patch": self.client.patch_rule, "add": self.client.add_rule,
                          "remove": self.client.remove_rule}[verb]
                # Retried per call: a refused request was not done; the operation is polled on its own.
                op = self.retry.call(lambda m=method, r=request: m(request=r))  # type: ignore[misc]
                self.retry.call(lambda o=op: o.result(timeout=OPERATION_TIMEOUT))  # type: ignore[misc]
                if verb == "remove":
                    expected.pop(prio, None)
                else:
                    expected[prio] = prune(want[prio])
        except _conflicts() as exc:
            raise WriteConflict(str(exc)) from exc



def _conflicts() -> tuple[type[Exception], ...]:
    # imported when a write fails, not with the family: rule loading imports it, and a scan needs no client library
    from google.api_core import exceptions as gexc

    return (gexc.PreconditionFailed, gexc.Conflict, gexc.FailedPrecondition)


FAMILY = remediation_families.add(NAME, CloudArmorFamily())
