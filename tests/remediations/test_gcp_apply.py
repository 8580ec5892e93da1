"""Plan, apply, verify, journal and roll back IAM and Cloud Armor changes against the fake Google Cloud APIs.

The plan is made from a `cai://` scan of the fake (the same state the appliers re-read), applied with the real
Resource Manager and Compute clients, and the next `cai://` scan shows the answered findings gone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_rules
from auditor.scan import ScanResult, run_scan
from remediations.apply import Outcome, apply_plan, rollback
from remediations.families.cloud_armor import armor_section
from remediations.families.iam import iam_section
from remediations.guards import GuardConfig
from remediations.journal import Journal
from remediations.plan import Plan
from remediations.planning import plan_from_scan
from remediations.writers import writers
from tests.fakes.gcp import FakeGcp
from tests.remediations.conftest import ORG, remediation_rules

SOURCE = f"cai://{ORG}"
PROJECT = "projects/401000000003"
POLICY = ("ml-research-sandbox", "notebook-gateway")

RULES = remediation_rules(basic_roles=["roles/owner", "roles/editor"])


@pytest.fixture
def org(fake_gcp: FakeGcp, gcp_endpoint: str, repo: Path) -> FakeGcp:
    fake_gcp.load(repo / "examples" / "org")
    return fake_gcp


def scan(rules_path: Path) -> ScanResult:
    return run_scan([SOURCE], load_rules([rules_path]), SourceOptions())


def make_plan(rules_path: Path, cfg: GuardConfig | None = None) -> tuple[ScanResult, Plan]:
    result = scan(rules_path)
    assert result.complete, result.incomplete_types()
    return result, plan_from_scan(result, [SOURCE], guard_config=cfg or GuardConfig())


def iam_of(fake: FakeGcp, resource: str) -> dict[str, Any]:
    return fake.state.get_policy(resource, 3)


def armor_of(fake: FakeGcp) -> dict[str, Any]:
    return dict(fake.state.security_policy(*POLICY))


def set_iam_calls(fake: FakeGcp) -> int:
    return len(fake.calls("POST", r":setIamPolicy$"))


def test_plan_applies_findings_gone_journal_and_rollback(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:
    rules = write_rules(RULES)
    before_scan, plan = make_plan(rules)
    assert plan.changes, "the example organization has findings with remediations"
    planned = {c.resource for c in plan.changes}
    before_states = {
        c.resource: iam_of(org, c.target.resource) if c.family == "iam" else armor_of(org) for c in plan.changes
        if c.family == "iam" or c.target.policy == POLICY[1]
    }
    answered = {f for c in plan.changes for f in c.findings}
    assert answered <= {f.id for f in before_scan.findings}

    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
        outcomes = {r.resource: r for r in report.results}
        assert set(outcomes) == planned
        assert {r.outcome for r in outcomes.values()} == {Outcome.applied}, report.to_dict()
        # Removing the only owner of a project is refused, with the reason; the other edits of that policy and of
        # the other resources are written. The plan said so beforehand.
        refused_findings: set[str] = set()
        for c in plan.changes:
            refused = {x["edit"]: x["reason"] for x in outcomes[c.resource].refused_edits}
            assert sorted(refused) == sorted(n.split(": ", 1)[0] for n in c.notes)
            for e in c.edits:
                if e.describe() in refused:
                    assert refused[e.describe()].startswith("last-owner:") and "roles/owner" in e.describe()
                    refused_findings.update(e.findings)
        assert refused_findings and not report.ok
        applied = planned

        # The findings the applied edits answer are gone on the next scan; the refused ones remain.
        after_ids = {f.id for f in scan(rules).findings}
        assert not (answered - refused_findings) & after_ids
        assert refused_findings <= after_ids

        # The journal holds the exact before-state and the state read back after.
        entries = {e.resource: e for e in journal.entries(report.apply_id or "")}
        assert set(entries) == applied
        for name, e in entries.items():
            assert e.outcome == "applied" and e.token_before != e.token_after
            if e.family == "iam":
                assert iam_section(e.before) == iam_section(before_states[name])
                assert iam_section(e.after) == iam_section(iam_of(org, e.target["resource"]))
            elif name in before_states:
                assert armor_section(e.before) == armor_section(before_states[name])
                assert armor_section(e.after) == armor_section(armor_of(org))

        # Re-running the applied plan changes nothing.
        calls = set_iam_calls(org)
        again = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
        again_by = {r.resource: r.outcome for r in again.results}
        assert again_by == {c.resource: Outcome.refused if c.notes else Outcome.skipped for c in plan.changes}
        assert set_iam_calls(org) == calls

        # Rollback restores the exact before-state.
        back = rollback(report.apply_id or "", writers(), journal, GuardConfig(), approved=True)
        assert back.counts()["applied"] == len(applied), back.to_dict()
        for name, state in before_states.items():
            if name not in applied:
                continue
            if name.startswith("//cloudresourcemanager"):
                assert iam_of(org, name.split(".com/", 1)[1])["bindings"] == state["bindings"]
            else:
                assert armor_section(armor_of(org)) == armor_section(state)
        assert {f.id for f in scan(rules).findings} == {f.id for f in before_scan.findings}


def test_concurrent_etag_change_is_a_conflict_and_nothing_is_written(
    org: FakeGcp, write_rules: Any, tmp_path: Path
) -> None:
    _, plan = make_plan(write_rules(RULES))
    change = next(c for c in plan.changes if c.target.resource == PROJECT)
    # Someone grants a role between plan and apply: the etag moves.
    live = iam_of(org, PROJECT)
    live["bindings"].append({"role": "roles/viewer", "members": ["user:late@helix-ml.example"]})
    org.state.set_policy(PROJECT, live)
    moved = iam_of(org, PROJECT)
    calls = set_iam_calls(org)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True, changes=[change])
    (result,) = report.results
    assert result.outcome == Outcome.conflict
    assert "etag" in result.reason and change.token in result.reason
    assert set_iam_calls(org) == calls
    assert iam_of(org, PROJECT) == moved


def test_concurrent_fingerprint_change_is_a_conflict(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:
    _, plan = make_plan(write_rules(RULES))
    change = next(c for c in plan.changes if c.target.policy == POLICY[1])
    pol = armor_of(org)
    pol["description"] = "edited by hand"
    org.state.write_security_policy(POLICY[0], pol)
    moved = armor_of(org)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True, changes=[change])
    assert [r.outcome for r in report.results] == [Outcome.conflict]
    assert "fingerprint" in report.results[0].reason
    assert not org.calls("POST", r"/(addRule|patchRule|removeRule)$")
    assert armor_of(org) == moved


def test_conditional_binding_on_the_same_policy_survives(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:
    cond = {"title": "until-2027", "expression": 'request.time < timestamp("2027-01-01T00:00:00Z")'}
    live = iam_of(org, PROJECT)
    live["bindings"].append({"role": "roles/storage.admin", "members": ["group:ml-researchers@helix-ml.example"],
                             "condition": cond})
    live["version"] = 3
    org.state.set_policy(PROJECT, live)
    _, plan = make_plan(write_rules(RULES))
    change = next(c for c in plan.changes if c.target.resource == PROJECT)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True, changes=[change])
    assert [r.outcome for r in report.results] == [Outcome.applied], report.to_dict()
    after = iam_of(org, PROJECT)
    kept = [b for b in after["bindings"] if b.get("condition")]
    assert kept == [{"role": "roles/storage.admin", "members": ["group:ml-researchers@helix-ml.example"],
                     "condition": cond}]
    assert after["version"] == 3
    editors = [m for b in after["bindings"] if b["role"] == "roles/editor" for m in b["members"]]
    assert "group:ml-researchers@helix-ml.example" not in editors
    assert editors == ["serviceAccount:401000000003@cloudservices.gserviceaccount.com"]  # Google's own: kept


def test_conditional_member_is_removed_from_the_conditional_binding_only(
    org: FakeGcp, write_rules: Any, tmp_path: Path
) -> None:
    cond = {"title": "temp", "expression": 'request.time < timestamp("2027-01-01T00:00:00Z")'}
    live = iam_of(org, PROJECT)
    live["bindings"].append({"role": "roles/viewer", "members": ["allUsers", "user:keep@helix-ml.example"],
                             "condition": cond})
    live["bindings"].append({"role": "roles/viewer", "members": ["user:keep@helix-ml.example"]})
    live["version"] = 3
    org.state.set_policy(PROJECT, live)
    rules = write_rules("""
