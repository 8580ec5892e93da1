"""Stage evaluate: Kubernetes RBAC checks for multi-tenant GKE clusters (a namespace per tenant).

Subjects are shown as one string each (`User:alice`, `Group:team`, `ServiceAccount:ns/name`, see `subject_name`);
findings carry `subject`, `role`, `binding` and `namespace` in their details, which the remediation planner reads.

Kubernetes' own objects are never reported nor targeted: bindings and roles named `system:` (the API server
reconciles them at start-up), and `system:` users and groups and the service accounts of the system namespaces
as subjects. Objects are compared within one cluster only: assets are grouped by the cluster part of their name.

Tenants: a tenant namespace is selected by a label (the tenant is the label's value, so one tenant may own several
namespaces) or by a namespace name glob (the tenant is the namespace name). A tenant's subjects are the service
accounts of its namespaces, and the users and groups mapped to it in the rule's params, by name (`tenants`) or by a
naming convention (`tenant_subjects`, with `{tenant}` and `{namespace}` placeholders).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import Any, Literal, NamedTuple

import msgspec
from pydantic import Field, field_validator

from auditor.collect.k8s_objects import cluster_of, namespace_of
from auditor.evaluate.gke_posture import cluster_of_asset
from auditor.evaluate.globs import any_match, glob_match
from auditor.evaluate.rbac_rules import (
    NOTHING,
    POWERS,
    Reach,
    group_matches,
    is_everything,
    names_restricted,
    reach,
    resource_matches,
    union,
)
from auditor.evaluate.registry import Context, Outcome, Params, Prefilter, Unevaluated, Violation, check
from auditor.model import Asset, Severity
from auditor.remedies import DeleteRoleBinding, Remedy, RemoveSubject, ReplaceRoleBinding, ReplaceRoleRules
from auditor.vocabulary import (
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    GKE_CLUSTER,
    NAMESPACE,
    NETWORK_POLICY,
    RESOURCE_QUOTA,
    ROLE,
    ROLE_BINDING,
    SUBJECT_KINDS,
    SYSTEM_NAMESPACES,
    is_system_subject,
    service_account_of,
    subject_name,
)

_encode = msgspec.json.Encoder().encode
NON_TENANT_NAMESPACES = ["kube-*", "default", "gke-*", "gmp-*", "istio-system", "config-management-system"]


# -- subjects and objects -------------------------------------------------------------------------------------------
def meta(obj: dict[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def object_name(obj: dict[str, Any], asset: Asset | None = None) -> str:
    name = meta(obj).get("name")
    if name:
        return str(name)
    return asset.name.rsplit("/", 1)[-1] if asset is not None else ""


def is_system_object(obj: dict[str, Any]) -> bool:
    return object_name(obj).startswith("system:")


def binding_namespace(asset: Asset) -> str | None:
    if asset.asset_type != ROLE_BINDING:
        return None
    return str(meta(asset.resource).get("namespace") or namespace_of(asset.name) or "") or None


def _role_name(binding: dict[str, Any]) -> str:
    return str((binding.get("roleRef") or {}).get("name", ""))


def subjects(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in obj.get("subjects") or () if isinstance(s, dict)]


def binding_details(asset: Asset, who: str | None, **extra: Any) -> dict[str, Any]:
    obj = asset.resource
    ref = obj.get("roleRef") or {}
    d: dict[str, Any] = {
        "subject": who,
        "role": ref.get("name"),
        "role_kind": ref.get("kind"),
        "binding": object_name(obj, asset),
        "binding_kind": "RoleBinding" if asset.asset_type == ROLE_BINDING else "ClusterRoleBinding",
        "namespace": binding_namespace(asset),
    }
    d.update(extra)
    return d


def where(asset: Asset) -> str:
    ns = binding_namespace(asset)
    return f"in namespace {ns}" if ns else "cluster-wide"


# -- registration -----------------------------------------------------------------------------------------------------
_Check = Callable[[Asset, Any, Context], Iterable[Outcome]]
ABAC_NOTE = " (legacy ABAC is enabled on this cluster: RBAC is not the only authorizer)"


def rbac_check(
    name: str, *, context: Iterable[str] = (), screen: Callable[..., bool] | None = None, **kw: Any
) -> Callable[[_Check], _Check]:
    """Register an RBAC authorization check. On a cluster with legacy ABAC enabled its findings say so (message, and
    `legacy_abac: true` in details): the API server allows what ABAC allows too, so RBAC alone decides nothing. The
    snapshot's Cluster assets are read as context for this; a check that read no context before is screened by its
    own outcome, which the Cluster cannot change."""
    context = list(context)

    def deco(fn: _Check) -> _Check:
        def noted(asset: Asset, params: Any, ctx: Context) -> Iterator[Outcome]:
            found = list(fn(asset, params, ctx))
            if not found:  # most bindings: their cluster is not looked up
                return
            cluster = cluster_of_asset(ctx, asset.name)
            if cluster is None or not cluster.legacy_abac:
                yield from found
                return
            for v in found:
                if isinstance(v, Violation):  # the severity it carries stays
                    v = v._replace(message=v.message + ABAC_NOTE, details={**v.details, "legacy_abac": True})
                yield v

        noted.__doc__ = fn.__doc__
        own_screen = screen
        if own_screen is None and not context and not kw.get("context_names"):
            def own_screen(asset: Asset, params: Any, ctx: Context) -> bool:
                return any(True for _ in fn(asset, params, ctx))

        check(name, context=[*context, GKE_CLUSTER], screen=own_screen, **kw)(noted)
        return fn

    return deco


# -- roles ------------------------------------------------------------------------------------------------------------
def _labels_match(labels: dict[str, Any], selector: dict[str, Any]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a set of labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or ():
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


class _ClusterRole(NamedTuple):
    """What judging a ClusterRole's reach needs of it (not its rules: thousands are read)."""

    labels: dict[str, Any]
    selectors: tuple[dict[str, Any], ...]  # aggregationRule.clusterRoleSelectors
    reach: Reach  # what its own rules grant


