"""Issue 12: one asset is one asset. The same real export (Forseti's CAI IAM dump) taken at two dates, where one
bucket's public grant changed and a project's default service account lost roles/editor, read from two files or
twice in one file: the copy with the later update time wins in every report format, in one process and with
`--jobs 2`, whichever copy is read first; its findings alone are written, once each, and the counts, summary and
exit status are those of a scan of the later export alone. On a tie the copy read first stays."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import auditor.parallel
from auditor.cli import cli
from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_rules
from auditor.report.formats import StreamedReport
from auditor.scan import ScanResult, run_scan

DUMP = Path(__file__).resolve().parent / "data" / "cai" / "forseti_mock_cai_iam_policies.dump"
BUCKET = "//storage.googleapis.com/bucket1"
PROJECT = "//cloudresourcemanager.googleapis.com/projects/1043"
JANUARY, MARCH = "2026-01-05T10:00:00Z", "2026-03-02T08:30:00Z"
FORMATS = ("json", "ndjson", "csv", "sarif", "junit", "markdown")


def _export(update_time: str, public: str, drop_editor: bool) -> str:
    """The dump with an update time on every asset; bucket1 grants `public` object read; with `drop_editor`,
    project 1043 no longer gives its default Compute Engine service account roles/editor."""
    out = []
    for line in DUMP.read_text().splitlines():
        asset = json.loads(line)
        asset["update_time"] = update_time
        if asset["name"] == BUCKET:
            asset["iam_policy"]["bindings"].append({"role": "roles/storage.objectViewer", "members": [public]})
        if asset["name"] == PROJECT and drop_editor:
            for b in asset["iam_policy"]["bindings"]:
                if b["role"] == "roles/editor":
                    b["members"] = [m for m in b["members"] if "-compute@developer" not in m]
        out.append(json.dumps(asset))
    return "\n".join(out) + "\n"


OLD = _export(JANUARY, "allUsers", drop_editor=False)
NEW = _export(MARCH, "allAuthenticatedUsers", drop_editor=True)


def _ids(fmt: str, text: str) -> list[str]:
    if fmt == "json":
        return [f["id"] for f in json.loads(text)["findings"]]
    if fmt == "ndjson":
        return [json.loads(line)["id"] for line in text.splitlines()]
    if fmt == "csv":
        return [row["id"] for row in csv.DictReader(io.StringIO(text))]
    if fmt == "sarif":
        return [r["partialFingerprints"]["findingId/v1"] for r in json.loads(text)["runs"][0]["results"]]
    if fmt == "junit":
        return re.findall(r">id ([0-9a-f]+)&#10;", text) + re.findall(r">exempted ([0-9a-f]+) ", text)
    return sorted(line for line in text.splitlines() if line.startswith("| `"))  # markdown: its rows


def _summary(fmt: str, text: str) -> Any:
    if fmt == "json":
        summary = json.loads(text)["summary"]
    elif fmt == "sarif":
        summary = json.loads(text)["runs"][0]["properties"]["summary"]
    elif fmt == "markdown":
        return text.splitlines()[2].replace(", 22 duplicate assets read once", "")  # the summary line
    elif fmt == "junit":
        return re.search(r'failures="\d+"', text)[0]  # type: ignore[index]
    else:
        return None
    summary.pop("duplicate_assets")
    return summary


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Small NDJSON files go to worker processes as they would when large; the parts the workers return."""
    monkeypatch.setattr(auditor.parallel, "MIN_RANGE_BYTES", 1)
    parts: list[int] = []
    real = auditor.parallel._parts

    def counted(pool: Any, jobs: list[Any], *more: Any) -> Iterator[Any]:
        for part in real(pool, jobs, *more):
            parts.append(len(part.copies.keys))
            yield part

    monkeypatch.setattr(auditor.parallel, "_parts", counted)
    yield parts


