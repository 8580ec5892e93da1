"""The `cel` check: per asset, per binding, per member; load-time errors name the rule; runtime errors are reported."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.errors import RuleError
from auditor.evaluate.engine import Engine
from auditor.evaluate.rulebook import load_file
from auditor.model import Asset

BUCKET = "storage.googleapis.com/Bucket"
SA = "serviceAccount:t@p.iam.gserviceaccount.com"


def load(tmp_path: Path, *rules: dict[str, Any]) -> Engine:
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump([{"severity": "high", "check": "cel", **r} for r in rules], sort_keys=False))
    return Engine(load_file(f))


def bucket(name: str, ubla: bool | None, bindings: list[dict[str, Any]] | None = None) -> Asset:
    data: dict[str, Any] = {"name": name}
    if ubla is not None:
        data["iamConfiguration"] = {"uniformBucketLevelAccess": {"enabled": ubla}}
    return Asset(f"//storage.googleapis.com/{name}", BUCKET, resource=data,
                 iam_policy={"bindings": bindings or []}, ancestors=("projects/7", "organizations/1"))


def test_per_asset_with_dig_and_message(tmp_path: Path) -> None:
    engine = load(tmp_path, {
        "id": "ubla",
        "match": {"asset_types": [BUCKET]},
        "params": {
            "expression": '!dig(resource, "iamConfiguration.uniformBucketLevelAccess.enabled", false)',
            "message": "bucket {name} in {project} honours ACLs",
        },
    })
    result = engine.evaluate([bucket("on", True), bucket("off", False), bucket("unset", None)])
    assert not result.errors
    assert sorted(f.asset.rsplit("/", 1)[1] for f in result.findings) == ["off", "unset"]
    assert result.findings[0].message.endswith(" in projects/7 honours ACLs")


def test_report_when_false_turns_the_expression_into_an_assertion(tmp_path: Path) -> None:
    engine = load(tmp_path, {"id": "in-project-7", "params": {"expression": 'project == "projects/7"',
                                                              "report_when": False}})
    elsewhere = Asset("//storage.googleapis.com/x", BUCKET, resource={}, ancestors=("projects/8",))
    result = engine.evaluate([bucket("here", True), elsewhere])
    assert [f.asset for f in result.findings] == [elsewhere.name]


def test_per_binding_and_per_member(tmp_path: Path) -> None:
    cond = {"title": "temp", "expression": "true"}
    b = bucket("data", True, [
        {"role": "roles/storage.objectAdmin", "members": ["user:a@example.com", SA]},
        {"role": "roles/storage.objectAdmin", "members": ["user:b@example.com"], "condition": cond},
        {"role": "roles/storage.objectViewer", "members": ["user:c@example.com"]},
    ])
    engine = load(
        tmp_path,
        # per binding: one finding per binding with more than one member
        {"id": "wide", "params": {"per": "binding", "expression": "size(members) > 1 && role.endsWith('Admin')",
                                  "message": "{role} has {members}"}},
        # per binding naming `member`: evaluated on each member
        {"id": "users", "params": {"per": "binding", "message": "{member} holds {role}",
                                   "expression": 'member.startsWith("user:") && role.endsWith("Admin")'}},
        # per member, reading the binding's condition
        {"id": "cond", "params": {"per": "member", "expression": 'has(condition.title) && condition.title == "temp"'}},
    )
    result = engine.evaluate([b])
    assert not result.errors
    by_rule: dict[str, list[Any]] = {}
    for f in result.findings:
        by_rule.setdefault(f.rule, []).append(f)
    assert [f.details for f in by_rule["wide"]] == [
        {"role": "roles/storage.objectAdmin", "members": ["user:a@example.com", SA]}
    ]
    assert {(f.details["member"], f.details.get("condition")) for f in by_rule["users"]} == {
        ("user:a@example.com", None), ("user:b@example.com", "temp")}
    assert {f.message for f in by_rule["users"]} == {"user:a@example.com holds roles/storage.objectAdmin",
                                                      "user:b@example.com holds roles/storage.objectAdmin"}
    assert [f.details for f in by_rule["cond"]] == [
        {"role": "roles/storage.objectAdmin", "member": "user:b@example.com", "condition": "temp"}]


def test_extension_functions_are_available(tmp_path: Path) -> None:
    engine = load(tmp_path, {"id": "split", "params": {"expression": 'name.split("/").size() == 4'}})
    assert len(engine.evaluate([bucket("x", True)]).findings) == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"expression": 'resource.name == "x" &&'}, r"rule bad: params: .*CEL compile error: .*Syntax error"),
        ({"expression": 'resorce.name == "x"'}, r"rule bad: params: .*Undefined variable or function: 'resorce'"),
        ({"expression": 'member == "allUsers"'}, r"rule bad: params: .*'member' \(variables with per: asset"),
        ({"expression": "true", "message": "{nam}"}, r"rule bad: params.message: .*unknown field\(s\) \['nam'\]"),
        ({"expression": "true", "per": "policy"}, r"rule bad: params.per: Input should be 'asset', 'binding'"),
    ],
)
def test_load_errors_name_the_rule(tmp_path: Path, params: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError, match=message):
        load(tmp_path, {"id": "bad", "params": params})


def test_compile_error_points_at_the_rule_line(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text("- id: fine\n  check: cel\n  severity: low\n  params: {expression: 'true'}\n"
                 "- id: broken\n  check: cel\n  severity: low\n  params:\n    expression: 'a ==='\n")
    with pytest.raises(RuleError) as err:
        load_file(f)
    assert str(err.value).startswith(f"{f}:8: rule broken: params: ")


def test_non_boolean_result_is_an_evaluation_error_not_a_finding(tmp_path: Path) -> None:
    engine = load(tmp_path, {"id": "num", "params": {"expression": "size(name)"}})
    result = engine.evaluate([bucket("x", True)])
    assert result.findings == []
    assert len(result.errors) == 1 and "expected a bool" in result.errors[0].error


def test_loaded_rule_survives_pickling_for_worker_processes(tmp_path: Path) -> None:
    import pickle

    engine = load(tmp_path, {"id": "ubla", "params": {"expression": '!dig(resource, "iamConfiguration.x", false)'}})
    before = engine.evaluate([bucket("a", True)]).findings
    copy = Engine(pickle.loads(pickle.dumps(engine.rules)))
    after = copy.evaluate([bucket("a", True)]).findings
    assert [f.id for f in before] == [f.id for f in after] and len(after) == 1


def test_now_and_the_principal_functions(tmp_path: Path) -> None:
    engine = load(
        tmp_path,
        {"id": "old-keys", "params": {"expression": 'timestamp(resource.validAfterTime) < now - duration("2160h")'},
         "match": {"asset_types": ["iam.googleapis.com/ServiceAccountKey"]}},
        {"id": "outsiders", "params": {
            "per": "member",
            "expression": '!google_managed(member) && member_domain(member) != "example.com"'}},
    )
    engine.now = datetime(2026, 11, 1, tzinfo=UTC)
    old = Asset("//iam.googleapis.com/k/old", "iam.googleapis.com/ServiceAccountKey",
                resource={"validAfterTime": "2026-01-01T00:00:00Z"})
    new = Asset("//iam.googleapis.com/k/new", "iam.googleapis.com/ServiceAccountKey",
                resource={"validAfterTime": "2026-10-01T00:00:00Z"})
    policy = bucket("b", True, [{"role": "roles/editor", "members": [
        "user:a@example.com", "user:eve@gmail.com", "serviceAccount:1@cloudservices.gserviceaccount.com"]}])
    result = engine.evaluate([old, new, policy])
    assert not result.errors
    assert {(f.rule, f.asset.rsplit("/", 1)[1], f.details.get("member")) for f in result.findings} == {
        ("old-keys", "old", None), ("outsiders", "b", "user:eve@gmail.com")}
