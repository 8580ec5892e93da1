"""Cloud Armor checks: each with compliant and violating policies, both field spellings, params errors, real data."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from auditor.collect.files import iter_file_assets
from auditor.errors import RuleError
from auditor.evaluate.engine import Engine
from auditor.evaluate.registry import all_checks
from auditor.evaluate.rulebook import load_file, shipped_rules_dir
from auditor.model import Asset, Finding

POLICY = "compute.googleapis.com/SecurityPolicy"
DEFAULT = 2147483647


def rule(priority: int, action: str, ranges: list[str] | None = None, *, expr: str | None = None,
         preview: bool = False, cai: bool = False, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"priority": priority, "action": action, "preview": preview, **extra}
    if expr is not None:
        r["match"] = {"expr": {"expression": expr}}
    else:
        r["match"] = {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRange" if cai else "srcIpRanges": ranges or []}}
    return r


def policy(name: str, *rules: dict[str, Any], cai: bool = False) -> Asset:
    data = {"name": name, "fingerprint": "fp=", ("rule" if cai else "rules"): list(rules)}
    return Asset(f"//compute.googleapis.com/projects/p/global/securityPolicies/{name}", POLICY, resource=data,
                 ancestors=("projects/1", "organizations/9"))


def scan(tmp_path: Path, rules_yaml: str, *assets: Asset) -> list[Finding]:
    f = tmp_path / "rules.yaml"
    f.write_text(rules_yaml)
    result = Engine(load_file(f)).evaluate(assets)
    assert not result.errors, result.errors
    return result.findings


def one_rule(check: str, params: str = "{}", extra: str = "") -> str:
    return f"- {{id: r, check: {check}, severity: high, params: {params}{extra}}}\n"


DENY_ALL = rule(DEFAULT, "deny(403)", ["*"])


# -- default rule ---------------------------------------------------------------------------------------------------
def test_default_rule_denies(tmp_path: Path) -> None:
    rules = one_rule("cloud_armor.default_rule_denies")
    ok = policy("ok", rule(1000, "allow", ["10.0.0.0/8"]), DENY_ALL)
    allow = policy("allow", rule(DEFAULT, "allow", ["*"]))
    cai_allow = policy("cai", rule(DEFAULT, "allow", ["*"], cai=True), cai=True)
    missing = policy("missing", rule(1000, "deny(403)", ["10.0.0.0/8"]))
    preview = policy("preview", rule(DEFAULT, "deny(404)", ["*"], preview=True))
    found = {f.asset.rsplit("/", 1)[1]: f for f in scan(tmp_path, rules, ok, allow, cai_allow, missing, preview)}
    assert sorted(found) == ["allow", "cai", "missing", "preview"]
    assert found["allow"].details == {"priority": DEFAULT, "action": "allow", "src_ranges": ["*"]}
    assert found["cai"].details["src_ranges"] == ["*"]
    assert "no default rule" in found["missing"].message
    assert "preview" in found["preview"].message and found["preview"].details["preview"] is True


def test_hand_written_spellings(tmp_path: Path) -> None:
    """A string for a one-range list and a string boolean, as hand-written or templated policies have them."""
    odd = rule(100, "allow", preview="false")  # type: ignore[arg-type]
    odd["match"]["config"]["srcIpRanges"] = "0.0.0.0/0"
    found = scan(tmp_path, one_rule("cloud_armor.no_open_allow"), policy("p", odd, DENY_ALL))
    assert [f.details for f in found] == [{"priority": 100, "action": "allow", "src_ranges": ["0.0.0.0/0"]}]
    assert scan(tmp_path, one_rule("cloud_armor.no_preview_rules"), policy("p", odd, DENY_ALL)) == []


# -- open allow -----------------------------------------------------------------------------------------------------
def test_no_open_allow(tmp_path: Path) -> None:
    rules = one_rule("cloud_armor.no_open_allow")
    p = policy(
        "p",
        rule(100, "allow", ["10.0.0.0/8"]),
        rule(200, "allow", ["192.0.2.0/24", "0.0.0.0/0"]),
        rule(300, "allow", ["::0/0"]),  # another spelling of ::/0
        rule(400, "deny(403)", ["*"]),  # denying everyone is fine
        rule(500, "throttle", ["*"], rateLimitOptions={"conformAction": "allow"}),
        rule(600, "allow", expr="inIpRange(origin.ip, '0.0.0.0/0')"),  # an expression is not judged
        rule(700, "allow", ["0.0.0.0/1", "128.0.0.0/1"]),  # two halves are everyone too
        rule(DEFAULT, "allow", ["*"]),  # the default rule is another check's business
    )
    found = {f.details["priority"]: f for f in scan(tmp_path, rules, p)}
    assert sorted(found) == [200, 300, 500, 700]
    assert found[200].details["src_ranges"] == ["192.0.2.0/24", "0.0.0.0/0"]
    assert "rate limit" in found[500].message
    only_allow = one_rule("cloud_armor.no_open_allow", "{actions: [allow]}")
    assert sorted(f.details["priority"] for f in scan(tmp_path, only_allow, p)) == [200, 300, 700]
    assert scan(tmp_path, rules, policy("ok", rule(100, "allow", ["10.0.0.0/8"]), DENY_ALL)) == []


def test_no_open_allow_listed_ranges_spaces_and_family_halves(tmp_path: Path) -> None:
    p = policy(
        "p",
        rule(100, "allow", ["10.0.0.0/8", " 0.0.0.0/0 "]),  # spaces around a /0
        rule(200, "allow", ["100.64.0.0/10"]),  # listed as open below, though not a whole family
        rule(300, "allow", ["::/1", "8000::/1"]),  # the IPv6 halves
        rule(400, "allow", ["0.0.0.0/1", "8000::/1", "not-an-ip"]),  # a half of each family: not everyone
        rule(500, "allow", ["128.0.0.0/1", "0.0.0.0/2", "64.0.0.0/2", "bad"]),  # every IPv4 address, and a typo
    )
    opened = {f.details["priority"]: f.message.split(" lets every address in: ")[1]
              for f in scan(tmp_path, one_rule("cloud_armor.no_open_allow"), p)}
    assert opened == {100: " 0.0.0.0/0 ", 300: "::/1, 8000::/1", 500: "128.0.0.0/1, 0.0.0.0/2, 64.0.0.0/2, bad"}
    listed = one_rule("cloud_armor.no_open_allow", '{open_ranges: ["100.64.0.0/10", "*"]}')
    assert sorted(f.details["priority"] for f in scan(tmp_path, listed, p)) == [100, 200, 300, 500]


def test_no_open_allow_exemption_by_priority(tmp_path: Path) -> None:
    rules = one_rule(
        "cloud_armor.no_open_allow",
        extra=", exemptions: [{resource: '**/securityPolicies/demo', reason: hackathon, owner: ml, "
        "details: {priority: '200'}}]",
    )
    demo = policy("demo", rule(200, "allow", ["*"]), rule(300, "allow", ["*"]), DENY_ALL)
    found = {f.details["priority"]: f for f in scan(tmp_path, rules, demo)}
    assert found[200].exempted is not None and found[300].exempted is None


# -- trusted ranges -------------------------------------------------------------------------------------------------
TRUSTED = "{trusted_ranges: [203.0.113.0/24, 10.0.0.0/9, 10.128.0.0/9, '2001:db8::/32']}"


def test_trusted_source_ranges(tmp_path: Path) -> None:
    rules = one_rule("cloud_armor.trusted_source_ranges", TRUSTED)
    ok = policy(
        "ok",
        rule(100, "allow", ["203.0.113.0/25", "203.0.113.7"]),  # a subnet and a bare address
        rule(200, "allow", ["10.0.0.0/8"]),  # covered by the union of two trusted /9
        rule(300, "allow", ["2001:db8:1::/48"]),  # IPv6
        rule(400, "deny(403)", ["198.51.100.0/24"]),  # denies are not judged
        rule(500, "allow", expr="origin.region_code == 'CH'"),  # expressions are not judged
        DENY_ALL,
    )
    assert scan(tmp_path, rules, ok) == []
    bad = policy(
        "bad",
        rule(100, "allow", ["203.0.112.0/23"]),  # a supernet of a trusted range
        rule(200, "allow", ["2001:db9::/48", "10.1.0.0/16"]),
        rule(300, "throttle", ["*"]),
        rule(400, "allow", ["not-an-ip"]),
        DENY_ALL,
    )
    found = {f.details["priority"]: f for f in scan(tmp_path, rules, bad)}
    assert sorted(found) == [100, 200, 300, 400]
    assert found[200].details["untrusted"] == ["2001:db9::/48"]
    assert found[400].details["untrusted"] == ["not-an-ip"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{trusted_ranges: ['10.0.0.1/8']}", "10.0.0.1/8 has host bits set"),
        ("{trusted_ranges: ['*']}", "'*' cannot be a trusted range"),
        ("{trusted_ranges: []}", "at least 1 item"),
        ("{}", "trusted_ranges: Field required"),
    ],
)
def test_trusted_source_ranges_params_errors(tmp_path: Path, params: str, message: str) -> None:
    with pytest.raises(RuleError, match="rule r") as exc:
        scan(tmp_path, one_rule("cloud_armor.trusted_source_ranges", params))
    assert message in str(exc.value)
    assert "rules.yaml:1" in str(exc.value)


# -- preview, duplicates, shadowing ---------------------------------------------------------------------------------
def test_no_preview_rules(tmp_path: Path) -> None:
    p = policy("p", rule(100, "allow", ["10.0.0.0/8"], preview=True), rule(200, "deny(403)", ["192.0.2.0/24"],
                                                                           preview=True), DENY_ALL)
    found = scan(tmp_path, one_rule("cloud_armor.no_preview_rules"), p)
    assert sorted(f.details["priority"] for f in found) == [100, 200]
    only_deny = one_rule("cloud_armor.no_preview_rules", "{actions: ['deny*']}")
    assert [f.details["priority"] for f in scan(tmp_path, only_deny, p)] == [200]
    assert scan(tmp_path, one_rule("cloud_armor.no_preview_rules"), policy("ok", DENY_ALL)) == []


def test_unique_priorities(tmp_path: Path) -> None:
    rules = one_rule("cloud_armor.unique_priorities")
    dup = policy("dup", rule(100, "allow", ["10.0.0.0/8"]), rule(100, "deny(403)", ["10.1.0.0/16"]), DENY_ALL)
    found = scan(tmp_path, rules, dup)
    assert len(found) == 1
    assert found[0].details["priority"] == 100 and found[0].details["actions"] == ["allow", "deny(403)"]
    assert scan(tmp_path, rules, policy("ok", rule(100, "allow", ["10.0.0.0/8"]), DENY_ALL)) == []


def test_no_shadowed_rules(tmp_path: Path) -> None:
    rules = one_rule("cloud_armor.no_shadowed_rules")
    p = policy(
        "p",
        rule(1000, "allow", ["10.0.0.0/9"]),
        rule(1001, "allow", ["10.128.0.0/9"]),
        rule(1100, "deny(403)", ["10.5.0.0/16"]),  # inside the first /9
        rule(1200, "deny(403)", ["10.0.0.0/8"]),  # inside the union of both /9
        rule(1300, "deny(403)", ["10.0.0.0/8", "192.0.2.0/24"]),  # partly outside: it can fire
        rule(1400, "allow", ["2001:db8::/32"], preview=True),  # preview rules do not shadow...
        rule(1500, "allow", ["2001:db8:5::/48"]),  # ...so this one can fire
        rule(1600, "allow", expr="origin.ip == '10.1.1.1'"),  # expressions are not judged
        rule(1700, "deny(403)", ["2001:db8:5:1::/64"]),  # shadowed by 1500
        DENY_ALL,
    )
    found = {f.details["priority"]: f for f in scan(tmp_path, rules, p)}
    assert sorted(found) == [1100, 1200, 1700]
    assert found[1100].details["shadowed_by"] == [1000]
    assert found[1200].details["shadowed_by"] == [1000, 1001]
    assert found[1700].details["shadowed_by"] == [1500]
    assert found[1100].details["action"] == "deny(403)" and found[1100].details["src_ranges"] == ["10.5.0.0/16"]
    everything = policy("star", rule(10, "allow", ["*"]), rule(20, "deny(403)", ["192.0.2.0/24"]), DENY_ALL)
    assert scan(tmp_path, rules, everything) == []  # the allow-all is no_open_allow's finding
    counted = one_rule("cloud_armor.no_shadowed_rules", "{open_rules_shadow: true}")
    assert [f.details["priority"] for f in scan(tmp_path, counted, everything)] == [20]
    ok = policy("ok", rule(10, "deny(403)", ["10.1.0.0/16"]), rule(20, "allow", ["10.0.0.0/8"]), DENY_ALL)
    assert scan(tmp_path, rules, ok) == []


# -- required rules -------------------------------------------------------------------------------------------------
REQUIRED = """
- id: r
  check: cloud_armor.required_rules
  severity: medium
  params:
    rules:
      - name: rate limit
        actions: [throttle, rate_based_ban]
      - name: deny list
        actions: ["deny*"]
        src_ranges: [192.0.2.0/24]
        max_priority: 1000
        rule: {priority: 100, action: deny(403), src_ranges: [192.0.2.0/24], description: deny list}
