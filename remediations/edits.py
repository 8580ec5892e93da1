"""Stage 6, plan and apply: the pure transformations each remediation makes to a resource's state.

The planner applies them to the snapshot's state to show the after-state; the appliers apply the very same
functions to the live state they re-read, so what is written is exactly what the reviewer saw (the token check
guarantees the live state is the planned one). `section()` is the part of a state a change is about (IAM bindings,
Cloud Armor rules, a binding's subjects or a role's rules), in a canonical form used for diffs and verification.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from auditor.evaluate.policy import DEFAULT_RULE_PRIORITY
from remediations.kinds import CLOUD_ARMOR, IAM, RBAC

DENY = "deny(403)"


class EditError(ValueError):
    """An edit that cannot be made to this state (the reason says why)."""


@dataclass
class Edit:
    """One atomic change to a resource, and the rules and findings that ask for it."""

    kind: str
    args: dict[str, Any]
    rules: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.kind}:{canonical_json(self.args)}"

    def describe(self) -> str:
        a = self.args
        cond = f" (condition {condition_title(a.get('condition'))})" if a.get("condition") else ""
        match self.kind:
            case "iam.remove_member":
                return f"remove {a['member']} from {a['role']}{cond}"
            case "iam.add_member":
                return f"add {a['member']} to {a['role']}{cond}"
            case "iam.remove_binding":
                return f"remove the binding of {a['role']}{cond}"
            case "cloud_armor.set_rule_action":
                return f"set the action of rule {a['priority']} to {a['action']}"
            case "cloud_armor.add_rule":
                return f"add rule {a['rule'].get('priority')} ({a['rule'].get('action')})"
            case "cloud_armor.remove_rule":
                return f"remove rule {a['priority']}"
            case "cloud_armor.set_default_deny":
                return f"make the default rule {DENY}"
            case "rbac.remove_subject":
                return f"remove subject {a['subject_name']}"
            case "rbac.delete_binding":
                return "delete the binding"
            case "rbac.replace_role_rules":
                return f"replace the rules with the {len(a['rules'])} desired rules"
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "description": self.describe(),
            "args": self.args,
            "rules": self.rules,
            "modes": self.modes,
            "findings": self.findings,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Edit:
        return cls(kind=d["kind"], args=d["args"], rules=list(d.get("rules", [])), modes=list(d.get("modes", [])),
                   findings=list(d.get("findings", [])))


def canonical_json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


def condition_title(cond: dict[str, Any] | None) -> str | None:
    if not cond:
        return None
    return str(cond.get("title") or cond.get("expression") or "condition")


def prune(v: Any) -> Any:
    """Drop empty values and API bookkeeping so the same state reads the same from CAI, a file or an API."""
    if isinstance(v, dict):
        # `kind: compute#securityPolicyRule` is API bookkeeping; an RBAC subject's `kind` is data.
        out = {k: prune(x) for k, x in v.items() if not (k == "kind" and "#" in str(x))}
        return {k: x for k, x in out.items() if x not in (None, False, "", {}, [])}
    if isinstance(v, list):
        return [prune(x) for x in v]
    return v


# -- IAM ----------------------------------------------------------------------------------------------------------
def _binding_id(b: dict[str, Any]) -> tuple[str, str]:
    return str(b.get("role", "")), canonical_json(prune(b.get("condition") or {}))


def iam_section(policy: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The bindings, one per role and condition (IAM merges repeated ones), members sorted."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for b in (policy or {}).get("bindings") or ():
        key = _binding_id(b)
        nb = merged.setdefault(key, {"role": b.get("role"), "members": []})
        if b.get("condition"):
            nb["condition"] = prune(b["condition"])
        nb["members"] = sorted(set(nb["members"]) | set(b.get("members") or ()))
    return [merged[k] for k in sorted(merged) if merged[k]["members"]]


def _same_binding(b: dict[str, Any], role: str, condition: dict[str, Any] | None) -> bool:
    return _binding_id(b) == (role, canonical_json(prune(condition or {})))


def _iam_apply(policy: dict[str, Any], e: Edit) -> None:
    a = e.args
    bindings: list[dict[str, Any]] = policy.setdefault("bindings", [])
    role, cond = a["role"], a.get("condition")
    if e.kind == "iam.remove_member":
        for b in bindings:
            if _same_binding(b, role, cond):
                b["members"] = [m for m in b.get("members") or () if m != a["member"]]
    elif e.kind == "iam.add_member":
        for b in bindings:
            if _same_binding(b, role, cond):
                if a["member"] not in (b.get("members") or []):
                    b.setdefault("members", []).append(a["member"])
                break
        else:
            nb: dict[str, Any] = {"role": role, "members": [a["member"]]}
            if cond:
                nb["condition"] = cond
            bindings.append(nb)
    elif e.kind == "iam.remove_binding":
        policy["bindings"] = [b for b in bindings if not _same_binding(b, role, cond)]
    else:
        raise EditError(f"{e.kind} is not an IAM edit")
    policy["bindings"] = [b for b in policy["bindings"] if b.get("members")]
    if any(b.get("condition") for b in policy["bindings"]):
        policy["version"] = 3  # a policy with conditions must be written as version 3


# -- Cloud Armor --------------------------------------------------------------------------------------------------
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


def _armor_apply(policy: dict[str, Any], e: Edit) -> None:
    rules = armor_rules_api(policy)
    policy.pop("rule", None)
    a = e.args
    by_prio = {int(r.get("priority", DEFAULT_RULE_PRIORITY)): r for r in rules}
    if e.kind == "cloud_armor.set_rule_action":
        rule = by_prio.get(int(a["priority"]))
        if rule is None:
            raise EditError(f"no rule at priority {a['priority']}")
        rule["action"] = a["action"]
    elif e.kind == "cloud_armor.add_rule":
        desired = armor_rule_api(a["rule"])
        prio = int(desired["priority"])
        # Over an existing rule this is a patchRule, which keeps the fields the desired rule does not name.
        by_prio[prio] = {**by_prio[prio], **desired} if prio in by_prio else desired
    elif e.kind == "cloud_armor.remove_rule":
        if int(a["priority"]) == DEFAULT_RULE_PRIORITY:
            raise EditError("the default rule cannot be removed (set it to deny instead)")
        by_prio.pop(int(a["priority"]), None)
    elif e.kind == "cloud_armor.set_default_deny":
        rule = by_prio.get(DEFAULT_RULE_PRIORITY)
        if rule is None:
            by_prio[DEFAULT_RULE_PRIORITY] = default_deny_rule()
        else:
            rule["action"] = DENY
    else:
        raise EditError(f"{e.kind} is not a Cloud Armor edit")
    policy["rules"] = [by_prio[p] for p in sorted(by_prio)]


def default_deny_rule() -> dict[str, Any]:
    return {
        "priority": DEFAULT_RULE_PRIORITY,
        "action": DENY,
        "description": "default rule",
        "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}},
    }


# -- RBAC ---------------------------------------------------------------------------------------------------------
def subject_key(s: dict[str, Any]) -> tuple[str, str, str]:
    return str(s.get("kind", "")), str(s.get("name", "")), str(s.get("namespace") or "")


def rbac_section(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """A binding's roleRef and subjects, or a role's rules; None when the object does not exist."""
    if obj is None:
        return None
    if "roleRef" in obj or "subjects" in obj:
        return {"roleRef": prune(obj.get("roleRef") or {}), "subjects": [prune(s) for s in obj.get("subjects") or ()]}
    return {"rules": [prune(r) for r in obj.get("rules") or ()]}


def _rbac_apply(obj: dict[str, Any] | None, e: Edit) -> dict[str, Any] | None:
    if obj is None:
        return None  # already gone: nothing left to change
    a = e.args
    if e.kind == "rbac.remove_subject":
        gone = subject_key(a["subject"])
        obj["subjects"] = [s for s in obj.get("subjects") or () if subject_key(s) != gone]
        return obj
    if e.kind == "rbac.delete_binding":
        return None
    if e.kind == "rbac.replace_role_rules":
        obj["rules"] = copy.deepcopy(a["rules"])
        return obj
    raise EditError(f"{e.kind} is not an RBAC edit")


# -- by family ----------------------------------------------------------------------------------------------------
def apply_edits(family: str, state: dict[str, Any] | None, edits: Iterable[Edit]) -> dict[str, Any] | None:
    """The state after the edits (a new object; the input is not modified)."""
    new = copy.deepcopy(state)
    for e in edits:
        if family == IAM:
            new = new if new is not None else {}
            _iam_apply(new, e)
        elif family == CLOUD_ARMOR:
            if new is None:
                raise EditError("the security policy does not exist")
            _armor_apply(new, e)
        elif family == RBAC:
            new = _rbac_apply(new, e)
        else:
            raise EditError(f"unknown family {family!r}")
    return new


def section(family: str, state: dict[str, Any] | None) -> Any:
    if family == IAM:
        return iam_section(state)
    if family == CLOUD_ARMOR:
        return armor_section(state) if state is not None else None
    return rbac_section(state)


def diff_items(family: str, before: Any, after: Any) -> list[dict[str, Any]]:
    """The binding-, rule- or subject-level differences between two sections: [{item, before, after}]."""
    out: list[dict[str, Any]] = []
    if family == IAM:
        b = {_binding_id(x): x for x in before or ()}
        a = {_binding_id(x): x for x in after or ()}
        for k in sorted(set(b) | set(a)):
            if b.get(k) != a.get(k):
                x = b.get(k) or a.get(k) or {}
                title = condition_title(x.get("condition"))
                item = f"binding {k[0]}" + (f" if {title}" if title else "")
                out.append({"item": item, "before": b.get(k), "after": a.get(k)})
    elif family == CLOUD_ARMOR:
        rb = {int(x.get("priority", 0)): x for x in before or ()}
        ra = {int(x.get("priority", 0)): x for x in after or ()}
        for p in sorted(set(rb) | set(ra)):
            if rb.get(p) != ra.get(p):
                out.append({"item": f"rule {p}", "before": rb.get(p), "after": ra.get(p)})
    elif before != after:
        if before is None or after is None:
            out.append({"item": "object", "before": before, "after": after})
        elif "subjects" in before:
            bs = {subject_key(s): s for s in before.get("subjects") or ()}
            as_ = {subject_key(s): s for s in (after or {}).get("subjects") or ()}
            for sk in sorted(set(bs) | set(as_)):
                if bs.get(sk) != as_.get(sk):
                    out.append({"item": f"subject {sk[0]}:{sk[1]}", "before": bs.get(sk), "after": as_.get(sk)})
            if before.get("roleRef") != after.get("roleRef"):
                out.append({"item": "roleRef", "before": before.get("roleRef"), "after": after.get("roleRef")})
        else:
            out.append({"item": "rules", "before": before.get("rules"), "after": after.get("rules")})
    return out
