"""IAM in the example: the organization, projects, training service accounts, buckets and datasets.

Violations are deliberate and next to compliant assets; each is named in a comment.
"""

from __future__ import annotations

from typing import Any

from .common import CRM, DOMAIN, ORG, ORG_ID, ancestors, iam_line, number, resource_line

SA_TYPE = "iam.googleapis.com/ServiceAccount"
KEY_TYPE = "iam.googleapis.com/ServiceAccountKey"
BUCKET_TYPE = "storage.googleapis.com/Bucket"
DATASET_TYPE = "bigquery.googleapis.com/Dataset"
PROJECT_TYPE = "cloudresourcemanager.googleapis.com/Project"


def sa(name: str, project: str) -> str:
    return f"serviceAccount:{name}@{project}.iam.gserviceaccount.com"


def agents(project: str) -> list[dict[str, Any]]:
    """Google-managed service agents with the roles Google grants them: never findings."""
    n = number(project)
    return [
        {"role": "roles/editor", "members": [f"serviceAccount:{n}@cloudservices.gserviceaccount.com"]},
        {"role": "roles/container.serviceAgent",
         "members": [f"serviceAccount:service-{n}@container-engine-robot.iam.gserviceaccount.com"]},
        {"role": "roles/compute.serviceAgent",
         "members": [f"serviceAccount:service-{n}@compute-system.iam.gserviceaccount.com"]},
    ]


def organization() -> dict[str, Any]:
    return iam_line(
        f"{CRM}/{ORG}",
        "cloudresourcemanager.googleapis.com/Organization",
        [
            {"role": "roles/resourcemanager.organizationAdmin", "members": [f"group:gcp-org-admins@{DOMAIN}"]},
            {"role": "roles/iam.securityReviewer", "members": [f"group:security-team@{DOMAIN}"]},
            {"role": "roles/billing.user", "members": [f"group:finance@{DOMAIN}"]},
        ],
        [ORG],
        auditConfigs=[
            {"service": "allServices",
             "auditLogConfigs": [{"logType": "ADMIN_READ"}, {"logType": "DATA_WRITE"}, {"logType": "DATA_READ"}]}
        ],
    )


def projects() -> list[dict[str, Any]]:
    out = []
    # ml-platform-prod: clean apart from the GKE admin grant (across layers).
    out.append(iam_line(
        f"{CRM}/projects/{number('ml-platform-prod')}", PROJECT_TYPE,
        [
            {"role": "roles/container.admin", "members": [f"group:ml-platform-admins@{DOMAIN}"]},
            {"role": "roles/container.developer", "members": [f"group:ml-researchers@{DOMAIN}"]},
            {"role": "roles/monitoring.viewer", "members": [f"group:ml-oncall@{DOMAIN}"]},
            *agents("ml-platform-prod"),
        ],
        ancestors("ml-platform-prod"),
    ))
    # ml-training-prod: the over-privileged one.
    out.append(iam_line(
        f"{CRM}/projects/{number('ml-training-prod')}", PROJECT_TYPE,
        [
            # primitive role held by a group and by the training service account
            {"role": "roles/owner", "members": [f"group:ml-platform-admins@{DOMAIN}"]},
            {"role": "roles/editor", "members": [sa("trainer", "ml-training-prod"), sa("data-loader", "ml-training-prod")]},
            # impersonation of every service account of the project
            {"role": "roles/iam.serviceAccountTokenCreator", "members": [sa("ci-deployer", "ml-training-prod")]},
            {"role": "roles/iam.serviceAccountUser", "members": [f"group:ml-researchers@{DOMAIN}"]},
            # an external member from a consumer domain
            {"role": "roles/storage.objectViewer", "members": ["user:ml.contractor@gmail.com"]},
            # a conditional, time-bound grant: fine, and must survive any fix on this policy
            {"role": "roles/storage.admin", "members": [f"user:oncall-lead@{DOMAIN}"],
             "condition": {"title": "incident-4711", "expression": 'request.time < timestamp("2026-12-31T00:00:00Z")'}},
            *agents("ml-training-prod"),
        ],
        ancestors("ml-training-prod"),
    ))
    # research sandbox: editors everywhere, a classic
    out.append(iam_line(
        f"{CRM}/projects/{number('ml-research-sandbox')}", PROJECT_TYPE,
        [
            {"role": "roles/editor", "members": [f"group:ml-researchers@{DOMAIN}"]},
            {"role": "roles/viewer", "members": [f"domain:{DOMAIN}"]},
            *agents("ml-research-sandbox"),
        ],
        ancestors("ml-research-sandbox"),
    ))
    # clean projects
    for pid in ("shared-networking", "data-lake-prod"):
        extra: dict[str, Any] = {}
        if pid == "data-lake-prod":
            # The organization enables every data access log for allServices; this project exempts the nightly
            # bulk exporter from Cloud Storage DATA_READ logs to cut log volume (violation: an exemption not allowed).
            extra["auditConfigs"] = [{"service": "storage.googleapis.com", "auditLogConfigs": [
                {"logType": "DATA_READ", "exemptedMembers": [sa("bulk-export", "data-lake-prod")]}]}]
        out.append(iam_line(
            f"{CRM}/projects/{number(pid)}", PROJECT_TYPE,
            [
                {"role": "roles/compute.networkAdmin" if pid == "shared-networking" else "roles/bigquery.admin",
                 "members": [f"group:{pid}-admins@{DOMAIN}"]},
                *agents(pid),
            ],
            ancestors(pid),
            **extra,
        ))
    return out


