"""IAM fixes on every resource type whose API has a policy, through that API, against the fake Google Cloud server.

For each type: a plan made from an export removes `allUsers` and a gmail.com member, the write carries the etag
the plan was made against (setIamPolicy's `policy.etag`, the bucket's `etag`, the dataset's `If-Match`), the
conditional binding comes back exactly as it was (version 3 policies), and a change made between plan and apply
is a conflict with nothing written, as is one made between apply's re-read and its write (the API refuses the
etag).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditor import vocabulary as v
from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_rules
from auditor.scan import run_scan
from remediations.apply import Outcome, apply_plan
from remediations.families.iam import iam_section
from remediations.families.iam.endpoints import ENDPOINTS
from remediations.guards import GuardConfig
from remediations.journal import Journal
from remediations.plan import Plan
from remediations.planning import plan_from_scan
from remediations.writers import writers
from tests.fakes.gcp import FakeGcp, RecordedRequest, _dataset_etag

GMAIL = "user:ml.contractor@gmail.com"
CONDITION = {"title": "until-2027", "expression": 'request.time < timestamp("2027-01-01T00:00:00Z")'}
RULE = ("- {id: no-public-or-gmail, check: iam.forbidden_members, severity: high, mode: dryrun, "
        "remediation: iam.remove_member, params: {members: [allUsers, 'user:**@gmail.com']}}\n")

# asset type -> (CAI name, the path its writes go to)
TYPES: dict[str, tuple[str, str]] = {
    v.ORGANIZATION: ("//cloudresourcemanager.googleapis.com/organizations/990000000002",
                     r"/v3/organizations/990000000002:setIamPolicy$"),
    v.FOLDER: ("//cloudresourcemanager.googleapis.com/folders/880000000002", r"/v3/folders/880000000002:setIamPolicy$"),
    v.PROJECT: ("//cloudresourcemanager.googleapis.com/projects/402000000009",
                r"/v3/projects/402000000009:setIamPolicy$"),
    v.SERVICE_ACCOUNT: ("//iam.googleapis.com/projects/p1/serviceAccounts/trainer@p1.iam.gserviceaccount.com",
                        r"/v1/projects/p1/serviceAccounts/trainer@p1.iam.gserviceaccount.com:setIamPolicy$"),
    v.BUCKET: ("//storage.googleapis.com/types-bucket", r"^/storage/v1/b/types-bucket/iam$"),
    v.TOPIC: ("//pubsub.googleapis.com/projects/p1/topics/features", r"/v1/projects/p1/topics/features:setIamPolicy$"),
    v.SUBSCRIPTION: ("//pubsub.googleapis.com/projects/p1/subscriptions/features-sub",
                     r"/v1/projects/p1/subscriptions/features-sub:setIamPolicy$"),
    v.KEY_RING: ("//cloudkms.googleapis.com/projects/p1/locations/us/keyRings/models",
                 r"/v1/projects/p1/locations/us/keyRings/models:setIamPolicy$"),
    v.CRYPTO_KEY: ("//cloudkms.googleapis.com/projects/p1/locations/us/keyRings/models/cryptoKeys/weights",
                   r"/v1/projects/p1/locations/us/keyRings/models/cryptoKeys/weights:setIamPolicy$"),
    v.SECRET: ("//secretmanager.googleapis.com/projects/402000000009/secrets/hf-token",
               r"/v1/projects/402000000009/secrets/hf-token:setIamPolicy$"),
    v.REPOSITORY: ("//artifactregistry.googleapis.com/projects/p1/locations/us-central1/repositories/images",
                   r"/v1/projects/p1/locations/us-central1/repositories/images:setIamPolicy$"),
    v.RUN_SERVICE: ("//run.googleapis.com/projects/p1/locations/us-central1/services/predict",
                    r"/v2/projects/p1/locations/us-central1/services/predict:setIamPolicy$"),
    v.ML_MODEL: ("//ml.googleapis.com/projects/p1/models/ranker", r"/v1/projects/p1/models/ranker:setIamPolicy$"),
    v.DATASET: ("//bigquery.googleapis.com/projects/p1/datasets/eval_results",
                r"^/bigquery/v2/projects/p1/datasets/eval_results$"),
}


def test_every_endpoint_is_tested() -> None:
    assert set(TYPES) == set(ENDPOINTS)


def _roles(asset_type: str) -> tuple[str, str]:
    if asset_type == v.DATASET:
        return "roles/bigquery.dataViewer", "roles/bigquery.dataOwner"
    return "roles/viewer", "roles/editor"


def _policy(asset_type: str, etag: str) -> dict[str, Any]:
    reader, writer = _roles(asset_type)
    return {"version": 3, "etag": etag, "bindings": [
        {"role": reader, "members": ["allUsers", GMAIL, "group:ml-team@example.com"]},
        {"role": writer, "members": ["group:ml-admins@example.com"]},
        {"role": reader, "members": ["user:oncall@example.com"], "condition": CONDITION},
    ]}


def _load(fake: FakeGcp, tmp_path: Path, asset_type: str, name: str) -> Path:
    record = {"name": name, "asset_type": asset_type, "ancestors": ["projects/402000000009", "organizations/1"],
              "iam_policy": _policy(asset_type, "BwYTYPESAAA="), "resource": {"data": {"name": name}}}
    export = tmp_path / "export.ndjson"
    export.write_text(json.dumps(record) + "\n", encoding="utf-8")
    fake.load(export)
    return export


def _plan(export: Path, tmp_path: Path) -> Plan:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE, encoding="utf-8")
    result = run_scan([str(export)], load_rules([rules]), SourceOptions())
    assert len(result.findings) == 2, [f.message for f in result.findings]
    return plan_from_scan(result, [str(export)], guard_config=GuardConfig())


def _sent_token(req: RecordedRequest) -> Any:
    if req.method == "PATCH":
        return req.headers.get("If-Match")
    body = req.body or {}
    return (body.get("policy") or body).get("etag")


def _live(fake: FakeGcp, name: str) -> dict[str, Any]:
    return (fake.state.asset(name) or {}).get("iamPolicy") or {}


@pytest.mark.parametrize("asset_type", sorted(TYPES))
def test_public_and_gmail_members_removed_with_the_etag(
    asset_type: str, fake_gcp: FakeGcp, gcp_endpoint: str, tmp_path: Path
) -> None:
    name, write_path = TYPES[asset_type]
    export = _load(fake_gcp, tmp_path, asset_type, name)
    plan = _plan(export, tmp_path)
    (change,) = plan.changes
    assert change.token == "BwYTYPESAAA="
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
    assert report.ok, report.to_dict()
    (write,) = [r for r in fake_gcp.calls(path=write_path) if r.method in ("POST", "PUT", "PATCH")]
    # A dataset is written with the etag datasets.get gave just before (not CAI's, which that API does not know).
    assert _sent_token(write) == (_dataset_etag("BwYTYPESAAA=") if asset_type == v.DATASET else "BwYTYPESAAA=")
    reader, writer = _roles(asset_type)
    assert iam_section(_live(fake_gcp, name)) == iam_section({"bindings": [
        {"role": reader, "members": ["group:ml-team@example.com"]},
        {"role": writer, "members": ["group:ml-admins@example.com"]},
        {"role": reader, "members": ["user:oncall@example.com"], "condition": CONDITION},
    ]})
    assert _live(fake_gcp, name)["etag"] != "BwYTYPESAAA="


@pytest.mark.parametrize("asset_type", sorted(TYPES))
def test_a_change_between_plan_and_apply_is_a_conflict(
    asset_type: str, fake_gcp: FakeGcp, gcp_endpoint: str, tmp_path: Path
) -> None:
    name, write_path = TYPES[asset_type]
    export = _load(fake_gcp, tmp_path, asset_type, name)
    plan = _plan(export, tmp_path)
    moved = _policy(asset_type, "BwYMOVEDAAA=")
    moved["bindings"][1]["members"].append("group:late-admins@example.com")
    fake_gcp.state.update_asset(name, iamPolicy=moved)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
    (result,) = report.results
    assert result.outcome == Outcome.conflict, result.reason
    assert not [r for r in fake_gcp.calls(path=write_path) if r.method in ("POST", "PUT", "PATCH")]
    assert _live(fake_gcp, name) == moved


def test_a_dataset_plan_is_checked_against_its_access_list_and_written_with_the_live_etag(
    fake_gcp: FakeGcp, gcp_endpoint: str, tmp_path: Path
) -> None:
    """The CAI etag says only which access list the finding saw: a dataset whose etag moved with the same access
    list (a new description, a label) is still fixed, written with the etag datasets.get gives now."""
    name, write_path = TYPES[v.DATASET]
    export = _load(fake_gcp, tmp_path, v.DATASET, name)
    plan = _plan(export, tmp_path)
    fake_gcp.state.update_asset(name, iamPolicy=_policy(v.DATASET, "BwYRELABELD="))
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
    (result,) = report.results
    assert result.outcome == Outcome.applied, result.reason
    (write,) = [r for r in fake_gcp.calls(path=write_path) if r.method == "PATCH"]
    assert write.headers.get("If-Match") == _dataset_etag("BwYRELABELD=")
    assert "allUsers" not in str(_live(fake_gcp, name))


@pytest.mark.parametrize("asset_type", sorted(TYPES))
def test_a_change_between_the_read_and_the_write_is_refused(
    asset_type: str, fake_gcp: FakeGcp, gcp_endpoint: str, tmp_path: Path
) -> None:
    """Someone grants on the resource after apply re-read it: the write carries the etag read, the API refuses it
    (409 or 412), the outcome is a conflict and the other grant stays."""
    name, write_path = TYPES[asset_type]
    export = _load(fake_gcp, tmp_path, asset_type, name)
    plan = _plan(export, tmp_path)
    real = writers()
    moved = _policy(asset_type, "BwYRACEDAAA=")
    moved["bindings"][1]["members"].append("group:late-admins@example.com")

    class Racing:
        """The real writer, with someone else's write landing between its read and its own write."""

        def __init__(self, inner: Any) -> None:
            self.inner, self.family = inner, inner.family

        def read(self, target: Any) -> Any:
            return self.inner.read(target)

        def write(self, target: Any, live: Any, new: Any) -> None:
            fake_gcp.state.update_asset(name, iamPolicy=moved)
            self.inner.write(target, live, new)

    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, lambda family: Racing(real(family)), journal, GuardConfig(), approved=True)
        (entry,) = journal.entries(report.apply_id or "")
    (result,) = report.results
    assert result.outcome == Outcome.conflict, result.reason
    assert entry.outcome == "conflict"
    (write,) = [r for r in fake_gcp.calls(path=write_path) if r.method in ("POST", "PUT", "PATCH")]
    assert _sent_token(write) == (_dataset_etag("BwYTYPESAAA=") if asset_type == v.DATASET else "BwYTYPESAAA=")
    assert _live(fake_gcp, name) == moved


