"""The Kubernetes source: the real kubernetes client against kmock (tests/fakes/kube.py), compared with files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from auditor.cli import cli
from auditor.collect import SourceOptions, open_source
from auditor.collect.files import iter_file_assets
from auditor.collect.kubernetes_api import KINDS, KubernetesApiSource, cluster_from_context, kinds_for
from auditor.evaluate.engine import Engine
from auditor.evaluate.rulebook import load_rules
from auditor.vocabulary import ROLE_BINDING
from tests.conftest import EXAMPLES
from tests.fakes.kube import KubeFault, KubeServer

CLUSTER = "projects/ml-platform-prod/locations/us-central1/clusters/inference"

# A small multi-tenant setup: two tenant namespaces, one fenced (quota, default-deny) and one not, a binding that
# crosses tenants and one that hands a human cluster-admin.
TENANTS = """
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: vision, labels: {tenant: vision}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: speech, labels: {tenant: speech}}}
- apiVersion: v1
  kind: ResourceQuota
  metadata: {name: quota, namespace: vision}
  spec: {hard: {requests.cpu: "64", requests.memory: 256Gi}}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: default-deny, namespace: vision}
  spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
- apiVersion: rbac.authorization.k8s.io/v1
  kind: Role
  metadata: {name: trainer, namespace: vision}
  rules: [{apiGroups: [batch], resources: [jobs], verbs: [create, get, list, watch, delete]}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: RoleBinding
  metadata: {name: trainers, namespace: vision}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: trainer}
  subjects: [{kind: Group, apiGroup: rbac.authorization.k8s.io, name: vision@example.com}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: RoleBinding
  metadata: {name: borrowed, namespace: vision}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
  subjects: [{kind: Group, apiGroup: rbac.authorization.k8s.io, name: speech@example.com}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: alice-admin}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
  subjects: [{kind: User, apiGroup: rbac.authorization.k8s.io, name: alice@example.com}]
"""


@pytest.fixture
def cluster_files(tmp_path: Path, public_data: Path) -> list[Path]:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(TENANTS, encoding="utf-8")
    files = [public_data / "k8s-bootstrap-rbac", tenants]
    example = EXAMPLES / "k8s"
    if example.is_dir() and any(example.glob("*.yaml")):
        files.append(example)
    return files


@pytest.fixture
def cluster(kube_api: KubeServer, kubeconfig: str, cluster_files: list[Path]) -> str:
    kube_api.load(*cluster_files)
    return kubeconfig


def scan_json(*args: str) -> tuple[int, dict[str, Any], str]:
    res = CliRunner().invoke(cli, ["scan", *args, "--format", "json", "--fail-on", "never"])
    out = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    return res.exit_code, out, res.stderr


def fast(**extra: object) -> SourceOptions:
    sleeps: list[float] = []
    return SourceOptions(cluster=CLUSTER, extra={"retry_sleep": sleeps.append, "sleeps": sleeps, **extra})


def file_objects(files: list[Path]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in files:
        for p in sorted(f.rglob("*.yaml")) if f.is_dir() else [f]:
            for doc in yaml.safe_load_all(p.read_text(encoding="utf-8")):
                if isinstance(doc, dict):
                    out.extend(doc.get("items") or [doc])
    return out


def test_live_scan_gives_the_same_findings_as_the_files(cluster: str, cluster_files: list[Path]) -> None:
    code, live, err = scan_json("--source", f"k8s://{cluster}?cluster={CLUSTER}")
    assert code == 0, err
    file_args = [x for f in cluster_files for x in ("--source", str(f))]
    _, offline, _ = scan_json(*file_args, "--cluster", CLUSTER)
    assert live["complete"] is True
    key = lambda r: sorted((f["id"], f["rule"], f["asset"], f["message"]) for f in r["findings"])  # noqa: E731
    assert key(live) == key(offline)
    assert any("alice-admin" in f["asset"] for f in live["findings"])  # the tenant setup is seen
    assert live["summary"] == offline["summary"]


def test_same_assets_as_the_files(cluster: str, cluster_files: list[Path]) -> None:
    live = {a.name: a for a in open_source(f"k8s://{cluster}", fast()).assets()}
    files = {a.name: a for f in cluster_files for a in iter_file_assets(f, CLUSTER)}
    assert live.keys() == files.keys()
    name = next(n for n in live if n.endswith("/clusterrolebindings/alice-admin"))
    assert live[name].resource["subjects"] == files[name].resource["subjects"]
    assert live[name].resource["kind"] == "ClusterRoleBinding"  # set on items, as kubectl prints them


def test_pages_and_only_the_kinds_the_rules_read(
    kube_api: KubeServer, cluster: str, cluster_files: list[Path]
) -> None:
    globs = Engine(load_rules(None)).asset_type_globs()
    src = open_source(f"k8s://{cluster}?page_size=7", SourceOptions(cluster=CLUSTER, asset_types=globs))
    assets = list(src.assets())
    assert src.status.complete and assets
    objects = file_objects(cluster_files)
    wanted = kinds_for(globs)
    assert 0 < len(wanted) <= len(KINDS)
    plurals = {"Namespace": "namespaces", "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings",
               "Role": "roles", "RoleBinding": "rolebindings", "NetworkPolicy": "networkpolicies",
               "ResourceQuota": "resourcequotas"}
    expected = {plurals[k.kind]: max(1, math.ceil(sum(o["kind"] == k.kind for o in objects) / 7)) for k in wanted}
    listed: dict[str, int] = {}
    for r in kube_api.list_requests():
        assert r["limit"] == 7
        listed[r["plural"]] = listed.get(r["plural"], 0) + 1
    assert listed == expected
    assert src.requests == sum(expected.values())  # type: ignore[attr-defined]


def test_429_is_retried_honouring_retry_after(kube_api: KubeServer, cluster: str) -> None:
    kube_api.inject(
        KubeFault(status=429, times=2, plural="clusterrolebindings", retry_after=3, reason="TooManyRequests")
    )
    kube_api.inject(KubeFault(status=503, times=1, plural="rolebindings", page=2))
    options = fast()
    src = open_source(f"k8s://{cluster}?page_size=5", options)
    names = [a.name for a in src.assets()]
    assert src.status.complete and len(names) == len(set(names))
    sleeps = options.extra["sleeps"]
    assert isinstance(sleeps, list) and len(sleeps) == 3 and sorted(sleeps)[-2:] >= [3, 3]


def test_a_kind_that_keeps_failing_makes_the_scan_partial(kube_api: KubeServer, cluster: str) -> None:
    kube_api.inject(KubeFault(status=500, times=None, plural="rolebindings", page=2, message="etcd timeout"))
    src = open_source(f"k8s://{cluster}?page_size=3", fast(retry_attempts=2))
    assets = list(src.assets())
    assert not src.status.complete and list(src.status.failed_types) == [ROLE_BINDING]
    assert "etcd timeout" in src.status.failed_types[ROLE_BINDING]
    assert any(a.asset_type.endswith("/ClusterRole") for a in assets)
    assert [r["status"] for r in kube_api.list_requests("rolebindings")] == [200, 500, 500]


def test_partial_in_json_and_require_complete(kube_api: KubeServer, cluster: str) -> None:
    kube_api.inject(KubeFault(status=403, times=None, plural="clusterrolebindings", reason="Forbidden",
                              message='clusterrolebindings.rbac.authorization.k8s.io is forbidden'))
    code, report, _ = scan_json("--source", f"k8s://{cluster}")
    assert code == 3 and report["complete"] is False  # partial: never a clean exit
    [failed] = report["sources"][0]["failed"]
    assert failed["asset_type"] == "rbac.authorization.k8s.io/ClusterRoleBinding"
    assert "lacks `list` on clusterrolebindings.rbac.authorization.k8s.io" in failed["reason"]
    assert "container.clusterRoleBindings.list" in failed["reason"]
    assert len(kube_api.list_requests("clusterrolebindings")) == 1  # a 403 is not retried
    code, _, err = scan_json("--source", f"k8s://{cluster}", "--require-complete")
    assert code == 2 and "partial snapshot" in err and "Traceback" not in err


def test_expired_continue_token_lists_again_without_duplicates(kube_api: KubeServer, cluster: str) -> None:
    kube_api.inject(KubeFault(status=410, times=1, plural="clusterroles", page=2, reason="Expired",
                              message="The provided continue parameter is too old"))
    src = open_source(f"k8s://{cluster}?page_size=10", fast())
    names = [a.name for a in src.assets() if a.asset_type.endswith("/ClusterRole")]
    assert src.status.complete and len(names) == len(set(names)) == len(kube_api.objects("ClusterRole"))
    assert [r["page"] for r in kube_api.list_requests("clusterroles")][:3] == [1, 2, 1]


def test_bad_contexts_and_options_are_clear(kubeconfig: str) -> None:
    for uri, fragment in [
        ("k8s://nope", "no context 'nope' in kubeconfig"),
        ("k8s://fake?limit=3", "unknown option(s) limit"),
        ("k8s://fake?page_size=0", "page_size must be between 1 and 5000"),
    ]:
        code, _, err = scan_json("--source", uri)
        assert code == 2 and fragment in err and "Traceback" not in err, err
    code, _, err = scan_json("--source", "k8s://nope")
    assert "(contexts: fake)" in err


def test_cluster_names() -> None:
    assert cluster_from_context("gke_ml-prod_us-central1_training") == (
        "projects/ml-prod/locations/us-central1/clusters/training"
    )
    assert cluster_from_context("kind-dev") == "kind-dev"
    src = KubernetesApiSource("k8s://gke_p_europe-west1-b_c1", SourceOptions())
    assert src.cluster == "projects/p/locations/europe-west1-b/clusters/c1"
    assert KubernetesApiSource("k8s://x?cluster=projects/a/locations/b/clusters/c", SourceOptions()).cluster == (
        "projects/a/locations/b/clusters/c"
    )
    assert KubernetesApiSource("k8s://x", SourceOptions(cluster="training")).cluster == "training"


def test_in_cluster_outside_a_pod_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, _, err = scan_json("--source", "k8s://in-cluster")
    assert code == 2 and "not running in a Kubernetes pod" in err and "Traceback" not in err


def test_a_scan_lists_only_the_kinds_some_rule_reads(kube_api: KubeServer, cluster: str) -> None:
    from auditor.scan import run_scan

    rules = load_rules(None)
    result = run_scan([f"k8s://{cluster}"], rules, SourceOptions(cluster=CLUSTER))
    assert result.complete and result.findings
    engine = Engine(rules)
    read = {k.kind for k in KINDS if engine.wants(k.asset_type, False)}
    plurals = {r["plural"] for r in kube_api.list_requests()}
    assert plurals == {k.resource.split(".")[0] for k in KINDS if k.kind in read}


def test_in_cluster_on_gke_names_the_cluster_from_the_metadata_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    answers = {
        "/computeMetadata/v1/project/project-id": "ml-prod",
        "/computeMetadata/v1/instance/attributes/cluster-location": "us-central1",
        "/computeMetadata/v1/instance/attributes/cluster-name": "training",
    }

    class Metadata(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answers.get(self.path, "") if self.headers.get("Metadata-Flavor") == "Google" else ""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{server.server_address[1]}")
        src = KubernetesApiSource("k8s://in-cluster", SourceOptions())
        assert src.resolve_cluster() == "projects/ml-prod/locations/us-central1/clusters/training"
        given = KubernetesApiSource("k8s://in-cluster?cluster=other", SourceOptions())
        assert given.resolve_cluster() == "other"  # a cluster given wins
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:  # a port nobody listens on: off GKE
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{s.getsockname()[1]}")
    assert KubernetesApiSource("k8s://in-cluster", SourceOptions()).resolve_cluster() == "in-cluster"
