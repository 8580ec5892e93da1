"""`auditor feeds ensure` with the real google-cloud-asset client against the fake server: created, then left alone,
then updated with a mask naming only what changed; the permissions it calls are declared."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.cli.feeds import feed_types
from auditor.collect.feeds import desired_feeds, ensure_feeds
from auditor.errors import AuditorError
from auditor.evaluate.rulebook import load_rules
from auditor.permissions import declarations
from tests.fakes.gcp_feeds import FakeGcpFeeds

TOPIC = "projects/sec-tools/topics/cai-changes"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGcpFeeds]:
    with FakeGcpFeeds() as f:
        monkeypatch.setenv("AUDITOR_GCP_ENDPOINT", f.url)
        yield f


def run(*args: str) -> list[dict]:
    result = CliRunner().invoke(cli, ["feeds", "ensure", "--format", "json", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out: list[dict] = json.loads(result.output)
    return out


def test_shipped_rules_feed_the_types_they_read() -> None:
    resource, iam = feed_types(load_rules())
    assert {"compute.googleapis.com/SecurityPolicy", "container.googleapis.com/Cluster", "k8s.io/Namespace",
            "rbac.authorization.k8s.io/RoleBinding", "cloudresourcemanager.googleapis.com/Project"} <= set(resource)
    # the IAM rules read every type's policy: every known type with a policy
    assert {"storage.googleapis.com/Bucket", "iam.googleapis.com/ServiceAccount",
            "cloudresourcemanager.googleapis.com/Organization"} <= set(iam)
    assert "rbac.authorization.k8s.io/RoleBinding" not in iam


def test_ensure_creates_then_is_idempotent_then_updates(fake: FakeGcpFeeds) -> None:
    scope = ["--scope", "organizations/583920174615", "--topic", TOPIC]
    first = run(*scope)
    assert [(o["feed"], o["action"]) for o in first] == [
        ("organizations/583920174615/feeds/drift-auditor-resource", "created"),
        ("organizations/583920174615/feeds/drift-auditor-iam-policy", "created"),
    ]
    resource = fake.feeds["organizations/583920174615/feeds/drift-auditor-resource"]
    assert resource["contentType"] == "RESOURCE"
    assert resource["feedOutputConfig"] == {"pubsubDestination": {"topic": TOPIC}}
    assert "compute.googleapis.com/SecurityPolicy" in resource["assetTypes"]
    assert fake.feeds["organizations/583920174615/feeds/drift-auditor-iam-policy"]["contentType"] == "IAM_POLICY"

    fake.reset_requests()
    assert [o["action"] for o in run(*scope)] == ["unchanged", "unchanged"]
    assert [r.method for r in fake.requests] == ["GET", "GET"]  # a read per feed, no write

    # someone pointed a feed elsewhere and narrowed it: put back, and only those fields are sent in the mask
    resource["feedOutputConfig"] = {"pubsubDestination": {"topic": "projects/x/topics/elsewhere"}}
    resource["assetTypes"] = ["k8s.io/Namespace"]
    fake.reset_requests()
    again = run(*scope)
    assert again[0]["action"] == "updated" and again[0]["changed"] == ["asset_types", "feed_output_config"]
    assert again[1]["action"] == "unchanged"
    [patch] = fake.calls("PATCH")
    assert patch.body["updateMask"] == "assetTypes,feedOutputConfig"
    assert fake.feeds["organizations/583920174615/feeds/drift-auditor-resource"]["feedOutputConfig"] == {
        "pubsubDestination": {"topic": TOPIC}}


def test_dry_run_changes_nothing(fake: FakeGcpFeeds) -> None:
    out = run("--scope", "projects/ml-platform-prod", "--topic", TOPIC, "--dry-run",
              "--asset-type", "storage.googleapis.com/Bucket")
    assert [o["action"] for o in out] == ["created", "created"] and all(o["dry_run"] for o in out)
    assert fake.feeds == {} and not fake.calls("POST")


def test_condition_and_explicit_types(fake: FakeGcpFeeds) -> None:
    specs = desired_feeds(["folders/210000000001"], TOPIC, [], ["storage.googleapis.com/Bucket"],
                          condition="temporal_asset.deleted == false", prefix="ml")
    assert [s.feed_id for s in specs] == ["ml-iam-policy"]  # no resource type: no resource feed
    [outcome] = ensure_feeds(specs)
    assert outcome.action == "created"
    assert fake.feeds["folders/210000000001/feeds/ml-iam-policy"]["condition"]["expression"] == (
        "temporal_asset.deleted == false")


@pytest.mark.parametrize("scope,topic", [("org/1", TOPIC), ("organizations/1", "cai-changes")])
def test_bad_scope_or_topic_is_refused(scope: str, topic: str) -> None:
    with pytest.raises(AuditorError):
        desired_feeds([scope], topic, ["k8s.io/Namespace"], [])


def test_api_errors_name_the_feed(fake: FakeGcpFeeds) -> None:
    from tests.fakes.gcp import Fault

    fake.inject(Fault(status=403, method="POST", times=1, permission="cloudasset.feeds.create"))
    with pytest.raises(AuditorError, match="organizations/1/feeds/drift-auditor-resource"):
        ensure_feeds(desired_feeds(["organizations/1"], TOPIC, ["k8s.io/Namespace"], []))


def test_permissions_are_declared() -> None:
    import auditor.collect.feeds  # noqa: F401  (declares at import)

    [d] = [d for d in declarations() if d.component == "collect.feeds"]
    assert set(d.permissions) == {"cloudasset.feeds.get", "cloudasset.feeds.create", "cloudasset.feeds.update"}
    assert d.module == "auditor.collect.feeds" and d.remediation  # writes: never in the read-only audit role
