"""Stage 6, apply: the writer for each family (IAM, Cloud Armor, RBAC), built on first use."""

from __future__ import annotations

from collections.abc import Mapping

from auditor.collect.retry import RetryPolicy
from remediations.apply import Writer, WriterFactory
from remediations.kinds import CLOUD_ARMOR, IAM, RBAC
from remediations.rbac import ApiClientFactory, kube_clients


def writers(
    gcp_endpoint: str | None = None,
    kube_contexts: Mapping[str, str] | None = None,
    kube_client_factory: ApiClientFactory | None = None,
    retry: RetryPolicy | None = None,
) -> WriterFactory:
    """Writers that reach Google Cloud at `gcp_endpoint` (None: AUDITOR_GCP_ENDPOINT or Google's endpoints) and
    each cluster through its kubeconfig context (or the given ApiClient factory)."""

    def make(family: str) -> Writer:
        if family == IAM:
            from remediations.iam import IamWriter

            return IamWriter(gcp_endpoint, retry)
        if family == CLOUD_ARMOR:
            from remediations.cloud_armor import CloudArmorWriter

            return CloudArmorWriter(gcp_endpoint, retry)
        if family == RBAC:
            from remediations.rbac import RbacWriter

            return RbacWriter(kube_client_factory or kube_clients(kube_contexts), retry)
        raise ValueError(f"no writer for {family!r}")

    return make