class ClusterRoles:
    """The ClusterRoles of every cluster, with aggregated roles (admin, edit, view...) resolved."""

    def __init__(self, assets: Iterable[Asset]) -> None:
        self.by_cluster: dict[str, dict[str, _ClusterRole]] = defaultdict(dict)
        self._reach: dict[tuple[str, str], Reach] = {}
        # every cluster has the same default roles (admin, edit, view...): the reach of equal rules is judged once
        reaches: dict[bytes, Reach] = {}
        for a in assets:
            obj = a.resource
            agg = obj.get("aggregationRule")
            selectors = (agg.get("clusterRoleSelectors") or ()) if isinstance(agg, dict) else ()
            labels = meta(obj).get("labels")
            rules = obj.get("rules")
            rules = rules if isinstance(rules, list) else []
            try:
                text = _encode(rules)
            except (msgspec.EncodeError, TypeError, ValueError, OverflowError):  # not plain JSON: judged alone
                granted = reach(rules)
            else:
                known = reaches.get(text)
                if known is None:
                    known = reaches[text] = reach(rules)
                granted = known
            self.by_cluster[cluster_of(a.name)][object_name(obj, a)] = _ClusterRole(
                labels if isinstance(labels, dict) else {},
                tuple(sel for sel in selectors if isinstance(sel, dict)) if isinstance(selectors, list) else (),
                granted,
            )

    def reach(self, cluster: str, name: str) -> Reach:
        """What the ClusterRole grants, counting the roles its aggregationRule selects (nothing when not read)."""
        key = (cluster, name)
        hit = self._reach.get(key)
        if hit is None:  # thousands of bindings name the same few roles (admin, edit, view)
            hit = self._reach[key] = self._resolve(cluster, name, frozenset())
        return hit

    def is_wildcard(self, cluster: str, name: str) -> bool:
        """Whether the ClusterRole grants every verb on every resource, aggregation resolved."""
        return self.reach(cluster, name).everything

    def _resolve(self, cluster: str, name: str, seen: frozenset[str]) -> Reach:
        roles = self.by_cluster.get(cluster, {})
        role = roles.get(name)
        if role is None:
            return NOTHING
        if not role.selectors or len(seen) >= 8:
            return role.reach
        seen = seen | {name}
        # The aggregation controller fills the role's rules with those of every ClusterRole its selectors match.
        parts = [
            self._resolve(cluster, other_name, seen)
            for other_name, other in roles.items()
            if other_name not in seen and any(_labels_match(other.labels, sel) for sel in role.selectors)
        ]
        return union([role.reach, *parts])


def _cluster_roles(ctx: Context) -> ClusterRoles:
    return ctx.memo("rbac.cluster_roles", lambda: ClusterRoles(ctx.assets(CLUSTER_ROLE)))


def is_wildcard_rule(rule: dict[str, Any]) -> bool:
    """Every verb on every resource of every API group (see auditor.evaluate.rbac_rules)."""
    return is_everything(rule)


# -- cluster-wide power -----------------------------------------------------------------------------------------------
class PowerfulRoleParams(Params):
    roles: list[str] = Field(default_factory=lambda: ["cluster-admin"], description="ClusterRole name globs.")
    wildcard_roles: bool = Field(
        default=True,
        description="Also any ClusterRole granting every verb on every resource of every API group (aggregation "
        "resolved).",
    )
    powerful_roles: bool = Field(
        default=True,
        description="Also any ClusterRole granting a power (reading secrets, pods/exec, pods/attach, nodes/proxy, "
        "minting tokens, escalate, bind, impersonate, every non-resource URL) but not every permission, at "
        "`powerful_severity`.",
    )
    powerful_severity: Severity = Field(
        default=Severity.high, description="Severity (at most the rule's) of a binding of a role with powers only."
    )
    allowed_subjects: list[str] = Field(
        default_factory=list, description="Subject globs (`User:*`, `Group:platform-admins`) allowed to hold them."
    )
    system_namespaces: list[str] = Field(default_factory=lambda: list(SYSTEM_NAMESPACES))

    @cached_property
    def screen_key(self) -> str:
        """The params the screen reads: rules that differ only in `roles` (with wildcards on) screen alike."""
        read = {"wildcard_roles", "powerful_roles", "allowed_subjects", "system_namespaces"}
        if not self.wildcard_roles and not self.powerful_roles:
            read.add("roles")
        return "rbac.powerful." + self.model_dump_json(include=read)


def _may_be_powerful(asset: Asset, params: PowerfulRoleParams, ctx: Context) -> bool:
    """Screen: a binding of a ClusterRole that is, or may be (wildcards are resolved at the end), too powerful,
    to a subject that is not Kubernetes' own nor allowed."""
    answer: bool = asset.derived(params.screen_key, lambda a: _powerful_candidate(a, params))
    return answer


def _powerful_candidate(asset: Asset, params: PowerfulRoleParams) -> bool:
    obj = asset.resource
    if is_system_object(obj) or (obj.get("roleRef") or {}).get("kind") != "ClusterRole":
        return False
    if not params.wildcard_roles and not params.powerful_roles and not any_match(params.roles, _role_name(obj)):
        return False
    ns = binding_namespace(asset)
    return any(
        not is_system_subject(s, ns, params.system_namespaces)
        and not (params.allowed_subjects and any_match(params.allowed_subjects, subject_name(s, ns)))
        for s in subjects(obj)
    )


@rbac_check(
    "rbac.no_powerful_role_binding",
    params=PowerfulRoleParams,
    asset_types=[ROLE_BINDING, CLUSTER_ROLE_BINDING],
    context=[CLUSTER_ROLE],
    screen=_may_be_powerful,
)
def no_powerful_role_binding(asset: Asset, params: PowerfulRoleParams, ctx: Context) -> Iterator[Violation]:
    """No binding of cluster-admin, or of a ClusterRole with every permission or a power, to non-system subjects.

    Kubernetes' own subjects (`system:` users and groups, system namespaces' service accounts) are left out. The
    ClusterRoles are read as context (same cluster) with Kubernetes' matching rules (auditor.evaluate.rbac_rules):
    a custom `ml-platform-superuser` granting `*` verbs on `*` resources of `*` API groups is caught like
    cluster-admin, aggregated roles are resolved from the labelled roles of the snapshot, and `*` on `*` within
    one API group (a controller's own custom resources) is not "every resource". A role that grants a power
    (reading secrets not restricted by name, pods/exec or attach, nodes/proxy, minting tokens, escalate, bind,
    impersonate, every non-resource URL) is reported at `powerful_severity` (high by default, at most the rule's),
    naming the powers. A RoleBinding of such a role is reported too: it holds them in that namespace.

    ```yaml
    - id: rbac-no-cluster-admin-for-humans
      check: rbac.no_powerful_role_binding
      severity: critical
      params: {roles: [cluster-admin], allowed_subjects: ["Group:gke-platform-admins@example.com"]}
      mode: dryrun
      remediation: rbac.remove_subject
    ```
    """
    obj = asset.resource
    if is_system_object(obj):
        return
    ref = obj.get("roleRef") or {}
    if ref.get("kind") != "ClusterRole":
        return
    role = str(ref.get("name", ""))
    why = "every permission"
    cap: Severity | None = None
    if not any_match(params.roles, role):
        if not params.wildcard_roles and not params.powerful_roles:
            return
        granted = _cluster_roles(ctx).reach(cluster_of(asset.name), role)
        if params.wildcard_roles and granted.everything:
            why = "every verb on every resource"
        elif params.powerful_roles and granted.powers and not granted.everything:
            why = ", ".join(sorted(granted.powers))
            cap = params.powerful_severity
        else:
            return
    ns = binding_namespace(asset)
    for s in subjects(obj):
        if is_system_subject(s, ns, params.system_namespaces):
            continue
        who = subject_name(s, ns)
        if params.allowed_subjects and any_match(params.allowed_subjects, who):
            continue
        yield Violation(
            f"{who} is bound to ClusterRole {role} ({why}) {where(asset)}",
            who,
            binding_details(asset, who),
            (RemoveSubject(s, who),),
            cap,
        )