"""


def test_required_rules(tmp_path: Path) -> None:
    ok = policy(
        "ok",
        rule(50, "deny(403)", ["192.0.2.0/23"]),  # covers the required range
        rule(900, "throttle", ["10.0.0.0/8"], rateLimitOptions={"conformAction": "allow"}),
        DENY_ALL,
    )
    assert scan(tmp_path, REQUIRED, ok) == []
    bad = policy(
        "bad",
        rule(2000, "deny(403)", ["192.0.2.0/24"]),  # too late in the evaluation order
        rule(900, "throttle", ["10.0.0.0/8"], preview=True),  # in preview: does not count
        DENY_ALL,
    )
    found = {f.details["requirement"]: f for f in scan(tmp_path, REQUIRED, bad)}
    assert sorted(found) == ["deny list", "rate limit"]
    assert found["deny list"].details["change"] == "missing"
    assert found["deny list"].details["desired"] == {
        "priority": 100,
        "action": "deny(403)",
        "preview": False,
        "description": "deny list",
        "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["192.0.2.0/24"]}},
    }
    assert "desired" not in found["rate limit"].details


def test_required_rules_params_errors(tmp_path: Path) -> None:
    bad = REQUIRED.replace("src_ranges: [192.0.2.0/24], description", "expression: 'x', src_ranges: [192.0.2.0/24], "
                                                                     "description")
    with pytest.raises(RuleError, match="give either src_ranges or expression"):
        scan(tmp_path, bad)
    with pytest.raises(RuleError, match="needs rate_limit_options"):
        scan(tmp_path, REQUIRED.replace("action: deny(403)", "action: throttle"))
    with pytest.raises(RuleError, match=r"params\.rules: Field required"):
        scan(tmp_path, one_rule("cloud_armor.required_rules"))


# -- desired state --------------------------------------------------------------------------------------------------
DESIRED = """
- id: r
  check: cloud_armor.desired_state
  severity: high
  params:
    policies:
      inference-*:
        - {priority: 1000, action: allow, src_ranges: [203.0.113.0/24, 198.51.100.7]}
        - {priority: 2000, action: deny(403), expression: "evaluatePreconfiguredExpr('sqli-v33-stable')"}
        - {priority: 2147483647, action: deny(403), src_ranges: ["*"]}
