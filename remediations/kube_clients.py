"""Kubernetes API clients per cluster, for the writers of Kubernetes objects and the leader election's Lease.

A cluster is reached through a kubeconfig context named for it, else the in-cluster service account when the
auditor runs in a pod, else the current kubeconfig context.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from auditor.errors import AuditorError

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
