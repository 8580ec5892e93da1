"""`auditor rules test`: the shipped baseline passes its own tests, and the same tests catch a rule whose logic
is broken, a test file that cannot be used, and input the scan could not read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from auditor.errors import RuleError
from auditor.evaluate.rulebook import load_file, load_rules
from tests.cli.test_scan import assert_clean_error, auditor
from tests.conftest import REPO


def test_the_shipped_baseline_passes_its_tests() -> None:
    proc = auditor("rules", "test", "rules/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout
    # every shipped rule is covered by a test
    tested = {ln.split()[1] for ln in proc.stdout.splitlines()[1:] if ln.startswith("pass ")}
    assert tested == {r.id for r in load_rules()}


@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "rules"
    shutil.copytree(REPO / "rules", dst)
    return dst


def test_a_broken_rule_fails_its_test(rules_copy: Path) -> None:
    iam = rules_copy / "iam.yaml"
    text = iam.read_text()
    # the rule still loads, but no longer looks for allUsers
    broken = text.replace("members: [allUsers, allAuthenticatedUsers]", "members: [allAuthenticatedUsers]", 1)
    assert broken != text
    iam.write_text(broken)
    proc = auditor("rules", "test", str(rules_copy))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(failed) == 1 and "iam-no-public-members" in failed[0]
    assert "expected 3 finding(s), got 1" in failed[0] and "not reported: " in failed[0]


def test_a_partial_snapshot_fails_the_case(rules_copy: Path) -> None:
    assets = rules_copy / "tests" / "assets" / "org.ndjson"
    assets.write_text(assets.read_text() + "{not json\n")
    proc = auditor("rules", "test", str(rules_copy / "tests" / "iam.test.yaml"))
    assert proc.returncode == 1
    assert "malformed record" in proc.stdout


def test_unusable_test_files_exit_2(tmp_path: Path, rules_copy: Path) -> None:
    t = rules_copy / "tests" / "iam.test.yaml"
    t.write_text(t.read_text().replace("iam-no-public-members:", "iam-no-such-rule:", 1))
    assert_clean_error(auditor("rules", "test", str(t)), "iam.test.yaml", "iam-no-such-rule")
    bad = tmp_path / "bad.test.yaml"
    bad.write_text("rules: [x.yaml]\ncases:\n  - name: a\n    sources: [a]\n    expect: {}\n    extra: 1\n")
    assert_clean_error(auditor("rules", "test", str(bad)), "bad.test.yaml", "extra")
    assert_clean_error(auditor("rules", "test", str(tmp_path / "empty")), "no such test file")


def test_rule_loading_skips_tests_and_their_assets() -> None:
    rules = load_rules([REPO / "rules"])
    assert not any("tests" in r.origin for r in rules)


def test_compliance_controls_and_labels_are_validated(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    base = "- id: r1\n  check: iam.forbidden_members\n  severity: high\n  params: {members: [allUsers]}\n"
    f.write_text(base + "  compliance: {cis-gcp: ['5.1']}\n  labels: {team: sec}\n")
    (rule,) = load_file(f)
    assert rule.rule.compliance == {"cis-gcp": ["5.1"]} and rule.rule.labels == {"team": "sec"}
    for bad, why in (("compliance: {cis-aws: ['1.1']}", "unknown compliance framework"),
                     ("compliance: {cis-gcp: ['9.99']}", "not one this tool can check"),
                     ("labels: {Team: sec}", "label key")):
        f.write_text(base + f"  {bad}\n")
        with pytest.raises(RuleError, match=why) as exc:
            load_file(f)
        assert f"{f}:5" in str(exc.value)