DEFAULT_PUBLIC_GRANTS: dict[str, list[str]] = {
    # The bootstrap bindings every cluster has (kube-apiserver's RBAC defaults).
    "system:authenticated": ["system:basic-user", "system:discovery", "system:public-info-viewer"],
    "system:unauthenticated": ["system:public-info-viewer"],
    # Kubernetes 1.20+: service accounts read the OIDC issuer discovery document (workload identity federation).
    "system:serviceaccounts": ["system:service-account-issuer-discovery"],
}


class PublicSubjectsParams(Params):
    subjects: list[str] = Field(
        default_factory=lambda: [
            "system:anonymous",
            "system:unauthenticated",
            "system:authenticated",
            "system:serviceaccounts",
        ],
        description="User and group names that stand for everyone (or every account of the cluster).",
    )
    default_grants: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_PUBLIC_GRANTS.items()},
        description="Subject -> ClusterRole names it may hold: the Kubernetes defaults.",
    )
    include_system_objects: bool = Field(
        default=False, description="Also judge bindings named `system:` (the defaults above then matter)."
    )


def _subject_names(asset: Asset) -> str | None:
    names = [str(s.get("name", "")) for s in subjects(asset.resource)]
    return None if any("\n" in n for n in names) else "\n".join(names)


@rbac_check(
    "rbac.no_public_subjects",
    params=PublicSubjectsParams,
    asset_types=[ROLE_BINDING, CLUSTER_ROLE_BINDING],
    # names, not globs: a glob matches at least the name it is, so the prefilter lets every binding it must through
    prefilter=Prefilter("rbac.subject_names", _subject_names, lambda p: p.subjects),
)
def no_public_subjects(asset: Asset, params: PublicSubjectsParams, ctx: Context) -> Iterator[Violation]:
    """No grant to everyone (anonymous, unauthenticated, authenticated, all service accounts) beyond the defaults.

    The subjects are `system:anonymous`, `system:unauthenticated`, `system:authenticated` (on GKE, every Google
    account) and `system:serviceaccounts` (every service account of every tenant).
    The defaults are the bootstrap grants: system:basic-user, system:discovery and system:public-info-viewer to
    authenticated users, system:public-info-viewer to unauthenticated ones (clusters created before Kubernetes 1.14
    may still grant them system:discovery: reported), system:service-account-issuer-discovery to all service
    accounts. They are a param, so a cluster whose provider adds its own can list them.

    ```yaml
    - id: rbac-no-anonymous-access
      check: rbac.no_public_subjects
      severity: critical
      params:
        default_grants:
          system:authenticated: [system:basic-user, system:discovery, system:public-info-viewer]
          system:unauthenticated: [system:public-info-viewer]
      mode: dryrun
      remediation: rbac.remove_subject
    ```
    """
    obj = asset.resource
    if is_system_object(obj) and not params.include_system_objects:
        return
    ref = obj.get("roleRef") or {}
    role = str(ref.get("name", ""))
    ns = binding_namespace(asset)
    for s in subjects(obj):
        name = str(s.get("name", ""))
        if s.get("kind") not in ("User", "Group") or name not in params.subjects:
            continue
        if ref.get("kind") == "ClusterRole" and role in params.default_grants.get(name, ()):
            continue
        who = subject_name(s, ns)
        yield Violation(
            f"{who} (everyone) is bound to {ref.get('kind')} {role} {where(asset)}",
            who,
            binding_details(asset, who),
            (RemoveSubject(s, who),),
        )


# -- tenants ----------------------------------------------------------------------------------------------------------
class TenantParams(Params):
    """How tenants are recognised; shared by every tenant check (a YAML anchor keeps one copy in a rule file)."""

    tenant_labels: list[str] = Field(
        default_factory=lambda: ["tenant", "*/tenant"],
        description="Namespace label key globs; a namespace carrying one is a tenant namespace, the value its tenant.",
    )
    tenant_namespaces: list[str] = Field(
        default_factory=list, description="Namespace name globs that are tenant namespaces (tenant = namespace)."
    )
    excluded_namespaces: list[str] = Field(
        default_factory=lambda: list(NON_TENANT_NAMESPACES), description="Never tenant namespaces."
    )
    tenant_subjects: list[str] = Field(
        default_factory=list,
        description="Subject globs with {tenant} / {namespace} placeholders, e.g. `Group:ml-{tenant}@example.com`.",
    )
    tenants: dict[str, list[str]] = Field(
        default_factory=dict, description="Tenant -> subject globs mapped to it (`User:alice@example.com`)."
    )
    platform_subjects: list[str] = Field(
        default_factory=list, description="Subject globs of the platform team, allowed in every tenant namespace."
    )
    system_namespaces: list[str] = Field(default_factory=lambda: list(SYSTEM_NAMESPACES))


