"""run_scan: the garbage collector's pace while a scan runs, and its restoration afterwards; the exit contract."""

from __future__ import annotations

import csv
import gc
import io
import itertools
import json
import os
import re
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import auditor.scan
from auditor.collect import SourceOptions
from auditor.evaluate.engine import Engine, Evaluation, EvaluationError
from auditor.evaluate.rulebook import load_rules
from auditor.keys import UpdateTimes
from auditor.model import SEVERITIES, Asset, NotEvaluated, SourceStatus
from auditor.report.spool import META_BYTES, Tally, copy_tag
from auditor.scan import (
    GC_THRESHOLD,
    Collector,
    Duplicates,
    ScanResult,
    fewer_collections,
    is_later,
    resolve_jobs,
    run_scan,
    stable_key,
    usable_cores,
)
from bench.generate import generate

EXAMPLE = Path(__file__).resolve().parent.parent / "examples"
CLUSTER = "projects/ml-platform-prod/locations/us-central1/clusters/training"


def test_a_scan_collects_less_often_and_restores_the_threshold(tmp_path: Path) -> None:
    before = gc.get_threshold()
    export = tmp_path / "org.ndjson"
    generate(3000, export, seed=2)
    seen: list[int] = []  # the threshold each time the scan reports progress (every 1,000 assets)
    result = run_scan(
        [str(export), str(EXAMPLE / "k8s")],
        load_rules(),
        SourceOptions(cluster=CLUSTER),
        on_progress=lambda _: seen.append(gc.get_threshold()[0]),
    )
    assert result.findings
    assert seen and all(t >= GC_THRESHOLD for t in seen)
    assert gc.get_threshold() == before


def test_overlapping_scans_restore_the_threshold_only_when_the_last_ends() -> None:
    before = gc.get_threshold()
    first_in, release = threading.Event(), threading.Event()
    during: list[int] = []

    def long_scan() -> None:
        with fewer_collections():
            first_in.set()
            release.wait(5)

    t = threading.Thread(target=long_scan)
    t.start()
    assert first_in.wait(5)
    with fewer_collections():
        during.append(gc.get_threshold()[0])
    during.append(gc.get_threshold()[0])  # the first scan still runs
    release.set()
    t.join(5)
    assert during == [max(GC_THRESHOLD, before[0])] * 2
    assert gc.get_threshold() == before


def _example_result() -> ScanResult:
    return run_scan([str(EXAMPLE / "org")], load_rules())


@pytest.mark.parametrize(
    ("spoil", "fail_on", "allow_partial", "status"),
    [
        (None, "low", False, 1),
        (None, "never", False, 0),
        ("not_evaluated", "never", False, 3),
        ("not_evaluated", "low", False, 3),  # partial with findings: 3, never mistaken for "checked"
        ("not_evaluated", "never", True, 0),
        ("not_evaluated", "low", True, 1),
        ("error", "never", False, 3),
        ("error", "never", True, 0),
        ("skipped", "never", False, 3),
    ],
)
def test_the_exit_status_follows_the_contract(
    spoil: str | None, fail_on: str, allow_partial: bool, status: int
) -> None:
    result = _example_result()
    assert result.complete and result.findings
    if spoil == "not_evaluated":
        result.evaluation.not_evaluated.append(NotEvaluated("iam-no-external-members", "no Organization asset"))
    elif spoil == "error":
        result.evaluation.errors.append(EvaluationError("r", "//a", "TypeError: boom"))
    elif spoil == "skipped":
        result.sources[0].fail("*", "1 malformed record(s) skipped")
    assert result.exit_status(fail_on, allow_partial) == status
    if spoil is not None:
        assert not result.complete and result.to_dict()["complete"] is False
        assert result.partial_reasons()
    if spoil == "not_evaluated":
        report = result.to_dict()
        assert report["not_evaluated"] == [{"rule": "iam-no-external-members", "reason": "no Organization asset"}]
        assert report["summary"]["not_evaluated"] == 1


CAI_DATA = Path(__file__).resolve().parent / "data" / "cai"


