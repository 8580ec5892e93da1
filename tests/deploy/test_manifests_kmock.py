"""Deploy: every object of each kustomize build is created through the real `kubernetes` client against kmock.

The client serializes its models and calls the API paths a cluster serves (`kubectl apply` uses the same ones);
kmock refuses a second object of one name, so two shards that collide on a name fail here. What is read back is
what was sent, so nothing was lost between the manifests, the models and the API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import kmock
import pytest
from kmock._internal import parsing
from kubernetes import client as k8s

from tests.deploy.test_manifests import BUILDS, MODELS, build, to_model
from tests.fakes.kube import KubeServer

# kind -> (API class, create method, read method); namespaced when the method name says so.
TYPED: dict[str, tuple[Callable[[k8s.ApiClient], Any], str, str]] = {
    "Namespace": (k8s.CoreV1Api, "create_namespace", "read_namespace"),
    "ServiceAccount": (k8s.CoreV1Api, "create_namespaced_service_account", "read_namespaced_service_account"),
    "ConfigMap": (k8s.CoreV1Api, "create_namespaced_config_map", "read_namespaced_config_map"),
    "Service": (k8s.CoreV1Api, "create_namespaced_service", "read_namespaced_service"),
    "Deployment": (k8s.AppsV1Api, "create_namespaced_deployment", "read_namespaced_deployment"),
    "StatefulSet": (k8s.AppsV1Api, "create_namespaced_stateful_set", "read_namespaced_stateful_set"),
    "NetworkPolicy": (k8s.NetworkingV1Api, "create_namespaced_network_policy", "read_namespaced_network_policy"),
    "PodDisruptionBudget": (
        k8s.PolicyV1Api,
        "create_namespaced_pod_disruption_budget",
        "read_namespaced_pod_disruption_budget",
    ),
    "ClusterRole": (k8s.RbacAuthorizationV1Api, "create_cluster_role", "read_cluster_role"),
    "ClusterRoleBinding": (k8s.RbacAuthorizationV1Api, "create_cluster_role_binding", "read_cluster_role_binding"),
    "Role": (k8s.RbacAuthorizationV1Api, "create_namespaced_role", "read_namespaced_role"),
    "RoleBinding": (k8s.RbacAuthorizationV1Api, "create_namespaced_role_binding", "read_namespaced_role_binding"),
}
CUSTOM = {
    "ServiceMonitor": "servicemonitors",
    "PrometheusRule": "prometheusrules",
    "PodMonitoring": "podmonitorings",
    "Rules": "rules",
}


def _parse_path_with_namespaces(original: Callable[[str], Any]) -> Callable[[str], Any]:
    """kmock reads `/api/v1/namespaces[/NAME]` as a namespace with no resource; the API server, as the resource
    `namespaces` (cluster-scoped). Everything else is left to kmock."""

    def parse(path: str) -> Any:
        parts = path.strip("/").split("/")
        if len(parts) in (3, 4) and parts[0] == "api" and parts[2] == "namespaces":
            name = parts[3] if len(parts) == 4 else None
            return parsing.ParsedPath(group="", version=parts[1], plural="namespaces", namespace=None, name=name)
        return original(path)

    return parse


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeServer]:
    monkeypatch.setattr(parsing, "parse_path", _parse_path_with_namespaces(parsing.parse_path))
    server = KubeServer(emulator=kmock.KubernetesEmulator).start()
    try:
        yield server
    finally:
        server.stop()


def _create_and_read(api: k8s.ApiClient, obj: dict[str, Any]) -> dict[str, Any]:
    kind, meta = obj["kind"], obj["metadata"]
    if kind in CUSTOM:
        group, version = obj["apiVersion"].split("/")
        custom = k8s.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(group, version, meta["namespace"], CUSTOM[kind], obj)
        got: dict[str, Any] = custom.get_namespaced_custom_object(
            group, version, meta["namespace"], CUSTOM[kind], meta["name"]
        )
        return got
    api_class, create, read = TYPED[kind]
    typed = api_class(api)
    ns = (meta["namespace"],) if "_namespaced_" in create else ()
    getattr(typed, create)(*ns, to_model(obj))
    result: dict[str, Any] = api.sanitize_for_serialization(getattr(typed, read)(meta["name"], *ns))
    return result


def test_every_kind_has_a_way_in() -> None:
    assert {kind for _, kind in MODELS} == set(TYPED) | set(CUSTOM)


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_build_is_created_and_read_back_unchanged(name: str, kube: KubeServer) -> None:
    api = kube.api_client()
    objs = build(name)
    # Namespaces first, as kubectl orders them.
    for obj in sorted(objs, key=lambda o: o["kind"] != "Namespace"):
        got = _create_and_read(api, obj)
        assert got == obj, f"{obj['kind']} {obj['metadata']['name']} changed on the way"
    # What a cluster now holds for the auditor, seen through the typed list calls.
    apps = k8s.AppsV1Api(api).list_namespaced_stateful_set("drift-auditor").items
    assert len(apps) == sum(o["kind"] == "StatefulSet" for o in objs) >= 1
    for dep in apps:
        pod = dep.spec.template.spec
        assert pod.security_context.run_as_non_root is True
        assert pod.containers[0].security_context.read_only_root_filesystem is True
        assert pod.service_account_name == "drift-auditor"
    roles = {r.metadata.name for r in k8s.RbacAuthorizationV1Api(api).list_cluster_role().items}
    assert "drift-auditor-read" in roles
    assert ("drift-auditor-remediate" in roles) is (name == "remediation")


def test_a_second_apply_of_the_same_names_is_refused(kube: KubeServer) -> None:
    # The check above relies on this: kmock answers a duplicate name with 409, as the API server does.
    api = kube.api_client()
    ns = next(o for o in build("base") if o["kind"] == "Namespace")
    _create_and_read(api, ns)
    with pytest.raises(k8s.exceptions.ApiException) as err:
        _create_and_read(api, ns)
    assert err.value.status == 409