class Tenancy:
    """Which namespace belongs to which tenant, per cluster, and which tenants a subject belongs to."""

    def __init__(self, params: TenantParams, namespaces: Iterable[Asset]) -> None:
        self.params = params
        self.labelled: dict[tuple[str, str], str] = {}
        self.namespaces: dict[tuple[str, str], set[str]] = defaultdict(set)  # (cluster, tenant) -> namespaces
        self.tenants: dict[str, set[str]] = defaultdict(set)  # cluster -> tenants
        # (cluster, user or group) -> its tenants: one binding after another names the same groups
        self._user_cache: dict[tuple[str, str], frozenset[str]] = {}
        self.read: set[tuple[str, str]] = set()  # (cluster, namespace) of every Namespace read
        self.clusters: set[str] = set()  # the clusters of `read`
        for a in namespaces:
            self.add_namespace(a)

    def add_namespace(self, a: Asset) -> None:
        ns = object_name(a.resource, a)
        cluster = cluster_of(a.name)
        self.read.add((cluster, ns))
        self.clusters.add(cluster)
        tenant = self._from_labels(ns, meta(a.resource).get("labels") or {})
        if tenant is None:
            tenant = self._from_name(ns)
        if tenant is not None:
            self.labelled[(cluster, ns)] = tenant
            self.namespaces[(cluster, tenant)].add(ns)
            if tenant not in self.tenants[cluster]:
                self.tenants[cluster].update([tenant, *self.params.tenants])
                self._user_cache.clear()

    def _from_labels(self, ns: str, labels: dict[str, Any]) -> str | None:
        if any_match(self.params.excluded_namespaces, ns):
            return None
        for key, value in sorted(labels.items()):
            if value and any_match(self.params.tenant_labels, str(key)):
                return str(value)
        return None

    def _from_name(self, ns: str) -> str | None:
        if any_match(self.params.excluded_namespaces, ns) or not any_match(self.params.tenant_namespaces, ns):
            return None
        return ns

    def tenant_of(self, cluster: str, ns: str | None) -> str | None:
        """The tenant of a namespace: from its labels when the Namespace was read, else from its name."""
        if not ns:
            return None
        hit = self.labelled.get((cluster, ns))
        if hit is not None:
            return hit
        tenant = self._from_name(ns)
        if tenant is not None and ns not in self.namespaces[(cluster, tenant)]:
            # A tenant namespace known by its name only (no Namespace asset): users and groups may map to it.
            self.namespaces[(cluster, tenant)].add(ns)
            self.tenants[cluster].add(tenant)
            self._user_cache.clear()
        return tenant

    def namespaces_of(self, cluster: str, tenant: str) -> set[str]:
        return self.namespaces.get((cluster, tenant)) or {tenant}

    def subject_tenants(self, cluster: str, s: dict[str, Any], ns: str | None) -> set[str]:
        """The tenants a subject belongs to (a service account: its namespace's; a user or group: the mapping)."""
        sa = service_account_of(s, ns)
        if sa is not None:
            t = self.tenant_of(cluster, sa[0])
            return {t} if t else set()
        who = subject_name(s, ns)
        key = (cluster, who)
        hit = self._user_cache.get(key)
        if hit is None:
            hit = self._user_cache[key] = frozenset(self._user_tenants(cluster, who))
        return set(hit)

    def _user_tenants(self, cluster: str, who: str) -> set[str]:
        out = {t for t, globs in self.params.tenants.items() if any_match(globs, who)}
        if self.params.tenant_subjects:
            tenants = self.tenants.get(cluster, set())
            named = [t for t in tenants if t in who]  # a {tenant} pattern can only match a name the subject holds
            for pattern in self.params.tenant_subjects:
                for t in named if "{tenant}" in pattern else tenants:
                    if t in out:
                        continue
                    spots = self.namespaces_of(cluster, t) if "{namespace}" in pattern else {""}
                    if any((not n or n in who) and glob_match(_fill(pattern, t, n), who) for n in spots):
                        out.add(t)
        return out

    def is_exempt(self, s: dict[str, Any], ns: str | None) -> bool:
        return exempt_subject(self.params, s, ns)

    def unknown(self, cluster: str, ns: str | None) -> Unevaluated | None:
        """When a namespace's tenant cannot be known: tenants are read from Namespace labels and no Namespace of
        its cluster is in the snapshot (a snapshot of RBAC objects only). None when it can be known."""
        if not ns or not self.params.tenant_labels or (cluster, ns) in self.read:
            return None
        if cluster in self.clusters:
            return None  # its cluster's Namespaces were read: this one is simply not a tenant's
        return Unevaluated(
            f"no Namespace of cluster {cluster.removeprefix('//container.googleapis.com/') or '(unnamed)'} in the "
            "snapshot: the tenants of its namespaces "
            "(Namespace labels) are unknown"
        )

    def own_tenant(self, asset: Asset) -> str | None:
        """A Namespace's tenant, from its own labels or name (what `tenant_of` says of it, without the context)."""
        ns = object_name(asset.resource, asset)
        return self._from_labels(ns, meta(asset.resource).get("labels") or {}) or self._from_name(ns)


def exempt_subject(params: TenantParams, s: dict[str, Any], ns: str | None) -> bool:
    """System subjects and the platform team's, never judged as tenant subjects."""
    if is_system_subject(s, ns, params.system_namespaces):
        return True
    return bool(params.platform_subjects) and any_match(params.platform_subjects, subject_name(s, ns))


def _judged_subjects(asset: Asset, params: TenantParams) -> bool:
    """Screen: a binding that is not Kubernetes' own and binds a subject that is neither system nor platform."""
    obj = asset.resource
    if is_system_object(obj):
        return False
    ns = binding_namespace(asset)
    return any(not exempt_subject(params, s, ns) for s in subjects(obj))


# Namespaced objects whose namespaces may be tenants known by name only (no Namespace asset was read).
_NAMESPACED = (ROLE, ROLE_BINDING, RESOURCE_QUOTA, NETWORK_POLICY)
# Tenancy reads the Namespaces (labels), and the names of the Roles and RoleBindings (namespaces known by name only).
TENANT_CONTEXT = [NAMESPACE]
TENANT_CONTEXT_NAMES = [ROLE, ROLE_BINDING]


def tenant_check(
    name: str, *, params: type[TenantParams], asset_types: list[str], screen: Callable[..., bool] | None = None
) -> Callable[[_Check], _Check]:
    """Register an RBAC check that judges against tenancy: it reads the tenancy context."""
    return rbac_check(
        name,
        params=params,
        asset_types=asset_types,
        context=TENANT_CONTEXT,
        context_names=TENANT_CONTEXT_NAMES,
        screen=screen,
    )


def _tenant_names(ctx: Context, params: TenantParams) -> Tenancy:
    """A Tenancy without namespaces: what a Namespace's own labels and name say (for screens, as assets stream)."""
    return ctx.memo(f"rbac.tenant_names.{_tenancy_key(ctx, params)}", lambda: Tenancy(params, ()))


def _tenancy_key(ctx: Context, params: TenantParams) -> str:
    """Rules whose tenancy params agree share one Tenancy (their other params do not matter to it)."""
    key: str = ctx.memo(
        f"rbac.tenancy_key.{id(params)}", lambda: params.model_dump_json(include=set(TenantParams.model_fields))
    )
    return key


def _tenancy(ctx: Context, params: TenantParams) -> Tenancy:
    def build() -> Tenancy:
        # the one the screens grew as the Namespaces streamed by, given the rest of them
        tenancy = _tenancy_so_far(ctx, params)
        if params.tenant_namespaces:
            for t in _NAMESPACED:
                for a in ctx.assets(t):
                    tenancy.tenant_of(cluster_of(a.name), namespace_of(a.name))
        return tenancy

    return ctx.memo(f"rbac.tenancy.{_tenancy_key(ctx, params)}", build)


def tenancy_of(ctx: Context, params: TenantParams) -> Tenancy:
    """The tenancy of the whole snapshot for these params, for checks of other domains judged against it (they
    declare TENANT_CONTEXT and TENANT_CONTEXT_NAMES, and call this once the snapshot is read, not in screens)."""
    return _tenancy(ctx, params)


def own_tenant(ctx: Context, params: TenantParams, namespace: Asset) -> str | None:
    """A Namespace's tenant by its own labels and name: what a screen may ask as the Namespaces stream by."""
    return _tenant_names(ctx, params).own_tenant(namespace)


class _TenancySoFar:
    """A Tenancy of the Namespaces read so far, grown as they stream by (for screens)."""

    def __init__(self, params: TenantParams, reader: str) -> None:
        self.tenancy = Tenancy(params, ())
        self.reader = reader

    def update(self, ctx: Context) -> Tenancy:
        for a in ctx.arrived(NAMESPACE, self.reader):
            self.tenancy.add_namespace(a)
        return self.tenancy


def _tenancy_so_far(ctx: Context, params: TenantParams) -> Tenancy:
    key = f"rbac.tenancy_so_far.{_tenancy_key(ctx, params)}"
    so_far: _TenancySoFar = ctx.memo(key, lambda: _TenancySoFar(params, key))
    return so_far.update(ctx)


