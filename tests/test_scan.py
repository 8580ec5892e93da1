"""run_scan: the garbage collector's pace while a scan runs, and its restoration afterwards; the exit contract."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest

from auditor.collect import SourceOptions
from auditor.evaluate.engine import EvaluationError
from auditor.evaluate.rulebook import load_rules
from auditor.model import NotEvaluated
from auditor.scan import GC_THRESHOLD, ScanResult, fewer_collections, run_scan
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