def service_accounts() -> list[dict[str, Any]]:
    out = []
    accounts = [
        ("trainer", "ml-training-prod", "Distributed training jobs (PyTorch DDP workers)"),
        ("data-loader", "ml-training-prod", "Reads the training datasets"),
        ("ci-deployer", "ml-training-prod", "CI/CD deployments"),
        ("evaluator", "ml-training-prod", "Offline model evaluation"),
        ("gke-nodes", "ml-platform-prod", "GKE node pools"),
        ("inference", "ml-platform-prod", "Online inference"),
        ("notebook", "ml-research-sandbox", "Research notebooks"),
        ("bulk-export", "data-lake-prod", "Nightly dataset exports"),
    ]
    for i, (name, project, display) in enumerate(accounts):
        email = f"{name}@{project}.iam.gserviceaccount.com"
        asset = f"//iam.googleapis.com/projects/{project}/serviceAccounts/{email}"
        out.append(resource_line(asset, SA_TYPE, {
            "email": email, "name": f"projects/{project}/serviceAccounts/{email}", "displayName": display,
            "projectId": project, "uniqueId": f"10{i:019d}", "oauth2ClientId": f"10{i:019d}",
        }, ancestors(project)))
        # Each SA has a Google-managed key; the trainer and ci-deployer also have user-managed (downloaded) keys.
        keys = [("SYSTEM_MANAGED", f"{i:02d}aa")]
        if name in ("trainer", "ci-deployer"):
            keys.append(("USER_MANAGED", f"{i:02d}ff"))
        for key_type, kid in keys:
            out.append(resource_line(
                f"{asset}/keys/{kid}e1c0ffee", KEY_TYPE,
                {"name": f"projects/{project}/serviceAccounts/{email}/keys/{kid}e1c0ffee", "keyType": key_type,
                 "keyAlgorithm": "KEY_ALG_RSA_2048", "validAfterTime": "2026-01-10T00:00:00Z",
                 "validBeforeTime": "9999-12-31T23:59:59Z" if key_type == "USER_MANAGED" else "2026-12-20T00:00:00Z"},
                ancestors(project), parent=asset,
            ))
    # Who may act as the trainer: the CI robot (fine) and every researcher (not).
    trainer = "trainer@ml-training-prod.iam.gserviceaccount.com"
    out.append(iam_line(
        f"//iam.googleapis.com/projects/ml-training-prod/serviceAccounts/{trainer}", SA_TYPE,
        [{"role": "roles/iam.workloadIdentityUser",
          "members": ["serviceAccount:ml-platform-prod.svc.id.goog[tenant-vision/trainer]"]}],
        ancestors("ml-training-prod"),
    ))
    # The serving pods act as the inference account, which holds no project role: a compliant Workload Identity
    # mapping next to the trainer's (whose account is editor of ml-training-prod: violation).
    inference = "inference@ml-platform-prod.iam.gserviceaccount.com"
    out.append(iam_line(
        f"//iam.googleapis.com/projects/ml-platform-prod/serviceAccounts/{inference}", SA_TYPE,
        [{"role": "roles/iam.workloadIdentityUser",
          "members": ["serviceAccount:ml-platform-prod.svc.id.goog[serving/inference]"]}],
        ancestors("ml-platform-prod"),
    ))
    return out