"""


def test_desired_state(tmp_path: Path) -> None:
    ok = policy(
        "inference-api",
        rule(1000, "allow", ["198.51.100.7/32", "203.0.113.0/24"]),  # other order and spelling: same rule
        rule(2000, "deny(403)", expr="evaluatePreconfiguredExpr('sqli-v33-stable')"),
        DENY_ALL,
    )
    other = policy("dashboard", rule(5, "allow", ["*"]))  # not declared: not judged
    assert scan(tmp_path, DESIRED, ok, other) == []
    drifted = policy(
        "inference-eu",
        rule(1000, "allow", ["203.0.113.0/24", "192.0.2.0/24"], preview=True),
        rule(1500, "allow", ["0.0.0.0/0"]),
        rule(DEFAULT, "allow", ["*"]),
        cai=True,
    )
    found = {(f.details["change"], f.details["priority"]): f for f in scan(tmp_path, DESIRED, drifted)}
    assert sorted(found) == [("changed", 1000), ("changed", DEFAULT), ("extra", 1500), ("missing", 2000)]
    changed = found[("changed", 1000)]
    assert "preview" in changed.message and "src_ranges" in changed.message
    assert changed.details["desired"]["match"]["config"]["srcIpRanges"] == ["203.0.113.0/24", "198.51.100.7"]
    assert found[("changed", DEFAULT)].details["desired"]["action"] == "deny(403)"
    assert found[("missing", 2000)].details["desired"]["match"] == {
        "expr": {"expression": "evaluatePreconfiguredExpr('sqli-v33-stable')"}
    }
    assert "desired" not in found[("extra", 1500)].details
    assert found[("extra", 1500)].details["src_ranges"] == ["0.0.0.0/0"]


def test_desired_state_ignores_undeclared_default_rule(tmp_path: Path) -> None:
    rules = one_rule("cloud_armor.desired_state", "{policies: {'*': [{priority: 10, action: allow, src_ranges: "
                                                  "[10.0.0.0/8]}]}}")
    assert scan(tmp_path, rules, policy("p", rule(10, "allow", ["10.0.0.0/8"]), rule(DEFAULT, "allow", ["*"]))) == []


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("[{priority: 1, action: allow, src_ranges: [a]}, {priority: 1, action: allow, src_ranges: [b]}]",
         "not an IP address"),
        ("[{priority: 1, action: allow, src_ranges: ['*']}, {priority: 1, action: allow, src_ranges: ['*']}]",
         "priority 1 is declared twice"),
        ("[{priority: 1, action: accept, src_ranges: ['*']}]", "String should match pattern"),
        ("[{priority: -1, action: allow, src_ranges: ['*']}]", "greater than or equal to 0"),
    ],
)
def test_desired_state_params_errors(tmp_path: Path, rules: str, message: str) -> None:
    with pytest.raises(RuleError, match="rule r") as exc:
        scan(tmp_path, one_rule("cloud_armor.desired_state", f"{{policies: {{p: {rules}}}}}"))
    assert message in str(exc.value)


# -- real data ------------------------------------------------------------------------------------------------------
def recorded_policies(folder: Path) -> list[Asset]:
    """The Compute API responses recorded by cloud-custodian, turned into the assets CAI would give."""
    out = []
    for f in sorted(folder.glob("*.json")):
        body = json.loads(f.read_text())["body"]
        for p in body.get("items", [body]):
            project = p["selfLink"].split("/projects/")[1].split("/")[0]
            out.append(Asset(f"//compute.googleapis.com/projects/{project}/global/securityPolicies/{p['name']}",
                             POLICY, resource=p, ancestors=(f"projects/{project}",)))
    return out


def shipped_armor() -> Engine:
    return Engine(load_file(shipped_rules_dir() / "cloud_armor.yaml"))


def test_shipped_pack_on_recorded_api_responses(public_data: Path) -> None:
    assets = recorded_policies(public_data / "cloud-armor")
    assert len(assets) == 4
    result = shipped_armor().evaluate(assets)
    assert not result.errors
    by_policy: dict[str, set[str]] = {}
    for f in result.findings:
        by_policy.setdefault(f.asset.rsplit("/", 1)[1], set()).add(f.rule)
    # Three of the recorded policies allow by default; the fourth denies by default.
    assert {p for p, rules in by_policy.items() if "armor-default-rule-denies" in rules} == {
        "basic-cloud-armor-policy", "c7n-armor-default-8fa0", "c7n-armor-default-7f0d"}
    # The WAF policy's nine expression rules are neither shadowed nor open: only the default and the rate limit.
    assert by_policy["basic-cloud-armor-policy"] == {"armor-default-rule-denies", "armor-rate-limit-required"}
    assert by_policy["test-policy"] == {"armor-rate-limit-required"}


def test_shipped_pack_on_cai_dump_singular_spelling(public_data: Path) -> None:
    assets = [a for a in iter_file_assets(public_data / "cai" / "forseti_mock_cai_resources.dump")
              if a.asset_type == POLICY]
    assert len(assets) == 1 and "rule" in assets[0].resource
    found = shipped_armor().evaluate(assets).findings
    default = [f for f in found if f.rule == "armor-default-rule-denies"]
    assert len(default) == 1 and default[0].details == {
        "priority": DEFAULT, "action": "allow", "src_ranges": ["*"], "description": "default rule"}


def test_example_org_triggers_every_shipped_armor_rule(repo: Path) -> None:
    engine = shipped_armor()
    assets = [a for a in iter_file_assets(repo / "examples" / "org") if a.asset_type == POLICY]
    result = engine.evaluate(assets)
    fired = {f.rule for f in result.findings}
    assert fired == {r.id for r in engine.rules}
    clean = {a.name for a in assets} - {f.asset for f in result.findings}
    assert clean, "the example should also hold a compliant policy"


# -- documentation --------------------------------------------------------------------------------------------------
def docstring_examples(prefix: str) -> dict[str, str]:
    out = {}
    for name, spec in all_checks().items():
        if name.startswith(prefix):
            assert "```yaml" in spec.doc, f"{name} has no YAML example"
            out[name] = spec.doc.split("```yaml", 1)[1].split("```", 1)[0]
    return out


@pytest.mark.parametrize("name", sorted(docstring_examples("cloud_armor.")))
def test_docstring_example_loads(tmp_path: Path, name: str) -> None:
    f = tmp_path / "example.yaml"
    f.write_text(textwrap.dedent(docstring_examples("cloud_armor.")[name]))
    loaded = load_file(f)
    assert [r.rule.check for r in loaded] == [name]


@pytest.mark.parametrize(
    ("check", "params", "message"),
    [
        ("cloud_armor.default_rule_denies", "{strict: true}", "params.strict: Extra inputs are not permitted"),
        ("cloud_armor.no_open_allow", "{actions: allow}", "params.actions: Input should be a valid list"),
        ("cloud_armor.no_preview_rules", "{action: [allow]}", "params.action: Extra inputs are not permitted"),
        ("cloud_armor.unique_priorities", "{x: 1}", "params.x: Extra inputs are not permitted"),
        ("cloud_armor.no_shadowed_rules", "{open_rules_shadow: sometimes}", "params.open_rules_shadow: Input should"),
    ],
)
def test_params_errors_name_the_rule_line_and_field(tmp_path: Path, check: str, params: str, message: str) -> None:
    with pytest.raises(RuleError) as exc:
        scan(tmp_path, one_rule(check, params))
    assert "rules.yaml:1: rule r:" in str(exc.value) and message in str(exc.value)
