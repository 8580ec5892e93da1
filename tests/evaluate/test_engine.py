"""The engine: type index, ancestry match, exemptions (active, expired, stale), errors, stable ids."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from auditor.evaluate.engine import Engine
from auditor.evaluate.rulebook import load_file
from auditor.model import Asset

RULES = """\
rules:
  - id: no-public
    check: iam.forbidden_members
    severity: critical
    params: {members: [allUsers, allAuthenticatedUsers]}
    exemptions:
      - {resource: "//storage.googleapis.com/site-*", reason: public web site, owner: web, expires: 2026-12-31}
      - {resource: "//storage.googleapis.com/old-*", reason: legacy, owner: web, ticket: SEC-9, expires: 2026-01-31}
      - {resource: "//storage.googleapis.com/never-*", reason: unused, owner: web}
  - id: no-owner-in-org-1
    check: iam.banned_roles
    severity: high
    match:
      asset_types: [cloudresourcemanager.googleapis.com/Project]
      ancestries: ["organizations/1/**"]
      excluded_ancestries: ["organizations/1/folders/99/**"]
    params: {roles: [roles/owner]}
"""

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def bucket(name: str, members: list[str]) -> Asset:
    return Asset(f"//storage.googleapis.com/{name}", "storage.googleapis.com/Bucket",
                 iam_policy={"bindings": [{"role": "roles/storage.objectViewer", "members": members}]},
                 ancestors=("projects/5", "organizations/1"))


def project(num: str, ancestors: tuple[str, ...]) -> Asset:
    return Asset(f"//cloudresourcemanager.googleapis.com/projects/{num}", "cloudresourcemanager.googleapis.com/Project",
                 iam_policy={"bindings": [{"role": "roles/owner", "members": ["user:o@x.example"]}]},
                 ancestors=(f"projects/{num}", *ancestors))


def engine(tmp_path: Path) -> Engine:
    p = tmp_path / "r.yaml"
    p.write_text(RULES)
    return Engine(load_file(p), now=NOW)


def test_findings_exemptions_and_stale(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    result = eng.evaluate([
        bucket("data", ["allUsers", "user:a@x.example"]),
        bucket("site-www", ["allUsers"]),
        bucket("old-www", ["allAuthenticatedUsers"]),
        Asset("//storage.googleapis.com/no-policy", "storage.googleapis.com/Bucket", resource={"name": "x"}),
    ])
    by_asset = {f.asset.rsplit("/", 1)[1]: f for f in result.findings}
    assert set(by_asset) == {"data", "site-www", "old-www"}
    assert by_asset["data"].exempted is None
    assert by_asset["site-www"].exempted is not None and by_asset["site-www"].exempted.reason == "public web site"
    old = by_asset["old-www"]
    assert old.exempted is None  # expired exemptions no longer exempt...
    assert old.expired_exemption is not None and old.expired_exemption.expires == "2026-01-31"  # ...and say so
    assert old.to_dict()["expired_exemption"]["ticket"] == "SEC-9"
    stale = [(r.id, e.resource) for r, _, e in eng.stale_exemptions(result)]
    assert stale == [("no-public", "//storage.googleapis.com/never-*")]
    assert result.assets_by_type["storage.googleapis.com/Bucket"] == 4


def test_type_and_ancestry_matching(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    result = eng.evaluate([
        project("1", ("folders/2", "organizations/1")),
        project("2", ("folders/99", "organizations/1")),  # excluded ancestry
        project("3", ("organizations/2",)),  # other organization
        bucket("b", ["user:owner@x.example"]),
    ])
    assert [f.asset for f in result.findings] == ["//cloudresourcemanager.googleapis.com/projects/1"]
    streamed, deferred = eng.rules_for("storage.googleapis.com/Bucket")
    assert [r.id for r in streamed] == ["no-public"] and deferred == ()


def test_ids_are_stable_and_distinct(tmp_path: Path) -> None:
    a = engine(tmp_path).evaluate([bucket("data", ["allUsers", "allAuthenticatedUsers"])]).findings
    b = engine(tmp_path).evaluate([bucket("data", ["allAuthenticatedUsers", "allUsers"])]).findings
    assert {f.id for f in a} == {f.id for f in b}
    assert len({f.id for f in a}) == 2


def test_a_failing_check_is_reported_not_fatal(tmp_path: Path) -> None:
    bad = Asset("//storage.googleapis.com/bad", "storage.googleapis.com/Bucket",
                iam_policy={"bindings": [{"role": "roles/x", "members": 5}]})
    result = engine(tmp_path).evaluate([bad, bucket("data", ["allUsers"])])
    assert len(result.findings) == 1
    assert [(e.rule, e.asset) for e in result.errors] == [("no-public", "//storage.googleapis.com/bad")]