def buckets() -> list[dict[str, Any]]:
    out = []
    specs = [
        # name, project, bindings
        ("helix-training-datasets", "ml-training-prod",
         [{"role": "roles/storage.objectViewer", "members": [
             sa("data-loader", "ml-training-prod"),
             # an intern's account, deleted when they left: the binding stays behind (violation)
             f"deleted:user:summer-intern@{DOMAIN}?uid=118274653092837465012"]}]),
        ("helix-checkpoints", "ml-training-prod",
         [{"role": "roles/storage.objectAdmin", "members": [sa("trainer", "ml-training-prod")]}]),
        # a public dataset mirror: world-readable (violation)
        ("helix-open-datasets-mirror", "ml-research-sandbox",
         [{"role": "roles/storage.objectViewer", "members": ["allUsers"]}]),
        # public web assets of the model cards site: world-readable on purpose; the shipped baseline reports it
        # (a team exempts it in its own copy of rules/iam.yaml, with owner, ticket and expiry)
        ("helix-model-cards-site", "ml-platform-prod",
         [{"role": "roles/storage.objectViewer", "members": ["allUsers"]}]),
        # a legacy export bucket still on fine-grained ACLs (violation: uniform bucket-level access off); its IAM
        # policy is clean, which is the point: the ACLs are invisible to an IAM review
        ("helix-legacy-exports", "data-lake-prod",
         [{"role": "roles/storage.objectViewer", "members": [f"group:data-lake-prod-admins@{DOMAIN}"]}]),
    ]
    for name, project, bindings in specs:
        asset = f"//storage.googleapis.com/{name}"
        uniform = name != "helix-legacy-exports"
        out.append(resource_line(asset, BUCKET_TYPE, {
            "name": name, "location": "US-CENTRAL1", "storageClass": "STANDARD",
            "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": uniform},
                                 "bucketPolicyOnly": {"enabled": uniform}},
        }, ancestors(project), parent=f"{CRM}/projects/{number(project)}"))
        out.append(iam_line(asset, BUCKET_TYPE, bindings, ancestors(project)))
    return out


def datasets() -> list[dict[str, Any]]:
    out = []
    for name, members in (
        ("features", [f"group:ml-researchers@{DOMAIN}"]),
        # a dataset shared with every Google account (violation)
        ("eval_results", ["allAuthenticatedUsers"]),
    ):
        asset = f"//bigquery.googleapis.com/projects/data-lake-prod/datasets/{name}"
        out.append(resource_line(asset, DATASET_TYPE, {"datasetReference": {"datasetId": name,
                                 "projectId": "data-lake-prod"}, "location": "US"}, ancestors("data-lake-prod")))
        out.append(iam_line(asset, DATASET_TYPE, [{"role": "roles/bigquery.dataViewer", "members": members}],
                            ancestors("data-lake-prod")))
    return out


def assets() -> list[dict[str, Any]]:
    return [organization(), *projects(), *service_accounts(), *buckets(), *datasets()]


__all__ = ["ORG_ID", "assets"]
