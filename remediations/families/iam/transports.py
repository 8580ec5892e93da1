"""Read and write one resource's IAM policy through its own API, for every endpoint in `endpoints`.

Resource Manager (organizations, folders, projects) and Cloud Storage go through their client libraries; the other
services through their REST `getIamPolicy` (`options.requestedPolicyVersion=3`) and `setIamPolicy`, whose
default update mask is `bindings,etag`, so audit configs and anything else on the policy stay as they are. The
IAM service-account methods have no REST transport in `google-cloud-iam` (its `iam_admin_v1` is gRPC only), so
they go through REST too. A BigQuery dataset is read with datasets.get and written with datasets.patch and an
`If-Match` etag. Errors are `google.api_core.exceptions` (409 ABORTED, 412 on a stale etag).
"""

from __future__ import annotations

from typing import Any

from auditor.collect import gcp_clients
from auditor.permissions import declare
from remediations.families.iam.datasets import access_from_policy, policy_from_access
from remediations.families.iam.endpoints import SERVICES, Service, permissions

declare(
    "remediations.iam",
    permissions(),
    remediation=True,
    why="re-read IAM policies (version 3; a dataset's access list) and write the planned bindings with the etag",
)

POLICY_VERSION = 3
TIMEOUT = 60.0


def _policy_dict(pb: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    raw = pb._pb if hasattr(pb, "_pb") else pb
    return json_format.MessageToDict(raw)


def _policy_pb(d: dict[str, Any]) -> Any:
    from google.iam.v1 import policy_pb2
    from google.protobuf import json_format

    return json_format.ParseDict(d, policy_pb2.Policy(), ignore_unknown_fields=True)


class PolicyTransport:
    """get(api, resource, name) -> the policy as a dict (etag included); set(api, resource, name, state, policy)."""

    def __init__(self, endpoint: gcp_clients.Endpoint | str | None = None) -> None:
        self.endpoint = endpoint if isinstance(endpoint, gcp_clients.Endpoint) else \
            gcp_clients.resolve_endpoint(endpoint)
        self._clients: dict[str, Any] = {}
        self._session: Any = None

    # -- clients ----------------------------------------------------------------------------------------------------
    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = gcp_clients.authorized_session(self.endpoint)
        return self._session

    def _url(self, service: Service, path: str) -> str:
        return f"{self.endpoint.url or service.base}/{service.version}/{path}"

    def _client(self, service: Service, resource: str) -> Any:
        key = "storage" if service.transport == "storage" else resource.split("/", 1)[0]
        if key not in self._clients:
            if service.transport == "storage":
                self._clients[key] = gcp_clients.storage_client(self.endpoint)
            else:
                self._clients[key] = gcp_clients.iam_policy_client_for(resource, self.endpoint)
        return self._clients[key]

    def _rest(self, verb: str, url: str, **kw: Any) -> dict[str, Any]:
        resp = self.session.request(verb, url, timeout=TIMEOUT, **kw)
        if resp.status_code >= 400:
            from google.api_core import exceptions as gexc

            raise gexc.from_http_response(resp)
        out = resp.json()
        return out if isinstance(out, dict) else {}

    # -- read -------------------------------------------------------------------------------------------------------
    def get(self, api: str, resource: str, name: str | None = None) -> dict[str, Any]:
        service = SERVICES[api]
        if service.transport == "resourcemanager":
            return _policy_dict(self._client(service, resource).get_iam_policy(
                request={"resource": resource, "options": {"requested_policy_version": POLICY_VERSION}}))
        if service.transport == "storage":
            pol = self._client(service, resource).bucket(name).get_iam_policy(requested_policy_version=POLICY_VERSION)
            return {k: v for k, v in pol.to_api_repr().items() if k in ("etag", "version", "bindings")}
        if service.transport == "bigquery":
            return policy_from_access(self.get_dataset(resource))
        url = self._url(service, f"{resource}:getIamPolicy")
        if service.get_verb == "GET":
            return self._rest("GET", url, params={"options.requestedPolicyVersion": POLICY_VERSION})
        return self._rest("POST", url, json={"options": {"requestedPolicyVersion": POLICY_VERSION}})

    def get_dataset(self, resource: str) -> dict[str, Any]:
        """BigQuery datasets.get: the dataset with its access list and etag."""
        return self._rest("GET", self._url(SERVICES["bigquery"], resource))

    def update_dataset(self, resource: str, access: list[dict[str, Any]], etag: str | None) -> dict[str, Any]:
        """BigQuery datasets.patch of the access list alone, refused (412) when the etag is not the current one."""
        headers = {"If-Match": str(etag)} if etag else {}
        return self._rest("PATCH", self._url(SERVICES["bigquery"], resource), json={"access": access},
                          headers=headers)

    # -- write ------------------------------------------------------------------------------------------------------
    def set(self, api: str, resource: str, name: str | None, state: dict[str, Any] | None,
            policy: dict[str, Any]) -> None:
        """Write `policy` (version, bindings, etag); `state` is the live state it was made from."""
        service = SERVICES[api]
        if service.transport == "resourcemanager":
            self._client(service, resource).set_iam_policy(request={"resource": resource, "policy": _policy_pb(policy)})
        elif service.transport == "storage":
            from google.api_core.iam import Policy

            self._client(service, resource).bucket(name).set_iam_policy(Policy.from_api_repr(policy))
        elif service.transport == "bigquery":
            self.update_dataset(resource, access_from_policy(state or {}, policy), policy.get("etag"))
        else:
            self._rest("POST", self._url(service, f"{resource}:setIamPolicy"), json={"policy": policy})
