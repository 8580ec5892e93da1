"""The shipped RBAC pack is silent on the real Kubernetes bootstrap RBAC, and not because it sees nothing.

The files in tests/data/k8s-bootstrap-rbac/ are the kube-apiserver's default roles and bindings (testdata of the
Kubernetes project), read through the real file reader. They are not mutually consistent (SOURCES.md there): a
controller binding names a ClusterRole that is not in the set, which must not turn into an error or a finding.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import yaml

from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_file, shipped_rules_dir
from auditor.scan import ScanResult, run_scan
from auditor.vocabulary import CLUSTER_ROLE, CLUSTER_ROLE_BINDING, ROLE, ROLE_BINDING

CLUSTER = "projects/p/locations/us-central1/clusters/stock"

BAD_BINDINGS = """\
apiVersion: v1
kind: List
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: alice-admin}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
  subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice@example.com}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: everyone-edits}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
  subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: system:authenticated}]
"""


# The two bootstrap bindings of newer releases that the cluster-role-bindings.yaml at hand predates (SOURCES.md).
NEWER_BOOTSTRAP_BINDINGS = """\
apiVersion: v1
kind: List
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: "system:monitoring", labels: {kubernetes.io/bootstrapping: rbac-defaults}}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:monitoring"}
  subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:monitoring"}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: "system:service-account-issuer-discovery", labels: {kubernetes.io/bootstrapping: rbac-defaults}}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:service-account-issuer-discovery"}
  subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:serviceaccounts"}]
"""


def scan(source: Path, rules: Path) -> ScanResult:
    return run_scan([str(source)], load_file(rules), SourceOptions(cluster=CLUSTER, strict=True))


def rbac_pack() -> Path:
    return shipped_rules_dir() / "rbac.yaml"


def test_shipped_rbac_pack_is_silent_on_bootstrap_rbac(public_data: Path) -> None:
    result = scan(public_data / "k8s-bootstrap-rbac", rbac_pack())
    assert result.complete
    assert [f.message for f in result.findings] == []
    assert result.evaluation.errors == []
    # Every file was read: 69 ClusterRoles, 48 ClusterRoleBindings, 7 Roles and 7 RoleBindings.
    counts = Counter(result.evaluation.assets_by_type)
    assert counts[CLUSTER_ROLE] == 69 and counts[CLUSTER_ROLE_BINDING] == 48
    assert counts[ROLE] == 7 and counts[ROLE_BINDING] == 7


def test_silence_holds_when_system_bindings_are_judged_too(public_data: Path, tmp_path: Path) -> None:
    """With `system:` bindings judged, the default grants param is what keeps the bootstrap bindings quiet."""
    doc = yaml.safe_load(rbac_pack().read_text())
    public = next(r for r in doc["rules"] if r["check"] == "rbac.no_public_subjects")
    public["params"]["include_system_objects"] = True
    judged = tmp_path / "rbac.yaml"
    judged.write_text(yaml.safe_dump(doc))
    assert scan(public_data / "k8s-bootstrap-rbac", judged).findings == []
    newer = tmp_path / "newer"
    shutil.copytree(public_data / "k8s-bootstrap-rbac", newer)
    (newer / "newer-bindings.yaml").write_text(NEWER_BOOTSTRAP_BINDINGS)
    assert scan(newer, judged).findings == []
    assert scan(newer, rbac_pack()).findings == []
    # ...and without the defaults, the bootstrap bindings to system:authenticated/unauthenticated are reported.
    public["params"]["default_grants"] = {}
    judged.write_text(yaml.safe_dump(doc))
    found = {(f.details["binding"], f.details["subject"]) for f in scan(public_data / "k8s-bootstrap-rbac",
                                                                        judged).findings}
    assert found == {
        ("system:basic-user", "Group:system:authenticated"),
        ("system:discovery", "Group:system:authenticated"),
        ("system:public-info-viewer", "Group:system:authenticated"),
        ("system:public-info-viewer", "Group:system:unauthenticated"),
    }


def test_shipped_rbac_pack_fires_on_one_bad_binding_among_bootstrap_rbac(public_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "rbac"
    shutil.copytree(public_data / "k8s-bootstrap-rbac", folder)
    (folder / "zz-bad-bindings.yaml").write_text(BAD_BINDINGS)
    result = scan(folder, rbac_pack())
    found = sorted((f.rule, f.details["binding"], f.details["subject"]) for f in result.findings)
    assert found == [
        ("rbac-no-cluster-admin-for-humans", "alice-admin", "User:alice@example.com"),
        # edit (aggregated: secrets, exec, impersonation) for everyone: powerful, and granted to the public
        ("rbac-no-powerful-cluster-roles", "everyone-edits", "Group:system:authenticated"),
        ("rbac-no-public-subjects", "everyone-edits", "Group:system:authenticated"),
    ]
    assert all(f.asset.startswith(f"//container.googleapis.com/{CLUSTER}/k8s/") for f in result.findings)


HUMAN_BINDINGS = """\
apiVersion: v1
kind: List
items:
""" + "".join(
    f"""- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {{name: dana-{role}}}
  roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}
  subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: dana@example.com}}]
"""
    for role in ("admin", "edit", "view", "system:aggregate-to-view", "system:controller:job-controller")
)


def test_bootstrap_aggregated_roles_have_their_real_reach(public_data: Path, tmp_path: Path) -> None:
    """admin and edit carry no rules of their own in the bootstrap file: their reach is aggregated from the roles
    labelled aggregate-to-admin / aggregate-to-edit (secrets, pods/exec, impersonating service accounts). view
    reads no secrets; a controller's role creates pods but holds none of the powers."""
    folder = tmp_path / "rbac"
    shutil.copytree(public_data / "k8s-bootstrap-rbac", folder)
    (folder / "zz-humans.yaml").write_text(HUMAN_BINDINGS)
    result = scan(folder, rbac_pack())
    assert not [f for f in result.findings if f.rule == "rbac-no-cluster-admin-for-humans"]
    powerful = {f.details["binding"]: f for f in result.findings if f.rule == "rbac-no-powerful-cluster-roles"}
    assert sorted(powerful) == ["dana-admin", "dana-edit"]
    for f in powerful.values():
        assert f.severity == "high"  # powers, not every permission: below cluster-admin's critical
        assert "read secrets" in f.message and "exec into pods" in f.message and "impersonate" in f.message
        assert "every verb on every resource" not in f.message
