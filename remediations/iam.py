"""Stage 6, apply: IAM policy writes through each resource's own API.

Organizations, folders and projects through Resource Manager v3; service accounts through the IAM API; buckets
through the Cloud Storage JSON API (see `auditor.collect.gcp_clients`). The policy is read with
requestedPolicyVersion 3, so conditional bindings come back as they are and are written back untouched; the write
carries the etag read, so a concurrent change is refused by the API (409 ABORTED, 412 for buckets) instead of
being lost.
"""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as gexc

from auditor.collect import gcp_clients
from auditor.collect.retry import RetryPolicy
from auditor.permissions import declare
from remediations.apply import DEFAULT_RETRY, Live, WriteConflict
from remediations.kinds import IAM
from remediations.targets import Target

declare(
    "remediations.iam",
    [
        "resourcemanager.organizations.getIamPolicy",
        "resourcemanager.organizations.setIamPolicy",
        "resourcemanager.folders.getIamPolicy",
        "resourcemanager.folders.setIamPolicy",
        "resourcemanager.projects.getIamPolicy",
        "resourcemanager.projects.setIamPolicy",
        "iam.serviceAccounts.getIamPolicy",
        "iam.serviceAccounts.setIamPolicy",
        "storage.buckets.getIamPolicy",
        "storage.buckets.setIamPolicy",
    ],
    remediation=True,
    why="re-read IAM policies (version 3) and write the planned bindings with the etag",
)

POLICY_VERSION = 3
_CONFLICTS = (gexc.Aborted, gexc.Conflict, gexc.PreconditionFailed, gexc.FailedPrecondition)


def _policy_dict(pb: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    raw = pb._pb if hasattr(pb, "_pb") else pb
    return json_format.MessageToDict(raw)


def _policy_pb(d: dict[str, Any]) -> Any:
    from google.iam.v1 import policy_pb2
    from google.protobuf import json_format

    return json_format.ParseDict(d, policy_pb2.Policy(), ignore_unknown_fields=True)


class IamWriter:
    family = IAM

    def __init__(self, endpoint: gcp_clients.Endpoint | str | None = None, retry: RetryPolicy | None = None) -> None:
        self.endpoint = gcp_clients.resolve_endpoint(endpoint) if not isinstance(endpoint, gcp_clients.Endpoint) \
            else endpoint
        self.retry = retry or DEFAULT_RETRY
        self._clients: dict[str, Any] = {}

    def _client(self, target: Target) -> Any:
        key = {"iam_admin": "sa", "storage": "storage"}.get(target.api) or target.resource.split("/", 1)[0]
        if key not in self._clients:
            if target.api == "storage":
                self._clients[key] = gcp_clients.storage_client(self.endpoint)
            else:
                self._clients[key] = gcp_clients.iam_policy_client_for(target.resource, self.endpoint)
        return self._clients[key]

    def read(self, target: Target) -> Live:
        return self.retry.call(lambda: self._read(target))

    def _read(self, target: Target) -> Live:
        client = self._client(target)
        if target.api == "storage":
            pol = client.bucket(target.name).get_iam_policy(requested_policy_version=POLICY_VERSION)
            policy = {k: v for k, v in pol.to_api_repr().items() if k in ("etag", "version", "bindings")}
        elif target.api == "iam_admin":
            policy = client.get_iam_policy(target.resource, requested_policy_version=POLICY_VERSION)
        else:
            pb = client.get_iam_policy(
                request={"resource": target.resource, "options": {"requested_policy_version": POLICY_VERSION}}
            )
            policy = _policy_dict(pb)
        return Live(policy, policy.get("etag"))

    def write(self, target: Target, live: Live, new: dict[str, Any] | None) -> None:
        # Only bindings change; the version is 3 so conditions are kept, and the etag makes the write conditional.
        policy: dict[str, Any] = {
            "version": POLICY_VERSION,
            "bindings": list((new or {}).get("bindings") or []),
        }
        if live.token:
            policy["etag"] = live.token
        try:
            self.retry.call(lambda: self._write(target, policy))
        except _CONFLICTS as exc:
            raise WriteConflict(str(exc.message if hasattr(exc, "message") else exc)) from exc

    def _write(self, target: Target, policy: dict[str, Any]) -> None:
        client = self._client(target)
        if target.api == "storage":
            from google.api_core.iam import Policy

            client.bucket(target.name).set_iam_policy(Policy.from_api_repr(policy))
        elif target.api == "iam_admin":
            client.set_iam_policy(target.resource, policy)
        else:
            client.set_iam_policy(request={"resource": target.resource, "policy": _policy_pb(policy)})
