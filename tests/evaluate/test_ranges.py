"""Range arithmetic against the standard library's `ipaddress`, property by property (hypothesis), and the Cloud
Armor checks against a straightforward `ipaddress` version of themselves on the example organization, the real
recorded policies and generated ones: the integer intervals must give the same findings."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.collect.files import iter_file_assets
from auditor.evaluate import ranges
from auditor.evaluate.checks.cloud_armor import (
    ShadowParams,
    armor_rule_ranges,
    no_shadowed_rules,
    only_source_ip_match,
)
from auditor.evaluate.engine import Engine
from auditor.evaluate.policy import ArmorRule, armor_rules
from auditor.evaluate.registry import Context
from auditor.evaluate.rulebook import load_file, shipped_rules_dir
from auditor.model import Asset

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
POLICY = "compute.googleapis.com/SecurityPolicy"


# -- the reference: ipaddress objects, collapse_addresses, and the quadratic shadowing walk --------------------------
def ref_parse(text: str) -> tuple[IPNetwork, ...] | None:
    text = text.strip()
    if text == "*":
        return (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    try:
        return (ipaddress.ip_network(text, strict=False),)
    except ValueError:
        return None


def ref_within(text: str, texts: list[str]) -> bool:
    nets = ref_parse(text)
    if nets is None:
        return False
    by = [n for t in texts for n in (ref_parse(t) or ())]
    spans = []
    for version in (4, 6):
        spans += [(version, int(c.network_address), int(c.broadcast_address))
                  for c in ipaddress.collapse_addresses([b for b in by if b.version == version])]  # type: ignore[type-var]
    return all(any(v == n.version and lo <= int(n.network_address) and int(n.broadcast_address) <= hi
                   for v, lo, hi in spans) for n in nets)


def ref_shadowed(rules: list[ArmorRule], open_rules_shadow: bool = False) -> list[tuple[int, list[int]]]:
    out = []
    above: list[tuple[ArmorRule, list[IPNetwork]]] = []
    for r in rules:
        if not only_source_ip_match(r):
            continue
        nets = [n for t in r.src_ranges for n in (ref_parse(t) or ())]
        if any(ref_parse(t) is None for t in r.src_ranges):
            continue
        earlier = [(a, an) for a, an in above if a.priority < r.priority]
        if not r.is_default and earlier:
            cover = [t for a, _ in earlier for t in a.src_ranges]
            if all(ref_within(t, cover) for t in r.src_ranges):
                out.append((r.priority, [a.priority for a, an in earlier
                                         if any(x.overlaps(n) for x in an for n in nets)]))
                continue
        if not r.preview and (open_rules_shadow or not any(n.prefixlen == 0 for n in nets)):
            above.append((r, nets))
    return out


# -- generated ranges --------------------------------------------------------------------------------------------
@st.composite
def v4_ranges(draw: Any) -> str:
    addr = ipaddress.IPv4Address(draw(st.sampled_from([0, 10 << 24, 0xC0A80000, 0xCB007100]))
                                 + draw(st.integers(0, 1 << 17)))
    prefix = draw(st.integers(0, 32))
    form = draw(st.sampled_from(["net", "host", "bare"]))
    if form == "bare":
        return str(addr)
    if form == "host":  # host bits set: allowed in policies, dropped when read
        return f"{addr}/{prefix}"
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


@st.composite
def v6_ranges(draw: Any) -> str:
    step = draw(st.sampled_from([1, 1 << 80]))
    addr = ipaddress.IPv6Address((0x20010DB8 << 96) + draw(st.integers(0, 1 << 20)) * step)
    prefix = draw(st.integers(0, 128))
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False)) if draw(st.booleans()) else str(addr)


odd_texts = st.sampled_from(["*", " 10.0.0.0/8 ", "010.0.0.1", "10.0.0.0/33", "10.0.0.0/255.0.0.0", "::/0", "::0/0",
                             "1.2.3", "not-an-ip", "", "10.0.0.0/08", "1.2.3.4/", "\uff11.2.3.4", "fe80::1%eth0",
                             "2001:0db8:0000::/48", "::ffff:10.0.0.1/128", "::1.2.3.01", "2001:db8::1/129",
                             "2001:db8::/064", "1:2:3:4:5:6:7:8:9", "2001:DB8::/32", "10.1", "0x0a.0.0.1",
                             "1.2.3.4/0032", "::/0", "::", "1.2.3.4\x00", "1.2.3.04", "256.0.0.0", "1.2.3.4.5",
                             "1..2.3", "1.2.3.4 /8", "1.2.3.4/+8", "1.2.3.4/ 8", "+1.2.3.4", "1.2.3.4/32/32"])
range_texts = st.one_of(v4_ranges(), v6_ranges(), odd_texts)


@given(range_texts)
def test_parse_agrees_with_ipaddress(text: str) -> None:
    ref = ref_parse(text)
    got = ranges.parse(text)
    if ref is None:
        assert got is None
        return
    assert got == tuple(
        (int(n.network_address) + (ranges.V6 if n.version == 6 else 0),
         int(n.broadcast_address) + (ranges.V6 if n.version == 6 else 0)) for n in ref
    )


@given(st.lists(range_texts, max_size=12))
def test_parse_many_is_parse_of_each(texts: list[str]) -> None:
    """Several ranges in one loop: their intervals in order, and each range's own unless each is one interval."""
    each = tuple(ranges.parse(t) for t in texts)
    valid, odd = ranges.parse_many(tuple(texts))
    assert valid == [iv for ivs in each if ivs is not None for iv in ivs]
    if odd is None:
        assert all(ivs is not None and len(ivs) == 1 for ivs in each)
    else:
        assert odd == each