def _scan_cli(sources: list[Path], fmt: str, jobs: int, out: Path) -> tuple[int, str]:
    args = ["scan", "--format", fmt, "-o", str(out), "--jobs", str(jobs)]
    for s in sources:
        args += ["--source", str(s)]
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, out.read_text()


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("newer_first", [True, False])
def test_the_later_copy_wins_in_every_format(
    tmp_path: Path, workers: list[int], jobs: int, newer_first: bool
) -> None:
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "march.ndjson").write_text(NEW)
    both = tmp_path / "both"
    both.mkdir()
    (both / "1.ndjson").write_text(NEW if newer_first else OLD)  # files are read in sorted order
    (both / "2.ndjson").write_text(OLD if newer_first else NEW)
    for fmt in FORMATS:
        status, expected = _scan_cli([tmp_path / "alone"], fmt, 1, tmp_path / f"alone.{fmt}")
        workers.clear()
        got_status, got = _scan_cli([both], fmt, jobs, tmp_path / f"both.{fmt}")
        if jobs > 1:
            assert len(workers) > 2 and sum(workers) == 44, fmt  # both exports were read in workers
        ids = _ids(fmt, got)
        assert sorted(ids) == sorted(_ids(fmt, expected)), fmt
        assert len(ids) == len(set(ids)), fmt
        assert got_status == status == 3, fmt  # partial: iam-no-external-members has no domain, as alone
        assert _summary(fmt, got) == _summary(fmt, expected), fmt
        if fmt == "json":
            doc = json.loads(got)
            assert doc["summary"]["duplicate_assets"] == 22
            assert doc["partial_reasons"] == json.loads(expected)["partial_reasons"]  # not marked partial for it
            [source] = doc["sources"]
            assert source["duplicates"] == 22 and not source.get("failed_types")
            listed = source["duplicate_assets"]
            kept = "the copy read first is kept" if newer_first else "the later copy replaces the first"
            assert any(BUCKET in d and kept in d and "2.ndjson:" in d for d in listed), listed


def _result(sources: list[Path], jobs: int, report: StreamedReport | None = None) -> ScanResult:
    return run_scan([str(s) for s in sources], load_rules(), SourceOptions(), jobs=jobs, on_finding=report)


def _open_findings(result: ScanResult) -> dict[str, str]:
    return {f.id: f.asset for f in result.findings}


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("newer_first", [True, False])
def test_kept_findings_counts_and_assets_are_the_later_copys(
    tmp_path: Path, workers: list[int], jobs: int, newer_first: bool
) -> None:
    """What the daemon keeps (and its metrics count): the findings of the later copy, once each."""
    alone, old_file = tmp_path / "march.ndjson", tmp_path / "january.ndjson"
    alone.write_text(NEW)
    old_file.write_text(OLD)
    expected = _result([alone], 1)
    result = _result([alone, old_file] if newer_first else [old_file, alone], jobs)
    assert _open_findings(result) == _open_findings(expected)
    by_rule = {f.id: f.rule for f in result.findings if f.asset in (BUCKET, PROJECT)}
    assert "iam-default-service-accounts-no-basic-roles" not in by_rule.values()  # gone by March
    assert result.summary() | {"duplicate_assets": 0} == expected.summary()
    assert result.evaluation.assets == 22 and sum(s.duplicate_count for s in result.sources) == 22
    assert result.incomplete_types() == {}
    assert result.exit_status("low") == expected.exit_status("low")
    assert result.exit_status("low", allow_partial=True) == expected.exit_status("low", allow_partial=True) == 1


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_tie_keeps_the_copy_read_first(tmp_path: Path, workers: list[int], jobs: int) -> None:
    first, second = tmp_path / "a.ndjson", tmp_path / "b.ndjson"
    first.write_text(_export(MARCH, "allUsers", drop_editor=False))
    second.write_text(_export(MARCH, "allAuthenticatedUsers", drop_editor=True))
    expected = _result([first], 1)
    report = StreamedReport("ndjson", load_rules())
    streamed = _result([tmp_path], jobs, report)
    buf = io.BytesIO()
    report.write(buf, streamed)
    ids = _ids("ndjson", buf.getvalue().decode())
    assert sorted(ids) == sorted(_open_findings(expected)) and len(ids) == len(set(ids))
    assert streamed.summary() | {"duplicate_assets": 0} == expected.summary()
    kept = _result([tmp_path], jobs)
    assert _open_findings(kept) == _open_findings(expected)
    assert all("the copy read first is kept" in d for d in kept.sources[0].duplicates)


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("newer_first", [True, False])
def test_two_copies_in_one_file(tmp_path: Path, workers: list[int], jobs: int, newer_first: bool) -> None:
    """Both copies in one gzip shard: read by one worker, merged there before anything is handed on."""
    lines = [NEW, OLD] if newer_first else [OLD, NEW]
    shard = tmp_path / "org.ndjson.gz"
    shard.write_bytes(gzip.compress("".join(lines).encode()))
    (tmp_path / "march.ndjson").write_text(NEW)
    expected = _result([tmp_path / "march.ndjson"], 1)
    report = StreamedReport("json", load_rules())
    result = _result([shard], jobs, report)
    buf = io.BytesIO()
    report.write(buf, result)
    doc = json.loads(buf.getvalue())
    assert sorted(f["id"] for f in doc["findings"]) == sorted(_open_findings(expected))
    assert doc["summary"]["findings"] == len(doc["findings"]) == expected.summary()["findings"]
    assert doc["summary"]["by_severity"] == expected.summary()["by_severity"]
    if jobs > 1:
        assert workers == [44]
    [listed] = [d for d in result.sources[0].duplicates if BUCKET in d]
    assert f"read again at {shard}:28 " in listed  # the dump has 22 lines; bucket1 is its 6th


