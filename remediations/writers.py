"""Stage 6, apply: the writer of each family, built on first use from the family itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from auditor.collect.retry import RetryPolicy
from remediations.apply import Writer, WriterFactory
from remediations.families import family
from remediations.families.base import WriterContext


def writers(
    gcp_endpoint: str | None = None,
    kube_contexts: Mapping[str, str] | None = None,
    kube_client_factory: Any = None,
    retry: RetryPolicy | None = None,
) -> WriterFactory:
    """Writers that reach Google Cloud at `gcp_endpoint` (None: AUDITOR_GCP_ENDPOINT or Google's endpoints) and
    each cluster through its kubeconfig context (or the given ApiClient factory)."""
    ctx = WriterContext(gcp_endpoint, kube_contexts, kube_client_factory, retry)

    def make(name: str) -> Writer:
        return family(name).writer(ctx)

    return make
