"""The IAM family: bindings of the IAM policy of every resource that has one, written through its own API.

Kinds: `iam.remove_member`, `iam.add_member`, `iam.remove_binding`. The target is the resource as its API names it
(`endpoints`: one row per asset type), the token the policy's etag, the edit a change of bindings (version 3, so
conditions are kept), the diff one item per binding. Its guards keep Google's service agents, the auditor, the
protected principals, the last owner and the top of the hierarchy out of a fix's reach, and cap the share of a
resource's grants one apply removes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from auditor.evaluate.globs import any_match, any_member_match
from auditor.evaluate.principals import is_google_managed
from auditor.model import Asset, Finding
from auditor.plugins import remediation_families
from auditor.remedies import AddMember, Remedy, RemoveBinding, RemoveMember, first
from auditor.vocabulary import OWNER_ROLE, PUBLIC_MEMBERS, is_hierarchy_node, is_hierarchy_top
from remediations.edits import Edit, EditError, asked_by, canonical_json, condition_title, prune
from remediations.families.base import DEFAULT_RETRY, Kind, Live, WriteConflict, WriterContext, token_moved
from remediations.families.iam.endpoints import ENDPOINTS, endpoint_for
from remediations.families.iam.transports import POLICY_VERSION, PolicyTransport
from remediations.guards import GuardConfig, Refusal
from remediations.targets import Target, UnsupportedTarget

if TYPE_CHECKING:
    from auditor.evaluate.rulebook import Rule

NAME = "iam"
Grant = tuple[str, str, str]  # role, condition, member


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


def grants(policy: dict[str, Any] | None) -> set[Grant]:
    return {(b["role"], str(b.get("condition") or ""), m) for b in iam_section(policy) for m in b["members"]}


def _same_binding(b: dict[str, Any], role: str, condition: dict[str, Any] | None) -> bool:
    return _binding_id(b) == (role, canonical_json(prune(condition or {})))


def _find_binding(policy: dict[str, Any], role: str, cond_title: str | None) -> dict[str, Any] | None:
    for b in policy.get("bindings") or ():
        if b.get("role") == role and condition_title(b.get("condition")) == cond_title:
            return dict(b)
    return None


def _full_condition(asset: Asset, role: str, cond: dict[str, Any] | None) -> dict[str, Any] | None:
    """The condition as the policy has it (found by its title), else as the remedy declares it (with its expression)."""
    if not cond:
        return None
    title = condition_title(cond)
    binding = _find_binding(asset.iam_policy, role, title) if asset.has_iam_policy else None
    if binding and binding.get("condition"):
        return dict(binding["condition"])
    if cond.get("expression"):
        return {k: v for k, v in cond.items() if v is not None}
    raise EditError(f"no binding of {role} with condition {title!r} in the policy, and no expression for it")



def _conflicts() -> tuple[type[Exception], ...]:
    # imported when a write fails, not with the family: rule loading imports it, and a scan needs no client library
    from google.api_core import exceptions as gexc

    return (gexc.Aborted, gexc.Conflict, gexc.PreconditionFailed, gexc.FailedPrecondition)

class IamFamily:
    name = NAME
    token_field = "etag"
    kinds = (
        Kind("iam.remove_member", NAME, "remove the member from the role's binding (desired-state 'extra' members)"),
        Kind("iam.add_member", NAME, "add the member to the role (desired-state 'missing' members)"),
        Kind("iam.remove_binding", NAME, "remove the whole binding of the role (and condition)"),
    )

    # -- target and state -------------------------------------------------------------------------------------------
    def target_for(self, asset_name: str, asset_type: str) -> Target:
        found = endpoint_for(asset_name, asset_type)
        if found is None:
            raise UnsupportedTarget(f"IAM remediation supports {', '.join(e.label for e in ENDPOINTS.values())}, "
                                    f"not {asset_type}")
        e, resource = found
        if e.service.api == "storage":
            return Target(NAME, "storage", f"projects/_/buckets/{resource}", name=resource)
        return Target(NAME, e.service.api, resource)

    def state_of(self, asset: Asset) -> dict[str, Any] | None:
        return asset.iam_policy if asset.has_iam_policy else None

    def asset_of(self, name: str, asset_type: str, state: dict[str, Any]) -> Asset:
        return Asset(name, asset_type, iam_policy=state)

    def token_of(self, state: dict[str, Any] | None) -> str | None:
        value = (state or {}).get("etag")
        return str(value) if value not in (None, "") else None
    def moved(self, target: Target, planned: str | None, before: Any, live: Live) -> str | None:
        """A dataset planned from CAI carries the etag CAI shows on its IAM policy, which is not the etag
        datasets.get returns: no comparison of the two tells anything. The finding is stale when the access list
        read now is not the one it was planned on; the write then goes with the live etag (If-Match), so a change
        between this read and the write is refused by the API."""
        if target.api == "bigquery" and planned is not None and planned != live.token:
            if iam_section(live.state) != before:
                return (f"the dataset's access list changed since the plan (planned against etag {planned}, "
                        f"datasets.get now has {live.token}): the finding is stale")
            return None
        return token_moved(self.token_field, planned, before, live.token, iam_section(live.state))


    # -- edits ------------------------------------------------------------------------------------------------------
    def edits_for(self, finding: Finding, rule: Rule, asset: Asset) -> list[Edit]:
        """The edits of the remedies the finding offers that the rule's kind makes (typed remedies, never details).

        Every remedy of the first type the kind takes: a member outside the allowed domains is taken out of each
        binding that lists it (each with its condition), one edit a binding.
        """
        kind = rule.remediation or ""
        base = asked_by(finding, rule)
        offered = finding.remedies
        wanted: tuple[type[Remedy], ...] = {
            "iam.add_member": (AddMember,), "iam.remove_member": (RemoveMember,),
        }.get(kind, (RemoveBinding, RemoveMember))
        r = first(offered, *wanted)
        if r is None:
            # A desired-state rule names one direction: iam.add_member answers `missing`, the others the rest.
            if first(offered, AddMember):
                raise EditError(f"{kind} does not add members (a rule with iam.add_member answers missing ones)")
            if kind == "iam.add_member" and first(offered, RemoveMember):
                raise EditError("iam.add_member does not remove members (a rule with iam.remove_member answers extra "
                                "ones)")
            raise EditError(f"the finding offers no IAM fix that {kind} makes")
        return [self._edit(kind, x, asset, base) for x in offered if type(x) is type(r)]

    @staticmethod
    def _edit(kind: str, r: Remedy, asset: Asset, base: dict[str, Any]) -> Edit:
        assert isinstance(r, (AddMember, RemoveMember, RemoveBinding))
        args: dict[str, Any] = {"role": r.role}
        cond = _full_condition(asset, r.role, r.condition)
        if cond:
            args["condition"] = cond
        if kind != "iam.remove_binding" and isinstance(r, (AddMember, RemoveMember)):
            args["member"] = r.member
        return Edit(kind, args, **{k: list(v) for k, v in base.items()})

    def apply(self, state: dict[str, Any] | None, edit: Edit) -> dict[str, Any] | None:
        policy = state if state is not None else {}
        a = edit.args
        bindings: list[dict[str, Any]] = policy.setdefault("bindings", [])
        role, cond = a["role"], a.get("condition")
        if edit.kind == "iam.remove_member":
            for b in bindings:
                if _same_binding(b, role, cond):
                    b["members"] = [m for m in b.get("members") or () if m != a["member"]]
        elif edit.kind == "iam.add_member":
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
        elif edit.kind == "iam.remove_binding":
            policy["bindings"] = [b for b in bindings if not _same_binding(b, role, cond)]
        else:
            raise EditError(f"{edit.kind} is not an IAM edit")
        policy["bindings"] = [b for b in policy["bindings"] if b.get("members")]
        if any(b.get("condition") for b in policy["bindings"]):
            policy["version"] = 3  # a policy with conditions must be written as version 3
        return policy

    def section(self, state: dict[str, Any] | None) -> Any:
        return iam_section(state)

    def state_from_section(self, section: Any) -> dict[str, Any] | None:
        return {"bindings": section or []}

    def diff(self, before: Any, after: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        b = {_binding_id(x): x for x in before or ()}
        a = {_binding_id(x): x for x in after or ()}
        for k in sorted(set(b) | set(a)):
            if b.get(k) != a.get(k):
                x = b.get(k) or a.get(k) or {}
                title = condition_title(x.get("condition"))
                item = f"binding {k[0]}" + (f" if {title}" if title else "")
                out.append({"item": item, "before": b.get(k), "after": a.get(k)})
        return out

    def describe(self, edit: Edit) -> str:
        a = edit.args
        cond = f" (condition {condition_title(a.get('condition'))})" if a.get("condition") else ""
        if edit.kind == "iam.remove_member":
            return f"remove {a['member']} from {a['role']}{cond}"
        if edit.kind == "iam.add_member":
            return f"add {a['member']} to {a['role']}{cond}"
        return f"remove the binding of {a['role']}{cond}"

    def principals(self, edits: Iterable[Edit], diff: Iterable[dict[str, Any]]) -> set[str]:
        return {str(e.args["member"]) for e in edits if "member" in e.args}

    def contradictions(self, edits: list[Edit]) -> tuple[list[Edit], list[str]]:
        problems: list[str] = []
        out = list(edits)
        adds = {canonical_json(e.args): e for e in out if e.kind == "iam.add_member"}
        for e in [e for e in out if e.kind == "iam.remove_member"]:
            other = adds.get(canonical_json(e.args))
            if other is not None:
                problems.append(f"rules {', '.join(other.rules)} add and {', '.join(e.rules)} remove "
                                f"{e.args['member']} in {e.args['role']}: neither is planned")
                out = [x for x in out if x is not e and x is not other]
        return out, problems

    # -- guards -----------------------------------------------------------------------------------------------------
    def guard(self, target: Target, before: dict[str, Any] | None, after: dict[str, Any] | None, cfg: GuardConfig,
              *, restoring: bool, origin: dict[str, Any] | None) -> list[Refusal]:
        refusals: list[Refusal] = []
        b, a = grants(before), grants(after)
        removed = b - a
        for role, _, m in sorted(removed | (a - b)):
            if is_google_managed(m):
                refusals.append(Refusal("service-agent", f"{m} is a Google-managed service agent ({role})"))
        for role, _, m in sorted(a - b):
            if m in PUBLIC_MEMBERS and not restoring:
                refusals.append(Refusal("public-member", f"a remediation never grants {role} to {m}"))
        resource = target.resource
        if target.api == "iam_admin" and is_google_managed("serviceAccount:" + resource.rsplit("/", 1)[-1]):
            refusals.append(Refusal("service-agent", f"{resource} is a Google-managed service agent"))
        protected = list(cfg.protected_principals)
        for role, _, m in sorted(removed):
            if cfg.auditor_identities and any_member_match(cfg.auditor_identities, m):
                refusals.append(Refusal("auditor-access", f"removing {m} from {role} removes the auditor's own access"))
            elif protected and any_member_match(protected, m):
                refusals.append(Refusal("protected-principal", f"{m} is protected and is never removed ({role})"))
        if any(r == OWNER_ROLE for r, _, _ in b) and not any(r == OWNER_ROLE for r, _, _ in a):
            refusals.append(Refusal("last-owner", f"the change would leave {resource} with no {OWNER_ROLE}"))
        refusals.extend(_blast_radius(target, b, a, grants(origin) if origin is not None else b, cfg, restoring))
        return refusals

    def writer(self, ctx: WriterContext) -> IamWriter:
        return IamWriter(ctx.gcp_endpoint, ctx.retry)


def _named(gs: set[Grant]) -> set[Grant]:
    return {g for g in gs if g[2] not in PUBLIC_MEMBERS}


def _allowed(target: Target, cfg: GuardConfig) -> bool:
    names = {target.resource, *([target.name] if target.name else [])}
    return any(any_match(cfg.protected_role_allowances, n) for n in names)


def _blast_radius(target: Target, before: set[Grant], after: set[Grant], origin: set[Grant], cfg: GuardConfig,
                  restoring: bool) -> list[Refusal]:
    """The guards against one write taking too much: an emptied policy on the hierarchy, a protected role gone from
    an organization or folder, too large a share of the resource's grants removed at once.

    Grants to everyone (allUsers, allAuthenticatedUsers) are not counted: taking them away locks nobody out.
    """
    out: list[Refusal] = []
    before, after, origin = _named(before), _named(after), _named(origin)
    removed = before - after
    if not removed:
        return out
    # Below a project an empty policy is how resources are made (access comes from above); on the hierarchy it
    # leaves nobody able to manage the resource.
    if before and not after and not restoring and is_hierarchy_node(target.resource):
        out.append(Refusal("empty-policy", f"the change would remove every binding of {target.resource}"))
    if is_hierarchy_top(target.resource) and cfg.protected_roles and not _allowed(target, cfg):
        for role in sorted({r for r, _, _ in removed if any_match(cfg.protected_roles, r)}):
            out.append(Refusal(
                "protected-role",
                f"{role} is a protected role on {target.resource}: a remediation never removes its members there "
                "unless the resource is listed in remediation.allow_protected_roles_on",
            ))
    if cfg.max_member_share is not None and origin and not restoring:
        gone = len(origin - after)
        if gone > 1 and gone / len(origin) > cfg.max_member_share:  # one grant is always within the cap
            out.append(Refusal(
                "member-share",
                f"the apply would remove {gone} of the {len(origin)} member grants of {target.resource}, over the "
                f"cap of {cfg.max_member_share:.0%} (remediation.max_member_share_per_apply)",
            ))
    return out


class IamWriter:
    """Reads a policy (version 3) and writes its bindings with the etag read, through the resource's own API."""

    family = NAME

    def __init__(self, endpoint: Any = None, retry: Any = None) -> None:
        self.transport = PolicyTransport(endpoint)
        self.retry = retry or DEFAULT_RETRY

    def read(self, target: Target) -> Live:
        policy = self.retry.call(lambda: self.transport.get(target.api, target.resource, target.name))
        return Live(policy, policy.get("etag"))

    def write(self, target: Target, live: Live, new: dict[str, Any] | None) -> None:
        # Only bindings change; the version is 3 so conditions are kept, and the etag makes the write conditional.
        policy: dict[str, Any] = {"version": POLICY_VERSION, "bindings": list((new or {}).get("bindings") or [])}
        if live.token:
            policy["etag"] = live.token
        try:
            self.retry.call(lambda: self.transport.set(target.api, target.resource, target.name, live.state, policy))
        except _conflicts() as exc:
            raise WriteConflict(str(exc.message if hasattr(exc, "message") else exc)) from exc


FAMILY = remediation_families.add(NAME, IamFamily())