@given(st.lists(range_texts, max_size=12), st.lists(range_texts, min_size=1, max_size=6))
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_outside_agrees_with_collapse_addresses(texts: list[str], trusted: list[str]) -> None:
    union = ranges.union_of(trusted)
    want = [t for t in texts if not ref_within(t, trusted)]
    valid, odd = ranges.parse_many(texts)
    assert union.outside_each(texts, [ranges.parse(t) for t in texts]) == want
    assert (union.outside(texts, valid) if odd is None else union.outside_each(texts, odd)) == want


@given(st.lists(range_texts, max_size=12), range_texts)
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_within_agrees_with_collapse_addresses(texts: list[str], text: str) -> None:
    assert ranges.within(text, ranges.union_of(texts)) == ref_within(text, texts)


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), max_size=30))
def test_union_built_one_by_one_equals_union_built_at_once(spans: list[tuple[int, int]]) -> None:
    intervals = [(lo, lo + n) for lo, n in spans]
    one_by_one = ranges.Union()
    for lo, hi in intervals:
        one_by_one.add(lo, hi)
    at_once = ranges.Union(intervals)
    assert (one_by_one.starts, one_by_one.ends) == (at_once.starts, at_once.ends)
    covered = {x for lo, hi in intervals for x in range(lo, hi + 1)}
    for x in range(0, 345):
        assert at_once.covers(x, x) == (x in covered)
    assert all(s2 > e1 + 1 for e1, s2 in zip(at_once.ends, at_once.starts[1:], strict=False))


@given(
    st.lists(st.lists(st.tuples(st.integers(0, 40), st.sampled_from([0, 0, 0, 1, 3, 6])), max_size=8), max_size=8),
    st.lists(st.tuples(st.integers(0, 45), st.integers(0, 8)), max_size=20),
)
@settings(max_examples=300, deadline=None)
def test_growing_union_covers_what_a_union_of_the_same_intervals_covers(
    batches: list[list[tuple[int, int]]], asked: list[tuple[int, int]]
) -> None:
    # single addresses (n = 0) go to the set beside the intervals: coverage must not tell the difference, also
    # where single addresses together fill a block or extend an interval
    growing, union = ranges.GrowingUnion(), ranges.Union()
    for batch in batches:
        intervals = [(lo, lo + n) for lo, n in batch]
        growing.add_all(intervals)
        union.add_all(intervals)
        for lo, n in asked:
            assert growing.covers_all([(lo, lo + n)]) == union.covers_all([(lo, lo + n)])
        assert growing.covers_all([(lo, lo + n) for lo, n in asked]) == union.covers_all(
            [(lo, lo + n) for lo, n in asked]
        )