def test_one_asset_in_two_files_is_one_asset_in_every_report(tmp_path: Path) -> None:
    """Issue 12: an asset present in two files of a folder gave the same finding (same id) twice."""
    from click.testing import CliRunner

    from auditor.cli import cli

    dump = (CAI_DATA / "forseti_mock_cai_iam_policies.dump").read_text()
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "a.dump").write_text(dump)
    (tmp_path / "org" / "b.dump").write_text(dump)  # the same export, copied beside itself
    rules = load_rules()
    once = run_scan([str(CAI_DATA / "forseti_mock_cai_iam_policies.dump")], rules)
    twice = run_scan([str(tmp_path / "org")], rules)
    assert once.findings and [f.id for f in twice.findings] == [f.id for f in once.findings]
    assert twice.evaluation.assets == once.evaluation.assets == 22
    [status] = twice.sources
    assert status.duplicate_count == 22 and "the copy read first is kept" in status.duplicates[0]
    runner = CliRunner()
    base = ["scan", "--source", str(tmp_path / "org"), "--fail-on", "never"]
    report = json.loads(runner.invoke(cli, [*base, "--format", "json"]).stdout)
    ids = [f["id"] for f in report["findings"]]
    assert len(ids) == len(set(ids)) == len(once.findings)
    assert report["summary"]["duplicate_assets"] == 22 and report["sources"][0]["duplicates"] == 22
    markdown = runner.invoke(cli, [*base, "--format", "markdown"]).stdout
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert len(rows) == len(once.findings)
    table = runner.invoke(cli, [*base], env={"COLUMNS": "250"}).output
    assert f"{len(once.findings)} findings" in table and "22 duplicate assets read once" in table
    by_format = {
        "ndjson": lambda text: [json.loads(line)["id"] for line in text.splitlines() if '"rule"' in line],
        "csv": lambda text: [row["id"] for row in csv.DictReader(io.StringIO(text))],
        "sarif": lambda text: [r["partialFingerprints"]["findingId/v1"]
                               for r in json.loads(text)["runs"][0]["results"]],
        "junit": lambda text: re.findall(r"<failure\b", text),
    }
    for fmt, ids_of in by_format.items():
        out = tmp_path / f"report.{fmt}"
        runner.invoke(cli, [*base, "--format", fmt, "-o", str(out)])
        found = ids_of(out.read_text())
        assert len(found) == len(once.findings), fmt
        if fmt != "junit":
            assert len(set(found)) == len(found), fmt


def _bucket(members: list[str], update_time: str) -> str:
    return json.dumps({
        "name": "//storage.googleapis.com/training-data", "asset_type": "storage.googleapis.com/Bucket",
        "iam_policy": {"bindings": [{"role": "roles/storage.objectViewer", "members": members}]},
        "ancestors": ["projects/1", "organizations/2"], "update_time": update_time,
    }) + "\n"


@pytest.mark.parametrize("newer_first", [True, False])
def test_the_copy_with_the_later_update_time_wins(tmp_path: Path, newer_first: bool) -> None:
    old = _bucket(["allUsers", "user:a@x.example"], "2026-01-01T00:00:00Z")
    new = _bucket(["user:a@x.example"], "2026-03-01T00:00:00Z")  # the public grant was removed since
    (tmp_path / "1.ndjson").write_text(new if newer_first else old)
    (tmp_path / "2.ndjson").write_text(old if newer_first else new)
    result = run_scan([str(tmp_path)], load_rules())
    assert not [f for f in result.findings if f.rule == "iam-no-public-members"]
    assert result.evaluation.assets == 1
    assert result.sources[0].duplicate_count == 1
    kept = "the copy read first is kept" if newer_first else "the later copy replaces the first"
    assert kept in result.sources[0].duplicates[0]


def test_a_binding_repeated_in_a_policy_gives_one_finding(tmp_path: Path) -> None:
    binding = {"role": "roles/storage.objectViewer", "members": ["allUsers"]}
    line = json.loads(_bucket([], "2026-01-01T00:00:00Z"))
    line["iam_policy"]["bindings"] = [binding, binding, {**binding, "members": ["allUsers", "allUsers"]}]
    (tmp_path / "x.ndjson").write_text(json.dumps(line) + "\n")
    findings = [f for f in run_scan([str(tmp_path / "x.ndjson")], load_rules()).findings]
    ids = [f.id for f in findings]
    assert len(ids) == len(set(ids))
    assert [f.rule for f in findings].count("iam-no-public-members") == 1


def test_usable_cores_are_the_affinity_within_the_cpu_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(tmp_path / "absent") == 4  # no cgroup v2 limit readable: the affinity
    for quota, cores in [("max 100000", 4), ("150000 100000", 2), ("200000 100000", 2), ("50000 100000", 1),
                         ("800000 100000", 4), ("not a quota", 4)]:
        cpu_max.write_text(quota + "\n")
        assert usable_cores(cpu_max) == cores, quota
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {7}, raising=False)  # `taskset -c 7`
    assert usable_cores(tmp_path / "absent") == 1


