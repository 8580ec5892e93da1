"""The Cloud Asset Inventory source against the fake API server, through the real google-cloud-asset client."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.collect import SourceOptions, open_source
from auditor.collect.asset_inventory import AssetInventorySource, glob_to_cai, plan_listings
from auditor.collect.files import iter_file_assets
from auditor.errors import SourceError
from auditor.evaluate.engine import Engine
from auditor.evaluate.rulebook import load_rules
from auditor.scan import run_scan
from tests.fakes.gcp import FakeGcp, Fault

SECURITY_POLICY = "compute.googleapis.com/SecurityPolicy"
PROJECT = "cloudresourcemanager.googleapis.com/Project"
ORG_TYPE = "cloudresourcemanager.googleapis.com/Organization"


def scan_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    res = CliRunner().invoke(cli, ["scan", *args, "--format", "json", "--fail-on", "never"], env=env)
    out = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    return res.exit_code, out, res.stderr


def fast(extra: dict[str, object] | None = None) -> SourceOptions:
    """Options whose retries record their waits instead of sleeping."""
    sleeps: list[float] = []
    base = {"retry_sleep": sleeps.append, "retry_initial": 0.01, "sleeps": sleeps, "cai_requests_per_minute": 60000}
    return SourceOptions(extra={**base, **(extra or {})})


@pytest.fixture
def org(fake_gcp: FakeGcp, example_org: tuple[Path, str], gcp_endpoint: str) -> str:
    folder, org_id = example_org
    fake_gcp.load(folder)
    return f"cai://organizations/{org_id}"


def finding_keys(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted((f["id"], f["rule"], f["asset"]) for f in report["findings"])


def test_live_scan_gives_the_same_findings_as_the_files(
    fake_gcp: FakeGcp, org: str, example_org: tuple[Path, str]
) -> None:
    code, live, err = scan_json("--source", f"{org}?rpm=60000")
    assert code == 0, err
    _, offline, _ = scan_json("--source", str(example_org[0]))
    assert live["complete"] is True and live["sources"][0]["read_time"]
    assert finding_keys(live) == finding_keys(offline) and live["findings"]
    # Everything but the asset count: the live scan lists only the types the rules read, the files hold all.
    assert {**live["summary"], "assets": 0} == {**offline["summary"], "assets": 0}
    assert 0 < live["summary"]["assets"] < offline["summary"]["assets"]
    # The report says how many API requests the snapshot cost (the fake counted the same).
    assert live["sources"][0]["requests"] == len(fake_gcp.list_asset_calls()) > 0


def test_only_the_parts_the_rules_read_are_listed(fake_gcp: FakeGcp, org: str) -> None:
    rules = load_rules(None)
    result = run_scan([org], rules, fast())
    assert result.complete
    engine = Engine(rules)
    named = sorted(g for g in engine.asset_type_globs() if g != "*")
    calls = fake_gcp.list_asset_calls()
    resource = [c for c in calls if c.content_type == "RESOURCE"]
    listed = sorted(t for c in resource for t in c.query["assetTypes"])
    assert listed == sorted(g for g in named if engine.wants(g, False))  # every type a rule reads, once
    assert len(listed) > len(resource) == 4  # grouped into `concurrency` listings, one page each
    iam = [c for c in calls if c.content_type == "IAM_POLICY"]
    assert len(iam) == 1 and "assetTypes" not in iam[0].query  # an IAM rule reads every type: no type filter


def test_listing_requests_are_counted_pages_not_assets(
    fake_gcp: FakeGcp, org: str, example_org: tuple[Path, str]
) -> None:
    fake_gcp.max_page_size = 7
    wanted = {"resource_types": [SECURITY_POLICY, "rbac.authorization.k8s.io/*"], "iam_types": [PROJECT]}
    src = open_source(org, SourceOptions(asset_types=frozenset(["*"]), extra={"needs_iam": True, **wanted}))
    got = list(src.assets())
    files = list(iter_file_assets(example_org[0]))
    n_policies = sum(1 for a in files if a.asset_type == SECURITY_POLICY and a.resource)
    n_rbac = sum(1 for a in files if a.asset_type.startswith("rbac.authorization.k8s.io/") and a.resource)
    n_projects = sum(1 for a in files if a.asset_type == PROJECT and a.has_iam_policy)
    assert n_policies and n_projects
    assert len(got) == n_policies + n_rbac + n_projects
    calls = fake_gcp.list_asset_calls()
    by_type = Counter((tuple(c.query.get("assetTypes", [])), c.content_type) for c in calls)
    pages = lambda n: max(1, math.ceil(n / 7))  # noqa: E731 - an empty listing still takes one request
    assert by_type == {
        ((SECURITY_POLICY,), "RESOURCE"): pages(n_policies),
        (("rbac\\.authorization\\.k8s\\.io/[^/]*",), "RESOURCE"): pages(n_rbac),
        ((PROJECT,), "IAM_POLICY"): pages(n_projects),
    }
    assert all(c.query["pageSize"] == ["1000"] for c in calls)
    # One read time for the whole snapshot: every request but the first names the same one.
    times = {c.query["readTime"][0] for c in calls if "readTime" in c.query}
    assert len(times) == 1 and sum("readTime" in c.query for c in calls) == len(calls) - 1
    assert src.status.complete and src.status.read_time


def test_429s_are_retried_honouring_retry_after(fake_gcp: FakeGcp, org: str, example_org: tuple[Path, str]) -> None:
    fake_gcp.inject(Fault(status=429, times=3, retry_after=2))
    fake_gcp.inject(Fault(status=503, times=1, content_type="IAM_POLICY"))
    options = fast()
    result = run_scan([org], load_rules(None), options)
    assert result.complete
    sleeps = options.extra["sleeps"]
    assert isinstance(sleeps, list) and len(sleeps) == 4
    assert sorted(sleeps)[-3:] >= [2, 2, 2]  # never sooner than the server asked
    offline = run_scan([str(example_org[0])], load_rules(None))
    assert [f.id for f in result.findings] == [f.id for f in offline.findings]


def test_a_broken_page_is_retried_alone(fake_gcp: FakeGcp, org: str) -> None:
    fake_gcp.max_page_size = 20
    fake_gcp.inject(Fault(status=500, times=2, page=3, content_type="RESOURCE"))
    src = open_source(org, fast({"needs_iam": False}))
    assets = list(src.assets())
    assert src.status.complete and len({a.name for a in assets}) == len(assets)
    resource_calls = [c.page for c in fake_gcp.list_asset_calls()]
    assert resource_calls[:5] == [1, 2, 3, 3, 3]  # pages 1 and 2 were not read again


def test_a_type_that_keeps_failing_makes_the_snapshot_partial(fake_gcp: FakeGcp, org: str) -> None:
    fake_gcp.max_page_size = 1  # the example has a few security policies: page 2 is in the middle
    fake_gcp.inject(Fault(status=500, times=None, asset_type=SECURITY_POLICY, page=2, message="backend exploded"))
    options = fast({"resource_types": [SECURITY_POLICY, "rbac.authorization.k8s.io/*"], "retry_attempts": 3})
    src = open_source(org, SourceOptions(asset_types=frozenset(["*"]), extra={**options.extra, "needs_iam": False}))
    assets = list(src.assets())
    assert not src.status.complete
    assert list(src.status.failed_types) == [SECURITY_POLICY]
    assert "500" in src.status.failed_types[SECURITY_POLICY]
    assert "backend exploded" in src.status.failed_types[SECURITY_POLICY]
    assert any(a.asset_type.startswith("rbac.") for a in assets)  # the other type was read in full
    failing = [c for c in fake_gcp.list_asset_calls() if c.query.get("assetTypes") == [SECURITY_POLICY]]
    assert [c.page for c in failing] == [1, 2, 2, 2]  # three attempts at the broken page, then it gives up


def test_partial_snapshot_in_json_and_require_complete(fake_gcp: FakeGcp, org: str) -> None:
    fake_gcp.inject(Fault(status=403, times=None, content_type="IAM_POLICY", error_info=False))
    code, report, err = scan_json("--source", f"{org}?rpm=60000")
    assert code == 3 and report["complete"] is False  # partial: never a clean exit
    [failed] = report["sources"][0]["failed"]
    assert failed["asset_type"] == "*"
    assert "cloudasset.assets.listIamPolicy" in failed["reason"]  # named although the API did not say
    assert "partial" in err
    code, _, err = scan_json("--source", f"{org}?rpm=60000", "--require-complete")
    assert code == 2 and "partial snapshot" in err and "cloudasset.assets.listIamPolicy" in err
    assert "Traceback" not in err


def test_403_names_the_permission_the_api_reports(fake_gcp: FakeGcp, org: str) -> None:
    fake_gcp.inject(
        Fault(status=403, times=None, asset_type=SECURITY_POLICY, permission="compute.securityPolicies.list")
    )
    src = open_source(org, fast({"needs_iam": False, "resource_types": [SECURITY_POLICY]}))
    assert list(src.assets()) == []
    reason = src.status.failed_types[SECURITY_POLICY]
    assert "compute.securityPolicies.list" in reason and "organizations/" in reason
    assert len(fake_gcp.list_asset_calls()) == 1  # a 403 is not retried


def test_400_is_not_retried(fake_gcp: FakeGcp, org: str) -> None:
    fake_gcp.inject(Fault(status=400, times=None, message="Invalid asset type"))
    src = open_source(org, fast({"needs_iam": False, "resource_types": [SECURITY_POLICY]}))
    list(src.assets())
    assert "Invalid asset type" in src.status.failed_types[SECURITY_POLICY]
    assert len(fake_gcp.list_asset_calls()) == 1


def test_slow_answers_do_not_lose_assets(fake_gcp: FakeGcp, org: str) -> None:
    fake_gcp.inject(Fault(status=None, times=2, delay=0.2))
    src = open_source(org, fast({"needs_iam": True, "resource_types": [SECURITY_POLICY], "iam_types": [PROJECT]}))
    assert src.status.complete and {a.asset_type for a in src.assets()} == {SECURITY_POLICY, PROJECT}


def test_export_route_reads_the_written_files(fake_gcp: FakeGcp, org: str, example_org: tuple[Path, str]) -> None:
    code, live, err = scan_json("--source", f"{org}?export=gs://audit-exports/daily")
    assert code == 0, err
    _, offline, _ = scan_json("--source", str(example_org[0]))
    assert finding_keys(live) == finding_keys(offline) and live["complete"]
    exports = fake_gcp.calls("POST", r":exportAssets$")
    assert sorted(e.content_type or "" for e in exports) == ["IAM_POLICY", "RESOURCE"]
    assert not fake_gcp.list_asset_calls()
    assert all(k[0] == "audit-exports" and k[1].startswith("daily/") for k in fake_gcp.state.objects)


def test_stopping_early_ends_the_workers(fake_gcp: FakeGcp, org: str) -> None:
    fake_gcp.max_page_size = 2
    src = open_source(org, fast())
    stream = src.assets()
    first = next(iter(stream))
    stream.close()  # type: ignore[attr-defined]
    assert first.name
    assert len(fake_gcp.list_asset_calls()) < 20


def test_bad_source_uris_are_clear(gcp_endpoint: str) -> None:
    for uri, fragment in [
        ("cai://organisations/1", "expected cai://organizations/ID"),
        ("cai://organizations/1?budget=3", "unknown option(s) budget"),
        ("cai://organizations/1?rpm=fast", "rpm='fast' is not valid"),
        ("cai://organizations/1?export=s3://b", "gs://bucket/prefix"),
    ]:
        code, _, err = scan_json("--source", uri)
        assert code == 2 and fragment in err and "Traceback" not in err, err


def test_globs_become_cai_expressions_and_listings() -> None:
    assert glob_to_cai("compute.googleapis.com/SecurityPolicy") == "compute.googleapis.com/SecurityPolicy"
    assert glob_to_cai("rbac.authorization.k8s.io/*") == "rbac\\.authorization\\.k8s\\.io/[^/]*"
    plan = plan_listings(frozenset({"*", PROJECT}), needs_iam=True, resource_globs=frozenset({SECURITY_POLICY}))
    assert [(x.content, x.glob) for x in plan] == [("RESOURCE", SECURITY_POLICY), ("IAM_POLICY", "*")]
    assert [x.content for x in plan_listings(frozenset({PROJECT}), needs_iam=False)] == ["RESOURCE"]
    assert isinstance(open_source("cai://projects/my-proj-1", SourceOptions()), AssetInventorySource)


def test_a_page_that_times_out_is_asked_again(fake_gcp: FakeGcp, org: str, caplog: pytest.LogCaptureFixture) -> None:
    fake_gcp.inject(Fault(status=None, times=1, delay=1.0, content_type="RESOURCE"))
    src = open_source(f"{org}?timeout=0.3", fast({"needs_iam": False, "resource_types": [SECURITY_POLICY]}))
    with caplog.at_level("WARNING", logger="auditor.collect.asset_inventory"):
        assets = list(src.assets())
    assert src.status.complete and assets and all(a.asset_type == SECURITY_POLICY for a in assets)
    assert len(fake_gcp.list_asset_calls()) == 2
    assert any("ListAssets failed" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)


def test_sources_of_one_process_share_the_request_budget(gcp_endpoint: str) -> None:
    first = AssetInventorySource("cai://organizations/1", SourceOptions())
    second = AssetInventorySource("cai://folders/2?concurrency=2", SourceOptions())
    assert first.budget is second.budget  # one consumer project, one quota
    assert AssetInventorySource("cai://folders/2?rpm=50", SourceOptions()).budget is not first.budget


def test_a_failed_batch_marks_each_of_its_types(fake_gcp: FakeGcp, org: str) -> None:
    fake_gcp.inject(Fault(status=500, times=None, asset_type=SECURITY_POLICY))
    types = [SECURITY_POLICY, "rbac.authorization.k8s.io/RoleBinding", PROJECT]
    src = open_source(f"{org}?concurrency=2", fast({"needs_iam": False, "resource_types": types, "retry_attempts": 2}))
    list(src.assets())
    calls = fake_gcp.list_asset_calls()
    batches = {tuple(c.query["assetTypes"]) for c in calls}
    assert len(batches) == 2 and sorted(t for b in batches for t in b) == sorted(types)
    failed_batch = next(b for b in batches if SECURITY_POLICY in b)
    assert sorted(src.status.failed_types) == sorted(failed_batch)  # the other batch was read in full


def test_closing_the_stream_cuts_a_long_retry_wait_short(fake_gcp: FakeGcp, org: str) -> None:
    fake_gcp.max_page_size = 1
    fake_gcp.inject(Fault(status=429, times=None, page=2, retry_after=60))  # page 2 asks for a minute's wait
    src = open_source(org, SourceOptions(extra={"needs_iam": False, "resource_types": [SECURITY_POLICY]}))
    stream = src.assets()
    assert next(iter(stream)).asset_type == SECURITY_POLICY
    for _ in range(1000):  # the worker asks for page 2 right away, then waits out the Retry-After
        if len(fake_gcp.list_asset_calls()) >= 2:
            break
        time.sleep(0.01)
    stream.close()  # type: ignore[attr-defined]  # returns at once instead of after the minute
    assert [c.status for c in fake_gcp.list_asset_calls()] == [200, 429]  # and nothing was asked after


def test_a_folder_scope_reads_only_what_lies_under_it(
    fake_gcp: FakeGcp, org: str, example_org: tuple[Path, str]
) -> None:
    files = list(iter_file_assets(example_org[0]))
    folders = Counter(a for x in files for a in x.ancestors if a.startswith("folders/"))
    if not folders:
        pytest.skip("the example organization has no folders")
    folder = folders.most_common(1)[0][0]
    src = open_source(f"cai://{folder}", fast({"needs_iam": True}))
    got = Counter((a.name, a.has_iam_policy) for a in src.assets())
    want = Counter((a.name, a.has_iam_policy) for a in files if folder in a.ancestors)
    assert src.status.complete and got == want and len(want) < len(files)
    assert all(c.path == f"/v1/{folder}/assets" for c in fake_gcp.list_asset_calls())


def test_a_type_cai_refuses_does_not_sink_its_batch(fake_gcp: FakeGcp, org: str) -> None:
    unknown = "example.googleapis.com/NoSuchThing"
    fake_gcp.inject(Fault(status=400, times=None, asset_type=unknown, message=f"Invalid asset type: {unknown}"))
    types = [SECURITY_POLICY, unknown]
    src = open_source(f"{org}?concurrency=1", fast({"needs_iam": False, "resource_types": types}))
    assets = list(src.assets())
    assert list(src.status.failed_types) == [unknown] and "Invalid asset type" in src.status.failed_types[unknown]
    assert assets and {a.asset_type for a in assets} == {SECURITY_POLICY}
    assert [c.query["assetTypes"] for c in fake_gcp.list_asset_calls()] == [
        sorted(types), [SECURITY_POLICY], [unknown]
    ]


def test_read_time_reads_the_past(fake_gcp: FakeGcp, org: str) -> None:
    [org_asset] = [a for a in fake_gcp.state.snapshot(fake_gcp.state.created) if a["assetType"] == ORG_TYPE]
    before = fake_gcp.state.created.isoformat().replace("+00:00", "Z")
    policy = dict(org_asset["iamPolicy"])
    policy["bindings"] = [*policy.get("bindings", []), {"role": "roles/owner", "members": ["user:mallory@example.com"]}]
    fake_gcp.state.update_asset(org_asset["name"], iamPolicy=policy)
    options = fast({"needs_iam": True, "resource_types": [], "iam_types": [ORG_TYPE]})
    now = [a for a in open_source(org, options).assets() if a.has_iam_policy]
    then_src = open_source(f"{org}?read_time={before}", options)
    then = [a for a in then_src.assets() if a.has_iam_policy]
    members = lambda assets: {m for a in assets for b in a.iam_policy["bindings"] for m in b["members"]}  # noqa: E731
    assert "user:mallory@example.com" in members(now) and "user:mallory@example.com" not in members(then)
    assert then_src.status.read_time is not None and then_src.status.read_time.startswith(before[:19])
    assert all(c.content_type == "IAM_POLICY" for c in fake_gcp.list_asset_calls())  # resource_types: [] lists none


def test_a_malformed_asset_is_skipped_and_reported_or_fatal_when_strict(fake_gcp: FakeGcp, org: str) -> None:
    from tests.fakes.gcp import _Version

    bad = "//compute.googleapis.com/projects/p/global/securityPolicies/broken"
    fake_gcp.state.history[bad] = [_Version(fake_gcp.state.created, {"name": bad, "assetType": SECURITY_POLICY,
                                                                     "resource": "not an object"})]
    seen: list[str] = []
    options = fast({"needs_iam": False, "resource_types": [SECURITY_POLICY]})
    options.on_problem = seen.append
    src = open_source(org, options)
    assets = list(src.assets())
    assert assets and bad not in {a.name for a in assets}
    assert src.status.skipped == 1 and len(seen) == 1 and "page 1 item" in seen[0]
    assert "malformed asset(s) skipped" in src.status.failed_types[SECURITY_POLICY]
    strict = fast({"needs_iam": False, "resource_types": [SECURITY_POLICY]})
    strict.strict = True
    with pytest.raises(SourceError, match="page 1 item"):
        list(open_source(org, strict).assets())


def test_a_refused_export_names_the_export_permission(fake_gcp: FakeGcp, org: str) -> None:
    fake_gcp.inject(Fault(status=403, times=None, path=r":exportAssets$", content_type="IAM_POLICY", error_info=False))
    src = open_source(f"{org}?export=gs://audit/x", fast())
    assets = list(src.assets())
    assert assets and not any(a.has_iam_policy for a in assets)  # the resources were exported and read
    assert list(src.status.failed_types) == ["*"]
    assert "cloudasset.assets.exportIamPolicy" in src.status.failed_types["*"]
    assert len(fake_gcp.calls("POST", r":exportAssets$")) == 2  # a 403 is not retried


def test_an_export_that_fails_in_its_operation_says_why(fake_gcp: FakeGcp, org: str) -> None:
    fake_gcp.export_error = {
        "code": 7,
        "message": "service-1@gcp-sa-cloudasset.iam.gserviceaccount.com does not have storage.objects.create access",
    }
    src = open_source(f"{org}?export=gs://audit/x", fast())
    assert list(src.assets()) == []
    assert set(src.status.failed_types) == {x.glob for x in src.listings}
    for reason in src.status.failed_types.values():
        assert "storage.objects.create" in reason and "roles/storage.objectCreator" in reason
        assert "the caller lacks" not in reason  # the call went through; the service agent could not write


def test_a_failed_partial_glob_leaves_every_type_unresolved(fake_gcp: FakeGcp, org: str) -> None:
    rbac = "rbac.authorization.k8s.io/*"
    fake_gcp.inject(Fault(status=500, times=None, path="assets$", message="backend down"))
    src = open_source(org, fast({"needs_iam": False, "resource_types": [rbac], "retry_attempts": 1}))
    list(src.assets())
    # Recorded under the glob itself: the state store keeps open every finding of a type it matches
    # (tests/state/test_store.py), and the findings of other types can still resolve.
    assert list(src.status.failed_types) == [rbac]
