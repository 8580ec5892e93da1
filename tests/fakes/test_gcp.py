"""The fake Google Cloud server behind the real REST clients: paging, read time, tokens, faults, exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.cloud import asset_v1, compute_v1

from auditor.collect import gcp_clients
from tests.fakes.gcp import FakeGcp, Fault

ORG = "organizations/111222333"


@pytest.fixture
def loaded(fake_gcp: FakeGcp, public_data: Path) -> FakeGcp:
    fake_gcp.load(public_data / "cai", public_data / "cloud-armor")
    return fake_gcp


def _list(client: object, fake: FakeGcp, content: int, types: list[str] | None = None) -> list[asset_v1.Asset]:
    req = asset_v1.ListAssetsRequest(parent=ORG, content_type=content, page_size=1000, asset_types=types or [])
    return list(client.list_assets(request=req, retry=None))  # type: ignore[attr-defined]


def test_list_assets_pages_and_counts(loaded: FakeGcp, public_data: Path) -> None:
    loaded.max_page_size = 25
    client = gcp_clients.asset_client(loaded.url)
    assets = _list(client, loaded, asset_v1.ContentType.RESOURCE)
    lines = (public_data / "cai" / "forseti_mock_cai_resources.dump").read_text().splitlines()
    records = [json.loads(x) for x in lines if x.strip()]
    # Assets whose ancestors name another organization are not under ORG; those without ancestors are served.
    names = {r["name"] for r in records if ORG in r.get("ancestors", [ORG])}
    assert 0 < len(names) < len(records)
    assert {a.name for a in assets} == names
    calls = loaded.list_asset_calls()
    assert len(calls) == -(-len(names) // 25)
    assert all(c.query["contentType"] == ["1"] for c in calls)  # enums travel as integers


def test_list_assets_filters_types_by_regex_and_content(loaded: FakeGcp) -> None:
    client = gcp_clients.asset_client(loaded.url)
    res = _list(client, loaded, asset_v1.ContentType.RESOURCE, ["rbac.authorization.k8s.io/.*"])
    assert sorted(a.asset_type for a in res) == sorted(
        "rbac.authorization.k8s.io/" + k for k in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    )
    iam = _list(client, loaded, asset_v1.ContentType.IAM_POLICY)
    assert len(iam) == 22 and sum(len(a.iam_policy.bindings) for a in iam) == 35
    assert not any(a.resource.data for a in iam)


def test_read_time_sees_the_past(loaded: FakeGcp) -> None:
    client = gcp_clients.asset_client(loaded.url)
    first = client.list_assets(
        request=asset_v1.ListAssetsRequest(parent=ORG, content_type=2, asset_types=[
            "cloudresourcemanager.googleapis.com/Organization"]),
        retry=None,
    )
    before = next(iter(first.pages)).read_time
    orgs = gcp_clients.organizations_client(loaded.url)
    pol = orgs.get_iam_policy(request={"resource": ORG})
    pol.bindings.add(role="roles/owner", members=["user:new@example.com"])
    orgs.set_iam_policy(request={"resource": ORG, "policy": pol})
    req = asset_v1.ListAssetsRequest(
        parent=ORG, content_type=2, asset_types=["cloudresourcemanager.googleapis.com/Organization"]
    )
    now = list(client.list_assets(request=req, retry=None))
    req.read_time = before
    then = list(client.list_assets(request=req, retry=None))
    assert any("user:new@example.com" in b.members for b in now[0].iam_policy.bindings)
    assert not any("user:new@example.com" in b.members for b in then[0].iam_policy.bindings)


def test_stale_etag_is_refused_and_etag_moves(loaded: FakeGcp) -> None:
    projects = gcp_clients.projects_client(loaded.url)
    pol = projects.get_iam_policy(request={"resource": "projects/1042", "options": {"requested_policy_version": 3}})
    pol.bindings.add(role="roles/viewer", members=["user:a@example.com"])
    written = projects.set_iam_policy(request={"resource": "projects/1042", "policy": pol})
    assert written.etag != pol.etag
    with pytest.raises(gexc.Conflict, match="concurrent policy changes"):
        projects.set_iam_policy(request={"resource": "projects/1042", "policy": pol})


def test_conditional_bindings_need_version_3(loaded: FakeGcp) -> None:
    folders = gcp_clients.folders_client(loaded.url)
    pol = folders.get_iam_policy(request={"resource": "folders/1031", "options": {"requested_policy_version": 3}})
    b = pol.bindings.add(role="roles/browser", members=["user:t@example.com"])
    b.condition.expression = 'request.time < timestamp("2030-01-01T00:00:00Z")'
    b.condition.title = "temporary"
    with pytest.raises(gexc.BadRequest, match="version 3"):
        folders.set_iam_policy(request={"resource": "folders/1031", "policy": pol})
    pol.version = 3
    folders.set_iam_policy(request={"resource": "folders/1031", "policy": pol})
    v3 = folders.get_iam_policy(request={"resource": "folders/1031", "options": {"requested_policy_version": 3}})
    v1 = folders.get_iam_policy(request={"resource": "folders/1031"})
    assert v3.version == 3 and any(x.condition.title == "temporary" for x in v3.bindings)
    assert v1.version == 1 and any(x.role.startswith("roles/browser_withcond_") for x in v1.bindings)


def test_service_account_policy_over_rest(fake_gcp: FakeGcp) -> None:
    name = "//iam.googleapis.com/projects/p1/serviceAccounts/1234"
    fake_gcp.state.put_asset(
        {
            "name": name,
            "assetType": "iam.googleapis.com/ServiceAccount",
            "resource": {"data": {"email": "ci@p1.iam.gserviceaccount.com", "uniqueId": "1234"}},
            "iamPolicy": {"bindings": [{"role": "roles/iam.serviceAccountUser", "members": ["user:a@example.com"]}]},
        }
    )
    sa = gcp_clients.service_account_iam_client(fake_gcp.url)
    res = "projects/p1/serviceAccounts/ci@p1.iam.gserviceaccount.com"
    pol = sa.get_iam_policy(res)
    pol["bindings"][0]["members"].append("user:b@example.com")
    sa.set_iam_policy(res, pol)
    with pytest.raises(gexc.Conflict):
        sa.set_iam_policy(res, pol)
    assert fake_gcp.state.asset(name)["iamPolicy"]["bindings"][0]["members"] == [  # type: ignore[index]
        "user:a@example.com",
        "user:b@example.com",
    ]


def test_security_policy_rules_and_fingerprint(loaded: FakeGcp) -> None:
    sp = gcp_clients.security_policies_client(loaded.url)
    before = sp.get(project="project2", security_policy="cai-security")
    assert [r.priority for r in before.rules] == [2147483647]  # CAI's singular `rule` served as `rules`
    rule = compute_v1.SecurityPolicyRule(
        priority=1000,
        action="deny(403)",
        match=compute_v1.SecurityPolicyRuleMatcher(
            versioned_expr="SRC_IPS_V1",
            config=compute_v1.SecurityPolicyRuleMatcherConfig(src_ip_ranges=["203.0.113.0/24"]),
        ),
    )
    sp.add_rule(project="project2", security_policy="cai-security", security_policy_rule_resource=rule).result()
    with pytest.raises(gexc.BadRequest, match="same priorities"):
        sp.add_rule(project="project2", security_policy="cai-security", security_policy_rule_resource=rule)
    rule.action = "allow"
    sp.patch_rule(
        request=compute_v1.PatchRuleSecurityPolicyRequest(
            project="project2", security_policy="cai-security", priority=1000, security_policy_rule_resource=rule
        )
    ).result()
    after = sp.get(project="project2", security_policy="cai-security")
    assert after.fingerprint != before.fingerprint
    assert [(r.priority, r.action) for r in after.rules] == [(1000, "allow"), (2147483647, "allow")]
    before.description = "stale write"
    with pytest.raises(gexc.PreconditionFailed):
        sp.patch(project="project2", security_policy="cai-security", security_policy_resource=before)
    with pytest.raises(gexc.BadRequest, match="default rule"):
        sp.remove_rule(
            request=compute_v1.RemoveRuleSecurityPolicyRequest(
                project="project2", security_policy="cai-security", priority=2147483647
            )
        )
    sp.remove_rule(
        request=compute_v1.RemoveRuleSecurityPolicyRequest(
            project="project2", security_policy="cai-security", priority=1000
        )
    ).result()
    # The write shows in the inventory.
    asset = loaded.state.asset("//compute.googleapis.com/projects/project2/global/securityPolicies/cai-security")
    assert asset is not None and len(asset["resource"]["data"]["rules"]) == 1


def test_faults_are_injected_and_counted(loaded: FakeGcp) -> None:
    client = gcp_clients.asset_client(loaded.url)
    loaded.inject(Fault(status=429, times=2, retry_after=3))
    for _ in range(2):
        with pytest.raises(gexc.TooManyRequests) as info:
            _list(client, loaded, 1)
        assert info.value.response.headers["Retry-After"] == "3"
    assert _list(client, loaded, 1)
    loaded.max_page_size = 10
    loaded.inject(Fault(status=500, times=None, page=3))
    with pytest.raises(gexc.InternalServerError):
        _list(client, loaded, 1)
    assert [c.status for c in loaded.list_asset_calls()[-3:]] == [200, 200, 500]
    loaded.inject(Fault(status=403, times=1, asset_type="compute.googleapis.com/SecurityPolicy"))
    with pytest.raises(gexc.Forbidden) as denied:
        _list(client, loaded, 1, ["compute.googleapis.com/SecurityPolicy"])
    assert denied.value.metadata == {"permission": "cloudasset.assets.listResource", "resource": f"/v1/{ORG}/assets"}


def test_export_writes_objects_read_back_through_storage(loaded: FakeGcp) -> None:
    client = gcp_clients.asset_client(loaded.url)
    op = client.export_assets(
        request={
            "parent": ORG,
            "content_type": asset_v1.ContentType.IAM_POLICY,
            "output_config": {"gcs_destination": {"uri": "gs://exports/iam.json"}},
        }
    )
    result = op.result(timeout=10)
    assert list(result.output_result.gcs_result.uris) == ["gs://exports/iam.json"]
    blob = gcp_clients.storage_client(loaded.url).bucket("exports").blob("iam.json")
    lines = [json.loads(x) for x in blob.download_as_bytes().decode().splitlines()]
    assert len(lines) == 22 and all("iam_policy" in x and "asset_type" in x for x in lines)


def test_runs_as_a_command(public_data: Path) -> None:
    import subprocess
    import sys

    import requests

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.gcp", "--port", "0", "--load", str(public_data / "cai")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        assert "assets" in line
        page = requests.get(f"{url}/v1/{ORG}/assets", params={"contentType": "2"}, timeout=10).json()
        assert len(page["assets"]) == 22
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_endpoint_settings_and_client_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.errors import AuditorError

    monkeypatch.setenv("AUDITOR_GCP_ENDPOINT", "http://127.0.0.1:9/")
    assert gcp_clients.resolve_endpoint().url == "http://127.0.0.1:9"
    assert gcp_clients.resolve_endpoint("http://127.0.0.1:7").url == "http://127.0.0.1:7"  # the config file wins
    with pytest.raises(AuditorError, match="must be an http"):
        gcp_clients.resolve_endpoint("127.0.0.1:7")
    for resource, kind in [
        ("organizations/1", "OrganizationsClient"),
        ("//cloudresourcemanager.googleapis.com/folders/2", "FoldersClient"),
        ("projects/p", "ProjectsClient"),
        ("projects/p/serviceAccounts/a@p.iam.gserviceaccount.com", "ServiceAccountIamClient"),
    ]:
        assert type(gcp_clients.iam_policy_client_for(resource)).__name__ == kind
    with pytest.raises(AuditorError, match="no IAM policy client"):
        gcp_clients.iam_policy_client_for("//storage.googleapis.com/bucket")
