"""The example organization's hierarchy, helpers to write CAI export lines, and bulky assets no rule reads."""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

ORG_ID = "583920174615"
ORG = f"organizations/{ORG_ID}"
DOMAIN = "helix-ml.example"
UPDATE_TIME = "2026-11-20T08:00:00Z"

FOLDERS = {
    "platform": "210000000001",
    "research": "210000000002",
    "shared": "210000000003",
}

# project id -> (project number, folder name)
PROJECTS = {
    "ml-platform-prod": ("401000000001", "platform"),
    "ml-training-prod": ("401000000002", "platform"),
    "ml-research-sandbox": ("401000000003", "research"),
    "shared-networking": ("401000000004", "shared"),
    "data-lake-prod": ("401000000005", "shared"),
}

CRM = "//cloudresourcemanager.googleapis.com"


def number(project: str) -> str:
    return PROJECTS[project][0]


def ancestors(project: str | None = None, folder: str | None = None) -> list[str]:
    """CAI ancestors, from the asset upwards: projects/NUMBER, folders/ID, organizations/ID."""
    out: list[str] = []
    if project is not None:
        out.append(f"projects/{number(project)}")
        folder = PROJECTS[project][1]
    if folder is not None:
        out.append(f"folders/{FOLDERS[folder]}")
    out.append(ORG)
    return out


def etag(*parts: str) -> str:
    """A stable etag or fingerprint, base64 of 8 bytes like the real ones (the clients carry them as bytes)."""
    return base64.b64encode(hashlib.sha256("/".join(parts).encode()).digest()[:8]).decode()


def resource_line(
    name: str, asset_type: str, data: dict[str, Any], anc: list[str], *, parent: str | None = None
) -> dict[str, Any]:
    resource: dict[str, Any] = {"version": "v1", "data": data}
    if parent:
        resource["parent"] = parent
    return {"name": name, "asset_type": asset_type, "resource": resource, "ancestors": anc, "update_time": UPDATE_TIME}


def iam_line(name: str, asset_type: str, bindings: list[dict[str, Any]], anc: list[str], **extra: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {"version": 3 if any("condition" in b for b in bindings) else 1, "bindings": bindings,
                              "etag": etag(name, "iam")}
    policy.update(extra)
    return {"name": name, "asset_type": asset_type, "iam_policy": policy, "ancestors": anc, "update_time": UPDATE_TIME}


def hierarchy() -> list[dict[str, Any]]:
    out = [
        resource_line(
            f"{CRM}/{ORG}",
            "cloudresourcemanager.googleapis.com/Organization",
            {"name": ORG, "displayName": DOMAIN, "lifecycleState": "ACTIVE"},
            [ORG],
        )
    ]
    for fname, fid in FOLDERS.items():
        out.append(
            resource_line(
                f"{CRM}/folders/{fid}",
                "cloudresourcemanager.googleapis.com/Folder",
                {"name": f"folders/{fid}", "displayName": fname, "parent": ORG, "lifecycleState": "ACTIVE"},
                [f"folders/{fid}", ORG],
                parent=f"{CRM}/{ORG}",
            )
        )
    for pid, (num, folder) in PROJECTS.items():
        out.append(
            resource_line(
                f"{CRM}/projects/{num}",
                "cloudresourcemanager.googleapis.com/Project",
                {
                    "projectNumber": num,
                    "projectId": pid,
                    "lifecycleState": "ACTIVE",
                    "name": pid,
                    "parent": {"type": "folder", "id": FOLDERS[folder]},
                },
                ancestors(pid),
                parent=f"{CRM}/folders/{FOLDERS[folder]}",
            )
        )
    return out


def bulk_assets() -> list[dict[str, Any]]:
    """Assets no shipped rule reads: GPU training nodes, their disks, subnetworks. Real exports are mostly these."""
    rng = random.Random(7)
    out: list[dict[str, Any]] = []
    zones = ["us-central1-a", "us-central1-b", "us-central1-c"]
    for i in range(96):
        project = "ml-training-prod" if i % 3 else "ml-research-sandbox"
        zone = zones[i % 3]
        name = f"gke-training-a100-pool-{i:03d}"
        out.append(
            resource_line(
                f"//compute.googleapis.com/projects/{project}/zones/{zone}/instances/{name}",
                "compute.googleapis.com/Instance",
                {
                    "name": name,
                    "machineType": f"zones/{zone}/machineTypes/a2-highgpu-{rng.choice([1, 2, 4, 8])}g",
                    "status": "RUNNING",
                    "labels": {"goog-gke-node": "", "workload": "training"},
                    "metadata": {"items": [{"key": "kube-env", "value": "x" * rng.randint(200, 600)}]},
                    "serviceAccounts": [{"email": f"gke-nodes@{project}.iam.gserviceaccount.com"}],
                },
                ancestors(project),
            )
        )
        out.append(
            resource_line(
                f"//compute.googleapis.com/projects/{project}/zones/{zone}/disks/{name}",
                "compute.googleapis.com/Disk",
                {"name": name, "sizeGb": str(rng.choice([100, 200, 500])), "type": "pd-ssd", "status": "READY"},
                ancestors(project),
            )
        )
    for region in ("us-central1", "europe-west4", "asia-east1"):
        for pid in PROJECTS:
            out.append(
                resource_line(
                    f"//compute.googleapis.com/projects/{pid}/regions/{region}/subnetworks/{pid}-{region}",
                    "compute.googleapis.com/Subnetwork",
                    {"name": f"{pid}-{region}", "ipCidrRange": f"10.{rng.randint(0, 255)}.0.0/20", "region": region},
                    ancestors(pid),
                )
            )
    return out