def test_a_spooled_report_takes_back_findings_already_spilled(tmp_path: Path) -> None:
    """The earlier copy's findings went to the temporary file (a budget of a few bytes): taken back all the same."""
    (tmp_path / "1.ndjson").write_text(OLD)
    (tmp_path / "2.ndjson").write_text(NEW)
    expected = _result([tmp_path / "2.ndjson"], 1)
    report = StreamedReport("csv", load_rules(), budget=64)
    result = _result([tmp_path], 1, report)
    buf = io.BytesIO()
    report.write(buf, result)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue().decode())))
    assert sorted(r["id"] for r in rows) == sorted(_open_findings(expected))
    assert result.counts().open == len(rows)


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_daemons_staging_takes_the_earlier_copy_back(tmp_path: Path, workers: list[int], jobs: int) -> None:
    """The daemon stages findings in its state store as they are made (a real SQLite database here): the earlier
    copy's are withdrawn by asset as the later copy arrives, from another file read by another worker too."""
    from auditor.state.db import open_database
    from auditor.state.staging import Staging

    (tmp_path / "1.ndjson").write_text(OLD)
    (tmp_path / "2.ndjson").write_text(NEW)
    expected = _result([tmp_path / "2.ndjson"], 1)
    db = open_database(tmp_path / "state.db")
    staging = Staging(db, batch=5)
    result = run_scan([str(tmp_path)], load_rules(), SourceOptions(), jobs=jobs, sink=staging)
    staged = {r[0]: r[1] for r in staging.db.rows("SELECT id, asset FROM cycle_seen")}
    assert staged == _open_findings(expected)
    assert result.evaluation.assets == 22
    if jobs > 1:
        assert sum(workers) == 44


def test_an_exempted_finding_of_the_replaced_copy_is_taken_back_and_uncounted(tmp_path: Path) -> None:
    """JUnit keeps exempted findings in a group of their own; the counts of exempted findings follow too."""
    rules_file = tmp_path / "public.yaml"
    rules_file.write_text(
        "rules:\n"
        "  - id: public-members\n"
        "    check: iam.forbidden_members\n"
        "    severity: critical\n"
        "    params: {members: [allUsers, allAuthenticatedUsers]}\n"
        "    exemptions:\n"
        f"      - {{resource: '{BUCKET}', reason: public site, owner: web-team}}\n"
    )
    folder = tmp_path / "org"
    folder.mkdir()
    (folder / "1.ndjson").write_text(OLD)
    (folder / "2.ndjson").write_text(NEW)
    rules = load_rules([rules_file])
    report = StreamedReport("junit", rules)
    result = run_scan([str(folder)], rules, on_finding=report)
    buf = io.BytesIO()
    report.write(buf, result)
    text = buf.getvalue().decode()
    exempted = re.findall(r">exempted ([0-9a-f]+) (\S+): ([^<]*)", text)
    assert len(exempted) == 1 and exempted[0][1] == BUCKET and "allAuthenticatedUsers" in exempted[0][2]
    assert result.counts().exempted == 1 and result.summary()["exempted"] == 1
