"""Hostile rule files, globs and CEL, read by the real command line: a clear error naming the file (and the line
where there is one) with exit status 2 for a rule file that cannot be used, and, for rules that load but meet
hostile data, the right answer or an evaluation error of that rule. Never a traceback, a hang or a wrong result.

A hang would be this suite not finishing: no case asserts a wall-clock time.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from auditor.cli import cli

PROJECT = "//cloudresourcemanager.googleapis.com/projects/1"
LONG_MEMBER = "user:" + "a" * 20_000 + "@example.com"


def asset(members: list[str], name: str = PROJECT) -> dict[str, Any]:
    return {
        "name": name,
        "asset_type": "cloudresourcemanager.googleapis.com/Project",
        "ancestors": ["projects/1", "organizations/9"],
        "resource": {"data": {"projectId": "p1", "projectNumber": "1"}},
        "iam_policy": {"bindings": [{"role": "roles/owner", "members": members}]},
    }


def source(tmp: Path, *assets: dict[str, Any]) -> Path:
    path = tmp / "assets.ndjson"
    records = assets or (asset(["user:alice@example.com", LONG_MEMBER]),)
    path.write_text("".join(json.dumps(a) + "\n" for a in records))
    return path


def scan(tmp: Path, rules: Path | str, src: Path | None = None) -> Result:
    result = CliRunner().invoke(
        cli,
        ["scan", "--source", str(src or source(tmp)), "--rules", str(rules), "--format", "json", "--fail-on", "never"],
    )
    # the one exception a command may end in is its exit: anything else is a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result


def rule(check: str, params: str = "{}", extra: str = "") -> str:
    return f"- {{id: r, check: {check}, severity: high, params: {params}{extra}}}\n"


# -- rule files refused: exit 2, the file (and line) named -------------------------------------------------------------
@dataclass
class Refused:
    name: str
    write: Callable[[Path], Path]  # makes the rule file (or folder) in a temporary folder, returns what to pass
    says: str  # a part of the message
    line: int | None = None  # the line the message names, when the problem has one


def text(content: str | bytes, name: str = "rules.yaml") -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        p = tmp / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        return p

    return write


def folder(files: dict[str, str]) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        d = tmp / "rules"
        d.mkdir()
        for name, content in files.items():
            (d / name).write_text(content)
        return d

    return write


def proc_mem(_tmp: Path) -> Path:
    """A path every reader may open and none can read (EIO), even as root: an unreadable rule file."""
    return Path("/proc/self/mem")


def billion_laughs() -> str:
    lines = ["- id: r", "  check: iam.forbidden_members", "  severity: high", "  params:", '    x0: &a0 ["lol"]']
    for i in range(1, 10):
        lines.append(f"    x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("    members: *a9")
    return "\n".join(lines) + "\n"


LONG_GLOB = "organizations/" + "x" * 2000
DEEP = "rules:\n" + "".join("  " * (i + 1) + "- \n" for i in range(0)) + "  - " + "[" * 2000 + "]" * 2000 + "\n"
LIST_100 = "[" + ",".join(str(i) for i in range(100)) + "]"


def deep_block(levels: int) -> str:
    out = ["rules:"]
    for i in range(levels):
        out.append("  " * (i + 1) + "- a:")
    return "\n".join(out) + "\n"


REFUSED = [
    Refused("latin-1 bytes", text(b"- id: r\n  check: iam.forbidden_members\n  description: caf\xe9\n"),
            "not UTF-8", 3),
    Refused("utf-16", text("- id: r\n".encode("utf-16")), "not UTF-8", 1),
    Refused("nul bytes and garbage", text(b"\x00\xff\xfe\x00" * 64), "not UTF-8"),
    Refused("block yaml nested 2000 deep", text(deep_block(2000)), "nested deeper than 64", 33),
    Refused("flow yaml nested 2000 deep", text(DEEP), "nested deeper than 64", 2),
    Refused("empty file", text(""), "no rule in the file"),
    Refused("only comments", text("# a baseline to be written\n# later\n"), "no rule in the file"),
    Refused("only empty documents", text("---\n---\n...\n"), "no rule in the file"),
    Refused("empty rules list", text("rules: []\n"), "no rule in the file"),
    Refused("folder without rule files", folder({"README.md": "rules go here"}), "no rule files"),
    Refused("folder whose only file is empty", folder({"a.yaml": ""}), "no rule in the file"),
    Refused("unreadable file", proc_mem, "cannot read the rule file"),
    Refused("missing path", lambda tmp: tmp / "nope.yaml", "no such rule file or folder"),
    Refused("yaml syntax error", text("- id: r\n  check: [unclosed\n"), "YAML syntax error"),
    Refused("python object tag", text("- !!python/object/apply:os.system [echo pwned]\n"), "YAML syntax error", 1),
    Refused("a rule that is a string", text("- just a string\n"), "a rule must be a mapping", 1),
    Refused("unknown check", text(rule("iam.nope")), "unknown check 'iam.nope'", 1),
    Refused("duplicate ids", text(rule("iam.forbidden_members", "{members: [allUsers]}") * 2), "duplicate rule id"),
    Refused("severity of the wrong type", text("- {id: r, check: cel, severity: [high]}\n"), "severity", 1),
    Refused("members a string, not a list", text(rule("iam.forbidden_members", "{members: allUsers}")),
            "params.members: Input should be a valid list", 1),
    Refused("billion laughs", text(billion_laughs()), "params.members"),
    Refused("ancestry glob over the length limit", text(rule("iam.forbidden_members", "{members: [allUsers]}",
                                                             f", match: {{ancestries: ['{LONG_GLOB}']}}")),
            "longer than the limit of 1024", 1),
    Refused("exemption glob over the length limit",
            text(rule("iam.forbidden_members", "{members: [allUsers]}",
                      f", exemptions: [{{resource: '{LONG_GLOB}', reason: x, owner: y}}]")),
            "longer than the limit of 1024", 1),
    Refused("cel syntax error", text(rule("cel", "{expression: 'name ==== 1'}")), "CEL compile error", 1),
    Refused("cel unknown variable", text(rule("cel", "{expression: 'nosuch == 1'}")), "Undefined variable", 1),
    Refused("cel expression too long", text(rule("cel", "{expression: '" + "1 + " * 3000 + "1 == 2'}")),
            "over the limit of 10000", 1),
    Refused("cel nested 200 deep", text(rule("cel", "{expression: '" + "(" * 200 + "true" + ")" * 200 + "'}")),
            "nested 200 deep", 1),
    Refused("cel comprehensions over literal lists", text(rule(
        "cel", "{expression: '" + f"{LIST_100}.all(a, {LIST_100}.all(b, {LIST_100}.all(c, {LIST_100}.all(d, true))))"
        + "'}")), "over the budget of 1,000,000", 1),
    Refused("cel comprehensions nested 5 deep on data", text(rule(
        "cel", "{per: binding, expression: 'members.all(a, members.all(b, members.all(c, members.all(d, "
               "members.all(e, true)))))'}")), "comprehensions nested 5 deep", 1),
    Refused("cel message asking for a gigabyte",
            text(rule("cel", "{expression: 'true', message: '{name:>999999999}'}")), "takes no format spec", 1),
    Refused("cel message with a conversion", text(rule("cel", "{expression: 'true', message: '{name!r}'}")),
            "takes no format spec", 1),
    Refused("cel message reading attributes", text(rule("cel", "{expression: 'true', message: '{name.__class__}'}")),
            "unknown field", 1),
    Refused("trusted range with a leading zero", text(rule("cloud_armor.trusted_source_ranges",
                                                          "{trusted_ranges: ['010.0.0.0/8']}")),
            "not an IP address or CIDR range: 010.0.0.0/8", 1),
    Refused("trusted range in full-width digits", text(rule("cloud_armor.trusted_source_ranges",
                                                           "{trusted_ranges: ['\uff11.2.3.0/24']}")),
            "not an IP address or CIDR range", 1),
    Refused("trusted range with host bits set", text(rule("cloud_armor.trusted_source_ranges",
                                                         "{trusted_ranges: ['10.0.0.1/8']}")),
            "10.0.0.1/8 (10.0.0.1/8 has host bits set)", 1),
    Refused("required range with a NUL and a prefix past 128", text(rule(
        "cloud_armor.required_rules", '{rules: [{name: x, src_ranges: ["10.0.0.0/8\\0", "2001:db8::/129"]}]}')),
            "not an IP address or CIDR range: 10.0.0.0/8\x00, 2001:db8::/129", 1),
    Refused("constraint with ancestries of the wrong type", text(
        "apiVersion: constraints.gatekeeper.sh/v1alpha1\nkind: GCPIAMAllowBanRolesConstraintV1\nmetadata: {name: x}\n"
        "spec: {match: {ancestries: 5}, parameters: {roles: [a]}}\n"), "spec.match.ancestries", 1),
    Refused("constraint of an unknown kind", text(
        "apiVersion: constraints.gatekeeper.sh/v1alpha1\nkind: [a, list]\nmetadata: {name: x}\n"),
        "unsupported constraint kind", 1),
]


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.name)
def test_a_rule_file_that_cannot_be_used_is_refused_with_its_name(case: Refused, tmp_path: Path) -> None:
    target = case.write(tmp_path)
    result = scan(tmp_path, target)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert case.says in result.output, result.output
    assert str(target) in result.output
    if case.line is not None:
        assert f"{target}:{case.line}:" in result.output, result.output


def test_an_unreadable_file_in_a_rules_folder_is_named(tmp_path: Path) -> None:
    """As a user without root would meet it (root reads anything: then the /proc case above stands in)."""
    if os.geteuid() == 0:
        pytest.skip("root reads a file without read permission")
    d = tmp_path / "rules"
    d.mkdir()
    (d / "good.yaml").write_text(rule("iam.forbidden_members", "{members: [allUsers]}"))
    locked = d / "locked.yaml"
    locked.write_text(rule("iam.forbidden_members", "{members: [allUsers]}"))
    locked.chmod(0)
    try:
        result = scan(tmp_path, d)
    finally:
        locked.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert result.exit_code == 2 and f"{locked}: cannot read the rule file" in result.output


# -- rules that load and meet hostile data -----------------------------------------------------------------------------
HOSTILE_GLOB = "**a" * 40 + "**b"


@dataclass
class Runs:
    name: str
    rules: str
    findings: int  # what the scan must report: the right answer, however hostile the glob or the data
    errors: int = 0  # evaluation errors of the rule


RUNS = [
    Runs("member glob **a**a...b, no b in the member",
         rule("iam.forbidden_members", f"{{members: ['{HOSTILE_GLOB}']}}"), 0),
    Runs("member glob *a*a...b over a 20,000 character member",
         rule("iam.forbidden_members", "{members: ['" + "*a" * 30 + "*b']}"), 0),
    Runs("member glob with many wildcards that matches", rule("iam.forbidden_members", "{members: ['u*:*a*a*a*@**']}"),
         1),
    Runs("member glob of a thousand stars", rule("iam.forbidden_members", "{members: ['" + "*" * 1000 + "']}"), 2),
    Runs("member glob of a thousand question marks",
         rule("iam.forbidden_members", "{members: ['user:" + "?" * 1000 + "']}"), 0),
    Runs("ancestry glob **a**a...b", rule("iam.forbidden_members", "{members: ['user:alice@example.com']}",
                                          f", match: {{ancestries: ['{HOSTILE_GLOB}']}}"), 0),
    Runs("exemption glob **a**a...b", rule("iam.forbidden_members", "{members: ['user:alice@example.com']}",
                                           f", exemptions: [{{resource: '{HOSTILE_GLOB}', reason: x, owner: y}}]"),
         1),
    Runs("role glob **a**a...b", rule("iam.banned_roles", f"{{roles: ['{HOSTILE_GLOB}']}}"), 0),
    Runs("cel dividing by zero on every asset", rule("cel", "{expression: '1 / (size(name) - size(name)) == 1'}"), 0,
         1),
    Runs("cel overflowing an integer", rule("cel", "{expression: '9223372036854775807 + size(name) > 0'}"), 0, 1),
    Runs("cel returning a string", rule("cel", "{expression: 'name'}"), 0, 1),
    Runs("cel with an invalid regular expression", rule("cel", "{expression: 'name.matches(\"(\")'}"), 0, 1),
    Runs("cel with a huge regular expression", rule("cel", "{expression: 'name.matches(\"a{1000}{1000}\")'}"), 0, 1),
    Runs("cel over a 20,000 character member", rule("cel", "{per: member, expression: 'member.size() > 10000'}"), 1),
]


@pytest.mark.parametrize("case", RUNS, ids=lambda c: c.name)
def test_rules_meeting_hostile_data_give_the_right_answer_or_an_error(case: Runs, tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text(case.rules)
    result = scan(tmp_path, f)
    assert result.exit_code in (0, 3), result.output
    report = json.loads(result.stdout)
    open_findings = [x for x in report["findings"] if not x.get("exempted")]
    assert len(open_findings) == case.findings, report["findings"]
    assert len(report["errors"]) == case.errors, report["errors"]
    assert all(e["rule"] == "r" and e["asset"] == PROJECT for e in report["errors"])
    # an evaluation error is a partial result (exit 3), never "checked and clean"
    assert (report["complete"], result.exit_code) == ((False, 3) if case.errors else (True, 0))


# Source ranges as hand-edited or crafted policies may hold them: each is read as `ipaddress` reads it or not at all
HOSTILE_RANGES = ["010.0.0.1", "1.2.3.4\x00", "\uff11.2.3.4", "1.2.3.4/33", "  1.2.3.4  ", "1" * 20_000, "1.2.3.4/08",
                  "::ffff:1.2.3.4/129", "0x7f.0.0.1", "1.2.3", "fe80::1%eth0", "1.2.3.4/255.255.255.0", "*", "", "/"]


def test_hostile_source_ranges_are_judged_as_ipaddress_reads_them(tmp_path: Path) -> None:
    """Each range in its own allow rule: reported untrusted unless `ipaddress` reads it inside the trusted range;
    `*` is open; never an error, a crash or a range silently taken for another."""
    import ipaddress

    policy = {"name": "//compute.googleapis.com/projects/p/global/securityPolicies/edge",
              "asset_type": "compute.googleapis.com/SecurityPolicy", "ancestors": ["projects/1", "organizations/9"],
              "resource": {"data": {"name": "edge", "rule": [
                  {"priority": 100 + i, "action": "allow",
                   "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRange": [r]}}}
                  for i, r in enumerate(HOSTILE_RANGES)] + [
                  {"priority": 2147483647, "action": "deny(403)",
                   "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRange": ["*"]}}}]}}}
    f = tmp_path / "rules.yaml"
    f.write_text(rule("cloud_armor.trusted_source_ranges", "{trusted_ranges: [1.2.3.0/24]}")
                 + rule("cloud_armor.no_open_allow").replace("id: r,", "id: open,"))
    result = scan(tmp_path, f, source(tmp_path, policy))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["errors"] == [] and report["complete"]

    def trusted(text: str) -> bool:
        try:
            return ipaddress.ip_network(text.strip(), strict=False).subnet_of(ipaddress.ip_network("1.2.3.0/24"))
        except (ValueError, TypeError):
            return False

    untrusted = sorted(x["details"]["src_ranges"][0] for x in report["findings"] if x["rule"] == "r")
    assert untrusted == sorted(r for r in HOSTILE_RANGES if not trusted(r))
    assert "  1.2.3.4  " not in untrusted and "1.2.3.4/08" in untrusted  # spaces read; /08 is 1.0.0.0/8
    assert [x["details"]["src_ranges"] for x in report["findings"] if x["rule"] == "open"] == [["*"]]


def test_the_exemption_glob_with_many_wildcards_still_exempts(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text(rule("iam.forbidden_members", "{members: ['user:alice@example.com']}",
                      ", exemptions: [{resource: '//*o*/*o*/**', reason: all projects, owner: sec}]"))
    report = json.loads(scan(tmp_path, f).stdout)
    assert [x["exemption"]["reason"] for x in report["findings"]] == ["all projects"]


def test_a_panic_of_the_cel_library_is_an_error_not_a_crash() -> None:
    """pyo3 turns a Rust panic into PanicException, a BaseException: guarded() makes it an error of the rule."""
    from auditor.evaluate.checks.cel import guarded

    class PanicException(BaseException):  # the library's own type cannot be imported before it panics
        pass

    def panics() -> None:
        raise PanicException("called `Option::unwrap()` on a `None` value")

    with pytest.raises(RuntimeError, match=r"the CEL library failed \(evaluate\): PanicException"):
        guarded(panics, "evaluate")
    with pytest.raises(KeyboardInterrupt):
        guarded(lambda: (_ for _ in ()).throw(KeyboardInterrupt()), "evaluate")


def test_a_rule_that_cannot_be_evaluated_makes_the_scan_partial(tmp_path: Path) -> None:
    """No Organization asset and no `domains`: iam.external_members has nothing to compare with. The report says
    the rule was not evaluated and why; the scan exits 3, not 0 with "no findings"."""
    f = tmp_path / "rules.yaml"
    f.write_text(rule("iam.external_members"))
    result = scan(tmp_path, f)
    report = json.loads(result.stdout)
    assert result.exit_code == 3 and report["complete"] is False and report["findings"] == []
    assert [n["rule"] for n in report["not_evaluated"]] == ["r"]
    assert "no Organization asset" in report["not_evaluated"][0]["reason"]
    args = ["scan", "--source", str(source(tmp_path)), "--rules", str(f), "--fail-on", "never"]
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 3 and "rule r not evaluated: no Organization asset" in table.output
