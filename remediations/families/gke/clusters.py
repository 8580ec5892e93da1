"""Read a GKE cluster and change its Workload Identity setting through the Kubernetes Engine API (REST v1).

clusters.update carries the cluster's etag in `update.etag`: the API refuses it (409 ABORTED) when the cluster
changed since it was read, so the write is as guarded as an IAM policy's. The update is a long-running operation,
waited on (operations.get) until it is done; an operation that ends with an error is the write's error. Turning
Workload Identity on updates the control plane only: node pools keep their metadata mode until each is switched to
the GKE metadata server (a planned-only step, since it recreates the pool's nodes).
"""

from __future__ import annotations

import time
from typing import Any

from google.api_core import exceptions as gexc

from auditor.collect import gcp_clients
from auditor.collect.retry import RetryPolicy
from auditor.errors import AuditorError
from auditor.permissions import declare
from remediations.families.base import DEFAULT_RETRY, Live, WriteConflict
from remediations.targets import Target

declare(
    "remediations.gke",
    ["container.clusters.get", "container.clusters.update", "container.operations.get"],
    remediation=True,
    why="re-read a GKE cluster and turn Workload Identity on with clusters.update and the cluster's etag, waiting on "
    "the operation",
)

API = "https://container.googleapis.com"
TIMEOUT = 60.0
OPERATION_TIMEOUT = 1800.0  # a control plane update takes minutes
POLL = 2.0


class OperationFailed(AuditorError):
    """The cluster operation ended with an error, or did not end in time."""


class ClusterTransport:
    def __init__(self, endpoint: gcp_clients.Endpoint | str | None = None, *, poll: float = POLL,
                 operation_timeout: float = OPERATION_TIMEOUT) -> None:
        self.endpoint = endpoint if isinstance(endpoint, gcp_clients.Endpoint) else \
            gcp_clients.resolve_endpoint(endpoint)
        self._session: Any = None
        self.poll, self.operation_timeout = poll, operation_timeout

    def _rest(self, verb: str, path: str, **kw: Any) -> dict[str, Any]:
        if self._session is None:
            self._session = gcp_clients.authorized_session(self.endpoint)
        resp = self._session.request(verb, f"{self.endpoint.url or API}/v1/{path}", timeout=TIMEOUT, **kw)
        if resp.status_code >= 400:
            raise gexc.from_http_response(resp)
        out = resp.json()
        return out if isinstance(out, dict) else {}

    def get_cluster(self, name: str) -> dict[str, Any]:
        """projects.locations.clusters.get: the cluster, its etag included."""
        return self._rest("GET", name)

    def update_cluster(self, name: str, update: dict[str, Any]) -> dict[str, Any]:
        """projects.locations.clusters.update: the operation it started."""
        return self._rest("PUT", name, json={"name": name, "update": update})

    def get_cluster_operation(self, location: str, operation: str) -> dict[str, Any]:
        """projects.locations.operations.get."""
        return self._rest("GET", f"{location}/operations/{operation}")

    def wait(self, cluster: str, op: dict[str, Any]) -> None:
        """Until the operation is DONE; its error, or running past the timeout, raises OperationFailed."""
        location = cluster.rsplit("/clusters/", 1)[0]
        deadline = time.monotonic() + self.operation_timeout
        delay = min(0.25, self.poll)  # short operations answer soon; long ones are polled every `poll` seconds
        while str(op.get("status")) != "DONE":
            if time.monotonic() > deadline:
                raise OperationFailed(f"operation {op.get('name')} on {cluster} still {op.get('status')} after "
                                      f"{self.operation_timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, self.poll)
            op = self.get_cluster_operation(location, str(op.get("name")).rsplit("/", 1)[-1])
        error = op.get("error") or ({"message": op["statusMessage"]} if op.get("statusMessage") else None)
        if error:
            raise OperationFailed(f"operation {op.get('name')} on {cluster} failed: {error.get('message', error)}")


class GkeWriter:
    """Reads a cluster and writes its Workload Identity setting with the etag read."""

    family = "gke"

    def __init__(self, endpoint: Any = None, retry: RetryPolicy | None = None, **transport: Any) -> None:
        self.transport = ClusterTransport(endpoint, **transport)
        self.retry = retry or DEFAULT_RETRY

    def read(self, target: Target) -> Live:
        cluster = self.retry.call(lambda: self.transport.get_cluster(target.resource))
        return Live(cluster, cluster.get("etag"))

    def write(self, target: Target, live: Live, new: dict[str, Any] | None) -> None:
        pool = ((new or {}).get("workloadIdentityConfig") or {}).get("workloadPool") or ""
        update: dict[str, Any] = {"desiredWorkloadIdentityConfig": {"workloadPool": pool}}  # "" turns it off
        if live.token:
            update["etag"] = live.token
        try:
            op = self.retry.call(lambda: self.transport.update_cluster(target.resource, update))
        except (gexc.Aborted, gexc.Conflict) as exc:
            raise WriteConflict(str(exc.message)) from exc
        self.transport.wait(target.resource, op)
