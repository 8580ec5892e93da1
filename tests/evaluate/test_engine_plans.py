"""The engine's per-type plans: what readers may skip, checks shared by rules with equal params, held assets."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec

from auditor.evaluate.engine import Engine
from auditor.evaluate.rulebook import load_file
from auditor.model import Asset

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RULES = """\
rules:
  - id: public-critical
    check: iam.forbidden_members
    severity: critical
    match: {ancestries: ["organizations/1/**"]}
    params: {members: [allUsers]}
  - id: public-everywhere
    check: iam.forbidden_members
    severity: low
    params: {members: [allUsers]}
    exemptions:
      - {resource: "//storage.googleapis.com/site", reason: public site, owner: web}
  - id: public-or-all-authenticated
    check: iam.forbidden_members
    severity: high
    params: {members: [allUsers, allAuthenticatedUsers]}
  - id: cluster-admin
    check: rbac.no_powerful_role_binding
    severity: critical
"""


def bucket(name: str, members: object, org: str = "1") -> Asset:
    policy = msgspec.json.encode({"bindings": [{"role": "roles/storage.objectViewer", "members": members}]})
    return Asset(
        f"//storage.googleapis.com/{name}",
        "storage.googleapis.com/Bucket",
        resource=msgspec.Raw(b'{"name": "%s"}' % name.encode()),
        iam_policy=msgspec.Raw(policy),
        ancestors=("projects/5", f"organizations/{org}"),
    )


def engine(tmp_path: Path) -> Engine:
    p = tmp_path / "r.yaml"
    p.write_text(RULES)
    return Engine(load_file(p), now=NOW)


def test_wants_says_which_records_a_reader_may_skip(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    assert eng.wants("storage.googleapis.com/Bucket", True)  # IAM rules read every policy
    assert not eng.wants("storage.googleapis.com/Bucket", False)  # ...and nothing else of a bucket
    assert not eng.wants("compute.googleapis.com/Instance", False)
    assert eng.wants("rbac.authorization.k8s.io/ClusterRoleBinding", False)
    assert eng.wants("rbac.authorization.k8s.io/ClusterRole", False)  # context of the cluster-admin check


def test_rules_sharing_a_check_each_report_with_their_own_scope_and_exemptions(tmp_path: Path) -> None:
    result = engine(tmp_path).evaluate(
        [bucket("data", ["allUsers"]), bucket("site", ["allUsers"]), bucket("other", ["allUsers"], org="2")]
    )
    got = sorted((f.rule, f.asset.rsplit("/", 1)[1], f.exempted is not None) for f in result.findings)
    assert got == [
        ("public-critical", "data", False),
        ("public-critical", "site", False),
        ("public-everywhere", "data", False),
        ("public-everywhere", "other", False),
        ("public-everywhere", "site", True),
        ("public-or-all-authenticated", "data", False),
        ("public-or-all-authenticated", "other", False),
        ("public-or-all-authenticated", "site", False),
    ]


def test_a_failing_shared_check_is_reported_for_each_rule(tmp_path: Path) -> None:
    result = engine(tmp_path).evaluate([bucket("bad", 5)])
    assert sorted(e.rule for e in result.errors) == [
        "public-critical",
        "public-everywhere",
        "public-or-all-authenticated",
    ]
    assert not result.findings


def test_held_assets_keep_raw_json_and_decode_again(tmp_path: Path) -> None:
    binding = Asset(
        "//container.googleapis.com/clusters/c/k8s/rbac.authorization.k8s.io/clusterrolebindings/admins",
        "rbac.authorization.k8s.io/ClusterRoleBinding",
        resource=msgspec.Raw(
            msgspec.json.encode(
                {
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "admins"},
                    "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
                    "subjects": [{"kind": "User", "name": "alice@example.com"}],
                }
            )
        ),
    )
    result = engine(tmp_path).evaluate([binding])
    assert [f.rule for f in result.findings] == ["cluster-admin"]
    assert binding._res is None and binding._res_raw is not None  # released: bytes kept, dicts dropped
    assert binding.resource["metadata"]["name"] == "admins"
