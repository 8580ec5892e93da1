"""Benchmark input (feeds stage 1, collect): a seeded synthetic organization written as a CAI export.

One NDJSON file in export spelling (`asset_type`, `iam_policy`, `update_time`, `ancestors`; resource lines carry
`resource.{version, discovery_document_uri, discovery_name, parent, data, location}`), holding both the resource
lines and the IAM-policy lines of an organization: folders, projects, buckets, service accounts and their keys,
BigQuery datasets, Cloud Armor security policies, GKE clusters with their RBAC objects, namespaces, quotas and
network policies, and the bulk no baseline rule reads (instances with large metadata, disks, subnetworks,
firewalls, pods, enabled services). A small share of the assets violate the shipped baseline (public members,
basic roles, an allowing default Cloud Armor rule, open allow rules, cluster-admin for humans, user-managed keys,
tenant namespaces without quota or default-deny policy).

Two profiles. `tidy` (the default): few findings and small Cloud Armor policies. `messy`: an organization as a
first scan meets it: Cloud Armor policies of 5 to 200 rules (the product's default limit), each rule with up to
10 source ranges, IPv4 and IPv6, overlapping and shadowed, some in preview, some matched by expressions; most
projects with basic roles held by people, external members, admin service accounts, public buckets, and tenant
RBAC mistakes: about one finding per asset with the shipped baseline.

The same seed, size and profile give the same bytes.

    python bench/generate.py --assets 1000000 --output bench/data/org-1000000.ndjson [--gzip] [--seed 7]
    python bench/generate.py --profile messy --assets 1000000 --output bench/data/messy-1000000.ndjson
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import msgspec

GENERATOR_VERSION = 3  # bump when the output changes, so cached benchmark files are regenerated
ORG_ID = "112233445566"
DOMAIN = "example-ml.com"
REGIONS = ("us-central1", "europe-west4", "asia-southeast1", "us-east4")
UPDATE_TIME = "2026-11-20T09:14:07.518Z"
DISCOVERY = {
    "compute": "https://www.googleapis.com/discovery/v1/apis/compute/v1/rest",
    "storage": "https://www.googleapis.com/discovery/v1/apis/storage/v1/rest",
    "iam": "https://iam.googleapis.com/$discovery/rest",
    "crm": "https://cloudresourcemanager.googleapis.com/$discovery/rest",
    "bigquery": "https://www.googleapis.com/discovery/v1/apis/bigquery/v2/rest",
    "container": "https://container.googleapis.com/$discovery/rest",
    "k8s": "https://raw.githubusercontent.com/kubernetes/kubernetes/master/api/openapi-spec/swagger.json",
    "serviceusage": "https://serviceusage.googleapis.com/$discovery/rest",
}
SERVICES = (
    "aiplatform.googleapis.com",
    "bigquery.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "storage.googleapis.com",
)
# Rates of the injected violations (per asset of the kind concerned).
RATE_PUBLIC_BUCKET = 0.01
RATE_PUBLIC_DATASET = 0.005
RATE_BASIC_ROLE = 0.03
RATE_USER_KEY = 0.03
RATE_ARMOR_DEFAULT_ALLOW = 0.10
RATE_ARMOR_OPEN_ALLOW = 0.05
RATE_ARMOR_NO_RATE_LIMIT = 0.05
RATE_CLUSTER_ADMIN = 0.05
RATE_NO_QUOTA = 0.03
RATE_NO_NETPOL = 0.03


@dataclass(frozen=True)
class Profile:
    """How messy the organization is: the rates of the injected violations, and the Cloud Armor policies' shape.

    A rate of 0 draws no random number, so that `tidy` writes the bytes it always wrote."""

    name: str
    basic_role: float = RATE_BASIC_ROLE
    public_bucket: float = RATE_PUBLIC_BUCKET
    cluster_admin: float = RATE_CLUSTER_ADMIN
    no_quota: float = RATE_NO_QUOTA
    no_netpol: float = RATE_NO_NETPOL
    external_member: float = 0.0  # a gmail.com account on the project
    admin_service_account: float = 0.0  # a service account holding roles/editor or an *Admin role on the project
    tenant_admin: float = 0.0  # a tenant's developers bound to the admin ClusterRole in their namespace
    armor_policies: float = 0.3  # share of projects with Cloud Armor policies
    armor_per_project: int = 2  # at most, per project that has some
    messy_armor: bool = False


PROFILES = {
    "tidy": Profile("tidy"),
    "messy": Profile(
        "messy",
        basic_role=0.7,
        public_bucket=0.08,
        cluster_admin=0.3,
        no_quota=0.25,
        no_netpol=0.25,
        external_member=0.5,
        admin_service_account=0.5,
        tenant_admin=0.3,
        armor_policies=1.0,
        armor_per_project=6,
        messy_armor=True,
    ),
}


@dataclass
class Stats:
    """What was written: lines per asset type, bytes, and the violations injected by kind."""

    assets: int = 0
    bytes: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    iam_lines: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "assets": self.assets,
            "bytes": self.bytes,
            "iam_lines": self.iam_lines,
            "by_type": dict(self.by_type.most_common()),
            "violations": dict(sorted(self.violations.items())),
        }


class _Full(Exception):
    """Raised inside the generators once the requested number of assets is written."""


class _Writer:
    def __init__(self, fh: IO[bytes], limit: int) -> None:
        self.fh = fh
        self.limit = limit
        self.stats = Stats()
        self._enc = msgspec.json.Encoder()
        self._buf = bytearray()

    def line(self, record: dict[str, Any]) -> None:
        if self.stats.assets >= self.limit:
            raise _Full
        start = len(self._buf)
        self._enc.encode_into(record, self._buf, start)
        self._buf.extend(b"\n")
        self.stats.bytes += len(self._buf) - start
        self.stats.assets += 1
        self.stats.by_type[record["asset_type"]] += 1
        if "iam_policy" in record:
            self.stats.iam_lines += 1
        if len(self._buf) > 1 << 20:
            self.flush()

    def flush(self) -> None:
        self.fh.write(self._buf)
        self._buf.clear()


def _write_armor_policy(w: _Writer, rng: random.Random, pid: str, policy: str, rules: list[dict[str, Any]], pname: str,
                        anc: list[str], adaptive: bool) -> None:
    """Close a policy's rules with its default rule (allow at RATE_ARMOR_DEFAULT_ALLOW) and write the asset: both
    profiles end a policy this way, drawing from `rng` in the same order."""
    default_allow = rng.random() < RATE_ARMOR_DEFAULT_ALLOW
    if default_allow:
        w.stats.violations["armor_default_allow"] += 1
    rules.append(
        {
            "priority": 2147483647,
            "action": "allow" if default_allow else "deny(403)",
            "description": "default rule",
            "preview": False,
            "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRange": ["*"]}},
        }
    )
    data: dict[str, Any] = {
        "name": policy,
        "id": str(rng.getrandbits(60)),
        "kind": "compute#securityPolicy",
        "type": "CLOUD_ARMOR",
        "fingerprint": "Xq1hTq8b2aQ=",
        "rule": rules,
    }
    if adaptive:
        data["adaptiveProtectionConfig"] = {"layer7DdosDefenseConfig": {"enable": True}}
    data["selfLink"] = f"https://www.googleapis.com/compute/v1/projects/{pid}/global/securityPolicies/{policy}"
    w.line(_resource(f"//compute.googleapis.com/projects/{pid}/global/securityPolicies/{policy}",
                     "compute.googleapis.com/SecurityPolicy", data, pname, anc, "compute"))


def _resource(
    name: str, asset_type: str, data: dict[str, Any], parent: str | None, ancestors: list[str], api: str
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "version": "v1",
        "discovery_document_uri": DISCOVERY[api],
        "discovery_name": asset_type.rsplit("/", 1)[1],
        "data": data,
    }
    if parent:
        res["parent"] = parent
    return {"name": name, "asset_type": asset_type, "resource": res, "ancestors": ancestors, "update_time": UPDATE_TIME}


def _iam(
    name: str, asset_type: str, bindings: list[dict[str, Any]], ancestors: list[str], **extra: Any
) -> dict[str, Any]:
    policy: dict[str, Any] = {"version": 1, "bindings": bindings, "etag": "BwXhqDk7bJQ=", **extra}
    return {
        "name": name,
        "asset_type": asset_type,
        "iam_policy": policy,
        "ancestors": ancestors,
        "update_time": UPDATE_TIME,
    }


class _Org:
    """Emits one organization, project by project, with its own random stream."""

    def __init__(self, w: _Writer, rng: random.Random, profile: Profile = PROFILES["tidy"]) -> None:
        self.w = w
        self.rng = rng
        self.p = profile
        self.org = f"organizations/{ORG_ID}"
        self._scripts = [self._startup_script(i) for i in range(8)]
        self._ssh = [self._ssh_keys(i) for i in range(8)]

    # -- bulky content, built once and reused (the bytes matter, not their variety) ----------------------------------
    def _startup_script(self, i: int) -> str:
        rng = self.rng
        lines = ["#!/bin/bash", "set -euo pipefail", f"# training node bootstrap v{i}"]
        for k in range(rng.randint(8, 24)):
            lines.append(
                f"gsutil -m cp gs://ml-artifacts-{rng.randrange(10**6):06d}/shard-{k:04d}.tar /mnt/data/ "
                f"&& tar -xf /mnt/data/shard-{k:04d}.tar -C /mnt/data/{rng.choice(('train', 'eval', 'test'))}"
            )
        return "\n".join(lines)

    def _ssh_keys(self, i: int) -> str:
        rng = self.rng
        keys = []
        for k in range(rng.randint(1, 4)):
            blob = "".join(
                rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(372)
            )
            keys.append(f"user{i}{k}:ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ{blob} user{i}{k}@{DOMAIN}")
        return "\n".join(keys)

    # -- hierarchy ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        w, rng = self.w, self.rng
        crm = "cloudresourcemanager.googleapis.com"
        org_name = f"//{crm}/{self.org}"
        w.line(
            _resource(
                org_name,
                f"{crm}/Organization",
                {
                    "name": self.org,
                    "displayName": DOMAIN,
                    "lifecycleState": "ACTIVE",
                    "owner": {"directoryCustomerId": "C01abc9de"},
                },
                None,
                [self.org],
                "crm",
            )
        )
        w.line(
            _iam(
                org_name,
                f"{crm}/Organization",
                [
                    {"role": "roles/resourcemanager.organizationAdmin", "members": [f"group:gcp-org-admins@{DOMAIN}"]},
                    {"role": "roles/billing.creator", "members": [f"group:gcp-billing@{DOMAIN}"]},
                    {"role": "roles/iam.securityReviewer", "members": [f"group:security@{DOMAIN}"]},
                ],
                [self.org],
                audit_configs=[{"service": "allServices", "audit_log_configs": [{"log_type": 1}, {"log_type": 2}]}],
            )
        )
        folder_id = 300000000000
        project_no = 700000000000
        while True:  # until the writer is full
            for top in range(12):
                folder_id += 1
                top_folder = f"folders/{folder_id}"
                self._folder(top_folder, f"bu-{top:02d}", self.org, [top_folder, self.org])
                for sub in range(rng.randint(3, 8)):
                    folder_id += 1
                    sub_folder = f"folders/{folder_id}"
                    ancestors = [sub_folder, top_folder, self.org]
                    self._folder(sub_folder, f"team-{top:02d}-{sub:02d}", top_folder, ancestors)
                    for _ in range(rng.randint(4, 12)):
                        project_no += 1
                        self._project(project_no, sub_folder, ancestors)

    def _folder(self, folder: str, display: str, parent: str, ancestors: list[str]) -> None:
        crm = "cloudresourcemanager.googleapis.com"
        name = f"//{crm}/{folder}"
        self.w.line(
            _resource(
                name,
                f"{crm}/Folder",
                {"name": folder, "parent": parent, "displayName": display, "lifecycleState": "ACTIVE"},
                f"//{crm}/{parent}",
                ancestors,
                "crm",
            )
        )
        self.w.line(
            _iam(
                name,
                f"{crm}/Folder",
                [
                    {"role": "roles/resourcemanager.folderViewer", "members": [f"group:{display}@{DOMAIN}"]},
                    {"role": "roles/logging.viewer", "members": [f"group:sre@{DOMAIN}"]},
                ],
                ancestors,
            )
        )

    # -- one project and everything in it -----------------------------------------------------------------------
    def _project(self, number: int, folder: str, folder_ancestors: list[str]) -> None:
        w, rng = self.w, self.rng
        pid = f"ml-{number % 100000:05d}-{rng.choice(('train', 'serve', 'data', 'feat', 'lab'))}"
        proj = f"projects/{number}"
        anc = [proj, *folder_ancestors]
        crm = "cloudresourcemanager.googleapis.com"
        pname = f"//{crm}/{proj}"
        crm_parent = f"//{crm}/{folder}"
        w.line(
            _resource(
                pname,
                f"{crm}/Project",
                {
                    "projectNumber": str(number),
                    "projectId": pid,
                    "lifecycleState": "ACTIVE",
                    "name": pid,
                    "createTime": "2024-03-18T11:02:45.120Z",
                    "parent": {"type": "folder", "id": folder.split("/")[1]},
                    "labels": {"cost-center": f"cc-{number % 97}", "env": rng.choice(("prod", "staging", "dev"))},
                },
                crm_parent,
                anc,
                "crm",
            )
        )
        bindings = [
            {"role": "roles/resourcemanager.projectIamAdmin", "members": [f"group:{pid}-owners@{DOMAIN}"]},
            {
                "role": "roles/aiplatform.user",
                "members": [f"group:{pid}-ml@{DOMAIN}", f"serviceAccount:trainer@{pid}.iam.gserviceaccount.com"],
            },
            {
                "role": "roles/storage.objectViewer",
                "members": [f"serviceAccount:{number}-compute@developer.gserviceaccount.com"],
            },
            {
                "role": "roles/container.serviceAgent",
                "members": [f"serviceAccount:service-{number}@container-engine-robot.iam.gserviceaccount.com"],
            },
            {
                "role": "roles/logging.logWriter",
                "members": [f"serviceAccount:{number}-compute@developer.gserviceaccount.com"],
            },
        ]
        if rng.random() < self.p.basic_role:
            bindings.append(
                {
                    "role": rng.choice(("roles/owner", "roles/editor")),
                    "members": [f"user:dev{rng.randrange(500)}@{DOMAIN}"],
                }
            )
            w.stats.violations["basic_role_on_project"] += 1
        if self.p.external_member and rng.random() < self.p.external_member:
            bindings.append(
                {"role": "roles/viewer", "members": [f"user:contractor{rng.randrange(900)}@gmail.com"]}
            )
            w.stats.violations["external_member"] += 1
        if self.p.admin_service_account and rng.random() < self.p.admin_service_account:
            bindings.append(
                {
                    "role": rng.choice(("roles/editor", "roles/storage.admin", "roles/compute.instanceAdmin")),
                    "members": [f"serviceAccount:ci-deployer@{pid}.iam.gserviceaccount.com"],
                }
            )
            w.stats.violations["admin_service_account"] += 1
        w.line(
            _iam(
                pname,
                f"{crm}/Project",
                bindings,
                anc,
                audit_configs=[
                    {"service": "allServices", "audit_log_configs": [{"log_type": 1}, {"log_type": 2}, {"log_type": 3}]}
                ],
            )
        )
        self._compute_project(pid, number, anc, pname)
        for svc in SERVICES:
            w.line(
                _resource(
                    f"//serviceusage.googleapis.com/{proj}/services/{svc}",
                    "serviceusage.googleapis.com/Service",
                    {"name": f"{proj}/services/{svc}", "parent": proj, "state": "ENABLED", "config": {"name": svc}},
                    pname,
                    anc,
                    "serviceusage",
                )
            )
        for b in range(rng.randint(2, 8)):
            self._bucket(pid, number, b, anc, pname)
        for s in range(rng.randint(2, 6)):
            self._service_account(pid, number, s, anc, pname)
        for d in range(rng.randint(0, 4)):
            self._dataset(pid, number, d, anc, pname)
        region = rng.choice(REGIONS)
        self._network(pid, region, anc, pname)
        for i in range(rng.randint(0, 30)):
            self._instance(pid, number, i, region, anc, pname)
        if rng.random() < self.p.armor_policies:
            for k in range(rng.randint(1, self.p.armor_per_project)):
                if self.p.messy_armor:
                    self._messy_security_policy(pid, k, anc, pname)
                else:
                    self._security_policy(pid, k, anc, pname)
        if rng.random() < 0.15:
            self._cluster(pid, number, region, anc, pname)

    def _compute_project(self, pid: str, number: int, anc: list[str], pname: str) -> None:
        rng = self.rng
        self.w.line(
            _resource(
                f"//compute.googleapis.com/projects/{pid}",
                "compute.googleapis.com/Project",
                {
                    "name": pid,
                    "id": str(number * 7 % 10**15),
                    "kind": "compute#project",
                    "defaultServiceAccount": f"{number}-compute@developer.gserviceaccount.com",
                    "commonInstanceMetadata": {
                        "fingerprint": "p3Hjk2Lm9Qs=",
                        "items": [
                            {"key": "ssh-keys", "value": rng.choice(self._ssh)},
                            {"key": "enable-oslogin", "value": "FALSE"},
                        ],
                    },
                    "quotas": [
                        {"metric": m, "limit": 1000.0, "usage": float(rng.randrange(100))}
                        for m in ("CPUS", "DISKS_TOTAL_GB", "NVIDIA_A100_GPUS", "NETWORKS", "FIREWALLS", "INSTANCES")
                    ],
                    "selfLink": f"https://www.googleapis.com/compute/v1/projects/{pid}",
                },
                pname,
                anc,
                "compute",
            )
        )

    def _bucket(self, pid: str, number: int, b: int, anc: list[str], pname: str) -> None:
        w, rng = self.w, self.rng
        bucket = f"{pid}-{('datasets', 'checkpoints', 'artifacts', 'logs', 'staging', 'features', 'exports', 'tmp')[b]}"
        name = f"//storage.googleapis.com/{bucket}"
        w.line(
            _resource(
                name,
                "storage.googleapis.com/Bucket",
                {
                    "id": bucket,
                    "name": bucket,
                    "kind": "storage#bucket",
                    "location": "US-CENTRAL1",
                    "storageClass": "STANDARD",
                    "projectNumber": str(number),
                    "iamConfiguration": {
                        "uniformBucketLevelAccess": {"enabled": True},
                        "publicAccessPrevention": "inherited",
                    },
                    "versioning": {"enabled": rng.random() < 0.5},
                    "lifecycle": {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 90}}]},
                    "labels": {"team": pid.split("-")[2]},
                    "timeCreated": "2025-01-08T16:44:21.117Z",
                    "selfLink": f"https://www.googleapis.com/storage/v1/b/{bucket}",
                },
                pname,
                anc,
                "storage",
            )
        )
        bindings = [
            {"role": "roles/storage.legacyBucketOwner", "members": [f"projectOwner:{pid}", f"projectEditor:{pid}"]},
            {"role": "roles/storage.legacyBucketReader", "members": [f"projectViewer:{pid}"]},
            {"role": "roles/storage.objectAdmin", "members": [f"serviceAccount:trainer@{pid}.iam.gserviceaccount.com"]},
        ]
        if rng.random() < self.p.public_bucket:
            bindings.append(
                {"role": "roles/storage.objectViewer", "members": [rng.choice(("allUsers", "allAuthenticatedUsers"))]}
            )
            w.stats.violations["public_bucket"] += 1
        w.line(_iam(name, "storage.googleapis.com/Bucket", bindings, anc))

    def _service_account(self, pid: str, number: int, s: int, anc: list[str], pname: str) -> None:
        w, rng = self.w, self.rng
        account = ("trainer", "serving", "pipeline", "notebook", "ci-deployer", "monitoring")[s]
        email = f"{account}@{pid}.iam.gserviceaccount.com"
        uid = str(100000000000000000000 + number * 10 + s)
        name = f"//iam.googleapis.com/projects/{pid}/serviceAccounts/{uid}"
        w.line(
            _resource(
                name,
                "iam.googleapis.com/ServiceAccount",
                {
                    "name": f"projects/{pid}/serviceAccounts/{email}",
                    "projectId": pid,
                    "uniqueId": uid,
                    "email": email,
                    "displayName": email.split("@")[0],
                    "oauth2ClientId": uid,
                },
                pname,
                anc,
                "iam",
            )
        )
        if rng.random() < 0.5:
            w.line(
                _iam(
                    name,
                    "iam.googleapis.com/ServiceAccount",
                    [{"role": "roles/iam.serviceAccountUser", "members": [f"group:{pid}-ml@{DOMAIN}"]}],
                    anc,
                )
            )
        for k in range(rng.randint(1, 2)):
            user = rng.random() < RATE_USER_KEY
            if user:
                w.stats.violations["user_managed_key"] += 1
            key_id = f"{rng.getrandbits(160):040x}"
            w.line(
                _resource(
                    f"{name}/keys/{key_id}",
                    "iam.googleapis.com/ServiceAccountKey",
                    {
                        "name": f"projects/{pid}/serviceAccounts/{email}/keys/{key_id}",
                        "keyAlgorithm": "KEY_ALG_RSA_2048",
                        "keyOrigin": "GOOGLE_PROVIDED",
                        "keyType": "USER_MANAGED" if user else "SYSTEM_MANAGED",
                        "validAfterTime": "2026-10-01T00:00:00Z",
                        "validBeforeTime": "2028-10-01T00:00:00Z" if user else "2026-12-01T00:00:00Z",
                    },
                    name,
                    anc,
                    "iam",
                )
            )
            del k

    def _dataset(self, pid: str, number: int, d: int, anc: list[str], pname: str) -> None:
        w, rng = self.w, self.rng
        ds = f"{('features', 'training_runs', 'eval_metrics', 'raw_events')[d]}"
        name = f"//bigquery.googleapis.com/projects/{pid}/datasets/{ds}"
        w.line(
            _resource(
                name,
                "bigquery.googleapis.com/Dataset",
                {
                    "kind": "bigquery#dataset",
                    "id": f"{pid}:{ds}",
                    "datasetReference": {"datasetId": ds, "projectId": pid},
                    "location": "US",
                    "defaultTableExpirationMs": "7776000000",
                    "access": [
                        {"role": "OWNER", "specialGroup": "projectOwners"},
                        {"role": "READER", "specialGroup": "projectReaders"},
                        {"role": "WRITER", "userByEmail": f"pipeline@{pid}.iam.gserviceaccount.com"},
                    ],
                },
                pname,
                anc,
                "bigquery",
            )
        )
        bindings = [
            {"role": "roles/bigquery.dataOwner", "members": [f"projectOwner:{pid}"]},
            {"role": "roles/bigquery.dataViewer", "members": [f"projectViewer:{pid}", f"group:{pid}-ml@{DOMAIN}"]},
        ]
        if rng.random() < RATE_PUBLIC_DATASET:
            bindings.append({"role": "roles/bigquery.dataViewer", "members": ["allAuthenticatedUsers"]})
            w.stats.violations["public_dataset"] += 1
        w.line(_iam(name, "bigquery.googleapis.com/Dataset", bindings, anc))

    def _network(self, pid: str, region: str, anc: list[str], pname: str) -> None:
        w = self.w
        base = f"https://www.googleapis.com/compute/v1/projects/{pid}"
        w.line(
            _resource(
                f"//compute.googleapis.com/projects/{pid}/global/networks/vpc",
                "compute.googleapis.com/Network",
                {
                    "name": "vpc",
                    "kind": "compute#network",
                    "autoCreateSubnetworks": False,
                    "routingConfig": {"routingMode": "GLOBAL"},
                    "selfLink": f"{base}/global/networks/vpc",
                    "subnetworks": [f"{base}/regions/{r}/subnetworks/{r}" for r in REGIONS],
                },
                pname,
                anc,
                "compute",
            )
        )
        for n, r in enumerate(REGIONS):
            w.line(
                _resource(
                    f"//compute.googleapis.com/projects/{pid}/regions/{r}/subnetworks/{r}",
                    "compute.googleapis.com/Subnetwork",
                    {
                        "name": r,
                        "kind": "compute#subnetwork",
                        "ipCidrRange": f"10.{n * 16}.0.0/20",
                        "gatewayAddress": f"10.{n * 16}.0.1",
                        "network": f"{base}/global/networks/vpc",
                        "region": f"{base}/regions/{r}",
                        "privateIpGoogleAccess": True,
                        "secondaryIpRanges": [
                            {"rangeName": "pods", "ipCidrRange": f"10.{n * 16 + 4}.0.0/14"},
                            {"rangeName": "services", "ipCidrRange": f"10.{n * 16 + 8}.0.0/20"},
                        ],
                        "logConfig": {"enable": True, "aggregationInterval": "INTERVAL_5_SEC", "flowSampling": 0.5},
                        "selfLink": f"{base}/regions/{r}/subnetworks/{r}",
                    },
                    pname,
                    anc,
                    "compute",
                )
            )
        for fw, ports in (
            ("allow-internal", ["0-65535"]),
            ("allow-iap-ssh", ["22"]),
            ("allow-health-checks", ["80", "443", "8080"]),
        ):
            w.line(
                _resource(
                    f"//compute.googleapis.com/projects/{pid}/global/firewalls/{fw}",
                    "compute.googleapis.com/Firewall",
                    {
                        "name": fw,
                        "kind": "compute#firewall",
                        "direction": "INGRESS",
                        "priority": 1000,
                        "network": f"{base}/global/networks/vpc",
                        "allowed": [{"IPProtocol": "tcp", "ports": ports}],
                        "sourceRanges": ["35.235.240.0/20"] if fw == "allow-iap-ssh" else ["10.0.0.0/8"],
                        "selfLink": f"{base}/global/firewalls/{fw}",
                    },
                    pname,
                    anc,
                    "compute",
                )
            )
        del region

    def _instance(self, pid: str, number: int, i: int, region: str, anc: list[str], pname: str) -> None:
        w, rng = self.w, self.rng
        zone = f"{region}-{rng.choice('abc')}"
        base = f"https://www.googleapis.com/compute/v1/projects/{pid}"
        inst = f"train-{i:03d}"
        machine = rng.choice(("a2-highgpu-1g", "a2-highgpu-8g", "n1-standard-16", "g2-standard-24", "e2-standard-4"))
        disk_name = f"{inst}-boot"
        w.line(
            _resource(
                f"//compute.googleapis.com/projects/{pid}/zones/{zone}/instances/{inst}",
                "compute.googleapis.com/Instance",
                {
                    "name": inst,
                    "id": str(number * 1000 + i),
                    "kind": "compute#instance",
                    "status": "RUNNING",
                    "machineType": f"{base}/zones/{zone}/machineTypes/{machine}",
                    "zone": f"{base}/zones/{zone}",
                    "cpuPlatform": "AMD Milan",
                    "canIpForward": False,
                    "creationTimestamp": "2026-09-14T07:21:33.918-07:00",
                    "disks": [
                        {
                            "boot": True,
                            "autoDelete": True,
                            "deviceName": disk_name,
                            "index": 0,
                            "interface": "SCSI",
                            "mode": "READ_WRITE",
                            "type": "PERSISTENT",
                            "diskSizeGb": "200",
                            "source": f"{base}/zones/{zone}/disks/{disk_name}",
                            "licenses": [
                                "https://www.googleapis.com/compute/v1/projects/ml-images/global/licenses/cos-cloud"
                            ],
                        }
                    ],
                    "networkInterfaces": [
                        {
                            "name": "nic0",
                            "network": f"{base}/global/networks/vpc",
                            "subnetwork": f"{base}/regions/{region}/subnetworks/{region}",
                            "networkIP": f"10.0.{i // 250}.{i % 250 + 2}",
                            "stackType": "IPV4_ONLY",
                        }
                    ],
                    "metadata": {
                        "fingerprint": "mY1r0e3Qv9E=",
                        "kind": "compute#metadata",
                        "items": [
                            {"key": "startup-script", "value": rng.choice(self._scripts)},
                            {"key": "ssh-keys", "value": rng.choice(self._ssh)},
                            {"key": "install-nvidia-driver", "value": "True"},
                        ],
                    },
                    "serviceAccounts": [
                        {
                            "email": f"trainer@{pid}.iam.gserviceaccount.com",
                            "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                        }
                    ],
                    "scheduling": {
                        "automaticRestart": False,
                        "onHostMaintenance": "TERMINATE",
                        "preemptible": False,
                        "provisioningModel": "STANDARD",
                    },
                    "shieldedInstanceConfig": {
                        "enableSecureBoot": True,
                        "enableVtpm": True,
                        "enableIntegrityMonitoring": True,
                    },
                    "labels": {"job": f"run-{rng.randrange(10**6)}", "team": pid.split("-")[2]},
                    "selfLink": f"{base}/zones/{zone}/instances/{inst}",
                },
                pname,
                anc,
                "compute",
            )
        )
        w.line(
            _resource(
                f"//compute.googleapis.com/projects/{pid}/zones/{zone}/disks/{disk_name}",
                "compute.googleapis.com/Disk",
                {
                    "name": disk_name,
                    "id": str(number * 1000 + 500 + i),
                    "kind": "compute#disk",
                    "sizeGb": "200",
                    "status": "READY",
                    "type": f"{base}/zones/{zone}/diskTypes/pd-ssd",
                    "zone": f"{base}/zones/{zone}",
                    "sourceImage": "https://www.googleapis.com/compute/v1/projects/ml-images/global/images/cos-gpu-121",
                    "users": [f"{base}/zones/{zone}/instances/{inst}"],
                    "physicalBlockSizeBytes": "4096",
                    "labelFingerprint": "42WmSpB8rSM=",
                    "selfLink": f"{base}/zones/{zone}/disks/{disk_name}",
                },
                pname,
                anc,
                "compute",
            )
        )

    def _security_policy(self, pid: str, k: int, anc: list[str], pname: str) -> None:
        w, rng = self.w, self.rng
        policy = f"ml-endpoints-{k}"
        rules: list[dict[str, Any]] = []
        for p in range(rng.randint(3, 12)):
            rules.append(
                {
                    "priority": 1000 + p * 10,
                    "action": "allow",
                    "description": f"trusted range {p}",
                    "preview": False,
                    "match": {
                        "versionedExpr": "SRC_IPS_V1",
                        "config": {"srcIpRange": [f"10.{p}.0.0/16", f"203.0.113.{p * 16}/28"]},
                    },
                }
            )
        rules.append(
            {
                "priority": 900,
                "action": "deny(403)",
                "description": "OWASP",
                "preview": False,
                "match": {"expr": {"expression": "evaluatePreconfiguredExpr('sqli-v33-stable')"}},
            }
        )
        if rng.random() < RATE_ARMOR_NO_RATE_LIMIT:
            w.stats.violations["armor_no_rate_limit"] += 1
        else:
            rules.append(
                {
                    "priority": 800,
                    "action": "throttle",
                    "description": "per-client limit on predictions",
                    "preview": False,
                    "match": {"expr": {"expression": "request.path.matches('/v1/projects/.*:predict')"}},
                    "rateLimitOptions": {
                        "conformAction": "allow",
                        "exceedAction": "deny(429)",
                        "enforceOnKey": "IP",
                        "rateLimitThreshold": {"count": 600, "intervalSec": 60},
                    },
                }
            )
        if rng.random() < RATE_ARMOR_OPEN_ALLOW:
            rules.append(
                {
                    "priority": 500,
                    "action": "allow",
                    "description": "temporary",
                    "preview": False,
                    "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRange": ["0.0.0.0/0"]}},
                }
            )
            w.stats.violations["armor_open_allow"] += 1
        _write_armor_policy(w, rng, pid, policy, rules, pname, anc, adaptive=True)

    # -- GKE ----------------------------------------------------------------------------------------------------------
    def _cluster(self, pid: str, number: int, region: str, anc: list[str], pname: str) -> None:
        w, rng = self.w, self.rng
        cpath = f"projects/{pid}/locations/{region}/clusters/training"
        cname = f"//container.googleapis.com/{cpath}"
        w.line(
            _resource(
                cname,
                "container.googleapis.com/Cluster",
                {
                    "name": "training",
                    "location": region,
                    "status": "RUNNING",
                    "currentMasterVersion": "1.31.4-gke.1256000",
                    "network": "vpc",
                    "subnetwork": region,
                    "privateClusterConfig": {"enablePrivateNodes": True, "masterIpv4CidrBlock": "172.16.0.0/28"},
                    "masterAuthorizedNetworksConfig": {"enabled": True, "cidrBlocks": [{"cidrBlock": "10.0.0.0/8"}]},
                    "workloadIdentityConfig": {"workloadPool": f"{pid}.svc.id.goog"},
                    "networkPolicy": {"enabled": True, "provider": "CALICO"},
                    "nodePools": [
                        {
                            "name": f"pool-{p}",
                            "initialNodeCount": 3,
                            "config": {
                                "machineType": "a2-highgpu-1g",
                                "diskSizeGb": 200,
                                "oauthScopes": ["https://www.googleapis.com/auth/cloud-platform"],
                                "serviceAccount": f"trainer@{pid}.iam.gserviceaccount.com",
                                "workloadMetadataConfig": {"mode": "GKE_METADATA"},
                                "shieldedInstanceConfig": {"enableSecureBoot": True},
                            },
                            "autoscaling": {"enabled": True, "minNodeCount": 0, "maxNodeCount": 64},
                        }
                        for p in range(3)
                    ],
                    "masterAuth": {"clusterCaCertificate": rng.choice(self._ssh)[:1200]},
                    "selfLink": f"https://container.googleapis.com/v1/{cpath}",
                },
                pname,
                anc,
                "container",
            )
        )
        k8s = f"{cname}/k8s"
        for role in (
            "admin",
            "edit",
            "view",
            "system:aggregate-to-admin",
            "system:node",
            "system:kube-scheduler",
            "system:controller:namespace-controller",
            "system:basic-user",
        ):
            self._k8s(
                f"{k8s}/rbac.authorization.k8s.io/clusterroles/{role}",
                "rbac.authorization.k8s.io/ClusterRole",
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {
                        "name": role,
                        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
                    },
                    "rules": [
                        {
                            "apiGroups": ["", "apps", "batch"],
                            "resources": ["pods", "deployments", "jobs", "configmaps", "services"],
                            "verbs": ["get", "list", "watch"],
                        }
                    ],
                },
                anc,
                pname,
            )
        crbs: list[tuple[str, str, list[dict[str, Any]]]] = [
            (
                "cluster-admin",
                "cluster-admin",
                [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:masters"}],
            ),
            (
                "system:basic-user",
                "system:basic-user",
                [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:authenticated"}],
            ),
            (
                "system:node",
                "system:node",
                [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:nodes"}],
            ),
            (
                "system:kube-scheduler",
                "system:kube-scheduler",
                [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "system:kube-scheduler"}],
            ),
            (
                "system:controller:namespace-controller",
                "system:controller:namespace-controller",
                [{"kind": "ServiceAccount", "name": "namespace-controller", "namespace": "kube-system"}],
            ),
        ]
        if rng.random() < self.p.cluster_admin:
            crbs.append(
                (
                    "oncall-admin",
                    "cluster-admin",
                    [
                        {
                            "kind": "User",
                            "apiGroup": "rbac.authorization.k8s.io",
                            "name": f"oncall{rng.randrange(50)}@{DOMAIN}",
                        }
                    ],
                )
            )
            w.stats.violations["cluster_admin_for_human"] += 1
        for binding, role, subjects in crbs:
            self._k8s(
                f"{k8s}/rbac.authorization.k8s.io/clusterrolebindings/{binding}",
                "rbac.authorization.k8s.io/ClusterRoleBinding",
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": binding},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": subjects,
                },
                anc,
                pname,
            )
        for t in range(rng.randint(4, 16)):
            self._tenant(k8s, f"tenant-{t:02d}", anc, pname)

    def _tenant(self, k8s: str, ns: str, anc: list[str], pname: str) -> None:
        w, rng = self.w, self.rng
        nsname = f"{k8s}/namespaces/{ns}"
        self._k8s(
            nsname,
            "k8s.io/Namespace",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"tenant": ns, "kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            },
            anc,
            pname,
        )
        self._k8s(
            f"{nsname}/rbac.authorization.k8s.io/roles/{ns}-developer",
            "rbac.authorization.k8s.io/Role",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": f"{ns}-developer", "namespace": ns},
                "rules": [
                    {
                        "apiGroups": ["", "apps", "batch"],
                        "resources": ["pods", "pods/log", "deployments", "jobs", "configmaps"],
                        "verbs": ["get", "list", "watch", "create", "update", "delete"],
                    }
                ],
            },
            anc,
            pname,
        )
        for rb, role_kind, role, subjects in (
            (
                f"{ns}-developers",
                "Role",
                f"{ns}-developer",
                [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": f"{ns}-devs@{DOMAIN}"}],
            ),
            (
                f"{ns}-pipelines",
                "ClusterRole",
                "edit",
                [{"kind": "ServiceAccount", "name": "pipeline", "namespace": ns}],
            ),
            *self._tenant_mistakes(ns),
        ):
            self._k8s(
                f"{nsname}/rbac.authorization.k8s.io/rolebindings/{rb}",
                "rbac.authorization.k8s.io/RoleBinding",
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": rb, "namespace": ns},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
                    "subjects": subjects,
                },
                anc,
                pname,
            )
        if rng.random() < self.p.no_quota:
            w.stats.violations["tenant_without_quota"] += 1
        else:
            self._k8s(
                f"{nsname}/resourcequotas/compute",
                "k8s.io/ResourceQuota",
                {
                    "apiVersion": "v1",
                    "kind": "ResourceQuota",
                    "metadata": {"name": "compute", "namespace": ns},
                    "spec": {
                        "hard": {"requests.cpu": "64", "requests.memory": "256Gi", "requests.nvidia.com/gpu": "8"}
                    },
                },
                anc,
                pname,
            )
        if rng.random() < self.p.no_netpol:
            w.stats.violations["tenant_without_default_deny"] += 1
        else:
            self._k8s(
                f"{nsname}/networking.k8s.io/networkpolicies/default-deny",
                "networking.k8s.io/NetworkPolicy",
                {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": {"name": "default-deny", "namespace": ns},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
                },
                anc,
                pname,
            )
        for p in range(rng.randint(2, 6)):
            pod = f"trainer-{p}-{rng.getrandbits(20):05x}"
            self._k8s(
                f"{nsname}/pods/{pod}",
                "k8s.io/Pod",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod,
                        "namespace": ns,
                        "labels": {"app": "trainer", "job": f"run-{p}"},
                        "annotations": {
                            "kubectl.kubernetes.io/last-applied-configuration": rng.choice(self._scripts)[:1500]
                        },
                    },
                    "spec": {
                        "serviceAccountName": "pipeline",
                        "containers": [
                            {
                                "name": "trainer",
                                "image": f"us-docker.pkg.dev/{ns}/images/trainer:{p}",
                                "args": ["--epochs=40", "--batch-size=512"],
                                "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "64Gi"}},
                                "env": [{"name": f"VAR_{e}", "value": f"value-{e}"} for e in range(12)],
                            }
                        ],
                    },
                    "status": {"phase": "Running", "podIP": f"10.4.{p}.{rng.randrange(250)}"},
                },
                anc,
                pname,
            )

    def _tenant_mistakes(self, ns: str) -> list[tuple[str, str, str, list[dict[str, Any]]]]:
        """RoleBindings a messy tenant adds: its developers as cluster-admin of the namespace, everyone as viewer."""
        rng = self.rng
        if not self.p.tenant_admin or rng.random() >= self.p.tenant_admin:
            return []
        self.w.stats.violations["tenant_rbac_mistake"] += 1
        return [
            (
                f"{ns}-devs-admin",
                "ClusterRole",
                "cluster-admin",
                [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": f"dev{rng.randrange(99)}@{DOMAIN}"}],
            ),
            (
                f"{ns}-everyone",
                "ClusterRole",
                "view",
                [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:authenticated"}],
            ),
        ]

    # -- messy Cloud Armor ------------------------------------------------------------------------------------------
    def _src_range(self, near: list[str]) -> str:
        """A source range: trusted, public, IPv6, or inside one seen before in the policy (overlaps and shadows)."""
        rng = self.rng
        roll = rng.random()
        if near and roll < 0.25:
            base = rng.choice(near)
            if ":" not in base and "/" in base:
                net, bits = base.split("/")
                bits_n = int(bits)
                if bits_n < 32:
                    a, b, c, d = (int(x) for x in net.split("."))
                    sub = min(32, bits_n + rng.randint(1, 8))
                    host = rng.getrandbits(32 - bits_n)
                    addr = (((a << 24) | (b << 16) | (c << 8) | d) | host) & ~((1 << (32 - sub)) - 1) & 0xFFFFFFFF
                    return f"{addr >> 24}.{(addr >> 16) & 255}.{(addr >> 8) & 255}.{addr & 255}/{sub}"
            return base
        if roll < 0.45:
            plen = rng.choice((16, 20, 24))
            third = rng.randrange(256) & (0xFF << (24 - plen)) & 0xFF
            return f"10.{rng.randrange(256)}.{third}.0/{plen}"
        if roll < 0.55:
            return f"203.0.113.{rng.randrange(16) * 16}/28"
        if roll < 0.8:
            return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}/32"
        if roll < 0.9:
            return f"2001:db8:{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}::/64"
        return f"2a00:{rng.randrange(1 << 16):x}::/{rng.choice((32, 48))}"

    def _messy_security_policy(self, pid: str, k: int, anc: list[str], pname: str) -> None:
        w, rng = self.w, self.rng
        policy = f"edge-{k}"
        n_rules = min(200, max(5, int(rng.paretovariate(1.2) * 14)))
        rules: list[dict[str, Any]] = []
        seen: list[str] = []
        priority = 100
        for p in range(n_rules - 1):
            priority += rng.choice((0, 10, 10, 10, 20, 100)) if p else 0
            if rng.random() < 0.12:
                rules.append(
                    {
                        "priority": priority,
                        "action": rng.choice(("deny(403)", "deny(404)", "throttle")),
                        "description": f"waf {p}",
                        "preview": rng.random() < 0.3,
                        "match": {
                            "expr": {
                                "expression": rng.choice(
                                    (
                                        "evaluatePreconfiguredExpr('sqli-v33-stable')",
                                        "evaluatePreconfiguredExpr('xss-v33-stable')",
                                        "origin.region_code == 'KP'",
                                        "request.path.matches('/admin/.*')",
                                    )
                                )
                            }
                        },
                        **(
                            {
                                "rateLimitOptions": {
                                    "conformAction": "allow",
                                    "exceedAction": "deny(429)",
                                    "enforceOnKey": "IP",
                                    "rateLimitThreshold": {"count": 600, "intervalSec": 60},
                                }
                            }
                            if rng.random() < 0.5
                            else {}
                        ),
                    }
                )
                continue
            ranges = [self._src_range(seen) for _ in range(rng.randint(1, 10))]
            seen.extend(r for r in ranges if rng.random() < 0.3)
            if rng.random() < 0.01:
                ranges.append("0.0.0.0/0")
            rules.append(
                {
                    "priority": priority,
                    "action": rng.choice(("allow", "allow", "deny(403)", "deny(404)", "deny(502)")),
                    "description": f"rule {p}",
                    "preview": rng.random() < 0.05,
                    "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRange": ranges}},
                }
            )
            w.stats.violations["armor_rules"] += 1
        _write_armor_policy(w, rng, pid, policy, rules, pname, anc, adaptive=False)

    def _k8s(self, name: str, asset_type: str, obj: dict[str, Any], anc: list[str], pname: str) -> None:
        self.w.line(_resource(name, asset_type, obj, pname, anc, "k8s"))


def generate(
    n_assets: int, output: str | Path, *, seed: int = 7, compress: bool = False, profile: str = "tidy"
) -> Stats:
    """Write `n_assets` CAI export lines to `output` (gzip when `compress`); the same seed and profile give the same
    bytes."""
    if n_assets < 1:
        raise ValueError("the number of assets must be at least 1")
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw:
        fh = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0)) if compress else raw
        writer = _Writer(fh, n_assets)
        with contextlib.suppress(_Full):
            _Org(writer, random.Random(seed), PROFILES[profile]).run()
        writer.flush()
        if fh is not raw:
            fh.close()
    return writer.stats


def iter_lines(path: str | Path) -> Iterator[bytes]:
    """The lines of a generated file, gzip or not (for tests)."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    fh = cast(IO[bytes], gzip.open(path, "rb")) if gz else open(path, "rb")  # noqa: SIM115 - closed below
    with fh:
        yield from fh


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--assets", "-n", type=int, required=True, help="number of asset lines to write")
    ap.add_argument("--output", "-o", required=True, help="output file (.ndjson, or .ndjson.gz with --gzip)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--gzip", action="store_true", help="gzip the output")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="tidy", help="tidy (default) or messy")
    args = ap.parse_args(argv)
    stats = generate(args.assets, args.output, seed=args.seed, compress=args.gzip, profile=args.profile)
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(stats.to_dict())).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
