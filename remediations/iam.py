"""Stage 6, apply: IAM policy writes through each resource's own API, for every type in `iam_policies.endpoints`.

The policy is read with requestedPolicyVersion 3, so conditional bindings come back as they are and are written
back untouched; the write carries the etag read, so a concurrent change is refused by the API (409 ABORTED, 412
for buckets and datasets) instead of being lost.
"""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as gexc

from auditor.collect import gcp_clients
from auditor.collect.retry import RetryPolicy
from remediations.apply import DEFAULT_RETRY, Live, WriteConflict
from remediations.iam_policies.transports import POLICY_VERSION, PolicyTransport
from remediations.kinds import IAM
from remediations.targets import Target

_CONFLICTS = (gexc.Aborted, gexc.Conflict, gexc.PreconditionFailed, gexc.FailedPrecondition)


class IamWriter:
    family = IAM

    def __init__(self, endpoint: gcp_clients.Endpoint | str | None = None, retry: RetryPolicy | None = None) -> None:
        self.transport = PolicyTransport(endpoint)
        self.retry = retry or DEFAULT_RETRY

    def read(self, target: Target) -> Live:
        policy = self.retry.call(lambda: self.transport.get(target.api, target.resource, target.name))
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
            self.retry.call(lambda: self.transport.set(target.api, target.resource, target.name, live.state, policy))
        except _CONFLICTS as exc:
            raise WriteConflict(str(exc.message if hasattr(exc, "message") else exc)) from exc
