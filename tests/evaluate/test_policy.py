"""Reading Cloud Armor rules: the typed reading of a policy's JSON (msgspec structs) against the dict walk
`armor_rules`, which reads every spelling a policy dict may have and is the reference, on generated policies of
every shape (hypothesis) and on the real recorded ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.collect.files import iter_file_assets
from auditor.evaluate.policy import ArmorRule, _typed_armor_rules, armor_rules, asset_armor_rules
from auditor.model import Asset

POLICY = "compute.googleapis.com/SecurityPolicy"


def seen(r: ArmorRule) -> tuple[Any, ...]:
    """What a check can read of a rule."""
    return (r.priority, r.action, r.preview, r.src_ranges, r.expression, r.description, r.source_match, r.raw,
            r.is_default, r.allows, r.denies)


def outcome(read: Any, arg: Any) -> Any:
    try:
        return [seen(r) for r in read(arg)]
    except Exception as exc:  # a policy neither reading takes: both must fail alike
        return type(exc)


# -- generated rules: the Compute API's and CAI's spellings, and what hand-edited or broken data holds -------------
texts = st.text(max_size=12)
anything = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                        max_leaves=6)
range_lists = st.lists(st.sampled_from(["10.0.0.0/8", "*", "2001:db8::/32", "1.2.3.4", "bad", ""]), max_size=4)


def optional(d: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict with any subset of the given keys, each value drawn from its strategy."""
    return st.fixed_dictionaries({}, optional=d)


configs = optional({
    "srcIpRanges": st.none() | range_lists | st.sampled_from(["10.0.0.0/8", "*"]) | st.lists(st.integers(), max_size=2),
    "srcIpRange": st.none() | range_lists | st.just("192.0.2.0/24"),
})
matches = optional({
    "versionedExpr": st.sampled_from(["SRC_IPS_V1", None, 3]),
    "config": st.none() | configs | st.sampled_from([[], "", 0]),
    "expr": st.none() | optional({"expression": st.none() | texts | st.integers(), "title": texts}) | st.just({}),
    "exprOptions": st.none() | st.just({"recaptchaOptions": {"actionTokenSiteKeys": ["k"]}}),
    "unknownMatchField": anything,
})
rules = optional({
    "priority": st.integers(-5, 2147483648) | st.just(1 << 70) | st.none() | st.sampled_from(["100", "x", 100.0,
                                                                                                True, 1.5]),
    "action": st.sampled_from(["allow", "deny(403)", "throttle", "", None, 7]),
    "preview": st.sampled_from([True, False, None, "true", "TRUE", "no", 1, 0]),
    "description": st.none() | texts | st.just(5),
    "match": st.none() | matches | st.sampled_from([{}, [], "", 0]),
    "rateLimitOptions": st.just({"conformAction": "allow", "rateLimitThreshold": {"count": 10}}),
    "kind": st.just("compute#securityPolicyRule"),
})
rule_lists: st.SearchStrategy[list[Any]] = st.lists(rules | st.sampled_from([None, 3, "rule", []]), max_size=6)
policies = optional({"rules": st.none() | rule_lists | st.just({}), "rule": rule_lists, "name": texts})


@given(policies)
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_typed_reading_agrees_with_the_dict_walk(policy: dict[str, Any]) -> None:
    """An asset read from JSON gives the rules the dict walk gives the decoded dict (the typed structs when the
    spelling is theirs, the walk otherwise), failing alike where the walk fails."""
    raw = msgspec.json.encode(policy)
    from_json = outcome(lambda b: asset_armor_rules(Asset("p", POLICY, b)), raw)
    assert from_json == outcome(armor_rules, msgspec.json.decode(raw))


@given(st.lists(rules.filter(lambda r: _usual(r)), max_size=8), st.sampled_from(["rules", "rule"]))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
          deadline=None)
def test_the_usual_spellings_are_read_by_the_typed_structs(rs: list[dict[str, Any]], key: str) -> None:
    """Policies as the Compute API and CAI write them never need the walk."""
    raw = msgspec.json.encode({key: rs})
    assert [seen(r) for r in _typed_armor_rules(raw)] == [seen(r) for r in armor_rules({key: rs})]


def _usual(rule: dict[str, Any]) -> bool:
    match = rule.get("match")
    config = match.get("config") if isinstance(match, dict) else None
    expr = match.get("expr") if isinstance(match, dict) else None
    return (
        isinstance(rule.get("priority", 0), int) and not isinstance(rule.get("priority"), bool)
        and isinstance(rule.get("action", ""), str | None)
        and isinstance(rule.get("preview", False), bool | None)
        and isinstance(rule.get("description", ""), str | None)
        and (match is None or (isinstance(match, dict) and "unknownMatchField" not in match))
        and (config is None or (isinstance(config, dict)
                                and all(isinstance(v, str) or v is None or all(isinstance(x, str) for x in v)
                                        for v in config.values())))
        and (expr is None or (isinstance(expr, dict) and isinstance(expr.get("expression", ""), str | None)))
    )


def test_other_spellings_are_left_to_the_walk() -> None:
    for rule in ({"priority": "100", "action": "allow"}, {"priority": 1, "preview": "true"},
                 {"priority": 1, "match": {"config": {"srcIpRanges": [1]}}},
                 {"priority": 1, "match": {"expr": {"expression": "x"}, "exprOptionz": {}}}):
        raw = msgspec.json.encode({"rules": [rule]})
        with pytest.raises(msgspec.ValidationError):
            _typed_armor_rules(raw)
        assert [seen(r) for r in asset_armor_rules(Asset("p", POLICY, raw))] == [seen(r) for r in
                                                                                 armor_rules({"rules": [rule]})]


def test_raw_is_decoded_once_when_asked_for() -> None:
    rules = [{"priority": 2, "action": "throttle", "rateLimitOptions": {"conformAction": "allow"},
              "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["10.0.0.0/8"]}}},
             {"priority": 1, "action": "deny(403)", "match": {"expr": {"expression": "true"}}}]
    read = _typed_armor_rules(json.dumps({"rule": rules}).encode())
    assert [r.priority for r in read] == [1, 2]  # by priority, each with its own dict
    assert read[0].raw == rules[1] and read[1].raw == rules[0]
    assert read[0].raw is read[0].raw  # decoded once for the policy
    assert [r.source_match for r in read] == [False, True]


# -- real policies ---------------------------------------------------------------------------------------------------
def test_recorded_and_example_policies_read_alike(repo: Path, public_data: Path) -> None:
    """The example organization, the CAI dump (`rule`, `srcIpRange`) and the Compute API recordings: every policy
    is read by the typed structs, to what the walk reads."""
    files = (repo / "examples" / "org", public_data / "cai" / "forseti_mock_cai_resources.dump")
    raws = [a.resource_json for f in files for a in iter_file_assets(f) if a.asset_type == POLICY]
    for f in sorted((public_data / "cloud-armor").glob("*.json")):
        body = json.loads(f.read_text())["body"]
        raws += [json.dumps(p).encode() for p in body.get("items", [body])]
    assert len(raws) > 4 and all(raws)
    count = 0
    for raw in raws:
        assert raw is not None
        typed = _typed_armor_rules(raw)
        assert [seen(r) for r in typed] == [seen(r) for r in armor_rules(msgspec.json.decode(raw))]
        count += len(typed)
    assert count > 20
