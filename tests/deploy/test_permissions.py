"""Deploy: `auditor permissions` and the IAM permission declarations, kept in step with the code that calls Google.

The source of every module under auditor/collect/ and remediations/ is read (a new collector or applier is picked up
without a change here) for calls of Google Cloud client methods; each call must be covered by a permission that
module declares, and each permission a module declares must be needed by one of its calls.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from auditor.cli import cli
from auditor.cli.permissions import load_declarations
from auditor.permissions import Declaration

REPO = Path(__file__).resolve().parents[2]
SCANNED = (REPO / "auditor" / "collect", REPO / "auditor" / "sinks", REPO / "remediations")

_IAM_GET = (
    "resourcemanager.organizations.getIamPolicy",
    "resourcemanager.folders.getIamPolicy",
    "resourcemanager.projects.getIamPolicy",
    "iam.serviceAccounts.getIamPolicy",
    "storage.buckets.getIamPolicy",
    "pubsub.topics.getIamPolicy",
    "pubsub.subscriptions.getIamPolicy",
    "cloudkms.keyRings.getIamPolicy",
    "cloudkms.cryptoKeys.getIamPolicy",
    "secretmanager.secrets.getIamPolicy",
    "artifactregistry.repositories.getIamPolicy",
    "run.services.getIamPolicy",
    "ml.models.getIamPolicy",
)
_IAM_SET = tuple(p.replace("getIamPolicy", "setIamPolicy") for p in _IAM_GET)
# A BigQuery dataset's policy is its access list: datasets.get, and datasets.patch (bigquery.datasets.update).
_DATASET_GET, _DATASET_UPDATE = ("bigquery.datasets.get",), ("bigquery.datasets.update",)
_COMPUTE_OP = ("compute.globalOperations.get",)  # waiting on the ExtendedOperation a Compute write returns

# Google client method -> what a call needs: a list of requirements, each met by any one of its permissions.
# `get`, `list` and `patch` are too common a name: they count only with the keyword a security-policy call has.
CALLS: dict[str, list[tuple[str, ...]]] = {
    "list_assets": [("cloudasset.assets.listResource", "cloudasset.assets.listIamPolicy")],
    "export_assets": [("cloudasset.assets.exportResource", "cloudasset.assets.exportIamPolicy")],
    "get_iam_policy": [_IAM_GET],
    "set_iam_policy": [_IAM_SET],
    "download_to_filename": [("storage.objects.get",)],
    "download_as_bytes": [("storage.objects.get",)],
    "download_as_text": [("storage.objects.get",)],
    "list_blobs": [("storage.objects.list",)],
    "add_rule": [("compute.securityPolicies.update",), _COMPUTE_OP],
    "patch_rule": [("compute.securityPolicies.update",), _COMPUTE_OP],
    "remove_rule": [("compute.securityPolicies.update",), _COMPUTE_OP],
    "get_rule": [("compute.securityPolicies.get",)],
    "get_cluster": [("container.clusters.get",)],
    "update_cluster": [("container.clusters.update",)],  # Kubernetes Engine clusters.update (the GKE family)
    "get_cluster_operation": [("container.operations.get",)],
    "get_feed": [("cloudasset.feeds.get",)],
    "create_feed": [("cloudasset.feeds.create",)],
    "update_feed": [("cloudasset.feeds.update",)],
    "get_dataset": [_DATASET_GET],  # BigQuery datasets.get and datasets.patch, the way the google-cloud-bigquery
    "update_dataset": [_DATASET_UPDATE],  # client names them
    "pull": [("pubsub.subscriptions.consume",)],  # the feed's pull receiver (Pub/Sub subscriber client)
    "acknowledge": [("pubsub.subscriptions.consume",)],
    "modify_ack_deadline": [("pubsub.subscriptions.consume",)],  # a nack: the ack deadline set to 0
    "publish": [("pubsub.topics.publish",)],  # drift notifications to Pub/Sub (auditor/sinks/notify.py)
    # Security Command Center (auditor/sinks/scc.py): CreateFinding and UpdateFinding need findings.update.
    "create_finding": [("securitycenter.findings.update",)],
    "update_finding": [("securitycenter.findings.update",)],
    "set_finding_state": [("securitycenter.findings.setState",)],
}
KEYWORDED: dict[tuple[str, str], list[tuple[str, ...]]] = {
    ("get", "security_policy"): [("compute.securityPolicies.get",)],
    ("list", "project"): [("compute.securityPolicies.list",)],
    ("patch", "security_policy_resource"): [("compute.securityPolicies.update",), _COMPUTE_OP],
}
# REST paths called directly (regular expressions over the literal text of a string or f-string) -> the method.
REST_PATHS: dict[str, str] = {
    r"/v1/.*/assets$": "list_assets",  # GET https://cloudasset.googleapis.com/v1/{parent}/assets
    r":exportAssets$": "export_assets",  # POST .../v1/{parent}:exportAssets
    r":getIamPolicy$": "get_iam_policy",  # GET or POST https://SERVICE/vN/{resource}:getIamPolicy
    r":setIamPolicy$": "set_iam_policy",  # POST https://SERVICE/vN/{resource}:setIamPolicy
}
# Kubernetes API reads of a remote GKE cluster, when a module authorizes them with Google IAM instead of RBAC:
# required only of a module that declares `container.*` permissions. Reaching a GKE cluster's API with a Google
# identity takes container.clusters.get besides the permission of the read itself.
_GKE_ACCESS = ("container.clusters.get",)
GKE_CALLS: dict[str, str] = {
    "list_namespace": "container.namespaces.list",
    "list_role_for_all_namespaces": "container.roles.list",
    "list_namespaced_role": "container.roles.list",
    "list_role_binding_for_all_namespaces": "container.roleBindings.list",
    "list_namespaced_role_binding": "container.roleBindings.list",
    "list_cluster_role": "container.clusterRoles.list",
    "list_cluster_role_binding": "container.clusterRoleBindings.list",
    "list_resource_quota_for_all_namespaces": "container.resourceQuotas.list",
    "list_network_policy_for_all_namespaces": "container.networkPolicies.list",
}
# Declared but not called; each entry says why it stays, and the test below fails once it is no longer needed here.
KNOWN_UNUSED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Call:
    module: str
    line: int
    method: str
    needs: tuple[tuple[str, ...], ...]


def modules() -> Iterator[tuple[str, Path]]:
    for root in SCANNED:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            name = ".".join(rel.parts).removesuffix(".__init__")
            yield name, path


def _argument_names(call: ast.Call) -> set[str]:
    """Keyword names of a call, including those of a request built inline (`request=XRequest(a=...)` or a dict)."""
    names = {k.arg for k in call.keywords if k.arg}
    for k in call.keywords:
        if k.arg == "request" and isinstance(k.value, ast.Call):
            names |= {kw.arg for kw in k.value.keywords if kw.arg}
        elif k.arg == "request" and isinstance(k.value, ast.Dict):
            names |= {key.value for key in k.value.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}
    return names


def _text(node: ast.AST) -> str | None:
    """The literal text of a string or f-string (placeholders dropped), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return None


