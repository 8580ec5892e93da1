"""Rule files: validation on load, with file, line, rule id and reason for every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.errors import RuleError
from auditor.evaluate.rulebook import load_file, load_rules, rule_schema, shipped_rules_dir


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """\
rules:
  - id: no-public
    check: iam.forbidden_members
    severity: critical
    params: {members: [allUsers]}
  - id: no-owner
    check: iam.banned_roles
    severity: high
    match: {asset_types: [cloudresourcemanager.googleapis.com/Project], ancestries: ["organizations/1/**"]}
    params: {roles: [roles/owner]}
    exemptions:
      - {resource: "//cloudresourcemanager.googleapis.com/projects/7", reason: legacy, owner: team-a,
         ticket: SEC-1, expires: 2030-01-01}
"""


def test_good_file_loads_with_origins(tmp_path: Path) -> None:
    rules = load_file(write(tmp_path, GOOD))
    assert [r.id for r in rules] == ["no-public", "no-owner"]
    assert rules[0].origin.endswith("rules.yaml:2")
    assert rules[1].origin.endswith("rules.yaml:6")
    assert rules[1].rule.exemptions[0].expires.isoformat() == "2030-01-01"  # type: ignore[union-attr]


def test_plain_list_form(tmp_path: Path) -> None:
    p = write(tmp_path, "- {id: a, check: iam.forbidden_members, severity: low, params: {members: ['*']}}\n")
    assert [r.id for r in load_file(p)] == ["a"]


def test_yaml_syntax_error(tmp_path: Path) -> None:
    p = write(tmp_path, "rules:\n  - id: a\n    check: [unclosed\n")
    with pytest.raises(RuleError, match=r"rules.yaml:4: YAML syntax error"):
        load_file(p)


def test_unknown_check_names_the_known_ones(tmp_path: Path) -> None:
    p = write(tmp_path, "rules:\n  - id: a\n    check: iam.forbiden_members\n    severity: low\n")
    with pytest.raises(RuleError) as exc:
        load_file(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}:3: rule a: unknown check 'iam.forbiden_members' (did you mean iam.forbidden_members?)")
    assert "known checks:" in msg and "iam.banned_roles" in msg


def test_wrong_param_type_points_at_the_param_line(tmp_path: Path) -> None:
    p = write(tmp_path, "rules:\n  - id: a\n    check: iam.forbidden_members\n    severity: low\n"
                        "    params:\n      members: allUsers\n")
    with pytest.raises(RuleError, match=r"rules.yaml:6: rule a: params.members: Input should be a valid list"):
        load_file(p)


def test_unknown_param_and_bad_severity_are_both_reported(tmp_path: Path) -> None:
    p = write(tmp_path, "rules:\n  - id: a\n    check: iam.forbidden_members\n    severity: urgent\n"
                        "  - id: b\n    check: iam.forbidden_members\n    severity: low\n"
                        "    params: {members: ['*'], memebrs: []}\n")
    with pytest.raises(RuleError) as exc:
        load_file(p)
    lines = str(exc.value).splitlines()
    assert any(line.startswith(f"{p}:4: rule a: severity: Input should be") for line in lines)
    assert any(line.startswith(f"{p}:8: rule b: params.memebrs: Extra inputs are not permitted") for line in lines)


def test_unknown_rule_key_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "rules:\n  - id: a\n    check: iam.forbidden_members\n    severity: low\n"
                        "    params: {members: ['*']}\n    sevrity: high\n")
    with pytest.raises(RuleError, match=r"rules.yaml:6: rule a: sevrity: Extra inputs are not permitted"):
        load_file(p)


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, "- {id: no-owner, check: iam.banned_roles, severity: low, params: {roles: [x]}}\n", "b.yaml")
    with pytest.raises(RuleError, match=r"b.yaml:1: rule no-owner: duplicate rule id \(first defined at .*a.yaml:6\)"):
        load_rules([tmp_path])


def test_bad_exemption_date(tmp_path: Path) -> None:
    p = write(tmp_path, "- id: a\n  check: iam.forbidden_members\n  severity: low\n  params: {members: ['*']}\n"
                        "  exemptions:\n    - {resource: x, reason: r, owner: o, expires: next-week}\n")
    with pytest.raises(RuleError, match=r"rules.yaml:6: rule a: exemptions\[0\].expires: Input should be a valid date"):
        load_file(p)


def test_unsupported_document_kind(tmp_path: Path) -> None:
    p = write(tmp_path, "apiVersion: templates.gatekeeper.sh/v1\nkind: ConstraintTemplate\nmetadata: {name: t}\n")
    with pytest.raises(RuleError, match=r"unsupported document apiVersion 'templates\.gatekeeper\.sh/v1'"):
        load_file(p)


def test_missing_rules_path() -> None:
    with pytest.raises(RuleError, match="no such rule file or folder"):
        load_rules(["/nonexistent/rules"])


def test_shipped_baseline_loads_and_has_descriptions() -> None:
    rules = load_rules()
    assert rules, "the shipped baseline is empty"
    assert shipped_rules_dir().is_dir()
    for r in rules:
        assert r.rule.description.strip(), f"{r.id} has no description"
        assert r.rule.rationale.strip(), f"{r.id} has no rationale"


def test_schema_lists_every_check() -> None:
    schema = rule_schema()
    checks = schema["$defs"]["Rule"]["properties"]["check"]["enum"]
    assert "iam.forbidden_members" in checks


def test_folder_skips_hidden_copies_of_a_configmap_mount(tmp_path: Path) -> None:
    """A ConfigMap volume holds each file twice: `name.yaml` -> `..data/name.yaml`. Only the visible one counts."""
    data = tmp_path / "..2026_11_26_06_00_00.123"
    data.mkdir()
    write(data, GOOD)
    (tmp_path / "..data").symlink_to(data.name)
    (tmp_path / "rules.yaml").symlink_to("..data/rules.yaml")
    assert [r.id for r in load_rules([tmp_path])] == ["no-public", "no-owner"]