- id: no-public
  check: iam.forbidden_members
  severity: critical
  params: {members: [allUsers]}
  mode: dryrun
  remediation: iam.remove_member
""")
    _, plan = make_plan(rules)
    (change,) = [c for c in plan.changes if c.target.resource == PROJECT]
    assert change.edits[0].args["condition"] == cond
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True, changes=[change])
    assert report.ok, report.to_dict()
    viewers = [b for b in iam_of(org, PROJECT)["bindings"] if b["role"] == "roles/viewer"]
    assert sorted((b["members"], bool(b.get("condition"))) for b in viewers) == [
        (["domain:helix-ml.example"], False), (["user:keep@helix-ml.example"], False),
        (["user:keep@helix-ml.example"], True)]


PUBLIC = """
- id: no-public
  check: iam.forbidden_members
  severity: critical
  params: {members: [allUsers, allAuthenticatedUsers]}
  mode: dryrun
  remediation: iam.remove_member
"""


def _bucket_policy(fake: FakeGcp, bucket: str) -> dict[str, Any]:
    return dict((fake.state.asset(f"//storage.googleapis.com/{bucket}") or {}).get("iamPolicy") or {})


def test_public_bucket_fixed_through_the_storage_api_and_rolled_back(
    org: FakeGcp, write_rules: Any, tmp_path: Path
) -> None:
    rules = write_rules(PUBLIC)
    _, plan = make_plan(rules)
    buckets = sorted(c.target.name or "" for c in plan.changes if c.target.api == "storage")
    assert buckets == ["helix-model-cards-site", "helix-open-datasets-mirror"]
    # The dataset is fixed too, through the BigQuery API (its access list, with the dataset's etag).
    dataset = "//bigquery.googleapis.com/projects/data-lake-prod/datasets/eval_results"
    assert plan.skipped == []
    assert [c.target.api for c in plan.changes if c.resource == dataset] == ["bigquery"]
    before = {b: _bucket_policy(org, b) for b in buckets}
    # One bucket changes between plan and apply: a conflict there, the other is fixed.
    moved = dict(before[buckets[1]], etag="BwAAAAAAAHM=")
    org.state.update_asset(f"//storage.googleapis.com/{buckets[1]}", iamPolicy=moved)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
        outcome = {r.resource.rsplit("/", 1)[-1]: r.outcome for r in report.results}
        assert outcome == {buckets[0]: Outcome.applied, buckets[1]: Outcome.conflict, "eval_results": Outcome.applied}
        assert len(org.calls("PUT", r"/iam$")) == 1
        assert len(org.calls("PATCH", r"/datasets/eval_results$")) == 1
        assert dataset not in {f.asset for f in scan(rules).findings}
        fixed = _bucket_policy(org, buckets[0])
        assert not any(m.startswith("all") for b in fixed["bindings"] for m in b["members"])
        assert iam_section(fixed) == next(c.after for c in plan.changes if c.target.name == buckets[0])
        remaining = {f.asset for f in scan(rules).findings}
        assert f"//storage.googleapis.com/{buckets[0]}" not in remaining
        assert f"//storage.googleapis.com/{buckets[1]}" in remaining
        back = rollback(report.apply_id or "", writers(), journal, GuardConfig(), approved=True)
        assert back.ok and back.counts()["applied"] == 2
    assert iam_section(_bucket_policy(org, buckets[0])) == iam_section(before[buckets[0]])
    assert dataset in {f.asset for f in scan(rules).findings}, "the rollback granted the dataset again"


SA = "projects/ml-training-prod/serviceAccounts/trainer@ml-training-prod.iam.gserviceaccount.com"
WI_MEMBER = "serviceAccount:ml-platform-prod.svc.id.goog[tenant-vision/trainer]"


def test_service_account_policy_through_the_iam_api(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:
    rules = write_rules(f"""