def google_calls(path: Path, module: str) -> list[Call]:
    out: list[Call] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        line = getattr(node, "lineno", 0)
        text = _text(node)
        if text is not None:
            # The Kubernetes client's list methods are often named in a table and called through getattr.
            if text in GKE_CALLS:
                out.append(Call(module, line, text, ((GKE_CALLS[text],), _GKE_ACCESS)))
            # A REST call made without the generated client (e.g. ListAssets decoded straight into typed pages).
            for pattern, method in REST_PATHS.items():
                if re.search(pattern, text):
                    out.append(Call(module, line, method, tuple(CALLS[method])))
        elif isinstance(node, ast.Attribute) and node.attr in CALLS:
            # Called, or taken as a bound method to call later: either way the code uses it.
            out.append(Call(module, line, node.attr, tuple(CALLS[node.attr])))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, names = node.func.attr, _argument_names(node)
            needs = next((v for (m, kw), v in KEYWORDED.items() if m == method and kw in names), None)
            if needs is None and method in GKE_CALLS:
                needs = [(GKE_CALLS[method],), _GKE_ACCESS]
            if needs is not None:
                out.append(Call(module, line, method, tuple(needs)))
    return out


def declared_by_module() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for d in load_declarations():
        out.setdefault(d.module, set()).update(d.permissions)
    return out


