"""A scan over several processes gives exactly what one process gives: findings, order, counts, problems."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import auditor.parallel
from auditor.collect import SourceOptions
from auditor.collect.files import FileSource
from auditor.evaluate.engine import Engine
from auditor.evaluate.rulebook import load_rules
from auditor.parallel import MIN_RANGE_BYTES, ParallelReader
from auditor.report.formats import StreamedReport, format_names
from auditor.scan import run_scan
from bench.generate import generate

NOW = datetime(2026, 11, 26, tzinfo=UTC)
BAD_LINES = {
    "{not json\n": "malformed asset line",
    '{"asset_type": "storage.googleapis.com/Bucket"}\n': "asset has no 'name'",
}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    """A generated organization large enough to be split in several ranges, with bad and blank lines in it."""
    path = tmp_path_factory.mktemp("org") / "org.ndjson"
    generate(14000, path, seed=11)
    lines = path.read_bytes().splitlines(keepends=True)
    assert path.stat().st_size > 2 * MIN_RANGE_BYTES
    for at, line in zip((3, len(lines) // 2, len(lines) - 5), [*BAD_LINES, "\n"], strict=True):
        lines.insert(at, line.encode())
    bad = {n: BAD_LINES[line.decode()] for n, line in enumerate(lines, 1) if line.decode() in BAD_LINES}
    path.write_bytes(b"".join(lines))
    return path, bad


def _scan(path: Path, jobs: int) -> tuple[dict, list[str]]:
    problems: list[str] = []
    result = run_scan([str(path)], load_rules(), SourceOptions(on_problem=problems.append), now=NOW, jobs=jobs)
    doc = result.to_dict()
    doc["assets_by_type"] = sorted(result.evaluation.assets_by_type.items())  # counts, not the order types were met
    doc["exemption_hits"] = sorted(result.evaluation.exemption_hits.items())
    return doc, problems


def test_parallel_and_serial_scans_are_identical(export: tuple[Path, dict[int, str]]) -> None:
    path, bad = export
    serial, serial_problems = _scan(path, 1)
    parallel, parallel_problems = _scan(path, 2)
    assert serial["findings"], "the generated organization violates the baseline"
    assert parallel == serial
    assert parallel_problems == serial_problems
    # the bad lines are reported with their own line numbers, in the range after the first too
    assert [p.split(": ", 1)[0] for p in parallel_problems] == [f"{path}:{n}" for n in sorted(bad)]
    assert all(reason in p for p, reason in zip(parallel_problems, [bad[n] for n in sorted(bad)], strict=True))
    assert parallel["summary"]["assets"] == 14000 and not parallel["complete"]


def test_ranges_cover_the_file_at_line_boundaries(export: tuple[Path, dict[int, str]]) -> None:
    path, _ = export
    source = FileSource(str(path), SourceOptions())
    ranges = source.split(path, 8, MIN_RANGE_BYTES)
    assert ranges is not None and len(ranges) >= 2
    data = path.read_bytes()
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    assert all(a[1] == b[0] and data[b[0] - 1 : b[0]] == b"\n" for a, b in itertools.pairwise(ranges))
    names = []
    for start, end in ranges:
        names += [a.name for a in source.range_assets(path, start, end)]
    assert names == [a.name for a in FileSource(str(path), SourceOptions()).assets()]


def test_only_plain_ndjson_is_split(tmp_path: Path) -> None:
    listing = tmp_path / "listing.json"
    listing.write_text(json.dumps({"assets": [{"name": "//x/1", "assetType": "t"}]}) + "\n" + " " * 100)
    assert FileSource(str(listing), SourceOptions()).split(listing, 4, 1) is None
    packed = tmp_path / "org.ndjson.gz"
    generate(50, packed, compress=True)
    assert FileSource(str(packed), SourceOptions()).split(packed, 4, 1) is None


def test_cli_jobs_gives_the_same_report(export: tuple[Path, dict[int, str]], tmp_path: Path) -> None:
    path, _ = export
    docs = []
    for jobs in ("1", "2", "auto"):  # auto: one per usable core
        out = tmp_path / f"report-{jobs}.json"
        cmd = [sys.executable, "-m", "auditor", "scan", "--source", str(path), "--jobs", jobs, "--format", "json"]
        proc = subprocess.run([*cmd, "-o", str(out), "--fail-on", "never"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 3, proc.stderr  # the export has malformed lines: partial
        doc = json.loads(out.read_text())
        doc.pop("scanned_at")
        docs.append(doc)
    assert docs[0] == docs[1] == docs[2]
    assert docs[0]["findings"]


def test_mixed_sources_with_jobs_match_one_process(tmp_path: Path, public_data: Path) -> None:
    """Small exports, gzip and Kubernetes lists are read in the parent, in their order, beside split files."""
    folder = tmp_path / "org"
    folder.mkdir()
    generate(1500, folder / "a.ndjson", seed=2)
    generate(1500, folder / "b.ndjson.gz", seed=3, compress=True)
    rbac = public_data / "k8s-bootstrap-rbac" / "cluster-role-bindings.yaml"
    (folder / "c.yaml").write_bytes(rbac.read_bytes())
    serial, _ = _scan(folder, 1)
    parallel, _ = _scan(folder, 2)
    assert parallel == serial
    # the two generated organizations share some names (the organization, its folders): one asset each
    summary = parallel["summary"]
    assert summary["assets"] + summary["duplicate_assets"] > 3000 and summary["duplicate_assets"] > 0


def test_a_sharded_export_is_read_a_shard_per_worker(export: tuple[Path, dict[int, str]], tmp_path: Path) -> None:
    """The shards of an export (plain or gzip) each go to a worker whole; a Kubernetes list between them is read
    in the parent, in its place; results, problems and their line numbers are those of one process."""
    path, _ = export
    lines = path.read_bytes().splitlines(keepends=True)
    folder = tmp_path / "sharded"
    folder.mkdir()
    a, b = len(lines) * 9 // 20, len(lines) * 11 // 20  # the plain shards must weigh enough to be worth workers
    (folder / "part-0.ndjson").write_bytes(b"".join(lines[:a]))
    (folder / "part-1.ndjson.gz").write_bytes(gzip.compress(b"".join(lines[a:b])))
    (folder / "part-1b.yaml").write_text("apiVersion: v1\nkind: List\nitems: []\n")
    (folder / "part-2.ndjson").write_bytes(b"".join([lines[b], b"{broken\n", *lines[b + 1 :]]))
    source = FileSource(str(folder), SourceOptions())
    plan = ParallelReader(Engine(load_rules()), 2, "local")._plan(source)
    assert [(f.name, None if jobs is None else [(j.start, j.end) for j in jobs]) for f, jobs in plan] == [
        ("part-0.ndjson", [(0, -1)]),
        ("part-1.ndjson.gz", [(0, -1)]),
        ("part-1b.yaml", None),
        ("part-2.ndjson", [(0, -1)]),
    ]
    serial, serial_problems = _scan(folder, 1)
    parallel, parallel_problems = _scan(folder, 2)
    assert parallel == serial and serial["findings"]
    assert parallel_problems == serial_problems
    assert [p.split(": ", 1)[0] for p in parallel_problems][-1] == f"{folder / 'part-2.ndjson'}:2"


@pytest.mark.parametrize("fmt", format_names())
def test_workers_send_a_report_its_findings_encoded(
    export: tuple[Path, dict[int, str]], monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """With a report as the sink, the workers send each finding as the report's line and record, never as an
    object, and the report is byte for byte the one of one process."""
    path, _ = export
    parts: list[Any] = []
    real = auditor.parallel._parts

    def kept(pool: Any, jobs: list[Any], *more: Any) -> Iterator[Any]:
        for part in real(pool, jobs, *more):
            parts.append(part)
            yield part

    monkeypatch.setattr(auditor.parallel, "_parts", kept)
    rules = load_rules()
    out = []
    for jobs in (1, 2):
        report = StreamedReport(fmt, rules)
        result = run_scan([str(path)], rules, SourceOptions(), now=NOW, jobs=jobs, on_finding=report)
        buf = io.BytesIO()
        report.write(buf, result)
        out.append(buf.getvalue())
    assert out[0] == out[1]
    assert len(parts) > 1
    assert all(p.encoded is not None and not p.evaluation.findings for p in parts)
    assert sum(len(p.encoded) for p in parts) > 0  # the streamed checks' (those with context run in the parent)
