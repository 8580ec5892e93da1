"""`bench/run.py --rounds`: the daemon's cycles against the scans of their own round."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.generate import generate
from bench.run import daemon_rounds, render


def test_a_round_times_both_cycles_between_two_scans(tmp_path: Path) -> None:
    export = tmp_path / "org.ndjson"
    generate(600, export, seed=3, profile="messy")
    out = daemon_rounds(export, 2)
    assert len(out["rounds"]) == 2
    for r in out["rounds"]:
        scan = sum(r["scan_seconds"]) / 2
        assert r["first_ratio"] == pytest.approx(r["first_seconds"] / scan, rel=0.02)
        assert r["second_ratio"] == pytest.approx(r["second_seconds"] / scan, rel=0.02)
        assert r["state_bytes"] > 0 and r["state_growth_bytes"] == 0  # nothing changed: nothing written
        assert len(r["peak_mb"]) == 4 and min(r["peak_mb"]) > 0
    firsts = sorted(r["first_ratio"] for r in out["rounds"])
    assert out["median_first_ratio"] == pytest.approx(sum(firsts) / 2, abs=0.01)
    text = render({
        "machine": {"nproc": 2, "cpu": "x", "python": "3"},
        "assets": 600,
        "profiles": {"messy": {
            "profile": "messy", "file_mb": 1.0, "file": str(export), "rules": 36, "findings": 1, "rows": [],
            "ratio_scan_to_floor": 1, "ratio_scan_to_floor_cpu": 1, "ratio_cli_to_floor": None,
            "ratio_cli_to_floor_cpu": None, "ratio_scan_to_typed_floor": 1, "ratio_serve_to_scan": None,
            "rule_scaling": None, "bound": None, "daemon_rounds": out,
        }},
    })  # fmt: skip
    assert "round 2: scans" in text and "median over 2 rounds" in text