def test_adjacent_halves_cover_their_parent_and_families_stay_apart() -> None:
    halves = ranges.union_of(["10.0.0.0/25", "10.0.0.128/25"])
    assert ranges.within("10.0.0.0/24", halves) and not ranges.within("10.0.1.0/24", halves)
    assert len(halves) == 1
    everything_v4 = ranges.union_of(["0.0.0.0/1", "128.0.0.0/1"])
    assert ranges.within("0.0.0.0/0", everything_v4) and not ranges.within("::/0", everything_v4)
    assert not ranges.within("::/128", ranges.union_of(["255.255.255.255"]))  # the last v4 and first v6 do not touch
    assert ranges.within("2001:db8::1", ranges.union_of(["*"])) and not ranges.within("nope", ranges.union_of(["*"]))


@given(st.lists(st.lists(range_texts, max_size=6), max_size=12))
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_rule_ranges_are_each_rules_ranges_parsed(rule_ranges: list[list[str]]) -> None:
    """The ranges of a policy parsed in one pass and cut back into its rules: each rule's own, in order."""
    data = [{"priority": i, "match": {"config": {"srcIpRanges": rs}}} for i, rs in enumerate(rule_ranges)]
    as_json = json.dumps({"rules": data}).encode()
    for asset in (Asset("p", POLICY, resource={"rules": data}), Asset("p", POLICY, as_json)):
        got = armor_rule_ranges(asset)
        assert len(got) == len(rule_ranges)
        for rs, rr in zip(rule_ranges, got, strict=True):
            each = tuple(ranges.parse(t) for t in rs)
            valid = [iv for ivs in each if ivs is not None for iv in ivs]
            assert (rr.each, rr.all, rr.valid) == (each, None if None in each else valid, valid)


# -- the shadowing check against the reference ----------------------------------------------------------------------
def shadowed(rules_data: list[dict[str, Any]], open_rules_shadow: bool = False) -> list[tuple[int, list[int]]]:
    asset = Asset("//compute.googleapis.com/projects/p/global/securityPolicies/x", POLICY,
                  resource={"name": "x", "rules": rules_data})
    return [(v.details["priority"], v.details["shadowed_by"])
            for v in no_shadowed_rules(asset, ShadowParams(open_rules_shadow=open_rules_shadow), Context())]


armor_rule = st.fixed_dictionaries({
    "priority": st.integers(1, 40),
    "action": st.sampled_from(["allow", "deny(403)", "throttle"]),
    "preview": st.booleans(),
    "match": st.one_of(
        st.lists(st.one_of(v4_ranges(), v6_ranges(), st.sampled_from(["*", "0.0.0.0/1", "128.0.0.0/1", "bad"])),
                 min_size=1, max_size=10).map(lambda rs: {"versionedExpr": "SRC_IPS_V1",
                                                          "config": {"srcIpRanges": rs}}),
        st.just({"expr": {"expression": "origin.region_code == 'AU'"}}),
    ),
})


@given(st.lists(armor_rule, max_size=25), st.booleans())
@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
def test_shadowing_agrees_with_the_quadratic_reference(rules_data: list[dict[str, Any]], open_shadow: bool) -> None:
    default = {"priority": 2147483647, "action": "deny(403)", "match": {"versionedExpr": "SRC_IPS_V1",
                                                                          "config": {"srcIpRanges": ["*"]}}}
    data = [*rules_data, default]
    assert shadowed(data, open_shadow) == ref_shadowed(armor_rules({"rules": data}), open_shadow)


