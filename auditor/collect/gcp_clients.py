"""Stage 1, collect (and the apply stage's writers): the one place that builds every Google Cloud client.

Every client uses the REST transport. Where the API calls go:
- by default, Google's public endpoints with Application Default Credentials;
- with `AUDITOR_GCP_ENDPOINT=http://127.0.0.1:PORT` in the environment, or `gcp_endpoint` in the configuration
  (passed in as `endpoint=`, which wins over the environment), every client talks to that one endpoint with
  anonymous credentials: the way the tests run against the local fake server, and the way to use an emulator.

The IAM service-account policy methods have no REST transport in `google-cloud-iam` (`iam_admin_v1` is gRPC only),
so `ServiceAccountIamClient` is a small REST client over google-auth's `AuthorizedSession` that raises the same
`google.api_core.exceptions` as the generated clients.

`authorized_session` and `base_url` serve the hot path that reads ListAssets pages as raw JSON
(auditor/collect/asset_inventory.py explains why). Remediations import these builders too: `asset_client`,
`organizations_client`, `folders_client`, `projects_client`, `service_account_iam_client`,
`security_policies_client`, `global_operations_client`, `storage_client`, and `iam_policy_client_for(resource)`
which picks the right one for a resource name. The outbound sinks (auditor/sinks/) take `security_center_client`
and `publisher_client`.

The Google libraries are imported by the builders, not with this module: a scan of files, and everything that
only names an `Endpoint`, never loads them (they take a third of a second and 40 MB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from auditor.errors import AuditorError

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.auth.transport.requests import AuthorizedSession

ENDPOINT_ENV = "AUDITOR_GCP_ENDPOINT"
IAM_DEFAULT_ENDPOINT = "https://iam.googleapis.com"
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Endpoint:
    """Where the clients talk: `url` None means Google's public endpoints with default credentials."""

    url: str | None = None
    project: str | None = None  # quota project for the default credentials, when set

    @property
    def is_local(self) -> bool:
        return self.url is not None


def resolve_endpoint(endpoint: str | None = None) -> Endpoint:
    """The endpoint from an explicit value (the config file's `gcp_endpoint`), else AUDITOR_GCP_ENDPOINT."""
    url = endpoint or os.environ.get(ENDPOINT_ENV) or None
    if url is not None:
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise AuditorError(f"{ENDPOINT_ENV} / gcp_endpoint must be an http(s) URL, got {url!r}")
    return Endpoint(url=url)


def credentials(endpoint: Endpoint) -> Credentials:
    """Anonymous credentials for a local endpoint, else Application Default Credentials (a clear error if none)."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    if endpoint.is_local:
        return AnonymousCredentials()
    try:
        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise AuditorError(
            "no Google Cloud credentials: run `gcloud auth application-default login`, use a workload identity, "
            f"or set {ENDPOINT_ENV} to a local endpoint ({exc})"
        ) from exc
    return creds


def _client_kwargs(endpoint: Endpoint) -> dict[str, Any]:
    from google.api_core.client_options import ClientOptions

    kwargs: dict[str, Any] = {"transport": "rest", "credentials": credentials(endpoint)}
    if endpoint.is_local:
        kwargs["client_options"] = ClientOptions(api_endpoint=endpoint.url)
    return kwargs


def _endpoint(endpoint: Endpoint | str | None) -> Endpoint:
    return endpoint if isinstance(endpoint, Endpoint) else resolve_endpoint(endpoint)


def asset_client(endpoint: Endpoint | str | None = None) -> Any:
    """Cloud Asset Inventory v1 (`AssetServiceClient`): ListAssets, ExportAssets and their operations."""
    from google.cloud import asset_v1

    return asset_v1.AssetServiceClient(**_client_kwargs(_endpoint(endpoint)))


def organizations_client(endpoint: Endpoint | str | None = None) -> Any:
    """Resource Manager v3 `OrganizationsClient` (get/setIamPolicy on organizations/ID)."""
    from google.cloud import resourcemanager_v3

    return resourcemanager_v3.OrganizationsClient(**_client_kwargs(_endpoint(endpoint)))


def folders_client(endpoint: Endpoint | str | None = None) -> Any:
    """Resource Manager v3 `FoldersClient` (get/setIamPolicy on folders/ID)."""
    from google.cloud import resourcemanager_v3

    return resourcemanager_v3.FoldersClient(**_client_kwargs(_endpoint(endpoint)))


def projects_client(endpoint: Endpoint | str | None = None) -> Any:
    """Resource Manager v3 `ProjectsClient` (get/setIamPolicy on projects/ID or projects/NUMBER)."""
    from google.cloud import resourcemanager_v3

    return resourcemanager_v3.ProjectsClient(**_client_kwargs(_endpoint(endpoint)))


def security_policies_client(endpoint: Endpoint | str | None = None) -> Any:
    """Compute v1 `SecurityPoliciesClient` (get, list, patch, addRule, patchRule, removeRule)."""
    from google.cloud import compute_v1

    return compute_v1.SecurityPoliciesClient(**_client_kwargs(_endpoint(endpoint)))


def global_operations_client(endpoint: Endpoint | str | None = None) -> Any:
    """Compute v1 `GlobalOperationsClient` (the operations security-policy writes return)."""
    from google.cloud import compute_v1

    return compute_v1.GlobalOperationsClient(**_client_kwargs(_endpoint(endpoint)))


def storage_client(endpoint: Endpoint | str | None = None) -> Any:
    """Cloud Storage JSON API client (reads the files a CAI export wrote)."""
    import google.cloud.storage as storage

    ep = _endpoint(endpoint)
    kwargs: dict[str, Any] = {"credentials": credentials(ep)}
    if ep.is_local:
        kwargs["client_options"] = {"api_endpoint": ep.url}
        kwargs["project"] = "local"
    return storage.Client(**kwargs)


ASSET_DEFAULT_ENDPOINT = "https://cloudasset.googleapis.com"


def security_center_client(endpoint: Endpoint | str | None = None) -> Any:
    from google.cloud import securitycenter_v1

    return securitycenter_v1.SecurityCenterClient(**_client_kwargs(_endpoint(endpoint)))


def publisher_client(endpoint: Endpoint | str | None = None) -> Any:
    """The generated Pub/Sub publisher: one synchronous `publish` call per batch, so the caller knows what was
    delivered (the batching wrapper of google-cloud-pubsub answers with futures and retries on its own)."""
    from google import pubsub_v1

    return pubsub_v1.PublisherClient(**_client_kwargs(_endpoint(endpoint)))


def subscriber_client(endpoint: Endpoint | str | None = None) -> Any:
    """The generated Pub/Sub subscriber: unary `pull` and `acknowledge`, what the feed's pull receiver needs
    (auditor/collect/cai_pull.py)."""
    from google import pubsub_v1

    return pubsub_v1.SubscriberClient(**_client_kwargs(_endpoint(endpoint)))


def authorized_session(endpoint: Endpoint | str | None = None) -> AuthorizedSession:
    """A requests session that signs calls with the endpoint's credentials (refreshing tokens as needed)."""
    from google.auth.transport.requests import AuthorizedSession

    return AuthorizedSession(credentials(_endpoint(endpoint)))


