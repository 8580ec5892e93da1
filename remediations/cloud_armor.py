"""Stage 6, apply: Cloud Armor security policy writes through Compute Engine v1.

Compute writes a policy's rules only through its per-rule methods (addRule, patchRule, removeRule), which take no
fingerprint. So the fingerprint is checked on a fresh read right before the first rule write, the rules are
written one by one, and the whole policy is read back and compared with the planned rules: a concurrent change in
that short window shows up as a failed verification (never as silent success), and the journal holds the
before-state for a rollback.
"""

from __future__ import annotations

import json
from typing import Any

from google.api_core import exceptions as gexc

from auditor.collect import gcp_clients
from auditor.collect.retry import RetryPolicy
from auditor.permissions import declare
from remediations.apply import DEFAULT_RETRY, Live, WriteConflict
from remediations.edits import armor_rule_api, armor_rules_api, prune
from remediations.kinds import CLOUD_ARMOR
from remediations.targets import Target

declare(
    "remediations.cloud_armor",
    ["compute.securityPolicies.get", "compute.securityPolicies.update", "compute.globalOperations.get"],
    remediation=True,
    why="re-read security policies and add, patch or remove their rules",
)

OPERATION_TIMEOUT = 120.0
_CONFLICTS = (gexc.PreconditionFailed, gexc.Conflict, gexc.FailedPrecondition)


class ConcurrentChange(Exception):
    """The security policy changed between two rule writes of one change."""


def _rule_pb(rule: dict[str, Any]) -> Any:
    from google.cloud import compute_v1

    r = {k: v for k, v in armor_rule_api(rule).items() if k != "kind"}
    return compute_v1.SecurityPolicyRule.from_json(json.dumps(r), ignore_unknown_fields=True)


class CloudArmorWriter:
    family = CLOUD_ARMOR

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
        except _CONFLICTS as exc:
            raise WriteConflict(str(exc)) from exc
