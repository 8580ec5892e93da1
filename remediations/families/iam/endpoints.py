"""Which API holds each asset type's IAM policy: one row per asset type, read by the IAM family and its writer.

Adding a resource type whose API has getIamPolicy/setIamPolicy is one row here. Pure data: no client library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from auditor import vocabulary as v


@dataclass(frozen=True)
class Service:
    """A REST service's IAM methods: `{base}/{version}/{resource}:getIamPolicy` (read with `get_verb`)."""

    api: str  # the Target's api
    base: str
    version: str
    get_verb: str = "GET"  # Pub/Sub, KMS, Secret Manager... read with GET; IAM service accounts with POST
    transport: str = "rest"  # rest | resourcemanager | storage | bigquery


@dataclass(frozen=True)
class PolicyEndpoint:
    asset_type: str
    host: str  # the CAI name's service: //HOST/RESOURCE
    pattern: re.Pattern[str]  # RESOURCE, as the API takes it
    service: Service
    permissions: tuple[str, ...]  # to read and to write the policy
    label: str


RESOURCE_MANAGER = Service("resourcemanager", "https://cloudresourcemanager.googleapis.com", "v3", "POST",
                           "resourcemanager")
IAM_ADMIN = Service("iam_admin", "https://iam.googleapis.com", "v1", "POST")
STORAGE = Service("storage", "https://storage.googleapis.com", "storage/v1", "GET", "storage")
PUBSUB = Service("pubsub", "https://pubsub.googleapis.com", "v1")
KMS = Service("cloudkms", "https://cloudkms.googleapis.com", "v1")
SECRETS = Service("secretmanager", "https://secretmanager.googleapis.com", "v1")
ARTIFACTS = Service("artifactregistry", "https://artifactregistry.googleapis.com", "v1")
RUN = Service("run", "https://run.googleapis.com", "v2")
ML = Service("ml", "https://ml.googleapis.com", "v1")
BIGQUERY = Service("bigquery", "https://bigquery.googleapis.com", "bigquery/v2", "GET", "bigquery")
SERVICES = {s.api: s for s in (RESOURCE_MANAGER, IAM_ADMIN, STORAGE, PUBSUB, KMS, SECRETS, ARTIFACTS, RUN, ML,
                               BIGQUERY)}

_P = r"projects/[^/]+"
_L = r"projects/[^/]+/locations/[^/]+"


def _e(asset_type: str, host: str, pattern: str, service: Service, get: str, set_: str, label: str
       ) -> PolicyEndpoint:
    return PolicyEndpoint(asset_type, host, re.compile(f"^{pattern}$"), service, (get, set_), label)


ENDPOINTS: dict[str, PolicyEndpoint] = {
    e.asset_type: e
    for e in (
        _e(v.ORGANIZATION, "cloudresourcemanager.googleapis.com", r"organizations/[^/]+", RESOURCE_MANAGER,
           "resourcemanager.organizations.getIamPolicy", "resourcemanager.organizations.setIamPolicy",
           "organizations"),
        _e(v.FOLDER, "cloudresourcemanager.googleapis.com", r"folders/[^/]+", RESOURCE_MANAGER,
           "resourcemanager.folders.getIamPolicy", "resourcemanager.folders.setIamPolicy", "folders"),
        _e(v.PROJECT, "cloudresourcemanager.googleapis.com", _P, RESOURCE_MANAGER,
           "resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy", "projects"),
        _e(v.SERVICE_ACCOUNT, "iam.googleapis.com", rf"{_P}/serviceAccounts/[^/]+", IAM_ADMIN,
           "iam.serviceAccounts.getIamPolicy", "iam.serviceAccounts.setIamPolicy", "service accounts"),
        _e(v.BUCKET, "storage.googleapis.com", r"[a-z0-9][a-z0-9._-]*", STORAGE,
           "storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy", "Cloud Storage buckets"),
        _e(v.TOPIC, "pubsub.googleapis.com", rf"{_P}/topics/[^/]+", PUBSUB,
           "pubsub.topics.getIamPolicy", "pubsub.topics.setIamPolicy", "Pub/Sub topics"),
        _e(v.SUBSCRIPTION, "pubsub.googleapis.com", rf"{_P}/subscriptions/[^/]+", PUBSUB,
           "pubsub.subscriptions.getIamPolicy", "pubsub.subscriptions.setIamPolicy", "Pub/Sub subscriptions"),
        _e(v.KEY_RING, "cloudkms.googleapis.com", rf"{_L}/keyRings/[^/]+", KMS,
           "cloudkms.keyRings.getIamPolicy", "cloudkms.keyRings.setIamPolicy", "Cloud KMS key rings"),
        _e(v.CRYPTO_KEY, "cloudkms.googleapis.com", rf"{_L}/keyRings/[^/]+/cryptoKeys/[^/]+", KMS,
           "cloudkms.cryptoKeys.getIamPolicy", "cloudkms.cryptoKeys.setIamPolicy", "Cloud KMS keys"),
        _e(v.SECRET, "secretmanager.googleapis.com", rf"{_P}/secrets/[^/]+", SECRETS,
           "secretmanager.secrets.getIamPolicy", "secretmanager.secrets.setIamPolicy", "Secret Manager secrets"),
        _e(v.REPOSITORY, "artifactregistry.googleapis.com", rf"{_L}/repositories/[^/]+", ARTIFACTS,
           "artifactregistry.repositories.getIamPolicy", "artifactregistry.repositories.setIamPolicy",
           "Artifact Registry repositories"),
        _e(v.RUN_SERVICE, "run.googleapis.com", rf"{_L}/services/[^/]+", RUN,
           "run.services.getIamPolicy", "run.services.setIamPolicy", "Cloud Run services"),
        _e(v.ML_MODEL, "ml.googleapis.com", rf"{_P}/models/[^/]+", ML,
           "ml.models.getIamPolicy", "ml.models.setIamPolicy", "AI Platform models"),
        # A dataset's policy is its access list, written with datasets.patch and the dataset's etag.
        _e(v.DATASET, "bigquery.googleapis.com", rf"{_P}/datasets/[^/]+", BIGQUERY,
           "bigquery.datasets.get", "bigquery.datasets.update", "BigQuery datasets"),
    )
}


def endpoint_for(asset_name: str, asset_type: str) -> tuple[PolicyEndpoint, str] | None:
    """The endpoint and the API's resource name for an asset (None: no writer for its IAM policy)."""
    e = ENDPOINTS.get(asset_type)
    prefix = f"//{e.host}/" if e else ""
    if e is None or not asset_name.startswith(prefix):
        return None
    resource = asset_name[len(prefix):]
    return (e, resource) if e.pattern.match(resource) else None


def permissions() -> list[str]:
    return [p for e in ENDPOINTS.values() for p in e.permissions]
