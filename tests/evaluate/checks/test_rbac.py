"""Kubernetes RBAC checks for multi-tenant clusters: compliant and violating objects, params errors, the example."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from auditor.collect.files import iter_file_assets
from auditor.collect.k8s_objects import object_asset
from auditor.errors import RuleError
from auditor.evaluate.engine import Engine
from auditor.evaluate.registry import all_checks
from auditor.evaluate.rulebook import load_file, shipped_rules_dir
from auditor.model import Asset, Finding

RBAC = "rbac.authorization.k8s.io"
CLUSTER = "projects/p/locations/us-central1/clusters/training"
OTHER_CLUSTER = "projects/p/locations/us-central1/clusters/inference"


def k8s(kind: str, name: str, namespace: str | None = None, labels: dict[str, str] | None = None,
        **body: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    return {"kind": kind, "metadata": meta, **body}


def subj(text: str) -> dict[str, Any]:
    kind, _, name = text.partition(":")
    if kind == "ServiceAccount":
        ns, _, sa = name.partition("/")
        return {"kind": kind, "name": sa, "namespace": ns}
    return {"kind": kind, "name": name, "apiGroup": RBAC}


def binding(kind: str, name: str, role_kind: str, role: str, *subjects: str, namespace: str | None = None
            ) -> dict[str, Any]:
    return k8s(kind, name, namespace, roleRef={"apiGroup": RBAC, "kind": role_kind, "name": role},
               subjects=[subj(s) for s in subjects])


def crb(name: str, role: str, *subjects: str) -> dict[str, Any]:
    return binding("ClusterRoleBinding", name, "ClusterRole", role, *subjects)


def rb(name: str, ns: str, role_kind: str, role: str, *subjects: str) -> dict[str, Any]:
    return binding("RoleBinding", name, role_kind, role, *subjects, namespace=ns)


def ns(name: str, tenant: str | None = None, key: str = "platform.example.com/tenant") -> dict[str, Any]:
    return k8s("Namespace", name, labels={key: tenant} if tenant else None)


def assets(*objs: dict[str, Any], cluster: str = CLUSTER) -> list[Asset]:
    out = []
    for o in objs:
        a = object_asset(o, cluster)
        assert a is not None
        out.append(a)
    return out


def scan(tmp_path: Path, rules_yaml: str, objs: list[Asset]) -> list[Finding]:
    f = tmp_path / "rules.yaml"
    f.write_text(rules_yaml)
    result = Engine(load_file(f)).evaluate(objs)
    assert not result.errors, result.errors
    return result.findings


def one_rule(check: str, params: str = "{}") -> str:
    return f"- {{id: r, check: {check}, severity: high, params: {params}}}\n"


CLUSTER_ADMIN = k8s("ClusterRole", "cluster-admin", rules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
SUPERUSER = k8s("ClusterRole", "ml-superuser", rules=[{"apiGroups": [""], "resources": ["*"], "verbs": ["*"]}])
VIEW = k8s("ClusterRole", "view", rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}])
AGG = k8s("ClusterRole", "platform-admin", aggregationRule={"clusterRoleSelectors": [
    {"matchLabels": {"example.com/aggregate-to-platform-admin": "true"}}]})
AGG_PART = k8s("ClusterRole", "platform-admin-part", labels={"example.com/aggregate-to-platform-admin": "true"},
               rules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])


# -- cluster-wide power -----------------------------------------------------------------------------------------------
def test_no_powerful_role_binding(tmp_path: Path) -> None:
    objs = assets(
        CLUSTER_ADMIN, SUPERUSER, VIEW, AGG, AGG_PART,
        crb("cluster-admin", "cluster-admin", "Group:system:masters"),  # Kubernetes' own
        crb("lead-admin", "cluster-admin", "User:alice@example.com", "ServiceAccount:kube-system/gc"),
        crb("ci-super", "ml-superuser", "ServiceAccount:ci/deployer"),  # wildcard verbs on wildcard resources
        crb("platform", "platform-admin", "Group:platform@example.com"),  # aggregated wildcard
        crb("readers", "view", "Group:everyone@example.com"),  # not powerful
        rb("ns-admin", "team-a", "ClusterRole", "cluster-admin", "User:bob@example.com"),
        crb("system:evil", "cluster-admin", "User:mallory"),  # named system: never reported
    ) + assets(crb("x", "ml-superuser", "User:carol"), cluster=OTHER_CLUSTER)  # no such role in that cluster
    found = {(f.details["binding"], f.details["subject"]): f for f in scan(
        tmp_path, one_rule("rbac.no_powerful_role_binding"), objs)}
    assert sorted(found) == [
        ("ci-super", "ServiceAccount:ci/deployer"),
        ("lead-admin", "User:alice@example.com"),
        ("ns-admin", "User:bob@example.com"),
        ("platform", "Group:platform@example.com"),
    ]
    assert found[("ns-admin", "User:bob@example.com")].details["namespace"] == "team-a"
    assert found[("lead-admin", "User:alice@example.com")].details["role"] == "cluster-admin"
    # `*` on `*` of the core group only: not every resource, but secrets, exec and tokens (named, graded below)
    ci = found[("ci-super", "ServiceAccount:ci/deployer")].message
    assert "every verb on every resource" not in ci
    assert "read secrets" in ci and "exec into pods" in ci and "mint service account tokens" in ci
    assert "every verb on every resource" in found[("platform", "Group:platform@example.com")].message
    allowed = one_rule(
        "rbac.no_powerful_role_binding", "{wildcard_roles: false, powerful_roles: false, allowed_subjects: ['User:*']}"
    )
    assert [f.details["binding"] for f in scan(tmp_path, allowed, objs)] == []


# A controller's own ClusterRole, shaped as operators ship them (Kubeflow's training-operator, cert-manager): `*` on
# `*` inside its API groups, and reads of core objects.
CONTROLLER = k8s("ClusterRole", "training-operator", rules=[
    {"apiGroups": ["kubeflow.org"], "resources": ["*"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["pods", "services", "events"], "verbs": ["*"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
])
NAMED_READER = k8s("ClusterRole", "ca-reader", rules=[
    {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get"], "resourceNames": ["ca-bundle"]}])
RBAC_GROUP_STAR = k8s("ClusterRole", "rbac-manager", rules=[
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["*"], "verbs": ["*"]}])
EXEC_ANY = k8s("ClusterRole", "debugger", rules=[
    {"apiGroups": [""], "resources": ["*/exec"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]}])  # `pods/*` is no wildcard in Kubernetes
URLS = k8s("ClusterRole", "all-urls", rules=[{"nonResourceURLs": ["*"], "verbs": ["*"]}])


def test_powerful_role_reach_follows_kubernetes_matching(tmp_path: Path) -> None:
    objs = assets(
        CONTROLLER, NAMED_READER, RBAC_GROUP_STAR, EXEC_ANY, URLS, CLUSTER_ADMIN,
        crb("op", "training-operator", "ServiceAccount:kubeflow/training-operator"),
        crb("ca", "ca-reader", "Group:everyone@example.com"),
        crb("rbac", "rbac-manager", "User:dana@example.com"),
        crb("debug", "debugger", "User:erin@example.com"),
        crb("urls", "all-urls", "User:frank@example.com"),
        crb("root", "cluster-admin", "User:root@example.com"),
    )
    rule = "- {id: r, check: rbac.no_powerful_role_binding, severity: critical}\n"
    found = {f.details["binding"]: f for f in scan(tmp_path, rule, objs)}
    assert sorted(found) == ["debug", "rbac", "root", "urls"]  # the controller and the named read are not
    assert "escalate" in found["rbac"].message and "bind" in found["rbac"].message
    assert "every verb on every resource" not in found["rbac"].message
    assert "exec into pods" in found["debug"].message  # `*/exec` is a subresource wildcard
    assert "every non-resource URL" in found["urls"].message
    # Severity is the reach: every permission keeps the rule's, powers only are graded to powerful_severity
    assert found["root"].severity == "critical"
    assert {found[b].severity for b in ("debug", "rbac", "urls")} == {"high"}
    medium = rule.replace("}", ", params: {powerful_severity: medium}}")
    assert {f.details["binding"]: f.severity for f in scan(tmp_path, medium, objs)}["rbac"] == "medium"
    only_all = rule.replace("}", ", params: {powerful_roles: false}}")
    assert sorted(f.details["binding"] for f in scan(tmp_path, only_all, objs)) == ["root"]


def test_no_public_subjects(tmp_path: Path) -> None:
    objs = assets(
        crb("basic", "system:basic-user", "Group:system:authenticated"),  # a default grant under another name
        crb("public-info", "system:public-info-viewer", "Group:system:unauthenticated"),
        crb("anon-view", "view", "User:system:anonymous"),
        crb("all-google", "edit", "Group:system:authenticated"),
        crb("unauth-discovery", "system:discovery", "Group:system:unauthenticated"),  # not a default any more
        rb("all-sa", "team-a", "Role", "reader", "Group:system:serviceaccounts"),
        crb("issuer", "system:service-account-issuer-discovery", "Group:system:serviceaccounts"),  # 1.20+ default
        crb("system:custom", "view", "Group:system:authenticated"),
    )
    rules = one_rule("rbac.no_public_subjects")
    found = sorted((f.details["binding"], f.details["subject"]) for f in scan(tmp_path, rules, objs))
    assert found == [
        ("all-google", "Group:system:authenticated"),
        ("all-sa", "Group:system:serviceaccounts"),
        ("anon-view", "User:system:anonymous"),
        ("unauth-discovery", "Group:system:unauthenticated"),
    ]
    with_system = one_rule("rbac.no_public_subjects", "{include_system_objects: true}")
    assert ("system:custom", "Group:system:authenticated") in {
        (f.details["binding"], f.details["subject"]) for f in scan(tmp_path, with_system, objs)}


# -- tenants ----------------------------------------------------------------------------------------------------------
TENANCY = ("{tenant_labels: ['*/tenant'], tenant_subjects: ['Group:ml-{tenant}@example.com'], "
           "tenants: {vision: ['User:alice@example.com']}, platform_subjects: ['Group:platform@example.com']}")

NAMESPACES = [
    ns("vision-train", "vision"), ns("vision-serve", "vision"), ns("nlp", "nlp"), ns("shared"),
    ns("kube-system", "sneaky"),  # excluded namespaces are never tenants
]


def test_tenant_isolation(tmp_path: Path) -> None:
    objs = assets(
        *NAMESPACES,
        rb("ok", "vision-train", "Role", "trainer",
           "ServiceAccount:vision-train/trainer", "ServiceAccount:vision-serve/deployer",  # one tenant, two namespaces
           "Group:ml-vision@example.com", "User:alice@example.com", "Group:platform@example.com",
           "User:system:kube-scheduler", "Group:system:serviceaccounts:vision-serve"),
        rb("leak", "nlp", "Role", "trainer",
           "ServiceAccount:vision-train/trainer",  # another tenant's service account
           "User:system:serviceaccount:vision-train:trainer",  # the same, spelled as a user
           "Group:ml-vision@example.com",  # another tenant's group
           "User:bob@example.com",  # mapped to no tenant
           "ServiceAccount:shared/sync"),  # a non-tenant namespace's account
        rb("shared-ok", "shared", "Role", "reader", "ServiceAccount:nlp/x"),  # not a tenant namespace
        rb("system:x", "nlp", "Role", "r", "User:eve"),
    )
    found = {f.details["subject"]: f for f in scan(tmp_path, one_rule("rbac.tenant_isolation", TENANCY), objs)}
    assert sorted(found) == [
        "Group:ml-vision@example.com",
        "ServiceAccount:shared/sync",
        "ServiceAccount:vision-train/trainer",
        "User:bob@example.com",
        "User:system:serviceaccount:vision-train:trainer",
    ]
    leak = found["ServiceAccount:vision-train/trainer"]
    assert leak.details["binding"] == "leak" and leak.details["namespace"] == "nlp"
    assert leak.details["tenant"] == "nlp" and leak.details["subject_tenants"] == ["vision"]
    assert "belongs to tenant vision" in leak.message
    assert "mapped to no tenant" in found["User:bob@example.com"].message


def test_tenant_by_namespace_name_without_namespace_assets(tmp_path: Path) -> None:
    # A Kubernetes list without Namespace objects: tenants come from the namespace name pattern.
    objs = assets(rb("leak", "team-b", "Role", "r", "ServiceAccount:team-a/ci"),
                  rb("ok", "team-b", "Role", "r", "ServiceAccount:team-b/ci"))
    params = "{tenant_namespaces: ['team-*']}"
    found = scan(tmp_path, one_rule("rbac.tenant_isolation", params), objs)
    assert [(f.details["binding"], f.details["subject_tenants"]) for f in found] == [("leak", ["team-a"])]
    # A group named after tenant team-a, whose namespace is only known from an object read later.
    objs = assets(rb("leak", "team-b", "Role", "r", "Group:team-a-devs"), k8s("Role", "r", "team-a", rules=[]))
    params = "{tenant_namespaces: ['team-*'], tenant_subjects: ['Group:{tenant}-devs']}"
    found = scan(tmp_path, one_rule("rbac.tenant_isolation", params), objs)
    assert [(f.details["subject"], f.details["subject_tenants"]) for f in found] == [("Group:team-a-devs", ["team-a"])]


def test_no_tenant_cluster_binding(tmp_path: Path) -> None:
    objs = assets(
        *NAMESPACES,
        crb("vision-nodes", "node-reader", "ServiceAccount:vision-serve/deployer"),
        crb("nlp-group", "crd-viewer", "Group:ml-nlp@example.com", "Group:platform@example.com"),
        crb("nlp-all-sa", "crd-viewer", "Group:system:serviceaccounts:nlp"),
        crb("lister", "namespace-lister", "User:alice@example.com"),  # allowed role
        crb("ops", "edit", "Group:sre@example.com", "ServiceAccount:kube-system/x"),  # no tenant subject
    )
    params = TENANCY[:-1] + ", allowed_roles: [namespace-lister]}"
    found = {f.details["binding"]: f for f in scan(tmp_path, one_rule("rbac.no_tenant_cluster_binding", params),
                                                     objs)}
    assert sorted(found) == ["nlp-all-sa", "nlp-group", "vision-nodes"]
    assert found["vision-nodes"].details["subject"] == "ServiceAccount:vision-serve/deployer"
    assert found["vision-nodes"].details["tenant"] == "vision"
    assert found["nlp-group"].details["subject"] == "Group:ml-nlp@example.com"
    assert found["nlp-group"].details["namespace"] is None


def test_tenant_role_dangerous_rules(tmp_path: Path) -> None:
    safe = [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "create"]}]
    objs = assets(
        *NAMESPACES,
        k8s("Role", "trainer", "nlp", rules=[
            *safe, {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["pull"]}]),
        k8s("Role", "operator", "nlp", rules=[
            *safe,
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["*/exec"], "verbs": ["create"]},  # pods/exec via a wildcard
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate", "bind"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]},
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
        ]),
        k8s("Role", "mixed", "vision-train",
            rules=[{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]}]),
        k8s("Role", "other-group-secrets", "nlp", rules=[  # a CRD named secrets in another group
            {"apiGroups": ["vault.example.com"], "resources": ["secrets"], "verbs": ["get"]}]),
        k8s("Role", "harmless", "nlp", rules=[
            {"apiGroups": [""], "resources": ["pods/*"], "verbs": ["create"]},  # no wildcard in Kubernetes
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["escalate", "bind"]},  # means nothing there
        ]),
        k8s("Role", "admin", "shared", rules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),  # no tenant
    )
    found = {f.details["role"]: f for f in scan(tmp_path, one_rule("rbac.tenant_role_dangerous_rules", TENANCY),
                                                  objs)}
    assert sorted(found) == ["mixed", "operator"]
    op = found["operator"]
    assert [o["index"] for o in op.details["offending_rules"]] == [1, 2, 3, 4, 5]
    assert op.details["desired_rules"] == safe
    for reason in ("every verb (*)", "every resource (*)", "verb escalate", "verb bind", "pods/exec (create)",
                   "secrets (list)", "serviceaccounts/token (create)"):
        assert reason in op.message
    assert found["mixed"].details["namespace"] == "vision-train" and "impersonate" in found["mixed"].message
    strict = TENANCY[:-1] + ", sensitive_resources: [{resource: secrets, verbs: [get]}]}"
    found = {f.details["role"] for f in scan(tmp_path, one_rule("rbac.tenant_role_dangerous_rules", strict), objs)}
    assert "trainer" in found  # named secrets count once allow_named is off


# -- desired state ----------------------------------------------------------------------------------------------------
DESIRED = """
- id: r
  check: rbac.tenant_desired_state
  severity: medium
  params:
    tenant_labels: ["*/tenant"]
    roles:
      trainer:
        - {apiGroups: [batch], resources: [jobs], verbs: [get, list, create]}
    role_bindings:
      trainer: {role: trainer, subjects: ["ServiceAccount:{namespace}/trainer", "Group:ml-{tenant}@example.com"]}
      tenant-view: {role: view, role_kind: ClusterRole, subjects: ["Group:ml-{tenant}@example.com"]}
    unmanaged: ["default-*"]
