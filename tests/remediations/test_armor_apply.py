"""Cloud Armor desired state through add, patch and remove rule writes; a change between two rule writes; retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auditor.collect.retry import RetryPolicy
from remediations.apply import Outcome, apply_plan, rollback
from remediations.families.cloud_armor import CloudArmorWriter, armor_section
from remediations.guards import GuardConfig
from remediations.journal import Journal
from remediations.writers import writers
from tests.fakes.gcp import FakeGcp, Fault
from tests.remediations.test_gcp_apply import make_plan, org, scan  # noqa: F401 - org is a fixture

PROJECT, POLICY = "ml-research-sandbox", "notebook-gateway"
NO_SLEEP = RetryPolicy(attempts=4, sleep=lambda s: None)

DESIRED = """
- id: gateway-as-declared
  check: cloud_armor.desired_state
  severity: high
  mode: dryrun
  remediation: cloud_armor.add_rule
  params:
    policies:
      notebook-gateway:
        - {priority: 500, action: allow, src_ranges: [203.0.113.0/24], description: office}
        - {priority: 800, action: allow, src_ranges: [198.51.100.0/24]}
        - {priority: 1000, action: deny(403), expression: "evaluatePreconfiguredExpr('sqli-v33-stable')"}
- id: gateway-nothing-else
  check: cloud_armor.desired_state
  severity: high
  mode: dryrun
  remediation: cloud_armor.remove_rule
  params:
    policies:
      notebook-gateway:
        - {priority: 500, action: allow, src_ranges: [203.0.113.0/24], description: office}
        - {priority: 800, action: allow, src_ranges: [198.51.100.0/24]}
        - {priority: 1000, action: deny(403), expression: "evaluatePreconfiguredExpr('sqli-v33-stable')"}
"""


def _policy(fake: FakeGcp) -> dict[str, Any]:
    return dict(fake.state.security_policy(PROJECT, POLICY))


def _rule_writes(fake: FakeGcp) -> list[str]:
    return [r.path.rsplit("/", 1)[-1] for r in fake.calls("POST", r"/(addRule|patchRule|removeRule)$")]


def test_desired_state_written_rule_by_rule_then_rolled_back(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:  # noqa: F811
    rules = write_rules(DESIRED)
    before = _policy(org)
    _, plan = make_plan(rules)
    (change,) = plan.changes
    # 500 and 800 differ from their declaration, 1000 is missing, 900 is not declared.
    assert sorted((e.kind, e.args.get("priority") or e.args["rule"]["priority"]) for e in change.edits) == [
        ("cloud_armor.add_rule", 500), ("cloud_armor.add_rule", 800), ("cloud_armor.add_rule", 1000),
        ("cloud_armor.remove_rule", 900)]
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(retry=NO_SLEEP), journal, GuardConfig(), approved=True)
        assert report.ok, report.to_dict()
        assert sorted(_rule_writes(org)) == ["addRule", "patchRule", "patchRule", "removeRule"]
        got = {int(r["priority"]): r for r in _policy(org)["rules"]}
        assert sorted(got) == [500, 800, 1000, 2147483647]
        assert got[500]["match"]["config"]["srcIpRanges"] == ["203.0.113.0/24"]
        assert got[1000]["match"]["expr"]["expression"] == "evaluatePreconfiguredExpr('sqli-v33-stable')"
        assert not [f for f in scan(rules).findings if f.rule.startswith("gateway-")]
        back = rollback(report.apply_id or "", writers(retry=NO_SLEEP), journal, GuardConfig(), approved=True)
        assert back.ok, back.to_dict()
    assert armor_section(_policy(org)) == armor_section(before)


def test_change_between_two_rule_writes_stops_and_rollback_restores(
    org: FakeGcp, write_rules: Any, tmp_path: Path  # noqa: F811
) -> None:
    _, plan = make_plan(write_rules(DESIRED))
    before = _policy(org)

    class Interrupted(CloudArmorWriter):
        reads = 0

        def read(self, target: Any) -> Any:
            Interrupted.reads += 1
            if Interrupted.reads == 2:  # the check before the second rule write: someone edits a rule meanwhile
                pol = _policy(org)
                pol["rules"] = [dict(r, description="hand edit") if int(r["priority"]) == 2147483647 else r
                                for r in pol["rules"]]
                org.state.write_security_policy(PROJECT, pol)
            return super().read(target)

    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, lambda family: Interrupted(retry=NO_SLEEP), journal, GuardConfig(), approved=True)
        (result,) = report.results
        assert result.outcome == Outcome.failed
        assert "changed while its rules were written (1 of 4 written)" in result.reason
        assert len(_rule_writes(org)) == 1
        (entry,) = journal.entries(report.apply_id or "")
        assert entry.outcome == "failed" and entry.after is not None
        # Rollback restores the before-state of the written part; the hand edit is a change since: refused.
        back = rollback(report.apply_id or "", writers(retry=NO_SLEEP), journal, GuardConfig(), approved=True)
        assert back.counts()["applied"] == 1, back.to_dict()
    restored = armor_section(_policy(org))
    expected = armor_section(before)
    assert [r["priority"] for r in restored] == [r["priority"] for r in expected]
    assert [r for r in restored if r["priority"] != 2147483647] == [
        r for r in expected if r["priority"] != 2147483647]


def test_transient_errors_are_retried(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:  # noqa: F811
    _, plan = make_plan(write_rules(DESIRED))
    org.inject(Fault(status=503, times=1, method="GET", path=r"/securityPolicies/notebook-gateway$"))
    org.inject(Fault(status=429, times=1, method="POST", path=r"/addRule$"))
    with Journal(tmp_path / "state.db") as journal:
        report = apply_plan(plan, writers(retry=NO_SLEEP), journal, GuardConfig(), approved=True)
    assert [r.outcome for r in report.results] == [Outcome.applied], report.results[0].reason