def _screen_isolation(asset: Asset, params: TenantParams, ctx: Context) -> bool:
    """Kept unless every judged subject belongs to the tenant of the binding's namespace, by the Namespaces read
    so far: once a Namespace is read its tenant is known, and more Namespaces only add tenants and namespaces to
    what a subject may belong to, never take one away."""
    if not _judged_subjects(asset, params):
        return False
    tenancy = _tenancy_so_far(ctx, params)
    cluster = cluster_of(asset.name)
    ns = binding_namespace(asset)
    if ns is None or (cluster, ns) not in tenancy.read:
        return True  # its Namespace is yet to come: its labels may name its tenant
    tenant = tenancy.tenant_of(cluster, ns)
    if tenant is None:
        return False
    for s in subjects(asset.resource):
        if tenancy.is_exempt(s, ns):
            continue
        sa = service_account_of(s, ns)
        if sa is not None and sa[0] != ns and (cluster, sa[0]) not in tenancy.read:
            return True  # a service account of a namespace whose tenant is yet to be read
        if tenant not in tenancy.subject_tenants(cluster, s, ns):
            return True
    return False


@tenant_check("rbac.tenant_isolation", params=TenantParams, asset_types=[ROLE_BINDING], screen=_screen_isolation)
def tenant_isolation(asset: Asset, params: TenantParams, ctx: Context) -> Iterator[Outcome]:
    """A RoleBinding in a tenant namespace binds only that tenant's subjects.

    A tenant's subjects are the service accounts of its own namespaces and the users and groups mapped to it
    (`tenants`, `tenant_subjects`). A service account of another tenant, or a user or group mapped to none (or to
    another tenant), is reported: that is one tenant reaching into another's namespace. Platform subjects
    (`platform_subjects`) and Kubernetes' own are allowed everywhere.

    ```yaml
    - id: rbac-tenant-isolation
      check: rbac.tenant_isolation
      severity: high
      params:
        tenant_labels: [platform.example.com/tenant]
        tenant_subjects: ["Group:ml-{tenant}@example.com"]
        tenants: {vision: ["User:alice@example.com"]}
        platform_subjects: ["Group:ml-platform@example.com", "ServiceAccount:kubeflow/*"]
      mode: dryrun
      remediation: rbac.remove_subject
    ```
    """
    obj = asset.resource
    if is_system_object(obj):
        return
    tenancy = _tenancy(ctx, params)
    cluster = cluster_of(asset.name)
    ns = binding_namespace(asset)
    tenant = tenancy.tenant_of(cluster, ns)
    if tenant is None:
        unknown = tenancy.unknown(cluster, ns)
        if unknown is not None and _judged_subjects(asset, params):
            yield unknown
        return
    for s in subjects(obj):
        if tenancy.is_exempt(s, ns):
            continue
        belongs = tenancy.subject_tenants(cluster, s, ns)
        if tenant in belongs:
            continue
        who = subject_name(s, ns)
        if belongs:
            why = f"it belongs to tenant {', '.join(sorted(belongs))}"
        elif service_account_of(s, ns) is not None:
            why = "it is a service account of a namespace that is not this tenant's"
        else:
            why = "it is mapped to no tenant"
        yield Violation(
            f"{who} is bound in tenant {tenant}'s namespace {ns} ({obj.get('roleRef', {}).get('name')}), but {why}",
            who,
            binding_details(asset, who, tenant=tenant, subject_tenants=sorted(belongs)),
            (RemoveSubject(s, who),),
        )


class TenantClusterBindingParams(TenantParams):
    allowed_roles: list[str] = Field(
        default_factory=list, description="ClusterRole globs a tenant subject may hold cluster-wide (read-only ones)."
    )


def _screen_tenant_cluster_binding(asset: Asset, params: TenantClusterBindingParams, ctx: Context) -> bool:
    role = _role_name(asset.resource)
    return _judged_subjects(asset, params) and not (params.allowed_roles and any_match(params.allowed_roles, role))


@tenant_check(
    "rbac.no_tenant_cluster_binding",
    params=TenantClusterBindingParams,
    asset_types=[CLUSTER_ROLE_BINDING],
    screen=_screen_tenant_cluster_binding,
)
def no_tenant_cluster_binding(asset: Asset, params: TenantClusterBindingParams, ctx: Context) -> Iterator[Violation]:
    """No tenant subject in a ClusterRoleBinding: whatever it grants, it grants in every tenant's namespace.

    A tenant subject is a service account of a tenant namespace (also as `system:serviceaccount:NS:NAME` or the
    group `system:serviceaccounts:NS`), or a user or group mapped to a tenant. `allowed_roles` lists ClusterRoles a
    tenant may hold cluster-wide anyway (for example one that lists namespaces).

    ```yaml
    - id: rbac-no-tenant-in-cluster-bindings
      check: rbac.no_tenant_cluster_binding
      severity: high
      params:
        tenant_labels: [platform.example.com/tenant]
        tenant_subjects: ["Group:ml-{tenant}@example.com"]
        allowed_roles: [namespace-lister]
      mode: dryrun
      remediation: rbac.remove_subject
    ```
    """
    obj = asset.resource
    if is_system_object(obj):
        return
    role = _role_name(obj)
    if params.allowed_roles and any_match(params.allowed_roles, role):
        return
    tenancy = _tenancy(ctx, params)
    cluster = cluster_of(asset.name)
    for s in subjects(obj):
        if tenancy.is_exempt(s, None):
            continue
        belongs = tenancy.subject_tenants(cluster, s, None)
        if not belongs:
            continue
        who = subject_name(s)
        yield Violation(
            f"{who} of tenant {', '.join(sorted(belongs))} is bound cluster-wide to ClusterRole {role}",
            who,
            binding_details(asset, who, tenant=sorted(belongs)[0], subject_tenants=sorted(belongs)),
            (RemoveSubject(s, who),),
        )


# -- tenant roles -----------------------------------------------------------------------------------------------------
class SensitiveResource(Params):
    resource: str = Field(description="`secrets`, `pods/exec`...: a resource or subresource.")
    api_group: str = Field(default="", description='Its API group ("" is the core group).')
    verbs: list[str] = Field(default_factory=lambda: ["*"], description="Verbs that count (`*`: any verb).")
    allow_named: bool = Field(
        default=False, description="A rule restricted by resourceNames (one named secret) is not reported."
    )


def _default_sensitive() -> list[SensitiveResource]:
    return [
        SensitiveResource(resource="secrets", verbs=["get", "list", "watch"], allow_named=True),
        SensitiveResource(resource="pods/exec"),
        SensitiveResource(resource="pods/attach"),
        SensitiveResource(resource="nodes/proxy"),
        SensitiveResource(resource="serviceaccounts/token", verbs=["create"]),
    ]


class DangerousRulesParams(TenantParams):
    wildcards: bool = Field(default=True, description="Report `*` in verbs or resources.")
    dangerous_verbs: list[str] = Field(default_factory=lambda: ["escalate", "bind", "impersonate"])
    sensitive_resources: list[SensitiveResource] = Field(default_factory=_default_sensitive)