"""


def test_tenant_desired_state(tmp_path: Path) -> None:
    trainer_rules = [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list"]}]
    objs = assets(
        ns("nlp", "nlp"), ns("vision", "vision"), ns("shared"),
        # nlp is exactly as declared (rule verbs in another order)
        k8s("Role", "trainer", "nlp", rules=trainer_rules),
        rb("trainer", "nlp", "Role", "trainer", "Group:ml-nlp@example.com", "ServiceAccount:nlp/trainer"),
        rb("tenant-view", "nlp", "ClusterRole", "view", "Group:ml-nlp@example.com"),
        rb("default-editor", "nlp", "ClusterRole", "edit", "ServiceAccount:nlp/default-editor"),  # unmanaged
        # vision drifted
        k8s("Role", "trainer", "vision",
            rules=[*trainer_rules, {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]),
        k8s("Role", "debug", "vision", rules=[]),
        rb("trainer", "vision", "Role", "trainer", "ServiceAccount:vision/trainer", "User:alice@example.com"),
        rb("extra", "vision", "ClusterRole", "edit", "User:bob@example.com"),
        # not a tenant
        rb("anything", "shared", "ClusterRole", "edit", "User:bob@example.com"),
    )
    by_kind = {(f.details["change"], f.details.get("kind"), f.details.get("binding") or f.details.get("role")): f
               for f in scan(tmp_path, DESIRED, objs)}
    assert sorted(by_kind) == [
        ("changed", "Role", "trainer"),
        ("changed", "RoleBinding", "trainer"),
        ("extra", "Role", "debug"),
        ("extra", "RoleBinding", "extra"),
        ("missing", "RoleBinding", "tenant-view"),
    ]
    role = by_kind[("changed", "Role", "trainer")]
    assert role.details["desired_rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"],
                                              "verbs": ["get", "list", "create"]}]
    assert role.asset.endswith("/namespaces/vision/rbac.authorization.k8s.io/roles/trainer")
    rbd = by_kind[("changed", "RoleBinding", "trainer")]
    assert rbd.details["extra_subjects"] == ["User:alice@example.com"]
    assert rbd.details["missing_subjects"] == ["Group:ml-vision@example.com"]
    assert {"kind": "Group", "name": "ml-vision@example.com", "apiGroup": RBAC} in rbd.details["desired"]["subjects"]
    missing = by_kind[("missing", "RoleBinding", "tenant-view")]
    assert missing.asset.endswith("/k8s/namespaces/vision") and missing.details["namespace"] == "vision"
    assert missing.details["desired"]["roleRef"] == {"apiGroup": RBAC, "kind": "ClusterRole", "name": "view"}
    assert by_kind[("extra", "RoleBinding", "extra")].details["subject"] is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{role_bindings: {b: {role: r, subjects: ['alice']}}}", "expected User:NAME, Group:NAME"),
        ("{role_bindings: {b: {role: r, subjects: ['ServiceAccount:ci']}}}", "ServiceAccount:NAMESPACE/NAME"),
        ("{role_bindings: {b: {role: r, role_kind: Cluster, subjects: ['User:a']}}}", "'Role' or 'ClusterRole'"),
        ("{roles: {r: [{resources: [pods]}]}}", "'verbs' must be a non-empty list"),
        ("{roles: {r: [{verbs: [get]}]}}", "give 'resources'"),
        ("{tenant_label: [x]}", "Extra inputs are not permitted"),
    ],
)
def test_tenant_desired_state_params_errors(tmp_path: Path, params: str, message: str) -> None:
    with pytest.raises(RuleError, match="rule r") as exc:
        scan(tmp_path, one_rule("rbac.tenant_desired_state", params), [])
    assert message in str(exc.value)


# -- hygiene ----------------------------------------------------------------------------------------------------------
def test_tenant_namespace_hygiene(tmp_path: Path) -> None:
    deny_all = {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    objs = assets(
        ns("good", "good"), ns("split", "split"), ns("bare", "bare"), ns("leaky", "leaky"), ns("shared"),
        k8s("ResourceQuota", "q", "good", spec={"hard": {"requests.nvidia.com/gpu": "8"}}),
        k8s("NetworkPolicy", "deny", "good", spec=deny_all),
        k8s("ResourceQuota", "q", "split"),
        k8s("NetworkPolicy", "deny-in", "split", spec={"podSelector": {}}),  # policyTypes defaults to Ingress
        k8s("NetworkPolicy", "deny-out", "split", spec={"podSelector": {}, "policyTypes": ["Egress"]}),
        k8s("ResourceQuota", "q", "leaky"),
        # not default deny: an egress rule allowing everything, and a policy for some pods only
        k8s("NetworkPolicy", "a", "leaky", spec={"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                                                  "egress": [{}]}),
        k8s("NetworkPolicy", "b", "leaky", spec={"podSelector": {"matchLabels": {"app": "x"}},
                                                  "policyTypes": ["Egress"]}),
    ) + assets(ns("good", "good"), cluster=OTHER_CLUSTER)  # same name, other cluster: nothing there
    rules = one_rule("rbac.tenant_namespace_hygiene", "{tenant_labels: ['*/tenant']}")
    found = sorted((f.asset.split("/clusters/")[1].split("/")[0], f.details["namespace"], f.details["missing"])
                   for f in scan(tmp_path, rules, objs))
    assert found == [
        ("inference", "good", "ResourceQuota"),
        ("inference", "good", "default-deny NetworkPolicy (Egress)"),
        ("inference", "good", "default-deny NetworkPolicy (Ingress)"),
        ("training", "bare", "ResourceQuota"),
        ("training", "bare", "default-deny NetworkPolicy (Egress)"),
        ("training", "bare", "default-deny NetworkPolicy (Ingress)"),
        ("training", "leaky", "default-deny NetworkPolicy (Egress)"),
    ]
    ingress_only = one_rule("rbac.tenant_namespace_hygiene",
                            "{tenant_labels: ['*/tenant'], require_quota: false, default_deny: [Ingress]}")
    assert {f.details["namespace"] for f in scan(tmp_path, ingress_only, objs)} == {"good", "bare"}
    gpu = one_rule("rbac.tenant_namespace_hygiene",
                   "{tenant_labels: ['*/tenant'], default_deny: [], quota_resources: ['requests.*/gpu']}")
    assert sorted((f.details["namespace"], f.details["missing"]) for f in scan(tmp_path, gpu, objs)) == [
        ("bare", "ResourceQuota"), ("good", "ResourceQuota"),  # the one in the other cluster
        ("leaky", "ResourceQuota on requests.*/gpu"), ("split", "ResourceQuota on requests.*/gpu"),
    ]
    with pytest.raises(RuleError, match="Ingress"):
        scan(tmp_path, one_rule("rbac.tenant_namespace_hygiene", "{default_deny: [ingress]}"), [])


# -- the shipped pack on the example organization ---------------------------------------------------------------------
def test_example_org_triggers_every_shipped_rbac_rule(repo: Path) -> None:
    engine = Engine(load_file(shipped_rules_dir() / "rbac.yaml"))
    objs = list(iter_file_assets(repo / "examples" / "org"))
    result = engine.evaluate(objs)
    assert not result.errors
    fired = {f.rule for f in result.findings}
    assert fired == {r.id for r in engine.rules}
    # ...next to compliant tenants: the vision tenant's own bindings are not findings.
    flagged = {f.asset for f in result.findings}
    assert any(a.name.endswith("/namespaces/tenant-vision/rbac.authorization.k8s.io/rolebindings/trainer")
               for a in objs)
    assert not any(a.endswith("/namespaces/tenant-vision/rbac.authorization.k8s.io/rolebindings/trainer")
                   for a in flagged)


# -- documentation ----------------------------------------------------------------------------------------------------
def docstring_examples() -> dict[str, str]:
    out = {}
    for name, spec in all_checks().items():
        if name.startswith("rbac."):
            assert "```yaml" in spec.doc, f"{name} has no YAML example"
            out[name] = spec.doc.split("```yaml", 1)[1].split("```", 1)[0]
    return out


@pytest.mark.parametrize("name", sorted(docstring_examples()))
def test_docstring_example_loads(tmp_path: Path, name: str) -> None:
    f = tmp_path / "example.yaml"
    f.write_text(textwrap.dedent(docstring_examples()[name]))
    assert [r.rule.check for r in load_file(f)] == [name]


@pytest.mark.parametrize("pack", ["rbac.yaml", "cloud_armor.yaml"])
def test_shipped_pack_rules_are_documented_and_dry_run_only_with_a_remediation(pack: str) -> None:
    rules = load_file(shipped_rules_dir() / pack)
    assert rules
    for r in rules:
        assert len(r.rule.description) > 30 and len(r.rule.rationale) > 100, r.id
        assert r.rule.mode.value == ("dryrun" if r.rule.remediation else "audit"), r.id


@pytest.mark.parametrize(
    ("check", "params", "message"),
    [
        ("rbac.no_powerful_role_binding", "{roles: cluster-admin}", "params.roles: Input should be a valid list"),
        ("rbac.no_public_subjects", "{default_grants: [a]}", "params.default_grants: Input should be a valid dict"),
        ("rbac.tenant_isolation", "{tenant_label: tenant}", "params.tenant_label: Extra inputs are not permitted"),
        ("rbac.no_tenant_cluster_binding", "{allowed_roles: 3}", "params.allowed_roles: Input should be a valid list"),
        ("rbac.tenant_role_dangerous_rules", "{sensitive_resources: [{verbs: [get]}]}",
         "params.sensitive_resources[0].resource: Field required"),
        ("rbac.tenant_namespace_hygiene", "{require_quota: maybe}", "params.require_quota: Input should be a valid"),
    ],
)
def test_params_errors_name_the_rule_line_and_field(tmp_path: Path, check: str, params: str, message: str) -> None:
    with pytest.raises(RuleError) as exc:
        scan(tmp_path, one_rule(check, params), [])
    assert "rules.yaml:1: rule r:" in str(exc.value) and message in str(exc.value)


def test_tenant_checks_without_the_namespaces_of_a_cluster_say_they_could_not_judge(tmp_path: Path) -> None:
    """RBAC objects of a cluster whose Namespaces are not in the snapshot: tenants are read from Namespace labels,
    so the tenant checks cannot tell whose namespace a binding is in. They report the rule as not evaluated for
    that cluster, not as clean; a cluster whose Namespaces were read is judged as usual."""
    rules = (one_rule("rbac.tenant_isolation", TENANCY).replace("id: r,", "id: iso,")
             + one_rule("rbac.tenant_role_dangerous_rules", TENANCY).replace("id: r,", "id: roles,"))
    f = tmp_path / "rules.yaml"
    f.write_text(rules)
    blind = assets(
        rb("ext", "nlp", "Role", "trainer", "User:stranger@example.com"),
        k8s("Role", "operator", "nlp", rules=[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]),
        k8s("Role", "plain", "nlp", rules=[{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]}]),
        cluster=OTHER_CLUSTER,
    )
    seen = assets(*NAMESPACES, rb("ext", "nlp", "Role", "trainer", "User:stranger@example.com"))
    for shortcuts in (True, False):
        result = Engine(load_file(f), shortcuts=shortcuts).evaluate(blind + seen)
        assert [(f.rule, f.asset.split("/clusters/")[1].split("/")[0]) for f in result.findings] == [
            ("iso", "training")]
        assert sorted(n.rule_id for n in result.not_evaluated) == ["iso", "roles"]
        assert all("no Namespace of cluster projects/p/locations/us-central1/clusters/inference" in n.reason
                   for n in result.not_evaluated)


def test_cluster_roles_of_equal_rules_share_their_reach() -> None:
    """The reach of equal rules is judged once (clusters repeat the default roles); rules that are not plain JSON
    (a set, given by a caller) are judged alone."""
    from auditor.evaluate.checks.rbac import ClusterRoles
    from auditor.evaluate.rbac_rules import reach

    def role(cluster: str, name: str, rules: Any) -> Asset:
        return Asset(f"//container.googleapis.com/projects/p/locations/l/clusters/{cluster}/k8s/clusterroles/{name}",
                     "rbac.authorization.k8s.io/ClusterRole", {"metadata": {"name": name}, "rules": rules})

    admin = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
    secrets = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    odd = [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": {"create"}}]
    roles = ClusterRoles([role("a", "x", admin), role("b", "x", admin), role("a", "y", secrets), role("b", "y", odd),
                          role("a", "z", "not a list")])
    prefix = "//container.googleapis.com/projects/p/locations/l/clusters/"
    assert roles.reach(prefix + "a", "x") == roles.reach(prefix + "b", "x") == reach(admin)
    assert roles.reach(prefix + "a", "y") == reach(secrets)
    assert roles.reach(prefix + "b", "y") == reach(odd)
    assert roles.reach(prefix + "a", "z") == reach(())
