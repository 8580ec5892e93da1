"""The synthetic organization: seeded, exact in size, in CAI export spelling, and violating the baseline a little."""

from __future__ import annotations

import json
from pathlib import Path

from auditor.collect.files import iter_file_assets
from auditor.evaluate.rulebook import load_rules
from auditor.scan import run_scan
from bench.generate import generate, iter_lines


def test_same_seed_same_bytes_and_exact_size(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.ndjson", tmp_path / "b.ndjson", tmp_path / "c.ndjson"
    stats = generate(2500, a, seed=3)
    generate(2500, b, seed=3)
    generate(2500, c, seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert stats.assets == 2500 == len(a.read_bytes().splitlines())
    assert stats.bytes == a.stat().st_size


def test_gzip_output_holds_the_same_lines(tmp_path: Path) -> None:
    plain, packed = tmp_path / "org.ndjson", tmp_path / "org.ndjson.gz"
    generate(800, plain, seed=5)
    generate(800, packed, seed=5, compress=True)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    assert list(iter_lines(packed)) == list(iter_lines(plain))
    assert sum(1 for _ in iter_file_assets(packed)) == 800


def test_export_spelling_and_the_mix_of_assets(tmp_path: Path) -> None:
    out = tmp_path / "org.ndjson"
    stats = generate(6000, out, seed=7)
    lines = [json.loads(line) for line in iter_lines(out)]
    assert all("assetType" not in d and "iamPolicy" not in d for d in lines)
    iam = [d for d in lines if "iam_policy" in d]
    resources = [d for d in lines if "resource" in d]
    assert iam and resources and len(iam) + len(resources) == 6000
    assert all(d["ancestors"][-1].startswith("organizations/") and d["update_time"] for d in lines)
    assert all({"data", "discovery_name", "version"} <= set(d["resource"]) for d in resources)
    for t in (
        "cloudresourcemanager.googleapis.com/Organization",
        "cloudresourcemanager.googleapis.com/Folder",
        "cloudresourcemanager.googleapis.com/Project",
        "storage.googleapis.com/Bucket",
        "iam.googleapis.com/ServiceAccount",
        "iam.googleapis.com/ServiceAccountKey",
        "bigquery.googleapis.com/Dataset",
        "compute.googleapis.com/SecurityPolicy",
        "compute.googleapis.com/Instance",
        "container.googleapis.com/Cluster",
        "rbac.authorization.k8s.io/ClusterRoleBinding",
        "rbac.authorization.k8s.io/RoleBinding",
        "k8s.io/Namespace",
        "k8s.io/ResourceQuota",
        "networking.k8s.io/NetworkPolicy",
    ):
        assert stats.by_type[t] > 0, t
    # the bulk no rule reads is most of the file
    bulky = sum(len(json.dumps(d)) for d in lines if d["asset_type"] == "compute.googleapis.com/Instance")
    assert bulky > stats.bytes / 3


def test_a_small_share_violates_the_shipped_baseline(tmp_path: Path) -> None:
    out = tmp_path / "org.ndjson"
    stats = generate(6000, out, seed=7)
    assert stats.violations["public_bucket"] > 0
    result = run_scan([str(out)], load_rules())
    assert result.complete and result.evaluation.assets == 6000
    public = {f.asset for f in result.findings if f.rule == "iam-no-public-members"}
    assert len(public) >= stats.violations["public_bucket"]
    assert 0 < len({f.asset for f in result.findings}) < 6000 * 0.1


def test_messy_profile_policies_and_about_one_finding_per_asset(tmp_path: Path) -> None:
    out = tmp_path / "messy.ndjson"
    stats = generate(8000, out, seed=7, profile="messy")
    again = tmp_path / "again.ndjson"
    generate(8000, again, seed=7, profile="messy")
    assert out.read_bytes() == again.read_bytes()
    policies = [json.loads(line) for line in iter_lines(out)
                if b'"compute.googleapis.com/SecurityPolicy"' in line]
    assert len(policies) > 50
    rules = [r for p in policies for r in p["resource"]["data"]["rule"]]
    sizes = [len(p["resource"]["data"]["rule"]) for p in policies]
    assert min(sizes) >= 5 and max(sizes) <= 200 and max(sizes) > 60
    ranges = [s for r in rules for s in (r["match"].get("config") or {}).get("srcIpRange", [])]
    assert max(len((r["match"].get("config") or {}).get("srcIpRange", [])) for r in rules) <= 11
    assert any(":" in s for s in ranges) and any("." in s for s in ranges)
    assert any(r["preview"] for r in rules) and any("expr" in r["match"] for r in rules)
    result = run_scan([str(out)], load_rules(None))
    assert not result.evaluation.errors
    found = {f.rule for f in result.findings}
    assert {"armor-no-shadowed-rules", "armor-allow-only-trusted-ranges", "iam-no-primitive-roles-on-projects",
            "iam-no-external-members", "iam-service-accounts-no-admin-roles", "iam-no-public-members",
            "rbac-no-cluster-admin-for-humans"} <= found
    assert 0.6 < len(result.findings) / stats.assets < 1.6
