"""The lower bound's inputs: every Cloud Armor source range of the export and every finding of its report, each
counted once, and the ranges the address parser refuses being those `ipaddress` refuses."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.bound import bound, main
from bench.generate import generate

REPO = Path(__file__).resolve().parents[2]
ARMOR = "compute.googleapis.com/SecurityPolicy"


def _ranges_by_json(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if d.get("asset_type") == ARMOR and (d.get("resource") or {}).get("data"):
            for rule in d["resource"]["data"].get("rule", []):
                out.extend(((rule.get("match") or {}).get("config") or {}).get("srcIpRange", []))
    return out


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.partition("/")[0])
    except ValueError:
        return False
    return True


def test_counts_every_range_and_finding_once(tmp_path: Path) -> None:
    export, report = tmp_path / "org.ndjson", tmp_path / "findings.ndjson"
    generate(1500, export, seed=11, profile="messy")
    with export.open("a") as fh:  # a policy whose ranges the fast parser refuses, and a line of another type
        fh.write(json.dumps({"name": "//compute.googleapis.com/projects/p/global/securityPolicies/odd",
                             "asset_type": ARMOR, "resource": {"data": {"rule": [
                                 {"priority": 1, "action": "allow", "match": {"config": {"srcIpRange": [
                                     "*", "10.0.0.0/8", "010.1.2.3", "not-an-address", "::1"]}}}]}}}) + "\n")
        fh.write(json.dumps({"name": "//x/y", "asset_type": "x/Y", "resource": {"data": {"srcIpRange": ["1.2.3.4"]}}})
                 + "\n")
    proc = subprocess.run([sys.executable, "-m", "auditor", "scan", "--source", str(export), "--format", "ndjson",
                           "-o", str(report), "--fail-on", "never"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr

    b = bound(export, report)

    expected = _ranges_by_json(export)
    assert len(expected) > 1000  # the messy profile's policies are large
    assert b["ranges"] == len(expected)
    assert b["ranges_refused"] == sum(not _is_address(t) for t in expected) >= 3
    assert b["findings"] == len(report.read_text().splitlines()) > 0
    assert b["assets"] == 1502


def test_prints_the_figures_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export, report = tmp_path / "org.ndjson", tmp_path / "findings.ndjson"
    generate(300, export, seed=2, profile="messy")
    report.write_text('{"rule": "r", "asset": "a", "message": "m"}\n' * 7)
    assert main([str(export), str(report), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["findings"] == 7
    assert out["assets"] == 300
    assert out["ranges"] == len(_ranges_by_json(export))
