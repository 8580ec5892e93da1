"""What a Kubernetes RBAC PolicyRule grants, matched as the API server's authorizer matches it.

Kubernetes (pkg/apis/rbac/v1 helpers, `ResourceMatches` and friends) matches a request against a rule so:
- `apiGroups`, `resources` and `verbs` each match when they hold the requested value or `*`;
- a resource `*/SUB` matches the subresource SUB of any resource; `pods/*` is no wildcard (it matches only a
  resource literally named so, which does not exist);
- a non-empty `resourceNames` restricts the rule to those objects;
- `nonResourceURLs` (with a trailing `*` as a prefix wildcard) are for non-resource paths (`/healthz`, `/metrics`).

So a rule grants "every verb on every resource" only when its apiGroups, resources and verbs all hold `*` and it
names no object: `*` on `*` inside one API group (a controller and its own custom resources) is that group's
resources only. The powers below are the grants that reach further than the role shows: reading secrets,
running commands in pods, the kubelet API, minting tokens, and escalate / bind / impersonate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

RBAC_GROUP = "rbac.authorization.k8s.io"


def _strings(value: Any) -> tuple[str, ...]:
    """A list field of a rule as strings (anything else, a wrong-typed field included, grants nothing)."""
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def group_matches(rule: Mapping[str, Any], group: str) -> bool:
    groups = _strings(rule.get("apiGroups"))
    return "*" in groups or group in groups


def verb_matches(rule: Mapping[str, Any], verb: str) -> bool:
    verbs = _strings(rule.get("verbs"))
    return "*" in verbs or verb in verbs


def resource_matches(rule: Mapping[str, Any], resource: str) -> bool:
    """`resource` is `pods` or `pods/exec` (a subresource)."""
    sub = resource.split("/", 1)[1] if "/" in resource else ""
    for granted in _strings(rule.get("resources")):
        if granted in ("*", resource):
            return True
        if sub and granted == f"*/{sub}":
            return True
    return False


def names_restricted(rule: Mapping[str, Any]) -> bool:
    return bool(_strings(rule.get("resourceNames")))


def grants(rule: Mapping[str, Any], group: str, resource: str, verb: str) -> bool:
    """Whether the rule allows `verb` on `resource` of API group `group` (some object of it, when it names any)."""
    return group_matches(rule, group) and resource_matches(rule, resource) and verb_matches(rule, verb)


def is_everything(rule: Mapping[str, Any]) -> bool:
    """Every verb on every resource of every API group, unrestricted by name."""
    return (
        "*" in _strings(rule.get("apiGroups"))
        and "*" in _strings(rule.get("resources"))
        and "*" in _strings(rule.get("verbs"))
        and not names_restricted(rule)
    )


def is_every_url(rule: Mapping[str, Any]) -> bool:
    """Every verb on every non-resource URL (`nonResourceURLs: ["*"]`)."""
    return "*" in _strings(rule.get("nonResourceURLs")) and "*" in _strings(rule.get("verbs"))


class Power(NamedTuple):
    label: str
    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    narrowed_by_names: bool  # a rule naming its objects (one named secret) does not count


POWERS: tuple[Power, ...] = (
    Power("read secrets", "", ("secrets",), ("get", "list", "watch"), True),
    Power("exec into pods", "", ("pods/exec",), ("create", "get"), False),
    Power("attach to pods", "", ("pods/attach",), ("create", "get"), False),
    Power("kubelet API (nodes/proxy)", "", ("nodes/proxy",), ("get", "create", "update", "patch", "delete"), False),
    Power("mint service account tokens", "", ("serviceaccounts/token",), ("create",), False),
    Power("escalate", RBAC_GROUP, ("roles", "clusterroles"), ("escalate",), False),
    Power("bind", RBAC_GROUP, ("roles", "clusterroles"), ("bind",), False),
    Power("impersonate", "", ("users", "groups", "serviceaccounts"), ("impersonate",), False),
    Power("impersonate", "authentication.k8s.io", ("uids", "userextras/scopes"), ("impersonate",), False),
)


def powers(rule: Mapping[str, Any]) -> list[str]:
    """The powers (labels of POWERS, and every non-resource URL) one rule grants, in POWERS' order, once each."""
    out: list[str] = []
    for p in POWERS:
        if p.label in out or (p.narrowed_by_names and names_restricted(rule)):
            continue
        if not group_matches(rule, p.group):
            continue
        if any(resource_matches(rule, r) for r in p.resources) and any(verb_matches(rule, v) for v in p.verbs):
            out.append(p.label)
    if is_every_url(rule):
        out.append("every non-resource URL")
    return out


class Reach(NamedTuple):
    """What a set of rules grants, at the level a finding needs."""

    everything: bool
    powers: frozenset[str]

    @property
    def powerful(self) -> bool:
        return self.everything or bool(self.powers)

    def describe(self) -> str:
        if self.everything:
            return "every verb on every resource"
        return ", ".join(sorted(self.powers))


NOTHING = Reach(False, frozenset())


def reach(rules: Iterable[Any]) -> Reach:
    everything = False
    found: set[str] = set()
    for r in rules:
        if not isinstance(r, dict):
            continue
        everything = everything or is_everything(r)
        found.update(powers(r))
    return Reach(everything, frozenset(found))


def union(reaches: Iterable[Reach]) -> Reach:
    everything = False
    found: set[str] = set()
    for r in reaches:
        everything = everything or r.everything
        found |= r.powers
    return Reach(everything, frozenset(found))
