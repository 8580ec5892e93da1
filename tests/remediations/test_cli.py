"""`auditor plan`, `auditor apply`, `auditor rollback` end to end against the fake Google Cloud APIs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from auditor.cli import cli
from tests.fakes.gcp import FakeGcp
from tests.remediations.conftest import ORG, remediation_rules
from tests.remediations.test_cycle import org  # noqa: F401 - fixture

RULES = remediation_rules(open_allow="dryrun")


def _run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def _plan(tmp_path: Path, rules: Path, *extra: str) -> Any:
    return _run("plan", "--source", f"cai://{ORG}", "--rules", str(rules), "--output", str(tmp_path / "plan.json"),
                *extra)


def test_plan_apply_rollback(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:  # noqa: F811
    rules = write_rules(RULES)
    res = _plan(tmp_path, rules, "--report", str(tmp_path / "plan.md"))
    assert res.exit_code == 0, res.output
    assert re.search(r"plan [0-9a-f]{16}: 2 change\(s\) on 2 resource\(s\), 0 member\(s\), 2 rule\(s\)", res.output)
    report = (tmp_path / "plan.md").read_text()
    assert "-action: allow\n+action: deny(403)" in report and "remove rule 500" in report
    assert _run("plan", "--source", f"cai://{ORG}", "--rules", str(rules), "--output", str(tmp_path / "p2.json"),
                "--report", str(tmp_path / "plan.html")).exit_code == 0
    assert "<span class=\"add\">+action: deny(403)</span>" in (tmp_path / "plan.html").read_text()

    state = str(tmp_path / "state.db")
    # Without --yes and without a terminal to ask on, nothing is written.
    res = _run("apply", str(tmp_path / "plan.json"), "--state", state)
    assert res.exit_code == 2 and "no terminal to ask on; pass --yes" in res.output
    assert not org.calls("POST", r"/(addRule|patchRule|removeRule)$")

    res = _run("apply", str(tmp_path / "plan.json"), "--state", state, "--yes", "--json")
    assert res.exit_code == 0, res.output
    applied = json.loads(res.output)
    assert applied["counts"] == {"applied": 2, "skipped": 0, "conflict": 0, "refused": 0, "failed": 0}
    apply_id = applied["apply_id"]

    # Re-running is idempotent: everything is already in place, exit 0.
    res = _run("apply", str(tmp_path / "plan.json"), "--state", state, "--yes")
    assert res.exit_code == 0 and "2 skipped" in res.output

    res = _run("rollback", "--state", state)
    assert apply_id in res.output and "2 applied" in res.output
    res = _run("rollback", apply_id, "--state", state, "--yes")
    assert res.exit_code == 0 and "rollback" in res.output and "2 applied" in res.output
    pol = org.state.security_policy("ml-research-sandbox", "notebook-gateway")
    assert 500 in [int(r["priority"]) for r in pol["rules"]]


def test_apply_exit_status_says_something_was_not_applied(
    org: FakeGcp, write_rules: Any, tmp_path: Path  # noqa: F811
) -> None:
    assert _plan(tmp_path, write_rules(RULES)).exit_code == 0
    pol = dict(org.state.security_policy("ml-research-sandbox", "notebook-gateway"))
    pol["description"] = "changed by hand"
    org.state.write_security_policy("ml-research-sandbox", pol)
    res = _run("apply", str(tmp_path / "plan.json"), "--state", str(tmp_path / "s.db"), "--yes")
    assert res.exit_code == 1
    assert "1 applied" in res.output and "1 conflict" in res.output and "changed since the plan" in res.output


def test_apply_refuses_bad_plans(org: FakeGcp, write_rules: Any, tmp_path: Path) -> None:  # noqa: F811
    assert _plan(tmp_path, write_rules(RULES)).exit_code == 0
    path = tmp_path / "plan.json"
    state = str(tmp_path / "s.db")
    res = _run("apply", str(path), "--state", state, "--yes", "--max-changes", "1")
    assert res.exit_code == 2 and "max-changes-per-apply: the plan makes 2 changes, over the cap of 1" in res.output
    doc = json.loads(path.read_text())
    doc["changes"][0]["edits"][0]["args"]["priority"] = 1000
    path.write_text(json.dumps(doc))
    res = _run("apply", str(path), "--state", state, "--yes")
    assert res.exit_code == 2 and "does not match its id" in res.output
    res = _run("apply", str(tmp_path / "missing.json"), "--yes")
    assert res.exit_code == 2 and "no such plan file" in res.output
    res = _run("rollback", "nope", "--state", state, "--yes")
    assert res.exit_code == 2 and "no apply with id nope" in res.output
    res = _plan(tmp_path, write_rules(RULES), "--report", str(tmp_path / "plan.pdf"))
    assert res.exit_code == 2 and "Markdown (.md) or HTML (.html)" in res.output
    assert not org.calls("POST", r"/(addRule|patchRule|removeRule)$")


def test_apply_takes_guards_and_state_from_the_daemon_config(
    org: FakeGcp, write_rules: Any, tmp_path: Path  # noqa: F811
) -> None:
    rules = write_rules("""
- id: no-editors
  check: iam.banned_roles
  severity: high
  match: {asset_types: [cloudresourcemanager.googleapis.com/Project]}
  params: {roles: [roles/editor]}
  mode: dryrun
  remediation: iam.remove_member
""")
    config = tmp_path / "auditor.yaml"
    config.write_text(f"sources: ['cai://{ORG}']\nstate_path: daemon.db\n"
                      "remediation:\n  protected_principals: ['group:ml-researchers@helix-ml.example']\n",
                      encoding="utf-8")
    assert _plan(tmp_path, rules).exit_code == 0
    res = _run("apply", str(tmp_path / "plan.json"), "--config", str(config), "--yes")
    assert res.exit_code == 1, res.output
    assert "protected-principal: group:ml-researchers@helix-ml.example is protected" in res.output
    assert (tmp_path / "daemon.db").exists(), "the journal is in the daemon's state file"
