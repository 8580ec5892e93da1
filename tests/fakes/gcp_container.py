"""The Kubernetes Engine API for the fake Google Cloud server: what the GKE remediation writes with.

`GET /v1/projects/P/locations/L/clusters/C` answers the cluster as CAI holds it (`resource.data` of the asset
`//container.googleapis.com/projects/P/locations/L/clusters/C`, or `zones/L` for a zonal one), with an `etag`
(a token of its own when the data carries none). `PUT` of the same path takes `{update: ClusterUpdate}`; as the
real API, an `update.etag` that is not the cluster's current one is refused with 409 ABORTED, and the update
starts an operation (`RUNNING` when answered, `DONE` when next read through `GET .../operations/OP`). Only
`desiredWorkloadIdentityConfig` is understood (an empty workloadPool turns Workload Identity off); any other field
is refused with 400, so a writer cannot send what the fake would silently ignore. Every update gives a new etag, so
later CAI listings see the change. `fake.ext["container_operation_error"]` makes the operations end with that error.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from tests.fakes.gcp import EXTRA_ROUTES, ApiError, FakeGcp, RecordedRequest, _token

_CLUSTER = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/clusters/(?P<cluster>[^/:]+)"


def cluster_asset(fake: FakeGcp, project: str, location: str, cluster: str) -> str:
    for kind in ("locations", "zones"):
        name = f"//container.googleapis.com/projects/{project}/{kind}/{location}/clusters/{cluster}"
        if fake.state.asset(name) is not None:
            return name
    raise ApiError(404, f"Not found: projects/{project}/locations/{location}/clusters/{cluster}.")


def _data(fake: FakeGcp, name: str) -> dict[str, Any]:
    data = copy.deepcopy(((fake.state.asset(name) or {}).get("resource") or {}).get("data") or {})
    data.setdefault("etag", _token(name, 0))
    return data


def _get(fake: FakeGcp, req: RecordedRequest, project: str, location: str, cluster: str) -> dict[str, Any]:
    with fake.state.lock:
        return _data(fake, cluster_asset(fake, project, location, cluster))


def _update(fake: FakeGcp, req: RecordedRequest, project: str, location: str, cluster: str) -> dict[str, Any]:
    update = dict((req.body or {}).get("update") or {}) if isinstance(req.body, dict) else {}
    sent = update.pop("etag", None)
    unknown = set(update) - {"desiredWorkloadIdentityConfig"}
    if unknown or not update:
        raise ApiError(400, f"the fake understands desiredWorkloadIdentityConfig only, not {sorted(unknown)}")
    with fake.state.lock:
        name = cluster_asset(fake, project, location, cluster)
        data = _data(fake, name)
        if sent and sent != data["etag"]:
            raise ApiError(409, "Cluster etag mismatch: the cluster has been modified; read it again.",
                           status="ABORTED")
        pool = (update["desiredWorkloadIdentityConfig"] or {}).get("workloadPool") or ""
        failing = bool(fake.ext.get("container_operation_error"))  # then the cluster stays as it was
        if pool and not failing:
            data["workloadIdentityConfig"] = {"workloadPool": pool}
        elif not failing:
            data.pop("workloadIdentityConfig", None)
        data["etag"] = _token(name, fake.state.next_id())
        res = copy.deepcopy((fake.state.asset(name) or {}).get("resource") or {})
        res["data"] = data
        fake.state.update_asset(name, resource=res)
        op = f"operation-{fake.state.next_id()}"
        fake.ext.setdefault("container_operations", {})[op] = location
    return {"name": op, "operationType": "UPDATE_CLUSTER", "status": "RUNNING",
            "targetLink": f"/v1/projects/{project}/locations/{location}/clusters/{cluster}"}


def _operation(fake: FakeGcp, req: RecordedRequest, project: str, location: str, op: str) -> dict[str, Any]:
    if fake.ext.get("container_operations", {}).get(op) != location:
        raise ApiError(404, f"Not found: operation {op}.")
    error = fake.ext.get("container_operation_error")  # a test's failing operation: {"code": N, "message": ...}
    return {"name": op, "operationType": "UPDATE_CLUSTER", "status": "DONE", **({"error": error} if error else {})}


EXTRA_ROUTES.extend([
    ("GET", re.compile(rf"^/v1/{_CLUSTER}$"), _get),
    ("PUT", re.compile(rf"^/v1/{_CLUSTER}$"), _update),
    ("GET", re.compile(r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/operations/(?P<op>[^/]+)$"),
     _operation),
])
