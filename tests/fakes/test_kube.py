"""The Kubernetes fake behind the real kubernetes client: resourceVersions, conflicts, PUT, paging, namespaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.fakes.kube import KubeFault, KubeServer


@pytest.fixture
def api(kube_api: KubeServer, tmp_path: Path) -> Any:
    path = kube_api.kubeconfig(tmp_path / "kubeconfig", context="fake")
    return config.new_client_from_config(config_file=str(path), context="fake")


def test_stale_resource_version_is_a_conflict(kube_api: KubeServer, api: Any, public_data: Path) -> None:
    kube_api.load(public_data / "k8s-bootstrap-rbac" / "cluster-roles.yaml")
    rbac = client.RbacAuthorizationV1Api(api)
    before = rbac.read_cluster_role("view")
    before.metadata.labels = {**(before.metadata.labels or {}), "audited": "yes"}
    after = rbac.replace_cluster_role("view", before)
    assert int(after.metadata.resource_version) > int(before.metadata.resource_version)
    with pytest.raises(client.ApiException) as stale:
        rbac.replace_cluster_role("view", before)
    assert stale.value.status == 409 and "the object has been modified" in stale.value.body
    with pytest.raises(client.ApiException):
        rbac.patch_cluster_role("view", {"metadata": {"resourceVersion": before.metadata.resource_version}})
    patched = rbac.patch_cluster_role("view", {"metadata": {"labels": {"audited": "twice"}}})
    assert patched.metadata.labels["audited"] == "twice"
    assert int(patched.metadata.resource_version) > int(after.metadata.resource_version)


def test_namespaces_create_read_patch_delete(kube_api: KubeServer, api: Any) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespace({"metadata": {"name": "vision", "labels": {"tenant": "vision"}}})
    assert created.metadata.resource_version and created.metadata.uid
    with pytest.raises(client.ApiException) as dup:
        core.create_namespace({"metadata": {"name": "vision"}})
    assert dup.value.status == 409
    core.patch_namespace("vision", {"metadata": {"labels": {"team": "cv"}}})
    assert core.read_namespace("vision").metadata.labels == {"tenant": "vision", "team": "cv"}
    core.delete_namespace("vision")
    assert core.list_namespace().items == []


def test_lists_page_with_limit_and_continue(kube_api: KubeServer, api: Any, public_data: Path) -> None:
    n = kube_api.load(public_data / "k8s-bootstrap-rbac" / "controller-roles.yaml")
    rbac = client.RbacAuthorizationV1Api(api)
    names, token, pages = [], None, 0
    while True:
        page = rbac.list_cluster_role(limit=15, _continue=token)
        pages += 1
        names += [r.metadata.name for r in page.items]
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count == n - len(names)
    assert len(names) == len(set(names)) == n and pages == -(-n // 15)


def test_faults_with_retry_after(kube_api: KubeServer, api: Any) -> None:
    kube_api.inject(KubeFault(status=429, times=1, plural="roles", retry_after=2, reason="TooManyRequests"))
    rbac = client.RbacAuthorizationV1Api(api)
    # The client's own urllib3 retries would hide the 429: turn them off to see what the server sent.
    api.rest_client.pool_manager.connection_pool_kw["retries"] = False
    with pytest.raises(client.ApiException) as err:
        rbac.list_role_for_all_namespaces()
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "2"
    assert rbac.list_role_for_all_namespaces().items == []


def test_runs_as_a_command(tmp_path: Path, public_data: Path) -> None:
    import subprocess
    import sys

    kc = tmp_path / "kubeconfig"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.kube", "--kubeconfig", str(kc), "--load",
         str(public_data / "k8s-bootstrap-rbac" / "namespace-roles.yaml")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "(7 objects)" in proc.stdout.readline()
        api = config.new_client_from_config(config_file=str(kc), context="fake")
        assert len(client.RbacAuthorizationV1Api(api).list_role_for_all_namespaces().items) == 7
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_watches_stream_writes_after_a_resource_version(kube_api: KubeServer, api: Any) -> None:
    """Namespaces (served by the fake itself) and a namespaced collection: the events after the given version, in
    order, each at its own resourceVersion; a deletion is an event at a new one."""
    from kubernetes import watch

    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    kube_api.load({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "speech"}})
    since = core.list_namespace().metadata.resource_version
    assert since == "1"
    core.create_namespace({"metadata": {"name": "vision"}})
    core.patch_namespace("vision", {"metadata": {"labels": {"tenant": "vision"}}})
    core.delete_namespace("vision")
    rb = {"metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                  "name": "view"}, "subjects": []}
    rbac.create_namespaced_role_binding("speech", rb)
    rbac.create_namespaced_role_binding("vision", rb)
    events = list(watch.Watch(return_type="object").stream(core.list_namespace, resource_version=since,
                                                           timeout_seconds=1))
    assert [(e["type"], e["raw_object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "vision"), ("MODIFIED", "vision"), ("DELETED", "vision")]
    versions = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(set(versions)) and versions[0] > int(since)
    scoped = list(watch.Watch(return_type="object").stream(rbac.list_namespaced_role_binding, "vision",
                                                           resource_version=since, timeout_seconds=1))
    assert [(e["type"], e["raw_object"]["metadata"]["namespace"]) for e in scoped] == [("ADDED", "vision")]
    kube_api.compact()
    with pytest.raises(client.ApiException) as gone:
        list(watch.Watch(return_type="object").stream(core.list_namespace, resource_version=since, timeout_seconds=1))
    assert gone.value.status == 410