def test_the_scan_sees_the_calls_it_is_meant_to_see() -> None:
    # Guards the scanner itself: the appliers that exist make these calls.
    found = {c.method for name, path in modules() for c in google_calls(path, name)}
    assert {"get_iam_policy", "set_iam_policy", "add_rule", "remove_rule"} <= found


def test_every_google_call_is_covered_by_a_permission_its_module_declares() -> None:
    declared = declared_by_module()
    problems = []
    for name, path in modules():
        mine = declared.get(name, set())
        gke_by_iam = any(p.startswith("container.") for p in mine)
        for call in google_calls(path, name):
            if call.method in GKE_CALLS and not gke_by_iam:
                continue  # authorized by Kubernetes RBAC (deploy/kubernetes), not by Google IAM
            for alternatives in call.needs:
                if not set(alternatives) & mine:
                    problems.append(
                        f"{path.relative_to(REPO)}:{call.line}: {call.method}() needs one of {list(alternatives)}, "
                        f"but {name} declares {sorted(mine) or 'nothing'}"
                    )
    assert not problems, "\n".join(problems)


def test_every_declared_permission_is_needed_by_a_call_of_its_module() -> None:
    calls_by_module: dict[str, list[Call]] = {}
    for name, path in modules():
        calls_by_module.setdefault(name, []).extend(google_calls(path, name))
    problems = []
    for d in load_declarations():
        assert d.module, f"{d.component}: declared from an unknown module"
        used = {p for c in calls_by_module.get(d.module, []) for alts in c.needs for p in alts}
        for perm in d.permissions:
            if d.operator:
                continue  # a person running the planned-only steps needs these; the module calls none of them
            if perm not in used and (d.module, perm) not in KNOWN_UNUSED:
                problems.append(f"{d.module} ({d.component}) declares {perm}, which none of its calls needs")
    assert not problems, "\n".join(problems)


def test_known_unused_entries_are_still_current() -> None:
    declared = declared_by_module()
    for (module, perm), why in KNOWN_UNUSED.items():
        assert perm in declared.get(module, set()), f"{module} no longer declares {perm}: drop it from KNOWN_UNUSED"
        path = REPO / Path(*module.split(".")).with_suffix(".py")
        used = {p for c in google_calls(path, module) for alts in c.needs for p in alts}
        assert perm not in used, f"{module} now calls for {perm}: drop it from KNOWN_UNUSED ({why})"