def base_url(endpoint: Endpoint | str | None, default: str) -> str:
    """The URL REST calls go to: the local endpoint when set, else the service's public endpoint."""
    return _endpoint(endpoint).url or default


class ServiceAccountIamClient:
    """IAM v1 get/setIamPolicy on `projects/P/serviceAccounts/EMAIL_OR_ID`, over REST.

    Answers are the JSON policies as dicts (`{"version", "bindings", "etag", ...}`); errors are the
    `google.api_core.exceptions` the generated clients raise (409 Conflict/Aborted on a stale etag, 403, ...).
    """

    def __init__(self, endpoint: Endpoint | str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        ep = _endpoint(endpoint)
        self.base = ep.url or IAM_DEFAULT_ENDPOINT
        self.session = authorized_session(ep)
        self.timeout = timeout

    def _call(self, resource: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        if not resource.startswith("projects/") or "/serviceAccounts/" not in resource:
            raise ValueError(f"not a service account resource name: {resource!r} (projects/P/serviceAccounts/E)")
        url = f"{self.base}/v1/{resource}:{method}"
        resp = self.session.post(url, json=body, timeout=self.timeout)
        if resp.status_code >= 400:
            from google.api_core import exceptions as gexc

            raise gexc.from_http_response(resp)
        out = resp.json()
        return out if isinstance(out, dict) else {}

    def get_iam_policy(self, resource: str, requested_policy_version: int = 3) -> dict[str, Any]:
        return self._call(resource, "getIamPolicy", {"options": {"requestedPolicyVersion": requested_policy_version}})

    def set_iam_policy(
        self, resource: str, policy: dict[str, Any], update_mask: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"policy": policy}
        if update_mask:
            body["updateMask"] = update_mask
        return self._call(resource, "setIamPolicy", body)

    def close(self) -> None:
        self.session.close()


def service_account_iam_client(endpoint: Endpoint | str | None = None) -> ServiceAccountIamClient:
    return ServiceAccountIamClient(endpoint)


def iam_policy_client_for(resource: str, endpoint: Endpoint | str | None = None) -> Any:
    """The client whose get/setIamPolicy serves `resource` (`organizations/1`, `folders/2`, `projects/p`,
    `projects/p/serviceAccounts/e`). CAI names (`//cloudresourcemanager.googleapis.com/projects/p`) are accepted."""
    resource = resource_from_asset_name(resource)
    if "/serviceAccounts/" in resource:
        return service_account_iam_client(endpoint)
    if resource.startswith("organizations/"):
        return organizations_client(endpoint)
    if resource.startswith("folders/"):
        return folders_client(endpoint)
    if resource.startswith("projects/") and resource.count("/") == 1:
        return projects_client(endpoint)
    raise AuditorError(f"no IAM policy client for {resource!r}")


def resource_from_asset_name(name: str) -> str:
    """`organizations/1` from `//cloudresourcemanager.googleapis.com/organizations/1` (and the IAM service name)."""
    for prefix in ("//cloudresourcemanager.googleapis.com/", "//iam.googleapis.com/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name
