"""The RBAC family: Roles, ClusterRoles and their bindings, written through each cluster's API server.

Kinds: `rbac.remove_subject`, `rbac.delete_binding`, `rbac.replace_binding`, `rbac.replace_role_rules`. The token is
the object's `metadata.resourceVersion`. Subjects and rules are changed with a JSON merge patch that carries the
resourceVersion: the API server refuses it (409 Conflict) when the object changed since it was read. A binding is
deleted with a resourceVersion (and uid) precondition; a rollback of a deletion creates the object again. A
binding's roleRef is immutable: one that must change is replaced, deleted with those preconditions and created
again (and created back as it was should the create fail); a rollback replaces it back. Its guards never touch
Kubernetes' own objects and subjects (`system:`, `kube-system`), the auditor or the protected principals.

The GKE permissions this writer needs (container.roles.*, roleBindings.*, leases.*, and bind/escalate) are listed
in docs/operations/install-gke.md rather than declared: with in-cluster credentials they are Kubernetes RBAC verbs,
not IAM.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from auditor.collect.k8s_objects import cluster_of, namespace_of
from auditor.collect.retry import RetryPolicy
from auditor.errors import AuditorError
from auditor.evaluate.globs import any_match
from auditor.model import Asset, Finding
from auditor.plugins import remediation_families
from auditor.remedies import RemoveSubject, ReplaceRoleBinding, ReplaceRoleRules, first
from auditor.vocabulary import CLUSTER_ROLE, CLUSTER_ROLE_BINDING, ROLE, ROLE_BINDING, is_system_subject, subject_name
from remediations.edits import Edit, EditError, asked_by, prune
from remediations.families.base import DEFAULT_RETRY, Kind, Live, WriteConflict, WriterContext, token_moved
from remediations.guards import GuardConfig, Refusal
from remediations.kube_clients import ApiClientFactory, kube_clients
from remediations.targets import Target, UnsupportedTarget

if TYPE_CHECKING:
    from auditor.evaluate.rulebook import Rule

NAME = "rbac"
RBAC_KINDS = {ROLE: "Role", ROLE_BINDING: "RoleBinding", CLUSTER_ROLE: "ClusterRole",
              CLUSTER_ROLE_BINDING: "ClusterRoleBinding"}
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 30
_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation", "selfLink")


def subject_key(s: dict[str, Any]) -> tuple[str, str, str]:
    return str(s.get("kind", "")), str(s.get("name", "")), str(s.get("namespace") or "")


def rbac_section(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """A binding's roleRef and subjects, or a role's rules; None when the object does not exist."""
    if obj is None:
        return None
    if "roleRef" in obj or "subjects" in obj:
        return {"roleRef": prune(obj.get("roleRef") or {}), "subjects": [prune(s) for s in obj.get("subjects") or ()]}
    return {"rules": [prune(r) for r in obj.get("rules") or ()]}


def _subjects(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    sec = rbac_section(obj)
    return list(sec.get("subjects") or ()) if sec else []


class RbacFamily:
    name = NAME
    token_field = "resourceVersion"
    kinds = (
        Kind("rbac.remove_subject", NAME, "remove the subject from the (Cluster)RoleBinding"),
        Kind("rbac.delete_binding", NAME, "delete the (Cluster)RoleBinding"),
        Kind("rbac.replace_binding", NAME, "make the RoleBinding the declared one (a roleRef that differs is "
             "immutable: the binding is deleted and created again)"),
        Kind("rbac.replace_role_rules", NAME, "replace the (Cluster)Role's rules with the desired ones"),
    )

    def target_for(self, asset_name: str, asset_type: str) -> Target:
        kind = RBAC_KINDS.get(asset_type)
        if kind is None:
            raise UnsupportedTarget(f"RBAC remediation writes Roles, ClusterRoles and their bindings, not {asset_type}")
        cluster = cluster_of(asset_name)
        if not cluster:
            raise UnsupportedTarget("not an in-cluster object name")
        ns = namespace_of(asset_name) if kind in ("Role", "RoleBinding") else None
        name = asset_name.rsplit("/", 1)[-1]
        return Target(NAME, "kubernetes", f"{cluster}/{kind}/{ns or '-'}/{name}", cluster=cluster, kind=kind,
                      namespace=ns, name=name)

    def state_of(self, asset: Asset) -> dict[str, Any] | None:
        return asset.resource or None

    def asset_of(self, name: str, asset_type: str, state: dict[str, Any]) -> Asset:
        return Asset(name, asset_type, resource=state)

    def token_of(self, state: dict[str, Any] | None) -> str | None:
        value = ((state or {}).get("metadata") or {}).get("resourceVersion")
        return str(value) if value not in (None, "") else None

    def moved(self, target: Target, planned: str | None, before: Any, live: Live) -> str | None:
        return token_moved(self.token_field, planned, before, live.token, self.section(live.state))

    def edits_for(self, finding: Finding, rule: Rule, asset: Asset) -> list[Edit]:
        """The edits of the remedies the finding offers that the rule's kind makes (typed remedies, never details)."""
        kind = rule.remediation or ""
        base = asked_by(finding, rule)
        if kind == "rbac.replace_role_rules":
            if not asset.asset_type.endswith(("/Role", "/ClusterRole")):
                raise EditError(f"{kind} changes Roles and ClusterRoles, not {asset.asset_type}")
            r = first(finding.remedies, ReplaceRoleRules)
            rules = [dict(x) for x in r.rules] if isinstance(r, ReplaceRoleRules) else rule.params.get("rules")
            if not isinstance(rules, list):
                raise EditError("neither the finding nor the rule's params carry the desired rules")
            return [Edit(kind, {"rules": rules}, **base)]
        if not asset.asset_type.endswith("Binding"):
            raise EditError(f"{kind} changes RoleBindings and ClusterRoleBindings, not {asset.asset_type}")
        if kind == "rbac.delete_binding":
            return [Edit(kind, {}, **base)]
        if kind == "rbac.replace_binding":
            wanted = first(finding.remedies, ReplaceRoleBinding)
            if not isinstance(wanted, ReplaceRoleBinding):
                raise EditError("the finding offers no declared binding to replace this one with")
            return [Edit(kind, {"roleRef": dict(wanted.role_ref), "subjects": [dict(x) for x in wanted.subjects]},
                         **base)]
        gone = [r for r in finding.remedies if isinstance(r, RemoveSubject)]
        if not gone:
            raise EditError("the finding offers no subject to remove (a roleRef cannot be changed, and "
                            "rbac.remove_subject never adds one)")
        listed = {subject_key(s) for s in (asset.resource or {}).get("subjects") or ()}
        for r in gone:
            if subject_key(r.subject) not in listed:
                raise EditError(f"subject {r.name!r} is not in the binding")
        return [Edit("rbac.remove_subject", {"subject": dict(r.subject), "subject_name": r.name}, **base) for r in gone]

    def apply(self, state: dict[str, Any] | None, edit: Edit) -> dict[str, Any] | None:
        if state is None:
            return None  # already gone: nothing left to change
        a = edit.args
        if edit.kind == "rbac.remove_subject":
            gone = subject_key(a["subject"])
            state["subjects"] = [s for s in state.get("subjects") or () if subject_key(s) != gone]
            return state
        if edit.kind == "rbac.delete_binding":
            return None
        if edit.kind == "rbac.replace_binding":
            state["roleRef"] = copy.deepcopy(a["roleRef"])
            state["subjects"] = copy.deepcopy(a["subjects"])
            return state
        if edit.kind == "rbac.replace_role_rules":
            state["rules"] = copy.deepcopy(a["rules"])
            return state
        raise EditError(f"{edit.kind} is not an RBAC edit")

    def section(self, state: dict[str, Any] | None) -> Any:
        return rbac_section(state)

    def state_from_section(self, section: Any) -> dict[str, Any] | None:
        return section if isinstance(section, dict) else None

    def diff(self, before: Any, after: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if before == after:
            return out
        if before is None or after is None:
            return [{"item": "object", "before": before, "after": after}]
        if "subjects" in before:
            bs = {subject_key(s): s for s in before.get("subjects") or ()}
            as_ = {subject_key(s): s for s in (after or {}).get("subjects") or ()}
            for sk in sorted(set(bs) | set(as_)):
                if bs.get(sk) != as_.get(sk):
                    out.append({"item": f"subject {sk[0]}:{sk[1]}", "before": bs.get(sk), "after": as_.get(sk)})
            if before.get("roleRef") != after.get("roleRef"):
                out.append({"item": "roleRef", "before": before.get("roleRef"), "after": after.get("roleRef")})
            return out
        return [{"item": "rules", "before": before.get("rules"), "after": after.get("rules")}]

    def describe(self, edit: Edit) -> str:
        if edit.kind == "rbac.remove_subject":
            return f"remove subject {edit.args['subject_name']}"
        if edit.kind == "rbac.delete_binding":
            return "delete the binding"
        if edit.kind == "rbac.replace_binding":
            ref = edit.args["roleRef"]
            return (f"make the binding {ref.get('kind')}/{ref.get('name')} for {len(edit.args['subjects'])} subject(s) "
                    "(deleted and created again if its roleRef differs)")
        return f"replace the rules with the {len(edit.args['rules'])} desired rules"

    def principals(self, edits: Iterable[Edit], diff: Iterable[dict[str, Any]]) -> set[str]:
        out = {str(e.args["subject_name"]) for e in edits if "subject_name" in e.args}
        for d in diff:
            if d["item"] == "object" and d["before"]:
                out.update(subject_name(s) for s in d["before"].get("subjects") or ())
            elif d["item"].startswith("subject "):
                out.add(subject_name(d["before"] or d["after"]))
        return out

    def contradictions(self, edits: list[Edit]) -> tuple[list[Edit], list[str]]:
        return edits, []

    def guard(self, target: Target, before: dict[str, Any] | None, after: dict[str, Any] | None, cfg: GuardConfig,
              *, restoring: bool, origin: dict[str, Any] | None) -> list[Refusal]:
        refusals: list[Refusal] = []
        meta = (before or {}).get("metadata") or {}
        name = str(target.name or meta.get("name", ""))
        if name.startswith("system:") or target.namespace == "kube-system":
            refusals.append(Refusal("system-rbac", f"{name} is a Kubernetes system object and is never touched"))
        ns = meta.get("namespace")
        after_keys = {subject_name(s, ns) for s in _subjects(after)}
        protected = list(cfg.protected_principals)
        for s in _subjects(before):
            who = subject_name(s, ns)
            if who in after_keys:
                continue
            if is_system_subject(s, ns, ["kube-system"]):
                refusals.append(Refusal("system-rbac", f"{who} is a Kubernetes system subject and is never removed"))
            elif cfg.auditor_identities and any_match(cfg.auditor_identities, who):
                refusals.append(Refusal("auditor-access", f"removing {who} removes the auditor's own access"))
            elif protected and any_match(protected, who):
                refusals.append(Refusal("protected-principal", f"{who} is protected and is never removed"))
        return refusals

    def writer(self, ctx: WriterContext) -> RbacWriter:
        return RbacWriter(ctx.kube_client_factory or kube_clients(ctx.kube_contexts), ctx.retry)


class KubeApiError(AuditorError):
    """A Kubernetes API error other than a conflict; `status` lets the retry policy tell transient ones apart."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


class RbacWriter:
    family = NAME

    def __init__(self, clients: ApiClientFactory, retry: RetryPolicy | None = None) -> None:
        self.clients = clients
        self.retry = retry or DEFAULT_RETRY

    def _api(self, target: Target) -> Any:
        from kubernetes import client

        return client.RbacAuthorizationV1Api(self.clients(target.cluster or ""))

    def _call(self, target: Target, verb: str, **kw: Any) -> Any:
        snake = {"Role": "role", "RoleBinding": "role_binding", "ClusterRole": "cluster_role",
                 "ClusterRoleBinding": "cluster_role_binding"}[target.kind or ""]
        if target.namespace:
            return getattr(self._api(target), f"{verb}_namespaced_{snake}")(namespace=target.namespace, **kw)
        return getattr(self._api(target), f"{verb}_{snake}")(**kw)

    def read(self, target: Target) -> Live:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.retry.call(lambda: self._call(target, "read", name=target.name, _preload_content=False,
                                                      _request_timeout=REQUEST_TIMEOUT))
        except ApiException as exc:
            if exc.status == 404:
                return Live(None, None)
            raise
        obj = json.loads(resp.data)
        return Live(obj, (obj.get("metadata") or {}).get("resourceVersion"))

    def write(self, target: Target, live: Live, new: dict[str, Any] | None) -> None:
        self.retry.call(lambda: self._write(target, live, new))

    def _write(self, target: Target, live: Live, new: dict[str, Any] | None) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            if new is None:
                if live.state is None:
                    return
                self._delete(target, live)
            elif live.state is None:
                self._create(target, new)
            elif _ref(new) != _ref(live.state):
                self._replace(target, live, new)
            else:
                patch: dict[str, Any] = {"metadata": {"resourceVersion": live.token}}
                if target.kind in ("Role", "ClusterRole"):
                    patch["rules"] = new.get("rules") or []
                else:
                    patch["subjects"] = new.get("subjects") or []
                self._call(target, "patch", name=target.name, body=patch, _content_type=MERGE_PATCH,
                           _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 409:
                raise WriteConflict(f"409 Conflict: {_k8s_message(exc)}") from exc
            raise KubeApiError(exc.status, f"Kubernetes API {exc.status}: {_k8s_message(exc)}") from exc

    def _delete(self, target: Target, live: Live) -> None:
        """Delete the object as read: refused (409) when its resourceVersion or uid is no longer the one read."""
        from kubernetes import client

        meta = (live.state or {}).get("metadata") or {}
        pre = {"resourceVersion": live.token, **({"uid": meta["uid"]} if meta.get("uid") else {})}
        self._call(target, "delete", name=target.name, body=client.V1DeleteOptions.from_dict({"preconditions": pre}),
                   _request_timeout=REQUEST_TIMEOUT)

    def _create(self, target: Target, obj: dict[str, Any]) -> None:
        from kubernetes import client

        body = json.loads(json.dumps(obj))
        meta = body.setdefault("metadata", {})
        for k in _SERVER_FIELDS:
            meta.pop(k, None)
        model = getattr(client, f"V1{target.kind}")
        self._call(target, "create", body=model.from_dict(body), _request_timeout=REQUEST_TIMEOUT)

    def _replace(self, target: Target, live: Live, new: dict[str, Any]) -> None:
        """A binding's roleRef is immutable: delete the binding as read (resourceVersion and uid preconditions, so a
        concurrent change refuses it with nothing changed), then create it with the new roleRef and subjects. Should
        the create fail, the binding as read is created again before the error is raised, so a failed replace
        leaves the binding as it was (the journal holds it too)."""
        from kubernetes.client.exceptions import ApiException

        self._delete(target, live)
        try:
            self._create(target, new)
        except ApiException as exc:
            try:
                self._create(target, live.state or {})
            except ApiException as again:
                raise ReplaceFailed(
                    f"the binding was deleted and creating it with roleRef {_ref(new)} failed "
                    f"({exc.status}: {_k8s_message(exc)}); restoring it failed too ({again.status}: "
                    f"{_k8s_message(again)}): create it again from the journal's before-state") from exc
            raise ReplaceFailed(
                f"creating the binding with roleRef {_ref(new)} failed ({exc.status}: {_k8s_message(exc)}); the "
                "binding as it was has been created again") from exc


class ReplaceFailed(AuditorError):
    """A replace (delete and create) that did not go through; never retried, since its delete did."""


def _ref(obj: dict[str, Any] | None) -> tuple[str, str]:
    ref = (obj or {}).get("roleRef") or {}
    return str(ref.get("kind", "")), str(ref.get("name", ""))


def _k8s_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)[:300]
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


FAMILY = remediation_families.add(NAME, RbacFamily())