# Ranges packed into 10.0.0.0/28: single addresses next to and inside blocks, blocks tiled by single addresses.
dense_rule = st.fixed_dictionaries({
    "priority": st.integers(1, 12),
    "action": st.just("deny(403)"),
    "preview": st.booleans(),
    "match": st.lists(
        st.builds(lambda a, p: str(ipaddress.ip_network(f"10.0.0.{a}/{p}", strict=False)),
                  st.integers(0, 15), st.sampled_from([28, 29, 30, 31, 32, 32, 32, 32, 32, 32])),
        min_size=1, max_size=6,
    ).map(lambda rs: {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": rs}}),
})


@given(st.lists(dense_rule, max_size=30))
@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
def test_shadowing_of_packed_single_addresses_agrees_with_the_reference(rules_data: list[dict[str, Any]]) -> None:
    """Single addresses are kept apart from the union's intervals: covers made of both, and of addresses alone."""
    assert shadowed(rules_data) == ref_shadowed(armor_rules({"rules": rules_data}))


def test_shadowing_finds_nested_and_combined_covers() -> None:
    def r(p: int, *rs: str, preview: bool = False) -> dict[str, Any]:
        return {"priority": p, "action": "deny(403)", "preview": preview,
                "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": list(rs)}}}

    data = [r(10, "10.0.0.0/25"), r(20, "10.0.0.128/25"), r(20, "10.0.0.0/24"), r(30, "10.0.0.7", "10.0.0.200"),
            r(40, "10.0.0.0/8", preview=True), r(50, "10.1.0.0/16"), r(60, "10.0.0.0/24", "2001:db8::/32")]
    # 20 shares its priority with 20: neither shadows the other; 40 is in preview and shadows nothing
    assert shadowed(data) == [(30, [10, 20, 20])] == ref_shadowed(armor_rules({"rules": data}))
    # four single addresses, one after the other, are the /30 they make up; three are not; single addresses and
    # blocks together cover a block
    data = [r(10, "10.0.0.4", "10.0.0.5"), r(20, "10.0.0.6/32", "10.0.0.7"), r(30, "10.0.0.4/30"),
            r(40, "10.0.0.8", "10.0.0.10"), r(50, "10.0.0.11"), r(60, "10.0.0.8/30"), r(70, "10.0.0.2/31"),
            r(80, "10.0.0.0/31", "10.0.0.8/29"), r(90, "10.0.0.0/28")]
    assert shadowed(data) == [(30, [10, 20]), (90, [10, 20, 40, 50, 60, 70, 80])]
    assert shadowed(data) == ref_shadowed(armor_rules({"rules": data}))


# -- whole checks on real and example policies ----------------------------------------------------------------------
def policies(repo: Path, public_data: Path) -> Iterator[Asset]:
    yield from (a for a in iter_file_assets(repo / "examples" / "org") if a.asset_type == POLICY)
    yield from (a for a in iter_file_assets(public_data / "cai" / "forseti_mock_cai_resources.dump")
                if a.asset_type == POLICY)
    for f in sorted((public_data / "cloud-armor").glob("*.json")):  # Compute API responses
        body = json.loads(f.read_text())["body"]
        for p in body.get("items", [body]):
            yield Asset(f"//compute.googleapis.com/{p['selfLink'].split('/v1/', 1)[1]}", POLICY, resource=p)


@pytest.mark.parametrize("open_shadow", [False, True])
def test_shadowing_on_example_and_recorded_policies_matches_reference(
    repo: Path, public_data: Path, open_shadow: bool
) -> None:
    assets = list(policies(repo, public_data))
    assert len(assets) > 4
    found = 0
    for a in assets:
        got = [(v.details["priority"], v.details["shadowed_by"])
               for v in no_shadowed_rules(a, ShadowParams(open_rules_shadow=open_shadow), Context())]
        assert got == ref_shadowed(armor_rules(a.resource), open_shadow), a.name
        found += len(got)
    assert found, "the example organization holds shadowed rules"


def test_shipped_armor_pack_findings_on_the_example(repo: Path, public_data: Path) -> None:
    """Every shipped Cloud Armor rule on the example and the recordings: the findings the ipaddress version gave."""
    engine = Engine(load_file(shipped_rules_dir() / "cloud_armor.yaml"))
    result = engine.evaluate(policies(repo, public_data))
    assert not result.errors
    by_rule: dict[str, int] = {}
    for f in result.findings:
        by_rule[f.rule] = by_rule.get(f.rule, 0) + 1
    assert by_rule == EXPECTED_BY_RULE


# Counted with the ipaddress implementation these checks had before the interval arithmetic.
EXPECTED_BY_RULE = {
    "armor-allow-only-trusted-ranges": 2, "armor-default-rule-denies": 5, "armor-no-open-allow": 1,
    "armor-no-preview-rules": 1, "armor-no-shadowed-rules": 2, "armor-rate-limit-required": 7,
    "armor-unique-priorities": 1,
}