def _verb_applies(rule: dict[str, Any], verb: str) -> bool:
    """An explicitly granted verb that means something on the rule's resources (escalate on configmaps grants
    nothing; escalate, bind and impersonate act on the resources Kubernetes checks them on)."""
    if verb not in [str(v) for v in rule.get("verbs") or ()]:
        return False
    targets = [p for p in POWERS if verb in p.verbs]
    if not targets:  # a verb of the operator's own list: granted is enough
        return True
    return any(group_matches(rule, p.group) and any(resource_matches(rule, r) for r in p.resources) for p in targets)


def dangerous_reasons(rule: dict[str, Any], params: DangerousRulesParams) -> list[str]:
    """Why one PolicyRule is dangerous in a tenant's hands (empty when it is not); resources, groups and
    resourceNames are matched as Kubernetes matches them (auditor.evaluate.rbac_rules)."""
    verbs = [str(v) for v in rule.get("verbs") or ()]
    resources = [str(r) for r in rule.get("resources") or ()]
    out: list[str] = []
    if params.wildcards:
        if "*" in verbs:
            out.append("every verb (*)")
        if "*" in resources:
            out.append("every resource (*)")
    for v in params.dangerous_verbs:
        if _verb_applies(rule, v):
            out.append(f"verb {v}")
    # Under a reported resource wildcard each sensitive resource would only repeat it.
    granted = {**rule, "resources": [r for r in resources if not (params.wildcards and r == "*")]}
    for sr in params.sensitive_resources:
        if not resource_matches(granted, sr.resource) or not group_matches(rule, sr.api_group):
            continue
        if sr.allow_named and names_restricted(rule):
            continue
        if "*" in sr.verbs or "*" in verbs or set(verbs) & set(sr.verbs):
            out.append(f"{sr.resource} ({', '.join(v for v in verbs if v == '*' or v in sr.verbs or '*' in sr.verbs)})")
    return out


def _dangerous_rules(asset: Asset, params: DangerousRulesParams) -> list[tuple[int, dict[str, Any], list[str]]]:
    """(index, rule, reasons) of every dangerous rule of a Role: what makes it a finding in a tenant's namespace."""
    out = []
    for i, r in enumerate(r for r in asset.resource.get("rules") or () if isinstance(r, dict)):
        why = dangerous_reasons(r, params)
        if why:
            out.append((i, r, why))
    return out


def _screen_dangerous_rules(asset: Asset, params: DangerousRulesParams, ctx: Context) -> bool:
    return not is_system_object(asset.resource) and bool(_dangerous_rules(asset, params))


@tenant_check(
    "rbac.tenant_role_dangerous_rules",
    params=DangerousRulesParams,
    asset_types=[ROLE],
    screen=_screen_dangerous_rules,
)
def tenant_role_dangerous_rules(asset: Asset, params: DangerousRulesParams, ctx: Context) -> Iterator[Outcome]:
    """Roles in tenant namespaces grant nothing that breaks out of the tenant or reads what it should not.

    Reported: wildcards (`*` verbs or resources), `escalate`, `bind` and `impersonate` (a way to more power than
    the role shows), reading `secrets` (unless restricted to named secrets), `pods/exec`, `pods/attach`,
    `nodes/proxy` (the kubelet API, every pod of the node) and `serviceaccounts/token` (minting tokens). Subresource
    wildcards (`pods/*`) and API group wildcards are understood. One finding per Role, whose details carry the
    offending rules and `desired_rules` (the Role without them) for `rbac.replace_role_rules`. ClusterRoles bound
    in a tenant namespace (admin, edit) are the platform's choice and not judged here: Kubernetes refuses a tenant
    a binding to a role with more than it holds, and cluster-wide wildcards are `rbac.no_powerful_role_binding`'s.

    ```yaml
    - id: rbac-tenant-role-dangerous-rules
      check: rbac.tenant_role_dangerous_rules
      severity: high
      params:
        tenant_labels: [platform.example.com/tenant]
        dangerous_verbs: [escalate, bind, impersonate]
        sensitive_resources:
          - {resource: secrets, verbs: [get, list, watch], allow_named: true}
          - {resource: pods/exec}
      mode: dryrun
      remediation: rbac.replace_role_rules
    ```
    """
    obj = asset.resource
    if is_system_object(obj):
        return
    ns = str(meta(obj).get("namespace") or namespace_of(asset.name) or "")
    tenancy = _tenancy(ctx, params)
    tenant = tenancy.tenant_of(cluster_of(asset.name), ns)
    if tenant is None:
        unknown = tenancy.unknown(cluster_of(asset.name), ns)
        if unknown is not None and _dangerous_rules(asset, params):
            yield unknown
        return
    rules = [r for r in obj.get("rules") or () if isinstance(r, dict)]
    offending: list[dict[str, Any]] = []
    found: set[str] = set()
    for i, r, why in _dangerous_rules(asset, params):
        offending.append({"index": i, "rule": r, "reasons": why})
        found.update(why)
    if not offending:
        return
    role = object_name(obj, asset)
    bad = {o["index"] for o in offending}
    keep = [r for i, r in enumerate(rules) if i not in bad]
    reasons = sorted(found)
    yield Violation(
        f"Role {role} of tenant {tenant} grants {'; '.join(reasons)}",
        role,
        {
            "role": role,
            "namespace": ns,
            "tenant": tenant,
            "binding": None,
            "subject": None,
            "offending_rules": offending,
            "desired_rules": keep,
        },
        (ReplaceRoleRules(tuple(keep)),),
    )


# -- tenant desired state -------------------------------------------------------------------------------------------
class DesiredBinding(Params):
    role: str = Field(min_length=1)
    role_kind: Literal["Role", "ClusterRole"] = "Role"
    subjects: list[str] = Field(
        min_length=1,
        description="`User:x`, `Group:x`, `ServiceAccount:ns/name`; {tenant} and {namespace} are filled in.",
    )

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, v: list[str]) -> list[str]:
        for s in v:
            kind, sep, name = s.partition(":")
            if not sep or kind not in SUBJECT_KINDS or not name:
                raise ValueError(f"subject {s!r}: expected User:NAME, Group:NAME or ServiceAccount:NAMESPACE/NAME")
            if kind == "ServiceAccount" and name.count("/") != 1:
                raise ValueError(f"subject {s!r}: a service account is ServiceAccount:NAMESPACE/NAME")
        return v


def subject_object(text: str) -> dict[str, Any]:
    kind, _, name = text.partition(":")
    if kind == "ServiceAccount":
        ns, _, sa = name.partition("/")
        return {"kind": kind, "name": sa, "namespace": ns}
    return {"kind": kind, "name": name, "apiGroup": "rbac.authorization.k8s.io"}


def _canonical_rules(rules: Iterable[Any]) -> list[str]:
    out = []
    for r in rules:
        if not isinstance(r, dict):
            continue
        norm = {k: sorted(map(str, v)) if isinstance(v, list) else v for k, v in r.items() if v not in (None, [])}
        out.append(json.dumps(norm, sort_keys=True))
    return sorted(out)