def test_jobs_are_a_number_or_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auditor.scan, "usable_cores", lambda: 3)
    assert resolve_jobs("auto") == 3
    assert resolve_jobs(1) == 1 and resolve_jobs(8) == 8
    for bad in (0, -1, True, "2", "many", None):
        with pytest.raises(ValueError, match="number of processes"):
            resolve_jobs(bad)  # type: ignore[arg-type]


class _Lines:
    """A sink of encoded findings that keeps what it is handed, one line and record at a time."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes, bytes]] = []

    def add_line(self, group: str, lines: bytes, records: bytes) -> None:
        ends = [i + 1 for i, c in enumerate(lines) if c == ord("\n")]
        for j, (start, end) in enumerate(zip([0, *ends], ends, strict=False)):
            self.got.append((group, lines[start:end], records[j * META_BYTES : (j + 1) * META_BYTES]))


@given(st.lists(st.lists(st.integers(1, 12), max_size=12), max_size=5))
def test_a_group_taken_whole_is_what_its_findings_taken_one_by_one_give(groups: list[list[int]]) -> None:
    """A worker's group of findings of copies read first: handed on in one piece but the ids handed on before."""
    collectors = []
    for _ in range(2):
        dedupe = Duplicates(Engine([]).start(Evaluation()), stable_key)
        collectors.append(Collector(_Lines(), dedupe, Tally()))  # type: ignore[arg-type]
    whole, one_by_one = collectors
    tag = copy_tag(7, 0)
    for n, ids in enumerate(groups):
        lines = [f"{n}:{key}:{j}\n".encode() for j, key in enumerate(ids)]
        marks = [key.to_bytes(8, "big") + bytes((key % len(SEVERITIES), 0)) for key in ids]
        ends = list(itertools.accumulate(len(line) for line in lines))
        whole.take_group(f"r{n % 2}", f"r{n % 2}", ids, b"".join(lines), b"".join(tag + m for m in marks), ends)
        one_by_one.dedupe.cur_key, one_by_one.dedupe.cur_gen = 7, 0
        for line, mark in zip(lines, marks, strict=True):
            one_by_one.take(f"r{n % 2}", f"r{n % 2}", line, mark)
    assert whole.out.got == one_by_one.out.got  # type: ignore[attr-defined]
    assert whole.tally == one_by_one.tally


def test_no_copy_is_taken_once_every_source_was_read() -> None:
    """The table of the copies read is let go before the checks with context run: a copy offered after that could
    not be compared with those before it, so it is refused rather than passed on unchecked."""
    dedupe = Duplicates(Engine([]).start(Evaluation()), stable_key)
    first = Asset("//x/a", "x/A", {"k": 1}, update_time="2026-01-05T10:00:00Z")
    assert list(dedupe.stream([first], SourceStatus("one"))) == [first]
    dedupe.read_all()
    with pytest.raises(RuntimeError, match="after every source was read"):
        list(dedupe.stream([first], SourceStatus("two")))
    with pytest.raises(RuntimeError, match="after every source was read"):
        dedupe.merge([stable_key(first)], [0], UpdateTimes())


_TIMES = st.sampled_from([None, "2026-01-05T10:00:00Z", "2026-03-02T08:30:00.123Z", "yesterday", "2026-1-5", "zz"])


@given(st.lists(st.lists(st.tuples(st.integers(1, 6), _TIMES), max_size=8), max_size=4))
def test_copies_merged_with_times_a_worker_encoded_are_decided_on_the_times_themselves(
    batches: list[list[tuple[int, str | None]]],
) -> None:
    """Each batch's times encoded by a worker of its own (its numbers for unusual texts are not the scan's): the
    decisions are those of comparing the texts, a copy at a time (`is_later`)."""
    dedupe = Duplicates(Engine([]).start(Evaluation()), stable_key)
    kept: dict[int, str | None] = {}
    for batch in batches:
        coder = UpdateTimes()
        coder.encode("an unusual text met only by this worker")
        merged = dedupe.merge([k for k, _ in batch], [coder.encode(t) for _, t in batch], coder)
        dropped, gens = set(), {}
        here: dict[int, int] = {}
        for i, (key, t) in enumerate(batch):
            if key not in kept:
                kept[key], here[key] = t, i
            elif is_later(t, kept[key]):
                if key in here:
                    dropped.add(here[key])
                kept[key], here[key] = t, i
                gens[i] = True
            else:
                dropped.add(i)
        assert merged.dropped == dropped and set(merged.gens) == set(gens)
        for i, note in merged.notes:
            assert (batch[i][1] or "unknown") in note
