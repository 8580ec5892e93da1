"""The offline readers: CAI exports in every form and spelling, Kubernetes lists, and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from auditor.collect import SourceOptions, open_source
from auditor.collect.files import FileSource, iter_file_assets
from auditor.errors import SourceError
from auditor.vocabulary import CLUSTER_ROLE_BINDING, NAMESPACE, ROLE_BINDING

PROJECT_LINE = {
    "name": "//cloudresourcemanager.googleapis.com/projects/1",
    "asset_type": "cloudresourcemanager.googleapis.com/Project",
    "iam_policy": {"bindings": [{"role": "roles/owner", "members": ["user:a@x.example"]}], "etag": "e1"},
    "ancestors": ["projects/1", "organizations/9"],
    "update_time": "2026-01-01T00:00:00Z",
}
API_LINE = {
    "name": "//storage.googleapis.com/b1",
    "assetType": "storage.googleapis.com/Bucket",
    "iamPolicy": {"bindings": [{"role": "roles/storage.objectViewer", "members": ["allUsers"]}]},
    "resource": {"data": {"name": "b1"}},
    "updateTime": "2026-01-02T00:00:00Z",
}


def read(path: Path, **kw: object) -> tuple[list, FileSource]:
    src = FileSource(str(path), SourceOptions(**kw))  # type: ignore[arg-type]
    return list(src.assets()), src


def test_ndjson_in_both_spellings(tmp_path: Path) -> None:
    f = tmp_path / "export.json"
    f.write_text(json.dumps(PROJECT_LINE) + "\n\n" + json.dumps(API_LINE) + "\n")
    assets, src = read(f)
    assert [a.asset_type for a in assets] == [PROJECT_LINE["asset_type"], API_LINE["assetType"]]
    project, bucket = assets
    assert project.iam_policy["bindings"][0]["role"] == "roles/owner"
    assert project.ancestors == ("projects/1", "organizations/9")
    assert project.ancestry_path == "organizations/9/projects/1"
    assert project.resource == {}
    assert bucket.resource == {"name": "b1"}
    assert bucket.iam_policy["bindings"][0]["members"] == ["allUsers"]
    assert bucket.update_time == "2026-01-02T00:00:00Z"
    assert src.status.complete and src.status.assets == 2


def test_gzip_json_array_and_api_listing(tmp_path: Path) -> None:
    arr = tmp_path / "array.json.gz"
    with gzip.open(arr, "wt") as fh:
        json.dump([PROJECT_LINE, API_LINE], fh, indent=2)
    listing = tmp_path / "listing.json"
    listing.write_text(json.dumps({"assets": [API_LINE], "readTime": "2026-01-01T00:00:00Z"}, indent=2))
    assert [a.name for a in iter_file_assets(arr)] == [PROJECT_LINE["name"], API_LINE["name"]]
    assert [a.name for a in iter_file_assets(listing)] == [API_LINE["name"]]


def test_folder_reads_every_export_file_sorted(tmp_path: Path) -> None:
    (tmp_path / "b.ndjson").write_text(json.dumps(API_LINE) + "\n")
    (tmp_path / "sub").mkdir()
    with gzip.open(tmp_path / "sub" / "a.json.gz", "wt") as fh:
        fh.write(json.dumps(PROJECT_LINE) + "\n")
    (tmp_path / "notes.txt").write_text("not an export")
    names = [a.name for a in iter_file_assets(tmp_path)]
    assert sorted(names) == sorted([PROJECT_LINE["name"], API_LINE["name"]])


def test_malformed_line_is_reported_with_file_and_line_and_skipped(tmp_path: Path) -> None:
    f = tmp_path / "export.json"
    f.write_text(json.dumps(PROJECT_LINE) + "\n{not json\n" + json.dumps(API_LINE) + "\n")
    seen: list[str] = []
    assets, src = read(f, on_problem=seen.append)
    assert len(assets) == 2
    assert src.status.skipped == 1
    assert seen and seen[0].startswith(f"{f}:2: malformed asset line")
    assert not src.status.complete  # a skipped record makes the snapshot partial, never silently complete
    assert "1 malformed record(s) skipped" in src.status.failed_types["*"]


def test_unknown_spelling_names_the_asset(tmp_path: Path) -> None:
    f = tmp_path / "export.json"
    odd = {"name": "//x/1", "type": "storage.googleapis.com/Bucket"}
    f.write_text(json.dumps(PROJECT_LINE) + "\n" + json.dumps(odd) + "\n")
    _, src = read(f)
    expected = f"{f}:2: asset //x/1 has no 'asset_type' (export spelling) or 'assetType' (API spelling)"
    assert src.status.errors == [expected]


def test_strict_makes_a_malformed_line_fatal(tmp_path: Path) -> None:
    f = tmp_path / "export.json"
    f.write_text(json.dumps(PROJECT_LINE) + "\n[1, 2\n")
    with pytest.raises(SourceError, match=r"export.json:2: malformed asset line"):
        read(f, strict=True)


def test_missing_source_and_unknown_scheme() -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source("/nonexistent/export.json")
    with pytest.raises(SourceError, match="unknown source scheme 'ftp'"):
        open_source("ftp://somewhere")


def test_kubectl_list_becomes_cai_shaped_assets(tmp_path: Path) -> None:
    f = tmp_path / "rbac.yaml"
    f.write_text(
        """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: tenant-a, labels: {tenant: a}}