class TenantDesiredStateParams(TenantParams):
    roles: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict, description="Role name -> its exact rules (PolicyRules as Kubernetes writes them)."
    )
    role_bindings: dict[str, DesiredBinding] = Field(default_factory=dict, description="RoleBinding name -> binding.")
    unmanaged: list[str] = Field(
        default_factory=list, description="Role and RoleBinding name globs left alone (created by operators)."
    )

    @field_validator("roles")
    @classmethod
    def _rules(cls, v: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        for name, rules in v.items():
            for i, r in enumerate(rules):
                if not isinstance(r.get("verbs"), list) or not r["verbs"]:
                    raise ValueError(f"role {name} rule {i}: 'verbs' must be a non-empty list")
                if not r.get("resources") and not r.get("nonResourceURLs"):
                    raise ValueError(f"role {name} rule {i}: give 'resources' (with 'apiGroups') or 'nonResourceURLs'")
        return v


def _fill(text: str, tenant: str, ns: str) -> str:
    return text.replace("{tenant}", tenant).replace("{namespace}", ns)


def _desired_binding(d: DesiredBinding, tenant: str, ns: str) -> dict[str, Any]:
    return {
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": d.role_kind, "name": _fill(d.role, tenant, ns)},
        "subjects": [subject_object(_fill(s, tenant, ns)) for s in d.subjects],
    }


def _index(ctx: Context, asset_type: str) -> dict[tuple[str, str], set[str]]:
    def build() -> dict[tuple[str, str], set[str]]:
        out: dict[tuple[str, str], set[str]] = defaultdict(set)
        for a in ctx.assets(asset_type):
            out[(cluster_of(a.name), str(meta(a.resource).get("namespace") or namespace_of(a.name)))].add(
                object_name(a.resource, a)
            )
        return out

    return ctx.memo(f"rbac.index.{asset_type}", build)


@tenant_check("rbac.tenant_desired_state", params=TenantDesiredStateParams, asset_types=[NAMESPACE, ROLE, ROLE_BINDING])
def tenant_desired_state(asset: Asset, params: TenantDesiredStateParams, ctx: Context) -> Iterator[Violation]:
    """Every tenant namespace has exactly the declared Roles and RoleBindings, and nothing else.

    Drift is reported where it can be fixed: a missing Role or RoleBinding on the Namespace (`change: missing`,
    the object's body in `desired`); an extra one on the object itself (`change: extra`, for
    `rbac.delete_binding`); a changed one on the object (`change: changed`: a Role's rules, with `desired_rules`
    for `rbac.replace_role_rules`; a RoleBinding's roleRef or subjects, with `desired`, fixed by
    `rbac.replace_binding`, which deletes and creates the binding again when its roleRef differs, or, while the
    roleRef is the declared one, by `rbac.remove_subject` for the extra subjects). `{tenant}` and
    `{namespace}` are filled in names and subjects. Objects named `system:` and `unmanaged` globs are left alone.

    ```yaml
    - id: rbac-tenant-bindings-as-declared
      check: rbac.tenant_desired_state
      severity: medium
      params:
        tenant_labels: [platform.example.com/tenant]
        roles:
          trainer:
            - {apiGroups: [batch], resources: [jobs], verbs: [get, list, watch, create, delete]}
        role_bindings:
          trainer: {role: trainer, subjects: ["ServiceAccount:{namespace}/trainer", "Group:ml-{tenant}@example.com"]}
          tenant-view: {role: view, role_kind: ClusterRole, subjects: ["Group:ml-{tenant}@example.com"]}
        unmanaged: ["default-*"]
    ```
    """
    obj = asset.resource
    cluster = cluster_of(asset.name)
    tenancy = _tenancy(ctx, params)
    if asset.asset_type == NAMESPACE:
        ns = object_name(obj, asset)
        tenant = tenancy.tenant_of(cluster, ns)
        if tenant is None:
            return
        have_roles = _index(ctx, ROLE).get((cluster, ns), set())
        have_bindings = _index(ctx, ROLE_BINDING).get((cluster, ns), set())
        for name, rules in sorted(params.roles.items()):
            name = _fill(name, tenant, ns)
            if name not in have_roles:
                yield Violation(
                    f"tenant {tenant}'s namespace {ns} has no Role {name}",
                    f"missing|Role|{name}",
                    {"change": "missing", "kind": "Role", "role": name, "namespace": ns, "tenant": tenant,
                     "binding": None, "subject": None, "desired": {"rules": rules}, "desired_rules": rules},
                )
        for name, b in sorted(params.role_bindings.items()):
            name = _fill(name, tenant, ns)
            if name not in have_bindings:
                body = _desired_binding(b, tenant, ns)
                yield Violation(
                    f"tenant {tenant}'s namespace {ns} has no RoleBinding {name}",
                    f"missing|RoleBinding|{name}",
                    {"change": "missing", "kind": "RoleBinding", "binding": name, "namespace": ns, "tenant": tenant,
                     "role": body["roleRef"]["name"], "subject": None, "desired": body},
                )
        return
    if is_system_object(obj):
        return
    ns = str(meta(obj).get("namespace") or namespace_of(asset.name) or "")
    tenant = tenancy.tenant_of(cluster, ns)
    name = object_name(obj, asset)
    if tenant is None or any_match(params.unmanaged, name):
        return
    if asset.asset_type == ROLE:
        wanted_rules = {_fill(k, tenant, ns): v for k, v in params.roles.items()}.get(name)
        base = {"kind": "Role", "role": name, "namespace": ns, "tenant": tenant, "binding": None, "subject": None}
        if wanted_rules is None:
            yield Violation(f"Role {name} in tenant {tenant}'s namespace {ns} is not declared", f"extra|Role|{name}",
                            {"change": "extra", **base})
        elif _canonical_rules(obj.get("rules") or ()) != _canonical_rules(wanted_rules):
            yield Violation(
                f"Role {name} in tenant {tenant}'s namespace {ns} differs from its declared rules",
                f"changed|Role|{name}",
                {"change": "changed", **base, "desired": {"rules": wanted_rules}, "desired_rules": wanted_rules},
                (ReplaceRoleRules(tuple(wanted_rules)),),
            )
        return
    wanted = {_fill(k, tenant, ns): v for k, v in params.role_bindings.items()}.get(name)
    if wanted is None:
        yield Violation(
            f"RoleBinding {name} in tenant {tenant}'s namespace {ns} is not declared",
            f"extra|RoleBinding|{name}",
            binding_details(asset, None, change="extra", kind="RoleBinding", tenant=tenant),
            (DeleteRoleBinding(),),
        )
        return
    body = _desired_binding(wanted, tenant, ns)
    ref = obj.get("roleRef") or {}
    diffs = []
    if (ref.get("kind"), ref.get("name")) != (body["roleRef"]["kind"], body["roleRef"]["name"]):
        diffs.append(f"roleRef {ref.get('kind')}/{ref.get('name')} (want {wanted.role_kind}/{body['roleRef']['name']})")
    have_s = {subject_name(s, ns) for s in subjects(obj)}
    want_s = {subject_name(s, ns) for s in body["subjects"]}
    if have_s - want_s:
        diffs.append(f"extra subjects {', '.join(sorted(have_s - want_s))}")
    if want_s - have_s:
        diffs.append(f"missing subjects {', '.join(sorted(want_s - have_s))}")
    if diffs:
        # Two fixes, the rule's kind picks: take out the subjects beyond the declaration (rbac.remove_subject, only
        # while the roleRef is the declared one), or make the binding the declared one (rbac.replace_binding: a
        # roleRef is immutable, so one that differs means deleting the binding and creating it again).
        same_ref = (ref.get("kind"), ref.get("name")) == (body["roleRef"]["kind"], body["roleRef"]["name"])
        extra = tuple(RemoveSubject(s, subject_name(s, ns)) for s in subjects(obj) if subject_name(s, ns) not in want_s)
        offered: tuple[Remedy, ...] = (*(extra if same_ref else ()),
                                       ReplaceRoleBinding(body["roleRef"], tuple(body["subjects"])))
        yield Violation(
            f"RoleBinding {name} in tenant {tenant}'s namespace {ns} differs: {'; '.join(diffs)}",
            f"changed|RoleBinding|{name}",
            binding_details(asset, None, change="changed", kind="RoleBinding", tenant=tenant, desired=body,
                            extra_subjects=sorted(have_s - want_s), missing_subjects=sorted(want_s - have_s)),
            offered,
        )


# -- tenant hygiene ---------------------------------------------------------------------------------------------------
Direction = Literal["Ingress", "Egress"]


def _both_directions() -> list[Direction]:
    return ["Ingress", "Egress"]


class HygieneParams(TenantParams):
    require_quota: bool = Field(default=True, description="A ResourceQuota in every tenant namespace.")
    quota_resources: list[str] = Field(
        default_factory=list,
        description="Resource globs the quotas must limit (`requests.nvidia.com/gpu`): a quota on CPU alone does "
        "not stop one tenant from taking every GPU.",
    )
    default_deny: list[Direction] = Field(
        default_factory=_both_directions, description="Directions a default-deny NetworkPolicy covers."
    )


def _policy_types(spec: dict[str, Any]) -> list[str]:
    """policyTypes as Kubernetes defaults them: Ingress always, Egress when egress rules are given."""
    types = spec.get("policyTypes")
    if isinstance(types, list) and types:
        return [str(t) for t in types]
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def denies_by_default(policy: dict[str, Any], direction: str) -> bool:
    """A NetworkPolicy selecting every pod (`podSelector: {}`) with the direction and no rule for it."""
    spec = policy.get("spec") or {}
    selector = spec.get("podSelector")
    if selector is None or not isinstance(selector, dict):
        return False
    if selector.get("matchLabels") or selector.get("matchExpressions"):
        return False
    return direction in _policy_types(spec) and not spec.get(direction.lower())


_Where = tuple[str, str]  # (cluster, namespace)
_Kept = list[frozenset[str]]  # one entry per object of the namespace


def _quota_limits(quota: dict[str, Any]) -> frozenset[str]:
    return frozenset(str(k) for k in ((quota.get("spec") or {}).get("hard") or {}))


def _default_denies(policy: dict[str, Any]) -> frozenset[str]:
    return frozenset(d for d in ("Ingress", "Egress") if denies_by_default(policy, d))


def _screen_hygiene(asset: Asset, params: HygieneParams, ctx: Context) -> bool:
    return _tenant_names(ctx, params).own_tenant(asset) is not None


@check(
    "rbac.tenant_namespace_hygiene",
    params=HygieneParams,
    asset_types=[NAMESPACE],
    context=[NAMESPACE, RESOURCE_QUOTA, NETWORK_POLICY],
    screen=_screen_hygiene,
)
def tenant_namespace_hygiene(asset: Asset, params: HygieneParams, ctx: Context) -> Iterator[Violation]:
    """Every tenant namespace has a ResourceQuota and a default-deny NetworkPolicy for ingress and egress.

    `quota_resources` lists what the quotas must limit (GPUs, TPUs). Without a quota one tenant's job can take
    every GPU of the cluster; without default-deny network policies a
    tenant's pods reach (and are reached by) every other tenant's, whatever RBAC says. Default deny for a direction
    means a NetworkPolicy selecting every pod (`podSelector: {}`) whose policyTypes include it, with no rule for it
    (one policy for both directions, or one each). Read from `k8s.io/ResourceQuota` and
    `networking.k8s.io/NetworkPolicy` assets: a source that did not list them reports every tenant namespace.

    ```yaml
    - id: rbac-tenant-namespace-hygiene
      check: rbac.tenant_namespace_hygiene
      severity: medium
      params:
        tenant_labels: [platform.example.com/tenant]
        quota_resources: [requests.nvidia.com/gpu]
        default_deny: [Ingress, Egress]
    ```
    """
    ns = object_name(asset.resource, asset)
    cluster = cluster_of(asset.name)
    tenant = _tenancy(ctx, params).tenant_of(cluster, ns)
    if tenant is None:
        return

    def by_namespace(asset_type: str, keep: Callable[[dict[str, Any]], frozenset[str]]) -> dict[_Where, _Kept]:
        def build() -> dict[_Where, _Kept]:
            # per namespace, what each object says (a quota's limited resources, a policy's default-deny
            # directions) rather than the objects: tens of thousands of them are read
            out: dict[_Where, _Kept] = defaultdict(list)
            seen: dict[frozenset[str], frozenset[str]] = {}  # most objects say the same: one copy of each answer
            for a in ctx.assets(asset_type):
                obj = a.resource
                said = keep(obj)
                out[(cluster_of(a.name), str(meta(obj).get("namespace") or namespace_of(a.name)))].append(
                    seen.setdefault(said, said)
                )
            return out

        return ctx.memo(f"rbac.by_namespace.{asset_type}", build)

    base = {"namespace": ns, "tenant": tenant, "role": None, "binding": None, "subject": None}
    quotas = by_namespace(RESOURCE_QUOTA, _quota_limits).get((cluster, ns), [])
    if params.require_quota and not quotas:
        yield Violation(
            f"tenant {tenant}'s namespace {ns} has no ResourceQuota", "quota", {**base, "missing": "ResourceQuota"}
        )
    elif quotas:
        limited = frozenset[str]().union(*quotas)
        for res in params.quota_resources:
            if not any(glob_match(res, k) for k in limited):
                yield Violation(
                    f"tenant {tenant}'s namespace {ns} has no quota on {res}",
                    f"quota|{res}",
                    {**base, "missing": f"ResourceQuota on {res}"},
                )
    denied = frozenset[str]().union(*by_namespace(NETWORK_POLICY, _default_denies).get((cluster, ns), []))
    for direction in params.default_deny:
        if direction not in denied:
            yield Violation(
                f"tenant {tenant}'s namespace {ns} has no default-deny NetworkPolicy for {direction.lower()}",
                f"default-deny|{direction}",
                {**base, "missing": f"default-deny NetworkPolicy ({direction})"},
            )