- id: no-workload-identity-on-trainer
  check: iam.forbidden_members
  severity: high
  match: {{asset_types: [iam.googleapis.com/ServiceAccount]}}
  params: {{members: ["{WI_MEMBER}"]}}
  mode: dryrun
  remediation: iam.remove_binding
""")
    _, plan = make_plan(rules)
    (change,) = plan.changes
    assert change.target.api == "iam_admin" and change.target.resource == SA
    before = iam_of(org, SA)
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
        assert report.ok, report.to_dict()
        assert org.calls("POST", r"/v1/projects/ml-training-prod/serviceAccounts/.*:setIamPolicy$")
        assert iam_of(org, SA).get("bindings") in (None, [])
        assert not scan(rules).findings
        back = rollback(report.apply_id or "", writers(), journal, GuardConfig(), approved=True)
        assert back.ok, back.to_dict()
    assert iam_of(org, SA)["bindings"] == before["bindings"]


def test_a_failure_on_one_resource_does_not_stop_the_others(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:
    from tests.fakes.gcp import Fault

    _, plan = make_plan(write_rules(RULES))
    org.inject(Fault(status=403, times=None, method="POST", path=rf"/{PROJECT}:setIamPolicy$",
                     permission="resourcemanager.projects.setIamPolicy"))
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(), journal, GuardConfig(), approved=True)
        by = {r.resource: r for r in report.results}
        failed = by[f"//cloudresourcemanager.googleapis.com/{PROJECT}"]
        assert failed.outcome == Outcome.failed
        assert failed.reason == ("write failed: Forbidden 403: The caller does not have permission "
                                 "(lacks resourcemanager.projects.setIamPolicy)")
        others = [r for name, r in by.items() if not name.endswith(PROJECT)]
        assert others and {r.outcome for r in others} == {Outcome.applied}
        entry = next(e for e in journal.entries(report.apply_id or "") if e.resource.endswith(PROJECT))
        assert entry.outcome == "failed" and entry.after is None, "nothing was written there"
    assert report.counts()["failed"] == 1 and not report.ok


def test_the_api_refusing_a_stale_etag_is_a_conflict(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:
    """The etag moves after the applier's re-read: setIamPolicy answers 409 ABORTED; nothing is written."""
    from remediations.families.iam import IamWriter

    _, plan = make_plan(write_rules(RULES))
    change = next(c for c in plan.changes if c.target.resource == PROJECT)

    class Racing(IamWriter):
        def write(self, target: Any, live: Any, new: Any) -> None:
            policy = iam_of(org, PROJECT)
            policy["bindings"].append({"role": "roles/viewer", "members": ["user:racer@helix-ml.example"]})
            org.state.set_policy(PROJECT, policy)  # a concurrent writer wins the race
            super().write(target, live, new)

    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, lambda family: Racing(), journal, GuardConfig(), approved=True, changes=[change])
        (result,) = report.results
        assert result.outcome == Outcome.conflict and "concurrent policy changes" in result.reason
        (entry,) = journal.entries(report.apply_id or "")
        assert entry.outcome == "conflict"
    editors = [m for b in iam_of(org, PROJECT)["bindings"] if b["role"] == "roles/editor" for m in b["members"]]
    assert "group:ml-researchers@helix-ml.example" in editors
