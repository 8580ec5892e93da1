"""run_scan: the garbage collector's pace while a scan runs, and its restoration afterwards."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_rules
from auditor.scan import GC_THRESHOLD, fewer_collections, run_scan
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
