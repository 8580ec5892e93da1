"""The daemon's remediation step: enforce changes applied within the guards on the leader, dry-run ones pending."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from auditor.evaluate.rulebook import load_rules
from auditor.scan import run_scan
from auditor.settings import Settings
from remediations.cycle import elector_for, run_remediation
from remediations.leader import AlwaysLeader, FileLockElector
from tests.fakes.gcp import FakeGcp
from tests.remediations.conftest import ORG, remediation_rules

SOURCE = f"cai://{ORG}"
RULES = remediation_rules(basic_roles=["roles/editor"], basic_roles_mode="audit")


@pytest.fixture
def org(fake_gcp: FakeGcp, gcp_endpoint: str, repo: Path) -> FakeGcp:
    fake_gcp.load(repo / "examples" / "org")
    return fake_gcp


def _settings(rules: Path, tmp_path: Path, **remediation: Any) -> Settings:
    return Settings(sources=[SOURCE], rules=[str(rules)], state_path=tmp_path / "state.db",
                    remediation={"enabled": True, **remediation})


def _cycle(settings: Settings, **kw: Any) -> dict[str, Any]:
    result = run_scan(settings.sources, load_rules(settings.rules), settings.sources_options())
    return run_remediation(result, settings, settings.state_path, **kw)


def _open_rules(fake: FakeGcp) -> list[int]:
    pol = fake.state.security_policy("ml-research-sandbox", "notebook-gateway")
    return [int(r["priority"]) for r in pol["rules"]]


def test_enforce_changes_applied_dryrun_pending(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:
    settings = _settings(write_rules(RULES), tmp_path)
    assert 500 in _open_rules(org)
    out = _cycle(settings, elector=AlwaysLeader())
    assert out["counts"] == {("armor-no-open-allow", "cloud_armor.remove_rule", "applied"): 1}
    assert 500 not in _open_rules(org)
    # The pending plan holds the dry-run changes only; audit rules plan nothing.
    kinds = {(r, e["kind"]) for c in out["plan"]["changes"] for e in c["edits"] for r in e["rules"]}
    assert kinds == {("armor-default-deny", "cloud_armor.set_default_deny")}
    assert "make the default rule deny(403)" in out["html"] and out["html"].lstrip().startswith("<section")
    assert all(not c["notes"] for c in out["plan"]["changes"]), "an operator's apply would not be refused"
    # The next cycle has nothing left to enforce.
    again = _cycle(settings, elector=AlwaysLeader())
    assert again["counts"] == {} and again["apply"] is None


def test_only_the_leader_writes(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:
    settings = _settings(write_rules(RULES), tmp_path)
    lock = str(tmp_path / "leader.lock")
    other = FileLockElector(lock, "other-replica")
    assert other.is_leader()
    try:
        out = _cycle(settings, elector=FileLockElector(lock, "this-replica"))
        assert out["leader"] is False and out["counts"] == {}
        assert 500 in _open_rules(org)
    finally:
        other.stop()
    out = _cycle(settings, elector=FileLockElector(lock, "this-replica"))
    assert out["leader"] is True and 500 not in _open_rules(org)


def test_cycle_cap_refuses_and_writes_nothing(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:
    settings = _settings(write_rules(RULES), tmp_path, max_changes_per_cycle=0)
    out = _cycle(settings, elector=AlwaysLeader())
    assert out["counts"] == {("armor-no-open-allow", "cloud_armor.remove_rule", "refused"): 1}
    assert "max-changes-per-cycle" in out["apply"]["refused"]
    assert 500 in _open_rules(org)


def test_disabled_remediation_never_writes(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:
    settings = _settings(write_rules(RULES), tmp_path, enabled=False)
    out = _cycle(settings, elector=AlwaysLeader())
    assert out["counts"] == {("armor-no-open-allow", "cloud_armor.remove_rule", "refused"): 1}
    assert "explicit-apply" in out["apply"]["refused"]
    assert 500 in _open_rules(org)


def test_default_election_is_a_lock_file_beside_the_state_file(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = Settings(sources=["unused"], state_path=tmp_path / "state.db")
    elector = elector_for(settings)
    assert isinstance(elector, FileLockElector) and elector.path == f"{tmp_path / 'state.db'}.remediation.lock"
    other = FileLockElector(elector.path, "other-replica")
    try:
        assert elector.is_leader() and not other.is_leader()
        assert elector_for(settings) is elector, "one elector per process holds the lock across cycles"
    finally:
        elector.stop()
        other.stop()


def test_daemon_cycle_exports_remediation_metrics_and_report(
    org: FakeGcp, write_rules: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """Through the daemon's own cycle: counters, the pending-plan gauge and the plan on /report."""
    from auditor.cycle import Auditor
    from auditor.state import Store

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = _settings(write_rules(RULES), tmp_path)
    store = Store(settings.state_path)
    try:
        auditor = Auditor(settings, store)
        out = auditor.run_cycle()
        assert out.outcome == "success", out.error
        counters = {(lb["rule"], lb["kind"], lb["outcome"]): v for lb, v in store.counters("remediations_total")}
        assert counters == {("armor-no-open-allow", "cloud_armor.remove_rule", "applied"): 1}
        assert auditor.published.view.plan_changes == (("armor-default-deny", "cloud_armor.set_default_deny", 1),)
        html = auditor.published.report_html.decode()
        assert "make the default rule deny(403)" in html
        assert 500 not in _open_rules(org)
    finally:
        store.close()
