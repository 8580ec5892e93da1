"""Config Validator constraint files: the five kinds give the violation counts reasoned in each fixture's comments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from auditor.collect.files import iter_file_assets
from auditor.errors import RuleError
from auditor.evaluate.engine import Engine
from auditor.evaluate.rulebook import load_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "constraints"
CONSTRAINTS = sorted(FIXTURES.glob("*.yaml"))
_EXPECTED = re.compile(r"^# expected violations: (\d+)$", re.M)


def expected(path: Path) -> int:
    m = _EXPECTED.search(path.read_text())
    assert m, f"{path.name} states no expected count"
    return int(m.group(1))


@pytest.mark.parametrize("path", CONSTRAINTS, ids=lambda p: p.stem)
def test_constraint_gives_the_reasoned_violations(path: Path) -> None:
    rules = load_file(path)
    assert len(rules) == 1 and rules[0].rule.check.startswith("config_validator.")
    result = Engine(rules).evaluate(iter_file_assets(FIXTURES / "assets.ndjson"))
    assert not result.errors
    assert len(result.findings) == expected(path), [f.message for f in result.findings]
    assert len({f.id for f in result.findings}) == len(result.findings), "finding ids must be distinct"


def test_every_kind_is_covered_by_a_fixture() -> None:
    from auditor.evaluate.constraints import KINDS

    kinds = {m.group(1) for p in CONSTRAINTS if (m := re.search(r"^kind: (\w+)$", p.read_text(), re.M))}
    assert kinds == set(KINDS)


def test_constraint_metadata_maps_to_the_rule() -> None:
    (rule,) = load_file(FIXTURES / "ban_roles_primitive.yaml")
    assert rule.id == "ban-primitive-roles" and rule.rule.severity.value == "high"
    assert rule.rule.match.ancestries == ["organizations/100/**"]
    assert rule.rule.match.excluded_ancestries == ["organizations/100/projects/301"]
    (old,) = load_file(FIXTURES / "allow_roles_old_spelling.yaml")
    assert old.rule.match.ancestries == ["organizations/**"]


def test_details_of_the_findings() -> None:
    assets = list(iter_file_assets(FIXTURES / "assets.ndjson"))
    (dot,) = Engine(load_file(FIXTURES / "allowed_bindings_dot_separator.yaml")).evaluate(assets).findings
    assert dot.details == {"role": "roles/storage.admin", "member": "user:first.last@example.com",
                           "condition": "expires-2027"}
    bans = Engine(load_file(FIXTURES / "ban_roles_primitive.yaml")).evaluate(assets).findings
    assert {(f.details["role"], tuple(f.details["members"])) for f in bans} == {
        ("roles/owner", ("user:alice@example.com", "user:mallory@evil.com")),
        ("roles/editor", ("serviceAccount:trainer@ml-train.iam.gserviceaccount.com",)),
    }


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "constraint.yaml"
    f.write_text(text)
    return f


def test_unknown_kind_is_refused_by_name_with_the_supported_list(tmp_path: Path) -> None:
    f = write(tmp_path, "apiVersion: constraints.gatekeeper.sh/v1alpha1\nkind: GCPStorageLocationConstraintV1\n"
                        "metadata: {name: eu-only}\nspec: {parameters: {locations: [eu]}}\n")
    with pytest.raises(RuleError) as err:
        load_file(f)
    msg = str(err.value)
    assert msg.startswith(f"{f}:1: rule eu-only: unsupported constraint kind 'GCPStorageLocationConstraintV1'")
    assert "supported kinds: GCPIAMAllowedBindingsConstraintV3, GCPIAMAllowBanRolesConstraintV1" in msg


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("spec: {parameters: {mode: ban, roles: roles/owner}}", r"rule x: params.roles: Input should be a valid list"),
        ("spec: {parameters: {mode: forbid, roles: [roles/owner]}}", r"rule x: params.mode: Input should be 'allow'"),
        ("spec: {parameters: {roles: [a], extra: 1}}", r"rule x: params.extra: Extra inputs are not permitted"),
        ("spec: {severity: urgent, parameters: {roles: [a]}}", r"rule x: .*spec.severity 'urgent' is not one of"),
        ("spec: {match: {ancestries: 5}, parameters: {roles: [a]}}", r"spec.match.ancestries: expected a list"),
    ],
)
def test_bad_constraints_are_refused_with_reason(tmp_path: Path, spec: str, message: str) -> None:
    f = write(tmp_path, f"apiVersion: constraints.gatekeeper.sh/v1alpha1\nkind: GCPIAMAllowBanRolesConstraintV1\n"
                        f"metadata: {{name: x}}\n{spec}\n")
    with pytest.raises(RuleError, match=message):
        load_file(f)


def test_constraint_without_name_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path, "apiVersion: constraints.gatekeeper.sh/v1alpha1\nkind: GCPIAMAuditLogConstraintV1\n"
                        "spec: {parameters: {services: [allServices], log_types: [DATA_READ]}}\n")
    with pytest.raises(RuleError, match=r"GCPIAMAuditLogConstraintV1 constraint has no metadata\.name"):
        load_file(f)


def test_several_constraints_in_one_file(tmp_path: Path) -> None:
    docs = [p.read_text() for p in CONSTRAINTS[:3]]
    f = write(tmp_path, "\n---\n".join(docs))
    rules = load_file(f)
    assert len(rules) == 3
    result = Engine(rules).evaluate(iter_file_assets(FIXTURES / "assets.ndjson"))
    assert len(result.findings) == sum(expected(p) for p in CONSTRAINTS[:3])