@pytest.mark.parametrize("asset_type", sorted(TYPES))
def test_the_api_refuses_a_stale_etag(asset_type: str, fake_gcp: FakeGcp, gcp_endpoint: str,
                                      tmp_path: Path) -> None:
    """The fake enforces the etag itself: a write with a stale one is refused (409 or 412), never applied."""
    from remediations.families.iam.endpoints import endpoint_for
    from remediations.families.iam.transports import PolicyTransport

    name, _ = TYPES[asset_type]
    _load(fake_gcp, tmp_path, asset_type, name)
    found = endpoint_for(name, asset_type)
    assert found is not None
    e, resource = found
    transport = PolicyTransport()
    api_resource = f"projects/_/buckets/{resource}" if asset_type == v.BUCKET else resource
    live = transport.get(e.service.api, api_resource, resource)
    stale = {"version": 3, "bindings": live["bindings"][1:], "etag": "BwYSTALEAAA="}
    from google.api_core import exceptions as gexc

    with pytest.raises((gexc.Aborted, gexc.Conflict, gexc.PreconditionFailed)):
        transport.set(e.service.api, api_resource, resource, live, stale)
    assert _live(fake_gcp, name)["etag"] == "BwYTYPESAAA="


def test_the_remediation_role_lists_every_endpoint_permission() -> None:
    from click.testing import CliRunner

    from auditor.cli import cli

    out = CliRunner().invoke(cli, ["permissions", "--remediation", "--format", "json"], catch_exceptions=False)
    listed = set(json.loads(out.output)["includedPermissions"])
    for e in ENDPOINTS.values():
        assert set(e.permissions) <= listed, e.asset_type
    read_only = CliRunner().invoke(cli, ["permissions", "--format", "json"], catch_exceptions=False)
    assert not {p for e in ENDPOINTS.values() for p in e.permissions if "set" in p or "update" in p} & set(
        json.loads(read_only.output)["includedPermissions"])
