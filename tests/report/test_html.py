"""The /report page: findings by severity with the rule's rationale, drift since the previous cycle, banners for
partial, failed and stale data, the pending plan, and asset names escaped (they come from the audited org)."""

from __future__ import annotations

from pathlib import Path

from auditor.evaluate.rulebook import load_rules
from auditor.model import Finding, Mode, Severity, finding_id
from auditor.report.html import age, render_report
from auditor.state import CycleInput, Store

RULES = """
- id: public
  check: iam.forbidden_members
  severity: critical
  description: Nothing is public.
  rationale: Public buckets leak training data.
  params: {members: [allUsers]}
- id: owners
  check: iam.banned_roles
  severity: medium
  description: No basic roles.
  rationale: Owners can do anything.
  params: {roles: [roles/owner]}
"""


def f(rule: str, asset: str, sev: str) -> Finding:
    return Finding(finding_id(rule, asset, ""), rule, "c", Severity(sev), Mode.audit, asset,
                   "storage.googleapis.com/Bucket", f"{rule} finding on {asset}")


def render(store: Store, rules_path: Path, **kw: object) -> str:
    last, drift = store.last_drift()
    args: dict[str, object] = dict(
        now=10_000.0, latest=store.last_cycle(), drift_cycle=last, drift=drift, findings=store.open_findings(),
        drift_counts=store.drift_totals(last) if last is not None else None,
        rules=load_rules([rules_path]), sources=store.sources(), data_at=9_000.0, stale=False,
        history=store.cycles(),
    )
    args.update(kw)
    return render_report(**args)  # type: ignore[arg-type]


def test_findings_by_severity_with_rationale_and_drift(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    evil = '//storage.googleapis.com/<script>alert("x")</script>'
    with Store(tmp_path / "s.db") as store:
        owners = f("owners", "//p/1", "medium")
        store.record_cycle(CycleInput(100, 101, "success", [owners, f("public", "//a", "critical")]))
        store.record_cycle(CycleInput(7000, 7001, "success", [owners, f("public", evil, "critical")]))
        html = render(store, rules)
    # Critical before medium, each with the rule's description and rationale.
    assert html.index("Public buckets leak training data.") < html.index("Owners can do anything.")
    assert "Nothing is public." in html
    # Drift of the last cycle: one new, one resolved, named.
    assert "1 new" in html and "1 resolved" in html
    assert "storage.googleapis.com/&lt;script&gt;" in html and "<script>" not in html
    # Ages: the medium finding has been open since the first cycle.
    assert age(10_000 - 101) in html
    assert "The last cycle failed" not in html and "partial" not in html.split("<h2>")[0]


def test_banners_for_partial_failed_and_stale(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with Store(tmp_path / "s.db") as store:
        store.record_cycle(CycleInput(100, 101, "success", [f("public", "//a", "critical")]))
        store.record_cycle(CycleInput(200, 201, "partial", [], incomplete={"storage.googleapis.com/Bucket": "403"}))
        html = render(store, rules, stale=True, last_success_at=101.0, success_overdue=True)
        assert "No successful cycle since 1970-01-01T00:01:41.000Z" in html
        assert "The last snapshot was partial" in html and "403" in html and "stale: not re-read" in html
        assert "The data is stale" in html
        store.record_cycle(CycleInput(300, 301, "failed", None, error="source org: no such file or folder"))
        html = render(store, rules)
        assert "The last cycle failed" in html and "source org: no such file or folder" in html
        # The findings are kept, not cleared.
        assert "//a".removeprefix("//") in html


def test_planned_fixes(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    plan = {"id": "abc123", "changes": [{"resource": "//storage.googleapis.com/a", "rules": ["public"],
                                         "edits": [{"kind": "iam.remove_member", "description": "remove allUsers"}]}]}
    with Store(tmp_path / "s.db") as store:
        store.record_cycle(CycleInput(100, 101, "success", [f("public", "//a", "critical")]))
        assert "Planned fixes" not in render(store, rules)
        html = render(store, rules, plan=plan)
        assert "Planned fixes" in html and "abc123" in html and "remove allUsers" in html
        html = render(store, rules, plan=plan, remediation_html="<section id='plan'>rendered plan</section>")
        assert "<section id='plan'>rendered plan</section>" in html


def test_before_any_cycle() -> None:
    html = render_report(latest=None, drift_cycle=None, drift=[], findings=[], rules=[], sources=[], data_at=None,
                         stale=True)
    assert "No cycle has completed yet" in html


def test_age_reads_at_a_glance() -> None:
    assert [age(s) for s in (5, 125, 7300, 3 * 86400 + 4 * 3600, None)] == ["5s", "2m", "2h 1m", "3d 4h", "-"]


def test_long_lists_are_cut_for_people_and_say_where_the_rest_is(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with Store(tmp_path / "s.db") as store:
        store.record_cycle(CycleInput(50, 51, "success", []))  # the baseline
        store.record_cycle(CycleInput(100, 101, "success", [f("public", f"//b/{i}", "critical") for i in range(12)]))
        html = render(store, rules, max_rows=5)
    assert html.count("public finding on //b/") == 10  # 5 in the drift table, 5 in the findings table
    assert "7 more drift events" in html and "7 more findings of this rule in /findings.json" in html


def test_the_baseline_cycle_is_not_presented_as_drift(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with Store(tmp_path / "s.db") as store:
        store.record_cycle(CycleInput(100, 101, "success", [f("public", "//a", "critical"), f("owners", "//b",
                                                                                               "medium")]))
        html = render(store, rules)
    assert "is the baseline" in html and "2 finding(s) were already there" in html
    assert "new</span>" not in html  # no drift table
