"""The daemon's /report and /findings.json stay bounded whatever the number of findings: the report lists the worst
and the newest with counts of all, /findings.json is read from the store a page at a time, and walking the pages
gives every open finding once. Run on both state backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditor.cycle import REPORT_FINDINGS, Auditor
from auditor.model import Finding, Mode, Severity, finding_id
from auditor.report.pages import MAX_PAGE_SIZE, FindingQuery
from auditor.settings import Settings
from auditor.state import CycleInput, Store

SEVS = ("critical", "high", "medium", "low")


def many(n: int, start: int = 0) -> list[Finding]:
    return [
        Finding(id=finding_id("r" + str(i % 3), f"//b/{i}", "k"), rule="r" + str(i % 3), check="iam.forbidden_members",
                severity=Severity(SEVS[i % 4]), mode=Mode.audit, asset=f"//b/{i}",
                asset_type="storage.googleapis.com/Bucket", message=f"finding {i}")
        for i in range(start, start + n)
    ]


def test_report_and_pages_are_bounded_and_complete(state_target: str, tmp_path: Path) -> None:
    store = Store(state_target)
    store.record_cycle(CycleInput(100, 101, "success", many(3000)))
    store.record_cycle(CycleInput(200, 201, "success", many(3000) + many(50, start=10_000)))
    settings = Settings(sources=[str(tmp_path)], state_path=tmp_path / "unused.db")
    auditor = Auditor(settings, store)
    try:
        html = auditor.published.report_html.decode()
        # Counts of all, rows for the worst only.
        assert "3050 open findings" in html
        assert html.count("<tr><td><code>b/") <= REPORT_FINDINGS
        assert 'href="/findings.json?severity=low&amp;page=1"' in html
        assert "Newest findings" in html and "finding 10049" in html
        assert "50 new" in html
        assert len(html) < 1_000_000

        first = json.loads(auditor.published.findings_json)
        assert first["total"] == 3050 and first["pages"] == 7 and len(first["findings"]) == 500
        assert first["drift"]["new"] == 50 and first["next"] == "/findings.json?page=2"
        seen: list[str] = []
        query: dict[str, list[str]] = {}
        while True:
            doc = json.loads(auditor.findings_json(query))
            seen += [f["id"] for f in doc["findings"]]
            if doc["next"] is None:
                break
            query = {k: [v] for k, v in (p.split("=") for p in doc["next"].split("?", 1)[1].split("&"))}
        assert len(seen) == len(set(seen)) == 3050
        # Worst first: every critical before any high.
        sev = [f["severity"] for f in json.loads(auditor.findings_json({"per_page": ["5000"]}))["findings"]]
        assert sev == sorted(sev, key=SEVS.index)

        high = json.loads(auditor.findings_json({"severity": ["high"], "rule": ["r1"], "per_page": ["100"]}))
        assert {f["severity"] for f in high["findings"]} <= {"critical", "high"}
        assert {f["rule"] for f in high["findings"]} == {"r1"}
        assert high["next"] == "/findings.json?severity=high&rule=r1&per_page=100&page=2"
        empty = json.loads(auditor.findings_json({"page": ["99"]}))
        assert empty["findings"] == [] and empty["next"] is None
    finally:
        auditor.close()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"page": ["0"]}, "page must be a whole number from 1"),
        ({"page": ["x"]}, "page must be a whole number from 1"),
        ({"per_page": [str(MAX_PAGE_SIZE + 1)]}, f"per_page must be at most {MAX_PAGE_SIZE}"),
        ({"severity": ["urgent"]}, "severity must be one of"),
        ({"stale": ["maybe"]}, "stale must be true or false"),
        ({"owner": ["me"]}, "unknown filter(s) owner"),
    ],
)
def test_bad_queries_are_refused_with_a_reason(query: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FindingQuery.parse(query)