# -- the command ---------------------------------------------------------------------------------------------------
_WRITE_VERB = re.compile(r"^(set|update|delete|create|patch|remove|add)", re.IGNORECASE)


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["permissions", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _expected(decls: list[Declaration], remediation: bool) -> list[str]:
    """The role without --config: the collectors (and appliers); the outbound sinks only for a configuration."""
    return sorted({p for d in decls if (remediation or not d.remediation) and not d.operator
                   and not d.component.startswith("sinks.") for p in d.permissions})


def test_gcloud_role_file_holds_the_read_permissions_only() -> None:
    out = _run()
    doc = yaml.safe_load(out)
    assert set(doc) == {"title", "description", "stage", "includedPermissions"}
    assert doc["stage"] == "GA" and len(doc["title"]) <= 100 and len(doc["description"]) <= 256
    perms = doc["includedPermissions"]
    assert perms == _expected(load_declarations(), remediation=False) and perms
    # Least privilege: the audit role can read and never write.
    assert not [p for p in perms if _WRITE_VERB.match(p.rsplit(".", 1)[1])]
    assert "gcloud iam roles create driftAuditor --organization=ORG_ID" in out


def test_remediation_role_adds_the_write_permissions() -> None:
    read = yaml.safe_load(_run())["includedPermissions"]
    full = yaml.safe_load(_run("--remediation"))["includedPermissions"]
    assert full == _expected(load_declarations(), remediation=True)
    assert set(read) < set(full)
    assert {"resourcemanager.projects.setIamPolicy", "compute.securityPolicies.update"} <= set(full) - set(read)


def test_terraform_and_json_list_the_same_permissions() -> None:
    tf = _run("--remediation", "--format", "terraform", "--role-id", "auditorFix")
    assert re.search(r'^resource "google_organization_iam_custom_role" "auditor_fix" \{$', tf, re.M)
    assert 'role_id     = "auditorFix"' in tf and "org_id      = var.org_id" in tf
    listed = re.findall(r'^    "([^"]+)", #', tf, re.M)
    doc = json.loads(_run("--remediation", "--format", "json"))
    assert listed == doc["includedPermissions"] == _expected(load_declarations(), remediation=True)
    assert doc["role_id"] == "driftAuditorRemediation"
    modules = {c["module"] for c in doc["components"]}
    assert modules >= {"remediations.families.iam.transports", "remediations.families.cloud_armor"}
    assert tf.count("{") == tf.count("}")


def test_the_planned_only_steps_permissions_are_listed_apart_from_the_role() -> None:
    """Most GKE fixes are planned only: `--remediation` names what a person running them needs and the role lacks,
    outside the role (a comment in the role file, `operatorPermissions` in JSON); the role never holds them."""
    operator = {p for d in load_declarations() if d.operator for p in d.permissions}
    assert {"container.clusters.update", "iam.serviceAccounts.actAs"} <= operator
    doc = json.loads(_run("--remediation", "--format", "json"))
    assert doc["operatorPermissions"] == sorted(operator - set(doc["includedPermissions"]))
    assert "iam.serviceAccounts.actAs" in doc["operatorPermissions"]
    assert "iam.serviceAccounts.actAs" not in doc["includedPermissions"]
    gcloud = _run("--remediation")
    role, _, listed = gcloud.partition("# Not in this role")
    assert "iam.serviceAccounts.actAs" not in yaml.safe_load(role)["includedPermissions"]
    assert "iam.serviceAccounts.actAs  (remediations.gke.steps)" in listed
    assert "Not in this role" not in _run() and json.loads(_run("--format", "json"))["operatorPermissions"] == []


def test_a_bad_role_id_is_refused_in_one_line() -> None:
    result = CliRunner().invoke(cli, ["permissions", "--role-id", "no spaces"])
    assert result.exit_code == 2
    assert "--role-id 'no spaces'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("fmt", ["gcloud", "terraform"])
def test_every_format_names_each_permission_once(fmt: str) -> None:
    out = _run("--remediation", "--format", fmt).split("Not in this role")[0]
    for perm in _expected(load_declarations(), remediation=True):
        assert len(re.findall(rf"(?<![\w.]){re.escape(perm)}(?![\w.])", out)) == 1, perm


# -- narrowed to one configuration ---------------------------------------------------------------------------------
def _perms_of(module: str, *, export: bool) -> set[str]:
    return {
        p
        for d in load_declarations()
        if d.module == module and not d.remediation and (export or "export" not in d.component.rsplit(".", 1)[-1])
        for p in d.permissions
    }


def _config(tmp_path: Path, sources: list[str], remediation: bool = False, **extra: Any) -> str:
    path = tmp_path / "config.yaml"
    doc = {"sources": sources, "remediation": {"enabled": remediation}, **extra}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return str(path)


def test_the_deployed_configuration_needs_only_the_cai_listing() -> None:
    # deploy/kubernetes reads the organization through CAI and the cluster through its own RBAC (in-cluster).
    out = _run("--config", str(REPO / "deploy" / "kubernetes" / "app" / "config.yaml"))
    perms = set(yaml.safe_load(out)["includedPermissions"])
    assert perms == _perms_of("auditor.collect.asset_inventory", export=False) and perms
    assert perms < set(yaml.safe_load(_run())["includedPermissions"])


def test_export_route_and_remote_clusters_add_their_permissions(tmp_path: Path) -> None:
    if "auditor.collect.kubernetes_api" not in {d.module for d in load_declarations()}:
        pytest.skip("the Kubernetes API collector is not in this tree")
    cfg = _config(tmp_path, ["cai://folders/123?export=gs://bucket/cai", "k8s://gke_proj_europe-west1_prod"])
    perms = set(yaml.safe_load(_run("--config", cfg))["includedPermissions"])
    expected = _perms_of("auditor.collect.asset_inventory", export=True) | _perms_of(
        "auditor.collect.kubernetes_api", export=False
    )
    assert perms == expected
    assert "container.clusters.get" in perms


def test_enabled_remediation_in_the_configuration_adds_the_writes(tmp_path: Path) -> None:
    cfg = _config(tmp_path, ["cai://organizations/1", "k8s://in-cluster"], remediation=True)
    doc = yaml.safe_load(_run("--config", cfg))
    writes = {p for d in load_declarations() if d.remediation and not d.operator for p in d.permissions}
    assert writes <= set(doc["includedPermissions"]) and "audit and remediation" in doc["title"]


def test_a_configuration_that_calls_no_google_api_gets_no_role(tmp_path: Path) -> None:
    cfg = _config(tmp_path, [str(tmp_path / "export.ndjson"), "k8s://in-cluster"])
    result = CliRunner().invoke(cli, ["permissions", "--config", cfg])
    assert result.exit_code == 2 and "no role is needed" in result.output


def test_the_sinks_a_configuration_enables_add_what_they_write_with(tmp_path: Path) -> None:
    """Without these the daemon's Pub/Sub notifications and SCC writes answer 403 (AuditorNotificationsDelayed):
    the role of a configuration that enables them must hold them, and no other role does."""
    sources = ["cai://organizations/1"]
    base = set(yaml.safe_load(_run("--config", _config(tmp_path, sources)))["includedPermissions"])
    pubsub = {"pubsub": [{"name": "bus", "topic": "projects/p/topics/drift"}],
              "webhooks": [{"name": "soc", "url": "https://soc.example/hook"}]}
    with_pubsub = _config(tmp_path, sources, notifications=pubsub)
    assert set(yaml.safe_load(_run("--config", with_pubsub))["includedPermissions"]) - base == {
        "pubsub.topics.publish"}
    webhooks_only = _config(tmp_path, sources, notifications={"webhooks": pubsub["webhooks"]})
    assert set(yaml.safe_load(_run("--config", webhooks_only))["includedPermissions"]) == base
    with_scc = _config(tmp_path, sources, scc={"enabled": True, "source": "organizations/1/sources/2"})
    doc = json.loads(_run("--config", with_scc, "--format", "json"))
    assert set(doc["includedPermissions"]) - base == {"securitycenter.findings.update",
                                                      "securitycenter.findings.setState"}
    assert {c["component"] for c in doc["components"]} >= {"sinks.scc"}
    # The role without a configuration is the collectors' read-only one.
    default = set(yaml.safe_load(_run())["includedPermissions"])
    assert not {"pubsub.topics.publish", "securitycenter.findings.update"} & default
