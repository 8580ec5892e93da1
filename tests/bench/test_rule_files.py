"""`bench/run.py --rule-files`: the shipped rules with each file left out, and one rule that no asset matches."""

from __future__ import annotations

from pathlib import Path

from auditor.evaluate.rulebook import load_rules, rule_files, shipped_rules_dir
from bench.generate import generate
from bench.run import _cli, rule_file_sets


def _ids(folder: Path) -> set[str]:
    return {r.id for r in load_rules([str(folder)])}


def test_each_set_leaves_out_exactly_one_shipped_file(tmp_path: Path) -> None:
    shipped = rule_files([shipped_rules_dir()])
    every = _ids(shipped_rules_dir())
    sets = rule_file_sets(tmp_path / "sets")
    assert len(sets) == len(shipped) + 1
    for f in shipped:
        own = {r.id for r in load_rules([str(f)])}
        assert own and _ids(sets[f"all but {f.name}"]) == every - own


def test_the_rule_that_matches_nothing_finds_nothing(tmp_path: Path) -> None:
    export = tmp_path / "org.ndjson"
    generate(800, export, seed=5, profile="messy")
    sets = rule_file_sets(tmp_path / "sets")
    nothing = _cli(export, 1, sets["one rule matching nothing"])
    assert (nothing["assets"], nothing["findings"]) == (800, 0)
    # the same file has findings under the shipped rules, and fewer without the Cloud Armor file
    everything = _cli(export, 1)
    without_armor = _cli(export, 1, sets["all but cloud_armor.yaml"])
    assert everything["findings"] > without_armor["findings"] > 0