- apiVersion: rbac.authorization.k8s.io/v1
  kind: RoleBinding
  metadata: {name: rb, namespace: tenant-a}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}
  subjects: [{kind: User, name: bob}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: crb}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
- apiVersion: v1
  kind: Pod
  metadata: {name: ignored, namespace: tenant-a}
"""
    )
    assets, _ = read(f, cluster="projects/p/locations/l/clusters/c")
    prefix = "//container.googleapis.com/projects/p/locations/l/clusters/c/k8s"
    assert [(a.asset_type, a.name) for a in assets] == [
        (NAMESPACE, f"{prefix}/namespaces/tenant-a"),
        (ROLE_BINDING, f"{prefix}/namespaces/tenant-a/rbac.authorization.k8s.io/rolebindings/rb"),
        (CLUSTER_ROLE_BINDING, f"{prefix}/rbac.authorization.k8s.io/clusterrolebindings/crb"),
    ]
    assert assets[0].ancestors == ("projects/p",)
    assert assets[1].resource["subjects"] == [{"kind": "User", "name": "bob"}]


def test_bare_cluster_name_and_kubectl_json(tmp_path: Path) -> None:
    f = tmp_path / "rbac.json"
    f.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1"}}]}, indent=1))
    assets, _ = read(f)
    assert [a.name for a in assets] == ["//container.googleapis.com/clusters/local/k8s/namespaces/ns1"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("kind: List\nitems:\n  - kind: Role\n   metadata: {name: x}\n")
    with pytest.raises(SourceError, match=r"bad.yaml:4: not valid YAML"):
        read(f)


def test_shared_cai_dumps_and_bootstrap_rbac_read_completely(public_data: Path) -> None:
    assets, src = read(public_data / "cai")
    assert src.status.complete and src.status.skipped == 0
    by_type = {a.asset_type for a in assets}
    assert "compute.googleapis.com/SecurityPolicy" in by_type
    assert sum(1 for a in assets if a.has_iam_policy) == 22
    rbac, src = read(public_data / "k8s-bootstrap-rbac")
    assert src.status.complete
    assert len(rbac) == 31 + 10 + 38 + 38 + 7 + 7


def test_lazy_decoding_keeps_raw_bytes_until_asked(tmp_path: Path) -> None:
    f = tmp_path / "export.json"
    f.write_text(json.dumps(API_LINE) + "\n")
    (asset,) = iter_file_assets(f)
    assert asset._res is None and asset._res_raw is not None  # nothing decoded yet
    assert asset.resource == {"name": "b1"}
    assert asset._res_raw is None
