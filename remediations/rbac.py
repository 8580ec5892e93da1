"""Stage 6, apply: Kubernetes RBAC writes through the cluster's API server.

Subjects and rules are changed with a JSON merge patch that carries `metadata.resourceVersion`: the API server
refuses it (409 Conflict) when the object changed since it was read. A binding is deleted with a
resourceVersion (and uid) precondition. A rollback of a deletion creates the object again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from auditor.collect.retry import RetryPolicy
from auditor.errors import AuditorError
from remediations.apply import DEFAULT_RETRY, Live, WriteConflict
from remediations.kinds import RBAC
from remediations.targets import Target

# The GKE permissions this applier needs (container.roles.*, roleBindings.*, leases.*, and bind/escalate) are listed
# in docs/operations/install-gke.md rather than declared here: with in-cluster credentials they are Kubernetes RBAC
# verbs, not IAM.
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 30
_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation", "selfLink")

ApiClientFactory = Callable[[str], Any]  # cluster (//container.googleapis.com/...) -> kubernetes.client.ApiClient


def kube_clients(contexts: Mapping[str, str] | None = None) -> ApiClientFactory:
    """ApiClients per cluster: a kubeconfig context named for the cluster (CLUSTER=CONTEXT, the cluster as its
    full name or its last segment), else the in-cluster service account when running in a pod, else the current
    kubeconfig context."""
    contexts = dict(contexts or {})
    cache: dict[str, Any] = {}

    def factory(cluster: str) -> Any:
        from kubernetes import client, config

        if cluster in cache:
            return cache[cluster]
        short = cluster.rsplit("/", 1)[-1]
        context = contexts.get(cluster) or contexts.get(short)
        try:
            if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                cfg = client.Configuration()
                config.load_incluster_config(client_configuration=cfg)
                api = client.ApiClient(cfg)
            else:
                api = config.new_client_from_config(context=context)
        except Exception as exc:  # a missing kubeconfig or context: one clear line
            raise AuditorError(f"no Kubernetes credentials for {cluster}: {exc}") from None
        cache[cluster] = api
        return api

    return factory


class KubeApiError(AuditorError):
    """A Kubernetes API error other than a conflict; `status` lets the retry policy tell transient ones apart."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


class RbacWriter:
    family = RBAC

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
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            if new is None:
                if live.state is None:
                    return
                meta = live.state.get("metadata") or {}
                pre = {"resourceVersion": live.token, **({"uid": meta["uid"]} if meta.get("uid") else {})}
                self._call(target, "delete", name=target.name, body=client.V1DeleteOptions.from_dict(
                    {"preconditions": pre}), _request_timeout=REQUEST_TIMEOUT)
            elif live.state is None:
                body = json.loads(json.dumps(new))
                meta = body.setdefault("metadata", {})
                for k in _SERVER_FIELDS:
                    meta.pop(k, None)
                model = getattr(client, f"V1{target.kind}")
                self._call(target, "create", body=model.from_dict(body), _request_timeout=REQUEST_TIMEOUT)
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


def _k8s_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)[:300]
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)
