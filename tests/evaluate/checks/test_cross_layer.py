"""Across layers: project-, folder- and organization-level GKE IAM grants and the clusters they reach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from auditor.collect.files import iter_file_assets
from auditor.evaluate.engine import Engine
from auditor.evaluate.rulebook import load_file, load_rules, shipped_rules_dir
from auditor.model import Asset, Finding

CRM = "//cloudresourcemanager.googleapis.com/"
PROJECT = "cloudresourcemanager.googleapis.com/Project"
FOLDER = "cloudresourcemanager.googleapis.com/Folder"
CLUSTER = "container.googleapis.com/Cluster"


def scan(tmp_path: Path, *assets: Asset, params: dict[str, Any] | None = None) -> list[Finding]:
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump([{"id": "gke", "check": "cross_layer.gke_iam_reaches_clusters", "severity": "high",
                                  "params": params or {}}]))
    result = Engine(load_file(f)).evaluate(assets)
    assert not result.errors, result.errors
    return result.findings


def project(num: str, pid: str, bindings: list[dict[str, Any]], parent: str | None = None,
            ancestors: tuple[str, ...] = ()) -> Asset:
    data: dict[str, Any] = {"projectNumber": num, "projectId": pid}
    if parent:
        kind, ident = parent.split("/")
        data["parent"] = {"type": kind.rstrip("s"), "id": ident}
    return Asset(f"{CRM}projects/{num}", PROJECT, resource=data, iam_policy={"bindings": bindings},
                 ancestors=ancestors)


def cluster(project_ref: str, name: str, ancestors: tuple[str, ...] = (), location: str = "locations/us-central1",
            v1: bool = False) -> Asset:
    prefix = "//container.googleapis.com/v1/" if v1 else "//container.googleapis.com/"
    return Asset(f"{prefix}projects/{project_ref}/{location}/clusters/{name}", CLUSTER, resource={"name": name},
                 ancestors=ancestors)


ADMIN = {"role": "roles/container.admin", "members": ["group:platform@example.com"]}
DEV = {"role": "roles/container.developer", "members": ["user:dev@example.com"],
       "condition": {"title": "weekdays", "expression": "true"}}


def test_project_grant_lists_clusters_named_by_id_or_number(tmp_path: Path) -> None:
    train = project("111", "ml-train", [ADMIN, DEV, {"role": "roles/viewer", "members": ["user:v@example.com"]}])
    other = project("222", "ml-serve", [{"role": "roles/container.viewer", "members": ["user:v@example.com"]}])
    assets = [
        train,
        other,
        cluster("ml-train", "gpu-a"),                     # by project id
        cluster("111", "gpu-b", location="zones/us-central1-a", v1=True),  # by number, zonal, v1 name
        cluster("ml-serve", "serve"),
    ]
    found = scan(tmp_path, *assets)
    assert {(f.details["role"], f.details["member"], f.details.get("condition")) for f in found} == {
        ("roles/container.admin", "group:platform@example.com", None),
        ("roles/container.developer", "user:dev@example.com", "weekdays"),
    }
    for f in found:
        assert f.asset == train.name
        assert f.details["clusters"] == ["projects/111/zones/us-central1-a/clusters/gpu-b",
                                         "projects/ml-train/locations/us-central1/clusters/gpu-a"]
        assert f.details["cluster_count"] == 2 and "2 cluster(s)" in f.message


def test_folder_grant_reaches_clusters_below_it(tmp_path: Path) -> None:
    folder = Asset(f"{CRM}folders/5", FOLDER, resource={"parent": "organizations/1"},
                   iam_policy={"bindings": [ADMIN]})
    # one cluster knows its ancestors; the other is tied through the Project asset's parent
    a = cluster("ml-train", "a", ancestors=("projects/111", "folders/5", "organizations/1"))
    b = cluster("ml-eval", "b")
    outside = cluster("ml-web", "c", ancestors=("projects/333", "folders/6", "organizations/1"))
    eval_project = project("444", "ml-eval", [], parent="folders/5")
    found = scan(tmp_path, folder, a, b, outside, eval_project)
    assert len(found) == 1
    assert found[0].details["clusters"] == ["projects/ml-eval/locations/us-central1/clusters/b",
                                            "projects/ml-train/locations/us-central1/clusters/a"]
    assert found[0].details["level"] == "folder"


def test_compliant_and_without_clusters(tmp_path: Path) -> None:
    per_cluster_rbac = project("111", "ml-train", [{"role": "roles/container.clusterViewer",
                                                    "members": ["group:ml@example.com"]}])
    assert scan(tmp_path, per_cluster_rbac, cluster("ml-train", "a")) == []
    empty = project("999", "empty", [ADMIN])
    assert scan(tmp_path, empty) == []
    found = scan(tmp_path, empty, params={"include_without_clusters": True})
    assert len(found) == 1 and found[0].details["clusters"] == [] and "every cluster created in it" in found[0].message
    excepted = scan(tmp_path, project("111", "ml-train", [ADMIN]), cluster("ml-train", "a"),
                    params={"except_members": ["group:platform@example.com"]})
    assert excepted == []


def test_forseti_dump_ties_the_cluster_to_its_project(public_data: Path) -> None:
    # The dump names the cluster //container.googleapis.com/v1/projects/project1/... and the project by number 1041.
    f = public_data / "cai"
    assets = list(iter_file_assets(f))
    granted = next(a for a in assets if a.name.endswith("projects/1041") and a.has_iam_policy)
    policy = dict(granted.iam_policy)
    dev = {"role": "roles/container.developer", "members": ["user:d@forseti.test"]}
    policy["bindings"] = [*policy["bindings"], dev]
    patched = Asset(granted.name, granted.asset_type, resource=granted.resource, iam_policy=policy)
    assets = [patched if a is granted else a for a in assets]
    found = [f for f in _scan_assets(assets) if f.details.get("member") == "user:d@forseti.test"]
    assert len(found) == 1
    assert found[0].details["clusters"] == ["projects/project1/locations/us-central1-a/clusters/cluster-1"]


def _scan_assets(assets: list[Asset]) -> list[Finding]:
    rules = [r for r in load_rules([shipped_rules_dir()]) if r.rule.check == "cross_layer.gke_iam_reaches_clusters"]
    assert rules, "the shipped pack has the across-layer rule"
    result = Engine(rules).evaluate(assets)
    assert not result.errors
    return result.findings


# -- Workload Identity ------------------------------------------------------------------------------------------------
SA_TYPE = "iam.googleapis.com/ServiceAccount"


def service_account(email: str, members: list[str], role: str = "roles/iam.workloadIdentityUser") -> Asset:
    project_id = email.split("@")[1].split(".")[0]
    return Asset(f"//iam.googleapis.com/projects/{project_id}/serviceAccounts/{email}", SA_TYPE,
                 iam_policy={"bindings": [{"role": role, "members": members}]})


def wi_scan(tmp_path: Path, *assets: Asset) -> list[Finding]:
    f = tmp_path / "wi.yaml"
    f.write_text("- {id: wi, check: cross_layer.workload_identity_privileges, severity: high}\n")
    result = Engine(load_file(f)).evaluate(assets)
    assert not result.errors, result.errors
    return result.findings


def test_workload_identity_to_an_admin_account(tmp_path: Path) -> None:
    trainer = "trainer@ml-train.iam.gserviceaccount.com"
    reader = "reader@ml-train.iam.gserviceaccount.com"
    p = project("111", "ml-train", [
        {"role": "roles/editor", "members": [f"serviceAccount:{trainer}"]},
        {"role": "roles/storage.admin", "members": [f"serviceAccount:{trainer}"],
         "condition": {"title": "ckpt", "expression": "true"}},
        {"role": "roles/storage.objectViewer", "members": [f"serviceAccount:{reader}"]},
    ])
    ksa = "serviceAccount:ml-train.svc.id.goog[tenant-a/trainer]"
    found = wi_scan(
        tmp_path,
        p,
        service_account(trainer, [ksa, "group:ci@example.com"]),   # the group is not a Kubernetes identity
        service_account(reader, ["serviceAccount:ml-train.svc.id.goog[tenant-a/reader]"]),  # compliant: viewer only
    )
    assert len(found) == 1
    assert found[0].details["member"] == ksa and found[0].details["role"] == "roles/iam.workloadIdentityUser"
    assert found[0].details["grants"] == ["roles/editor on projects/111",
                                          "roles/storage.admin on projects/111 (condition: ckpt)"]
    # without the project's policy in the snapshot there is nothing to say about the account's power
    assert wi_scan(tmp_path, service_account(trainer, [ksa])) == []


def test_workload_identity_finding_knows_whether_a_cluster_has_it_on(tmp_path: Path) -> None:
    trainer = "trainer@ml-train.iam.gserviceaccount.com"
    p = project("111", "ml-train", [{"role": "roles/editor", "members": [f"serviceAccount:{trainer}"]}])
    sa = service_account(trainer, ["serviceAccount:ml-train.svc.id.goog[tenant-a/trainer]"])
    on = Asset("//container.googleapis.com/projects/ml-train/locations/us-central1/clusters/gpu", CLUSTER,
               resource={"name": "gpu", "workloadIdentityConfig": {"workloadPool": "ml-train.svc.id.goog"}})
    older = Asset("//container.googleapis.com/v1/projects/ml-train/zones/us-central1-a/clusters/old", CLUSTER,
                  resource={"name": "old", "workloadIdentityConfig": {"identityNamespace": "ml-train.svc.id.goog"}})
    off = Asset("//container.googleapis.com/projects/ml-train/locations/us-central1/clusters/legacy", CLUSTER,
                resource={"name": "legacy"})
    other_pool = Asset("//container.googleapis.com/projects/ml-serve/locations/us-central1/clusters/serve", CLUSTER,
                       resource={"name": "serve", "workloadIdentityConfig": {"workloadPool": "ml-serve.svc.id.goog"}})

    # the service account streams by before the clusters: they are context, read at the end
    [f] = wi_scan(tmp_path, p, sa, on, older, off, other_pool)
    assert f.details["workload_identity_clusters"] == [
        "projects/ml-train/locations/us-central1-a/clusters/old",
        "projects/ml-train/locations/us-central1/clusters/gpu",
    ]
    assert "Workload Identity is on for ml-train.svc.id.goog" in f.message

    [dormant] = wi_scan(tmp_path, p, sa, off, other_pool)
    assert dormant.details["workload_identity_clusters"] == []
    assert "no cluster of the snapshot has Workload Identity on for ml-train.svc.id.goog" in dormant.message
    assert dormant.id == f.id  # the same finding, whatever the clusters say
